"""The documentation is tested: the plugin tutorial runs, every hook is documented with a runnable example, every
CLI option has a description and a place in docs/cli.md, and the configuration reference covers every field."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest
import tomllib

import rlhf_gym
from rlhf_gym import hookspecs
from rlhf_gym.cli import SUBCOMMANDS, build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(page: str, heading: str) -> str:
    """The text of the markdown section whose heading line is ``heading``, up to the next heading of its level."""
    level = heading.split(" ")[0]
    start = page.index(f"\n{heading}\n") + 1
    rest = page[start + len(heading):]
    end = re.search(rf"^{level} ", rest, re.MULTILINE)
    return page[start: start + len(heading) + (end.start() if end else len(rest))]


def code_blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "rlhf_gym_spec"))


@pytest.fixture
def clean_runtime_plugins():
    """Remove any plugin a doc example registered and did not remove itself."""
    yield
    for entry in rlhf_gym.list_plugins():
        if entry.distribution == "<runtime>":
            rlhf_gym.unregister_plugin(entry.plugin)


# -- the "write your first reward plugin" tutorial -------------------------------------------------------------


def test_reward_plugin_tutorial_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                clean_runtime_plugins: None) -> None:
    tutorial = section((DOCS / "plugins.md").read_text(encoding="utf-8"), "## Write your first reward plugin")
    blocks = code_blocks(tutorial, "python")
    assert len(blocks) >= 3
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "tutorial"}
    files = 0
    for block in blocks:
        first = block.splitlines()[0]
        if first.startswith("# file: "):  # a module the reader saves to disk
            (tmp_path / first[len("# file: "):].strip()).write_text(block, encoding="utf-8")
            files += 1
        else:
            exec(compile(block, "docs/plugins.md", "exec", dont_inherit=True), namespace)
    assert files == 1
    assert "exclaim" not in {e.name for e in rlhf_gym.list_plugins("reward")}, "the tutorial cleans up after itself"
    monkeypatch.delitem(sys.modules, "rlhf_exclaim", raising=False)


def test_tutorial_package_is_found_through_its_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pyproject.toml of the tutorial declares an entry point that rlhf_gym really loads once installed."""
    tutorial = section((DOCS / "plugins.md").read_text(encoding="utf-8"), "## Write your first reward plugin")
    (module,) = [b for b in code_blocks(tutorial, "python") if b.startswith("# file: ")]
    (pyproject,) = code_blocks(tutorial, "toml")
    meta = tomllib.loads(pyproject)
    entry_points = meta["project"]["entry-points"]["rlhf_gym"]
    # What `pip install` leaves on sys.path: the module and a dist-info with the entry points.
    (tmp_path / "rlhf_exclaim.py").write_text(module, encoding="utf-8")
    dist_info = tmp_path / f"{meta['project']['name'].replace('-', '_')}-{meta['project']['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['project']['name']}\nVersion: {meta['project']['version']}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[rlhf_gym]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RLHF_GYM_DISABLE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    try:
        rlhf_gym.reload_plugins()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry = next(e for e in rlhf_gym.list_plugins("reward") if e.name == "exclaim")
        assert entry.distribution == meta["project"]["name"]
        assert rlhf_gym.make_reward("exclaim", cap=1).score(["p"], ["yes!"]) == [1.0]
        monkeypatch.setenv("RLHF_GYM_DISABLE_PLUGINS", "exclaim")
        rlhf_gym.reload_plugins()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert "exclaim" not in {e.name for e in rlhf_gym.list_plugins("reward")}
    finally:
        monkeypatch.undo()
        sys.modules.pop("rlhf_exclaim", None)
        rlhf_gym.reload_plugins()


# -- hooks ------------------------------------------------------------------------------------------------------


def test_hookspecs_are_discovered() -> None:
    assert {"register_reward_providers", "register_algorithms"} <= set(hook_names())


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented_with_a_runnable_example(hook: str, clean_runtime_plugins: None) -> None:
    page = (DOCS / "plugins.md").read_text(encoding="utf-8")
    heading = f"### Hook: `{hook}`"
    assert heading in page, f"docs/plugins.md has no '{heading}' section; document the hook {hook!r} there"
    blocks = code_blocks(section(page, heading), "python")
    assert blocks, f"the {hook!r} section of docs/plugins.md needs a ```python example"
    example = "\n".join(blocks)
    assert "@rlhf_gym.hookimpl" in example and f"def {hook}(" in example
    before = {(e.kind, e.name) for e in rlhf_gym.list_plugins()}
    exec(compile(example, f"docs/plugins.md ({hook})", "exec", dont_inherit=True),
         {"__name__": f"doc_{hook}"})
    assert {(e.kind, e.name) for e in rlhf_gym.list_plugins()} == before, "the example must unregister its plugin"


# -- the command line ---------------------------------------------------------------------------------------------


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def test_top_level_help_describes_every_option_and_command() -> None:
    parser = build_parser("")
    for action in option_actions(parser):
        assert action.help and action.help.strip(), f"rlhf-gym {action.option_strings[0]} has no help text"
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == set(SUBCOMMANDS)
    assert all(text and text.strip() for text in helps.values())
    text = parser.format_help()
    assert all(name in text for name in SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_each_subcommand_help_lists_every_option_with_a_description(command: str) -> None:
    parser = subparser(build_parser(command), command)
    actions = option_actions(parser)
    assert len(actions) > 1, f"`rlhf-gym {command}` has no options of its own"
    text = parser.format_help()
    for action in actions:
        assert action.help and action.help.strip(), f"`rlhf-gym {command} {action.option_strings[-1]}` has no help"
        assert action.option_strings[-1] in text


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_cli_reference_documents_every_option(command: str) -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    heading = f"## `rlhf-gym {command}`"
    assert heading in page, f"docs/cli.md has no '{heading}' section"
    text = section(page, heading)
    parser = subparser(build_parser(command), command)
    missing = [a.option_strings[-1] for a in option_actions(parser)
               if a.option_strings[-1] not in ("--help",) and f"`{a.option_strings[-1]}" not in text]
    assert not missing, f"docs/cli.md does not document {missing} of `rlhf-gym {command}`"


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_cli_reference_tables_are_what_help_shows(command: str) -> None:
    """Every option's flag, metavar, help and default in docs/cli.md is exactly what `--help` prints."""
    sys.path.insert(0, str(DOCS))
    try:
        import gen_cli_reference
    finally:
        sys.path.remove(str(DOCS))
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert gen_cli_reference.block(command) in page, (
        f"the option table of `rlhf-gym {command}` in docs/cli.md differs from its --help; run "
        f"`python docs/gen_cli_reference.py`")


# -- configuration reference --------------------------------------------------------------------------------------


def test_configuration_reference_mentions_every_field_of_every_algorithm() -> None:
    from rlhf_gym.plugins import list_plugins

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    hint = "run `python docs/gen_config_reference.py` to regenerate docs/configuration.md"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = list_plugins("algorithm")
    assert entries
    for entry in entries:
        heading = f"### `{entry.name}`"
        assert heading in page, f"algorithm {entry.name!r} is missing from docs/configuration.md; {hint}"
        config = getattr(entry.obj, "Config", None)
        if config is None or not dataclasses.is_dataclass(config):
            continue
        for field in dataclasses.fields(config):
            assert f"| `{field.name}` |" in page, f"{entry.name}.{field.name} is undocumented; {hint}"
    # fields an algorithm adds to the shared ones are listed in its own section
    from rlhf_gym.online import OnlineConfig

    ppo = section(page, "### `ppo`")
    shared = {f.name for f in dataclasses.fields(OnlineConfig)}
    ppo_config = rlhf_gym.plugins.algorithm_class("ppo").Config
    assert all(f"`{f.name}`" in ppo for f in dataclasses.fields(ppo_config) if f.name not in shared)


def test_architecture_map_names_every_module() -> None:
    text = (DOCS / "architecture.md").read_text()
    package = DOCS.parent / "rlhf_gym"
    modules = [p for p in package.glob("*.py") if not p.name.startswith("__")]
    missing = [p.name for p in modules if f"rlhf_gym/{p.name}" not in text]
    assert not missing, f"docs/architecture.md does not list: {missing}"
    subpackages = [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
    assert all(f"rlhf_gym/{name}/" in text for name in subpackages), subpackages
