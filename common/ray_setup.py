"""How every job connects to Ray: the cluster it was submitted to, or a local one."""
from __future__ import annotations

from pydantic import Field

from common.config import StrictModel


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: the submitting cluster (RAY_ADDRESS) or a new local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local Ray (ignored on a cluster)")


def init_ray(cfg: RayConfig):
    import ray

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
    return ray
