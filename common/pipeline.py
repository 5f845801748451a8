"""The pipeline job: evolve -> train -> evaluate as one Ray job, each stage skipped when its output
is complete for the same settings, resumed by its own job when it was interrupted.

A pipeline config holds one section per stage, each in that job's own schema, optionally on top
of a job config file (`base:`), and one `ray` section for the whole job. The hand-offs between
stages are set here from the upstream stage's output path, never written twice:
  train.data.path            <- evolve.output.path + /training/parquet
  evaluate.candidate.model   <- train.output.path
  evaluate.evolution.output  <- evolve.output.path
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from typing import Literal

from pydantic import Field, model_validator

from common import storage
from common.config import StrictModel, read_yaml_mapping, set_dotted
from common.ray_setup import RayConfig, init_ray
from eval.config import EvaluateConfig
from evol.config import EvolveConfig
from evol.resume import EXECUTION_KEYS, flatten
from train.config import TrainConfig

STAGES = ("evolve", "train", "evaluate")
Stage = Literal["evolve", "train", "evaluate"]

# stage -> [(key inside that stage, (upstream stage, key there), suffix)]
HANDOFFS = {
    "train": [("data.path", ("evolve", "output.path"), "training/parquet")],
    "evaluate": [("candidate.model", ("train", "output.path"), ""),
                 ("evolution.output", ("evolve", "output.path"), "")],
}
SCHEMAS = {"evolve": EvolveConfig, "train": TrainConfig, "evaluate": EvaluateConfig}


class PipelineOutput(StrictModel):
    path: str = Field("outputs/pipeline-local", description="stage markers and pipeline.json (local or s3://)")


class PipelineConfig(StrictModel):
    stages: tuple[Stage, ...] = Field(STAGES, description="the stages to run, in pipeline order")
    output: PipelineOutput = PipelineOutput()
    ray: RayConfig = RayConfig()
    evolve: EvolveConfig = EvolveConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig  # always present after compose (its candidate is the train output)

    @model_validator(mode="before")
    @classmethod
    def _compose(cls, data):
        return compose(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _in_order(self):
        if not self.stages:
            raise ValueError("stages: name at least one of evolve, train, evaluate")
        if list(self.stages) != [s for s in STAGES if s in self.stages]:
            raise ValueError(f"stages: {list(self.stages)} must be in pipeline order {list(STAGES)}, each once")
        return self


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_base(stage: str, path) -> dict:
    if not isinstance(path, str):
        raise ValueError(f"{stage}.base: must be the path of a {stage} job config file")
    try:
        data = read_yaml_mapping(path)
    except ValueError as exc:
        raise ValueError(f"{stage}.base: {exc}") from None
    if "stages" in data or "base" in data:
        raise ValueError(f"{stage}.base: {path} is a pipeline config, not a {stage} job config")
    return data


def compose(data: dict) -> dict:
    """Each stage's section on top of its base file; the pipeline's ray section and hand-offs set."""
    data = copy.deepcopy(data)
    for stage in STAGES:
        section = data.get(stage) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{stage}: must be a section (keys of the {stage} job's config)")
        if "ray" in section:
            raise ValueError(f"{stage}.ray: the pipeline has one ray section; set ray.* at the top level")
        for key, (upstream, upstream_key), _ in HANDOFFS.get(stage, []):
            if _get(section, key) is not None:
                raise ValueError(f"{stage}.{key}: set by the pipeline from {upstream}.{upstream_key}; remove it")
        base = _read_base(stage, section.pop("base")) if "base" in section else {}
        base.pop("ray", None)
        data[stage] = _merge(base, section)
    for stage, handoffs in HANDOFFS.items():
        for key, (upstream, upstream_key), suffix in handoffs:
            path = _get(data[upstream], upstream_key) or _default(upstream, upstream_key)
            set_dotted(data[stage], key, f"{str(path).rstrip('/')}/{suffix}" if suffix else path)
    ray = data.get("ray") or {}
    for stage in STAGES:
        data[stage]["ray"] = ray
    return data


def _default(stage: str, dotted: str):
    node = SCHEMAS[stage]()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# --- running -----------------------------------------------------------------------------------

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
    from evol.pipeline import run_evolve
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

