"""python -m jobs.pipeline --config configs/pipeline_local.yaml [stage.section.key=value ...]

evolve -> train -> evaluate as one Ray job; the same command runs under
`ray job submit -- python -m jobs.pipeline ...` on a cluster. A rerun skips complete stages.
"""
import sys

from common.config import run_job
from pipeline.config import PipelineConfig


def main(argv=None) -> int:
    from pipeline.run import run_pipeline

    return run_job(PipelineConfig, run_pipeline, "Evolve, fine-tune and evaluate as one Ray job.", argv)


if __name__ == "__main__":
    sys.exit(main())
