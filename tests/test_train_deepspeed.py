"""The loss normalisation through the real DeepSpeed engine (train.engine.build_engine) and the
loop's own optimizer step (train.loop.train_step): gradient accumulation 1 x 8 and 4 x 2 of
packed micro batches with very different numbers of response tokens give the same update, the
one of the global per-token mean loss of the 8 samples. A DeepSpeed that divided by the
accumulation steps despite scale_wrt_gas=False (its output backward hooks do unless the
engine's backward registered the graph) would update 8x or 2x less.

Single process, gloo, world size 1, tiny random Llama, fp32; AdamW is swapped for plain SGD
(lr 1) so that the update is the gradient itself (Adam's first step is ~lr x sign(gradient),
blind to any scale), and clipping is off. ZeRO stages 0-3: ~8 s on 2 cores. Then the same step on two
real gloo ranks (torch.multiprocessing) whose samples hold very different numbers of response tokens,
at ZeRO-2 and ZeRO-3, against the single-process global mean: ~40 s.
"""
from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest

from common.config import load_config
from tests.test_train_recipe import sample, sample_units, tiny_llama
from train.config import TrainConfig

# (tokens, prompt tokens): loss positions 60, 38, 27, 15 | 2, 1, 2, 3 -> micro batches of 4 hold 140 and 8
SAMPLES = ((64, 4), (40, 2), (30, 3), (20, 5), (10, 8), (6, 5), (12, 10), (9, 6))


@pytest.fixture(scope="module")
def process_group():
    """What Ray Train gives a worker: an env:// process group (here of one gloo process)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    # DeepSpeed caches the world group and its backend per process; the next module's group is a new one.
    from deepspeed.comm import comm
    from deepspeed.utils import groups

    comm.cdb, groups._WORLD_GROUP, groups._DATA_PARALLEL_GROUP = None, None, None
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("m") / "tiny-llama")
    tiny_llama("sdpa").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def units():
    out = sample_units([sample(n, prompt) for n, prompt in SAMPLES])
    assert list(out.targets) == [n - p for n, p in SAMPLES]
    return out


class SGDNamedAdamW:
    """Stands in for torch.optim.AdamW in train.engine: plain SGD at the configured lr."""

    def __new__(cls, params, lr, **_):
        import torch

        return torch.optim.SGD(params, lr=lr)


def expected_weights(model_dir: str, units, lr: float) -> tuple[dict, dict]:
    """(weights after one SGD step on the mean loss over every loss position of the 8 samples in
    one plain batch, weights before)."""
    import torch
    from transformers import AutoModelForCausalLM

    from train.batches import collate

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    everything, _ = collate(units, np.arange(len(units)), "padded", 0)
    model(**{k: torch.as_tensor(v) for k, v in everything.items()}, use_cache=False).loss.backward()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {name: (p - lr * p.grad).detach() for name, p in model.named_parameters()}, before


def one_optimizer_step(model_dir: str, units, stage: int, micro: int, monkeypatch) -> dict:
    """The loop's optimizer step 0 on an engine built by train.engine; the weights after it."""
    import torch

    from train.batches import collate_mode
    from train.engine import build_engine, full_state_dict
    from train.loop import Plan, global_step_targets, train_step
    from train.metrics import Window

    monkeypatch.setattr(torch.optim, "AdamW", SGDNamedAdamW)
    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [
        f"model.name={model_dir}", f"deepspeed.stage={stage}", "scaling.num_workers=1", "optim.global_batch_size=8",
        f"optim.micro_batch_size={micro}", "optim.lr=1.0", "optim.warmup_steps=0", "optim.max_grad_norm=0"])
    assert cfg.grad_accum_steps == 8 // micro
    plan = Plan(steps_per_epoch=1, total_steps=1, world_size=1)
    engine = build_engine(cfg, model_dir, plan.total_steps)
    assert type(engine.basic_optimizer if hasattr(engine, "basic_optimizer") else engine.optimizer).__name__ == "SGD"
    assert engine.gradient_accumulation_steps() == 8 // micro
    order = np.arange(len(units))
    targets = global_step_targets(engine, units, order, cfg, plan)
    assert targets == [int(units.targets.sum())]
    mode = collate_mode(cfg.data.packing, cfg.optim.batch_unit, cfg.model.attn_implementation)
    window = Window()
    train_step(engine, units, order, 0, targets[0], mode, 0, cfg, plan.world_size, window)
    assert engine.global_steps == 1  # exactly one optimizer step
    state = full_state_dict(engine, cfg)
    weights = {k: v.detach().float().clone() for k, v in state.items()}
    engine.destroy()
    return weights


@pytest.fixture(autouse=True)
def no_zero3_left_behind():
    """build_engine keeps transformers' ZeRO-3 config alive (a worker loads its model partitioned):
    in this test process it must not reach later tests, whose from_pretrained would then call
    deepspeed.zero.Init (and look for MPI)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    yield
    unset_hf_deepspeed_config()
    assert not is_deepspeed_zero3_enabled()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_accumulation_1x8_and_4x2_give_the_same_deepspeed_update(stage, process_group, model_dir, units, monkeypatch):
    import torch

    expected, before = expected_weights(model_dir, units, lr=1.0)
    after = {micro: one_optimizer_step(model_dir, units, stage, micro, monkeypatch) for micro in (1, 4)}
    moved = 0.0
    for name, want in expected.items():
        for micro, weights in after.items():
            torch.testing.assert_close(weights[name] - before[name], want - before[name], atol=2e-6, rtol=1e-4,
                                       msg=lambda m: f"stage {stage}, micro {micro}, {name}: {m}")
        moved = max(moved, float((want - before[name]).abs().max()))
    assert moved > 1e-2  # the step moved the weights far more than the tolerance


def rank_step(rank: int, port: int, model_dir: str, units, stages: tuple, out: str) -> None:
    """One of 2 gloo ranks (torch.multiprocessing): the loop's optimizer step 0 on this rank's 4 samples
    for each ZeRO stage; rank 0 saves the consolidated weights after it."""
    import torch
    import torch.distributed as dist

    from train.batches import Units, collate_mode
    from train.engine import build_engine, full_state_dict
    from train.loop import Plan, global_step_targets, train_step
    from train.metrics import Window

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
                       "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"})
    torch.optim.AdamW = SGDNamedAdamW  # a fresh process: nothing to restore
    mine = Units(*(getattr(units, f)[rank * 4:(rank + 1) * 4] for f in ("input_ids", "labels", "position_ids",
                                                                         "n_real", "targets")))
    order = np.arange(4)
    for stage in stages:
        cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [
            f"model.name={model_dir}", f"deepspeed.stage={stage}", "scaling.num_workers=2",
            "optim.global_batch_size=8", "optim.micro_batch_size=2", "optim.lr=1.0", "optim.warmup_steps=0",
            "optim.max_grad_norm=0"])
        plan = Plan(steps_per_epoch=1, total_steps=1, world_size=2)
        engine = build_engine(cfg, model_dir, plan.total_steps)
        targets = global_step_targets(engine, mine, order, cfg, plan)  # all-reduced over the 2 ranks
        assert targets == [int(units.targets.sum())]
        mode = collate_mode(cfg.data.packing, cfg.optim.batch_unit, cfg.model.attn_implementation)
        train_step(engine, mine, order, 0, targets[0], mode, 0, cfg, plan.world_size, Window())
        state = full_state_dict(engine, cfg)
        if rank == 0:
            torch.save({k: v.detach().float().clone() for k, v in state.items()}, f"{out}/stage{stage}.pt")
        engine.destroy()
    dist.destroy_process_group()
    # Done: leave without the interpreter's teardown. About 1 run in 10, a native thread still joinable
    # when C++ destructors ran aborted a rank after its work and its last line ("terminate called
    # without an active exception", SIGABRT), and mp.spawn failed the test for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_gloo_ranks_with_unequal_tokens_update_by_the_global_token_mean(model_dir, units, tmp_path):
    """Rank 0 holds the 4 samples with 140 loss positions, rank 1 those with 8: each rank's micro
    batches are divided by the all-reduced 148, and DeepSpeed's average over ranks x 2 gives the
    single-process mean over all 148 (a per-rank mean would weigh rank 1's 8 tokens like 140)."""
    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stages = (2, 3)
    mp.spawn(rank_step, args=(port, model_dir, units, stages, str(tmp_path)), nprocs=2, join=True)
    expected, before = expected_weights(model_dir, units, lr=1.0)
    for stage in stages:
        after = torch.load(tmp_path / f"stage{stage}.pt")
        for name, want in expected.items():
            torch.testing.assert_close(after[name] - before[name], want - before[name], atol=2e-6, rtol=1e-4,
                                       msg=lambda m: f"stage {stage}, {name}: {m}")
