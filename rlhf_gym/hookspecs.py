"""Hook specifications: the extension points of rlhf_gym (reward providers, algorithms, trackers).

A plugin is any module or object with functions marked ``@rlhf_gym.hookimpl`` whose names match the specs
below. Installed distributions expose plugins through the ``rlhf_gym`` entry-point group::

    [project.entry-points.rlhf_gym]
    keyword = "rlhf_keyword"

The built-in reward providers, algorithms and trackers are registered through exactly these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("rlhf_gym")
hookimpl = pluggy.HookimplMarker("rlhf_gym")

Register = Callable[[str, Any], None]


@hookspec
def register_reward_providers(register: Register) -> None:
    """Register reward providers by user-facing name.

    ``register(name, provider)`` takes a :class:`rlhf_gym.RewardProvider` subclass or any factory that returns a
    provider (or a TRL-style ``f(prompts, completions, **kw)`` callable) when called with keyword arguments.

    Example::

        @rlhf_gym.hookimpl
        def register_reward_providers(register):
            register("keyword", KeywordReward)
    """


@hookspec
def register_algorithms(register: Register) -> None:
    """Register training algorithms by user-facing name.

    ``register(name, algorithm_class)`` takes a :class:`rlhf_gym.Algorithm` subclass (or a factory with the same
    ``(env, policy, **config)`` signature).

    Example::

        @rlhf_gym.hookimpl
        def register_algorithms(register):
            register("my-algo", MyAlgorithm)
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register experiment trackers (the names ``report_to`` / ``--report-to`` accept).

    ``register(name, tracker_class)`` takes a :class:`rlhf_gym.trackers.Tracker` subclass: built with the run
    directory, it receives ``log_config``, ``log_metrics``, ``log_samples`` and ``close``.

    Example::

        @rlhf_gym.hookimpl
        def register_trackers(register):
            register("my-service", MyTracker)
    """
