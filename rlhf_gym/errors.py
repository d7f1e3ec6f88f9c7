"""Exception types. Every error rlhf_gym raises on bad input says what went wrong and what to do about it."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

#: what ``gymnasium.make`` appends to a ``TypeError`` raised inside an env constructor (it re-raises the same type
#: with every keyword argument, tokenizer included, spelled out: hundreds of characters that hide the message)
_GYM_MAKE_SUFFIX = re.compile(r" was raised from the environment creator for (\S+) with kwargs \(.*\)\Z", re.DOTALL)


class RLHFGymError(Exception):
    """Base class of rlhf_gym's own errors: ``str(error)`` is the message a user sees.

    The ``rlhf-gym`` command prints it as one line, ``error: <message>``, and exits with :attr:`exit_code`; a
    subclass for a new kind of failure only needs a message that says what to do (and its own ``exit_code`` when
    it is not bad input).
    """

    #: exit status of the ``rlhf-gym`` command when this error ends it (2: bad input, as argparse uses)
    exit_code: int = 2

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            found = _GYM_MAKE_SUFFIX.search(args[0])
            if found:  # keep the message, name the env id, drop the dump of its keyword arguments
                args = (f"{args[0][: found.start()]} (in gym.make({found.group(1)!r}))",)
        super().__init__(*args)


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


class CheckpointError(RLHFGymError, OSError):
    """A checkpoint or run directory that cannot be written, or that is incomplete or damaged when read back."""


def file_error_message(path: object, exc: BaseException, what: str = "file") -> str:
    """One sentence for a file that could not be read: what is wrong with ``path`` and what to do.

    Maps the exceptions that truncated, empty, random or pickle bytes raise inside safetensors, json, torch and
    transformers (and the operating system's own errors) to a message that names the file instead of a traceback.
    """
    import errno
    import json
    import pickle

    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else name
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return (f"{path} is a pickle checkpoint, and rlhf_gym refuses pickle (loading one can run arbitrary code). "
                f"Convert it once, where you trust it, with `model = AutoModelForCausalLM.from_pretrained(dir); "
                f"model.save_pretrained(dir, safe_serialization=True)` (writes model.safetensors), then delete the "
                f".bin file")
    if isinstance(exc, FileNotFoundError):
        return f"{what} {path} is missing"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"{what} {path} cannot be read (permission denied); fix its permissions"
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return f"{what} {path} is not valid JSON ({text}); it is damaged: restore it or use another checkpoint"
    if name == "SafetensorError" or "safetensors" in text.lower() or "header" in text.lower():
        return (f"{what} {path} is not a readable safetensors file ({text}); it is truncated or damaged: restore "
                f"it or use another checkpoint")
    return f"{what} {path} cannot be read ({name}: {text}); it is damaged: restore it or use another checkpoint"


def write_error_message(path: object, exc: OSError, action: str = "write") -> str:
    """One sentence for a failed write under ``path``: disk full, read-only or no permission, and what to do."""
    import errno

    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"cannot {action} {path}: the disk is full (no space left on device). Free some space or pass "
                f"another directory; earlier checkpoints are intact")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the file system is read-only" if exc.errno == errno.EROFS else "permission denied"
        return (f"cannot {action} {path}: {why}. Make the directory writable or pass another one "
                f"(e.g. --out for a new run)")
    return f"cannot {action} {path}: {exc.strerror or exc}"
