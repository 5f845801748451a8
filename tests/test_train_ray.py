"""Integration: the train job on a local Ray with 2 CPU workers, DeepSpeed and a tiny random Llama.

One ZeRO-3 run (batch unit: samples) that is killed mid-way (a real SIGKILL of worker rank 1)
and resumes from its last checkpoint (uploaded asynchronously), then exports a model that
transformers reloads; it ends with the weights and per-step losses of the same config run
without a kill. Its metrics reach TensorBoard while it runs, with a held-out loss every 4 steps.
A rerun of the same name resumes instead of starting over; a rerun with another learning rate
is refused. LoRA runs on ZeRO-2 over packed sequences (hash-grouped packing) and exports its
adapter. ~7-8 minutes on 2 cores.
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

    cfg = tiny_config(workdir, "debug.kill_at_step=6", "debug.kill_worker_rank=1", "metrics.heldout_every_steps=4")
    return cfg, run_train(cfg)


def step_losses(summary: dict) -> list[float]:
    """The loss of every optimizer step, in order, from the logged windows."""
    return [loss for window in summary["history"] for loss in window["step_losses"]]


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


def test_a_killed_and_resumed_run_ends_like_an_uninterrupted_one(killed_run, workdir):
    import torch
    from safetensors.torch import load_file

    from train.run import run_train

    cfg, killed = killed_run
    whole = run_train(tiny_config(workdir, "name=tiny-uninterrupted", f"output.path={workdir / 'model-whole'}",
                                  "metrics.heldout_every_steps=4", "sample.generate=false"))
    assert killed["restored_from_step"] == 4 and whole["restored_from_step"] is None
    assert len(step_losses(whole)) == whole["total_steps"] == killed["total_steps"]
    assert step_losses(killed) == pytest.approx(step_losses(whole), rel=1e-6, abs=1e-7)
    assert [h["heldout_loss"] for h in killed["history"] if "heldout_loss" in h] == pytest.approx(
        [h["heldout_loss"] for h in whole["history"] if "heldout_loss" in h], rel=1e-6)
    resumed, uninterrupted = load_file(Path(cfg.output.path) / "model.safetensors"), load_file(
        workdir / "model-whole" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-6, atol=1e-7, msg=lambda m: f"{key}: {m}")


def tensorboard_scalars(folder: Path) -> dict:
    """{tag: {step: value}} from the TensorBoard event files in `folder` (TFRecord framing)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12: at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_metrics_reach_tensorboard_with_a_heldout_loss_every_4_steps(killed_run, workdir):
    cfg, summary = killed_run
    scalars = tensorboard_scalars(workdir / "runs" / cfg.name / "tensorboard")
    logged = {h["step"]: h for h in summary["history"]}
    assert sorted(scalars["train/loss"]) == sorted(logged) == list(range(2, summary["total_steps"] + 1, 2))
    for step, value in scalars["train/loss"].items():
        assert value == pytest.approx(logged[step]["loss"], rel=1e-5)
    assert {"train/lr", "train/tokens_per_s", "train/mfu"} <= set(scalars)
    every = list(range(4, summary["total_steps"], 4))  # the final step's is the summary's "after"
    assert sorted(scalars["train/heldout_loss"]) == every and len(every) >= 4
    assert scalars["train/heldout_loss"][every[-1]] < summary["heldout_loss_before"] - 1.0


def test_a_rerun_with_another_learning_rate_is_refused_not_resumed(killed_run, workdir):
    from common.config import UserError
    from train.run import run_train

    cfg, first = killed_run
    with pytest.raises(UserError) as info:
        run_train(tiny_config(workdir, "optim.lr=1e-3", "sample.generate=false"))
    assert f"run {cfg.name!r} has a checkpoint of other settings" in str(info.value)
    assert "optim.lr 0.003 != 0.001" in str(info.value) and "\n" not in str(info.value)
    kept = sorted(p.name for p in (workdir / "runs" / cfg.name).glob("checkpoint-*"))
    assert kept[-1] == f"checkpoint-step{first['total_steps']:07d}"  # nothing was touched


def test_lora_on_zero2_over_packed_sequences_exports_its_adapter(ray_cluster, workdir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.run import run_train

    out = workdir / "adapter"
    cfg = tiny_config(workdir, "name=tiny-lora", "deepspeed.stage=2", "optim.epochs=1", "sample.generate=false",
                      "data.heldout_fraction=0", f"output.path={out}", "optim.batch_unit=sequences",
                      "optim.global_batch_size=4", "optim.micro_batch_size=1", "lora.method=lora", "lora.r=4",
                      "lora.export=adapter", "optim.lr=1e-2")
    summary = run_train(cfg)
    assert summary["steps"] == summary["total_steps"] > 0 and summary["restored_from_step"] is None
    data = summary["data"]
    assert data["train_samples"] == 96 and data["units"] < data["train_samples"]  # packed rows of 256
    assert summary["last_logged_loss"] < summary["first_logged_loss"]
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == cfg.model.name
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name)
    ids = AutoTokenizer.from_pretrained(out)("Explain ray.\n\n### Response:", return_tensors="pt").input_ids
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(tuned(ids).logits, before, atol=1e-4)  # the trained adapter changes the model
