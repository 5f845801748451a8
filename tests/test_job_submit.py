"""`ray job submit` against a real local Ray head (its own temp dir and ports), as on a cluster."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path_factory):
    """A head started with --block, so stopping it ends only the processes it started."""
    temp = Path("/tmp") / f"evolray-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    dashboard = _free_port()
    # The entrypoint's `python` must be this environment's, as it is the cluster's on a real cluster.
    env = dict(os.environ, RAY_AUTH_MODE="token",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
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


def _submit(address, env, *args):
    """Submit and wait; the head's job agent starts a little after its dashboard, so retry that."""
    deadline = time.time() + 120
    while True:
        proc = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
                               "python", "-m", "jobs.evolve", "--config", "configs/tiny.yaml", *args],
                              env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr + proc.stdout or time.time() > deadline:
            return proc
        time.sleep(3)


def test_submitted_evolve_job_succeeds_and_a_bad_config_fails_with_one_line(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "out"
    ok = _submit(address, env, "generation.backend=echo", "seeds.limit=6", f"output.path={out}")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"]["used"] == 6 and summary["candidates"] == 12
    bad = _submit(address, env, "evolve.roundz=2")
    assert bad.returncode != 0
    assert "config error: evolve.roundz: unknown key" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout
