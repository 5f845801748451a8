"""The paper's recipe, exactly (issue 14): what the model learns from, tested without Ray.

Packed samples stay apart at micro batch > 1 on every attention implementation; the loss is
a per-token mean over the global batch whatever the accumulation shape; units are reshuffled
every epoch and a resumed worker feeds exactly the units it had not; the batch unit gives the
paper's optimizer steps; held-out rows are whole lineages; MFU, scratch folders, checkpoints.
Tiny random Llama models on plain torch: ~10 s in all.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from common.config import ConfigError, UserError, load_config
from train.batches import (Units, collate, collate_mode, count_targets, epoch_order, micro_batch, step_targets,
                           units_from_rows)
from train.config import TrainConfig
from train.masking import IGNORE
from train.packing import pack, pack_group, stable_hash

RNG = np.random.default_rng(0)


def sample(length: int, prompt: int = 3) -> tuple[list[int], list[int]]:
    ids = [1] + [int(t) for t in RNG.integers(3, 60, size=length - 1)]
    return ids, [IGNORE] * prompt + ids[prompt:]


def tiny_llama(attn: str, dtype=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    model = LlamaForCausalLM(config)
    return model.to(dtype) if dtype is not None else model


def sample_units(samples: list) -> Units:
    return units_from_rows({"key": list(range(len(samples))), "input_ids": [s[0] for s in samples],
                            "labels": [s[1] for s in samples], "n_real": [len(s[0]) for s in samples]})


def packed_units(samples: list, max_length: int) -> Units:
    rows = pack([s[0] for s in samples], [s[1] for s in samples], max_length, pad_id=0)
    return units_from_rows(rows | {"key": list(range(len(rows["n_real"])))})


# --- packed samples never attend to each other, at micro batch > 1 ------------------------

def segments(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sample in a collated batch (position ids restart per sample)."""
    out = []
    for r, positions in enumerate(batch["position_ids"]):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        out += [(r, a, b) for a, b in zip(starts, starts[1:]) if (batch["labels"][r, a:b] != IGNORE).any()]
    return out


def token_losses(logits, labels):
    import torch

    return torch.nn.functional.cross_entropy(logits[:-1].float(), torch.as_tensor(labels[1:]), ignore_index=IGNORE,
                                             reduction="none")


def attention_cases():
    import torch

    cases = [("sdpa", "sequences"), ("eager", "sequences"), ("sdpa", "samples"), ("eager", "samples")]
    try:
        import flash_attn  # noqa: F401
        fa2 = torch.cuda.is_available()
    except ImportError:
        fa2 = False
    marks = [] if fa2 else [pytest.mark.skip(reason="flash-attn / CUDA not installed here")]
    return cases + [pytest.param("flash_attention_2", unit, marks=marks) for unit in ("sequences", "samples")]


@pytest.mark.parametrize("attn, unit", attention_cases())
def test_each_packed_sample_has_its_own_loss_at_micro_batch_above_one(attn, unit):
    import torch

    samples = [sample(n) for n in (9, 5, 7, 6, 4, 8)]
    units = packed_units(samples, 16) if unit == "sequences" else sample_units(samples)
    mode = collate_mode(True, unit, attn)
    batch, _ = collate(units, np.arange(3), mode, pad_id=0)  # micro batch of 3 units
    device, dtype = ("cuda", torch.bfloat16) if attn == "flash_attention_2" else ("cpu", None)
    model = tiny_llama(attn, dtype).to(device).eval()
    tensors = {k: torch.as_tensor(v, device=device) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**tensors, use_cache=False).logits
        found = segments(batch)
        assert len(found) >= 3  # several samples share this micro batch
        for row, a, b in found:
            alone = model(input_ids=torch.as_tensor(batch["input_ids"][row:row + 1, a:b], device=device)).logits[0]
            labels = batch["labels"][row, a:b]
            together = token_losses(logits[row, a:b], labels)
            torch.testing.assert_close(together, token_losses(alone, labels), atol=2e-2 if dtype else 1e-5,
                                       rtol=1e-2 if dtype else 1e-4)


def test_flash_attention_gets_one_row_that_transformers_treats_as_packed():
    """FA2 only builds varlen attention from restarting positions when the batch is one row."""
    import torch
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    units = packed_units([sample(n) for n in (9, 5, 7, 6, 4, 8)], 16)
    assert collate_mode(True, "sequences", "sdpa") == "stacked"
    assert collate_mode(True, "sequences", "flash_attention_2") == "one_row"
    assert collate_mode(False, "samples", "flash_attention_2") == "padded"
    batch, real = collate(units, np.arange(2), "one_row", pad_id=0)
    assert batch["input_ids"].shape == (1, 32) and real == int(units.n_real[:2].sum())
    assert bool(_is_packed_sequence(torch.as_tensor(batch["position_ids"]), 1))
    stacked, _ = collate(units, np.arange(2), "stacked", pad_id=0)
    assert stacked["input_ids"].shape == (2, 16)
    assert not bool(_is_packed_sequence(torch.as_tensor(stacked["position_ids"]), 2))  # what FA2 got before


# --- the loss is a per-token mean over the global batch -------------------------------------

def accumulated_gradients(model, units: Units, world: int, micro: int, accum: int, per_token: bool):
    """Gradients as DeepSpeed forms them: summed over micro batches, averaged over workers."""
    import torch

    from train.loop import micro_step_loss

    mode = collate_mode(True, "samples", "sdpa")
    per_rank = len(units) // world
    order = np.arange(per_rank)
    targets = int(units.targets.sum())  # the step's loss positions on all workers (all-reduced in the loop)
    grads = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world):
        model.zero_grad()
        for a in range(accum):
            batch, _ = collate(units, rank * per_rank + micro_batch(order, 0, a, accum, micro), mode, 0)
            inputs = {k: torch.as_tensor(v) for k, v in batch.items()}
            if per_token:
                loss, _ = micro_step_loss(model, inputs, targets, world)
            else:  # before issue 14: each micro batch's own mean, divided by the accumulation steps
                loss = model(**inputs, use_cache=False).loss / accum
            loss.backward()
        grads = [g + p.grad / world for g, p in zip(grads, model.parameters())]
    return grads


def test_gradient_accumulation_1x8_4x2_and_2_workers_give_the_global_token_mean_gradient():
    import torch

    samples = [sample(n, prompt=p) for n, p in ((30, 3), (6, 3), (12, 8), (9, 2), (25, 20), (5, 2), (14, 4), (7, 5))]
    units = sample_units(samples)
    model = tiny_llama("sdpa")
    model.zero_grad()
    everything, _ = collate(units, np.arange(8), "padded", 0)  # one batch: HF's mean over all its tokens
    model(**{k: torch.as_tensor(v) for k, v in everything.items()}, use_cache=False).loss.backward()
    reference = [p.grad.clone() for p in model.parameters()]
    for world, micro, accum in ((1, 1, 8), (1, 4, 2), (2, 2, 2)):
        grads = accumulated_gradients(model, units, world, micro, accum, per_token=True)
        for g, ref in zip(grads, reference):
            torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-4)
    old_1x8 = accumulated_gradients(model, units, 1, 1, 8, per_token=False)
    old_4x2 = accumulated_gradients(model, units, 1, 4, 2, per_token=False)
    assert not torch.allclose(old_1x8[0], old_4x2[0], atol=1e-6)  # the test can tell the difference


def test_step_targets_count_shifted_labels_per_optimizer_step():
    units = sample_units([sample(n, prompt=2) for n in (5, 6, 7, 8)])
    assert list(units.targets) == [3, 4, 5, 6] == [count_targets(x) for x in units.labels]
    assert step_targets(units, np.array([3, 0, 1, 2]), steps=2, accum=1, micro=2).tolist() == [9, 9]


# --- order: reshuffled every epoch, deterministic, resumable ---------------------------------

def test_units_are_reshuffled_every_epoch_and_per_rank_but_deterministically():
    first, again = epoch_order(50, 0, 0, 0), epoch_order(50, 0, 0, 0)
    assert (first == again).all() and sorted(first) == list(range(50))
    assert not (first == epoch_order(50, 0, 1, 0)).all()
    assert not (first == epoch_order(50, 0, 0, 1)).all()
    assert not (first == epoch_order(50, 1, 0, 0)).all()


def test_packed_rows_are_not_fed_longest_first():
    samples = [sample(int(n)) for n in RNG.integers(3, 40, size=60)]
    units = packed_units(samples, 64)
    fed = units.n_real[epoch_order(len(units), 0, 0, 0)]
    assert list(fed) != sorted(fed, reverse=True)


def test_packing_a_group_does_not_depend_on_arrival_order():
    samples = [sample(int(n)) for n in RNG.integers(3, 30, size=20)]
    keys = [stable_hash("id", i) for i in range(20)]
    shuffled = RNG.permutation(20)
    a = pack_group([s[0] for s in samples], [s[1] for s in samples], keys, 48, 0)
    b = pack_group([samples[i][0] for i in shuffled], [samples[i][1] for i in shuffled], [keys[i] for i in shuffled],
                   48, 0)
    assert a == b and len(set(a["key"])) == len(a["key"])


def test_units_from_rows_orders_by_key_whatever_the_delivery_order():
    samples = [sample(n) for n in (4, 5, 6, 7)]
    rows = {"key": [30, 10, 40, 20], "input_ids": [s[0] for s in samples], "labels": [s[1] for s in samples],
            "n_real": [4, 5, 6, 7]}
    units = units_from_rows(rows)
    assert units.n_real.tolist() == [5, 7, 4, 6]
    assert units.position_ids[0].tolist() == list(range(5))


# --- plan checks on resume ------------------------------------------------------------------

def test_plan_mismatch_names_each_differing_key_and_setting():
    from train.loop import plan_mismatch

    stored = {"steps_per_epoch": 12, "total_steps": 36, "world_size": 8, "fingerprint": "abc",
              "settings": {"optim.lr": 2e-5, "lora.method": "none"}}
    assert plan_mismatch(stored, dict(stored)) is None
    diff = plan_mismatch(stored, stored | {"world_size": 4, "fingerprint": "def",
                                           "settings": {"optim.lr": 1e-4, "lora.method": "none", "data.max_samples": 7}})
    assert diff == "world_size 8 != 4, fingerprint abc != def, data.max_samples (unset) != 7, optim.lr 2e-05 != 0.0001"


def test_settings_that_change_the_weights_are_compared_and_the_others_may_change():
    from train.config import result_settings

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml")
    base = result_settings(cfg)
    assert {"optim.lr", "optim.epochs", "optim.global_batch_size", "model.name", "data.template", "lora.r",
            "deepspeed.stage", "data.max_samples"} <= set(base)
    free = ["optim.micro_batch_size=1", "model.gradient_checkpointing=true", "checkpoint.every_steps=3",
            "output.path=/elsewhere", "output.dtype=bfloat16", "metrics.log_every_steps=1", "scaling.cpus_per_worker=2",
            "data.heldout_max_rows=3", "data.path=/copy/of/the/data", "sample.generate=false", "name=other"]
    assert result_settings(load_config(TrainConfig, "configs/train_tiny.yaml", free)) == base
    for override in ("optim.lr=1e-4", "optim.epochs=3", "lora.method=lora", "data.max_length=128", "data.seed=1"):
        assert result_settings(load_config(TrainConfig, "configs/train_tiny.yaml", [override])) != base, override


def test_a_rerun_with_another_plan_is_a_one_line_error(tmp_path):
    import json

    from train.loop import PLAN_FILE, PLAN_KEYS
    from train.run import check_resume, make_plan

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [f"checkpoint.storage_path={tmp_path}"])
    plan = make_plan(cfg, 96, "f1")
    check_resume(cfg, plan)  # no checkpoint yet
    folder = tmp_path / cfg.name / "checkpoint-step0000004"
    folder.mkdir(parents=True)
    (folder / PLAN_FILE).write_text(json.dumps({k: plan[k] for k in PLAN_KEYS}))
    check_resume(cfg, plan)  # same plan: resumes
    check_resume(cfg, make_plan(load_config(TrainConfig, "configs/train_tiny.yaml", [
        f"checkpoint.storage_path={tmp_path}", "optim.micro_batch_size=1"]), 96, "f1"))  # a free key
    with pytest.raises(UserError) as info:
        check_resume(cfg, make_plan(cfg, 80, "f2"))
    message = str(info.value)
    assert "steps_per_epoch 12 != 10" in message and "fingerprint f1 != f2" in message and "\n" not in message
    with pytest.raises(UserError, match="optim.lr 0.003 != 0.001"):
        check_resume(cfg, make_plan(load_config(TrainConfig, "configs/train_tiny.yaml", [
            f"checkpoint.storage_path={tmp_path}", "optim.lr=1e-3"]), 96, "f1"))


# --- batch unit -------------------------------------------------------------------------------

def scan_rows(n: int, seed: int, heldout_every: int = 0):
    """`train.data.scan_batches` input: n usable rows with the order keys the tokenize actors give."""
    import pyarrow as pa

    from train.packing import stable_hash

    keys = [stable_hash(seed, "order", f"row-{i}") for i in range(n)]
    held = [bool(heldout_every) and i % heldout_every == 0 for i in range(n)]
    return keys, [pa.record_batch({"status": ["ok"] * n, "truncated": [False] * n, "heldout": held,
                                   "digest": [i for i in range(n)], "key": keys})]


def test_cloud_preset_trains_the_papers_70k_samples_in_its_optimizer_steps():
    from train.data import scan_batches
    from train.run import batch_report, make_plan

    cfg = load_config(TrainConfig, "configs/train_cloud_7b.yaml")
    assert (cfg.data.max_samples, cfg.optim.batch_unit, cfg.optim.global_batch_size) == (70_000, "samples", 64)
    keys, batches = scan_rows(250_000, cfg.data.seed)
    scan = scan_batches(batches, cfg.data.max_samples)
    assert (scan.available_rows, scan.train_rows) == (250_000, 70_000)
    plan = make_plan(cfg, scan.train_rows)
    # By hand, from the paper: 70,000 samples / 64 per step = 1,093.75: 1,093 whole steps per epoch (the
    # paper's trainer ran the last partial batch too: 1,094), x 3 epochs.
    assert (plan["steps_per_epoch"], plan["total_steps"]) == (1093, 3279)
    line = batch_report(cfg, plan, scan.train_rows, scan.train_rows)
    assert "1093 steps/epoch" in line and "48 samples left over per epoch" in line
    # Counting packed rows of 2048 (~3.4 WizardLM samples each) would give ~3.4x fewer steps.
    rows = make_plan(load_config(TrainConfig, "configs/train_cloud_7b.yaml", ["optim.batch_unit=sequences"]),
                     int(70_000 / 3.4))
    assert rows["steps_per_epoch"] == 20_588 // 64 == 321


def test_max_samples_is_a_uniform_seeded_sample_of_the_training_rows():
    from train.data import scan_batches

    keys, batches = scan_rows(20_000, seed=0, heldout_every=10)
    scan = scan_batches(batches, 5_000)
    assert (scan.heldout_rows, scan.available_rows, scan.train_rows) == (2_000, 18_000, 5_000)
    used = [i for i, k in enumerate(keys) if i % 10 and k <= scan.key_limit]  # what the job's filter keeps
    assert len(used) == 5_000
    assert scan.digest == sum(used) % 2**64  # the fingerprint covers exactly the sampled rows
    assert abs(sum(i < 10_000 for i in used) / 5_000 - 0.5) < 0.03  # uniform over the rows
    lineages = {i // 4 for i in used}  # rows 4k..4k+3: one seed and its evolutions
    assert sum(all(j in used for j in range(4 * r, 4 * r + 4) if j % 10) for r in lineages) < len(lineages) / 2
    again = scan_batches(scan_rows(20_000, seed=0, heldout_every=10)[1], 5_000)
    other = scan_batches(scan_rows(20_000, seed=1, heldout_every=10)[1], 5_000)
    assert again.key_limit == scan.key_limit and other.digest != scan.digest
    assert scan_batches(scan_rows(100, 0)[1], 5_000).key_limit is None  # fewer rows than asked: all of them


def test_one_function_gives_the_steps_gpu_hours_and_cost_of_the_cloud_presets():
    from train.estimate import estimate_config

    n, layers, hidden, seq = 6.74e9, 32, 4096, 2048  # LLaMA-7B
    forward = 2 * n + 4 * layers * hidden * seq
    tokens = 1093 * 64 * 600 * 3  # whole steps x samples x tokens/sample x epochs
    full = estimate_config(load_config(TrainConfig, "configs/train_cloud_7b.yaml"), 250_000, 600, "A100")
    # full fine-tune: forward + backward (2 forwards) + the recomputed forward, sdpa at 30% of 312 TFLOP/s
    hours = tokens * 4 * forward / (312e12 * 0.30) / 3600
    assert (full.steps_per_epoch, full.total_steps) == (1093, 3279)
    assert full.gpu_hours == pytest.approx(hours) and full.wall_hours == pytest.approx(hours / 8)
    assert full.cost == pytest.approx(hours * 32.77 / 8)
    lora = estimate_config(load_config(TrainConfig, "configs/train_cloud_7b_lora.yaml"), 250_000, 600, "A100")
    assert lora.gpu_hours == pytest.approx(tokens * 3 * forward / (312e12 * 0.30) / 3600)  # no weight gradients
    assert 20 < full.gpu_hours < 25 and lora.gpu_hours == pytest.approx(full.gpu_hours * 3 / 4)


@pytest.mark.parametrize("override, message", [
    (["optim.batch_unit=sequences", "data.packing=false"], "needs data.packing=true"),
    (["model.attn_implementation=flash_attention_2"], "needs scaling.use_gpu=true"),
    (["scaling.use_gpu=true", "model.attn_implementation=flash_attention_2"], "set deepspeed.precision=bf16"),
    (["lora.method=qlora"], "lora.method=qlora needs scaling.use_gpu=true"),
    (["lora.method=qlora", "scaling.use_gpu=true", "deepspeed.precision=bf16"], "use deepspeed.stage 0-2"),
    (["optim.batch_unit=rows"], "optim.batch_unit"),
])
def test_bad_batch_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, "configs/train_local.yaml", override)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- held-out split -----------------------------------------------------------------------------

def test_heldout_split_keeps_whole_lineages_together():
    from train.data import is_heldout

    roots = [f"seed-{i}" for i in range(400)]
    held = {root for root in roots if is_heldout(root, root, 0, 0.25)}
    assert 60 < len(held) < 140
    for root in roots:  # every evolution of a root falls on its root's side
        assert all(is_heldout(f"{root}-r{k}", root, 0, 0.25) == (root in held) for k in range(4))
    assert is_heldout("x", None, 0, 0.25) == is_heldout("other", "x", 0, 0.25)  # a seed row is its own root


def test_data_report_says_how_many_rows_are_held_out_and_evaluated(capsys):
    from train.data import Prepared, Scan
    from train.run import make_plan, print_data_report

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", ["data.heldout_max_rows=2"])
    scan = Scan(rows_read=100, counts={"ok": 98, "empty_response": 2}, truncated=0, heldout_rows=7, train_rows=91,
                digest=1)
    prepared = Prepared(units=None, heldout=[{}, {}], scan=scan, n_units=91, real_tokens=9000, fingerprint="f")
    print_data_report(cfg, prepared, make_plan(cfg, 91, "f"))
    out = capsys.readouterr().out
    assert "held out 7 (whole lineages by root_id" in out and "2 evaluated, at most data.heldout_max_rows=2" in out
    assert "11 steps/epoch" in out


# --- MFU, scratch folder, windows -----------------------------------------------------------------

@pytest.mark.parametrize("name, peak", [("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA L40", 181),
                                        ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 80GB HBM3", 989),
                                        ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989), ("NVIDIA A100-PCIE-40GB", 312),
                                        ("NVIDIA A10G", 125), ("Tesla T4", None), ("NVIDIA H100", None)])
def test_gpu_names_match_exactly(name, peak):
    from train.metrics import gpu_peak_tflops

    assert gpu_peak_tflops(name) == peak


def test_unknown_gpu_gives_no_mfu_and_never_a_cpu_peak():
    from train.metrics import format_mfu, peak_tflops_per_worker, window_metrics

    def measure():
        raise AssertionError("a CPU peak must not be measured for a GPU worker")

    assert peak_tflops_per_worker(None, True, "Tesla T4", measure) is None
    assert peak_tflops_per_worker(None, True, "NVIDIA L40S", measure) == 362
    assert peak_tflops_per_worker(None, False, None, lambda: 0.5) == 0.5
    metrics = window_metrics([1.0, 2.0, 3.0, 1000, 800], seconds=2.0, world_size=2, flops_token=1e9,
                             peak_flops_per_worker=None)
    assert metrics["mfu"] is None and format_mfu(metrics["mfu"]) == "n/a"
    assert metrics["loss"] == 2.0 and metrics["real_tokens_per_s"] == 400
    assert metrics["step_losses"] == [1.0, 2.0, 3.0]
    assert window_metrics([1.0, 2.0, 3.0, 1000, 800], 2.0, 2, 1e9, 1e12)["mfu"] == pytest.approx(400 * 1e9 / 2e12)


class FakeEngine:
    def __init__(self):
        self.saved_in = None

    def save_checkpoint(self, folder, tag, client_state, exclude_frozen_parameters):
        import os

        self.saved_in = folder
        self.client_state = client_state
        with open(os.path.join(folder, "shard.pt"), "w") as out:
            out.write(tag)


@pytest.fixture
def fake_ray_train(monkeypatch):
    import ray.train

    reports = []

    class Context:
        def get_world_rank(self):
            return 0

    def fake_report(metrics, checkpoint=None, checkpoint_dir_name=None, checkpoint_upload_mode=None,
                    delete_local_checkpoint_after_upload=None):
        files = sorted(p.name for p in __import__("pathlib").Path(checkpoint.path).iterdir()) if checkpoint else None
        reports.append((metrics, files, checkpoint_upload_mode, delete_local_checkpoint_after_upload))
        time.sleep(0.3)  # a slow upload

    monkeypatch.setattr(ray.train, "report", fake_report)
    monkeypatch.setattr(ray.train, "get_context", lambda: Context())
    return reports


def test_checkpoint_shards_are_staged_in_the_scratch_folder_with_the_plan(tmp_path, fake_ray_train):
    from train.loop import PLAN_FILE, Plan, RunState, report

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [f"checkpoint.scratch_dir={tmp_path}/nvme"])
    engine = FakeEngine()
    plan = Plan(steps_per_epoch=3, total_steps=6, world_size=2, fingerprint="f")
    report(engine, cfg, plan, RunState(step=3), {"step": 3}, with_checkpoint=True)
    assert engine.saved_in.startswith(f"{tmp_path}/nvme/evolray-ckpt-")
    assert engine.client_state["plan"] == plan.signature()
    assert fake_ray_train[0][1] == [PLAN_FILE, "shard.pt"]
    import ray.train

    # checkpoint.upload=async (the default): Ray Train uploads in the background, then deletes the folder.
    assert fake_ray_train[0][2:] == (ray.train.CheckpointUploadMode.ASYNC, True)


def test_save_time_is_not_counted_in_the_next_windows_tokens_per_second(tmp_path, fake_ray_train, monkeypatch):
    import train.loop as loop
    from train.metrics import Window

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", [f"checkpoint.scratch_dir={tmp_path}",
                                                               "metrics.log_every_steps=2", "checkpoint.every_steps=3"])
    monkeypatch.setattr(loop, "log_metrics", lambda *a: {"step": 0, "loss": 1.0, "lr": 0.1, "tokens_per_s": 1,
                                                        "real_tokens_per_s": 1, "mfu": None})
    plan = loop.Plan(steps_per_epoch=10, total_steps=10)
    window = Window()
    before = window.start
    state = loop.RunState(step=3)
    kept = loop.end_of_step(FakeEngine(), cfg, plan, state, window, 0, (1.0, None), rank=1, pad_id=0)
    assert kept is window and window.start - before >= 0.3  # save only: its time is taken out
    assert len(state.checkpoint_stalls) == 1 and state.checkpoint_stalls[0] >= 0.3  # and reported as a stall
    ended = time.perf_counter()
    fresh = loop.end_of_step(FakeEngine(), cfg, plan, loop.RunState(step=6), window, 0, (1.0, None), rank=1,
                             pad_id=0)
    assert fresh is not window and fresh.start >= ended + 0.3  # log + save: the new window starts after both
