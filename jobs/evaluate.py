"""python -m jobs.evaluate --config configs/evaluate_local.yaml [key.sub=value ...]

The same command runs under `ray job submit -- python -m jobs.evaluate ...` on a cluster.
"""
import sys

from common.config import run_job
from eval.config import EvaluateConfig


def main(argv=None) -> int:
    from eval.pipeline import run_evaluate

    return run_job(EvaluateConfig, run_evaluate, "Evaluate a model with an LLM judge on Ray: against a baseline "
                   "(pairwise, both orders) or alone (single-answer grading).",
                   argv)


if __name__ == "__main__":
    sys.exit(main())
