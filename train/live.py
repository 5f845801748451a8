"""Live metrics: every logged window goes to TensorBoard while the run trains.

Ray Train's controller calls `after_report` once all workers have reported; the callback writes
rank 0's metrics (identical on every rank: the loop all-reduces them) as scalars under `train/`
with tensorboardX (a dependency of ray[train]), into a local folder or s3:// (tensorboardX's S3
writer). Watch a run with `tensorboard --logdir <metrics.tensorboard_dir>`.
"""
from __future__ import annotations

from ray.train import UserCallback

from common import storage
from train.config import TrainConfig

SCALARS = ("loss", "lr", "tokens_per_s", "real_tokens_per_s", "mfu", "heldout_loss")


def tensorboard_dir(cfg: TrainConfig) -> str:
    return cfg.metrics.tensorboard_dir or storage.join(cfg.checkpoint.storage_path, cfg.name, "tensorboard")


class TensorBoardCallback(UserCallback):
    """Runs in the Ray Train controller; the writer is made there, on the first logged window."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self.writer = None

    def after_report(self, run_context, metrics: list, checkpoint) -> None:
        values = metrics[0] if metrics else {}
        if "loss" not in values:  # a checkpoint-only or final report
            return
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(self.logdir)
        for key in SCALARS:
            if values.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", values[key], values["step"])
        self.writer.flush()

    def __getstate__(self) -> dict:  # a writer holds an open file: never pickled with the callback
        return {"logdir": self.logdir, "writer": None}
