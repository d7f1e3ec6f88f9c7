"""The plugin manager and the registry of reward providers and algorithms.

Plugins come from three places, loaded in this order (the first to claim a name keeps it):

1. the built-in plugins shipped in ``rlhf_gym_plugins`` (always on),
2. installed distributions exposing the ``rlhf_gym`` entry-point group (switched off, all or by name, with
   ``RLHF_GYM_DISABLE_PLUGINS=1`` or ``RLHF_GYM_DISABLE_PLUGINS=name1,name2``),
3. objects registered at run time with :func:`register_plugin` (tests, notebooks).

A plugin that fails to import, whose hook raises, or that registers a name already taken produces one warning
naming the plugin and the error; every other plugin keeps working. The registry is built lazily on first use and
is the only module-level mutable state in rlhf_gym.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from rlhf_gym import hookspecs
from rlhf_gym.errors import UnknownNameError, unknown_name_message

ENTRY_POINT_GROUP = "rlhf_gym"
DISABLE_ENV_VAR = "RLHF_GYM_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "rlhf_gym"

#: Modules of the built-in plugins. They are imported by name and registered through the same hooks a
#: third-party plugin uses; the core never imports them directly.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "rlhf_gym_plugins.simulated_human",
    "rlhf_gym_plugins.composite",
    "rlhf_gym_plugins.learned_rm",
    "rlhf_gym_plugins.live_human",
    "rlhf_gym_plugins.ppo",
    "rlhf_gym_plugins.reinforce",
    "rlhf_gym_plugins.grpo",
    "rlhf_gym_plugins.dpo",
    "rlhf_gym_plugins.sft",
    "rlhf_gym_plugins.sb3_algorithms",
    "rlhf_gym_plugins.user_simulators",
)

KINDS = {
    "reward": "register_reward_providers",
    "algorithm": "register_algorithms",
    "user-simulator": "register_user_simulators",
    "environment": "register_environments",
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered something invalid; the others keep working."""


@dataclass(frozen=True)
class PluginEntry:
    """One registered name."""

    name: str
    kind: str  #: ``"reward"`` or ``"algorithm"``
    obj: Any  #: the class or factory
    plugin: str  #: the plugin (module or entry-point name) that registered it
    distribution: str  #: the distribution it came from (``rlhf_gym`` for built-ins, ``<runtime>`` for objects)

    @property
    def description(self) -> str:
        doc = getattr(self.obj, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def _disabled_plugins() -> tuple[bool, set[str]]:
    """Parse ``RLHF_GYM_DISABLE_PLUGINS``: (all external plugins disabled?, names disabled)."""
    raw = os.environ.get(DISABLE_ENV_VAR, "").strip()
    if not raw:
        return False, set()
    if raw.lower() in {"1", "true", "yes", "all", "*"}:
        return True, set()
    return False, {part.strip() for part in raw.split(",") if part.strip()}


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pm: pluggy.PluginManager | None = None
        self._entries: dict[str, dict[str, PluginEntry]] | None = None
        self._sources: dict[str, str] = {}  # plugin name -> distribution
        self._runtime: list[tuple[Any, str]] = []

    # -- loading -------------------------------------------------------------------------------------------
    def _warn(self, plugin: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        warnings.warn(f"rlhf_gym plugin {plugin!r} was skipped: {text}", PluginWarning, stacklevel=4)

    def _plugin_manager(self) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        for module_name in BUILTIN_PLUGINS:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # a broken built-in must not take the others down either
                self._warn(module_name, exc)
                continue
            pm.register(module, name=module_name)
            self._sources[module_name] = BUILTIN_DISTRIBUTION

        disable_all, disabled = _disabled_plugins()
        if not disable_all:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = ep.dist.name if ep.dist is not None else "<unknown>"
                if ep.name in disabled or dist in disabled or ep.value in disabled:
                    continue
                if pm.get_plugin(ep.name) is not None or ep.value in BUILTIN_PLUGINS:
                    continue
                try:
                    plugin = ep.load()
                    pm.register(plugin, name=ep.name)
                except Exception as exc:
                    self._warn(ep.name, exc)
                    continue
                self._sources[ep.name] = dist

        for plugin, name in self._runtime:
            try:
                pm.register(plugin, name=name)
            except Exception as exc:
                self._warn(name, exc)
                continue
            self._sources[name] = "<runtime>"
        return pm

    def _collect(self, pm: pluggy.PluginManager) -> dict[str, dict[str, PluginEntry]]:
        entries: dict[str, dict[str, PluginEntry]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(pm.hook, hook_name)
            # get_hookimpls() lists implementations in registration order: built-ins first, so they own their names.
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name
                dist = self._sources.get(plugin_name, "<unknown>")

                def register(name: str, obj: Any, _plugin: str = plugin_name, _dist: str = dist, kind: str = kind) -> None:
                    if not isinstance(name, str) or not name:
                        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")
                    if not callable(obj):
                        raise TypeError(f"{kind} {name!r} must be a class or a factory, got {obj!r}")
                    if name in entries[kind]:
                        owner = entries[kind][name].plugin
                        raise ValueError(f"{kind} name {name!r} is already registered by plugin {owner!r}")
                    entries[kind][name] = PluginEntry(name, kind, obj, _plugin, _dist)

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self._warn(plugin_name, exc)
        return entries

    def entries(self) -> dict[str, dict[str, PluginEntry]]:
        with self._lock:
            if self._entries is None:
                self._pm = self._plugin_manager()
                self._entries = self._collect(self._pm)
            return self._entries

    def reset(self) -> None:
        with self._lock:
            self._pm = None
            self._entries = None
            self._sources = {}

    def add_runtime(self, plugin: Any, name: str) -> None:
        with self._lock:
            self._runtime.append((plugin, name))
            self.reset()

    def remove_runtime(self, name: str) -> None:
        with self._lock:
            self._runtime = [(p, n) for p, n in self._runtime if n != name]
            self.reset()


_REGISTRY = _Registry()


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object (a module, class or instance with ``@hookimpl`` functions) at run time.

    Returns the name it was registered under; pass it to :func:`unregister_plugin` to remove it again.

    Example:
        >>> import rlhf_gym
        >>> class Plugin:
        ...     @rlhf_gym.hookimpl
        ...     def register_reward_providers(self, register):
        ...         register("constant-one", lambda: (lambda prompts, completions, **kw: [1.0] * len(prompts)))
        >>> name = rlhf_gym.register_plugin(Plugin(), name="doc-example")
        >>> rlhf_gym.make_reward("constant-one").score(["p"], ["c"])
        [1.0]
        >>> rlhf_gym.unregister_plugin(name)
    """
    name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
    _REGISTRY.add_runtime(plugin, name)
    _register_gym_ids(plugin, name)
    return name


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    _REGISTRY.remove_runtime(name)
    _unregister_gym_ids(name)


def reload_plugins() -> None:
    """Forget the loaded registry; the next lookup loads every plugin again (e.g. after ``pip install``)."""
    _REGISTRY.reset()


def list_plugins(kind: str | None = None) -> list[PluginEntry]:
    """Every registered name, sorted by kind then name; ``kind`` filters to one of :data:`KINDS`."""
    entries = _REGISTRY.entries()
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(unknown_name_message("plugin kind", k, KINDS))
    return [entries[k][n] for k in kinds for n in sorted(entries[k])]


def get_entry(kind: str, name: str) -> PluginEntry:
    """The registry entry for ``name``; an unknown name raises an error listing the known ones."""
    entries = _REGISTRY.entries()[kind]
    if name not in entries:
        hint = (
            "Install the plugin that provides it, or check that it is not disabled by "
            f"{DISABLE_ENV_VAR}; `rlhf-gym plugins` lists what is available."
        )
        label = "reward provider" if kind == "reward" else "algorithm"
        raise UnknownNameError(unknown_name_message(label, name, entries, hint))
    return entries[name]


def make_reward(name: str, **kwargs: Any):
    """Build a registered reward provider by name.

    A factory may return a :class:`~rlhf_gym.RewardProvider` or a TRL-style callable; either way a provider comes
    back.
    """
    from rlhf_gym.providers import as_provider

    entry = get_entry("reward", name)
    provider = as_provider(entry.obj(**kwargs))
    if getattr(provider, "name", None) in (None, "", type(provider).__name__):
        provider.name = name
    return provider


def make_algorithm(name: str, env: Any = None, policy: Any = None, **config: Any):
    """Build a registered algorithm by name: ``make_algorithm("ppo", env=env, policy=policy, lr=1e-4)``."""
    entry = get_entry("algorithm", name)
    return entry.obj(env=env, policy=policy, **config)


def algorithm_class(name: str) -> Callable[..., Any]:
    """The registered class (or factory) behind an algorithm name."""
    return get_entry("algorithm", name).obj


# -- user simulators and environments ------------------------------------------------------------------------


def make_user_simulator(name: str, **kwargs: Any):
    """Build a registered user simulator by name: ``make_user_simulator("scripted", follow_ups=[...])``.

    A factory may return a :class:`~rlhf_gym.UserSimulator` or an ``f(conversations, **row)`` callable; either
    way a simulator comes back.
    """
    from rlhf_gym.user_simulator import as_user_simulator

    entries = _REGISTRY.entries()["user-simulator"]
    if name not in entries:
        hint = (f"Install the plugin that provides it, or check that it is not disabled by {DISABLE_ENV_VAR}; "
                f"`rlhf-gym plugins --kind user-simulator` lists what is available.")
        raise UnknownNameError(unknown_name_message("user simulator", name, entries, hint))
    built = entries[name].obj(**kwargs)
    simulator = as_user_simulator(built)
    if simulator is not built or getattr(simulator, "name", None) in (None, "", type(simulator).__name__):
        simulator.name = name  # a wrapped plain function takes the registered name
    return simulator


#: Gymnasium ids registered from plugins' ``register_environments`` hooks -> the plugin that registered them
_GYM_IDS: dict[str, str] = {}


def _gym_register(env_id: str, obj: Any, plugin: str) -> None:
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"an environment id must be a non-empty string, got {env_id!r}")
    if not callable(obj):
        raise TypeError(f"environment {env_id!r} must be an env class or a factory, got {obj!r}")
    if env_id in gym.registry:
        if _GYM_IDS.get(env_id) == plugin:
            return
        owner = _GYM_IDS.get(env_id, "another package")
        raise ValueError(f"environment id {env_id!r} is already registered with Gymnasium by {owner}")
    gym.register(id=env_id, entry_point=obj, vector_entry_point=getattr(obj, "vector_entry_point", None),
                 nondeterministic=bool(getattr(obj, "nondeterministic", False)))
    _GYM_IDS[env_id] = plugin


def _register_gym_ids(plugin: Any, name: str) -> None:
    """Register the Gymnasium ids one plugin's ``register_environments`` hook names (a warning if it fails)."""
    hook = getattr(plugin, "register_environments", None)
    if hook is None or not hasattr(hook, "rlhf_gym_impl"):
        return
    try:
        hook(register=lambda env_id, obj: _gym_register(env_id, obj, name))
    except Exception as exc:
        warnings.warn(f"rlhf_gym plugin {name!r}: its environments were skipped: {type(exc).__name__}: {exc}",
                      PluginWarning, stacklevel=3)


def _unregister_gym_ids(name: str) -> None:
    import gymnasium as gym

    for env_id in [i for i, owner in _GYM_IDS.items() if owner == name]:
        gym.registry.pop(env_id, None)
        del _GYM_IDS[env_id]


def register_plugin_environments() -> list[str]:
    """Register with Gymnasium the environments of installed plugins (runs on ``import rlhf_gym``).

    Only the entry-point plugins are imported here (not the built-ins, whose environments are the core ids), so
    ``import rlhf_gym`` stays quick. ``RLHF_GYM_DISABLE_PLUGINS`` applies. A plugin that fails to load or to
    register produces one warning; the others keep working. Returns the ids registered by this call.
    """
    disable_all, disabled = _disabled_plugins()
    before = set(_GYM_IDS)
    if disable_all:
        return []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        if ep.name in disabled or dist in disabled or ep.value in disabled or ep.value in BUILTIN_PLUGINS:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            warnings.warn(f"rlhf_gym plugin {ep.name!r} was skipped: {type(exc).__name__}: {exc}", PluginWarning,
                          stacklevel=2)
            continue
        _register_gym_ids(plugin, ep.name)
    return sorted(set(_GYM_IDS) - before)
