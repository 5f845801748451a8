"""python -m jobs.train --config configs/train_local.yaml [key.sub=value ...]

Fine-tunes a LLaMA-family model on the evolve job's training parquet with Ray Train +
DeepSpeed; works the same under `ray job submit -- python -m jobs.train ...`.
"""
from __future__ import annotations

import sys

from common.config import run_job
from train.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    from train.run import run_train

    return run_job(TrainConfig, run_train, "Fine-tune on the evolved data (Ray Train + DeepSpeed).", argv)


if __name__ == "__main__":
    sys.exit(main())
