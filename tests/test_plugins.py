"""The plugin system: built-ins through the hooks, entry-point plugins, runtime plugins, failures and disabling."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest

import rlhf_gym
from rlhf_gym.errors import UnknownNameError
from rlhf_gym.plugins import BUILTIN_DISTRIBUTION, PluginWarning


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install a throw-away distribution on sys.path whose entry points are given by the test."""

    def make(dist_name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        for mod, source in modules.items():
            (tmp_path / f"{mod}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist_name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[rlhf_gym]\n{lines}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        rlhf_gym.reload_plugins()

    yield make
    rlhf_gym.reload_plugins()


GOOD_PLUGIN = """
import rlhf_gym

class Shout(rlhf_gym.RewardProvider):
    '''Rewards exclamation marks.'''
    def score(self, prompts, completions, **row):
        return [float(c.count("!")) for c in completions]

@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("shout", Shout)
"""


def names(kind=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return {e.name: e for e in rlhf_gym.list_plugins(kind)}


def test_builtins_are_registered_through_the_hooks():
    entries = names()
    for name in ("composite", "simulated-human", "learned-rm", "live-human"):
        assert entries[name].kind == "reward"
        assert entries[name].distribution == BUILTIN_DISTRIBUTION
        assert entries[name].plugin.startswith("rlhf_gym_plugins.")
    for name in ("ppo", "reinforce", "rloo", "dpo", "sft", "sb3-ppo", "sb3-a2c"):
        assert entries[name].kind == "algorithm"
        assert entries[name].distribution == BUILTIN_DISTRIBUTION


def test_entry_point_plugin_is_listed_with_its_distribution_and_usable(fake_distribution):
    fake_distribution("shout-plugin", {"shout": "shout_plugin"}, {"shout_plugin": GOOD_PLUGIN})
    entry = names("reward")["shout"]
    assert entry.distribution == "shout-plugin"
    assert entry.description == "Rewards exclamation marks."
    assert rlhf_gym.make_reward("shout").score(["p", "q"], ["hi!!", "no"]) == [2.0, 0.0]


def test_broken_plugin_does_not_break_others(fake_distribution):
    fake_distribution(
        "mixed-plugins",
        {"shout": "shout_plugin", "broken": "broken_plugin"},
        {"shout_plugin": GOOD_PLUGIN, "broken_plugin": "raise RuntimeError('missing API key')\n"},
    )
    with pytest.warns(PluginWarning, match=r"'broken'.*RuntimeError: missing API key") as record:
        entries = {e.name for e in rlhf_gym.list_plugins()}
    assert len([w for w in record if "broken" in str(w.message)]) == 1
    assert {"shout", "composite", "ppo"} <= entries


def test_duplicate_name_warns_and_keeps_the_first(fake_distribution):
    fake_distribution(
        "dup-plugin",
        {"dup": "dup_plugin"},
        {"dup_plugin": """
            import rlhf_gym
            @rlhf_gym.hookimpl
            def register_reward_providers(register):
                register("composite", lambda **kw: (lambda p, c, **k: [0.0] * len(p)))
            """},
    )
    with pytest.warns(PluginWarning, match=r"'dup'.*'composite' is already registered by plugin 'rlhf_gym_plugins"):
        entry = {e.name: e for e in rlhf_gym.list_plugins()}["composite"]
    assert entry.distribution == BUILTIN_DISTRIBUTION


def test_hook_that_raises_is_reported_and_skipped():
    class Exploding:
        @rlhf_gym.hookimpl
        def register_algorithms(self, register):
            raise ValueError("boom")

    name = rlhf_gym.register_plugin(Exploding(), name="exploding")
    try:
        with pytest.warns(PluginWarning, match="'exploding'.*boom"):
            algos = {e.name for e in rlhf_gym.list_plugins("algorithm")}
        assert "ppo" in algos
    finally:
        rlhf_gym.unregister_plugin(name)


@pytest.mark.parametrize("value", ["1", "shout", "shout-plugin"])
def test_disable_env_var_turns_external_plugins_off_but_not_builtins(fake_distribution, monkeypatch, value):
    fake_distribution("shout-plugin", {"shout": "shout_plugin"}, {"shout_plugin": GOOD_PLUGIN})
    monkeypatch.setenv("RLHF_GYM_DISABLE_PLUGINS", value)
    rlhf_gym.reload_plugins()
    entries = names()
    assert "shout" not in entries
    assert "composite" in entries and "ppo" in entries


def test_unknown_names_list_the_known_ones_with_a_suggestion():
    with pytest.raises(UnknownNameError, match=r"Did you mean 'simulated-human'\?.*Known reward providers:.*composite"):
        rlhf_gym.make_reward("simulated-humans")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'ppo'\?.*rlhf-gym plugins"):
        rlhf_gym.make_algorithm("ppoo")


def test_runtime_plugin_is_usable_in_gym_make(tiny_tokenizer):
    import gymnasium as gym

    class Plugin:
        @rlhf_gym.hookimpl
        def register_reward_providers(self, register):
            register("length-test", lambda: (lambda p, c, **k: [float(len(x)) for x in c]))

    name = rlhf_gym.register_plugin(Plugin(), name="runtime-length")
    try:
        env = gym.make("rlhf_gym/Completion-v0", tokenizer=tiny_tokenizer, prompts=["The movie was"],
                       reward="length-test", max_new_tokens=4)
        env.reset(seed=0)
        _, reward, *_ , info = env.step(" good")
        assert reward == float(len(info["completion"])) > 0
    finally:
        rlhf_gym.unregister_plugin(name)


def test_installed_example_plugin_appears_in_cli_listing():
    """The example package in examples/rlhf_keyword_plugin is pip-installed by the setup script."""
    out = subprocess.run([sys.executable, "-m", "rlhf_gym", "plugins"], capture_output=True, text=True, check=True)
    line = next(row for row in out.stdout.splitlines() if row.startswith("keyword-count"))
    assert "reward" in line and "rlhf-keyword-plugin" in line
    assert any(row.startswith("ppo ") and "algorithm" in row for row in out.stdout.splitlines())


# -- all or nothing per plugin; unknown names in RLHF_GYM_DISABLE_PLUGINS -------------------------------------------

HALF_DUPLICATE = """
import rlhf_gym

@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("shout", lambda: (lambda prompts, completions, **kw: [1.0] * len(prompts)))
    register({second!r}, lambda: (lambda prompts, completions, **kw: [0.0] * len(prompts)))

@rlhf_gym.hookimpl
def register_algorithms(register):
    register({algo!r}, rlhf_gym.Algorithm)
"""


@pytest.mark.parametrize(("second", "algo", "why"), [
    ("composite", "my-algo", "'composite' is already registered"),  # duplicate in the same hook, after a good one
    ("loud", "ppo", "'ppo' is already registered"),  # duplicate in the other hook
    ("shout", "my-algo", "registered twice by this plugin"),  # its own name twice
])
def test_a_skipped_plugin_leaves_nothing_registered(fake_distribution, second, algo, why):
    module = f"half_dup_{second}_{algo}".replace("-", "_")  # a fresh module per case (sys.modules caches them)
    fake_distribution("half-dup", {"halfdup": module}, {module: HALF_DUPLICATE.format(second=second, algo=algo)})
    with pytest.warns(PluginWarning, match=rf"'halfdup'.*{why}.*nothing of this plugin was registered") as record:
        entries = {e.name: e for e in rlhf_gym.list_plugins()}
    assert len([w for w in record if "halfdup" in str(w.message)]) == 1
    assert "shout" not in entries and "loud" not in entries and "my-algo" not in entries
    assert entries["composite"].distribution == BUILTIN_DISTRIBUTION
    assert entries["ppo"].distribution == BUILTIN_DISTRIBUTION
    with pytest.raises(UnknownNameError):
        rlhf_gym.make_reward("shout")


def test_a_hook_that_raises_after_registering_leaves_nothing():
    class Partial:
        @rlhf_gym.hookimpl
        def register_reward_providers(self, register):
            register("half-made", lambda: (lambda prompts, completions, **kw: [1.0] * len(prompts)))

        @rlhf_gym.hookimpl
        def register_algorithms(self, register):
            raise RuntimeError("missing dependency")

    name = rlhf_gym.register_plugin(Partial(), name="partial")
    try:
        with pytest.warns(PluginWarning, match="'partial'.*missing dependency.*nothing"):
            assert "half-made" not in {e.name for e in rlhf_gym.list_plugins()}
    finally:
        rlhf_gym.unregister_plugin(name)


def test_a_clean_plugin_next_to_a_skipped_one_is_kept(fake_distribution):
    fake_distribution("two", {"aaa": "aaa_plugin", "zzz": "zzz_plugin"},
                      {"aaa_plugin": GOOD_PLUGIN, "zzz_plugin": GOOD_PLUGIN.replace("Shout", "Other")})
    with pytest.warns(PluginWarning, match="'zzz'.*'shout' is already registered by plugin 'aaa'"):
        entries = {e.name: e for e in rlhf_gym.list_plugins()}
    assert entries["shout"].plugin == "aaa"


@pytest.mark.parametrize(("value", "unknown", "builtin"), [
    ("shuot", "'shuot'", False),
    ("shout,nope", "'nope'", False),
    ("ppo", "'ppo'", True),
    ("rlhf_gym", "'rlhf_gym'", True),
])
def test_unknown_names_in_the_disable_variable_are_warned_about(fake_distribution, monkeypatch, value, unknown,
                                                                   builtin):
    fake_distribution("shout-plugin", {"shout": "shout_plugin"}, {"shout_plugin": GOOD_PLUGIN})
    monkeypatch.setenv("RLHF_GYM_DISABLE_PLUGINS", value)
    rlhf_gym.reload_plugins()
    with pytest.warns(PluginWarning, match=rf"RLHF_GYM_DISABLE_PLUGINS names {unknown}.*installed plugins: .*shout") \
            as record:
        entries = {e.name for e in rlhf_gym.list_plugins()}
    assert any("built-in plugins are always on" in str(w.message) for w in record) == builtin
    assert ("shout" in entries) == ("shout" not in value.split(","))


def test_known_names_in_the_disable_variable_give_no_warning(fake_distribution, monkeypatch):
    fake_distribution("shout-plugin", {"shout": "shout_plugin"}, {"shout_plugin": GOOD_PLUGIN})
    monkeypatch.setenv("RLHF_GYM_DISABLE_PLUGINS", "shout, shout-plugin")
    rlhf_gym.reload_plugins()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        rlhf_gym.list_plugins()
