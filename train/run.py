"""Driver of the train job: validate inputs, prepare data on Ray Data, run the TorchTrainer,
print where the model is and what it learned."""
from __future__ import annotations

import json
import time

from common import storage
from common.config import UserError
from common.models import check_model, pin_local_model
from common.ray_setup import init_ray, wait_for_room
from common.tokenizer import load_tokenizer
from generation.prompts import special_token_texts
from train.config import TrainConfig, result_settings
from train.data import Prepared, check_input, prepare, rank_datasets
from train.loop import METRICS_FILE, PLAN_FILE, PLAN_KEYS, plan_mismatch, resume_error, train_loop
from train.estimate import steps_per_epoch as whole_steps
from train.masking import pad_id_of


PAPER_GLOBAL_BATCH = 64  # samples per optimizer step in WizardLM's recipe


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers run in another folder: local paths must not be relative to the driver's."""
    scratch = cfg.checkpoint.scratch_dir and storage.absolute(cfg.checkpoint.scratch_dir)
    events = cfg.metrics.tensorboard_dir and storage.absolute(cfg.metrics.tensorboard_dir)
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"path": storage.absolute(cfg.data.path)}),
        "model": cfg.model.model_copy(update={"name": pin_local_model(cfg.model.name)}),
        "output": cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)}),
        "checkpoint": cfg.checkpoint.model_copy(update={
            "storage_path": storage.absolute(cfg.checkpoint.storage_path), "scratch_dir": scratch}),
        "metrics": cfg.metrics.model_copy(update={"tensorboard_dir": events}),
    })


def make_plan(cfg: TrainConfig, n_units: int, fingerprint: str = "") -> dict:
    steps_per_epoch = whole_steps(n_units, cfg.optim.global_batch_size)
    if steps_per_epoch == 0:
        raise UserError(f"only {n_units} training {cfg.optim.batch_unit}, fewer than one global batch "
                        f"(optim.global_batch_size={cfg.optim.global_batch_size}); lower it or add data")
    return {"steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * cfg.optim.epochs,
            "world_size": cfg.scaling.num_workers, "fingerprint": fingerprint, "settings": result_settings(cfg)}


def batch_report(cfg: TrainConfig, plan: dict, samples: int, n_units: int) -> str:
    """What one optimizer step is, and its number per epoch next to the paper's (samples / 64)."""
    o = cfg.optim
    unit = "samples" if o.batch_unit == "samples" else f"packed sequences of {cfg.data.max_length} tokens"
    per_step = samples / max(plan["steps_per_epoch"], 1)
    paper = samples / PAPER_GLOBAL_BATCH
    return (f"[train] optimizer step = {o.global_batch_size} {unit} (optim.batch_unit={o.batch_unit}: "
            f"{cfg.scaling.num_workers} workers x {o.micro_batch_size} x {cfg.grad_accum_steps} accumulation), "
            f"~{per_step:.0f} samples; {plan['steps_per_epoch']} steps/epoch, the paper's samples/"
            f"{PAPER_GLOBAL_BATCH} = {paper:.0f} ({plan['steps_per_epoch'] / max(paper, 1e-9):.2f}x); "
            f"{n_units - plan['steps_per_epoch'] * o.global_batch_size} {o.batch_unit} left over per epoch")


def stored_plan(cfg: TrainConfig) -> dict | None:
    """The plan saved in the run's latest checkpoint (None without one)."""
    from pyarrow import fs

    run_dir = storage.join(cfg.checkpoint.storage_path, cfg.name)
    if not storage.is_dir(run_dir):
        return None
    filesys, inner = storage.filesystem(run_dir)
    names = sorted(i.base_name for i in filesys.get_file_info(fs.FileSelector(inner))
                   if i.type == fs.FileType.Directory and i.base_name.startswith("checkpoint-"))
    for name in reversed(names):
        path = storage.join(run_dir, name, PLAN_FILE)
        if storage.exists(path):
            return json.loads(storage.read_text(path))
    return None


def check_resume(cfg: TrainConfig, plan: dict) -> None:
    """A rerun of a name resumes only with the same plan: else one line, before any worker starts."""
    stored = stored_plan(cfg)
    diff = stored and plan_mismatch(stored, {key: plan[key] for key in PLAN_KEYS})
    if diff:
        raise UserError(resume_error(cfg.name, diff))


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    s = cfg.scaling
    return ({"CPU": s.cpus_per_worker} | ({"GPU": 1} if s.use_gpu else {})
            | ({f"accelerator_type:{s.accelerator_type}": 0.001} if s.accelerator_type else {}))


def build_trainer(cfg: TrainConfig, plan: dict, datasets: dict):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from train.live import TensorBoardCallback, tensorboard_dir

    s = cfg.scaling
    callbacks = [TensorBoardCallback(tensorboard_dir(cfg))] if cfg.metrics.tensorboard else []
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "plan": plan},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, accelerator_type=s.accelerator_type,
                                     resources_per_worker={"CPU": s.cpus_per_worker} | ({"GPU": 1} if s.use_gpu else {})),
        torch_config=TorchConfig(backend="nccl" if s.cuda else "gloo"),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.checkpoint.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
                             callbacks=callbacks),
        # One dataset per rank, not split by Ray: which units a rank gets must not depend on timing.
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
    )


def print_data_report(cfg: TrainConfig, prepared: Prepared, plan: dict) -> None:
    scan = prepared.scan
    dropped = {k: v for k, v in scan.counts.items() if k != "ok"}
    print(f"[train] data: {scan.rows_read} rows read, {scan.counts.get('ok', 0)} usable, dropped "
          f"{sum(dropped.values())}{f' {dropped}' if dropped else ''}, held out {scan.heldout_rows} (whole lineages by root_id, "
          f"data.heldout_fraction={cfg.data.heldout_fraction}; {len(prepared.heldout)} evaluated, at most "
          f"data.heldout_max_rows={cfg.data.heldout_max_rows})", flush=True)
    if scan.truncated:
        print(f"[train] warning: {scan.truncated} samples truncated to data.max_length={cfg.data.max_length}",
              flush=True)
    if scan.key_limit is not None:
        print(f"[train] data.max_samples={cfg.data.max_samples}: {scan.train_rows} of {scan.available_rows} training "
              f"rows, a uniform sample seeded by data.seed={cfg.data.seed}", flush=True)
    print(f"[train] {scan.train_rows} training samples -> {prepared.n_units} {cfg.optim.batch_unit} "
          f"({prepared.real_tokens} tokens, fingerprint {prepared.fingerprint})", flush=True)
    print(batch_report(cfg, plan, scan.train_rows, prepared.n_units), flush=True)
    print(f"[train] {plan['total_steps']} optimizer steps in {cfg.optim.epochs} epochs", flush=True)


def check_output(cfg: TrainConfig) -> None:
    out = cfg.output.path
    if storage.is_nonempty_dir(out) and not any(storage.exists(storage.join(out, marker))
                                                for marker in ("config.json", "adapter_config.json")):
        # The export replaces output.path: never let it delete a folder that is not an earlier export
        # (a merged model's config.json, or a LoRA adapter's adapter_config.json).
        raise UserError(f"output.path: {out} holds files that are not a model export; choose another folder")
    storage.check_writable(out)
    try:  # Ray Train creates it only once the data is prepared, and its error is a traceback
        storage.check_writable(storage.join(cfg.checkpoint.storage_path, cfg.name))
    except UserError as exc:
        raise UserError(f"checkpoint.storage_path: {exc}") from None


def load_model_tokenizer(cfg: TrainConfig):
    """The tokenizer the data is prepared with, read on the driver: a folder that holds no model, a hub
    id the driver cannot reach, or chat_template on a tokenizer without one is a one-line error."""
    try:
        tokenizer = load_tokenizer(cfg.model.name)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name: cannot load a tokenizer from {cfg.model.name}: "
                        f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None
    if cfg.data.template == "chat_template" and not tokenizer.chat_template:
        raise UserError(f"data.template: chat_template, but the tokenizer of {cfg.model.name} has no chat template; "
                        "use data.template=wizardlm or vicuna_v1.1")
    return tokenizer


def run_train(cfg: TrainConfig) -> dict:
    cfg = with_absolute_paths(cfg)
    check_model(cfg.model.name, "model.name")
    check_input(cfg.data.path)
    check_output(cfg)
    tokenizer = load_model_tokenizer(cfg)
    init_ray(cfg.ray)
    started = time.time()
    prepared = prepare(cfg, pad_id_of(tokenizer))
    plan = make_plan(cfg, prepared.n_units, prepared.fingerprint)
    print_data_report(cfg, prepared, plan)
    check_resume(cfg, plan)
    heldout = [(list(map(int, r["input_ids"])), list(map(int, r["labels"]))) for r in prepared.heldout]
    plan |= {"heldout": heldout, "output_path": cfg.output.path}
    used = plan["steps_per_epoch"] * cfg.optim.global_batch_size
    datasets = rank_datasets(prepared.units, used, cfg.scaling.num_workers)
    if cfg.metrics.tensorboard:
        from train.live import tensorboard_dir

        print(f"[train] live metrics: tensorboard --logdir {tensorboard_dir(cfg)}", flush=True)
    for shard in datasets.values():  # read inside the workers: their bars were printed between the train lines
        shard.context.enable_progress_bars = False
    wait_for_room("scaling (the training workers)", worker_resources(cfg), count=cfg.scaling.num_workers)
    result = build_trainer(cfg, plan, datasets).fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    summary = summarize(cfg, prepared, plan, time.time() - started)
    adapter_only = cfg.lora.method != "none" and cfg.lora.export == "adapter"
    if cfg.sample.generate and heldout and not adapter_only:
        summary["sample"] = generate_sample(cfg, tokenizer, heldout[0])
        print(f"[train] held-out sample\n--- prompt ---\n{summary['sample']['prompt']}\n--- reference ---\n"
              f"{summary['sample']['reference']}\n--- fine-tuned model ---\n{summary['sample']['generated']}")
    metrics_path = storage.join(cfg.output.path, METRICS_FILE)
    storage.write_json(metrics_path, summary)
    print(f"[train] model: {cfg.output.path}  metrics: {metrics_path}", flush=True)
    return summary


def summarize(cfg: TrainConfig, prepared: Prepared, plan: dict, seconds: float) -> dict:
    """The workers' final metrics file + data counts; prints the proof that the model learned."""
    final = json.loads(storage.read_text(storage.join(cfg.output.path, METRICS_FILE)))
    history = final.get("history", [])
    summary = {
        "name": cfg.name, "total_steps": plan["total_steps"], "wall_seconds": round(seconds, 1),
        "steps_per_epoch": plan["steps_per_epoch"], "batch_unit": cfg.optim.batch_unit,
        "data": {"rows_read": prepared.scan.rows_read, "counts": prepared.scan.counts,
                 "truncated": prepared.scan.truncated, "train_samples": prepared.scan.train_rows,
                 "units": prepared.n_units, "real_tokens": prepared.real_tokens, "fingerprint": prepared.fingerprint,
                 "heldout_rows": prepared.scan.heldout_rows, "heldout_evaluated": len(plan["heldout"])},
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
    } | final
    print(f"[train] done: {summary['steps']}/{plan['total_steps']} steps in {seconds:.0f} s; train loss "
          f"{_fmt(summary['first_logged_loss'])} -> {_fmt(summary['last_logged_loss'])}; held-out loss "
          f"{_fmt(summary['heldout_loss_before'])} -> {_fmt(summary['heldout_loss_after'])}", flush=True)
    stalls = final.get("checkpoint_stalls_s") or []
    if stalls:
        print(f"[train] {len(stalls)} checkpoints stalled training {sum(stalls) / len(stalls):.1f} s each on average "
              f"(max {max(stalls):.1f} s; checkpoint.upload={cfg.checkpoint.upload})", flush=True)
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def text_of_ids(tokenizer, ids: list[int]) -> str:
    """Text that tokenises back (add_special_tokens=False, as the generator's raw format does) to
    exactly `ids`: special tokens (BOS, <|im_start|>, ...) as their own text, the runs of text
    between them decoded one by one (a SentencePiece decode puts a space after "<s>" that would
    re-tokenise into an extra token)."""
    special = set(tokenizer.convert_tokens_to_ids(sorted(special_token_texts(tokenizer))))
    parts, run = [], []
    for token in ids:
        if token in special:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            parts.append(tokenizer.convert_ids_to_tokens(token))
        else:
            run.append(token)
    if run:
        parts.append(tokenizer.decode(run))
    return "".join(parts)


def sample_prompt(tokenizer, ids: list[int], labels: list[int]) -> tuple[str, str, bool]:
    """(prompt, reference answer, whether the prompt re-tokenises to the trained ids) of one held-out
    example. The prompt is the training prompt as it is, special tokens included: the chat
    template's markers and the BOS are part of what the model was trained to continue."""
    prompt_len = next(i for i, label in enumerate(labels) if label != -100 and i > 0)
    prompt = text_of_ids(tokenizer, ids[:prompt_len])
    exact = tokenizer(prompt, add_special_tokens=False)["input_ids"] == list(ids[:prompt_len])
    reference = tokenizer.decode(ids[prompt_len:], skip_special_tokens=True)
    return prompt, reference, exact


def generate_sample(cfg: TrainConfig, tokenizer, example: tuple) -> dict:
    """Greedy answer of the exported model to one held-out prompt, through the shared generation
    layer (raw format: the prompt is already in the training template), in a Ray task on a
    worker-like node."""
    import ray

    prompt, reference, exact = sample_prompt(tokenizer, *example)
    if not exact:
        print("[train] warning: the held-out sample's prompt does not re-tokenise to its training ids; "
              "the sample is generated from the re-tokenised text", flush=True)
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.scaling.use_gpu else 0)(_generate)
    generated = ray.get(task.remote(cfg.output.path, prompt, cfg.sample.max_new_tokens))
    return {"prompt": prompt, "reference": reference, "generated": generated}


def _generate(model: str, prompt: str, max_new_tokens: int) -> str:
    from generation import GenerationConfig, SamplingParams, build_generator, generate_all

    generator = build_generator(GenerationConfig(model=model, prompt_format="raw", dtype="auto"))
    [answer] = generate_all(generator, [prompt], SamplingParams(temperature=0.0, top_p=1.0,
                                                                max_tokens=max_new_tokens))
    return answer.text
