"""The evaluate job: a candidate and a baseline answer a test set, a judge scores both answers in
both orders, and the report gives the score ratio with its interval, per category and per difficulty.

Pure modules: testset (rows → items, quarantine), judge (prompt, verdict parser, orders), aggregate
(ratios, bootstrap, bands), rows (joins), evolution (evolve-output analysis), report and plots.
Ray glue: pipeline. The WizardLM test set is vendored in eval/data (see eval/data/README.md).
"""
