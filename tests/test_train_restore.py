"""Restoring a checkpoint from s3:// (a local moto server) stages it in checkpoint.scratch_dir,
never in the system temp folder (Ray's `Checkpoint.as_directory` downloads there: ~100 GB on
the root disk for a 7B ZeRO-3 run), and removes it after loading; a local checkpoint is read in
place. A fake engine stands in for DeepSpeed: ~2 s.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from common.config import load_config
from tests.s3_fixtures import moto_s3  # noqa: F401 (a fixture)
from train.config import TrainConfig, result_settings


class LoadingEngine:
    """Records where load_checkpoint read from and what was there at that moment."""

    def __init__(self, plan_signature: dict):
        self.client = {"plan": plan_signature, "run_state": {"step": 6, "history": [], "heldout_loss_before": 2.5}}
        self.folder = None
        self.files: list[str] = []

    def load_checkpoint(self, folder, load_lr_scheduler_states, load_module_strict):
        self.folder = folder
        self.files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
        return folder, self.client


def write_checkpoint(folder: Path) -> list[str]:
    (folder / "step6").mkdir(parents=True)
    (folder / "step6" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 1000)
    (folder / "latest").write_text("step6")
    return ["latest", "step6/zero_pp_rank_0_mp_rank_00_optim_states.pt"]


@pytest.fixture
def system_tmp(tmp_path, monkeypatch) -> Path:
    """The system temp folder, moved aside so that the test sees everything written to it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    assert tempfile.gettempdir() == str(folder)
    return folder


def restore_with(monkeypatch, checkpoint, scratch: Path):
    import ray.train

    import train.loop as loop

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: checkpoint)
    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [f"checkpoint.scratch_dir={scratch}", "name=r"])
    plan = loop.Plan(steps_per_epoch=3, total_steps=6, world_size=1, fingerprint="f",
                     settings=result_settings(cfg))
    engine = LoadingEngine(plan.signature())
    return engine, loop.restore(engine, cfg, plan)


def test_an_s3_checkpoint_is_restored_through_the_scratch_folder_not_the_system_temp(
        moto_s3, tmp_path, system_tmp, monkeypatch, capfd):
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    files = write_checkpoint(tmp_path / "saved")
    s3 = moto_s3.client()
    for name in files:
        s3.upload_file(str(tmp_path / "saved" / name), moto_s3.bucket, f"runs/r/checkpoint-step0000006/{name}")
    filesystem, inner = pafs.FileSystem.from_uri(moto_s3.url("runs", "r", "checkpoint-step0000006"))
    checkpoint = Checkpoint(inner, filesystem=filesystem)
    assert not isinstance(checkpoint.filesystem, pafs.LocalFileSystem)

    scratch = tmp_path / "nvme" / "scratch"  # missing: created, and said so once
    engine, state = restore_with(monkeypatch, checkpoint, scratch)
    assert Path(engine.folder).parent == scratch and Path(engine.folder).name.startswith("evolray-restore-")
    assert engine.files == files  # the whole checkpoint was there when DeepSpeed read it
    assert state.step == 6 and state.restored_from == 6
    assert not list(system_tmp.iterdir())  # nothing, not even Ray's lock files, in the system temp folder
    assert not list(scratch.iterdir())  # the download is gone once loaded
    lines = [line for line in capfd.readouterr().out.splitlines() if "scratch folder" in line]
    assert len(lines) == 1 and str(scratch) in lines[0] and "(created)" in lines[0]


def test_a_local_checkpoint_is_read_in_place(tmp_path, system_tmp, monkeypatch):
    from ray.train import Checkpoint

    write_checkpoint(tmp_path / "saved")
    scratch = tmp_path / "scratch"
    engine, state = restore_with(monkeypatch, Checkpoint.from_directory(str(tmp_path / "saved")), scratch)
    assert os.path.samefile(engine.folder, tmp_path / "saved") and state.step == 6
    assert not list(scratch.iterdir()) and not list(system_tmp.iterdir())
