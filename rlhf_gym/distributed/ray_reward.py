"""A reward provider on its own Ray actor: one learned RM (or judge, or human) served to every rollout worker.

``make_reward(name, ..., placement={"num_gpus": 1})`` (or ``placement`` in ``--reward-kwargs``) builds the provider
inside a :class:`RewardServer` actor with those resources and returns a :class:`RemoteReward` in its place: an
ordinary :class:`~rlhf_gym.RewardProvider` whose ``score``/``score_with_info``/``compare``/``rank`` are calls to the
actor. Envs, rollout workers and algorithms use it like any provider; pickled onto rollout actors, every copy talks
to the same server, so the model is loaded once, on its own device.

A provider with state (a simulated human's noise stream, a learned RM's running normalisation) keeps that state
with each *caller*: a :class:`RemoteReward` sends its copy of the state with every call and keeps what comes back.
Each rollout worker therefore sees the stream it would see with the provider in its own process, a checkpoint of
the worker holds it, and a server killed and restarted by Ray answers the retried call exactly as before.

Providers that must have one writer (the ``live-human`` preference store) are never copied onto rollout workers:
:func:`check_replicable` refuses that, and placing the provider here gives it exactly one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rlhf_gym.distributed.ray_runtime import actor_options, connect, require_ray
from rlhf_gym.errors import ConfigError
from rlhf_gym.providers import RewardProvider, Score, as_provider

ray = require_ray()

#: keys a ``placement`` mapping may hold
PLACEMENT_KEYS = ("num_cpus", "num_gpus", "resources")


def provider_state(provider: Any) -> Any:
    """The provider's ``state_dict()``, or None when it keeps no state."""
    get = getattr(provider, "state_dict", None)
    return get() if callable(get) else None


def load_provider_state(provider: Any, state: Any) -> None:
    """Restore what :func:`provider_state` returned (nothing to do for None)."""
    if state is not None and callable(getattr(provider, "load_state_dict", None)):
        provider.load_state_dict(state)


class RewardServer:
    """The actor: builds the provider from its name (or object) once, then answers calls from every worker."""

    def __init__(self, reward: Any, reward_kwargs: Mapping[str, Any] | None = None) -> None:
        self.provider = as_provider(reward, dict(reward_kwargs or {}) or None)

    def describe(self) -> dict[str, Any]:
        return {"name": getattr(self.provider, "name", None) or type(self.provider).__name__,
                "deterministic": bool(getattr(self.provider, "deterministic", True)),
                "reseedable": callable(getattr(self.provider, "reset_rng", None)),
                "state": provider_state(self.provider)}

    def call(self, method: str, state: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """``provider.<method>(*args, **kwargs)`` from the caller's ``state``; returns (answer, state after)."""
        load_provider_state(self.provider, state)
        answer = getattr(self.provider, method)(*args, **kwargs)
        return answer, provider_state(self.provider)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.provider.close()


RewardServerActor = ray.remote(RewardServer)


def placement_options(placement: Any) -> dict[str, Any]:
    """Actor options from a ``placement`` value: ``True`` (one CPU) or a mapping of ``num_cpus``/``num_gpus``/
    ``resources``."""
    if placement is True:
        placement = {}
    if not isinstance(placement, Mapping):
        raise ConfigError(f"placement must be a mapping such as {{'num_gpus': 1}}, got {placement!r}")
    unknown = sorted(set(placement) - set(PLACEMENT_KEYS))
    if unknown:
        raise ConfigError(f"unknown placement keys {unknown}; use {list(PLACEMENT_KEYS)}")
    extra = {"resources": dict(placement["resources"])} if "resources" in placement else {}
    return actor_options(float(placement.get("num_cpus", 1.0)), float(placement.get("num_gpus", 0.0)), **extra)


class RemoteReward(RewardProvider):
    """A provider served by a :class:`RewardServer` actor (see the module docstring).

    Args:
        reward: a provider name, or a provider object / TRL-style callable to ship to the actor.
        reward_kwargs: keyword arguments of a provider given by name (built on the actor, not here).
        placement: the actor's resources, e.g. ``{"num_gpus": 1}``; ``True`` for one CPU.
        address: the Ray cluster to join when this process is not connected yet (None: start one here).
    """

    def __init__(self, reward: Any, reward_kwargs: Mapping[str, Any] | None = None, placement: Any = True,
                 address: str | None = None) -> None:
        options = placement_options(placement)
        connect(address)
        self.actor = RewardServerActor.options(**options).remote(reward, dict(reward_kwargs or {}))
        info = ray.get(self.actor.describe.remote())
        self.name = info["name"]
        self.deterministic = info["deterministic"]
        self._state = info["state"]
        self._reseedable = info["reseedable"]
        self.placement = options

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        answer, self._state = ray.get(self.actor.call.remote(method, self._state, args, kwargs))
        return answer

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        return self._call("score", list(prompts), list(completions), **row)

    def score_with_info(self, prompts: list[str], completions: list[str], **row: Any):
        return self._call("score_with_info", list(prompts), list(completions), **row)

    def compare(self, prompts: list[str], completions_a: list[str], completions_b: list[str], **row: Any):
        return self._call("compare", list(prompts), list(completions_a), list(completions_b), **row)

    def rank(self, prompt: str, completions: list[str], **row: Any) -> list[int]:
        return self._call("rank", prompt, list(completions), **row)

    def reset_rng(self, seed: Any = None) -> None:
        """Restart this caller's random stream of the served provider (a no-op for providers without one)."""
        if self._reseedable:
            self._call("reset_rng", seed)

    def state_dict(self) -> dict[str, Any]:
        """This caller's copy of the served provider's state."""
        return {"served": self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = state["served"]

    def server_pid(self) -> int:
        """The process id of the serving actor (it changes when Ray restarts it)."""
        return int(ray.get(self.actor.pid.remote()))

    def close(self) -> None:
        """Stop the server (every copy of this proxy shares it: call from the process that made it)."""
        actor = self.__dict__.pop("actor", None)
        if actor is not None:
            try:
                ray.get(actor.close.remote())
            finally:
                ray.kill(actor)


def single_writer(provider: Any) -> Any:
    """The provider (``provider`` or one of its components) that must not be copied, or None.

    A provider says so with a true ``single_writer`` attribute; ``live-human`` does by its class. A
    :class:`RemoteReward` is a proxy and may be copied freely.
    """
    if isinstance(provider, RemoteReward):
        return None
    if getattr(provider, "single_writer", False):
        return provider
    from rlhf_gym.live import LiveHuman

    if isinstance(provider, LiveHuman):
        return provider
    for component, *_ in getattr(provider, "components", ()) or ():
        found = single_writer(component)
        if found is not None:
            return found
    return None


def check_replicable(provider: Any, copies: int) -> None:
    """Refuse to copy a single-writer provider (a live human's store) onto ``copies`` rollout workers."""
    found = single_writer(provider)
    if found is not None:
        name = getattr(found, "name", None) or type(found).__name__
        raise ConfigError(
            f"reward provider {name!r} writes to one preference store and must have a single writer, but "
            f"rollout_workers={copies} would copy it onto {copies} Ray actor(s). Put it on one actor of its own: "
            f"reward_kwargs={{..., 'placement': {{'num_cpus': 1}}}} (every worker then asks that one), or sample "
            f"in this process (rollout_workers=0)"
        )
