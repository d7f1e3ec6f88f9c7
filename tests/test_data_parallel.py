"""Data-parallel learners: two gloo processes on CPU, each with half of a batch, take exactly the update one process
takes on the whole batch (PPO with uneven minibatch splits, RLOO, REINFORCE, GRPO, online DPO, offline DPO with
uneven shards), only rank 0 writes the run directory, and the train CLI spawns learners."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.distributed import data_parallel as dp
from rlhf_gym.online import Batch
from rlhf_gym.policy import Policy

warnings.filterwarnings("ignore", message=".*requires_grad.*")

# Adam's first steps are lr·g/(|g| + eps): with eps = 1e-8 a gradient entry of 1e-9 moves its weight by lr/10, so
# summation-order rounding in the all-reduce would be amplified to ~1e-4; eps = 1e-3 compares the updates themselves.
OPTIMIZER = {"learning_rate": 3e-3, "adam_eps": 1e-3}
PPO_CONFIG = {"num_prompts": 8, "seed": 5, "minibatch_size": 3, "ppo_epochs": 2, "beta": 0.1, "whiten_advantages": True,
              **OPTIMIZER}
#: the policy-gradient family on the same footing: RLOO groups per learner, advantage scaling with global statistics,
#: REINFORCE's baseline on the global batch mean, GRPO's clipped objective and KL loss term as global token means
PG_CONFIGS = {
    "rloo": {"num_prompts": 4, "group_size": 2, "seed": 5, "beta": 0.1, "normalize_advantages": True, **OPTIMIZER},
    "reinforce": {"num_prompts": 8, "seed": 5, "beta": 0.1, "normalize_advantages": True, **OPTIMIZER},
    "grpo": {"num_prompts": 4, "group_size": 2, "seed": 5, "beta": 0.1, "num_iterations": 2, **OPTIMIZER},
    # online DPO: every pair within a prompt's group compared by the env's provider, a global mean over pairs
    "dpo-online": {"num_prompts": 4, "group_size": 3, "seed": 5, "beta": 0.1, **OPTIMIZER},
}
CONFIGS = {"ppo": None, **PG_CONFIGS}
DPO_CONFIG = {"batch_size": 7, "seed": 2, "max_prompt_tokens": 8, "max_completion_tokens": 8, **OPTIMIZER}
DPO_UPDATES = 3


def length_reward(prompts, completions, **kw):
    return [len(c) / 10.0 if i % 3 else None for i, c in enumerate(completions)]  # some samples unscored


def text_length(prompts, completions, **kw):
    return [len(c) / 10.0 for c in completions]


def make_env(policy: Policy, reward=length_reward):
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(16),
                    reward=reward, max_new_tokens=6, max_prompt_tokens=8, vocab_size=policy.vocab_size)


def dpo_pairs() -> list[dict[str, str]]:
    words = ["great", "awful", "fine", "dull", "superb", "boring", "lovely", "weak", "bright", "flat"]
    return [{"prompt": f"The film was {w}", "chosen": f" and {w} in a good way", "rejected": f" so {w}, sadly"}
            for w in words]


def shard_batch(batch: Batch, rank: int, world: int) -> Batch:
    """Rank ``rank``'s contiguous rows of a global batch, as the learners split it."""
    start, stop = _block(batch.rollout.prompt_ids.shape[0], rank, world)
    index = torch.arange(start, stop)

    def pick(t):
        return None if t is None else t[index]

    return Batch(rollout=batch.rollout.select(index), scores=pick(batch.scores), raw_scores=pick(batch.raw_scores),
                 valid=pick(batch.valid), logprobs=pick(batch.logprobs), ref_logprobs=pick(batch.ref_logprobs),
                 kl=pick(batch.kl), values=pick(batch.values))


def _block(n: int, rank: int, world: int) -> tuple[int, int]:
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def with_fixed_batch(name: str, model_path: str, batch: Batch, rank: int, world: int, **config):
    """Algorithm ``name`` whose every update sees this learner's shard of ``batch``."""
    policy = Policy.from_pretrained(model_path, value_head=name == "ppo")
    settings = {**(PPO_CONFIG if name == "ppo" else PG_CONFIGS[name]), **config}
    env = make_env(policy, text_length if name == "dpo-online" else length_reward)
    algo = rlhf_gym.make_algorithm(name.removesuffix("-online"), env=env, policy=policy, **settings)
    algo.collect = lambda **kw: shard_batch(batch, rank, world)
    return algo


def ppo_with_fixed_batch(model_path: str, batch: Batch, rank: int, world: int, **config):
    return with_fixed_batch("ppo", model_path, batch, rank, world, **config)


def flat_parameters(algo) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in algo.policy.parameters()])


def _learner(rank: int, world: int, model_path: str, work: str) -> None:
    """What each spawned learner runs: one PPO update on its shard of the saved batch, then offline DPO."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    work_dir = Path(work)
    batch = torch.load(work_dir / "batch-ppo.pt", weights_only=False)
    run_dir = work_dir / ("run" if rank == 0 else f"run-rank{rank}")
    ppo = ppo_with_fixed_batch(model_path, batch, rank, world, run_dir=str(run_dir), save_every=1,
                               tensorboard=False)
    ppo.learn(1, progress_bar=False)
    ppo.close()
    dpo = rlhf_gym.make_algorithm("dpo", policy=Policy.from_pretrained(model_path, value_head=False),
                                  dataset=dpo_pairs(), **DPO_CONFIG)
    dpo.learn(DPO_UPDATES, progress_bar=False)
    results = {"ppo": flat_parameters(ppo), "dpo": flat_parameters(dpo), "ppo_metrics": ppo.last_metrics}
    for name in PG_CONFIGS:
        algo = with_fixed_batch(name, model_path, torch.load(work_dir / f"batch-{name}.pt", weights_only=False),
                                rank, world)
        algo.learn(2, progress_bar=False)
        results[name] = flat_parameters(algo)
    torch.save(results, work_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_learners(random_model_path, tmp_path_factory):
    """The global PPO batch, and the parameters each of two gloo learners ends with."""
    work = tmp_path_factory.mktemp("dp")
    batches = {}
    for name in CONFIGS:
        sampler = with_fixed_batch(name, random_model_path, None, 0, 1)
        del sampler.collect  # the real one
        batches[name] = sampler.collect(with_values=name == "ppo", score=name != "dpo-online")
        if name != "dpo-online":
            assert bool(batches[name].valid.any()) and not bool(batches[name].valid.all())
        torch.save(batches[name], work / f"batch-{name}.pt")
    dp.spawn(_learner, 2, random_model_path, str(work))
    return work, batches, [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_ppo_learners_take_the_single_process_update_on_the_global_batch(two_learners, random_model_path):
    work, batches, ranks = two_learners
    single = ppo_with_fixed_batch(random_model_path, batches["ppo"], 0, 1)
    before = flat_parameters(single)
    single.learn(1, progress_bar=False)
    after = flat_parameters(single)
    assert (after - before).abs().max() > 1e-3  # the update moved the weights
    for r in ranks:
        assert (r["ppo"] - after).abs().max() <= 1e-5
    # The logged metrics are the global batch's (the loss is a global token mean on every learner).
    assert ranks[0]["ppo_metrics"]["loss/policy_avg"] == pytest.approx(single.last_metrics["loss/policy_avg"],
                                                                       abs=1e-5)


@pytest.mark.parametrize("name", list(PG_CONFIGS))
def test_two_online_learners_match_one_process(two_learners, random_model_path, name):
    _, batches, ranks = two_learners
    single = with_fixed_batch(name, random_model_path, batches[name], 0, 1)
    before = flat_parameters(single)
    single.learn(2, progress_bar=False)
    after = flat_parameters(single)
    assert (after - before).abs().max() > 1e-3
    for r in ranks:
        assert (r[name] - after).abs().max() <= 1e-5


def test_two_dpo_learners_with_uneven_shards_match_one_process(two_learners, random_model_path):
    _, _, ranks = two_learners
    single = rlhf_gym.make_algorithm("dpo", policy=Policy.from_pretrained(random_model_path, value_head=False),
                                     dataset=dpo_pairs(), **DPO_CONFIG)
    before = flat_parameters(single)
    single.learn(DPO_UPDATES, progress_bar=False)
    after = flat_parameters(single)
    assert (after - before).abs().max() > 1e-3
    for r in ranks:
        assert (r["dpo"] - after).abs().max() <= 1e-5


def test_only_rank_zero_writes_logs_and_checkpoints(two_learners):
    work = two_learners[0]
    assert (work / "run" / "metrics.csv").is_file()
    assert (work / "run" / "checkpoints" / "step-1" / "policy").is_dir()
    assert (work / "run" / "checkpoints" / "last").is_dir()
    assert not (work / "run-rank1").exists()


def test_without_a_process_group_every_helper_is_the_local_computation():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with dp.batch_reductions():
        assert not dp.reducing()
        total = dp.global_sum(x.sum())
        total.backward()
        assert float(total.detach()) == 6.0 and x.grad.tolist() == [1.0, 1.0, 1.0]
        assert dp.global_count(3) == 3
    assert dp.shard(torch.arange(5)).tolist() == [0, 1, 2, 3, 4]
    assert dp.shard_seed(7) == 7 and dp.is_writer() and dp.world_size() == 1
    assert dp.average_metrics({"a": 1.0}) == {"a": 1.0}



def test_train_cli_spawns_learners_and_only_one_writes_the_run(random_model_path, tmp_path):
    import json

    from rlhf_gym.cli import main
    from rlhf_gym.run_logger import read_metrics

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny.review_prompts(8)) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--algo", "rloo", "--model", random_model_path, "--prompts", str(prompts),
                 "--reward", "length", "--updates", "2", "--eval-samples", "2", "--out", str(out),
                 "--ground-truth", "none", "--no-progress", "--learners", "2", "--num_prompts", "2",
                 "--group_size", "2", "--max-new-tokens", "4"])
    assert code == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # one writer: no row twice
    assert json.loads((out / "config.json").read_text())["run"]["learners"] == 2
    assert (out / "summary.json").is_file() and (out / "policy" / "model.safetensors").is_file()


def test_train_cli_lora_and_dtype_options_reach_the_policy(random_model_path, tmp_path):
    import argparse

    from rlhf_gym.train import configure_parser, prepare_policy, resolve_options

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args, extra = parser.parse_known_args(["--algo", "rloo", "--model", random_model_path, "--lora", "4",
                                           "--dtype", "bfloat16", "--device", "cpu"])
    opts = resolve_options(args, extra)
    assert opts.lora == 4 and opts.algo_config == {"dtype": "bfloat16", "device": "cpu"}
    policy, _ = prepare_policy(opts, tmp_path, progress=False)
    assert policy.is_peft and policy.compute_dtype is torch.bfloat16
    assert {p.dtype for p in policy.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in policy.parameters() if not p.requires_grad} == {torch.bfloat16}


@pytest.mark.parametrize(("flag", "value", "match"), [("--learners", "0", "--learners takes"),
                                                      ("--lora", "-2", "--lora takes")])
def test_train_cli_rejects_bad_learner_counts_and_lora_ranks(flag, value, match, capsys):
    from rlhf_gym.cli import main

    assert main(["train", flag, value, "--no-progress"]) == 2
    assert match in capsys.readouterr().err


def test_a_launcher_environment_without_a_rank_is_refused(monkeypatch):
    from rlhf_gym.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK.*torchrun"):
        dp.init_from_env("cpu")
