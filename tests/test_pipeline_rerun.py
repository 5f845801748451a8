"""Reruns of the tiny pipeline (echo evolve, a tiny Llama trained on one CPU worker, echo baseline
and judge) on one local Ray: an interrupted train stage resumes from its checkpoint; a changed
stage, or one whose upstream stage ran again, runs from scratch into the same folders."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.config import load_config
from pipeline.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "evolray" / "torch_extensions"))
# 8 seeds x (1 + 2 rounds) = 24 training rows, 3 optimizer steps of 8 samples, a checkpoint at step 2
SMALL = ["evolve.seeds.limit=8", "train.optim.global_batch_size=8", "train.scaling.num_workers=1"]
# the worker killed once its step 3 is done (before that step's checkpoint), with no restart left
KILLED_AT_STEP_3 = ["train.debug.kill_at_step=3", "train.debug.kill_worker_rank=0", "train.checkpoint.max_failures=0"]


def run(root: Path, model: str, *overrides: str) -> dict:
    from pipeline.run import run_pipeline

    paths = [f"output.path={root}/pipeline", f"evolve.output.path={root}/evolve", f"train.model.name={model}",
             f"train.output.path={root}/model", f"train.checkpoint.storage_path={root}/runs",
             f"evaluate.output.path={root}/evaluate"]
    cwd = os.getcwd()
    os.chdir(ROOT)  # base: files are relative to the repository root, where the job runs
    try:
        return run_pipeline(load_config(PipelineConfig, "configs/pipeline_tiny.yaml", [*paths, *SMALL, *overrides]))
    finally:
        os.chdir(cwd)


def state(root: Path) -> dict:
    return {stage: json.loads((root / "pipeline" / "stages" / f"{stage}.json").read_text())["state"]
            for stage in ("evolve", "train", "evaluate") if (root / "pipeline" / "stages" / f"{stage}.json").exists()}


def weights(root: Path) -> str:
    return hashlib.sha256((root / "model" / "model.safetensors").read_bytes()).hexdigest()


def metrics(root: Path) -> dict:
    return json.loads((root / "model" / "train_metrics.json").read_text())


def candidate_answers(root: Path) -> dict:
    return json.loads((root / "evaluate" / "summary.json").read_text())["answers"]["candidate"]


def test_pipeline_rerun_resumes_an_interrupted_train_and_redoes_changed_or_rerun_stages(
        ray_cluster, tiny_llama, tmp_path):
    # 1. train interrupted after the checkpoint of step 2, then the same command: evolve skipped,
    #    train resumed from step 2 (the kill is not repeated), evaluate run
    with pytest.raises(Exception, match="Training failed"):
        run(tmp_path, tiny_llama, *KILLED_AT_STEP_3)
    assert state(tmp_path) == {"evolve": "done", "train": "running"}
    first = run(tmp_path, tiny_llama, *KILLED_AT_STEP_3)
    assert (first["ran"], first["skipped"], first["from_scratch"]) == (["train", "evaluate"], ["evolve"], ["evaluate"])
    assert metrics(tmp_path)["restored_from_step"] == 2 and metrics(tmp_path)["steps"] == 3
    trained, evolved = weights(tmp_path), (tmp_path / "evolve" / "summary.json").read_text()

    # 2. only train.optim.lr changed: train from scratch (other weights), evaluate answers again
    second = run(tmp_path, tiny_llama, "train.optim.lr=0.01")
    assert (second["ran"], second["from_scratch"]) == (["train", "evaluate"], ["train", "evaluate"])
    assert metrics(tmp_path)["restored_from_step"] is None and metrics(tmp_path)["steps"] == 3
    assert weights(tmp_path) != trained
    assert candidate_answers(tmp_path) == {"reused": 0, "generated": 4, "failed": 0}
    assert (tmp_path / "evolve" / "summary.json").read_text() == evolved  # untouched
    trained = weights(tmp_path)

    # 3. evolve changed (one round instead of two): all three from scratch, nothing of the old run left
    third = run(tmp_path, tiny_llama, "train.optim.lr=0.01", "evolve.evolve.rounds=1")
    assert third["ran"] == third["from_scratch"] == ["evolve", "train", "evaluate"]
    assert json.loads((tmp_path / "evolve" / "summary.json").read_text())["seeds"]["used"] == 8
    assert pq.read_table(tmp_path / "evolve" / "training" / "parquet").num_rows == 16  # 8 seeds x (1 + 1 round)
    assert metrics(tmp_path)["restored_from_step"] is None and metrics(tmp_path)["steps"] == 2
    assert [p.name for p in (tmp_path / "runs" / "pipeline-tiny").glob("checkpoint-*")] == ["checkpoint-step0000002"]
    assert weights(tmp_path) != trained and candidate_answers(tmp_path)["generated"] == 4

    # 4. the evolve output deleted: evolve, train and evaluate run again
    shutil.rmtree(tmp_path / "evolve")
    fourth = run(tmp_path, tiny_llama, "train.optim.lr=0.01", "evolve.evolve.rounds=1")
    assert fourth["ran"] == ["evolve", "train", "evaluate"] and fourth["skipped"] == []
    assert state(tmp_path) == {"evolve": "done", "train": "done", "evaluate": "done"}
    assert metrics(tmp_path)["restored_from_step"] is None and candidate_answers(tmp_path)["generated"] == 4

    # 5. nothing changed: nothing runs
    assert run(tmp_path, tiny_llama, "train.optim.lr=0.01", "evolve.evolve.rounds=1")["ran"] == []


def test_an_evolve_stage_reruns_when_its_seed_file_changes_and_resumes_when_its_budget_is_raised(
        ray_cluster, tmp_path):
    """Settings alone miss both: an edited seed file under the same path (the stage was skipped and
    train went on with the old data), and a stage that stopped at its budget (skipped forever, while
    the evolve job says a rerun with a higher budget evolves the rest)."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Explain topic number {i} in two sentences."}) + "\n"
                             for i in range(24)))

    def evolve(*overrides: str) -> dict:
        return run(tmp_path, "unused", "stages=[evolve]", f"evolve.seeds.path={seeds}", "evolve.seeds.limit=null",
                   "evolve.output.buckets=8", "evolve.generation.max_chains=2", *overrides)

    def marker() -> dict:
        return json.loads((tmp_path / "pipeline" / "stages" / "evolve.json").read_text())

    def buckets() -> int:
        return len(list((tmp_path / "evolve" / "records").glob("bucket-*.parquet")))

    assert evolve("evolve.cost.max_tokens=3000")["from_scratch"] == ["evolve"]
    assert marker()["stopped_at_budget"]["max_tokens"] == 3000 and 0 < buckets() < 8
    assert evolve("evolve.cost.max_tokens=3000")["skipped"] == ["evolve"]  # the same budget: nothing more to do
    raised = evolve("evolve.cost.max_tokens=1000000")
    assert raised["ran"] == ["evolve"] and raised["from_scratch"] == []  # resumed
    assert marker()["stopped_at_budget"] is None and buckets() == 8
    assert json.loads((tmp_path / "evolve" / "summary.json").read_text())["seeds"]["used"] == 24
    assert evolve("evolve.cost.max_tokens=1000000")["skipped"] == ["evolve"]

    with seeds.open("a") as file:  # four more seeds under the same path
        file.writelines(json.dumps({"instruction": f"Name {i} uses of a paperclip."}) + "\n" for i in range(4))
    edited = evolve("evolve.cost.max_tokens=1000000")
    assert edited["ran"] == edited["from_scratch"] == ["evolve"]
    assert json.loads((tmp_path / "evolve" / "summary.json").read_text())["seeds"]["used"] == 28
