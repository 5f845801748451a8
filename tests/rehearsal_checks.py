"""What the cloud run rehearsal (tests/rehearsal.py) must show, asserted on its report: a fake
autoscaling cluster built from cluster.yaml, `ray job submit` with token auth, S3 (moto) only, a
generation node lost during evolve and a training node during train. Every assertion reads Ray's
own state, S3 or the job logs, as the rehearsal recorded them.

Not part of `make test` (the CI size takes longer than the suite's budget for it, see
docs/cluster.md): `make rehearse` runs the small-model size and then these checks on its
report; `python -m pytest tests/rehearsal_checks.py` runs the CI size (echo evolve, a tiny Llama)
and checks it.
"""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.rehearsal import BUCKET, GENERATION_TYPE, TRAINING_TYPE

SHUTDOWN_NOISE = "Task was destroyed but it is pending"


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    """The report of REHEARSAL_REPORT, else of a new CI-size rehearsal (a subprocess: it owns its Ray
    processes and stops them all, even on failure)."""
    if os.environ.get("REHEARSAL_REPORT"):
        with open(os.environ["REHEARSAL_REPORT"]) as f:
            return json.load(f)
    root = tmp_path_factory.mktemp("rehearsal")
    report = root / "report.json"
    done = subprocess.run([sys.executable, "-m", "tests.rehearsal", "--size", "tiny", "--root", str(root),
                           "--report", str(report)], capture_output=True, text=True, timeout=2400)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(report.read_text())


def _node_type(report: dict, node_id: str) -> str:
    return next((n["type"] for n in report["nodes"] if n["id"] == node_id), "unknown")


def _actor_nodes(report: dict, class_part: str, job_hex: str) -> Counter:
    """Node type -> actors of that class this job ran there."""
    return Counter(_node_type(report, a["node"]) for a in report["actors"]
                   if class_part in a["class"] and a["job"] == job_hex)


def test_rehearsal_runs_the_preset_under_ray_job_submit_on_s3_only(rehearsal):
    pipeline = rehearsal["pipeline"]
    assert pipeline["status"] == "SUCCEEDED", pipeline["log"][-5000:]
    assert pipeline["info"]["entrypoint"].startswith("python -m jobs.pipeline --config configs/pipeline_rehearsal.yaml")
    result = rehearsal["outputs"]["pipeline/pipeline.json"]
    assert result["ran"] == ["evolve", "train", "evaluate"]
    paths = [path for stage in result["artifacts"].values() for path in stage.values()]
    assert paths and all(path.startswith(f"s3://{BUCKET}/") for path in paths)
    assert {"evaluate/report.html", "models/rehearsal/config.json", "evolve/summary.json"} <= set(rehearsal["s3"])
    # no worker node opened the driver's disk, and the driver left only caches and temp files there
    assert rehearsal["violations"] == []
    assert all(f.startswith(("cache/", "tmp/")) for f in rehearsal["head_files"]), rehearsal["head_files"]


def test_autoscaling_adds_gpu_nodes_from_zero_places_each_role_on_its_type_and_removes_them(rehearsal):
    job = rehearsal["pipeline"]["info"]["job_hex"]
    assert [n["type"] for n in rehearsal["initial_nodes"]] == ["head"]  # no GPU node before the job
    evolve = _actor_nodes(rehearsal, "EvolveActor", job)
    assert set(evolve) == {GENERATION_TYPE}
    assert rehearsal["pipeline"]["peak_pool"] >= 2  # the [1, 2] pool grew onto a second generation node
    assert set(_actor_nodes(rehearsal, "RayTrainWorker", job)) == {TRAINING_TYPE}
    types = Counter(n["type"] for n in rehearsal["nodes"])
    assert types[GENERATION_TYPE] >= 2 and types[TRAINING_TYPE] >= 1
    assert rehearsal["scale_down"]["all_removed"]  # idle nodes removed at the end: only the head is alive
    assert [n["type"] for n in rehearsal["nodes"] if n["state"] == "ALIVE"] == ["head"]


def test_a_node_lost_mid_stage_changes_no_result(rehearsal):
    kills = rehearsal["pipeline"]["kills"]
    assert _node_type(rehearsal, kills["evolve"]["node"]) == GENERATION_TYPE
    assert _node_type(rehearsal, kills["train"]["node"]) == TRAINING_TYPE
    assert rehearsal["reference"]["status"] == "SUCCEEDED"
    interrupted, reference = rehearsal["records"]["evolve"], rehearsal["records"]["evolve-reference"]
    assert interrupted == reference and len(reference) > 0  # the same ids, statuses and reasons
    assert len({r[0] for r in interrupted}) == len(interrupted)  # no duplicates
    assert Counter(r[1] for r in interrupted)["error"] == 0
    metrics = rehearsal["outputs"]["models/rehearsal/train_metrics.json"]
    assert metrics["steps"] == metrics["total_steps"] > 0
    assert metrics["restored_from_step"] >= 1  # resumed from its last checkpoint, not from the start
    assert rehearsal["outputs"]["evaluate/summary.json"]["testset"]["used"] > 0


def test_the_openai_key_reaches_the_endpoint_but_no_job_metadata(rehearsal):
    key = rehearsal["key"]
    assert rehearsal["endpoint_authorization"] == [f"Bearer {key}"]  # read from Secrets Manager by name
    assert "raysubmit_" in rehearsal["job_list"] and key not in rehearsal["job_list"]
    for run in ("pipeline", "reference", "unplaceable"):
        assert key not in json.dumps(rehearsal[run]["info"]) and key not in rehearsal[run]["log"]


def test_a_pool_no_node_type_can_hold_stops_in_bounded_time_naming_the_missing_resources(rehearsal):
    unplaceable = rehearsal["unplaceable"]
    assert unplaceable["status"] == "FAILED"
    assert ("error: generation: no node of this cluster can hold one actor (CPU 1, GPU 8): missing GPU 8"
            in unplaceable["log"])
    assert unplaceable["info"]["seconds"] < 240  # submit to failure, ray.placement_timeout_s=20 included


def test_the_job_log_is_readable(rehearsal):
    lines = rehearsal["pipeline"]["log"].splitlines()
    assert not [line for line in lines if SHUTDOWN_NOISE in line]
    # Ray Data's progress: one line per dataset, no block of one line per operator every 10 s
    progress = [line for line in lines if "logging_progress.py" in line]
    assert progress and not [line for line in progress if "MapBatches(" in line or "Tasks: " in line]
    assert any("[evolve] " in line for line in lines) and any("[train] step " in line for line in lines)
