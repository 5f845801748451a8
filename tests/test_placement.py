"""A pool whose actor no node can hold stops the job with the missing resources named (at once on a
local Ray, after ray.placement_timeout_s on a cluster) instead of waiting silently forever."""
import time

import pytest

from common import ray_setup
from common.config import UserError
from common.ray_setup import RayConfig, wait_for_room


def test_a_pool_that_fits_a_node_starts_without_waiting(local_ray):
    started = time.time()
    wait_for_room("generation", {"CPU": 1, "GPU": 0})
    assert time.time() - started < 5


def test_a_pool_no_node_can_hold_is_refused_at_once_on_a_local_ray(local_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_setup, "_settings", RayConfig(num_cpus=2))
    with pytest.raises(UserError) as caught:
        wait_for_room("generation", {"CPU": 1, "GPU": 8})
    assert str(caught.value) == (
        "generation: no node of this cluster can hold one actor (CPU 1, GPU 8): missing GPU 8 (no node has it); "
        "this local Ray never adds nodes. Lower the actor's resources or add a node type that has them")


def test_on_a_cluster_the_wait_for_a_node_ends_after_the_placement_timeout(local_ray, monkeypatch):
    monkeypatch.setattr(ray_setup, "_settings", RayConfig(address="auto", placement_timeout_s=2))
    started = time.time()
    with pytest.raises(UserError) as caught:
        wait_for_room("judge pool of m", {"CPU": 64})
    assert time.time() - started < 30
    message = str(caught.value)
    assert message.startswith("judge pool of m: no node of this cluster can hold one actor (CPU 64): missing CPU 64 "
                              "(at most 2 on a node); none was added in ")
    assert "(ray.placement_timeout_s)" in message
    assert not local_ray.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in local_ray.util.placement_group_table().values())


def test_more_training_workers_than_a_local_ray_holds_are_refused_at_once(local_ray, monkeypatch):
    """One worker fits, three do not: Ray Train retried the worker group's start every minute, a
    traceback each time, even with max_failures=0."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_setup, "_settings", RayConfig(num_cpus=2))
    cpus = int(local_ray.cluster_resources()["CPU"])
    wait_for_room("scaling (the training workers)", {"CPU": 1}, count=cpus)
    with pytest.raises(UserError) as caught:
        wait_for_room("scaling (the training workers)", {"CPU": 1}, count=cpus + 1)
    assert str(caught.value) == (
        f"scaling (the training workers): {cpus + 1} actors of CPU 1 each, and the nodes of this cluster hold "
        f"{cpus}; this local Ray never adds nodes. Ask for fewer or add nodes")
