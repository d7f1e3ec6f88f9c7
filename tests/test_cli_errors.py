"""Bad input to the ``rlhf-gym`` command ends in one ``error:`` line and exit status 2, never a traceback; an
unexpected failure is one line too (status 1), with the traceback only under ``RLHF_GYM_DEBUG=1``."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym.cli import main, report_error
from rlhf_gym.errors import ConfigError, PreferenceStoreError, RewardError, RLHFGymError


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    err = capsys.readouterr().err
    return status, err


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--updates", "-1"], "--updates must be ≥ 1, got -1"),
    (["train", "--updates", "0"], "--updates must be ≥ 1"),
    (["train", "--eval-samples", "0"], "--eval-samples must be ≥ 1, got 0"),
    (["train", "--eval-samples", "-5"], "--eval-samples must be ≥ 1"),
    (["train", "--sft-updates", "-1"], "--sft-updates must be ≥ 0"),
    (["train", "--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1"),
    (["train", "--seed", "-3"], "--seed must be ≥ 0"),
    (["train", "--algo", "ppx"], "Did you mean 'ppo'"),
    (["train", "--reward", "simulated-humn"], "Did you mean 'simulated-human'"),
    (["train", "--ground-truth", "sentimnt"], "Did you mean 'sentiment'"),
    (["train", "--reward-kwargs", "[1, 2]"], "--reward-kwargs"),
    (["eval"], "pass at least one --policy"),
])
def test_bad_options_are_one_error_line_and_status_2(capsys, argv, needle):
    status, err = run_cli(capsys, *argv)
    assert status == 2
    assert needle in assert_one_error_line(err)


@pytest.mark.parametrize(("suffix", "text"), [
    (".yaml", "updates: [1, 2\nalgo: ppo\n"),
    (".yaml", "algo: ppo\n  reward: : x\n"),
    (".yml", "\t- tab indented\n"),
    (".toml", "updates = = 3\n"),
    (".json", "{\"updates\": 3,,}"),
    (".yaml", "updates: ten\n"),
    (".yaml", "updates: 2.5\n"),
    (".yaml", "eval_samples: 0\n"),
    (".yaml", "- just\n- a list\n"),
    (".ini", "updates=3\n"),
])
def test_a_bad_config_file_is_one_error_line(capsys, tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    status, err = run_cli(capsys, "train", "--config", str(path))
    assert status == 2
    line = assert_one_error_line(err)
    assert "config file" in line or "must be" in line


def test_a_missing_config_file(capsys, tmp_path):
    status, err = run_cli(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert status == 2 and "does not exist" in assert_one_error_line(err)


class _Plugin:
    """Reward providers that misbehave in different ways."""

    @rlhf_gym.hookimpl
    def register_reward_providers(self, register):
        register("bare-float", lambda: (lambda prompts, completions, **kw: 0.5))
        register("kaboom", lambda: (lambda prompts, completions, **kw: 1 / 0))
        register("wrong-count", lambda: (lambda prompts, completions, **kw: [0.0]))


@pytest.fixture
def misbehaving():
    name = rlhf_gym.register_plugin(_Plugin(), name="misbehaving-test-providers")
    yield
    rlhf_gym.unregister_plugin(name)


@pytest.mark.parametrize(("reward", "needle"), [
    ("bare-float", "returned float; it must return a list of 2 scores"),
    ("wrong-count", "returned 1 scores for 2 samples"),
])
def test_a_provider_returning_the_wrong_shape_is_one_error_line(capsys, misbehaving, tiny_kit, reward, needle):
    status, err = run_cli(capsys, "eval", "--policy", tiny_kit.path, "--reward", reward, "--samples", "2")
    assert status == 2
    assert needle in assert_one_error_line(err)


def test_an_unknown_reward_kwarg_names_the_valid_ones_without_gymnasiums_dump(capsys, tiny_kit):
    status, err = run_cli(capsys, "eval", "--policy", tiny_kit.path, "--reward", "simulated-human",
                          "--reward-kwargs", '{"bogus": 1}', "--samples", "2")
    assert status == 2
    line = assert_one_error_line(err)
    assert "'bogus'" in line and "preset" in line and "seed" in line
    assert "tokenizer" not in line and "with kwargs" not in line and len(line) < 400


def test_an_unexpected_error_is_one_line_unless_debugging(capsys, misbehaving, tiny_kit, monkeypatch):
    status, err = run_cli(capsys, "eval", "--policy", tiny_kit.path, "--reward", "kaboom", "--samples", "2")
    assert status == 1
    line = assert_one_error_line(err)
    assert "unexpected ZeroDivisionError" in line and "RLHF_GYM_DEBUG=1" in line
    monkeypatch.setenv("RLHF_GYM_DEBUG", "1")
    status, err = run_cli(capsys, "eval", "--policy", tiny_kit.path, "--reward", "kaboom", "--samples", "2")
    assert status == 1 and "Traceback" in err and "1 / 0" in err


@pytest.mark.parametrize(("exc", "status", "needle"), [
    (ConfigError("bad value; pass a good one"), 2, "error: bad value; pass a good one"),
    (PreferenceStoreError("store is damaged;\n  restore the backup"), 2, "error: store is damaged; restore the backup"),
    (RewardError("provider 'x' returned NaN"), 2, "error: provider 'x' returned NaN"),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/x"), 1, "Permission denied (/runs/x); check the"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors"), 1, "free some disk space"),
    (OSError(errno.EROFS, "Read-only file system", "/ro"), 1, "read-only"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.jsonl"), 1, "(a.jsonl); check the path"),
    (RuntimeError("weird"), 1, "error: unexpected RuntimeError: weird"),
])
def test_report_error_maps_each_kind_to_one_line_and_a_status(exc, status, needle, monkeypatch):
    monkeypatch.delenv("RLHF_GYM_DEBUG", raising=False)
    out = io.StringIO()
    assert report_error(exc, out) == status
    assert out.getvalue().count("\n") == 1 and needle in out.getvalue()


def test_a_plugged_in_error_type_chooses_its_exit_status():
    class StoreLocked(RLHFGymError):
        exit_code = 3

    out = io.StringIO()
    assert report_error(StoreLocked("the store is locked by another trainer; stop it first"), out) == 3
    assert out.getvalue() == "error: the store is locked by another trainer; stop it first\n"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"reward": "simulated-human", "reward_kwargs": {"bogus": 1}}, "'bogus'"),
    ({"reward": "length", "max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ({"reward": "length", "prompts": "missing-file.txt"}, "does not exist"),
    ({"reward": lambda prompts, completions, **kw: [1.0], "reward_kwargs": {"scale": 2}}, "only apply"),
    ({"reward": "length", "reward_kwargs": {"timeout": -1}}, "timeout must be"),
    ({"reward": "length", "prompts": []}, "holds no prompts"),
])
def test_config_errors_from_gym_make_are_not_buried_in_its_kwargs_dump(tiny_tokenizer, kwargs, needle):
    settings = {"tokenizer": tiny_tokenizer, "prompts": ["Hi"], **kwargs}
    with pytest.raises(ConfigError) as info:
        gym.make("rlhf_gym/Completion-v0", **settings)
    message = str(info.value)
    assert needle in message
    assert "with kwargs" not in message and "TokenizersBackend" not in message and len(message) < 400


def test_the_console_script_exits_2_with_one_line(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "rlhf_gym", "train", "--updates", "-1"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --updates must be ≥ 1, got -1; runs stop on update counts, so give the " \
                                  "number of RL updates to make"
    assert not (tmp_path / "runs").exists()  # nothing was started
