"""The evaluate job (next): WizardLM test set, answers via the shared generation layer, pairwise judge.

`eval/data/wizardlm_testset.jsonl` is vendored here already (see eval/data/README.md).
"""
