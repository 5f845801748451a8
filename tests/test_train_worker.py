"""The worker's whole loop (train.loop.train_loop) in this process: DeepSpeed on one gloo rank, a tiny
Llama, the units as a Ray dataset, and Ray Train's own local-mode utilities (LocalTrainFnUtils) with
the checkpoint to resume from chosen by the test.

- Gradient checkpointing acts on every step: a decoder layer runs twice per micro batch (forward +
  recomputation), with and without held-out rows, fresh and resumed (from_pretrained returns the
  model in eval mode, where transformers skips the recomputation).
- LoRA: only the adapters train, a resume from a mid-run checkpoint ends with the same weights and
  per-step losses as the uninterrupted run, and the merged export reloads in transformers.
~1 min on 2 cores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import load_config
from tests.test_train_deepspeed import no_zero3_left_behind, process_group  # noqa: F401 (fixtures)
from train.config import TrainConfig, result_settings
from train.fixtures import make_tiny_model

N_UNITS, GLOBAL, MICRO = 16, 4, 2  # 4 optimizer steps of 2 micro batches (one rank)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-llama", hidden=32)


@pytest.fixture(scope="module")
def units(local_ray):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_UNITS):
        n = int(rng.integers(12, 40))
        ids = [1] + rng.integers(5, 2000, size=n - 1).tolist()
        rows.append({"key": i, "input_ids": ids, "labels": [-100] * 4 + ids[4:], "n_real": n})
    return local_ray.data.from_items(rows)


def worker_config(tmp_path: Path, model_dir: str, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, "configs/train_tiny.yaml", [
        f"model.name={model_dir}", "scaling.num_workers=1", f"optim.global_batch_size={GLOBAL}",
        f"optim.micro_batch_size={MICRO}", "optim.epochs=1", "checkpoint.every_steps=2", "metrics.log_every_steps=1",
        f"checkpoint.scratch_dir={tmp_path / 'scratch'}", "model.gradient_checkpointing=true", *overrides])


def heldout_examples(n: int) -> list:
    return [([1, 7, 8, 9, 10, 11], [-100, -100, -100, 9, 10, 11])] * n


def run_worker(cfg: TrainConfig, units, output: Path, heldout: list, restore=None):
    """train_loop with Ray Train's local-mode utilities; returns (every reported checkpoint by step,
    the reported metrics)."""
    from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils

    from train.loop import train_loop

    class Utils(LocalTrainFnUtils):
        def __init__(self):
            super().__init__(experiment_name=cfg.name, dataset_shards={"rank0": units})
            self.checkpoints, self.metrics = {}, []

        def report(self, metrics, checkpoint=None, **kwargs):
            self.metrics.append(metrics)
            if checkpoint is not None:
                self.checkpoints[metrics["step"]] = checkpoint

        def get_checkpoint(self):
            return restore

    utils = Utils()
    set_train_fn_utils(utils)
    try:
        plan = {"steps_per_epoch": N_UNITS // GLOBAL, "total_steps": N_UNITS // GLOBAL, "world_size": 1,
                "fingerprint": "f", "settings": result_settings(cfg), "heldout": heldout, "output_path": str(output)}
        train_loop({"config": cfg.model_dump(mode="json"), "plan": plan})
    finally:
        set_train_fn_utils(None)
    return utils.checkpoints, utils.metrics


class LayerCalls:
    """Counts decoder-layer forwards run with autograd on: training forwards and their recomputations
    in the backward pass (held-out losses run under no_grad). Wraps the class's forward (a module
    forward hook does not see the recomputation)."""

    def __init__(self, monkeypatch):
        import torch
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        self.count = 0
        forward = LlamaDecoderLayer.forward

        def counted(layer, *args, **kwargs):
            self.count += torch.is_grad_enabled()
            return forward(layer, *args, **kwargs)

        monkeypatch.setattr(LlamaDecoderLayer, "forward", counted)


@pytest.mark.parametrize("heldout_rows", [0, 3])
def test_gradient_checkpointing_recomputes_every_step_fresh_and_resumed(heldout_rows, process_group, model_dir, units,
                                                                        tmp_path, monkeypatch):
    cfg = worker_config(tmp_path, model_dir)
    layers, micro_batches = 2, (N_UNITS // GLOBAL) * (GLOBAL // MICRO)  # make_tiny_model's 2 decoder layers
    fresh = LayerCalls(monkeypatch)
    checkpoints, _ = run_worker(cfg, units, tmp_path / "fresh", heldout_examples(heldout_rows))
    assert fresh.count == 2 * layers * micro_batches  # each layer: forward + recomputation in backward
    resumed = LayerCalls(monkeypatch)
    run_worker(cfg, units, tmp_path / "resumed", heldout_examples(heldout_rows), restore=checkpoints[2])
    assert resumed.count == 2 * layers * micro_batches // 2  # steps 3 and 4 only, recomputed too


def test_lora_trains_the_adapters_only_and_resumes_to_the_same_weights(process_group, model_dir, units, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = worker_config(tmp_path, model_dir, "lora.method=lora", "lora.r=4", "lora.dropout=0.1", "deepspeed.stage=3",
                        "optim.lr=1e-2")
    checkpoints, whole = run_worker(cfg, units, tmp_path / "whole", heldout_examples(2))
    _, resumed = run_worker(cfg, units, tmp_path / "resumed", heldout_examples(2), restore=checkpoints[2])
    losses = {m["step"]: m["step_losses"] for m in whole if "step_losses" in m}
    assert {m["step"]: m["step_losses"] for m in resumed if "step_losses" in m} == {3: losses[3], 4: losses[4]}
    merged = load_file(tmp_path / "whole" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "model.safetensors")
    base = load_file(Path(model_dir) / "model.safetensors")
    assert merged.keys() == base.keys() == again.keys()
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.split(".")[-2] in cfg.lora.target_modules for k in changed)  # adapted layers only
    for key in base:
        torch.testing.assert_close(again[key], merged[key], rtol=0, atol=0)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # else from_pretrained here would partition the model (ZeRO-3 of the runs)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "whole")
    assert reloaded(torch.tensor([[1, 7, 8, 9]])).logits.shape == (1, 4, reloaded.config.vocab_size)
