"""The ``rlhf-gym`` command line (also ``python -m rlhf_gym``).

Each subcommand lives in the module that owns its feature and exposes two functions:
``configure_parser(parser)`` adds its options (every option with a help text) and ``run(args) -> int`` does the
work. This file only wires them together, so ``rlhf-gym --help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rlhf_gym.errors import RLHFGymError

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rlhf_gym.train", "Train a policy with RLHF (no arguments: the offline demo)."),
    "plugins": ("rlhf_gym.cli", "List the registered reward providers, algorithms, user simulators and environments."),
    "label": ("rlhf_gym.live.cli", "Answer preference queries as a live human (terminal or --web page)."),
    "train-rm": ("rlhf_gym.reward_model", "Train a reward model on a preference store or TRL-format file."),
    "eval": ("rlhf_gym.evaluate", "Score saved policies with a reward provider; compare two by win rate."),
    "frontier": ("rlhf_gym.frontier", "Sweep the KL coefficient β and draw the reward–KL frontier (CSV + PNG)."),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["reward", "algorithm", "user-simulator", "environment"],
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else "")
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return 0
    try:
        if getattr(args, "_accepts_extra", False):
            return int(args._run(args, extra) or 0)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return int(args._run(args) or 0)
    except RLHFGymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
