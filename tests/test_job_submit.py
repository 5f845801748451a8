"""`ray job submit` against a real local Ray head (its own temp dir and ports), as on a cluster."""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A head with token authentication on (a token of its own, not ~/.ray/auth_token), started
    with --block so that stopping it ends only the processes it started."""
    temp = Path("/tmp") / f"evolray-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    dashboard = _free_port()
    # The entrypoint's `python` must be this environment's, as it is the cluster's on a real cluster.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_AUTH_TOKEN", None)
    # Every port of its own: another Ray (the suite's session cluster) may hold the default ones.
    ports = [f"--{name}={_free_port()}" for name in (
        "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", *ports,
                             f"--temp-dir={temp}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", "--num-cpus=2", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True)
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        head.terminate()
        pytest.fail("local Ray head did not come up")
    yield address, env
    head.terminate()
    head.wait(timeout=60)
    shutil.rmtree(temp, ignore_errors=True)


def _submit(address, env, module, config, *args, wait=True, timeout=600):
    """Submit (and wait); the head's job agent starts a little after its dashboard, so retry that."""
    deadline = time.time() + 120
    while True:
        proc = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".",
                               *([] if wait else ["--no-wait"]), "--",
                               "python", "-m", module, "--config", config, *args],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in proc.stderr + proc.stdout or time.time() > deadline:
            return proc
        time.sleep(3)


def _job_id(submitted: subprocess.CompletedProcess) -> str:
    found = re.search(r"Job '([^']+)' submitted successfully", submitted.stdout + submitted.stderr)
    assert found, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    return found.group(1)


def test_submitted_evolve_job_succeeds_and_a_bad_config_fails_with_one_line(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "out"
    ok = _submit(address, env, "jobs.evolve", "configs/tiny.yaml", "generation.backend=echo", "seeds.limit=6",
                 f"output.path={out}")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"]["used"] == 6 and summary["candidates"] == 12
    bad = _submit(address, env, "jobs.evolve", "configs/tiny.yaml", "evolve.roundz=2")
    assert bad.returncode != 0
    assert "config error: evolve.roundz: unknown key" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout


@pytest.mark.parametrize("credentials", ["no token", "wrong token"])
def test_a_client_without_the_token_is_refused(ray_head, credentials):
    address, env = ray_head
    client = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    if credentials == "wrong token":
        client |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    refused = subprocess.run([RAY, "job", "list", "--address", address], env=client, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0
    assert re.search(r"(?i)auth|token|401|403|unauthori[sz]ed", refused.stdout + refused.stderr)
    accepted = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, timeout=120)
    assert accepted.returncode == 0


def _pipeline_args(root: Path, model: str) -> list[str]:
    return [f"output.path={root}/pipeline", f"evolve.output.path={root}/evolve", f"train.model.name={model}",
            f"train.output.path={root}/model", f"train.checkpoint.storage_path={root}/runs",
            f"evaluate.output.path={root}/evaluate"]


def test_bad_pipeline_config_fails_in_seconds_with_one_line_in_the_job_log(ray_head):
    address, env = ray_head
    started = time.time()
    bad = _submit(address, env, "jobs.pipeline", "configs/pipeline_tiny.yaml", "train.data.path=/elsewhere")
    assert bad.returncode != 0 and time.time() - started < 60
    job = _job_id(bad)
    log = subprocess.run([RAY, "job", "logs", job, "--address", address], env=env, capture_output=True,
                         text=True, timeout=120).stdout
    lines = [line for line in log.splitlines() if "config error" in line]
    assert lines == ["config error: train.data.path: set by the pipeline from evolve.output.path; remove it"]
    assert "Traceback" not in log


def test_submitted_pipeline_runs_every_stage_and_a_stopped_one_resumes_skipping_finished_stages(
        ray_head, tmp_path, tiny_llama):
    address, env = ray_head
    root = tmp_path / "run"
    args = _pipeline_args(root, tiny_llama)
    # 1. submit, stop the job once evolve is complete (train is then starting or running)
    job = _job_id(_submit(address, env, "jobs.pipeline", "configs/pipeline_tiny.yaml", *args, wait=False))
    marker = root / "pipeline" / "stages" / "evolve.json"
    deadline = time.time() + 300
    while not (marker.exists() and json.loads(marker.read_text())["state"] == "done"):
        assert time.time() < deadline, "evolve stage did not finish"
        time.sleep(0.5)
    subprocess.run([RAY, "job", "stop", job, "--address", address], env=env, capture_output=True, timeout=120)
    assert not (root / "pipeline" / "stages" / "evaluate.json").exists()
    evolve_summary = (root / "evolve" / "summary.json").stat().st_mtime
    # 2. the rerun skips evolve, runs train and evaluate
    rerun = _submit(address, env, "jobs.pipeline", "configs/pipeline_tiny.yaml", *args)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-4000:]
    assert "[pipeline] evolve: complete for these settings, skipped" in log
    assert "[pipeline] train: running" in log and "[pipeline] evaluate: running" in log
    result = json.loads((root / "pipeline" / "pipeline.json").read_text())
    assert result["ran"] == ["train", "evaluate"] and result["skipped"] == ["evolve"]
    assert (root / "evolve" / "summary.json").stat().st_mtime == evolve_summary
    # every stage's outputs, and the final listing points at them
    evolve = json.loads((root / "evolve" / "summary.json").read_text())
    assert evolve["seeds"]["used"] == 16 and evolve["accounting"]["ok"]
    training = pq.read_table(root / "evolve" / "training" / "parquet")
    assert training.num_rows == evolve["training_rows"] > 0
    assert (root / "model" / "config.json").exists() and list((root / "model").glob("*.safetensors"))
    metrics = json.loads((root / "model" / "train_metrics.json").read_text())
    assert metrics["steps"] == metrics["total_steps"] > 0
    report = (root / "evaluate" / "report.html").read_text()
    assert "<img" in report and pq.read_table(root / "evaluate" / "items.parquet").num_rows == 4
    assert json.loads((root / "evaluate" / "summary.json").read_text())["models"]["candidate"]["model"] == str(root / "model")
    assert f"{root}/evaluate/report.html" in log
    # 3. a third run has nothing left to do
    again = _submit(address, env, "jobs.pipeline", "configs/pipeline_tiny.yaml", *args)
    assert again.returncode == 0
    assert json.loads((root / "pipeline" / "pipeline.json").read_text())["ran"] == []
