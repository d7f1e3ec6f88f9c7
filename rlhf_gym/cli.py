"""The ``rlhf-gym`` command line (also ``python -m rlhf_gym``).

Each subcommand lives in the module that owns its feature and exposes two functions:
``configure_parser(parser)`` adds its options (every option with a help text) and ``run(args) -> int`` does the
work. This file only wires them together, so ``rlhf-gym --help`` stays quick.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

from rlhf_gym.errors import RLHFGymError

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rlhf_gym.train", "Train a policy with RLHF (no arguments: the offline demo)."),
    "plugins": ("rlhf_gym.cli", "List the registered reward providers, algorithms, trackers, user simulators and "
                "environments."),
    "label": ("rlhf_gym.live.cli", "Answer preference queries as a live human (terminal or --web page)."),
    "train-rm": ("rlhf_gym.rm_training", "Train a reward model on a preference store or TRL-format file."),
    "eval": ("rlhf_gym.evaluate", "Score saved policies with a reward provider; compare two by win rate."),
    "frontier": ("rlhf_gym.frontier", "Sweep the KL coefficient β and draw the reward–KL frontier (CSV + PNG)."),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["reward", "algorithm", "tracker", "user-simulator", "environment"],
                        help="show only this kind of plugin")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    """The ``plugins`` subcommand: name, kind, source distribution, and a one-line description."""
    import json
    import warnings

    from rlhf_gym.plugins import list_plugins

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = list_plugins(args.kind)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        for e in entries:
            print(json.dumps({"name": e.name, "kind": e.kind, "distribution": e.distribution,
                              "plugin": e.plugin, "description": e.description}))
        return 0
    rows = [("NAME", "KIND", "DISTRIBUTION", "DESCRIPTION")]
    rows += [(e.name, e.kind, e.distribution, e.description) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when ``command`` is None)."""
    from rlhf_gym import __version__

    parser = argparse.ArgumentParser(
        prog="rlhf-gym",
        description="RLHF as a Gymnasium experiment kit. Run `rlhf-gym train` with no arguments for the "
        "offline demo.",
    )
    parser.add_argument("--version", action="version", version=f"rlhf_gym {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command is not None and name != command:
            continue  # `rlhf-gym --help` and other subcommands need only the one-line help
        module = importlib.import_module(module_name)
        module.configure_parser(p)
        p.set_defaults(_run=module.run)
    return parser


#: set to 1 to see the traceback of an unexpected error (and of every other error) instead of one line
DEBUG_ENV_VAR = "RLHF_GYM_DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rlhf-gym`` command; errors end it with one ``error:`` line (see :func:`report_error`)."""
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place every command's errors are turned into a message and a status
        return report_error(exc)


def _dispatch(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else "")
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return 0
    if getattr(args, "_accepts_extra", False):
        return int(args._run(args, extra) or 0)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args._run(args) or 0)


def debug_enabled() -> bool:
    """Whether ``RLHF_GYM_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV_VAR, "").strip().lower() not in ("", "0", "false", "no")


def report_error(exc: BaseException, stream: TextIO | None = None) -> int:
    """Print ``exc`` as one ``error:`` line and return the command's exit status.

    - rlhf_gym's own errors (:class:`~rlhf_gym.errors.RLHFGymError` and its subclasses, which every module raises
      for bad input) print their message and exit with their ``exit_code`` (2 for bad input);
    - operating-system errors (a missing or unreadable file, a read-only folder, a full disk) print what failed
      on which path and exit 1;
    - anything else is unexpected: its type and message, a hint to rerun with ``RLHF_GYM_DEBUG=1``, exit 1.

    With ``RLHF_GYM_DEBUG=1`` the traceback is printed first, for every kind.
    """
    stream = sys.stderr if stream is None else stream
    if debug_enabled():
        traceback.print_exception(exc, file=stream)
    if isinstance(exc, RLHFGymError):
        message, status = str(exc), int(getattr(exc, "exit_code", 2))
    elif isinstance(exc, OSError):
        message, status = _os_error_message(exc), 1
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
        if not debug_enabled():
            message += f" (run again with {DEBUG_ENV_VAR}=1 for the traceback)"
        status = 1
    print(f"error: {' '.join(message.split())}", file=stream, flush=True)
    return status


def _os_error_message(exc: OSError) -> str:
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p]
    where = f" ({' → '.join(os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in paths)})" if paths else ""
    hint = {errno.ENOSPC: "; free some disk space and run again",
            errno.EACCES: "; check the permissions, or choose another directory",
            errno.EROFS: "; the file system is read-only: choose another directory",
            errno.ENOENT: "; check the path"}.get(exc.errno or -1, "")
    return f"{what}{where}{hint}"
