"""Starting or joining Ray, with the settings that matter on small machines."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["ensure_ray", "ray_temp_dir"]


def ray_temp_dir() -> str:
    """Ray's temp folder: RAY_TMPDIR, else /tmp/raymask-ray. Never inside a virtualenv (Ray's
    workers refuse to start when it is)."""
    d = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "raymask-ray")
    venv = os.environ.get("VIRTUAL_ENV")
    if venv and Path(d).resolve().is_relative_to(Path(venv).resolve()):
        d = os.path.join(tempfile.gettempdir(), "raymask-ray")
    Path(d).mkdir(parents=True, exist_ok=True)
    return d


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, or start an embedded local Ray.

    Returns True when this call started Ray (the caller then shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, _temp_dir=ray_temp_dir(), **kwargs)
    return True
