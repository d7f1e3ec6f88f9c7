"""The common training surface: configs, errors, seeding, checkpoints/resume, run directories, third-party
algorithms. Uses a random-init tiny GPT-2 so every test is quick; learning itself is pinned in test_learning.py."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import gymnasium as gym
import pytest
import torch

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.algorithm import Algorithm, AlgorithmConfig
from rlhf_gym.config import hp
from rlhf_gym.errors import ConfigError, UnknownNameError
from rlhf_gym.policy import ModelLoadError, Policy
from rlhf_gym.run_logger import read_metrics

warnings.filterwarnings("ignore", message=".*requires_grad.*")


def length_reward(prompts, completions, **kw):
    """Longer completions score higher: learnable from a random policy by learning to avoid EOS."""
    return [len(c.split()) / 8.0 for c in completions]


@pytest.fixture
def env(random_model_path):
    policy = Policy.from_pretrained(random_model_path, value_head=False)
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(16),
                    reward=length_reward, max_new_tokens=6, max_prompt_tokens=8, vocab_size=policy.vocab_size)


def small(name: str) -> dict:
    base = {"num_prompts": 4, "seed": 3}
    if name == "ppo":
        base.update(minibatch_size=4, ppo_epochs=2)
    if name in ("rloo", "grpo"):
        base.update(num_prompts=2, group_size=2)
    if name == "grpo":
        base.update(beta=0.05)  # exercise its KL loss term (the default is β = 0)
    return base


@pytest.mark.parametrize("name", ["ppo", "rloo", "grpo", "reinforce", "dpo"])
def test_seeded_runs_reproduce_exactly_and_resume_continues_the_same_curve(name, env, random_model_path, tmp_path):
    def fresh():
        return rlhf_gym.make_algorithm(name, env=env, policy=Policy.from_pretrained(random_model_path), **small(name))

    def point(m):
        return (m.get("objective/scores"), m["objective/kl"], m.get("loss/policy_avg"))

    straight = fresh()
    curve = []
    straight.learn(4, callback=lambda algo, m: curve.append(point(m)), progress_bar=False)
    assert len({c[1] for c in curve}) > 1  # the policy moved away from the reference

    again = fresh()
    again_curve = []
    again.learn(4, callback=lambda algo, m: again_curve.append(point(m)), progress_bar=False)
    assert again_curve == curve

    first = fresh()
    resumed_curve = []
    first.learn(2, callback=lambda algo, m: resumed_curve.append(point(m)), progress_bar=False)
    first.save(tmp_path / "ckpt")
    cls = type(first)
    second = cls.load(tmp_path / "ckpt", env=env)
    assert second.num_updates == 2
    second.learn(4, callback=lambda algo, m: resumed_curve.append(point(m)), progress_bar=False)
    assert resumed_curve == curve
    for p, q in zip(straight.policy.parameters(), second.policy.parameters()):
        torch.testing.assert_close(p, q)


def test_run_directory_holds_config_metrics_tensorboard_curve_samples_and_checkpoint(env, random_model_path, tmp_path):
    run_dir = tmp_path / "run"
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=random_model_path, run_dir=str(run_dir), sample_every=1,
                                   **small("rloo"))
    algo.learn(3, progress_bar=False)
    algo.close()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "rloo" and config["group_size"] == 2
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward", "loss/policy_avg",
                "completions/mean_length", "timing/generation", "timing/update", "perf/tokens_per_s"):
        assert key in rows[0] and math.isfinite(rows[0][key]), key
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "reward_curve.png").stat().st_size > 1000
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2, 3} and all("completion" in s for s in samples)
    assert (run_dir / "checkpoints" / "last" / "policy" / "model.safetensors").exists()
    assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("*.bin")) and not list(run_dir.rglob("*.pkl"))


def test_beta_zero_builds_no_reference_model_without_the_kl_monitor(env, random_model_path):
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=random_model_path, beta=0.0, kl_monitor="off",
                                   **small("rloo"))
    assert algo.reference is None and algo.policy._reference is None
    algo.learn(1, progress_bar=False)
    assert "objective/kl" not in algo.last_metrics  # not measured: not logged (never a stand-in 0)


def test_config_typo_lists_valid_fields(env, random_model_path):
    with pytest.raises(ConfigError, match=r"'learning_rat'.*Did you mean 'learning_rate'\?.*Valid fields:.*clip_range"):
        rlhf_gym.make_algorithm("ppo", env=env, policy=random_model_path, learning_rat=1e-4)


def test_unknown_algorithm_lists_known_ones():
    with pytest.raises(UnknownNameError, match=r"Unknown algorithm 'rlo'.*Did you mean 'rloo'.*ppo"):
        rlhf_gym.make_algorithm("rlo")


def test_model_path_that_does_not_exist(env, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist.*hub id or a local directory"):
        rlhf_gym.make_algorithm("rloo", env=env, policy=str(tmp_path / "no-such-model"))


def test_policy_head_size_must_match_the_env_action_space(random_model_path):
    policy = Policy.from_pretrained(random_model_path, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=["a b"], reward=length_reward,
                   vocab_size=policy.vocab_size + 64)
    with pytest.raises(ConfigError, match=rf"head has {policy.vocab_size} tokens.*action space has {policy.vocab_size + 64}"):
        rlhf_gym.make_algorithm("rloo", env=env, policy=policy)


def test_dpo_dataset_missing_chosen_column_names_it(random_model_path, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "The movie", "preferred": " good.", "rejected": " bad."}) + "\n")
    with pytest.raises(ConfigError, match=r"missing column\(s\) 'chosen'; found 'prompt', 'preferred', 'rejected'"):
        rlhf_gym.make_algorithm("dpo", policy=random_model_path, dataset=str(path))


def test_offline_dpo_learns_the_preferred_completion_and_caches_reference_logprobs(random_model_path):
    pairs = [{"prompt": p, "chosen": " great and fun.", "rejected": " dull and bad."} for p in tiny.review_prompts(8)]
    algo = rlhf_gym.make_algorithm("dpo", policy=random_model_path, dataset=pairs, batch_size=8, learning_rate=1e-3)
    algo.learn(1, progress_bar=False)
    assert algo.last_metrics["loss/policy_avg"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference
    assert not torch.isnan(algo.ref_cache).any()
    cached = algo.ref_cache.clone()
    algo.learn(15, progress_bar=False)
    assert torch.equal(algo.ref_cache, cached)  # computed once per pair
    assert algo.last_metrics["rewards/accuracies"] == 1.0
    assert algo.last_metrics["rewards/margins"] > 0.5


def test_sft_lowers_the_loss_on_its_demonstrations(random_model_path):
    demos = [{"prompt": p, "completion": " a great film."} for p in tiny.review_prompts(8)]
    algo = rlhf_gym.make_algorithm("sft", policy=random_model_path, dataset=demos, batch_size=8, learning_rate=3e-3)
    algo.learn(1, progress_bar=False)
    first = algo.last_metrics["loss/sft"]
    algo.learn(30, progress_bar=False)
    assert algo.last_metrics["loss/sft"] < 0.3 * first


def test_callback_returning_false_stops_training(env, random_model_path):
    algo = rlhf_gym.make_algorithm("reinforce", env=env, policy=random_model_path, num_prompts=2)
    algo.learn(10, callback=lambda a, m: a.num_updates < 3, progress_bar=False)
    assert algo.num_updates == 3


@dataclass
class BestOfNConfig(AlgorithmConfig):
    num_prompts: int = hp(4, "prompts per update")


class BestOfNSFT(Algorithm):
    """Expert iteration: sample, keep the best completion per batch, fine-tune on it."""

    Config = BestOfNConfig
    name = "best-of-n"

    def setup(self):
        from rlhf_gym.rollout import RolloutWorker

        self.rollouts = RolloutWorker(self.env, self.policy, num_prompts=self.config.num_prompts, seed=self.config.seed)

    def train_step(self):
        from rlhf_gym.losses import sft_loss

        batch = self.rollouts.collect()
        best = int(torch.argmax(batch.scores))
        out = self.policy(batch.prompt_ids[best:best + 1], batch.prompt_mask[best:best + 1],
                          batch.completion_ids[best:best + 1], batch.completion_mask[best:best + 1])
        self.clip_and_step(sft_loss(out.logprobs, batch.completion_mask[best:best + 1]))
        return {"objective/scores": float(batch.scores.mean())}


class BestOfNPlugin:
    @rlhf_gym.hookimpl
    def register_algorithms(self, register):
        register("best-of-n", BestOfNSFT)


def test_third_party_algorithm_trains_through_make_algorithm_and_the_cli(env, random_model_path, tmp_path):
    name = rlhf_gym.register_plugin(BestOfNPlugin(), name="best-of-n-plugin")
    try:
        algo = rlhf_gym.make_algorithm("best-of-n", env=env, policy=random_model_path, num_prompts=2)
        before = [p.clone() for p in algo.policy.parameters()]
        algo.learn(2, progress_bar=False)
        assert any(not torch.equal(a, b) for a, b in zip(before, algo.policy.parameters()))
        algo.save(tmp_path / "ckpt")
        assert BestOfNSFT.load(tmp_path / "ckpt", env=env).num_updates == 2

        from rlhf_gym.cli import main

        prompts = tmp_path / "prompts.txt"
        prompts.write_text("The movie was\nI thought the film\n")
        out = tmp_path / "cli-run"
        code = main(["train", "--algo", "best-of-n", "--model", random_model_path, "--prompts", str(prompts),
                     "--reward", "length", "--updates", "2", "--eval-samples", "4", "--out", str(out),
                     "--ground-truth", "none", "--no-progress", "--num_prompts", "2"])
        assert code == 0
        assert [r["step"] for r in read_metrics(out)] == [1, 2]
        assert json.loads((out / "config.json").read_text())["algorithm"] == "best-of-n"
    finally:
        rlhf_gym.unregister_plugin(name)


def test_optimizer_state_moves_between_fused_and_multi_tensor_adamw() -> None:
    from rlhf_gym.algorithm import make_adamw
    from rlhf_gym.checkpoint import flatten_optimizer_state, restore_optimizer_state

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    fused = make_adamw(params, lr=1e-2, weight_decay=0.0, eps=1e-8)
    assert fused.param_groups[0]["fused"]  # this CPU build of torch has the fused kernel
    for _ in range(3):
        sum((p**2).sum() for p in params).backward()
        fused.step()
        fused.zero_grad()
    tensors, meta = flatten_optimizer_state(fused)
    json.dumps(meta)  # the non-tensor half must be JSON
    plain = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0, eps=1e-8)
    restore_optimizer_state(plain, {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    assert not plain.param_groups[0]["fused"]  # the restoring optimizer keeps its own kernel choice
    for p in params:
        assert torch.equal(plain.state[p]["exp_avg"], fused.state[p]["exp_avg"])
        assert float(plain.state[p]["step"]) == 3.0
    # One more step on each gives the same update (same maths, different kernels).
    copies = [p.detach().clone() for p in params]
    sum((p**2).sum() for p in params).backward()
    plain.step()
    after_plain = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, c in zip(params, copies):
            p.copy_(c)
    restore_optimizer_state(fused, {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    fused.step()
    for p, expected in zip(params, after_plain):
        assert torch.allclose(p, expected, atol=1e-6)
