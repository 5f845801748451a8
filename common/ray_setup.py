"""How every job connects to Ray: the cluster it was submitted to, or a local one."""
from __future__ import annotations

import os
import time

from pydantic import Field

from common.config import StrictModel, UserError


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: the submitting cluster (RAY_ADDRESS) or a new local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local Ray (ignored on a cluster)")
    placement_timeout_s: float = Field(900.0, gt=0, description=(
        "on a cluster: how long an actor pool (or the training workers) may wait for the autoscaler to add a "
        "node that can hold one of its actors; then the job stops, naming the resources no node has"))


_settings = RayConfig()  # the RayConfig of the job that initialised Ray in this process


def on_cluster(cfg: RayConfig) -> bool:
    """Submitted to (or pointed at) a cluster, whose autoscaler may add nodes; else a local Ray."""
    return bool(os.environ.get("RAY_ADDRESS") or cfg.address)


def init_ray(cfg: RayConfig):
    import ray

    global _settings
    _settings = cfg
    if ray.is_initialized():
        return ray
    kwargs = {"address": cfg.address, "log_to_driver": True}
    if cfg.num_cpus is not None:
        kwargs["num_cpus"] = cfg.num_cpus
    try:
        ray.init(**kwargs)
    except ValueError:  # connecting to an existing cluster: num_cpus is not allowed there
        kwargs.pop("num_cpus", None)
        ray.init(**kwargs)
    # One progress line per dataset, not one per operator (a block of lines every 10 s in a job's log)
    ray.data.DataContext.get_current().enable_operator_progress_bars = False
    return ray


def wait_for_room(what: str, bundle: dict[str, float], count: int = 1) -> None:
    """Return once the nodes can hold `count` actors of `what` (`bundle`: one's resources; a pool
    needs one to start, Ray Train all its workers), adding demand for them so that an autoscaler
    launches nodes. What no node can ever hold would wait forever (Ray Train retries its worker
    group's start every minute, a traceback each time); this stops the job instead, naming what is
    missing: at once on a local Ray, after ray.placement_timeout_s on a cluster."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {key: float(value) for key, value in bundle.items() if value}
    if not bundle or _room(bundle, _node_totals(ray)) >= count:
        return
    if not on_cluster(_settings):
        raise UserError(_missing(what, bundle, _node_totals(ray), "this local Ray never adds nodes", count))
    timeout = _settings.placement_timeout_s
    actors = "one actor" if count == 1 else f"{count} actors"
    print(f"[{what}] waiting for nodes that can hold {actors} ({_fmt(bundle)} each); the autoscaler adds them "
          f"(at most ray.placement_timeout_s={timeout:g} s)", flush=True)
    started, group = time.time(), placement_group([bundle] * count)
    try:
        ready = group.wait(timeout_seconds=timeout)
    finally:
        remove_placement_group(group)
    if not ready:
        raise UserError(_missing(what, bundle, _node_totals(ray),
                                 f"none was added in {time.time() - started:.0f} s (ray.placement_timeout_s)", count))
    print(f"[{what}] room is ready after {time.time() - started:.0f} s", flush=True)


def _node_totals(ray) -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def _room(bundle: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many actors of `bundle` the nodes hold in all (an actor never spans nodes)."""
    return sum(min(int(node.get(key, 0) / need + 1e-9) for key, need in bundle.items()) for node in nodes)


def _missing(what: str, bundle: dict[str, float], nodes: list[dict[str, float]], why: str, count: int = 1) -> str:
    """One line: what one actor needs, which resources no node has enough of (and the most any has);
    or, when some fit, how many of the `count` asked for."""
    room = _room(bundle, nodes)
    if room:
        return (f"{what}: {count} actors of {_fmt(bundle)} each, and the nodes of this cluster hold {room}; {why}. "
                "Ask for fewer or add nodes")
    short = []
    for key, need in bundle.items():
        most = max((node.get(key, 0) for node in nodes), default=0)
        if most < need:
            short.append(f"{key} {need:g} (no node has it)" if not most else f"{key} {need:g} (at most {most:g} on a node)")
    detail = ", ".join(short) or "no single node has all of them"
    return (f"{what}: no node of this cluster can hold one actor ({_fmt(bundle)}): missing {detail}; {why}. "
            "Lower the actor's resources or add a node type that has them")


def _fmt(bundle: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in bundle.items())
