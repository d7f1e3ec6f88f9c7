"""Entry points users reach from other libraries and the README: ``render_mode`` as Gymnasium and
stable-baselines3 pass it, and ``rlhf-gym eval --policy RUN_DIR``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.cli import main as cli_main
from rlhf_gym.envs.render import frame_size
from rlhf_gym.errors import ConfigError
from rlhf_gym.evaluate import resolve_policy_path

ENV_IDS = ["rlhf_gym/TextGen-v0", "rlhf_gym/Completion-v0"]


def env_kwargs(tokenizer) -> dict:
    return {"tokenizer": tokenizer, "prompts": tiny.review_prompts(4), "reward": "length", "max_new_tokens": 4,
            "max_prompt_tokens": 8}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rgb_array_frames_have_one_size_and_change_with_the_text(tiny_tokenizer, env_id):
    env = gym.make(env_id, render_mode="rgb_array", **env_kwargs(tiny_tokenizer))
    assert env.unwrapped.render() is None  # nothing to show before reset
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.shape == (*frame_size(), 3)
    if env_id == "rlhf_gym/Completion-v0":
        env.step(" a truly great film")
    else:
        for _ in range(3):
            env.step(7)
    second = env.render()
    assert second.shape == first.shape and not np.array_equal(first, second)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_ansi_render_shows_prompt_and_completion(tiny_tokenizer, env_id):
    env = gym.make(env_id, render_mode="ansi", **env_kwargs(tiny_tokenizer))
    _, info = env.reset(seed=0)
    assert env.render() == info["prompt"]
    if env_id == "rlhf_gym/Completion-v0":
        *_, info = env.step(" fine")
        assert env.render() == info["prompt"] + info["completion"]


@pytest.mark.filterwarnings("ignore:.*not in the possible render_modes")
@pytest.mark.parametrize("mode", ["rgb", "human_mode", "rgb_array_list_x", "ANSI"])
def test_an_unknown_render_mode_is_refused_before_anything_loads(tiny_tokenizer, mode):
    with pytest.raises(ValueError, match=r"render_mode must be one of \['ansi', 'rgb_array'\]"):
        gym.make("rlhf_gym/TextGen-v0", render_mode=mode, tokenizer="no/such/tokenizer", prompts=["p"],
                 reward="length")


def test_gymnasium_collects_rgb_array_list_frames(tiny_tokenizer):
    env = gym.make("rlhf_gym/TextGen-v0", render_mode="rgb_array_list", **env_kwargs(tiny_tokenizer))
    env.reset(seed=0)
    env.step(7)
    frames = env.render()
    assert len(frames) >= 2 and all(f.shape == (*frame_size(), 3) for f in frames)


@pytest.mark.parametrize("n_envs", [1, 3])
def test_stable_baselines3_make_vec_env_builds_and_steps_textgen(tiny_tokenizer, n_envs):
    from stable_baselines3.common.env_util import make_vec_env

    vec = make_vec_env("rlhf_gym/TextGen-v0", n_envs=n_envs, seed=0, env_kwargs=env_kwargs(tiny_tokenizer))
    assert vec.render_mode == "rgb_array"
    obs = vec.reset()
    assert obs["input_ids"].shape == (n_envs, 12)
    episodes = 0
    for _ in range(8):
        obs, rewards, dones, infos = vec.step(np.full(n_envs, 7))
        episodes += int(dones.sum())
        for done, info in zip(dones, infos):
            if done:
                assert "episode" in info and isinstance(info["completion"], str)
    assert episodes >= n_envs  # max_new_tokens=4: every env finished at least one episode
    images = vec.get_images()
    assert len(images) == n_envs and images[0].shape == (*frame_size(), 3)
    vec.close()


def test_stable_baselines3_make_vec_env_with_an_explicit_render_mode(tiny_tokenizer):
    from stable_baselines3.common.env_util import make_vec_env

    vec = make_vec_env("rlhf_gym/TextGen-v0", n_envs=1, env_kwargs={**env_kwargs(tiny_tokenizer),
                                                                     "render_mode": "ansi"})
    vec.reset()
    assert isinstance(vec.envs[0].render(), str)
    vec.close()


# -- rlhf-gym eval --policy RUN_DIR ------------------------------------------------------------------------------------


def make_run_dir(root: Path, model_path: str, parts=("policy",)) -> Path:
    """A directory laid out as `rlhf-gym train` leaves it: its own config.json, and the given policy folders."""
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"algorithm": "ppo", "run": {"updates": 2}, "seed": 0}))
    (run / "metrics.csv").write_text("step\n")
    for part in parts:
        shutil.copytree(model_path, run / part)
    return run


@pytest.mark.parametrize(("parts", "expected"), [
    (("policy",), "policy"),
    (("policy", "checkpoints/last/policy"), "policy"),
    (("checkpoints/last/policy", "checkpoints/step-40/policy"), "checkpoints/last/policy"),
    (("checkpoints/step-5/policy", "checkpoints/step-40/policy", "checkpoints/step-40.tmp/policy"),
     "checkpoints/step-40/policy"),
])
def test_a_run_directory_resolves_to_its_policy_not_its_run_config(tmp_path, random_model_path, parts, expected):
    run = make_run_dir(tmp_path, random_model_path, parts)
    assert resolve_policy_path(str(run)) == str(run / expected)
    assert resolve_policy_path(str(run / expected)) == str(run / expected)


def test_a_run_directory_with_no_policy_yet_is_a_clear_error(tmp_path, random_model_path):
    run = make_run_dir(tmp_path, random_model_path, parts=())
    with pytest.raises(ConfigError, match="run directory without a saved policy"):
        resolve_policy_path(str(run))


def test_rlhf_gym_eval_on_a_run_directory_as_the_readme_shows(tmp_path, random_model_path, capsys):
    run = make_run_dir(tmp_path, random_model_path)
    code = cli_main(["eval", "--policy", str(run), "--policy", random_model_path, "--reward", "length",
                     "--samples", "4", "--max-new-tokens", "4", "--judge", "length"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert str(run) in out and "win rate of" in out
    assert rlhf_gym  # the package import registers the env ids used above


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")
@pytest.mark.parametrize("mode", ["ansi", "rgb_array"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_env_checker_accepts_every_render_mode(tiny_tokenizer, env_id, mode):
    from gymnasium.utils.env_checker import check_env

    check_env(gym.make(env_id, render_mode=mode, **env_kwargs(tiny_tokenizer)).unwrapped)
