"""Joining or starting a Ray cluster, and the actor options every rlhf_gym actor shares.

Ray is an optional extra (``pip install 'rlhf-gym[ray]'``): nothing outside :mod:`rlhf_gym.distributed` imports it,
and :func:`require_ray` turns its absence into one error that says what to install. Fault tolerance is Ray's own:
actors are created with ``max_restarts=-1`` (a killed actor process is started again from its constructor
arguments) and ``max_task_retries=-1`` (a call that was running on it is sent again to the new process), so every
actor method rlhf_gym calls is written to give the same answer when it runs twice.
"""

from __future__ import annotations

import os
from typing import Any

from rlhf_gym.errors import ConfigError

#: the value of ``ray_address`` / ``--ray`` that starts a cluster on this machine
LOCAL = "local"


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError(
            "Ray mode (--ray / rollout_workers > 0 / a reward 'placement') needs Ray: "
            "pip install 'rlhf-gym[ray]'"
        ) from exc
    return ray


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """Make sure this process is connected to a Ray cluster; returns the ``ray`` module.

    Args:
        address: a cluster to join (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``); ``None`` or ``"local"``
            starts a single-machine cluster with this machine's cores (or joins the one ``RAY_ADDRESS`` names).
        **init_kwargs: passed to ``ray.init`` when this call starts or joins the cluster.

    A process already connected (``ray.init`` called by the user, or by an earlier run) stays on its cluster.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address in (None, "", LOCAL):
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        init_kwargs.setdefault("num_cpus", os.cpu_count() or 1)
        init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("logging_level", "warning")
    init_kwargs.setdefault("log_to_driver", True)
    ray.init(address=address, **init_kwargs)
    return ray


def actor_options(num_cpus: float = 1.0, num_gpus: float = 0.0, **extra: Any) -> dict[str, Any]:
    """``.options(...)`` of an rlhf_gym actor: its resources, and restart/retry without limit on process death."""
    if num_cpus < 0 or num_gpus < 0:
        raise ConfigError(f"actor resources must be ≥ 0 (got num_cpus={num_cpus}, num_gpus={num_gpus})")
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": -1, "max_task_retries": -1, **extra}


def actor_device(num_gpus: float) -> str:
    """The torch device an actor computes on: its GPU when it was given one, else the CPU."""
    if num_gpus > 0:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"

