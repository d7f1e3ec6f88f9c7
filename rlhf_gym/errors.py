"""Exception types. Every error rlhf_gym raises on bad input says what went wrong and what to do about it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RLHFGymError(Exception):
    """Base class of rlhf_gym's own errors."""


class UnknownNameError(RLHFGymError, KeyError):
    """A reward provider, algorithm or preset name that nothing registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(RLHFGymError, TypeError):
    """A configuration key or value that is not valid for the component it was given to."""


class RewardError(RLHFGymError, ValueError):
    """A reward provider returned something that cannot be used as a training signal."""


class PreferenceStoreError(RLHFGymError):
    """The preference database cannot be opened, migrated or written."""


def unknown_name_message(kind: str, name: str, known: Iterable[str], hint: str = "") -> str:
    """Build the message for an unknown ``name`` of ``kind``, listing the known ones and the closest match."""
    known = sorted(known)
    msg = f"Unknown {kind} {name!r}."
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        msg += f" Did you mean {close[0]!r}?"
    msg += f" Known {kind}s: {', '.join(known) if known else '(none registered)'}."
    if hint:
        msg += " " + hint
    return msg
