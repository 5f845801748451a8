"""The per-worker training loop (Ray Train V2 + DeepSpeed), top to bottom.

Each worker: build the DeepSpeed engine -> restore the last checkpoint (if any) -> for each
epoch, read its shard of packed sequences, skip the micro batches a restored run already did,
forward/backward/step (DeepSpeed accumulates to the global batch) -> every N optimizer steps
log (one all-reduce + one `ray.train.report`) and every M steps checkpoint -> export the
consolidated HF model. Workers run in lockstep: the driver trimmed the dataset so that every
worker gets exactly steps_per_epoch x grad_accum micro batches per epoch.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field

from train.config import TrainConfig

METRICS_FILE = "train_metrics.json"


@dataclass
class Plan:
    """What the driver computed from the data: identical on every worker."""

    steps_per_epoch: int
    total_steps: int
    heldout: list = field(default_factory=list)  # [(input_ids, labels)] evaluated before/after
    output_path: str = ""


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    restored_from: int | None = None
    history: list = field(default_factory=list)
    heldout_loss_before: float | None = None


def to_device(batch: dict, device) -> dict:
    import torch

    return {k: torch.as_tensor(v).to(device) for k, v in batch.items()}


def micro_batches(shard, cfg: TrainConfig, pad_id: int):
    """Yield model inputs (dict of int64 arrays) plus the count of real tokens in each."""
    from train.packing import pad_to_longest, stack_packed

    for rows in shard.iter_batches(batch_size=cfg.optim.micro_batch_size, batch_format="numpy"):
        if cfg.data.packing:
            batch = stack_packed(rows)
        else:
            batch = pad_to_longest(list(rows["input_ids"]), list(rows["labels"]), pad_id)
        yield batch, int(rows["n_real"].sum())


def heldout_loss(engine, examples: list, pad_id: int) -> float | None:
    """Token-weighted loss on the held-out samples (every rank runs the same forwards)."""
    import torch

    from train.packing import pad_to_longest

    if not examples:
        return None
    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            chunk = examples[i: i + 4]
            batch = to_device(pad_to_longest([e[0] for e in chunk], [e[1] for e in chunk], pad_id), engine.device)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(engine(**batch, use_cache=False).loss) * n
            count += n
    engine.train()
    return total / max(count, 1)


def restore(engine) -> RunState:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as folder:
        _, client = engine.load_checkpoint(folder, load_lr_scheduler_states=True)
    state = RunState(**client["run_state"])
    state.restored_from = state.step
    return state


def report(engine, state: RunState, metrics: dict, with_checkpoint: bool) -> None:
    """One `ray.train.report` from every worker; with a checkpoint, each saves its ZeRO shards."""
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="evolray-ckpt-") as folder:
        run_state = {k: v for k, v in asdict(state).items() if k != "restored_from"}
        engine.save_checkpoint(folder, tag=f"step{state.step}", client_state={"run_state": run_state})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint-step{state.step:07d}")


def log_metrics(engine, window, step: int, flops_token: float, peak: float) -> dict:
    """All-reduce the window's sums so that every rank reports the same group-wide numbers."""
    import torch
    import torch.distributed as dist

    sums = torch.tensor([window.loss_sum, window.micro_batches, window.tokens, window.real_tokens],
                        dtype=torch.float64, device=engine.device)
    dist.all_reduce(sums)
    seconds = max(time.perf_counter() - window.start, 1e-9)
    from train.metrics import mfu

    real_s = float(sums[3]) / seconds
    return {"step": step, "loss": float(sums[0] / sums[1]), "lr": engine.get_lr()[0],
            "tokens_per_s": float(sums[2]) / seconds, "real_tokens_per_s": real_s,
            "mfu": mfu(real_s, flops_token, peak * dist.get_world_size()), "window_s": seconds, "time": time.time()}


def model_flops(engine, cfg: TrainConfig) -> tuple[float, float]:
    """(FLOPs per token, peak FLOP/s of one worker) for the MFU estimate."""
    import torch

    from train.metrics import flops_per_token, gpu_peak_tflops, measure_cpu_peak_tflops

    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    c = engine.module.config
    flops = flops_per_token(n_params, c.num_hidden_layers, c.hidden_size, cfg.data.max_length)
    peak = cfg.metrics.peak_tflops_per_worker
    if peak is None:
        peak = (gpu_peak_tflops(torch.cuda.get_device_name()) if cfg.scaling.use_gpu else None) \
            or measure_cpu_peak_tflops()
    return flops, peak * 1e12


def maybe_kill(cfg: TrainConfig, state: RunState, rank: int) -> None:
    """Fault injection for the resume test: a real SIGKILL of one worker, once per run name."""
    from common import storage

    if cfg.debug.kill_at_step != state.step or rank != cfg.debug.kill_worker_rank:
        return
    marker = storage.join(cfg.checkpoint.storage_path, cfg.name, ".debug-killed")
    if storage.exists(marker):
        return
    storage.write_text(marker, f"killed rank {rank} at step {state.step}\n")
    # Ray Train's controller takes reported checkpoints by polling the workers: give it time to
    # see the last one, so that the restart resumes from it and not from the start.
    time.sleep(5)
    print(f"[debug] killing worker rank {rank} at step {state.step}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def run_epochs(engine, cfg: TrainConfig, plan: Plan, state: RunState, pad_id: int) -> None:
    import ray.train

    from train.metrics import Window

    rank = ray.train.get_context().get_world_rank()
    accum = cfg.grad_accum_steps
    flops_token, peak = model_flops(engine, cfg)
    shard = ray.train.get_dataset_shard("train")
    window = Window()
    for epoch in range(state.step // plan.steps_per_epoch, cfg.optim.epochs):
        skip = (state.step - epoch * plan.steps_per_epoch) * accum  # micro batches done before a restore
        for i, (batch, real) in enumerate(micro_batches(shard, cfg, pad_id)):
            if i >= plan.steps_per_epoch * accum:
                break
            if i < skip:
                continue
            inputs = to_device(batch, engine.device)
            # No KV cache: transformers derives the block-diagonal (packed) mask only without one.
            loss = engine(**inputs, use_cache=False).loss
            engine.backward(loss)
            engine.step()  # DeepSpeed only updates at the accumulation boundary
            window.add(float(loss), inputs["input_ids"].numel(), real)
            if (i + 1) % accum:
                continue
            state.step += 1
            maybe_kill(cfg, state, rank)
            log = state.step % cfg.metrics.log_every_steps == 0 or state.step == plan.total_steps
            save = state.step % cfg.checkpoint.every_steps == 0 or state.step == plan.total_steps
            metrics = {"step": state.step, "epoch": epoch}
            if log:
                metrics = log_metrics(engine, window, state.step, flops_token, peak) | {"epoch": epoch}
                state.history.append(metrics)
                window = Window()
                if rank == 0:
                    print(f"[train] step {state.step}/{plan.total_steps} epoch {epoch} loss {metrics['loss']:.4f} "
                          f"lr {metrics['lr']:.2e} tok/s {metrics['tokens_per_s']:.0f} "
                          f"(real {metrics['real_tokens_per_s']:.0f}) mfu {metrics['mfu']:.1%}", flush=True)
            if log or save:
                report(engine, state, metrics, save)


def train_loop(loop_config: dict) -> None:
    """Ray Train entry point of every worker."""
    import ray.train
    from transformers import AutoTokenizer

    from common.models import resolve_model
    from train.engine import build_engine, export_hf_model
    from train.masking import pad_id_of

    cfg = TrainConfig.model_validate(loop_config["config"])
    plan = Plan(**loop_config["plan"])
    model_path = resolve_model(cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = pad_id_of(tokenizer)
    engine = build_engine(cfg, model_path, plan.total_steps)
    state = restore(engine)
    if state.heldout_loss_before is None:
        state.heldout_loss_before = heldout_loss(engine, plan.heldout, pad_id)
    started = time.perf_counter()
    run_epochs(engine, cfg, plan, state, pad_id)
    after = heldout_loss(engine, plan.heldout, pad_id)
    export_hf_model(engine, cfg, tokenizer, plan.output_path)
    final = {"steps": state.step, "restored_from_step": state.restored_from,
             "heldout_loss_before": state.heldout_loss_before, "heldout_loss_after": after,
             "train_seconds_last_attempt": round(time.perf_counter() - started, 1), "history": state.history}
    if ray.train.get_context().get_world_rank() == 0:
        # Result.metrics of Ray Train V2 is the last *checkpoint's*; the driver reads this file instead.
        from common import storage

        storage.write_json(storage.join(plan.output_path, METRICS_FILE), final)
    ray.train.report({"step": state.step, "done": True})
