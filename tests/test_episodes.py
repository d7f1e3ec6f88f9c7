"""Training on multi-turn episodes: the episode worker collects whole conversations through Dialogue-v0's vector
env, scores only the assistant's tokens, keeps groups of episodes on one scenario, and the algorithms update on
episode returns (REINFORCE/RLOO/GRPO) or GAE across turns (PPO) with the KL summed per episode.
"""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import rlhf_gym
from rlhf_gym.advantages import gae
from rlhf_gym.episodes import EpisodeRollout, EpisodeWorker, episode_gae, evaluate_episodes
from rlhf_gym.errors import ConfigError
from rlhf_gym.policy import Policy
from rlhf_gym.tiny_dialogues import (
    OpinionMatchReward,
    dialogue_scenarios,
    opinion_dialogue_settings,
    stated_opinion,
)


@pytest.fixture(scope="module")
def policy(random_model_path) -> Policy:
    return Policy.from_pretrained(random_model_path)


def make_env(policy: Policy, history: str = "all", **overrides):
    settings = {**opinion_dialogue_settings(history, num_scenarios=16), "max_new_tokens": 6, **overrides}
    return gym.make("rlhf_gym/Dialogue-v0", tokenizer=policy.tokenizer, vocab_size=policy.vocab_size, **settings)


# -- collection ----------------------------------------------------------------------------------------------------


def test_worker_collects_whole_conversations_one_row_per_assistant_turn(policy):
    worker = EpisodeWorker(make_env(policy), policy, num_prompts=3, group_size=2, seed=0)
    batch = worker.collect(return_logprobs=True)
    assert isinstance(batch, EpisodeRollout) and batch.num_episodes == 6
    assert batch.turn.tolist() == [0, 1] * 6 and batch.episode.tolist() == [e for e in range(6) for _ in range(2)]
    # the opinion match is scored once, at the end of each conversation
    assert batch.score_mask.tolist() == [False, True] * 6
    assert bool(batch.episode_valid.all())
    for e, conversation in enumerate(batch.conversations):
        assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
        rows = (batch.episode == e).nonzero().squeeze(-1).tolist()
        # each row's prompt is the conversation up to that turn; its completion is the assistant's turn alone
        assert batch.prompts[rows[1]].startswith(batch.prompts[rows[0]])
        assert conversation[2]["content"] in batch.prompts[rows[1]]
        for r, said in zip(rows, (conversation[1], conversation[3])):
            tokens = batch.completion_ids[r][batch.completion_mask[r].bool()]
            text = policy.tokenizer.decode(tokens, skip_special_tokens=True)
            assert text.strip() == said["content"] and "User:" not in text


def test_groups_of_episodes_share_their_scenario_and_waves_move_on(policy):
    worker = EpisodeWorker(make_env(policy), policy, num_prompts=4, group_size=3, seed=1)
    first, second = worker.collect(), worker.collect()
    for batch in (first, second):
        openings = [c[0]["content"] for c in batch.conversations]
        assert all(len(set(openings[g:g + 3])) == 1 for g in range(0, 12, 3))
    assert [c[0] for c in first.conversations] != [c[0] for c in second.conversations]


def test_old_logprobs_are_those_of_the_sampled_tokens_in_their_context(policy):
    batch = EpisodeWorker(make_env(policy), policy, num_prompts=2, group_size=2, seed=2).collect(return_logprobs=True)
    with torch.no_grad():
        out = policy(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    assert torch.allclose(out.logprobs, batch.logprobs, atol=1e-4)


def test_same_seed_gives_the_same_episodes(policy):
    a = EpisodeWorker(make_env(policy), policy, num_prompts=2, group_size=2, seed=5).collect()
    b = EpisodeWorker(make_env(policy), policy, num_prompts=2, group_size=2, seed=5).collect()
    assert a.conversations == b.conversations and torch.equal(a.scores, b.scores)


def test_last_message_history_hides_the_opinion_from_the_policy(policy):
    batch = EpisodeWorker(make_env(policy, "last"), policy, num_prompts=2, group_size=1, seed=0).collect()
    review_prompts = [p for p, t in zip(batch.prompts, batch.turn.tolist()) if t == 1]
    assert review_prompts and all("loved" not in p and "hated" not in p for p in review_prompts)
    assert all(p.startswith("User: ") and p.endswith("\nAssistant:") for p in review_prompts)
    # the truth still knows the opinion (from the scenario), so the task is the same
    assert stated_opinion(batch.conversations[0]) in (1, -1)


# -- returns and advantages --------------------------------------------------------------------------------------------


def layout(turns_per_episode: list[int]) -> EpisodeRollout:
    episode = torch.tensor([e for e, n in enumerate(turns_per_episode) for _ in range(n)])
    turn = torch.tensor([t for n in turns_per_episode for t in range(n)])
    rows = len(episode)
    zeros = torch.zeros(rows, 1, dtype=torch.long)
    return EpisodeRollout(prompt_ids=zeros, prompt_mask=zeros + 1, completion_ids=zeros, completion_mask=zeros + 1,
                          scores=torch.zeros(rows), score_mask=torch.ones(rows, dtype=torch.bool),
                          prompts=[""] * rows, completions=[""] * rows, episode=episode, turn=turn,
                          num_episodes=len(turns_per_episode))


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 1.0), (1.0, 0.0)])
def test_episode_gae_is_gae_over_the_concatenated_assistant_tokens(gamma, lam):
    torch.manual_seed(0)
    lengths = [[3, 2], [4], [1, 2, 2]]  # tokens of each turn, per episode
    rows = [n for episode in lengths for n in episode]
    width = max(rows)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in rows])
    rewards, values = torch.randn(len(rows), width) * mask, torch.randn(len(rows), width) * mask
    adv, ret = episode_gae(rewards, values, mask, layout([len(e) for e in lengths]), gamma, lam)
    r = 0
    for episode in lengths:
        flat_r = torch.cat([rewards[r + j, :n] for j, n in enumerate(episode)])
        flat_v = torch.cat([values[r + j, :n] for j, n in enumerate(episode)])
        want_adv, want_ret = gae(flat_r[None], flat_v[None], None, gamma, lam)
        got_adv = torch.cat([adv[r + j, :n] for j, n in enumerate(episode)])
        got_ret = torch.cat([ret[r + j, :n] for j, n in enumerate(episode)])
        assert torch.allclose(got_adv, want_adv[0], atol=1e-5) and torch.allclose(got_ret, want_ret[0], atol=1e-5)
        r += len(episode)
    assert float(adv[mask == 0].abs().sum()) == 0.0


def test_turn_discount_discounts_a_later_turns_reward_once_per_turn():
    mask = torch.ones(2, 2, dtype=torch.long)
    rewards = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # the score at the end of the second turn
    adv, _ = episode_gae(rewards, torch.zeros(2, 2), mask, layout([2]), 1.0, 1.0, turn_discount=0.5)
    assert adv.tolist() == [[0.5, 0.5], [1.0, 1.0]]
    returns = layout([2, 1]).returns(torch.tensor([1.0, 2.0, 3.0]), turn_discount=0.5)
    assert returns.tolist() == [2.0, 3.0]


# -- every online algorithm trains on episodes ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "config"), [
    ("rloo", {"group_size": 2}), ("grpo", {"group_size": 2}), ("ppo", {}), ("reinforce", {})])
def test_algorithms_update_on_episodes_with_kl_per_episode(policy, random_model_path, name, config):
    pol = Policy.from_pretrained(random_model_path)
    algo = rlhf_gym.make_algorithm(name, env=make_env(pol), policy=pol, num_prompts=2, beta=0.1, seed=0,
                                   learning_rate=1e-3, **config)
    before = {k: v.clone() for k, v in pol.state_dict().items()}
    algo.learn(2, progress_bar=False)
    metrics = algo.last_metrics
    assert metrics["episodes/mean_turns"] == 2.0
    assert metrics["objective/kl"] > 0  # the policy moved; KL is a sum over both turns of each episode
    assert "objective/true_scores" in metrics
    assert any(not torch.equal(before[k], v) for k, v in pol.state_dict().items())


def test_kl_of_an_episode_is_the_sum_over_its_turns(policy):
    pol = Policy.from_pretrained(policy.model.name_or_path)
    algo = rlhf_gym.make_algorithm("rloo", env=make_env(pol), policy=pol, num_prompts=2, group_size=2, beta=0.1)
    algo.learn(1, progress_bar=False)  # move off the reference
    batch = algo.collect()
    per_episode = batch.sample_kl
    assert per_episode.shape == (4,)
    assert torch.allclose(per_episode, batch.sequence_kl.view(4, 2).sum(-1))


def test_online_dpo_refuses_episodes_with_a_clear_error(policy):
    algo = rlhf_gym.make_algorithm("dpo", env=make_env(policy), policy=policy, num_prompts=2)
    with pytest.raises(ConfigError, match="single-turn"):
        algo.learn(1, progress_bar=False)


def test_evaluate_episodes_scores_fresh_conversations_and_measures_kl(policy):
    result = evaluate_episodes(policy, make_env(policy), num_episodes=8, batch_size=4, seed=3, reference=policy)
    assert len(result["scores"]) == 8 and result["mean_turns"] == 2.0
    assert abs(result["kl"]) < 1e-4  # the policy against itself
    truth = OpinionMatchReward()
    sample = result["samples"][0]
    expected = truth.score([""], [sample["messages"][-1]["content"]], messages=[sample["messages"]])[0]
    assert sample["score"] == pytest.approx(expected)


def test_scenarios_are_balanced_between_the_two_opinions():
    opinions = [s["opinion"] for s in dialogue_scenarios(64)]
    assert opinions.count(1) == opinions.count(-1) == 32
    assert all(stated_opinion([{"role": "user", "content": s["prompt"]}]) == s["opinion"]
               for s in dialogue_scenarios(64))


def test_vector_env_opens_the_scenarios_asked_for_and_refuses_bad_indices(policy):
    from rlhf_gym.envs.dialogue import DialogueVectorEnv

    env = DialogueVectorEnv(num_envs=3, setup=make_env(policy).unwrapped.setup)
    _, info = env.reset(seed=0, options={"scenario_index": [5, 5, 2]})
    assert info["scenario_index"].tolist() == [5, 5, 2]
    for bad in ([5, 5], [0, 1, 16], [-1, 0, 0]):
        with pytest.raises(ValueError, match="scenario_index"):
            env.reset(options={"scenario_index": bad})


def test_a_conversation_longer_than_the_model_handles_is_a_clear_error(policy):
    long_opening = [{"prompt": "I loved the movie. " + "It was long. " * 40, "follow_ups": ["Review it."], "opinion": 1}]
    env = make_env(policy, max_context_tokens=200, scenarios=long_opening)  # the tiny GPT-2 has 128 positions
    worker = EpisodeWorker(env, policy, num_prompts=1)  # short conversations would fit: no error up front
    with pytest.raises(ConfigError, match="max_context_tokens=122 or fewer"):
        worker.collect()


@pytest.mark.parametrize("name", ["rloo", "ppo"])
def test_training_on_episodes_resumes_the_same_curve(random_model_path, tmp_path, name):
    env = make_env(Policy.from_pretrained(random_model_path))
    config = {"num_prompts": 2, "beta": 0.1, "seed": 3, "learning_rate": 1e-3,
              **({"group_size": 2} if name == "rloo" else {"minibatch_size": 4, "ppo_epochs": 1})}

    def fresh():
        return rlhf_gym.make_algorithm(name, env=env, policy=Policy.from_pretrained(random_model_path), **config)

    def point(m):
        return (m["objective/scores"], m["objective/kl"], m["loss/policy_avg"])

    curve: list = []
    fresh().learn(3, callback=lambda algo, m: curve.append(point(m)), progress_bar=False)
    resumed: list = []
    first = fresh()
    first.learn(2, callback=lambda algo, m: resumed.append(point(m)), progress_bar=False)
    first.save(tmp_path / "ckpt")
    second = type(first).load(tmp_path / "ckpt", env=env)
    second.learn(3, callback=lambda algo, m: resumed.append(point(m)), progress_bar=False)
    assert resumed == curve


def test_evaluate_plays_whole_conversations_on_a_dialogue_env_and_can_use_another_judge(policy):
    from rlhf_gym.rollout import evaluate

    env = make_env(policy)
    result = evaluate(policy, env, num_samples=4, batch_size=4, seed=1)
    assert result["mean_turns"] == 2.0 and len(result["samples"]) == 4
    assert result["samples"][0]["completion"].strip() == result["samples"][0]["messages"][-1]["content"]
    judged = evaluate(policy, env, num_samples=4, batch_size=4, seed=1,
                      reward=lambda prompts, completions, **kw: [float(len(kw["messages"][i])) for i in
                                                                 range(len(completions))])
    assert judged["scores"] == [4.0] * 4  # the judge saw each whole conversation


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")  # token ids are not a control signal
@pytest.mark.parametrize("history", ["all", "last"])
def test_the_demo_task_has_its_own_id_and_vector_env(policy, history):
    env = gym.make("rlhf_gym/OpinionDialogue-v0", tokenizer=policy.tokenizer, vocab_size=policy.vocab_size,
                   history=history, max_new_tokens=6)
    obs, info = env.reset(seed=0)
    assert info["messages"][0]["role"] == "user" and stated_opinion(info["messages"]) in (1, -1)
    check_env(env.unwrapped, skip_render_check=True)
    vec = gym.make_vec("rlhf_gym/OpinionDialogue-v0", num_envs=3, vectorization_mode="vector_entry_point",
                       tokenizer=policy.tokenizer, vocab_size=policy.vocab_size, history=history, max_new_tokens=6)
    batch = EpisodeWorker(vec, policy, num_prompts=3, seed=0).collect()
    review_prompts = [p for p, t in zip(batch.prompts, batch.turn.tolist()) if t == 1]
    assert all(("loved" in p or "hated" in p) == (history == "all") for p in review_prompts)
