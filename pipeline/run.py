"""Running the pipeline: each stage skipped when its output is complete for the same settings
(a fingerprint of its config and every config upstream), else run by its own job."""
from __future__ import annotations

import hashlib
import json
import time

from common import storage
from common.ray_setup import init_ray
from evol.resume import EXECUTION_KEYS, flatten
from pipeline.config import STAGES, PipelineConfig


def fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    """A stage's settings and those of every stage upstream of it: a changed evolve config makes
    train and evaluate stale too. Left out: the ray section, and evolve's execution-only keys (pool
    size, price...), which change where and how fast it runs, not what it makes."""
    result, chain = {}, ""
    for stage in STAGES:
        settings = flatten(getattr(cfg, stage).model_dump(mode="json", exclude={"ray"}))
        if stage == "evolve":
            settings = {k: v for k, v in settings.items() if not k.startswith(EXECUTION_KEYS)}
        chain = hashlib.sha256((chain + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:16]
        result[stage] = chain
    return result


def artifacts(cfg: PipelineConfig) -> dict[str, dict[str, str]]:
    """Where each stage's results are; the first one of a stage is its completion check."""
    evolve, train, evaluate = (storage.absolute(c.output.path) for c in (cfg.evolve, cfg.train, cfg.evaluate))
    return {
        "evolve": {"summary": storage.join(evolve, "summary.json"), "dataset card": storage.join(evolve, "README.md"),
                   "training set": storage.join(evolve, "training", "parquet"), "records": storage.join(evolve, "records")},
        "train": {"model": storage.join(train, "config.json"), "metrics": storage.join(train, "train_metrics.json"),
                  "checkpoints": storage.join(storage.absolute(cfg.train.checkpoint.storage_path), cfg.train.name)},
        "evaluate": {"report": storage.join(evaluate, "report.html"), "report (markdown)": storage.join(evaluate, "report.md"),
                     "rows": storage.join(evaluate, "items.parquet"), "summary": storage.join(evaluate, "summary.json")},
    }


def marker_path(cfg: PipelineConfig, stage: str) -> str:
    return storage.join(cfg.output.path, "stages", f"{stage}.json")


def is_complete(cfg: PipelineConfig, stage: str, fingerprint: str) -> bool:
    """Finished earlier with the same settings, and its main result still there."""
    marker = marker_path(cfg, stage)
    if not storage.exists(marker):
        return False
    done = json.loads(storage.read_text(marker))
    return done.get("fingerprint") == fingerprint and storage.exists(next(iter(artifacts(cfg)[stage].values())))


def _with_absolute_paths(cfg: PipelineConfig) -> PipelineConfig:
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": storage.absolute(cfg.output.path)})})


def run_pipeline(cfg: PipelineConfig) -> dict:
    from eval.pipeline import run_evaluate
    from evol.run import run_evolve
    from train.run import run_train

    runners = {"evolve": run_evolve, "train": run_train, "evaluate": run_evaluate}
    cfg = _with_absolute_paths(cfg)
    storage.check_writable(cfg.output.path)
    keys = fingerprints(cfg)
    init_ray(cfg.ray)
    started, ran, skipped = time.time(), [], []
    for stage in cfg.stages:
        if is_complete(cfg, stage, keys[stage]):
            print(f"[pipeline] {stage}: complete for these settings, skipped "
                  f"(delete {marker_path(cfg, stage)} to run it again)", flush=True)
            skipped.append(stage)
            continue
        print(f"[pipeline] {stage}: running", flush=True)
        stage_started = time.time()
        runners[stage](getattr(cfg, stage))
        seconds = round(time.time() - stage_started, 1)
        storage.write_json(marker_path(cfg, stage), {"stage": stage, "fingerprint": keys[stage], "seconds": seconds,
                                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        print(f"[pipeline] {stage}: done in {seconds:.0f} s", flush=True)
        ran.append(stage)
    paths = artifacts(cfg)
    result = {"ran": ran, "skipped": skipped, "seconds": round(time.time() - started, 1),
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

