"""Integration: the train job on a local Ray with 2 CPU workers, DeepSpeed and a tiny random Llama.

One ZeRO-3 run (batch unit: samples) that is killed mid-way (a real SIGKILL of worker rank 1)
and resumes from its last checkpoint, then exports a model that transformers reloads; a rerun
of the same name resumes instead of starting over; ZeRO-2 runs too, on packed sequences
(hash-grouped packing). ~5-6 minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.config import load_config
from train.config import TrainConfig
from train.fixtures import make_tiny_model, synthetic_rows, write_evolved_parquet

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "evolray" / "torch_extensions"))


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    make_tiny_model(root / "tiny-llama")
    write_evolved_parquet(root / "evolved", synthetic_rows(96, seed=1))
    return root


def tiny_config(workdir: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "configs/train_tiny.yaml", [
        f"model.name={workdir / 'tiny-llama'}", f"data.path={workdir / 'evolved'}",
        f"checkpoint.storage_path={workdir / 'runs'}", f"output.path={workdir / 'model'}", *overrides])


@pytest.fixture(scope="module")
def killed_run(ray_cluster, workdir):
    from train.run import run_train

    cfg = tiny_config(workdir, "debug.kill_at_step=6", "debug.kill_worker_rank=1")
    return cfg, run_train(cfg)


def test_killed_worker_resumes_from_checkpoint_with_the_same_step_count(killed_run, workdir):
    cfg, summary = killed_run
    assert summary["total_steps"] == (summary["data"]["units"] // cfg.optim.global_batch_size) * cfg.optim.epochs
    assert summary["data"]["units"] == summary["data"]["train_samples"]  # batch_unit=samples
    assert summary["steps"] == summary["total_steps"]
    assert summary["restored_from_step"] == 4  # checkpoint every 4 steps, killed at 6
    steps = [h["step"] for h in summary["history"]]
    assert steps == list(range(2, summary["total_steps"] + 1, 2))  # no step lost or repeated
    kept = sorted(p.name for p in (workdir / "runs" / cfg.name).glob("checkpoint-*"))
    assert len(kept) == cfg.checkpoint.keep and kept[-1] == f"checkpoint-step{summary['total_steps']:07d}"


def test_loss_decreases(killed_run):
    _, summary = killed_run
    assert summary["last_logged_loss"] < summary["first_logged_loss"] - 1.0
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"] - 1.0
    metrics = json.loads((Path(killed_run[0].output.path) / "train_metrics.json").read_text())
    assert {"loss", "lr", "tokens_per_s", "real_tokens_per_s", "mfu"} <= set(metrics["history"][0])


def test_exported_model_reloads_in_transformers_and_generates(killed_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    cfg, summary = killed_run
    out = Path(cfg.output.path)
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert GenerationConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("Explain ray clusters.\n\n### Response:", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    # The export holds the trained weights, not the random initial ones.
    initial = AutoModelForCausalLM.from_pretrained(Path(cfg.model.name))
    assert not torch.allclose(model.model.embed_tokens.weight, initial.model.embed_tokens.weight)
    assert summary["sample"]["generated"] is not None


def test_rerun_with_the_same_name_resumes_instead_of_restarting(killed_run, workdir):
    from train.run import run_train

    cfg, first = killed_run
    summary = run_train(tiny_config(workdir, "sample.generate=false"))
    assert summary["restored_from_step"] == first["total_steps"] == summary["steps"]
    assert summary["history"] == first["history"]


def test_zero2_runs(ray_cluster, workdir):
    from train.run import run_train

    cfg = tiny_config(workdir, "name=tiny-zero2", "deepspeed.stage=2", "optim.epochs=1", "sample.generate=false",
                      "data.heldout_fraction=0", f"output.path={workdir / 'model-zero2'}",
                      "optim.batch_unit=sequences", "optim.global_batch_size=4", "optim.micro_batch_size=1")
    summary = run_train(cfg)
    assert summary["steps"] == summary["total_steps"] > 0 and summary["restored_from_step"] is None
    data = summary["data"]
    assert data["train_samples"] == 96 and data["units"] < data["train_samples"]  # packed rows of 256
    assert (workdir / "model-zero2" / "model.safetensors").exists()
