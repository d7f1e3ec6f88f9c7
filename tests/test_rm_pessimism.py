"""Randomized prior functions for reward-model ensembles: each member adds a frozen random network, so the
members disagree away from their training data and a pessimistic reward has something to pay for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlhf_gym
from rlhf_gym.errors import ConfigError
from rlhf_gym.reward_model import RewardModel, RewardModelConfig, RewardModelError, train_reward_model
from rlhf_gym.rm_priors import PRIOR_FILE, PriorMember
from rlhf_gym.tiny import random_tiny_model

PAIRS = [
    {"prompt": "The movie was", "chosen": " wonderful and moving.", "rejected": " dull and awful."},
    {"prompt": "The acting was", "chosen": " brilliant.", "rejected": " terrible, I hated it."},
    {"prompt": "The script", "chosen": " was clever and funny.", "rejected": " was a boring mess."},
    {"prompt": "The music", "chosen": " was beautiful.", "rejected": " was painfully bad."},
] * 4
#: texts nothing like the training completions: what an exploiting policy writes
OFF_DATA = [" the the the the the the the the", " !!!!!!!!!!!!", " plot plot plot music acting script",
            " wonderful wonderful wonderful wonderful wonderful", " 12 34 56 78 90", " ????", " and and and and"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    return random_tiny_model(tmp_path_factory.mktemp("rm") / "backbone", n_layer=2, n_embd=64, n_head=2)


def train(backbone: str, out: Path | None, **config):
    settings = {"backbone": backbone, "ensemble_size": 3, "epochs": 3, "batch_size": 8, "eval_fraction": 0.0,
                "seed": 0, **config}
    return train_reward_model(PAIRS, settings, out, progress=False)


@pytest.fixture(scope="module")
def with_priors(backbone: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[RewardModel, Path]:
    out = tmp_path_factory.mktemp("rm") / "priors"
    model, _ = train(backbone, out, prior_scale=1.0)
    return model, out


def test_each_member_has_its_own_frozen_standardised_prior(with_priors, backbone: str) -> None:
    model, _ = with_priors
    assert all(isinstance(m, PriorMember) for m in model.members)
    for member in model.members:
        assert not any(p.requires_grad for p in member.prior.parameters())
        assert member.scale == 1.0
    # the priors are different random networks, and none is the pre-trained backbone
    firsts = [next(m.prior.parameters()).detach().flatten()[:50] for m in model.members]
    assert not torch.allclose(firsts[0], firsts[1]) and not torch.allclose(firsts[1], firsts[2])
    trunk = next(model.members[0].model.parameters()).detach().flatten()[:50]
    assert not torch.allclose(firsts[0], trunk)
    # standardised over the training completions: mean 0, std 1 there
    texts = [p["chosen"] for p in PAIRS] + [p["rejected"] for p in PAIRS]
    enc = model.encode([p["prompt"] for p in PAIRS] * 2, texts)
    standard = model.members[0].prior_rewards(enc["input_ids"], enc["attention_mask"])
    assert float(standard.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(standard.std()) == pytest.approx(1.0, rel=1e-3)


def test_training_leaves_the_priors_as_drawn(backbone: str) -> None:
    one, _ = train(backbone, None, prior_scale=1.0, epochs=1)
    three, _ = train(backbone, None, prior_scale=1.0, epochs=3)
    for a, b in zip(one.members, three.members):
        for pa, pb in zip(a.prior.parameters(), b.prior.parameters()):
            assert torch.equal(pa, pb)
    changed = [not torch.equal(pa, pb) for pa, pb in zip(one.members[0].model.parameters(),
                                                         three.members[0].model.parameters())]
    assert any(changed)


def test_priors_make_members_disagree_more_off_the_data_than_on_it(with_priors, backbone: str) -> None:
    plain, _ = train(backbone, None)
    model, _ = with_priors
    prompts = ["The movie was"] * len(OFF_DATA)
    on_prompts = [p["prompt"] for p in PAIRS[:4]] * 2
    on_texts = [p["chosen"] for p in PAIRS[:4]] + [p["rejected"] for p in PAIRS[:4]]
    ratios = {}
    for name, rm in (("plain", plain), ("priors", model)):
        off = float(rm.score_texts(prompts, OFF_DATA)[1].mean())
        on = float(rm.score_texts(on_prompts, on_texts)[1].mean())
        ratios[name] = off, on
    assert ratios["priors"][0] > 2 * ratios["plain"][0], ratios
    assert ratios["priors"][0] > ratios["priors"][1], ratios  # the fit cancels the priors where the data is


def test_priors_save_and_load_to_identical_scores(with_priors) -> None:
    model, out = with_priors
    for i in range(3):
        assert (out / f"member-{i}" / "prior" / "config.json").is_file()
        assert json.loads((out / f"member-{i}" / PRIOR_FILE).read_text())["scale"] == 1.0
    loaded = RewardModel.from_pretrained(out)
    assert all(isinstance(m, PriorMember) for m in loaded.members)
    texts = [p["chosen"] for p in PAIRS[:4]] + OFF_DATA
    prompts = ["The movie was"] * len(texts)
    assert torch.allclose(model.member_rewards(prompts, texts), loaded.member_rewards(prompts, texts), atol=1e-5)
    provider = rlhf_gym.make_reward("learned-rm", path=str(out), conservative="min")
    scores = provider.score(prompts, texts)
    assert scores == pytest.approx(model.member_rewards(prompts, texts).min(0).values.tolist(), abs=1e-5)


def test_scalar_head_members_take_priors_and_round_trip(backbone: str, tmp_path: Path) -> None:
    model, _ = train(backbone, tmp_path / "rm", prior_scale=0.5, pooling="mean", ensemble_size=2)
    assert model.member_kind() == "scalar-head"
    member = model.members[0]
    assert not torch.equal(member.prior.head.weight, member.model.head.weight)
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    assert isinstance(loaded.members[1], PriorMember) and loaded.members[1].scale == 0.5
    prompts = ["The movie was"] * len(OFF_DATA)
    assert torch.allclose(model.member_rewards(prompts, OFF_DATA), loaded.member_rewards(prompts, OFF_DATA),
                          atol=1e-5)


@pytest.mark.parametrize("damage", ["{not json", "{}", '{"scale": "x", "mean": 0, "std": 1}'])
def test_a_damaged_prior_file_is_one_clear_error(with_priors, tmp_path: Path, damage: str) -> None:
    import shutil

    _, out = with_priors
    copy = tmp_path / "rm"
    shutil.copytree(out, copy)
    (copy / "member-1" / PRIOR_FILE).write_text(damage)
    with pytest.raises(RewardModelError, match="prior.json is damaged"):
        RewardModel.from_pretrained(copy)


@pytest.mark.parametrize("scale", [-0.5, float("nan"), float("inf")])
def test_prior_scale_must_be_a_finite_non_negative_number(scale: float) -> None:
    with pytest.raises(ConfigError, match="prior_scale"):
        RewardModelConfig(backbone="x", prior_scale=scale)


# -- paying only for disagreement beyond the training completions' ---------------------------------------------------


def test_combine_members_pays_only_for_std_above_the_baseline() -> None:
    from rlhf_gym.reward_model import combine_members

    rewards = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]])  # std: 1.414, 0, 0
    score, mean, std = combine_members(rewards, "mean-std", lam=2.0, baseline_std=1.0)
    assert score.tolist() == pytest.approx([2.0 - 2.0 * (2 ** 0.5 - 1.0), 0.0, 2.0])
    assert combine_members(rewards, "mean-std", lam=2.0, baseline_std=5.0)[0].tolist() == pytest.approx(mean.tolist())
    assert combine_members(rewards, "mean-std", lam=2.0)[0].tolist() == pytest.approx((mean - 2 * std).tolist())


def test_excess_penalty_uses_the_std_recorded_on_training_completions(with_priors) -> None:
    model, out = with_priors
    card = json.loads((out / "rm_card.json").read_text())
    baseline = card["calibration"]["member_std"]
    assert baseline > 0
    provider = rlhf_gym.make_reward("learned-rm", path=str(out), conservative="mean-std", lam=3.0, penalise="excess")
    prompts = ["The movie was"] * len(OFF_DATA)
    members = model.member_rewards(prompts, OFF_DATA).double()
    expected = members.mean(0) - 3.0 * (members.std(0) - baseline).clamp(min=0)
    assert provider.score(prompts, OFF_DATA) == pytest.approx(expected.tolist(), abs=1e-5)
    state = provider.state_dict()
    assert state["penalise"] == "excess" and state["baseline_std"] == pytest.approx(baseline)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"conservative": "mean-std", "penalise": "most"}, "penalise mode"),
    ({"conservative": "min", "penalise": "excess"}, "only with conservative='mean-std'"),
    ({"penalise": "excess"}, "only with conservative='mean-std'"),
])
def test_penalise_is_checked(with_priors, kwargs, match) -> None:
    _, out = with_priors
    with pytest.raises(ConfigError, match=match):
        rlhf_gym.make_reward("learned-rm", path=str(out), **kwargs)


def test_excess_penalty_on_a_model_without_the_recorded_std_says_to_retrain(with_priors, tmp_path: Path) -> None:
    import shutil

    _, out = with_priors
    copy = tmp_path / "rm"
    shutil.copytree(out, copy)
    card = json.loads((copy / "rm_card.json").read_text())
    del card["calibration"]["member_std"]
    (copy / "rm_card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="retrain it"):
        rlhf_gym.make_reward("learned-rm", path=str(copy), conservative="mean-std", penalise="excess")
