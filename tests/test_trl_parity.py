"""Numerics and calling conventions pinned against TRL's own code: the DPO losses (IPO's per-token average in
particular), and reward functions called the way TRL's trainers call them, TRL's shipped ones included."""

from __future__ import annotations

import collections
import json
import types
import warnings

import gymnasium as gym
import pytest
import torch

from rlhf_gym import tiny
from rlhf_gym.errors import ConfigError, RewardError
from rlhf_gym.losses import dpo_loss
from rlhf_gym.providers import CallableReward, as_provider

warnings.filterwarnings("ignore", message=".*requires_grad.*")
trl = pytest.importorskip("trl")


# -- DPO losses against DPOTrainer._compute_loss ---------------------------------------------------------------------


def _trl_dpo_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta, loss_type, label_smoothing=0.0):
    """TRL's DPOTrainer loss on given token log-probs: its real method, with the model and accelerator stubbed."""
    from trl.trainer.dpo_trainer import DPOTrainer

    n2, width = per_token_logps.shape
    outputs = types.SimpleNamespace(log_probs=per_token_logps, entropy=torch.zeros(n2, width),
                                    mean_logits=torch.zeros(n2, width),
                                    is_top1=torch.zeros(n2, width, dtype=torch.bool))
    accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False), accelerator=accelerator, ld_alpha=None, aux_loss_enabled=False,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, use_weighting=False, label_smoothing=label_smoothing, _total_train_tokens=0, _tp_size=1,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)))
    inputs = {"input_ids": torch.zeros(n2, width + 1, dtype=torch.long),
              "attention_mask": torch.ones(n2, width + 1, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, False)


def _random_pairs(seed: int, pairs: int = 6, width: int = 12):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * pairs, width + 1, dtype=torch.long)  # column 0 is the prompt's last token
    for i in range(2 * pairs):
        mask[i, 1 : 1 + int(torch.randint(1, width + 1, (1,), generator=g))] = 1
    logps = (-4 * torch.rand(2 * pairs, width, generator=g, dtype=torch.float64)) * mask[:, 1:]
    ref = -4 * torch.rand(2 * pairs, generator=g, dtype=torch.float64) * mask.sum(1)
    return mask, logps, ref


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid", "hinge"])
@pytest.mark.parametrize("beta", [0.05, 0.3, 2.0])
@pytest.mark.parametrize("seed", range(4))
def test_dpo_losses_and_gradients_match_trl(loss_type, beta, seed):
    mask, logps, ref = _random_pairs(seed)
    n = mask.shape[0] // 2
    theirs_in = logps.clone().requires_grad_(True)
    theirs = _trl_dpo_loss(theirs_in, mask, ref[:n], ref[n:], beta, loss_type)
    theirs.backward()
    ours_in = logps.clone().requires_grad_(True)
    seq = ours_in.sum(1)
    lengths = mask.sum(1)
    ours = dpo_loss(seq[:n], seq[n:], ref[:n], ref[n:], beta=beta, loss_type=loss_type,
                    chosen_lengths=lengths[:n], rejected_lengths=lengths[n:]).losses.mean()
    ours.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(ours_in.grad, theirs_in.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("label_smoothing", [0.05, 0.2, 0.4])
@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_conservative_dpo_matches_trls_label_smoothed_sigmoid(label_smoothing, beta, seed):
    """Conservative DPO, −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ): TRL's DPOTrainer computes it in its "aot" loss, which
    sorts the batch's log-ratios first, so one pair at a time the two are the same loss (its "sigmoid" no longer
    reads label_smoothing)."""
    mask, logps, ref = _random_pairs(seed, pairs=1)
    theirs_in = logps.clone().requires_grad_(True)
    theirs = _trl_dpo_loss(theirs_in, mask, ref[:1], ref[1:], beta, "aot", label_smoothing)
    theirs.backward()
    ours_in = logps.clone().requires_grad_(True)
    seq = ours_in.sum(1)
    ours = dpo_loss(seq[:1], seq[1:], ref[:1], ref[1:], beta=beta, label_smoothing=label_smoothing).losses.mean()
    ours.backward()
    plain = dpo_loss(seq[:1].detach(), seq[1:].detach(), ref[:1], ref[1:], beta=beta).losses.mean()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(ours_in.grad, theirs_in.grad, rtol=1e-9, atol=1e-12)
    assert abs(ours.item() - plain.item()) > 1e-6  # ε really changed the loss


def test_ipo_on_summed_log_probs_would_differ_from_trl():
    """Guards the test above: with unequal lengths the old summed form gives another number."""
    mask, logps, ref = _random_pairs(0)
    n = mask.shape[0] // 2
    theirs = _trl_dpo_loss(logps, mask, ref[:n], ref[n:], 0.3, "ipo").item()
    seq = logps.sum(1)
    delta = (seq[:n] - ref[:n]) - (seq[n:] - ref[n:])
    assert ((delta - 1 / 0.6) ** 2).mean().item() != pytest.approx(theirs, rel=1e-3)


def test_ipo_needs_the_completion_lengths():
    x = torch.zeros(2)
    with pytest.raises(ConfigError, match="chosen_lengths"):
        dpo_loss(x, x, x, x, loss_type="ipo")


def test_dpo_plugin_passes_token_counts_to_ipo(random_model_path, monkeypatch):
    import rlhf_gym_plugins.dpo as dpo_plugin

    from rlhf_gym.plugins import make_algorithm
    from rlhf_gym.policy import Policy

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return dpo_loss(*args, **kwargs)

    monkeypatch.setattr(dpo_plugin, "dpo_loss", spy)
    records = [{"prompt": "The film", "chosen": " was great fun and I loved it", "rejected": " bad"},
               {"prompt": "A movie", "chosen": " fine", "rejected": " dull and slow and far too long"}]
    policy = Policy.from_pretrained(random_model_path, value_head=False)
    algo = make_algorithm("dpo", policy=policy, dataset=records, loss_type="ipo", batch_size=2, seed=0)
    algo.learn(1, progress_bar=False)
    tok = policy.tokenizer
    chosen = sorted(len(tok(r["chosen"], add_special_tokens=False)["input_ids"]) for r in records)
    rejected = sorted(len(tok(r["rejected"], add_special_tokens=False)["input_ids"]) for r in records)
    # the completion mask covers the tokens and the appended EOS
    assert sorted(seen[0]["chosen_lengths"].tolist()) == [c + 1 for c in chosen]
    assert sorted(seen[0]["rejected_lengths"].tolist()) == [r + 1 for r in rejected]


# -- reward functions, called as TRL calls them ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def _env(tokenizer, reward, prompts=None, **kw):
    return gym.make("rlhf_gym/Completion-v0", tokenizer=tokenizer, prompts=prompts or tiny.review_prompts(4),
                    reward=reward, max_new_tokens=40, max_prompt_tokens=8, **kw)


def _step(env, text):
    env.reset(seed=0)
    _, reward, _, _, info = env.step(text)
    return reward, info


def test_trl_think_format_reward_works_as_a_provider(tokenizer):
    from trl.rewards import think_format_reward

    env = _env(tokenizer, think_format_reward)
    assert _step(env, "<think>hmm</think> yes")[0] == 1.0
    assert _step(env, "no thinking here")[0] == 0.0
    assert _step(env, "<think>unclosed")[0] == 0.0


@pytest.mark.parametrize("cache", [0, 2, 4])
def test_trl_soft_overlong_punishment_gets_completion_ids(tokenizer, cache):
    from trl.rewards import get_soft_overlong_punishment

    fn = get_soft_overlong_punishment(max_completion_len=6, soft_punish_cache=cache)
    env = _env(tokenizer, fn)
    for text in ["a", " great film", " a very long and boring film that never ends at all"]:
        reward, info = _step(env, text)
        ids = tokenizer(info["completion"], add_special_tokens=False)["input_ids"]
        assert reward == pytest.approx(fn(completion_ids=[ids])[0])
    long_reward, _ = _step(env, " a very long and boring film that never ends at all")
    assert long_reward == -1.0


def test_trl_repetition_penalty_reward_works_as_a_provider(tokenizer):
    from trl.rewards import get_repetition_penalty_reward

    fn = get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0)
    provider = as_provider(fn, tokenizer=tokenizer)
    scores = provider.score(["p", "p"], [" good good good good good", " a fine film"])
    assert scores[0] < scores[1] == 0.0


def test_trl_style_functions_get_keywords_and_dataset_columns(tokenizer, tmp_path):
    seen = {}

    def completions_only(completions, **kwargs):
        seen.update(kwargs)
        return [float(len(c)) for c in completions]

    def with_column(prompts, completions, solution, **kwargs):
        return [float(s in c) for c, s in zip(completions, solution)]

    def exact_names(completions, solution):  # no **kwargs: only what it names
        return [float(s in c) for c, s in zip(completions, solution)]

    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Review {i}:", "solution": "good"}) for i in range(3)) + "\n")
    env = _env(tokenizer, completions_only, prompts=str(path))
    reward, info = _step(env, " good stuff")
    assert reward == float(len(info["completion"]))
    assert set(seen) >= {"prompts", "completion_ids", "solution"} and seen["solution"] == ["good"]
    for fn in (with_column, exact_names):
        env = _env(tokenizer, fn, prompts=str(path))
        assert _step(env, " good stuff")[0] == 1.0
        assert _step(env, " bad stuff")[0] == 0.0


def test_positional_and_async_functions_still_work():
    assert CallableReward(lambda p, c, **kw: [len(p[0]) + len(c[0])]).score(["ab"], ["c"]) == [3]

    async def scorer(prompts, completions, **kwargs):
        return [1.5] * len(prompts)

    assert CallableReward(scorer).score(["a", "b"], ["c", "d"]) == [1.5, 1.5]


def test_missing_argument_names_what_is_available(tokenizer):
    def needs_solution(completions, solution, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ConfigError, match="'solution'.*completion_ids, completions, prompts"):
        CallableReward(needs_solution, tokenizer=tokenizer).score(["p"], ["c"])


@pytest.mark.parametrize("bad", [0.5, "0.5", {"a": 1}, None, [0.5, 0.5], [float("nan")]])
def test_a_function_returning_something_else_than_one_score_per_sample(tokenizer, bad):
    env = _env(tokenizer, lambda prompts, completions, **kw: bad)
    with pytest.raises(RewardError, match="<lambda>"):
        _step(env, " hi")


def test_trl_functions_inside_a_composite_get_completion_ids_too(tokenizer):
    from trl.rewards import get_soft_overlong_punishment, think_format_reward

    from rlhf_gym.providers import CompositeReward

    overlong = get_soft_overlong_punishment(max_completion_len=3, soft_punish_cache=1)
    env = _env(tokenizer, CompositeReward([(think_format_reward, 1.0), (overlong, 2.0)]))
    reward, info = _step(env, "<think>x</think> a long answer that goes on")
    assert reward == 1.0 + 2.0 * -1.0
