"""`rlhf-gym train` options: --list-fields shows every run option and algorithm field with type, default and help;
a misspelt option or config key fails with one error that suggests the right one."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf_gym.cli import main
from rlhf_gym.plugins import algorithm_class
from rlhf_gym.train import RUN_OPTION_HELP, RunOptions


@pytest.mark.parametrize("algo", ["ppo", "dpo", "grpo"])
def test_list_fields_shows_every_run_option_and_field_with_type_default_and_help(algo, capsys):
    assert main(["train", "--algo", algo, "--list-fields"]) == 0
    run_part, algo_part = capsys.readouterr().out.split("Fields of algorithm")

    def table(text: str) -> dict[str, str]:
        return {line.split()[0]: line for line in text.splitlines() if line.strip().startswith("--")}

    lines = table(run_part)
    for f in dataclasses.fields(RunOptions):
        if f.name in RUN_OPTION_HELP:
            line = lines[f"--{f.name.replace('_', '-')}"]
            assert RUN_OPTION_HELP[f.name] in line
    assert " 30 " in lines["--sft-updates"] and " int " in lines["--sft-updates"]
    lines = table(algo_part)
    for f in dataclasses.fields(algorithm_class(algo).Config):
        line = lines[f"--{f.name.replace('_', '-')}"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert repr(default) in line and f.metadata["help"] in line, line
    assert " float " in lines["--learning-rate"] and " str | list[str] | None " in lines["--report-to"]


@pytest.mark.parametrize("typo, meant", [
    ("--updatse", "--updates"), ("--sft-updaets", "--sft-updates"), ("--learning-rat", "--learning-rate"),
    ("--eval-smaples", "--eval-samples"), ("--reprot-to", "--report-to"), ("--num-promts", "--num-prompts"),
])
def test_misspelt_option_fails_before_any_work_with_a_did_you_mean(typo, meant, capsys, tmp_path):
    # (a prefix such as --sft-update is argparse's abbreviation of --sft-updates, not a typo)
    guard = ["--updates", "1", "--eval-samples", "1"] if typo != "--updatse" else []
    assert main(["train", typo, "3", *guard, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"Did you mean {meant}?" in err and "--list-fields" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix, text", [(".yaml", "updatse: 3\n"), (".toml", "updatse = 3\n"),
                                          (".json", '{"updatse": 3}')])
def test_misspelt_config_file_key_gets_a_did_you_mean(suffix, text, capsys, tmp_path):
    config = tmp_path / f"run{suffix}"
    config.write_text(text)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "Did you mean --updates?" in capsys.readouterr().err


def test_config_json_of_a_python_run_is_read_as_a_run_config(tmp_path):
    """A config.json written by Python `learn()` (no "run" options) maps "algorithm" to --algo and drops run_dir."""
    import argparse
    import json

    from rlhf_gym.train import resolve_options

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"algorithm": "rloo", "run_dir": "/old/run", "group_size": 4, "seed": 2}))
    args = argparse.Namespace(config=str(path), set=[], beta=None, report_to=None)
    opts = resolve_options(args, [])
    assert opts.algo == "rloo" and opts.algo_config == {"group_size": 4, "seed": 2}


def test_unknown_tracker_fails_before_any_work(tmp_path, capsys):
    assert main(["train", "--report-to", "csv,wandbb", "--out", str(tmp_path / "run")]) == 2
    assert "Did you mean 'wandb'" in capsys.readouterr().err and not (tmp_path / "run").exists()
