"""rlhf_gym: RLHF as a Gymnasium experiment kit.

``import rlhf_gym`` registers the environments ``rlhf_gym/TextGen-v0`` (one token per step) and
``rlhf_gym/Completion-v0`` (one completion per step). Reward providers and algorithms are plugins (pluggy, entry
point group ``rlhf_gym``); build them by name with :func:`make_reward` and :func:`make_algorithm`.
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
    register_plugin,
    reload_plugins,
    unregister_plugin,
)
from rlhf_gym.providers import CallableReward, CompositeReward, RewardProvider, as_provider

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
    "__version__",
    "as_provider",
    "hookimpl",
    "list_plugins",
    "make_algorithm",
    "make_reward",
    "register_plugin",
    "reload_plugins",
    "unregister_plugin",
]
