"""The pipeline config: stage sections on top of job presets, hand-offs, one ray section, stage
fingerprints, and what a rerun does with each stage (skip, resume, start over). No Ray here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import storage
from common.config import ConfigError, load_config
from pipeline.config import PipelineConfig
from pipeline.run import artifacts, format_artifacts, has_result
from pipeline.stages import (
    DONE,
    FRESH,
    RESUME,
    RUNNING,
    SKIP,
    STALE,
    decide,
    fingerprints,
    mark_later_stale,
    read_marker,
    write_marker,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # base: paths are relative to where the job runs (the repo root)


def load(*overrides: str, path: str = "configs/pipeline_local.yaml") -> PipelineConfig:
    return load_config(PipelineConfig, path, list(overrides))


def test_every_stage_reads_its_upstream_output_path():
    cfg = load("evolve.output.path=/data/evo", "train.output.path=/data/model")
    assert cfg.train.data.path == "/data/evo/training/parquet"
    assert cfg.evaluate.candidate.model == "/data/model"
    assert cfg.evaluate.evolution.output == "/data/evo"


def test_sections_override_their_preset_and_keep_the_rest():
    cfg = load()
    preset = yaml_of("configs/local.yaml")
    assert cfg.evolve.seeds.limit == 12 and cfg.train.optim.epochs == 2  # the pipeline's keys
    assert cfg.evolve.generation.model == preset["generation"]["model"]  # the preset's
    assert cfg.evolve.evolve.respond_sampling.max_tokens == preset["evolve"]["respond_sampling"]["max_tokens"]
    assert cfg.evolve.output.overwrite is False and yaml_of("configs/local.yaml")["output"]["overwrite"] is True
    assert cfg.train.name == "pipeline-local" and cfg.train.deepspeed.stage == 3
    assert cfg.evolve.evolve.rounds == preset["evolve"]["rounds"] == 4


def test_one_ray_section_for_every_stage():
    cfg = load("ray.num_cpus=7")
    assert cfg.evolve.ray.num_cpus == cfg.train.ray.num_cpus == cfg.evaluate.ray.num_cpus == 7


@pytest.mark.parametrize("override, message", [
    ("train.data.path=/x", "config error: train.data.path: set by the pipeline from evolve.output.path; remove it"),
    ("evaluate.candidate.model=/m", "config error: evaluate.candidate.model: set by the pipeline from train.output.path"),
    ("evaluate.evolution.output=/e", "config error: evaluate.evolution.output: set by the pipeline from evolve.output.path"),
    ("evolve.ray.num_cpus=3", "config error: evolve.ray: the pipeline has one ray section"),
    ("evolve.base=configs/nope.yaml", "config error: evolve.base: cannot read configs/nope.yaml"),
    ("train.base=configs/pipeline_tiny.yaml", "config error: train.base: configs/pipeline_tiny.yaml is a pipeline config"),
    ("stages=[train, evolve]", "config error: stages: ['train', 'evolve'] must be in pipeline order"),
    ("stages=[train, train]", "config error: stages: ['train', 'train'] must be in pipeline order"),
    ("stages=[]", "config error: stages: name at least one"),
    ("stages=[evolve, evaluate]", "config error: stages: ['evolve', 'evaluate'] leaves out train, whose output the next"),
    ("stages=[deploy]", "config error: stages.0: Input should be 'evolve', 'train' or 'evaluate'"),
    ("evolve.seeds.limt=3", "config error: evolve.seeds.limt: unknown key"),
    ("evolve.output.overwrite=true", "config error: evolve.output.overwrite: set by the pipeline"),
    ("evaluate.output.overwrite=false", "config error: evaluate.output.overwrite: set by the pipeline"),
    ("train.optim.lr=-1", "config error: train.optim.lr: Input should be greater than 0"),
    ("evaluate.report.bootstrap_samples=0", "config error: evaluate.report.bootstrap_samples:"),
    ("train.data=3", "config error: train.data: must be a section (it holds train.data.path, which the pipeline sets)"),
])
def test_bad_config_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load(override)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_changed_stage_makes_it_and_every_later_stage_stale():
    base = fingerprints(load())
    assert fingerprints(load()) == base  # stable
    assert fingerprints(load("ray.num_cpus=8")) == base  # where it runs is not what it makes
    assert fingerprints(load("evolve.generation.max_chains=4", "evolve.cost.price_per_accelerator_hour=2")) == base
    evolve = fingerprints(load("evolve.evolve.rounds=2"))
    assert all(evolve[s] != base[s] for s in ("evolve", "train", "evaluate"))
    train = fingerprints(load("train.optim.lr=0.001"))
    assert train["evolve"] == base["evolve"] and train["train"] != base["train"] and train["evaluate"] != base["evaluate"]
    evaluate = fingerprints(load("evaluate.testset.limit=3"))
    assert evaluate["evolve"] == base["evolve"] and evaluate["train"] == base["train"]
    assert evaluate["evaluate"] != base["evaluate"]


def test_execution_only_train_keys_leave_every_fingerprint_alone():
    base = fingerprints(load())
    assert fingerprints(load("train.debug.kill_at_step=2", "train.checkpoint.max_failures=0",
                             "train.metrics.log_every_steps=1", "train.checkpoint.keep=1")) == base
    assert fingerprints(load("train.checkpoint.every_steps=1"))["train"] != base["train"]


def test_execution_only_evaluate_keys_leave_every_fingerprint_alone():
    """Batch sizes, actors and threads of the models evaluate asks change how fast it runs, not what it
    writes (its cache keys leave them out too): a rerun that changes only them skips the stage."""
    base = fingerprints(load())
    assert fingerprints(load("evaluate.candidate.batch_size=2", "evaluate.candidate.prefix_cache_tokens=0",
                             "evaluate.baseline.concurrency=[1,3]", "evaluate.judge.torch_threads=1",
                             "evaluate.judge.max_chains=2")) == base
    assert fingerprints(load("evaluate.judge_sampling.max_tokens=7"))["evaluate"] != base["evaluate"]
    assert fingerprints(load("evaluate.candidate.dtype=float32"))["evaluate"] != base["evaluate"]
    # evaluate's caches key an endpoint and the device num_gpus picks: so does the stage
    assert fingerprints(load("evaluate.judge.openai.base_url=http://other:8000/v1"))["evaluate"] != base["evaluate"]
    assert fingerprints(load("evaluate.candidate.num_gpus=1"))["evaluate"] != base["evaluate"]


def test_the_pipeline_decides_overwrite_whatever_the_job_presets_say():
    assert yaml_of("configs/local.yaml")["output"]["overwrite"] is True  # the evolve preset starts over
    assert load().evolve.output.overwrite is False  # inside the pipeline an interrupted evolve resumes


@pytest.mark.parametrize("marker, result, expected", [
    (None, False, (FRESH, "first run")),
    ({"fingerprint": "old", "state": DONE}, True, (FRESH, "its settings changed")),
    ({"fingerprint": "old", "state": RUNNING}, False, (FRESH, "its settings changed")),
    ({"fingerprint": "fp", "state": STALE}, True, (FRESH, "an upstream stage ran again")),
    ({"fingerprint": "fp", "state": DONE}, True, (SKIP, "complete for these settings")),
    ({"fingerprint": "fp"}, True, (SKIP, "complete for these settings")),  # a marker from before states
    ({"fingerprint": "fp", "state": DONE}, False, (RESUME, "its result is missing")),
    ({"fingerprint": "fp", "state": RUNNING}, False, (RESUME, "it was interrupted")),
    ({"fingerprint": "fp", "state": RUNNING}, True, (RESUME, "it was interrupted")),
])
def test_a_stage_resumes_only_its_own_settings_and_inputs(marker, result, expected):
    assert decide(marker, "fp", result) == expected


SEEDS = {"seeds": {"a.jsonl": "10:aa", "b.jsonl": "20:bb"}, "generation": {}}


@pytest.mark.parametrize("marker, result, expected", [
    ({"fingerprint": "fp", "state": DONE, "inputs": SEEDS}, True, (SKIP, "complete for these settings")),
    ({"fingerprint": "fp", "state": DONE}, True, (SKIP, "complete for these settings")),  # before inputs were kept
    ({"fingerprint": "fp", "state": DONE, "inputs": {**SEEDS, "seeds": {"a.jsonl": "10:aa", "b.jsonl": "21:cc"}}},
     True, (FRESH, "its inputs changed (seeds: b.jsonl)")),
    ({"fingerprint": "fp", "state": RUNNING, "inputs": {**SEEDS, "generation": {"config.json": "1:x"}}},
     False, (FRESH, "its inputs changed (generation: config.json)")),
    ({"fingerprint": "fp", "state": DONE, "inputs": SEEDS, "stopped_at_budget": {"max_tokens": 10}}, True,
     (SKIP, "stopped at its budget, which is unchanged (raise evolve.cost.* to evolve the rest)")),
    ({"fingerprint": "fp", "state": DONE, "inputs": SEEDS, "stopped_at_budget": {"max_tokens": 5}}, True,
     (RESUME, "it stopped at its budget, which changed since")),
    ({"fingerprint": "fp", "state": DONE, "inputs": SEEDS, "stopped_at_budget": None}, True,
     (SKIP, "complete for these settings")),
])
def test_a_stage_reruns_when_a_file_it_reads_changed_and_resumes_when_its_budget_did(marker, result, expected):
    assert decide(marker, "fp", result, SEEDS, {"max_tokens": 10}) == expected


def test_a_stage_that_runs_makes_every_later_stage_stale(tmp_path):
    cfg = load(f"output.path={tmp_path}/pipe", f"evolve.output.path={tmp_path}/evo")
    keys = fingerprints(cfg)
    for stage in ("evolve", "train", "evaluate"):
        write_marker(cfg, stage, keys[stage], DONE)
    mark_later_stale(cfg, "train")
    assert [read_marker(cfg, s)["state"] for s in ("evolve", "train", "evaluate")] == [DONE, DONE, STALE]
    mark_later_stale(cfg, "evolve")
    assert [read_marker(cfg, s)["state"] for s in ("evolve", "train", "evaluate")] == [DONE, STALE, STALE]
    assert read_marker(cfg, "train")["outputs"] == [str(ROOT / "outputs/pipeline-local/model"),
                                                    str(ROOT / "outputs/pipeline-local/train-runs/pipeline-local")]
    assert not has_result(cfg, "evolve")
    storage.write_json(f"{tmp_path}/evo/summary.json", {})
    assert has_result(cfg, "evolve")


def test_artifacts_name_every_result_of_every_stage():
    cfg = load("output.path=/p", "evolve.output.path=/e", "train.output.path=/m", "evaluate.output.path=/r")
    paths = artifacts(cfg)
    assert paths["evolve"]["training set"] == "/e/training/parquet" and paths["evolve"]["dataset card"] == "/e/README.md"
    assert paths["train"]["model"] == "/m/config.json"
    assert paths["evaluate"]["report"] == "/r/report.html"
    text = format_artifacts({"ran": ["train", "evaluate"], "skipped": ["evolve"], "seconds": 61.0, "artifacts": paths})
    assert text.splitlines()[0] == "[pipeline] ran train, evaluate; skipped evolve (complete) in 61 s"
    assert "/r/report.html" in text and "/e/training/parquet" in text


def yaml_of(path: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / path).read_text())


def test_presets_load():
    for path in sorted((ROOT / "configs").glob("pipeline_*.yaml")):
        cfg = load(path=str(path.relative_to(ROOT)))
        assert cfg.stages == ("evolve", "train", "evaluate"), path
        assert json.dumps(fingerprints(cfg))
