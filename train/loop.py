"""The per-worker training loop (Ray Train V2 + DeepSpeed), top to bottom.

Each worker: build the DeepSpeed engine -> restore the last checkpoint (if any; its plan must
match) -> load this rank's units into memory -> for each epoch, feed them in the epoch's seeded
order, skipping the steps a restored run already did; forward/backward/step (DeepSpeed
accumulates to the global batch) -> every N optimizer steps log (one all-reduce + one
`ray.train.report`) and every M steps checkpoint -> export the consolidated HF model.
Workers run in lockstep: the driver gave every rank exactly steps_per_epoch x grad_accum x
micro_batch_size units.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

from common import storage
from common.models import resolve_model
from train.batches import Units, collate, collate_mode, epoch_order, micro_batch, step_targets, units_from_rows
from train.config import TrainConfig
from train.engine import build_engine, export_hf_model
from train.masking import pad_id_of
from train.metrics import (Window, flops_per_token, format_mfu, measure_cpu_peak_tflops, peak_tflops_per_worker,
                           window_metrics)
from train.packing import pad_to_longest, stable_hash

METRICS_FILE = "train_metrics.json"
PLAN_FILE = "evolray_plan.json"  # in every checkpoint: what a resume must match
PLAN_KEYS = ("steps_per_epoch", "total_steps", "world_size", "fingerprint", "settings")


@dataclass
class Plan:
    """What the driver computed from the data: identical on every worker."""

    steps_per_epoch: int
    total_steps: int
    world_size: int = 1
    fingerprint: str = ""  # of the training units (content) and the settings that shaped them
    settings: dict = field(default_factory=dict)  # train.config.result_settings: what else changes the weights
    heldout: list = field(default_factory=list)  # [(input_ids, labels)] evaluated before/after
    output_path: str = ""

    def signature(self) -> dict:
        return {key: getattr(self, key) for key in PLAN_KEYS}


def plan_mismatch(stored: dict, current: dict) -> str | None:
    """'steps_per_epoch 12 != 10, optim.lr 0.003 != 0.001, ...' (checkpoint vs now) for what differs, else None."""
    diffs = [f"{key} {stored.get(key)} != {current[key]}" for key in PLAN_KEYS
             if key != "settings" and stored.get(key) != current[key]]
    old, new = stored.get("settings") or {}, current["settings"]
    diffs += [f"{key} {old.get(key, '(unset)')} != {new.get(key, '(unset)')}"
              for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return ", ".join(diffs) or None


def resume_error(name: str, diff: str) -> str:
    return (f"run {name!r} has a checkpoint of other settings (checkpoint vs now: {diff}); rerun with the "
            "checkpoint's settings to resume it, or choose another name to train from scratch")


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    restored_from: int | None = None
    history: list = field(default_factory=list)
    heldout_loss_before: float | None = None
    checkpoint_stalls: list = field(default_factory=list)  # seconds training waited per checkpoint


def say(line: str) -> None:
    """One line to the driver. Ray Train patches `print` in workers to log *and* echo (every line
    reached the driver twice); the process's own stdout is streamed once."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


_announced: set[str] = set()


def _local_rank() -> int:
    try:
        import ray.train

        return ray.train.get_context().get_local_rank()
    except Exception:  # outside a Ray Train worker
        return 0


def scratch_dir(cfg: TrainConfig) -> str:
    """Local staging folder for checkpoint shards, restored checkpoints and the export
    (checkpoint.scratch_dir, NVMe on GPU nodes); created if missing, and named once per node."""
    folder = cfg.checkpoint.scratch_dir or tempfile.gettempdir()
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    if folder not in _announced:
        _announced.add(folder)
        if created or _local_rank() == 0:
            source = "checkpoint.scratch_dir" if cfg.checkpoint.scratch_dir else "system temp folder"
            say(f"[train] scratch folder ({source}) on {os.uname().nodename}: {folder}{' (created)' if created else ''}")
    return folder


@contextlib.contextmanager
def local_checkpoint_dir(checkpoint, scratch: str):
    """The checkpoint's files in a local folder: a local checkpoint is read in place; a remote
    one (s3://) is downloaded into `scratch` and deleted afterwards. (Ray's `as_directory` would
    download it into the system temp folder: ~100 GB on the root disk for a 7B ZeRO-3 run.)"""
    from pyarrow import fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield checkpoint.path
        return
    folder = tempfile.mkdtemp(prefix="evolray-restore-", dir=scratch)
    try:
        yield checkpoint.to_directory(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def to_device(batch: dict, device) -> dict:
    import torch

    return {k: torch.as_tensor(v).to(device) for k, v in batch.items()}


def micro_step_loss(model, inputs: dict, targets_in_step: int, world_size: int):
    """(loss to backpropagate, loss to log) of one micro batch.

    The model sums its token losses and divides by the loss positions of the whole optimizer
    step on all workers (`num_items_in_batch`), so every token weighs the same whatever micro
    batch or worker it is in: gradient accumulation 1 x 8 and 4 x 2 give the same gradients.
    DeepSpeed sums micro batches (backward with scale_wrt_gas=False) and averages workers'
    gradients; x world_size undoes that average.
    """
    loss = model(**inputs, use_cache=False, num_items_in_batch=targets_in_step).loss
    return loss * world_size, float(loss.detach())


def load_units(shard) -> Units:
    """This rank's whole share, in key order (the order Ray Data delivers it in does not matter)."""
    columns: dict[str, list] = {}
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        for key, values in batch.items():
            columns.setdefault(key, []).extend(values)
    return units_from_rows(columns)


def heldout_loss(engine, examples: list, pad_id: int) -> float | None:
    """Token-weighted loss on the held-out samples (every rank runs the same forwards); the engine
    is left in the mode it was in."""
    import torch

    if not examples:
        return None
    training = engine.training
    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            chunk = examples[i: i + 4]
            batch = to_device(pad_to_longest([e[0] for e in chunk], [e[1] for e in chunk], pad_id), engine.device)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(engine(**batch, use_cache=False).loss) * n
            count += n
    engine.train(training)
    return total / max(count, 1)


def restore(engine, cfg: TrainConfig, plan: Plan) -> RunState:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return RunState()
    with local_checkpoint_dir(checkpoint, scratch_dir(cfg)) as folder:
        # LoRA checkpoints hold the adapters only: the frozen base comes from the model folder.
        _, client = engine.load_checkpoint(folder, load_lr_scheduler_states=True,
                                           load_module_strict=cfg.lora.method == "none")
    diff = plan_mismatch(client.get("plan", {}), plan.signature())
    if diff:
        raise ValueError(resume_error(cfg.name, diff))
    state = RunState(**client["run_state"])
    state.restored_from = state.step
    return state


def report(engine, cfg: TrainConfig, plan: Plan, state: RunState, metrics: dict, with_checkpoint: bool) -> None:
    """One `ray.train.report` from every worker; with a checkpoint, each saves its ZeRO shards into
    the scratch folder, and (checkpoint.upload=async) Ray Train uploads them, then deletes them,
    while training goes on."""
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    folder = tempfile.mkdtemp(prefix="evolray-ckpt-", dir=scratch_dir(cfg))
    run_state = {k: v for k, v in asdict(state).items() if k != "restored_from"}
    engine.save_checkpoint(folder, tag=f"step{state.step}", client_state={"run_state": run_state,
                                                                          "plan": plan.signature()},
                           exclude_frozen_parameters=cfg.lora.method != "none")
    if ray.train.get_context().get_world_rank() == 0:  # read by the driver before a resume
        with open(os.path.join(folder, PLAN_FILE), "w") as out:
            json.dump(plan.signature(), out)
    mode = ray.train.CheckpointUploadMode.ASYNC if cfg.checkpoint.upload == "async" else \
        ray.train.CheckpointUploadMode.SYNC
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                     checkpoint_dir_name=f"checkpoint-step{state.step:07d}", checkpoint_upload_mode=mode,
                     delete_local_checkpoint_after_upload=True)


def log_metrics(engine, window: Window, step: int, flops_token: float, peak: float | None) -> dict:
    """All-reduce the window's sums so that every rank reports the same group-wide numbers."""
    import torch
    import torch.distributed as dist

    sums = torch.tensor([*window.step_losses, window.tokens, window.real_tokens], dtype=torch.float64,
                        device=engine.device)
    dist.all_reduce(sums)
    seconds = time.perf_counter() - window.start
    return {"step": step, "lr": engine.get_lr()[0], "time": time.time()} | window_metrics(
        sums.tolist(), seconds, dist.get_world_size(), flops_token, peak)


def model_flops(engine, cfg: TrainConfig) -> tuple[float, float | None]:
    """(FLOPs per token, peak FLOP/s of one worker or None when unknown) for the MFU estimate."""
    import torch

    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    c = engine.module.config
    flops = flops_per_token(n_params, c.num_hidden_layers, c.hidden_size, cfg.data.max_length,
                            lora=cfg.lora.method != "none")
    device = torch.cuda.get_device_name() if cfg.scaling.cuda else None
    peak = peak_tflops_per_worker(cfg.metrics.peak_tflops_per_worker, cfg.scaling.cuda, device,
                                  measure_cpu_peak_tflops)
    return flops, None if peak is None else peak * 1e12


def maybe_kill(cfg: TrainConfig, state: RunState, rank: int) -> None:
    """Fault injection for the resume test: a real SIGKILL of one worker, once per run name."""
    if cfg.debug.kill_at_step != state.step or rank != cfg.debug.kill_worker_rank:
        return
    marker = storage.join(cfg.checkpoint.storage_path, cfg.name, ".debug-killed")
    if storage.exists(marker):
        return
    storage.write_text(marker, f"killed rank {rank} at step {state.step}\n")
    # Ray Train's controller takes reported checkpoints by polling the workers: give it time to
    # see the last one, so that the restart resumes from it and not from the start.
    time.sleep(5)
    say(f"[debug] killing worker rank {rank} at step {state.step}")
    os.kill(os.getpid(), signal.SIGKILL)


def log_line(metrics: dict, plan: Plan) -> str:
    heldout = metrics.get("heldout_loss")
    return (f"[train] step {metrics['step']}/{plan.total_steps} epoch {metrics['epoch']} loss {metrics['loss']:.4f} "
            f"lr {metrics['lr']:.2e} tok/s {metrics['tokens_per_s']:.0f} (real {metrics['real_tokens_per_s']:.0f}) "
            f"mfu {format_mfu(metrics['mfu'])}" + ("" if heldout is None else f" held-out loss {heldout:.4f}"))


def end_of_step(engine, cfg: TrainConfig, plan: Plan, state: RunState, window: Window, epoch: int,
                flops: tuple[float, float | None], rank: int, pad_id: int) -> Window:
    """Log (with the held-out loss every metrics.heldout_every_steps) and/or checkpoint after optimizer
    step `state.step`; returns the window to go on with. The time of an evaluation, a report or a
    checkpoint save is never counted in the next window's tokens/s."""
    every = cfg.metrics.heldout_every_steps
    heldout = bool(every and plan.heldout) and state.step % every == 0 and state.step < plan.total_steps
    log = heldout or state.step % cfg.metrics.log_every_steps == 0 or state.step == plan.total_steps
    save = state.step % cfg.checkpoint.every_steps == 0 or state.step == plan.total_steps
    metrics = {"step": state.step, "epoch": epoch}
    if log:
        metrics = log_metrics(engine, window, state.step, *flops) | {"epoch": epoch}
        if heldout:
            metrics["heldout_loss"] = heldout_loss(engine, plan.heldout, pad_id)
        state.history.append(metrics)
        if rank == 0:
            say(log_line(metrics, plan))
    if not (log or save):
        return window
    started = time.perf_counter()
    report(engine, cfg, plan, state, metrics, save)
    if save:  # what a checkpoint costs the training: the save to scratch (+ the upload when sync)
        state.checkpoint_stalls.append(round(time.perf_counter() - started, 3))
    if log:
        return Window()
    window.exclude(time.perf_counter() - started)
    return window


def global_step_targets(engine, units: Units, order, cfg: TrainConfig, plan: Plan):
    """Loss positions of every optimizer step of the epoch, summed over all workers (one all-reduce)."""
    import torch
    import torch.distributed as dist

    local = step_targets(units, order, plan.steps_per_epoch, cfg.grad_accum_steps, cfg.optim.micro_batch_size)
    counts = torch.as_tensor(local, dtype=torch.int64, device=engine.device)
    dist.all_reduce(counts)
    return counts.tolist()


def seed_step(seed: int, rank: int, step: int) -> None:
    """Randomness of one optimizer step (LoRA dropout) from (seed, rank, step): a resumed run draws
    what an uninterrupted one would."""
    import torch

    torch.manual_seed(stable_hash(seed, "step", rank, step) % 2**63)


def train_step(engine, units: Units, order, step: int, target: int, mode: str, pad_id: int, cfg: TrainConfig,
               world_size: int, window: Window) -> None:
    """One optimizer step of this worker: its grad_accum_steps micro batches of step `step` of the
    epoch, each backpropagated as its share of the step's global token mean (`target` loss
    positions on all workers); DeepSpeed sums them and updates at the accumulation boundary."""
    accum, micro = cfg.grad_accum_steps, cfg.optim.micro_batch_size
    for a in range(accum):
        batch, real = collate(units, micro_batch(order, step, a, accum, micro), mode, pad_id)
        inputs = to_device(batch, engine.device)
        # No KV cache: transformers derives the per-sample mask only without one.
        loss, value = micro_step_loss(engine, inputs, target, world_size)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()  # DeepSpeed only updates at the accumulation boundary
        window.add(value, inputs["input_ids"].numel(), real)
    window.end_step()


def run_epochs(engine, cfg: TrainConfig, plan: Plan, state: RunState, pad_id: int) -> None:
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    mode = collate_mode(cfg.data.packing, cfg.optim.batch_unit, cfg.model.attn_implementation)
    flops = model_flops(engine, cfg)
    units = load_units(ray.train.get_dataset_shard(f"rank{rank}"))
    window = Window()
    # from_pretrained returns the model in eval mode, where gradient checkpointing and dropout are
    # off: train mode from the first step on, whether or not a held-out loss ran or a run resumed.
    engine.train()
    for epoch in range(state.step // plan.steps_per_epoch, cfg.optim.epochs):
        order = epoch_order(len(units), cfg.data.seed, epoch, rank)
        targets = global_step_targets(engine, units, order, cfg, plan)
        for step in range(state.step - epoch * plan.steps_per_epoch, plan.steps_per_epoch):
            seed_step(cfg.data.seed, rank, state.step)
            train_step(engine, units, order, step, targets[step], mode, pad_id, cfg, plan.world_size, window)
            state.step += 1
            maybe_kill(cfg, state, rank)
            window = end_of_step(engine, cfg, plan, state, window, epoch, flops, rank, pad_id)


def quiet_library_noise() -> None:
    """What the console would repeat for every rank without telling a user anything: Ray Train logs each
    report's whole metrics dict (the loop prints its own step line), and ZeRO-3 calls torch.distributed
    collectives that this torch deprecates (a FutureWarning and its source line per call site and rank:
    32 lines in one `make run`)."""
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")
    with contextlib.suppress(ImportError):  # Ray Train V2 names its logger after the file
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop(loop_config: dict) -> None:
    """Ray Train entry point of every worker."""
    import ray.train
    from transformers import AutoTokenizer

    quiet_library_noise()

    cfg = TrainConfig.model_validate(loop_config["config"])
    plan = Plan(**loop_config["plan"])
    scratch = scratch_dir(cfg)
    # Onto this node's scratch disk (NVMe), not the root disk's cache: a 7B model is ~13 GB.
    model_path = resolve_model(cfg.model.name, cfg.checkpoint.scratch_dir and os.path.join(scratch, "models"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = pad_id_of(tokenizer)
    engine = build_engine(cfg, model_path, plan.total_steps)
    state = restore(engine, cfg, plan)
    if state.heldout_loss_before is None:
        state.heldout_loss_before = heldout_loss(engine, plan.heldout, pad_id)
    started = time.perf_counter()
    run_epochs(engine, cfg, plan, state, pad_id)
    after = heldout_loss(engine, plan.heldout, pad_id)
    export_hf_model(engine, cfg, tokenizer, plan.output_path, scratch, model_path)
    final = {"steps": state.step, "restored_from_step": state.restored_from,
             "heldout_loss_before": state.heldout_loss_before, "heldout_loss_after": after,
             "train_seconds_last_attempt": round(time.perf_counter() - started, 1),
             "checkpoint_stalls_s": state.checkpoint_stalls, "history": state.history}
    if ray.train.get_context().get_world_rank() == 0:
        # Result.metrics of Ray Train V2 is the last *checkpoint's*; the driver reads this file instead.
        storage.write_json(storage.join(plan.output_path, METRICS_FILE), final)
    ray.train.report({"step": state.step, "done": True})
