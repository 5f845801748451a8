"""The pipeline fails before its first stage, in seconds, with one line naming the key, on
anything that needs no model: the evaluate stage's test set and field mapping, every role's model,
output folders that are neither new nor this pipeline's, folders inside one another. No Ray here:
each case asserts that evolve never started (no evolve output, no Ray)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jobs.pipeline import main
from tests.s3_fixtures import moto_s3  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # base: paths are relative to where the job runs (the repo root)


def fail_fast(root: Path, capsys, *overrides: str) -> str:
    """Run the tiny pipeline with `overrides`; it must exit 2 in seconds before evolve started.
    Returns its one error line."""
    import ray

    (root / "base-model").mkdir(exist_ok=True)  # any folder passes the model check; none is loaded
    args = [f"output.path={root}/pipeline", f"evolve.output.path={root}/evolve",
            f"train.model.name={root}/base-model", f"train.output.path={root}/model",
            f"train.checkpoint.storage_path={root}/runs", f"evaluate.output.path={root}/evaluate"]
    started, ray_before = time.time(), ray.is_initialized()  # the suite's shared Ray may be up already
    code = main(["--config", "configs/pipeline_tiny.yaml", *args, *overrides])
    assert code == 2 and time.time() - started < 20
    assert not (root / "evolve").exists() and ray.is_initialized() == ray_before
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("override, line", [
    ("evaluate.testset.category_field=Skil",
     "error: evaluate.testset.category_field: 'Skil' is a field of none of the 218 rows of bundled:wizardlm_testset.jsonl"),
    ("evaluate.testset.instruction_field=instruction",
     ("error: evaluate.testset.instruction_field: 'instruction' is a field of none of the 218 rows of "
      "bundled:wizardlm_testset.jsonl")),
    ("evaluate.testset.path=bundled:nope.jsonl", "error: evaluate.testset.path: "),
])
def test_a_misspelled_evaluate_testset_key_fails_before_evolve(tmp_path, capsys, override, line):
    assert fail_fast(tmp_path, capsys, override).startswith(line)


def test_a_missing_seed_file_fails_before_the_evolve_stage_is_emptied(tmp_path, capsys):
    assert fail_fast(tmp_path, capsys, f"evolve.seeds.path={tmp_path}/typo.jsonl") == \
        f"error: evolve.seeds.path: {tmp_path}/typo.jsonl does not exist"


def test_a_field_mapping_of_an_own_test_set_is_checked_against_its_rows(tmp_path, capsys):
    testset = tmp_path / "items.jsonl"
    testset.write_text("".join(json.dumps({"q": f"Question {i}?", "topic": "math", "level": 3}) + "\n"
                               for i in range(3)))
    mapping = [f"evaluate.testset.path={testset}", "evaluate.testset.instruction_field=q",
               "evaluate.testset.id_field=null", "evaluate.testset.category_field=topic"]
    assert fail_fast(tmp_path, capsys, *mapping, "evaluate.testset.difficulty_field=levle") == \
        f"error: evaluate.testset.difficulty_field: 'levle' is a field of none of the 3 rows of {testset}"


@pytest.mark.parametrize("override, line", [
    (["evaluate.baseline.backend=hf", "evaluate.baseline.model=/nonexistent/base"],
     "error: evaluate.baseline.model: /nonexistent/base is not a folder"),
    (["evaluate.judge.backend=hf", "evaluate.judge.model=/nonexistent/judge"],
     "error: evaluate.judge.model: /nonexistent/judge is not a folder"),
    (["train.model.name=/nonexistent/llama"], "error: train.model.name: /nonexistent/llama is not a folder"),
    (["evolve.generation.backend=hf", "evolve.generation.model=/nonexistent/writer"],
     "error: evolve.generation.model: /nonexistent/writer is not a folder"),
])
def test_a_missing_model_of_any_role_fails_before_evolve(tmp_path, capsys, override, line):
    assert fail_fast(tmp_path, capsys, *override) == line


def test_an_s3_model_folder_without_a_model_fails_before_evolve(tmp_path, capsys, moto_s3):  # noqa: F811
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key="models/base/README.md", Body=b"not a model")
    line = fail_fast(tmp_path, capsys, "evaluate.baseline.backend=hf", f"evaluate.baseline.model={moto_s3.url('models/base')}")
    assert line == f"error: evaluate.baseline.model: {moto_s3.url('models/base')} holds no config.json (not a model folder)"


def test_an_output_folder_of_someone_else_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    line = fail_fast(tmp_path, capsys)
    assert line.startswith(f"error: train.output.path: {tmp_path}/model holds files this pipeline has no record of "
                           f"writing (no entry in {tmp_path}/pipeline/stages/train.json)")
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("state", ["running", "stale"])
def test_a_pipeline_that_starts_later_refuses_an_unfinished_upstream_stage(tmp_path, capsys, state):
    marker = tmp_path / "pipeline" / "stages" / "train.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"fingerprint": "x", "state": state, "outputs": []}))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # what an interrupted export may leave
    line = fail_fast(tmp_path, capsys, "stages=[evaluate]")
    assert line.startswith(f"error: stages: train is {state} in {marker}: its output is ")
    assert line.endswith("; add train to stages")


@pytest.mark.parametrize("override, line", [
    (["evaluate.output.path={root}/evolve/eval"],
     "error: evaluate.output.path: {root}/evolve/eval is inside evolve.output.path ({root}/evolve)"),
    (["output.path={root}/model/pipeline"], "error: output.path: {root}/model/pipeline is inside train.output.path"),
    (["evaluate.testset.path={root}/evaluate/items.jsonl"],
     "error: evaluate.testset.path: {root}/evaluate/items.jsonl is inside evaluate.output.path"),
])
def test_folders_a_rerun_empties_hold_no_other_stage_and_no_input(tmp_path, capsys, override, line):
    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "items.jsonl").write_text(json.dumps({"Instruction": "Say hi"}) + "\n")
    # the test set file makes evaluate's folder non-empty: it is "someone else's" unless recorded
    marker = tmp_path / "pipeline" / "stages" / "evaluate.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"fingerprint": "x", "state": "done", "outputs": [str(tmp_path / "evaluate")]}))
    overrides = [o.format(root=tmp_path) for o in override]
    assert fail_fast(tmp_path, capsys, *overrides).startswith(line.format(root=tmp_path))


def test_on_s3_a_restarted_stage_empties_only_its_recorded_folders_and_a_foreign_one_is_refused(
        moto_s3):  # noqa: F811
    from common.config import UserError, load_config
    from pipeline.config import PipelineConfig
    from pipeline.preflight import check_outputs
    from pipeline.stages import RUNNING, empty_outputs, read_marker, write_marker

    url = moto_s3.url
    cfg = load_config(PipelineConfig, "configs/pipeline_tiny.yaml", [
        f"output.path={url('pipe')}", f"evolve.output.path={url('evolve')}", f"train.output.path={url('model')}",
        f"train.checkpoint.storage_path={url('runs')}", f"evaluate.output.path={url('evaluate')}"])
    for key in ("model/config.json", "runs/pipeline-tiny/checkpoint-2/x", "runs/other-run/y", "evolve/summary.json"):
        moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=key, Body=b"old")
    write_marker(cfg, "evolve", "fp", RUNNING)
    write_marker(cfg, "train", "fp", RUNNING)
    check_outputs(cfg)  # the folders with files are this pipeline's
    empty_outputs(cfg, "train", read_marker(cfg, "train"))

    def files(prefix: str) -> list[str]:  # pyarrow leaves an empty "folder/" object: not a file
        return [k for k in moto_s3.keys(prefix) if not k.endswith("/")]

    assert files("model/") == [] and files("runs/") == ["runs/other-run/y"]
    assert files("evolve/") == ["evolve/summary.json"]
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key="evaluate/notes.txt", Body=b"mine")
    with pytest.raises(UserError, match=r"^evaluate.output.path: s3://.*/evaluate holds files this pipeline"):
        check_outputs(cfg)
    assert moto_s3.keys("evaluate/") == ["evaluate/notes.txt"]
