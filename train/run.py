"""Driver of the train job: validate inputs, prepare data on Ray Data, run the TorchTrainer,
print where the model is and what it learned."""
from __future__ import annotations

import json
import time

from common.config import UserError
from train.config import TrainConfig


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers run in another folder: local paths must not be relative to the driver's."""
    from common.models import pin_local_model
    from common.storage import absolute

    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"path": absolute(cfg.data.path)}),
        "model": cfg.model.model_copy(update={"name": pin_local_model(cfg.model.name)}),
        "output": cfg.output.model_copy(update={"path": absolute(cfg.output.path)}),
        "checkpoint": cfg.checkpoint.model_copy(update={"storage_path": absolute(cfg.checkpoint.storage_path)}),
    })


def make_plan(cfg: TrainConfig, sequences: int) -> dict:
    steps_per_epoch = sequences // cfg.optim.global_batch_size
    if steps_per_epoch == 0:
        raise UserError(f"only {sequences} training sequences, fewer than one global batch "
                        f"(optim.global_batch_size={cfg.optim.global_batch_size}); lower it or add data")
    return {"steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * cfg.optim.epochs}


def build_trainer(cfg: TrainConfig, plan: dict, train_ds):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.loop import train_loop

    s = cfg.scaling
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "plan": plan},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker} | ({"GPU": 1} if s.use_gpu else {})),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.checkpoint.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures)),
        datasets={"train": train_ds},
    )


def print_data_report(cfg: TrainConfig, prepared, plan: dict) -> None:
    dropped = {k: v for k, v in prepared.counts.items() if k != "ok"}
    print(f"[train] data: {prepared.rows_read} rows read, {prepared.counts.get('ok', 0)} usable, "
          f"dropped {sum(dropped.values())} {dropped or ''}, held out {len(prepared.heldout)}", flush=True)
    if prepared.truncated:
        print(f"[train] warning: {prepared.truncated} samples truncated to data.max_length={cfg.data.max_length}",
              flush=True)
    used = plan["steps_per_epoch"] * cfg.optim.global_batch_size
    kind = "packed sequences" if cfg.data.packing else "samples"
    print(f"[train] {prepared.sequences} {kind} ({prepared.real_tokens} tokens); {used} used per epoch "
          f"({prepared.sequences - used} left over), {plan['steps_per_epoch']} steps/epoch, "
          f"{plan['total_steps']} steps, grad accumulation {cfg.grad_accum_steps}", flush=True)


def run_train(cfg: TrainConfig) -> dict:
    from transformers import AutoTokenizer

    from common import storage
    from common.models import check_model, resolve_model
    from common.ray_setup import init_ray
    from train.data import check_input, prepare
    from train.masking import pad_id_of
    from train.loop import METRICS_FILE

    cfg = with_absolute_paths(cfg)
    check_model(cfg.model.name, "model.name")
    check_input(cfg.data.path)
    if storage.is_nonempty_dir(cfg.output.path) and not storage.exists(storage.join(cfg.output.path, "config.json")):
        # The export replaces output.path: never let it delete a folder that is not an earlier export.
        raise UserError(f"output.path: {cfg.output.path} holds files that are not a model export; "
                        "choose another folder")
    storage.check_writable(cfg.output.path)
    model_path = resolve_model(cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = pad_id_of(tokenizer)
    init_ray(cfg.ray)
    started = time.time()
    prepared = prepare(cfg, pad_id)
    plan = make_plan(cfg, prepared.sequences)
    print_data_report(cfg, prepared, plan)
    heldout = [(list(map(int, r["input_ids"])), list(map(int, r["labels"]))) for r in prepared.heldout]
    plan |= {"heldout": heldout, "output_path": cfg.output.path}
    result = build_trainer(cfg, plan, prepared.train.limit(plan["steps_per_epoch"] * cfg.optim.global_batch_size)).fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    summary = summarize(cfg, prepared, plan, time.time() - started)
    if cfg.sample.generate and heldout:
        summary["sample"] = generate_sample(cfg, tokenizer, heldout[0])
        print(f"[train] held-out sample\n--- prompt ---\n{summary['sample']['prompt']}\n--- reference ---\n"
              f"{summary['sample']['reference']}\n--- fine-tuned model ---\n{summary['sample']['generated']}")
    metrics_path = storage.join(cfg.output.path, METRICS_FILE)
    storage.write_json(metrics_path, summary)
    print(f"[train] model: {cfg.output.path}  metrics: {metrics_path}", flush=True)
    return summary


def summarize(cfg: TrainConfig, prepared, plan: dict, seconds: float) -> dict:
    """The workers' final metrics file + data counts; prints the proof that the model learned."""
    from common import storage
    from train.loop import METRICS_FILE

    final = json.loads(storage.read_text(storage.join(cfg.output.path, METRICS_FILE)))
    history = final.get("history", [])
    summary = {
        "name": cfg.name, "total_steps": plan["total_steps"], "wall_seconds": round(seconds, 1),
        "data": {"rows_read": prepared.rows_read, "counts": prepared.counts, "truncated": prepared.truncated,
                 "sequences": prepared.sequences, "real_tokens": prepared.real_tokens,
                 "heldout_rows": len(plan["heldout"])},
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
    } | final
    print(f"[train] done: {summary['steps']}/{plan['total_steps']} steps in {seconds:.0f} s; train loss "
          f"{_fmt(summary['first_logged_loss'])} -> {_fmt(summary['last_logged_loss'])}; held-out loss "
          f"{_fmt(summary['heldout_loss_before'])} -> {_fmt(summary['heldout_loss_after'])}", flush=True)
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def generate_sample(cfg: TrainConfig, tokenizer, example: tuple) -> dict:
    """Greedy answer of the exported model to one held-out prompt, through the shared generation
    layer, in a Ray task on a worker-like node. The prompt is already in the training template."""
    import ray

    ids, labels = example
    prompt_len = next(i for i, label in enumerate(labels) if label != -100 and i > 0)
    prompt, reference = tokenizer.decode(ids[:prompt_len]), tokenizer.decode(ids[prompt_len:])
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.scaling.use_gpu else 0)(_generate)
    generated = ray.get(task.remote(cfg.output.path, prompt, cfg.sample.max_new_tokens))
    return {"prompt": prompt, "reference": reference, "generated": generated}


def _generate(model: str, prompt: str, max_new_tokens: int) -> str:
    from generation import GenerationConfig, SamplingParams, build_generator, generate_all

    generator = build_generator(GenerationConfig(model=model, prompt_format="raw", dtype="auto"))
    [answer] = generate_all(generator, [prompt], SamplingParams(temperature=0.0, top_p=1.0,
                                                                max_tokens=max_new_tokens))
    return answer.text
