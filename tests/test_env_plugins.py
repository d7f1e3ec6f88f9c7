"""Environment plugins: the register_environments hook, the example package in examples/rlhf_dialogue_tasks
installed with pip, its ids in `rlhf-gym plugins`, gym.make/make_vec by id and `rlhf-gym train --env`."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym.envs.dialogue import DialogueEnv, DialogueVectorEnv
from rlhf_gym.plugins import PluginWarning, _unregister_gym_ids

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rlhf_dialogue_tasks"
DIST = "rlhf-dialogue-tasks"
IDS = ("dialogue_tasks/MovieChat-v0", "dialogue_tasks/UpbeatReview-v0")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package pip-installed (as a real distribution) into a fresh target directory."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(EXAMPLE)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (target / "rlhf_dialogue_tasks.py").is_file()
    return target


@pytest.fixture
def on_path(installed, monkeypatch):
    """The installed package importable in this process, its ids registered; everything undone afterwards."""
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.delenv("RLHF_GYM_DISABLE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    rlhf_gym.reload_plugins()
    yield installed
    _unregister_gym_ids("dialogue-tasks")
    sys.modules.pop("rlhf_dialogue_tasks", None)
    monkeypatch.undo()
    rlhf_gym.reload_plugins()


def test_installed_environment_package_is_listed_and_made_in_a_fresh_process(installed):
    """After nothing but `import rlhf_gym`, the ids work with gym.make; `rlhf-gym plugins` lists them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    env.pop("RLHF_GYM_DISABLE_PLUGINS", None)
    code = (f"import gymnasium as gym, rlhf_gym, sys\n"
            f"env = gym.make({IDS[0]!r}, tokenizer={str(tokenizer_dir())!r})\n"
            f"print('OPENING', env.reset(seed=0)[1]['messages'][-1]['content'])\n"
            f"from rlhf_gym.cli import main\n"
            f"sys.exit(main(['plugins', '--json']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("OPENING ") and lines[0][len("OPENING "):] in (EXAMPLE / "rlhf_dialogue_tasks.py").read_text()
    rows = {json.loads(line)["name"]: json.loads(line) for line in lines[1:]}
    for env_id in IDS:
        assert rows[env_id]["kind"] == "environment" and rows[env_id]["distribution"] == DIST
    assert rows["impatient-user"]["kind"] == "user-simulator" and rows["impatient-user"]["distribution"] == DIST
    assert "warm replies score" in rows[IDS[0]]["description"]


def test_the_plugins_table_has_an_environment_kind(on_path, capsys):
    from rlhf_gym.cli import main

    assert main(["plugins", "--kind", "environment"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "KIND", "DISTRIBUTION"]
    assert any(line.startswith(IDS[0]) and "environment" in line and DIST in line for line in table)
    assert all("reward" not in line.split()[1:2] for line in table[1:])


def tokenizer_dir() -> Path:
    from rlhf_gym.tiny import CACHE_ENV_VAR, build_tiny_tokenizer

    return Path(build_tiny_tokenizer(Path(os.environ[CACHE_ENV_VAR])))


def test_plugin_environment_makes_and_steps_by_id(on_path, tiny_tokenizer):
    registered = rlhf_gym.register_plugin_environments()
    assert set(IDS) <= set(registered) and set(IDS) <= set(gym.registry)
    env = gym.make(IDS[0], tokenizer=tiny_tokenizer)
    assert isinstance(env.unwrapped, DialogueEnv)
    _, info = env.reset(seed=0, options={"scenario_index": 0})
    assert info["messages"][0]["content"] == "You are a friendly film critic."
    _, reward, terminated, _, info = env.step(" It was great fun, I loved it.")
    assert reward == 1.0 and not terminated and info["user_reply"] == "Would you recommend it to a friend?"
    _, reward, terminated, _, info = env.step(" Yes, go and see it.")
    assert terminated and info["ended_by"] == "solved" and reward == 0.0
    envs = gym.make_vec(IDS[0], num_envs=3, vectorization_mode="vector_entry_point", tokenizer=tiny_tokenizer)
    assert isinstance(envs.unwrapped, DialogueVectorEnv) and envs.reset(seed=0)[0]["input_ids"].shape[0] == 3
    single = gym.make(IDS[1], tokenizer=tiny_tokenizer, max_new_tokens=8)
    single.reset(seed=0)
    assert single.step(" great fun")[1] == pytest.approx(2 / 3)
    user = rlhf_gym.make_user_simulator("impatient-user")
    assert user.reply([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]]) == [None]


def test_train_runs_on_a_plugin_environment_by_id(on_path, random_model_path, tmp_path):
    from rlhf_gym.cli import main

    rlhf_gym.register_plugin_environments()
    out = tmp_path / "run"
    code = main(["train", "--env", IDS[1], "--algo", "rloo", "--model", random_model_path, "--updates", "2",
                 "--eval-samples", "4", "--out", str(out), "--ground-truth", "none", "--no-progress",
                 "--num_prompts", "2", "--group_size", "2", "--max-new-tokens", "6"])
    assert code == 0
    openers = set(sys.modules["rlhf_dialogue_tasks"].REVIEW_OPENERS)
    summary = json.loads((out / "summary.json").read_text())
    samples = summary["before"]["samples"] + summary["after"]["samples"]
    assert samples and all(s["prompt"] in openers for s in samples)  # the task's prompts, not the demo's
    assert json.loads((out / "config.json").read_text())["run"]["env"] == IDS[1]
    assert (out / "metrics.csv").read_text().count("\n") >= 3  # a header and two updates
    assert main(["train", "--env", "dialogue_tasks/MovieChat-v1", "--model", "no/such/model", "--updates", "1",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 2  # fails on the id, before any loading


class TaskPlugin:
    @rlhf_gym.hookimpl
    def register_environments(self, register):
        register("runtime_tasks/Hello-v0", lambda **kw: DialogueEnv(scenarios=["Hello"],
                                                                    reward=lambda p, c, **k: [0.0] * len(c), **kw))


def test_runtime_plugin_environments_come_and_go_with_the_plugin(tiny_tokenizer):
    name = rlhf_gym.register_plugin(TaskPlugin(), name="runtime-tasks")
    try:
        assert "runtime_tasks/Hello-v0" in gym.registry
        assert gym.make("runtime_tasks/Hello-v0", tokenizer=tiny_tokenizer).reset(seed=0)[1]["messages"] == [
            {"role": "user", "content": "Hello"}]
        assert "runtime_tasks/Hello-v0" in {e.name for e in rlhf_gym.list_plugins("environment")}
    finally:
        rlhf_gym.unregister_plugin(name)
    assert "runtime_tasks/Hello-v0" not in gym.registry
    assert "runtime_tasks/Hello-v0" not in {e.name for e in rlhf_gym.list_plugins("environment")}


@pytest.mark.parametrize("register_call, match", [
    (lambda register: register("rlhf_gym/Completion-v0", DialogueEnv), "already registered"),
    (lambda register: register("", DialogueEnv), "non-empty string"),
    (lambda register: register("bad/Env-v0", "not callable"), "class or a factory"),
    (lambda register: 1 / 0, "ZeroDivisionError"),
])
def test_a_bad_environment_registration_warns_and_changes_nothing(register_call, match):
    class Bad:
        @rlhf_gym.hookimpl
        def register_environments(self, register):
            register_call(register)

    spec = gym.spec("rlhf_gym/Completion-v0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = rlhf_gym.register_plugin(Bad(), name="bad-tasks")
    try:
        assert any(issubclass(w.category, PluginWarning) and match in str(w.message) for w in caught), caught
        assert gym.spec("rlhf_gym/Completion-v0") is spec and "bad/Env-v0" not in gym.registry
    finally:
        rlhf_gym.unregister_plugin(name)
    assert gym.spec("rlhf_gym/Completion-v0") is spec


def test_disabled_plugins_register_no_environments(on_path, monkeypatch):
    for value in ("1", "dialogue-tasks", DIST):
        monkeypatch.setenv("RLHF_GYM_DISABLE_PLUGINS", value)
        _unregister_gym_ids("dialogue-tasks")
        assert rlhf_gym.register_plugin_environments() == [] and IDS[0] not in gym.registry


def test_an_installed_plugin_that_fails_to_import_does_not_stop_the_others(on_path, tmp_path, monkeypatch):
    (tmp_path / "broken_tasks.py").write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / "raising_tasks.py").write_text(
        "import rlhf_gym\n\n@rlhf_gym.hookimpl\ndef register_environments(register):\n    raise KeyError('nope')\n")
    info = tmp_path / "broken_tasks-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tasks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rlhf_gym]\nbroken = broken_tasks\nraising = raising_tasks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registered = rlhf_gym.register_plugin_environments()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert any("'broken'" in m and "broken on purpose" in m for m in messages), messages
    assert any("'raising'" in m and "KeyError" in m for m in messages), messages
    assert set(IDS) <= set(registered)
    sys.modules.pop("raising_tasks", None)
