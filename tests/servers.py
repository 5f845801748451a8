"""vLLM's own OpenAI-compatible server on CPU, started for tests and benchmarks on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def vllm_openai_server(model_dir: str, served_name: str, api_key: str, log: Path, start_timeout: float = 400):
    """Yields the base URL (…/v1) once /health answers; the server is stopped on exit."""
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--max-model-len", "2048", "--api-key", api_key]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + start_timeout
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"vLLM server did not start: {log.read_text()[-3000:]}")
                time.sleep(2)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


VLLM_SHUTDOWN_NOISE = ("output_handler failed", "EngineDeadError: EngineCore encountered an issue")


def wait_for_exit(pids, timeout_s: float = 60.0) -> None:
    """Each process has exited (asserted), and a moment has passed for its last log lines to be flushed."""
    deadline = time.time() + timeout_s
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids), "an actor did not exit"
    time.sleep(1)


def assert_vllm_actors_ended_quietly(ray) -> None:
    """Every Ray worker of this session that ran a vLLM engine has exited, and none logged its engine
    as dead on the way out (vLLM 0.32 does once Ray kills the exiting actor's engine core:
    vllm-project/vllm#48745; generation/vllm.py's EngineEndAsWarning)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    ran_vllm = {path.stem.rsplit("-", 1)[1] for path in logs.glob("worker-*.out")
                if b"Initializing a V1 LLM engine" in path.read_bytes()}
    assert ran_vllm, f"no worker log in {logs} shows a vLLM engine starting"
    wait_for_exit(ran_vllm)
    for pid in ran_vllm:
        for path in logs.glob(f"worker-*-{pid}.*"):
            text = path.read_text(errors="replace")
            for noise in VLLM_SHUTDOWN_NOISE:
                assert noise not in text, f"{path.name}: {noise!r} as the actor ended"
