"""The pipeline job: evolve -> train -> evaluate as one Ray job, each stage skipped when its output
is complete for the same settings, resumed when it was interrupted, run from scratch when its
settings or its inputs changed (pipeline/stages.py).

A pipeline config holds one section per stage, each in that job's own schema, optionally on top
of a job config file (`base:`), and one `ray` section for the whole job. The hand-offs between
stages are set here from the upstream stage's output path, never written twice:
  train.data.path            <- evolve.output.path + /training/parquet
  evaluate.candidate.model   <- train.output.path
  evaluate.candidate.prompt_format <- train.data.template (the model is prompted as it was trained)
  evaluate.evolution.output  <- evolve.output.path
"""
from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, model_validator

from common.config import ConfigError, PathText, StrictModel, read_yaml_mapping, set_dotted
from common.ray_setup import RayConfig
from eval.config import EvaluateConfig
from evol.config import EvolveConfig
from generation.prompts import PROMPT_FORMAT_OF_TEMPLATE
from train.config import TrainConfig

STAGES = ("evolve", "train", "evaluate")
Stage = Literal["evolve", "train", "evaluate"]

# stage -> [(key inside that stage, (upstream stage, key there), path suffix or {upstream value: value})]
HANDOFFS = {
    "train": [("data.path", ("evolve", "output.path"), "training/parquet")],
    "evaluate": [("candidate.model", ("train", "output.path"), ""),
                 ("candidate.prompt_format", ("train", "data.template"), PROMPT_FORMAT_OF_TEMPLATE),
                 ("evolution.output", ("evolve", "output.path"), "")],
}
SCHEMAS = {"evolve": EvolveConfig, "train": TrainConfig, "evaluate": EvaluateConfig}
# Whether a stage resumes or starts over is the pipeline's decision (pipeline/stages.py), not the
# job's overwrite switch: taken from the job presets, refused in a stage section.
PIPELINE_KEYS = {"evolve": ("output.overwrite",), "evaluate": ("output.overwrite",)}


class PipelineOutput(StrictModel):
    path: PathText = Field("outputs/pipeline-local", description="stage markers and pipeline.json (local or s3://)")


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
        first, last = STAGES.index(self.stages[0]), STAGES.index(self.stages[-1])
        if len(self.stages) != last - first + 1:
            raise ValueError(f"stages: {list(self.stages)} leaves out {STAGES[first + 1]}, whose output the next "
                             "stage reads; run consecutive stages")
        return self


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pop(data: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = _get(data, ".".join(parents)) if parents else data
    if isinstance(node, dict):
        node.pop(last, None)


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
        for key in PIPELINE_KEYS.get(stage, ()):
            if _get(section, key) is not None:
                raise ValueError(f"{stage}.{key}: set by the pipeline (an interrupted stage resumes, a changed "
                                 "one starts over); remove it")
        base = _read_base(stage, section.pop("base")) if "base" in section else {}
        base.pop("ray", None)
        for key in PIPELINE_KEYS.get(stage, ()):
            _pop(base, key)
        data[stage] = _merge(base, section)
    for stage, handoffs in HANDOFFS.items():
        for key, (upstream, upstream_key), suffix in handoffs:
            path = _get(data[upstream], upstream_key) or _default(upstream, upstream_key)
            value = suffix.get(path, path) if isinstance(suffix, dict) else \
                f"{str(path).rstrip('/')}/{suffix}" if suffix else path
            try:
                set_dotted(data[stage], key, value)
            except ConfigError:  # e.g. train.data=3: the section the hand-off goes into is a value
                section = key.rsplit(".", 1)[0]
                raise ValueError(f"{stage}.{section}: must be a section (it holds {stage}.{key}, which the "
                                 f"pipeline sets)") from None
    ray = data.get("ray") or {}
    for stage in STAGES:
        data[stage]["ray"] = ray
    return data


def _default(stage: str, dotted: str):
    node = SCHEMAS[stage]()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
