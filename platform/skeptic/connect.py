"""Which Ray a command runs on: the cluster it is given, or one started in this process."""

from __future__ import annotations

import logging
import os

import ray


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS, which a Ray job's driver has), else
    reuse a running in-process Ray, else start one in-process."""
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
    else:
        # "local": a new in-process instance, even if a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
