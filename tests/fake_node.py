"""Each fake node of a rehearsal cluster gets a disk of its own.

Ray's fake multi-node provider starts every node as a raylet on this machine, inside the head's
temp dir: the nodes share the session folder (each node's runtime-env agent then deletes the
job's unpacked working dir that the driver is still running in, once that node is done with
it) and every path, so a path that exists only on the driver still "works" on a worker. On a
real cluster neither holds. `IsolatedFakeProvider` (autoscaler provider `type: external`) gives
each node its own Ray temp dir, TMPDIR and model cache under provider.rehearsal_root/nodes/<id>;
`guard` (Ray's worker_process_setup_hook) makes a worker on such a node fail to open anything
under the head's folder, provider.rehearsal_root/head, and logs it to rehearsal_root/violations.log.
"""
from __future__ import annotations

import os
import sys
import time

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

DRIVER_DISK_ENV = "REHEARSAL_DRIVER_DISK"  # set on worker nodes: the folder they must not read
VIOLATIONS_ENV = "REHEARSAL_VIOLATIONS"


def head_folder(root: str) -> str:
    return os.path.join(root, "head")


def node_env(root: str, node_id: str) -> dict[str, str]:
    """The environment of a worker node's raylet (and so of its workers): its own folders."""
    own = os.path.join(root, "nodes", node_id[-5:])
    for sub in ("tmp", "cache"):
        os.makedirs(os.path.join(own, sub), exist_ok=True)
    return {"TMPDIR": os.path.join(own, "tmp"), "EVOLRAY_CACHE": os.path.join(own, "cache"),
            DRIVER_DISK_ENV: head_folder(root), VIOLATIONS_ENV: os.path.join(root, "violations.log")}


class IsolatedFakeProvider(FakeMultiNodeProvider):
    """Ray's fake provider, each node with its own temp dir and environment (see the module doc)."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        import ray._private.node as node_module

        root, real_node = self.provider_config["rehearsal_root"], node_module.Node

        def isolated_node(params, **kwargs):
            node_id = params.env_vars["RAY_OVERRIDE_NODE_ID_FOR_TESTING"]
            params.temp_dir = os.path.join(self.provider_config["temp_root"], node_id[-5:])
            params.env_vars = {**params.env_vars, **node_env(root, node_id)}
            return real_node(params, **kwargs)

        # The parent builds RayParams and calls ray._private.node.Node; the autoscaler launches from
        # several threads, so the swap is held under the provider's (reentrant) lock.
        with self.lock:
            node_module.Node = isolated_node
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                node_module.Node = real_node


def guard() -> None:
    """The job's worker_process_setup_hook: on a worker node, opening the driver's disk fails."""
    forbidden = os.environ.get(DRIVER_DISK_ENV)
    if forbidden:
        sys.addaudithook(_audit(forbidden.rstrip(os.sep) + os.sep, os.environ[VIOLATIONS_ENV]))


def _audit(forbidden: str, log: str):
    def hook(event: str, args: tuple) -> None:
        if event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else None
        if path and os.path.abspath(path).startswith(forbidden):
            with open(log, "a") as out:
                out.write(f"{time.time():.1f} pid {os.getpid()} {event} {path}\n")
            raise PermissionError(f"rehearsal: a worker node opened the driver-local path {path}")
    return hook
