"""Regenerate the option tables of docs/cli.md from the command line's own parsers.

Each ``rlhf-gym COMMAND`` section of docs/cli.md holds its option table between two marker comments; this script
writes every option there as ``--help`` shows it (flag and metavar, help text with its default), so the page and
``--help`` cannot drift apart. ``tests/test_docs.py`` fails when a table is out of date.

Usage::

    python docs/gen_cli_reference.py            # rewrite the generated tables in place
    python docs/gen_cli_reference.py --check    # exit 1 if a table is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "cli.md"
BEGIN = "<!-- BEGIN GENERATED OPTIONS: {command} (python docs/gen_cli_reference.py) -->"
END = "<!-- END GENERATED OPTIONS -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def option_table(command: str) -> list[str]:
    """Markdown rows (header included) of ``rlhf-gym COMMAND``'s options, as its ``--help`` shows them."""
    from rlhf_gym.cli import build_parser

    parser = build_parser(command)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    command_parser = sub.choices[command]
    formatter = command_parser._get_formatter()
    rows = ["| option | description |", "|---|---|"]
    for action in command_parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "--help" in action.option_strings:
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        rows.append(f"| `{_cell(invocation)}` | {_cell(help_text)} |")
    return rows


def block(command: str) -> str:
    return "\n".join([BEGIN.format(command=command), *option_table(command), END])


def render(page: str) -> str:
    """``page`` with every generated table brought up to date."""
    from rlhf_gym.cli import SUBCOMMANDS

    for command in SUBCOMMANDS:
        pattern = re.compile(re.escape(BEGIN.format(command=command)) + r".*?" + re.escape(END), re.DOTALL)
        if not pattern.search(page):
            raise SystemExit(f"docs/cli.md has no generated table for `rlhf-gym {command}`; add the markers "
                             f"{BEGIN.format(command=command)} ... {END} to its section")
        page = pattern.sub(lambda _m, c=command: block(c), page)
    return page


def stale_commands(page: str) -> list[str]:
    """Commands whose generated table differs from what their parser shows now."""
    from rlhf_gym.cli import SUBCOMMANDS

    return [c for c in SUBCOMMANDS if block(c) not in page]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is out of date")
    args = parser.parse_args(argv)
    page = PAGE.read_text(encoding="utf-8")
    if args.check:
        stale = stale_commands(page)
        if stale:
            print(f"docs/cli.md is out of date for: {', '.join(stale)}; run python docs/gen_cli_reference.py")
            return 1
        return 0
    PAGE.write_text(render(page), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
