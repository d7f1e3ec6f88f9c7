"""Regenerate the field tables of docs/configuration.md from the config dataclasses themselves.

Every registered algorithm's ``Config`` (built-in and installed plugins alike), the reward-model training config
and the run options of ``rlhf-gym train`` are written between the two marker comments in
docs/configuration.md, so the reference never drifts from the code. ``tests/test_docs.py`` fails when a field is
missing from the page.

Usage::

    python docs/gen_config_reference.py            # rewrite the generated block in place
    python docs/gen_config_reference.py --check    # exit 1 if the block is out of date
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE (python docs/gen_config_reference.py) -->"
END = "<!-- END GENERATED CONFIG REFERENCE -->"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def field_table(config_cls: type, help_texts: dict[str, str] | None = None) -> list[str]:
    """Markdown table rows (header included) of a config dataclass: field, type, default, description."""
    hints = typing.get_type_hints(config_cls)
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        help_text = (help_texts or {}).get(f.name) or f.metadata.get("help", "")
        rows.append(f"| `{f.name}` | `{_cell(_type_name(hints.get(f.name, f.type)))}` | `{_cell(default)}` | "
                    f"{_cell(help_text)} |")
    return rows


def shared_bases() -> list[tuple[str, type]]:
    """The config bases algorithms derive from, most general first, with the name of their table."""
    from rlhf_gym.algorithm import AlgorithmConfig
    from rlhf_gym.online import OnlineConfig

    return [("every algorithm (`AlgorithmConfig`)", AlgorithmConfig),
            ("online algorithms (`OnlineConfig`, on top of the above)", OnlineConfig)]


def own_fields(config_cls: type) -> tuple[list[str], str | None]:
    """Fields ``config_cls`` adds to (or re-defaults from) its closest shared base, and that base's title."""
    base_title, base = None, None
    for title, cls in shared_bases():
        if issubclass(config_cls, cls):
            base_title, base = title, cls
    inherited = {f.name: f for f in dataclasses.fields(base)} if base else {}
    names = []
    for f in dataclasses.fields(config_cls):
        parent = inherited.get(f.name)
        same = parent is not None and parent.default == f.default and parent.metadata == f.metadata
        if not same:
            names.append(f.name)
    return names, base_title


def field_subset_table(config_cls: type, names: list[str]) -> list[str]:
    rows = field_table(config_cls)
    return rows[:2] + [row for row in rows[2:] if row.split("`")[1] in names]


def algorithm_sections() -> list[str]:
    """One section per registered algorithm: its description, where it comes from, and its own fields."""
    from rlhf_gym.plugins import list_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plugin that fails to load is reported by `rlhf-gym plugins`
        entries = list_plugins("algorithm")
    lines: list[str] = []
    for title, cls in shared_bases():
        lines += [f"### Shared by {title}", ""]
        parents = [c for _, c in shared_bases() if c is not cls and issubclass(cls, c)]
        inherited = {f.name for c in parents for f in dataclasses.fields(c)}
        names = [f.name for f in dataclasses.fields(cls) if f.name not in inherited]
        lines += field_subset_table(cls, names) + [""]
    for entry in entries:
        lines += [f"### `{entry.name}`", ""]
        origin = "built in" if entry.distribution == "rlhf_gym" else f"from `{entry.distribution}`"
        lines += [f"{entry.description} ({origin}; `make_algorithm({entry.name!r}, ...)`, "
                  f"`rlhf-gym train --algo {entry.name}`)", ""]
        config = getattr(entry.obj, "Config", None)
        if config is not None and dataclasses.is_dataclass(config):
            names, base_title = own_fields(config)
            if base_title:
                lines += [f"Takes the fields shared by {base_title.split(' (')[0]}, plus these (or with these "
                          f"defaults):", ""]
            lines += field_subset_table(config, names) if names else ["(no fields of its own)"]
        else:
            lines.append("This algorithm declares no `Config` dataclass; see its own documentation.")
        lines.append("")
    return lines


def generated_block() -> str:
    from rlhf_gym.reward_model import RewardModelConfig
    from rlhf_gym.train import RUN_OPTION_HELP, RunOptions

    lines = [BEGIN, "", "## Algorithm configs", "",
             "Every algorithm accepts the fields of its table as keyword arguments of `make_algorithm`, as "
             "`--FIELD VALUE` (or `--set FIELD=VALUE`) on `rlhf-gym train`, and as keys of a `--config` file.", ""]
    lines += algorithm_sections()
    lines += ["## `rlhf-gym train` run options", "",
              "Options of the run itself (not of the algorithm), also accepted as keys of a `--config` file.", ""]
    lines += [row for row in field_table(RunOptions, RUN_OPTION_HELP) if "`algo_config`" not in row]
    lines += ["", "## Reward-model training (`rlhf-gym train-rm`, `train_reward_model`)", ""]
    lines += field_table(RewardModelConfig)
    lines += ["", END]
    return "\n".join(lines)


def render(page: str) -> str:
    """``page`` with its generated block replaced by a fresh one."""
    if BEGIN not in page or END not in page:
        raise SystemExit(f"{PAGE} lacks the marker comments {BEGIN!r} ... {END!r}")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + generated_block() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the config tables of docs/configuration.md.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date; write nothing")
    args = parser.parse_args(argv)
    current = PAGE.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"{PAGE} is out of date: run python docs/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
