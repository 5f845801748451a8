"""The cloud run rehearsed on one machine: an autoscaling fake multi-node Ray, S3 only, nodes lost.

    python -m tests.rehearsal [--size small|tiny] [--report FILE]      (make rehearse: --size small)

Builds Ray's fake multi-node autoscaler (provider `fake_multinode`: each node it "launches" is a
real raylet on this machine) from cluster.yaml's node types with their CPUs and GPUs scaled down,
starts its head with token authentication, its own temp dir and ports, puts every input on a
local moto S3 server (seeds, the models, the test set) and an openai key in moto's Secrets
Manager, and submits configs/pipeline_rehearsal.yaml with `ray job submit`. While the pipeline
runs it kills a generation node's raylet during evolve and a training node's during train. Then
it runs evolve alone, uninterrupted, for reference, waits for the autoscaler to remove the idle
nodes, submits a pool that no node type can hold, and writes what happened, read from Ray's own
state (nodes, actors, jobs), S3 and the job logs, to a JSON report that tests/rehearsal_checks.py
checks (and `make rehearse` prints). Every process it started is stopped at the end.

Each fake node has a disk of its own (tests/fake_node.py): a driver-local path read on another
node fails there and is listed in the report.
"""
from __future__ import annotations

import argparse
import io
import logging
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import yaml

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
PRESET = "configs/pipeline_rehearsal.yaml"
BUCKET = "evolray-rehearsal"
SECRET_NAME = "evolray/openai"
HEAD_CPUS = 16  # the cloud head's, unscaled (logical CPUs): the driver's Ray Data reads, shuffles and tokenizers
# fit it, as they do there; with fewer, their queued tasks make the autoscaler add GPU nodes to run them
GPU_DIVISOR = 4  # a 4-GPU L4 node becomes a 1-GPU fake node, an 8-GPU A100 node a 2-GPU one
MAX_WORKERS = 3  # per node type: room for a lost node's replacement
NODE_OBJECT_STORE = 256 << 20
IDLE_TIMEOUT_MINUTES = 0.15
GENERATION_TYPE, TRAINING_TYPE = "gpu_generation", "gpu_training"

# The CI size: echo evolve, the tiny random Llama trained for a few steps, echo baseline and judge.
# Echo answers after 2.5 s: a bucket (a seed: 7 requests in a row) takes ~18 s; 16 seeds (12 non-empty buckets
# of 16) take ~3 min on one actor,
# long enough for Ray Data to measure the pool's rate and grow it onto a second generation node (~1 min).
# One chain in flight per actor: an actor then holds 2 calls of 1 bucket (plus 2 queued), so 12 buckets keep
# the pool's utilization at 2 (> Ray Data's 1.75) and it grows; with 8 chains one actor would hold them all.
# Four epochs of checkpoints every 2 steps: the training node is lost after the first checkpoint and before
# the export, a window of seconds with one epoch (one run's watcher missed it and the node was never lost).
TINY = ["evolve.generation.backend=echo", "evolve.generation.model=echo", "evolve.generation.echo_latency_ms=2500",
        "evolve.generation.max_chains=1", "evolve.seeds.limit=16", "evolve.seeds.dedupe_partitions=16",
        "evolve.output.buckets=16",
        "train.model.name=s3://evolray-rehearsal/models/tiny-llama", "train.data.max_length=128",
        "train.optim.global_batch_size=8", "train.checkpoint.every_steps=2", "train.optim.epochs=4",
        "evaluate.baseline.backend=echo", "evaluate.baseline.model=echo", "evaluate.baseline.num_gpus=0",
        "evaluate.baseline.num_cpus=0.25", "evaluate.judge.backend=echo", "evaluate.judge.model=echo",
        "evaluate.judge.num_gpus=0", "evaluate.judge.num_cpus=0.25", "evaluate.judge.prompt_format=chat",
        "evaluate.judge_prefill=false"]


def free_ports(count: int) -> list[int]:
    """`count` different free ports (all bound at once, so that none is handed out twice)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def log(message: str) -> None:
    print(f"[rehearsal {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the fake cluster's shape, from cluster.yaml (pure) ---

def fake_node_types(cluster: dict) -> dict:
    """cluster.yaml's node types for the fake provider: the same names, resource kinds and
    min_workers, GPUs divided by GPU_DIVISOR (at least 1), one CPU per GPU, at most MAX_WORKERS
    nodes per type; its head type becomes the fake head `ray.head.default` with HEAD_CPUS."""
    types = {"ray.head.default": {"resources": {"CPU": HEAD_CPUS}, "node_config": {}, "max_workers": 0}}
    for name, spec in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            continue
        resources = dict(spec["resources"])
        gpus = max(1, int(resources.get("GPU", 0)) // GPU_DIVISOR) if resources.get("GPU") else 0
        resources.update({"CPU": max(gpus, 1)} | ({"GPU": gpus} if gpus else {}),
                         object_store_memory=NODE_OBJECT_STORE)
        types[name] = {"resources": resources, "node_config": {}, "min_workers": spec.get("min_workers", 0),
                       "max_workers": min(spec["max_workers"], MAX_WORKERS)}
    return types


def autoscaling_config(node_types: dict, gcs_address: str, root: str, temp_root: str) -> dict:
    """A whole autoscaler config for Ray's fake multi-node provider (2.60 ships no example.yaml to
    build on), in its subclass that gives every node a disk of its own (tests/fake_node.py)."""
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                   "worker_start_ray_commands")
    return {"cluster_name": "evolray-rehearsal", "max_workers": sum(t["max_workers"] for t in node_types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
            "provider": {"type": "external", "module": "tests.fake_node.IsolatedFakeProvider",
                         "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True,
                         "gcs_address": gcs_address, "rehearsal_root": root, "temp_root": temp_root},
            "available_node_types": node_types, "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
            **{key: [] for key in empty_lists}}


# --- S3 (moto), the key, the fake openai endpoint ---

@contextmanager
def moto_server(log_file: Path) -> Iterator[dict]:
    """A moto server (S3, Secrets Manager, SSM) on 127.0.0.1; yields the variables that point AWS
    clients (boto3, pyarrow) at it, which every node of the cluster gets. The server's own request
    errors (its tracebacks when a lost node's multipart upload is completed twice) go to `log_file`."""
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.ERROR)  # one line per request otherwise
    errors = logging.FileHandler(log_file)
    werkzeug.addHandler(errors)
    werkzeug.propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "rehearsal",
               "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        server.stop()
        werkzeug.removeHandler(errors)
        errors.close()


def upload_inputs(aws: dict, models: dict[str, str]) -> str:
    """Seeds, test set and model folders into the bucket, the openai key into Secrets Manager;
    returns the key (the rehearsal checks that it reaches the endpoint and no job metadata)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(REPO / "evol/data/self_instruct_seeds.jsonl"), BUCKET, "seeds/self_instruct_seeds.jsonl")
    s3.upload_file(str(REPO / "eval/data/wizardlm_testset.jsonl"), BUCKET, "testsets/wizardlm_testset.jsonl")
    for name, folder in models.items():
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), BUCKET, f"models/{name}/{path.relative_to(folder)}")
    key = f"sk-rehearsal-{secrets.token_hex(16)}"
    boto3.client("secretsmanager", endpoint_url=aws["AWS_ENDPOINT_URL"]).create_secret(Name=SECRET_NAME,
                                                                                       SecretString=key)
    return key


def s3_keys(aws: dict, prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"]).get_paginator("list_objects_v2")
    return sorted(item["Key"] for page in pages.paginate(Bucket=BUCKET, Prefix=prefix)
                  for item in page.get("Contents", []))


def s3_read(aws: dict, key: str) -> bytes:
    import boto3

    return boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"]).get_object(Bucket=BUCKET, Key=key)["Body"].read()


def records(aws: dict, prefix: str) -> list[list[str]]:
    """[id, status, reason] of every record of an evolve output, sorted."""
    import pyarrow.parquet as pq

    rows = []
    for key in s3_keys(aws, f"{prefix}/records/"):
        if key.endswith(".parquet") and "/bucket-" in key:
            table = pq.read_table(io.BytesIO(s3_read(aws, key)), columns=["id", "status", "reason"])
            rows += [[r["id"], r["status"], r["reason"]] for r in table.to_pylist()]
    return sorted(rows)


# --- the cluster ---

HEAD_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
              "ray-client-server-port", "node-manager-port", "object-manager-port")

class FakeCluster:
    """A fake autoscaling Ray cluster: `ray start --head --block` with the fake provider, token
    authentication on, its own temp dir and ports; stop() ends exactly the processes it started."""

    def __init__(self, root: Path, node_types: dict, env: dict):
        self.root, self.node_types = root, node_types
        self.temp = Path(f"/tmp/evr-rehearsal-{os.getpid()}")  # short: Ray's socket paths have a length limit
        gcs_port, self.dashboard_port, *self.ports = free_ports(2 + len(HEAD_PORTS))
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env.pop("RAY_ADDRESS", None)
        # This process is a client too (Ray's state API): the auth mode is read when ray is first imported.
        os.environ.update({k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
        self.head: subprocess.Popen | None = None

    def start(self) -> None:
        config = self.root / "autoscaling.yaml"
        config.write_text(yaml.safe_dump(autoscaling_config(self.node_types, self.gcs_address, str(self.root),
                                                            f"{self.temp}-n")))
        ports = [f"--{name}={port}" for name, port in zip(HEAD_PORTS, self.ports)]
        head = self.root / "head"  # the driver's disk: its temp folder and model cache
        for sub in ("tmp", "cache"):
            (head / sub).mkdir(parents=True, exist_ok=True)
        env = dict(self.env, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
                   AUTOSCALER_HEARTBEAT_TIMEOUT_S="10",  # a lost node is noticed (and replaced) in 10 s
                   PYTHONPATH=str(REPO),  # the autoscaler imports the provider from tests/
                   # This machine may run other Ray clusters: Ray's own clients (Ray Train's state API
                   # calls) must not guess among them. On a real cluster there is one per machine.
                   RAY_ADDRESS=self.gcs_address,
                   TMPDIR=str(head / "tmp"), EVOLRAY_CACHE=str(head / "cache"))
        head_log = open(self.root / "head.log", "wb")
        self.head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={self.gcs_address.rsplit(':', 1)[1]}", *ports, f"--temp-dir={self.temp}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", f"--num-cpus={HEAD_CPUS}",
             f"--object-store-memory={NODE_OBJECT_STORE}", "--disable-usage-stats",
             f"--autoscaling-config={config}"],
            env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while self.ray_cli("job", "list").returncode:
            if self.head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the fake cluster's head did not start: see {self.root / 'head.log'}")
            time.sleep(2)

    def ray_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args, "--address", self.address], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)

    def stop(self) -> None:
        import psutil

        logs = self.temp / "session_latest" / "logs"  # the autoscaler's and Ray Data's logs, for a post-mortem
        for name in ("monitor.log", "ray-data"):
            if (logs / name).exists():
                subprocess.run(["cp", "-r", str(logs / name), str(self.root)], check=False)
        if self.head is not None and self.head.poll() is None:
            os.killpg(self.head.pid, signal.SIGTERM)
            try:
                self.head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.head.pid, signal.SIGKILL)
        # Fake nodes are started by the head's autoscaler; any process left is found by our temp dir.
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.temp) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        subprocess.run(["rm", "-rf", str(self.temp), f"{self.temp}-n"], check=False)

    def kill_node(self, node_id: str) -> int:
        """A node lost: SIGKILL its raylet and every process under it (workers, agents)."""
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and f"--node_id={node_id}" in cmd:
                victims = [proc, *proc.children(recursive=True)]
                for victim in victims:
                    victim.kill()
                return len(victims)
        raise RuntimeError(f"no raylet of node {node_id}")


# --- jobs ---

# What the rehearsal adds to `ray job submit`: the guard of the driver's disk (tests/fake_node.py). No
# credentials: the nodes have S3 access from their environment, as instance profiles give it on AWS,
# and the openai key is read by name.
JOB_RUNTIME_ENV = {"worker_process_setup_hook": "tests.fake_node.guard"}


def submit(cluster: FakeCluster, module: str, config: str, overrides: list[str]) -> str:
    """`ray job submit --no-wait --working-dir .`, as the README's cloud steps; the job's id."""
    args = ["job", "submit", "--no-wait", "--working-dir", ".", "--runtime-env-json", json.dumps(JOB_RUNTIME_ENV), "--", "python", "-m", module, "--config", config, *overrides]
    deadline = time.time() + 180
    while True:  # the head's job agent starts a little after its dashboard, later still on a busy machine
        proc = subprocess.run([RAY, *args[:2], "--address", cluster.address, *args[2:]], env=cluster.env,
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        found = [w.strip("'") for w in (proc.stdout + proc.stderr).split() if w.startswith("'raysubmit_")]
        if found:
            return found[0]
        if time.time() > deadline:
            raise RuntimeError(f"ray job submit failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        time.sleep(3)


def wait_job(client, job: str, timeout: float, tick=None) -> str:
    """The job's final status; `tick()` runs about once a second meanwhile."""
    deadline = time.time() + timeout
    while True:
        status = str(client.get_job_status(job).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if time.time() > deadline:
            client.stop_job(job)
            return "TIMED_OUT"
        if tick is not None:
            tick()
        time.sleep(1)


# --- Ray's own state ---

def node_type_of(total: dict, node_types: dict) -> str:
    """A node's type, from its resources (the fake provider's nodes carry no type label): the head
    has node:__internal_head__, the others the GPU count of their type."""
    if "node:__internal_head__" in total:
        return "head"
    for name, spec in node_types.items():
        if name != "ray.head.default" and total.get("GPU", 0) == spec["resources"].get("GPU", 0):
            return name
    return "unknown"


def nodes_now(cluster: FakeCluster) -> list[dict]:
    """Every node the cluster has had (alive and dead), from Ray's state API."""
    from ray.util.state import list_nodes

    rows = list_nodes(address=cluster.address, detail=True, limit=1000, raise_on_missing_output=False)
    return [{"id": n.node_id, "type": node_type_of(n.resources_total or {}, cluster.node_types), "state": n.state,
             "start_ms": n.start_time_ms, "end_ms": n.end_time_ms} for n in rows]


def actors_now(cluster: FakeCluster) -> list[dict]:
    """Every actor the cluster has had (alive and dead), where it ran, from Ray's state API."""
    from ray.util.state import list_actors

    rows = list_actors(address=cluster.address, detail=True, limit=10000, raise_on_missing_output=False)
    return [{"class": a.class_name, "node": a.node_id, "state": a.state, "job": a.job_id, "restarts": a.num_restarts}
            for a in rows]


def alive_on(actors: list[dict], class_part: str, nodes: list[dict], node_type: str) -> list[str]:
    """Ids of the alive nodes of `node_type` that run an alive actor whose class name holds `class_part`."""
    typed = {n["id"] for n in nodes if n["type"] == node_type and n["state"] == "ALIVE"}
    return sorted({a["node"] for a in actors if class_part in a["class"] and a["state"] == "ALIVE"
                   and a["node"] in typed})


# --- the rehearsal ---

class Watcher:
    """Polled once a second while the pipeline runs: loses a generation node once evolve has
    written some buckets, and a training node once train has written a checkpoint."""

    def __init__(self, cluster: FakeCluster, aws: dict):
        self.cluster, self.aws, self.kills, self.peak_pool = cluster, aws, {}, 0
        self._buckets_read = 0

    def tick(self) -> None:
        if len(self.kills) == 2:
            return
        nodes, actors = nodes_now(self.cluster), actors_now(self.cluster)
        evolve = [k for k in s3_keys(self.aws, "evolve/records/") if "/bucket-" in k]
        pool = alive_on(actors, "EvolveActor", nodes, GENERATION_TYPE)
        self.peak_pool = max(self.peak_pool, len(pool))  # generation nodes with a live pool actor at once
        # Once the pool has grown; if it has not with 60% of its buckets written, lose its one node anyway.
        if "evolve" not in self.kills and evolve and (len(pool) > 1 or len(evolve) >= 0.6 * self.buckets_read()):
            self._kill("evolve", pool, len(evolve))
        # Ray Train writes its snapshot once a checkpoint is uploaded and registered: one to resume from
        registered = s3_keys(self.aws, "train-runs/rehearsal/checkpoint_manager_snapshot.json")
        if "train" not in self.kills and registered and not s3_keys(self.aws, "models/rehearsal/config.json"):
            self._kill("train", alive_on(actors, "RayTrainWorker", nodes, TRAINING_TYPE), len(registered))

    def buckets_read(self) -> int:
        """Buckets with seeds in them, from evolve's own read counts (written before any bucket is)."""
        if not self._buckets_read:
            from evol.reading import READ_COUNTS, read_counts

            self._buckets_read = len(read_counts(f"s3://{BUCKET}/evolve/{READ_COUNTS}")[1])
        return self._buckets_read or float("inf")  # none counted yet: no fallback kill

    def _kill(self, stage: str, targets: list[str], progress: int) -> None:
        if not targets:
            return
        processes = self.cluster.kill_node(targets[0])
        self.kills[stage] = {"node": targets[0], "at": time.time(), "processes": processes, "progress": progress}
        log(f"{stage}: killed node {targets[0][-8:]} ({processes} processes) with {progress} files written")


def evolve_only(name: str) -> list[str]:
    """Overrides that run the preset's evolve stage alone, to s3://BUCKET/<name>."""
    return ["stages=[evolve]", f"output.path=s3://{BUCKET}/pipeline-{name}", f"evolve.output.path=s3://{BUCKET}/{name}"]


def finish(client, job: str, started: float, status: str) -> dict:
    log(f"{job}: {status} in {time.time() - started:.0f} s")
    return {"job": job, "status": status, "seconds": round(time.time() - started, 1), "info": job_info(client, job),
            "log": client.get_job_logs(job)}


def job_info(client, job: str) -> dict:
    info = client.get_job_info(job)
    seconds = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
    return {"job_hex": info.job_id, "entrypoint": info.entrypoint, "metadata": info.metadata,
            "runtime_env": info.runtime_env, "message": info.message, "status": str(info.status.value),
            "seconds": seconds}


def run_jobs(cluster: FakeCluster, client, aws: dict, overrides: list[str], timeout: float) -> dict:
    """The pipeline, losing a node in evolve and one in train; meanwhile a pool no node type can
    hold (it must stop by itself); then evolve alone, uninterrupted, as the reference."""
    started = time.time()
    pipeline = submit(cluster, "jobs.pipeline", PRESET, overrides)
    unplaceable = submit(cluster, "jobs.pipeline", PRESET, [*overrides, *evolve_only("evolve-unplaceable"),
                                                             "evolve.generation.num_gpus=8", "ray.placement_timeout_s=20"])
    log(f"submitted the pipeline ({pipeline}) and a pool no node can hold ({unplaceable})")
    watcher = Watcher(cluster, aws)
    report = {"pipeline": finish(client, pipeline, started, wait_job(client, pipeline, timeout, watcher.tick)),
              "unplaceable": finish(client, unplaceable, started, wait_job(client, unplaceable, 60))}
    report["pipeline"] |= {"kills": watcher.kills, "peak_pool": watcher.peak_pool}
    started = time.time()
    reference = submit(cluster, "jobs.pipeline", PRESET, [*overrides, *evolve_only("evolve-reference"),
                                                           "evolve.generation.echo_latency_ms=0"])
    report["reference"] = finish(client, reference, started, wait_job(client, reference, timeout / 2))
    return report


def wait_for_scale_down(cluster: FakeCluster, timeout: float) -> dict:
    """Seconds until every worker node is gone (the autoscaler's idle timeout)."""
    started = time.time()
    while any(n["state"] == "ALIVE" and n["type"] != "head" for n in nodes_now(cluster)):
        if time.time() - started > timeout:
            return {"all_removed": False, "seconds": round(time.time() - started, 1)}
        time.sleep(2)
    log(f"every worker node removed after {time.time() - started:.0f} s")
    return {"all_removed": True, "seconds": round(time.time() - started, 1)}


def model_folders(size: str, root: Path) -> dict[str, str]:
    """The models the preset reads from s3://BUCKET/models/: the small real model; tiny: a tiny Llama."""
    if size == "tiny":
        from tests.conftest import build_tiny_llama

        return {"tiny-llama": build_tiny_llama(str(root / "tiny-llama"))}
    from common.models import SMALL_MODEL_ALIAS, ensure_small_model

    return {SMALL_MODEL_ALIAS: str(ensure_small_model())}


def local_files(folder: Path) -> list[str]:
    """Files a job left on the head's disk (the driver's temp and cache folders)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def rehearse(size: str, root: Path, timeout: float = 1800) -> dict:
    from tests.openai_fakes import FlakyOpenAIServer

    node_types = fake_node_types(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    with ExitStack() as stack:
        aws = stack.enter_context(moto_server(root / "moto.log"))
        os.environ.update(aws)  # this process's own AWS clients (boto3, pyarrow) too
        key = upload_inputs(aws, model_folders(size, root))
        endpoint = FlakyOpenAIServer()
        stack.callback(endpoint.close)
        cluster = FakeCluster(root, node_types, dict(os.environ) | aws)
        stack.callback(cluster.stop)
        cluster.start()
        log(f"fake cluster up: {cluster.address} (temp dir {cluster.temp})")
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(cluster.address)
        overrides = (TINY if size == "tiny" else []) + [f"evolve.judge.openai.base_url={endpoint.url}"]
        report = {"size": size, "node_types": node_types, "key": key, "initial_nodes": nodes_now(cluster)}
        report |= run_jobs(cluster, client, aws, overrides, timeout)
        report["scale_down"] = wait_for_scale_down(cluster, 180)
        report |= {"nodes": nodes_now(cluster), "actors": actors_now(cluster), "job_list": cluster.ray_cli("job", "list").stdout,
                   "endpoint_authorization": sorted(endpoint.authorization),
                   "records": {name: records(aws, name) for name in ("evolve", "evolve-reference")},
                   "s3": s3_keys(aws, ""), "head_files": local_files(root / "head"),
                   "moto_request_errors": (root / "moto.log").read_text().count("Error on request"),
                   "violations": (root / "violations.log").read_text().splitlines()
                   if (root / "violations.log").exists() else [],
                   "outputs": {name: json.loads(s3_read(aws, name)) for name in (
                       "pipeline/pipeline.json", "models/rehearsal/train_metrics.json", "evaluate/summary.json",
                       "evolve/summary.json") if s3_keys(aws, name)}}
        return report


def summary(report: dict) -> list[str]:
    """What happened, in a few lines (tests/rehearsal_checks.py asserts on the report)."""
    pipeline = report["pipeline"]
    types = Counter(n["type"] for n in report["nodes"])
    metrics = report["outputs"].get("models/rehearsal/train_metrics.json", {})
    return [f"pipeline {pipeline['status']} in {pipeline['seconds']:.0f} s; nodes launched: "
            f"{dict((t, n) for t, n in types.items() if t != 'head')}; pool peak {pipeline['peak_pool']}",
            f"lost: {', '.join(stage + ' node ' + k['node'][-5:] for stage, k in pipeline['kills'].items()) or 'none'}; "
            f"evolve records {len(report['records']['evolve'])} vs reference {len(report['records']['evolve-reference'])}"
            f" ({'equal' if report['records']['evolve'] == report['records']['evolve-reference'] else 'DIFFERENT'}); "
            f"train {metrics.get('steps')}/{metrics.get('total_steps')} steps, resumed from {metrics.get('restored_from_step')}",
            f"unplaceable pool: {report['unplaceable']['status']}; idle nodes removed: {report['scale_down']['all_removed']}; "
            f"driver-local paths read on workers: {len(report['violations'])}; "
            f"moto server request errors: {report.get('moto_request_errors', 0)} (moto.log in the working folder)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rehearse the cloud pipeline on a fake autoscaling cluster.")
    parser.add_argument("--size", choices=("small", "tiny"), default="small")
    parser.add_argument("--root", default=None, help="working folder (default: a new one under /tmp)")
    parser.add_argument("--report", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    import tempfile

    root = Path(args.root or tempfile.mkdtemp(prefix="evolray-rehearsal-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report = rehearse(args.size, root)
    report["seconds"] = round(time.time() - started, 1)
    Path(args.report or root / "report.json").write_text(json.dumps(report, indent=1, default=str))
    for line in summary(report):
        print(f"  {line}")
    log(f"done in {report['seconds']:.0f} s; report: {args.report or root / 'report.json'}")
    return 0 if report["pipeline"]["status"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
