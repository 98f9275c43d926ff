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
        # A real cluster: its own auth settings rule (RAY_AUTH_MODE, the local token).
        ray.init(address=address, **quiet)
    else:
        _choose_token_auth()
        # "local": a new in-process instance, even if a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)


def _choose_token_auth() -> None:
    """Token authentication for the in-process Ray, as our choice rather than Ray's default.

    Ray >= 2.55 turns token auth on for a new local cluster when RAY_AUTH_MODE is unset, and
    warns the user that it did so: a warning about a choice the user never made. Its GCS
    listens on every interface, so token auth (Ray's own default, the token in
    ~/.ray/auth_token, generated if missing) is the right choice; making it explicitly keeps
    exactly that protection without the warning. A RAY_AUTH_MODE the user set wins."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    # Ray's own switch (what its default does, minus the warning): it sets RAY_AUTH_MODE for
    # this process and its workers, and refreshes Ray's cached config, which `import ray`
    # has already read, so that this process sees the mode too.
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()
