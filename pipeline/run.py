"""Running the pipeline: the checks of every stage first, then each stage skipped, resumed or run
from scratch (pipeline/stages.py) by its own job."""
from __future__ import annotations

import time

from common import storage
from common.ray_setup import init_ray
from pipeline.config import PipelineConfig
from pipeline.preflight import JOB, preflight
from pipeline.stages import (
    DONE,
    FRESH,
    RUNNING,
    SKIP,
    decide,
    empty_outputs,
    fingerprints,
    mark_later_stale,
    read_marker,
    stage_inputs,
    stage_outputs,
    write_marker,
)


def artifacts(cfg: PipelineConfig) -> dict[str, dict[str, str]]:
    """Where each stage's results are; the first one of a stage is its completion check."""
    evolve, train, evaluate = (storage.absolute(c.output.path) for c in (cfg.evolve, cfg.train, cfg.evaluate))
    return {
        "evolve": {"summary": storage.join(evolve, "summary.json"), "dataset card": storage.join(evolve, "README.md"),
                   "training set": storage.join(evolve, "training", "parquet"), "records": storage.join(evolve, "records")},
        "train": {"model": storage.join(train, "config.json"), "metrics": storage.join(train, "train_metrics.json"),
                  "checkpoints": stage_outputs(cfg)["train"]["train.checkpoint.storage_path"]},
        "evaluate": {"report": storage.join(evaluate, "report.html"), "report (markdown)": storage.join(evaluate, "report.md"),
                     "rows": storage.join(evaluate, "items.parquet"), "summary": storage.join(evaluate, "summary.json")},
    }


def has_result(cfg: PipelineConfig, stage: str) -> bool:
    return storage.exists(next(iter(artifacts(cfg)[stage].values())))


def _with_absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)})})


def run_stage(cfg: PipelineConfig, stage: str, fingerprint: str) -> str | None:
    """Skip, resume or start over one stage; returns what it did (None: skipped)."""
    from eval.pipeline import run_evaluate
    from evol.run import run_evolve
    from train.run import run_train

    marker, inputs = read_marker(cfg, stage), stage_inputs(cfg, stage)
    budget = cfg.evolve.cost.model_dump(mode="json") if stage == "evolve" else None
    action, why = decide(marker, fingerprint, has_result(cfg, stage), inputs, budget)
    if action == SKIP:
        print(f"[pipeline] {stage}: {why}, skipped", flush=True)
        return None
    print(f"[pipeline] {stage}: running ({why}: {'from scratch' if action == FRESH else 'resuming'})", flush=True)
    mark_later_stale(cfg, stage)
    if action == FRESH:
        empty_outputs(cfg, stage, marker)
    write_marker(cfg, stage, fingerprint, RUNNING, inputs=inputs)
    started = time.time()
    result = {"evolve": run_evolve, "train": run_train, "evaluate": run_evaluate}[stage](getattr(cfg, stage))
    seconds = round(time.time() - started, 1)
    # evolve stopped at its budget: a rerun with another budget resumes it (the later stages then run again)
    stopped = budget if stage == "evolve" and (result or {}).get("budget", {}).get("refused_buckets") else None
    write_marker(cfg, stage, fingerprint, DONE, inputs=inputs, seconds=seconds, stopped_at_budget=stopped)
    print(f"[pipeline] {stage}: done in {seconds:.0f} s", flush=True)
    return action


def run_pipeline(cfg: PipelineConfig) -> dict:
    cfg = _with_absolute_paths(cfg)
    preflight(cfg)
    storage.check_writable(cfg.output.path)
    storage.mark_owned(cfg.output.path, JOB)
    keys = fingerprints(cfg)
    init_ray(cfg.ray)
    started, ran, skipped, fresh = time.time(), [], [], []
    for stage in cfg.stages:
        action = run_stage(cfg, stage, keys[stage])
        (skipped if action is None else ran).append(stage)
        if action == FRESH:
            fresh.append(stage)
    paths = artifacts(cfg)
    result = {"ran": ran, "skipped": skipped, "from_scratch": fresh, "seconds": round(time.time() - started, 1),
              "artifacts": {stage: paths[stage] for stage in cfg.stages}}
    storage.write_json(storage.join(cfg.output.path, "pipeline.json"), result)
    print(format_artifacts(result))
    return result


def format_artifacts(result: dict) -> str:
    lines = [f"[pipeline] ran {', '.join(result['ran']) or 'nothing'}"
             + (f"; skipped {', '.join(result['skipped'])} (complete)" if result["skipped"] else "")
             + f" in {result['seconds']:.0f} s"]
    for stage, paths in result["artifacts"].items():
        for name, path in paths.items():
            lines.append(f"  {stage:<9} {name:<18} {path}")
    return "\n".join(lines)
