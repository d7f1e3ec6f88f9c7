"""Config dataclasses: every hyper-parameter has a default and a one-line help text.

``hp(default, "help")`` declares a field; :func:`build_config` turns a dict of overrides into a config and
rejects unknown keys with the list of valid ones. The CLI reads the same help texts for ``--help``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from rlhf_gym.errors import ConfigError

C = TypeVar("C")


def hp(default: Any, help: str) -> Any:
    """A config field with a default and a one-line description."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(config_cls: type) -> dict[str, str]:
    """``{field name: help text}`` of a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config_cls)}


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert strings from the command line or a YAML file to the field's type."""
    if annotation is Any:
        return value
    if not isinstance(value, str):
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) else (annotation,)
    if type(None) in options and value.lower() in ("none", "null", ""):
        return None
    for option in options:
        if option is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        elif option in (int, float):
            try:
                return option(value)
            except ValueError:
                continue
        elif option is str:
            return value
    raise ConfigError(f"config field {name!r} expects {annotation}, got {value!r}")


def build_config(config_cls: type[C], overrides: Mapping[str, Any] | None = None, *, owner: str = "") -> C:
    """Instantiate ``config_cls`` from ``overrides``; unknown keys raise :class:`ConfigError` listing valid ones."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        who = f" for {owner}" if owner else ""
        raise ConfigError(
            f"Unknown config field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{who}.{hint} "
            f"Valid fields: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(config_cls)
    values = {k: _coerce(v, hints.get(k, Any), k) for k, v in overrides.items()}
    return config_cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_json_object(text: str | None, option: str) -> dict[str, Any]:
    """A command-line option's JSON object (``None``/empty: ``{}``), or one clear error naming the option."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} must be a JSON object, e.g. '{{\"preset\": \"noisy\"}}' ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object (got {type(value).__name__})")
    return value
