"""Hook specifications: the extension points of rlhf_gym (reward providers, algorithms, user simulators,
environments).

A plugin is any module or object with functions marked ``@rlhf_gym.hookimpl`` whose names match the specs
below. Installed distributions expose plugins through the ``rlhf_gym`` entry-point group::

    [project.entry-points.rlhf_gym]
    keyword = "rlhf_keyword"

The built-in reward providers, algorithms and user simulators are registered through exactly these hooks.
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
def register_user_simulators(register: Register) -> None:
    """Register user simulators (the other side of a conversation in ``Dialogue-v0``) by user-facing name.

    ``register(name, simulator)`` takes a :class:`rlhf_gym.UserSimulator` subclass or any factory that returns one
    (or an ``f(conversations, **row) -> list[str | None]`` callable) when called with keyword arguments.

    Example::

        @rlhf_gym.hookimpl
        def register_user_simulators(register):
            register("my-user", MyUserSimulator)
    """


@hookspec
def register_environments(register: Register) -> None:
    """Register environments (tasks: scenarios, a user simulator, rewards) as Gymnasium ids.

    ``register(env_id, env)`` takes a ``gymnasium.Env`` subclass or a factory returning an env when called with
    keyword arguments; a ``vector_entry_point`` attribute on it is used by ``gym.make_vec``. After
    ``import rlhf_gym`` the id works with ``gym.make`` and ``rlhf-gym train --env``.

    Example::

        @rlhf_gym.hookimpl
        def register_environments(register):
            register("mypkg/Task-v0", MyEnvOrFactory)
    """
