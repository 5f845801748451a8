"""The evolve job survives: a killed driver resumes, a killed worker is restarted, a poison seed
ends as an error, a changed config is refused, every actor gets work, and all of it on S3 too.

Each run is `python -m jobs.evolve` in a subprocess with a Ray of its own (as `ray job submit`
would run it), on the echo backend with a simulated latency so that a run takes seconds.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from evol.resume import bucket_of
from tests.evolve_checks import assert_counts_and_lineage
from tests.s3_fixtures import moto_s3, s3_env  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SEEDS = 40
BASE = ["generation.backend=echo", "generation.echo_latency_ms=120", "generation.max_chains=4",
        "generation.num_cpus=0.5", "output.buckets=16", "evolve.rounds=2",
        "seeds.limit=null", "ray.num_cpus=2"]


def write_seeds(path: Path, poison: int | None = None, count: int = SEEDS) -> Path:
    rows = [{"id": f"s{i:02d}", "instruction": f"Explain topic {i} to a student" + (" POISON" if i == poison else ""),
             "output": f"Topic {i} explained."} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def start_job(seeds: str, out: str, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", f"seeds.path={seeds}",
           f"output.path={out}", *BASE, *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or os.environ.copy(), start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)  # never leave a job and its Ray behind
        raise
    assert proc.returncode == 0, out[-4000:]
    return out


def run_job(seeds, out, *overrides, env=None) -> str:
    return finish(start_job(str(seeds), str(out), *overrides, env=env))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (its local Ray: GCS, raylet, workers), and wait
    until all of them are gone, so that no worker writes after the kill."""
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in started:  # a Ray process may sit in a session of its own
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while alive := [p for p in started if _running(p)]:
        assert time.time() < deadline, f"still running after SIGKILL: {alive}"
        time.sleep(0.1)


def _running(process: psutil.Process) -> bool:
    """A zombie (dead, not yet reaped by a container's PID 1) writes nothing."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def bucket_files(out: Path) -> list[Path]:
    return sorted((out / "records").glob("bucket-*.parquet"))


def records(out: Path) -> pd.DataFrame:
    return pd.concat([pq.read_table(f).to_pandas() for f in bucket_files(out)], ignore_index=True)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["id", "root_id", "parent_id", "round", "op", "status", "reason", "instruction", "response"]
    return frame[columns].sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted run: the record set every interrupted one must end with."""
    folder = tmp_path_factory.mktemp("full")
    seeds = write_seeds(folder / "seeds.jsonl")
    run_job(seeds, folder / "out")
    return seeds, folder / "out"


def test_an_uninterrupted_run_accounts_for_every_row(full_run):
    seeds, out = full_run
    frame, result = records(out), summary(out)
    assert_counts_and_lineage(frame, result, seeds=SEEDS, rounds=2)
    assert result["accounting"] == {"input_rows": SEEDS, "round0_records": SEEDS, "chain_problems": 0,
                                    "examples": [], "unread_files": [], "training_rows": result["training_rows"],
                                    "training_file_rows": result["training_rows"], "orphan_training_files": [],
                                    "ok": True}
    # every seed's records sit in exactly one bucket file
    owners = {}
    for path in bucket_files(out):
        for root in set(pq.read_table(path, columns=["root_id"]).column("root_id").to_pylist()):
            assert owners.setdefault(root, path) == path
    assert len(owners) == SEEDS and sum(result["seeds_per_actor"].values()) == SEEDS
    assert result["this_run"] == {"requests": result["requests"], "generated_tokens": result["generated_tokens"]}


def test_a_killed_driver_resumes_to_the_same_records(full_run, tmp_path):
    seeds, full = full_run
    out = tmp_path / "out"
    proc = start_job(str(seeds), str(out))
    wait_for(lambda: len(bucket_files(out)) >= 3, what="three buckets written")
    kill_group(proc)
    before = set(bucket_files(out))
    written = len(before)
    assert 3 <= written < 16 and not (out / "summary.json").exists()
    log = run_job(seeds, out)
    assert f"resuming {out}: {written} bucket(s) already written are skipped" in log
    result = summary(out)
    assert sum(result["seeds_per_actor"].values()) < SEEDS  # finished seeds were not generated again
    # the rates are this run's: the buckets it wrote over its own seconds (they counted every run's requests)
    this_run = sum(pc.sum(pq.read_table(p, columns=["requests"]).column("requests")).as_py()
                   for p in set(bucket_files(out)) - before)
    assert 0 < result["this_run"]["requests"] == this_run < result["requests"]
    assert result["requests_per_second"] == pytest.approx(this_run / result["wall_seconds"], rel=1e-3)
    assert f"{this_run} requests, " in log and f"(of {result['requests']} requests and " in log
    frame = records(out)
    assert frame["id"].is_unique
    pd.testing.assert_frame_equal(comparable(frame), comparable(records(full)))
    assert result["accounting"]["ok"] and result["requests"] == summary(full)["requests"]
    training = pq.read_table(out / "training" / "parquet").num_rows
    assert training == summary(full)["training_rows"] == result["training_rows"]


def test_a_killed_worker_is_restarted_and_nothing_is_lost(full_run, tmp_path):
    seeds, full = full_run
    out = tmp_path / "out"
    proc = start_job(str(seeds), str(out), "seeds.dedupe_partitions=1")  # one block holds every bucket
    wait_for(lambda: len(bucket_files(out)) >= 2, what="two buckets written")
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "EvolveActor" in " ".join(p.cmdline())]
    assert workers, "no EvolveActor worker found"
    workers[0].kill()
    written = {path.name: path.stat().st_mtime_ns for path in bucket_files(out)}
    finish(proc)
    pd.testing.assert_frame_equal(comparable(records(out)), comparable(records(full)))
    assert summary(out)["accounting"]["ok"]
    # the retried calls did not write again what the dead worker had written
    assert {name: (out / "records" / name).stat().st_mtime_ns for name in written} == written


def test_a_poison_seed_ends_as_an_error_in_bounded_time(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", poison=7)
    start = time.time()
    run_job(seeds, tmp_path / "out", "generation.echo_crash_on=POISON")
    assert time.time() - start < 240
    frame, result = records(tmp_path / "out"), summary(tmp_path / "out")
    assert_counts_and_lineage(frame, result, seeds=SEEDS, rounds=2)
    poisoned = frame[frame["root_id"] == "s07"]
    assert poisoned[["round", "status", "reason"]].values.tolist() == [[0, "error", "worker_failed"]]
    failed = frame[frame["reason"] == "worker_failed"]
    # the poison's own bucket, not the buckets that were in flight beside it
    beside = [f"s{i:02d}" for i in range(SEEDS) if bucket_of(f"s{i:02d}", 16) == bucket_of("s07", 16)]
    assert sorted(failed["root_id"]) == beside
    assert result["accounting"]["ok"] and result["seeds"]["errors"] == len(failed) and result["errors"] == 0


def test_a_rerun_with_another_config_is_refused_and_overwrite_never_deletes_a_foreign_folder(full_run, tmp_path):
    seeds, full = full_run
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", f"seeds.path={seeds}",
                           f"output.path={full}", *BASE, "evolve.rounds=3", "evolve.seed=5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: output.path: {full} holds a run with another config (changed: "
                                   "evolve.rounds, evolve.seed); rerun with its config to resume it, or set "
                                   "output.overwrite=true to start over")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", f"seeds.path={seeds}",
                           f"output.path={foreign}", *BASE, "output.overwrite=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "was not created by an evolray evolve run; refusing to delete it" in proc.stderr
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_two_actors_share_one_seed_file(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", count=400)
    # 4 blocks of ~100 seeds for 2 actors of one call each: a block waits for a free actor
    run_job(seeds, tmp_path / "out", "generation.concurrency=[2,2]", "seeds.dedupe_partitions=4",
            "generation.echo_latency_ms=50")
    per_actor = summary(tmp_path / "out")["seeds_per_actor"]
    assert len(per_actor) == 2 and sum(per_actor.values()) == 400
    assert min(per_actor.values()) >= 400 // 5  # both busy, not one actor and an idle one


def test_a_pool_that_holds_every_cpu_is_refused_with_the_numbers(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", f"seeds.path={seeds}",
                           f"output.path={tmp_path / 'out'}", *BASE, "generation.concurrency=[2,2]",
                           "generation.num_cpus=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: generation.concurrency: 2 actors x num_cpus 1 = 2 CPUs leave no room for reading seeds on this "
        "2-CPU Ray; lower generation.num_cpus (e.g. 0.5) or the pool size")


def test_evolve_from_s3_to_s3_and_resume_there(moto_s3, tmp_path):  # noqa: F811
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    moto_s3.client().upload_file(str(seeds), moto_s3.bucket, "seeds/seeds.jsonl")
    env = os.environ | s3_env()
    out = moto_s3.url("runs", "one")
    proc = start_job(moto_s3.url("seeds", "seeds.jsonl"), out, env=env)
    wait_for(lambda: len([k for k in moto_s3.keys("runs/one/records/") if k.endswith(".parquet")]) >= 3,
             what="three buckets on s3")
    kill_group(proc)
    log = run_job(moto_s3.url("seeds", "seeds.jsonl"), out, env=env)
    assert "resuming" in log
    keys = moto_s3.keys("runs/one/")
    assert "runs/one/summary.json" in keys and "runs/one/.evolray-job" in keys
    assert any(k.startswith("runs/one/training/parquet/") for k in keys)
    body = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="runs/one/summary.json")["Body"].read()
    result = json.loads(body)
    assert result["seeds"]["read"] == SEEDS and result["candidates"] == 2 * SEEDS and result["accounting"]["ok"]
    missing = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml",
                              "seeds.path=s3://no-such-bucket/seeds.jsonl", f"output.path={tmp_path / 'x'}", *BASE],
                             cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("error: seeds.path: s3://no-such-bucket/seeds.jsonl: bucket no-such-bucket "
                                      "does not exist")


def test_the_local_preset_killed_mid_run_resumes_with_its_relative_paths(tmp_path):
    """`make run`'s evolve stage as a user types it (relative output.path, `bundled:` seeds,
    overwrite false), killed once a bucket is written and rerun with the same command."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "local.yaml").write_text((ROOT / "configs" / "local.yaml").read_text())
    cmd = [sys.executable, "-m", "jobs.evolve", "--config", "configs/local.yaml", "output.overwrite=false",
           "generation.backend=echo", "generation.echo_latency_ms=100", "generation.max_chains=1",
           "generation.num_cpus=0.5"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    out = tmp_path / "outputs" / "evolve-local"

    def start() -> subprocess.Popen:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)

    proc = start()
    wait_for(lambda: len(bucket_files(out)) >= 1, what="a bucket written")
    kill_group(proc)
    written = {path.name: path.stat().st_mtime_ns for path in bucket_files(out)}
    seeds_written = int((records(out)["round"] == 0).sum())
    assert 1 <= len(written) and seeds_written < 16 and not (out / "summary.json").exists()
    log = finish(start())
    assert f"resuming {out}: {len(written)} bucket(s) already written are skipped" in log
    result = summary(out)
    assert result["accounting"]["ok"] and result["seeds"]["read"] == 16
    assert sum(result["seeds_per_actor"].values()) == 16 - seeds_written  # only the unwritten buckets evolved
    assert {p.name: p.stat().st_mtime_ns for p in bucket_files(out) if p.name in written} == written


def test_a_dead_engine_stops_the_job_with_its_cause_and_a_rerun_does_the_rest(full_run, tmp_path):
    """The engine dies after 120 requests: the actor stops after 3 failures in a row instead of writing
    every chain as an error; its buckets stay unwritten, and a rerun with a live engine finishes them."""
    seeds, full = full_run
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", f"seeds.path={seeds}",
                           f"output.path={out}", *BASE, "generation.echo_fail_after=120",
                           "evolve.engine_failure_limit=3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = next(line for line in reversed(proc.stderr.splitlines()) if line.startswith("error: "))
    assert re.fullmatch(r"error: the generation engine \(echo\) failed 3 requests in a row \(last: RuntimeError: echo "
                        r"engine is dead \(echo_fail_after\)\); (\d+) bucket\(s\) are left unwritten: rerun the same "
                        r"command to do them once the engine works", line), line
    unwritten = int(re.search(r"; (\d+) bucket", line).group(1))
    assert unwritten >= 1 and len(bucket_files(out)) == len(bucket_files(full)) - unwritten
    assert not (out / "summary.json").exists()
    assert bucket_files(out) and (records(out)["reason"] != "worker_failed").all()
    run_job(seeds, out)
    pd.testing.assert_frame_equal(comparable(records(out)), comparable(records(full)))
    assert summary(out)["errors"] == 0 and summary(out)["accounting"]["ok"]


def test_an_actor_that_dies_while_starting_fails_the_job_with_its_cause(tmp_path):
    """An engine that kills its process while loading (out of memory) is given up on after 3 starts."""
    seeds = write_seeds(tmp_path / "seeds.jsonl", count=4)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "jobs.evolve", "--config", "configs/tiny.yaml", f"seeds.path={seeds}",
                           f"output.path={tmp_path / 'out'}", *BASE, "generation.echo_crash_at_start=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and time.time() - start < 600
    assert (  # Ray may forward a dying worker's last log lines after it
        "error: the evolve actor could not start: evol.inflight.ActorStartFailed: the evolve actor's process died 3 "
        "times while starting (the echo engine of smollm2-135m-instruct), without a Python error: out of memory or a "
        "crash in native code; see the actor's log in the Ray session's logs folder") in proc.stderr.splitlines()
    assert not bucket_files(tmp_path / "out")


def test_a_rerun_may_change_the_hf_prefix_cache_or_resume_a_run_saved_before_it_existed():
    """generation.prefix_cache_tokens changes how fast prompts are prefilled, not what is written."""
    import copy

    from evol.config import EvolveConfig
    from evol.resume import config_changes

    saved = EvolveConfig().model_dump(mode="json")
    older = copy.deepcopy(saved)
    del older["generation"]["prefix_cache_tokens"]  # a run from before the key existed
    off = copy.deepcopy(saved)
    off["generation"]["prefix_cache_tokens"] = 0
    assert config_changes(older, saved) == [] and config_changes(saved, off) == []
    reseeded = copy.deepcopy(saved)
    reseeded["generation"]["seed"] = 7
    assert config_changes(saved, reseeded) == ["generation.seed"]  # what changes the output still counts


def test_a_rerun_may_turn_fallback_rewrites_off_or_resume_a_run_saved_before_they_existed():
    """evolve.fallback_rewrites changes which requests run at once, not what is written."""
    import copy

    from evol.config import EvolveConfig
    from evol.resume import config_changes

    saved = EvolveConfig().model_dump(mode="json")
    older = copy.deepcopy(saved)
    del older["evolve"]["fallback_rewrites"]  # a run from before the key existed
    off = copy.deepcopy(saved)
    off["evolve"]["fallback_rewrites"] = False
    assert config_changes(older, saved) == [] and config_changes(saved, off) == []
    more_rounds = copy.deepcopy(saved)
    more_rounds["evolve"]["rounds"] = 5
    assert config_changes(saved, more_rounds) == ["evolve.rounds"]
