"""rlhf_gym: RLHF as a Gymnasium experiment kit.

``import rlhf_gym`` registers the environments ``rlhf_gym/TextGen-v0`` (one token per step),
``rlhf_gym/Completion-v0`` (one completion per step) and ``rlhf_gym/Dialogue-v0`` (one assistant turn per step),
and the environments installed plugins ship. Reward providers, algorithms and user simulators are plugins (pluggy,
entry point group ``rlhf_gym``); build them by name with :func:`make_reward`, :func:`make_algorithm` and
:func:`make_user_simulator`.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhf_gym.envs import register_envs
from rlhf_gym.errors import ConfigError, PreferenceStoreError, RewardError, RLHFGymError, UnknownNameError
from rlhf_gym.hookspecs import hookimpl
from rlhf_gym.plugins import (
    PluginEntry,
    PluginWarning,
    list_plugins,
    make_algorithm,
    make_reward,
    make_user_simulator,
    register_plugin,
    register_plugin_environments,
    reload_plugins,
    unregister_plugin,
)
from rlhf_gym.providers import CallableReward, CompositeReward, RewardProvider, as_provider
from rlhf_gym.user_simulator import CallableUser, UserSimulator, as_user_simulator

__version__ = "0.1.0"

register_envs()

# Heavier pieces (torch, transformers) load on first use, so `import rlhf_gym` stays quick.
_LAZY = {
    "Algorithm": "rlhf_gym.algorithm",
    "AlgorithmConfig": "rlhf_gym.algorithm",
    "Policy": "rlhf_gym.policy",
    "PreferenceStore": "rlhf_gym.preference_store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlhf_gym' has no attribute {name!r}")


__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "CallableReward",
    "CallableUser",
    "CompositeReward",
    "ConfigError",
    "PluginEntry",
    "PluginWarning",
    "Policy",
    "PreferenceStore",
    "PreferenceStoreError",
    "RLHFGymError",
    "RewardError",
    "RewardProvider",
    "UnknownNameError",
    "UserSimulator",
    "__version__",
    "as_provider",
    "as_user_simulator",
    "hookimpl",
    "list_plugins",
    "make_algorithm",
    "make_reward",
    "make_user_simulator",
    "register_plugin",
    "register_plugin_environments",
    "reload_plugins",
    "unregister_plugin",
]

# Last, so a plugin that imports rlhf_gym while it is being loaded finds everything above.
register_plugin_environments()
