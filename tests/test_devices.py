"""Devices and precision: one clear error for a device or dtype that cannot be had, float32 master weights with
autocast forwards, a reference in its own dtype, LoRA bases stored low, and float16's loss scaler (skipped steps
reported, its state checkpointed)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
import torch

import rlhf_gym
from rlhf_gym import tiny
from rlhf_gym.devices import autocast, make_grad_scaler, resolve_device, resolve_dtype
from rlhf_gym.errors import ConfigError
from rlhf_gym.policy import Policy

warnings.filterwarnings("ignore", message=".*requires_grad.*")

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def length_reward(prompts, completions, **kw):
    return [len(c) / 10.0 for c in completions]


@pytest.fixture
def policy(random_model_path):
    return Policy.from_pretrained(random_model_path)


def make_env(policy):
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(8),
                    reward=length_reward, max_new_tokens=5, max_prompt_tokens=8, vocab_size=policy.vocab_size)


def demos(n: int = 8) -> list[dict[str, str]]:
    return [{"prompt": f"Review {i}:", "completion": " a fine film with a good cast"} for i in range(n)]


# -- resolving names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["meta", "gpu", "tpu", "cuda:x", "cpu:0", "", "xla"])
def test_unknown_devices_fail_with_the_valid_choices(spec):
    with pytest.raises(ConfigError, match=r"valid: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"):
        resolve_device(spec)


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", "CUDA"])
def test_cuda_on_a_machine_without_it_says_so_and_what_to_use(spec):
    with pytest.raises(ConfigError, match="no CUDA GPU.*device='cpu' or 'auto'"):
        resolve_device(spec)


@no_cuda
def test_auto_picks_the_cpu_here_and_cpu_is_cpu():
    if torch.backends.mps.is_available():
        pytest.skip("auto picks MPS on this machine")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device(" cpu ") == torch.device("cpu")


@pytest.mark.parametrize(("spec", "dtype"), [("float32", torch.float32), ("bf16", torch.bfloat16),
                                              ("torch.float16", torch.float16), (torch.bfloat16, torch.bfloat16),
                                              (None, torch.float32)])
def test_dtype_names(spec, dtype):
    assert resolve_dtype(spec) is dtype


@pytest.mark.parametrize("spec", ["int8", "float64", torch.float64, "bfloat", "fp8"])
def test_unknown_dtypes_fail_with_the_valid_choices(spec):
    with pytest.raises(ConfigError, match="valid: float32, bfloat16, float16"):
        resolve_dtype(spec)


@no_cuda
@pytest.mark.parametrize("bad", [{"device": "cuda"}, {"device": "meta"}, {"dtype": "int8"},
                                 {"reference_device": "cuda:1"}, {"reference_dtype": "float64"}])
def test_algorithms_reject_devices_and_dtypes_they_cannot_have(bad, policy):
    with pytest.raises(ConfigError, match="valid|no CUDA"):
        rlhf_gym.make_algorithm("ppo", env=make_env(policy), policy=policy, num_prompts=2, **bad)


# -- where weights go ---------------------------------------------------------------------------------------------
def test_defaults_keep_float32_on_the_cpu(policy):
    algo = rlhf_gym.make_algorithm("ppo", env=make_env(policy), policy=policy, num_prompts=2, beta=0.1)
    assert algo.device == torch.device("cpu") and algo.dtype is torch.float32
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert {p.device.type for p in list(policy.parameters()) + list(policy.buffers())} == {"cpu"}
    assert policy.compute_dtype is torch.float32 and not algo.scaler.is_enabled()
    assert {p.dtype for p in algo.reference.model.parameters()} == {torch.float32}
    metrics = algo.train_step()
    assert not any(k.startswith("precision/") for k in metrics)


def test_bfloat16_training_keeps_float32_master_weights_and_a_bfloat16_reference(policy):
    buffers = {name: b.dtype for name, b in policy.named_buffers()}
    algo = rlhf_gym.make_algorithm("ppo", env=make_env(policy), policy=policy, num_prompts=4, beta=0.1,
                                   dtype="bfloat16", minibatch_size=4, ppo_epochs=1)
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # what AdamW updates
    assert {name: b.dtype for name, b in policy.named_buffers()} == buffers  # e.g. rotary tables are left alone
    assert policy.compute_dtype is torch.bfloat16
    assert {p.dtype for p in algo.reference.model.parameters()} == {torch.bfloat16}
    batch = algo.collect(with_values=True)
    assert batch.logprobs.dtype is batch.values.dtype is batch.kl.dtype is torch.float32
    assert batch.ref_logprobs.dtype is torch.float32
    # The forward really runs in bfloat16: its log-probs differ from float32's by bfloat16 rounding, not more.
    r = batch.rollout
    args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    with torch.no_grad():
        low = policy(*args).logprobs
        policy.compute_dtype = torch.float32
        full = policy(*args).logprobs
        policy.compute_dtype = torch.bfloat16
    gap = (low - full).abs().max()
    assert 0 < gap < 0.5
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = algo.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert {p.dtype for p in policy.parameters()} == {torch.float32}


def test_reference_in_its_own_dtype_stays_put_when_the_policy_changes(policy):
    algo = rlhf_gym.make_algorithm("rloo", env=make_env(policy), policy=policy, num_prompts=2, group_size=2,
                                   beta=0.1, reference_dtype="bfloat16")
    ref = algo.reference
    assert policy.compute_dtype is torch.float32
    assert {p.dtype for p in ref.model.parameters()} == {torch.bfloat16} and ref.dtype is torch.bfloat16
    policy.double()
    assert {p.dtype for p in ref.model.parameters()} == {torch.bfloat16}  # pinned: it does not follow
    policy.float()
    batch = algo.collect()
    # The bf16 reference starts equal to the policy up to its rounding: a small, nonzero KL.
    per_token = (batch.logprobs - batch.ref_logprobs)[batch.mask.bool()]
    assert 0 < per_token.abs().max() < 0.5


def test_a_reference_copy_without_a_place_of_its_own_follows_the_policy(policy):
    ref = policy.reference()
    policy.place(dtype="bfloat16")
    assert {p.dtype for p in ref.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}


def test_lora_base_is_stored_low_and_the_adapter_trains_in_float32(random_model_path, monkeypatch):
    policy = Policy.from_pretrained(random_model_path, lora={"r": 4}, dtype="bfloat16", value_head=False)
    algo = rlhf_gym.make_algorithm("rloo", env=make_env(policy), policy=policy, num_prompts=2, group_size=2,
                                   beta=0.1, dtype="bfloat16")
    trainable = {n: p.dtype for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in policy.parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    assert frozen == {torch.bfloat16}
    assert algo.reference.adapter_disabled
    adapter = [p.detach().clone() for p in policy.parameters() if p.requires_grad]
    algo.train_step()
    assert any(not torch.equal(a, p) for a, p in zip(adapter, (p for p in policy.parameters() if p.requires_grad)))

    # The reference of a LoRA policy is its own base: it cannot go to another device (a second GPU, say).
    lora = Policy.from_pretrained(random_model_path, lora={"r": 4})
    monkeypatch.setattr("rlhf_gym.policy.resolve_device", lambda spec: torch.device("cuda", 1))
    with pytest.raises(ConfigError, match="LoRA policy's reference is its own base model"):
        lora.reference(device="cuda:1")


# -- float16 and its loss scaler ----------------------------------------------------------------------------------
def _cpu_float16_works() -> bool:
    try:
        layer = torch.nn.Linear(2, 2)
        with autocast("cpu", torch.float16):
            layer(torch.ones(1, 2)).sum().backward()
        return make_grad_scaler("cpu", torch.float16).is_enabled()
    except (RuntimeError, TypeError):
        return False


needs_cpu_fp16 = pytest.mark.skipif(not _cpu_float16_works(), reason="this torch has no float16 autocast on CPU")


@needs_cpu_fp16
def test_float16_scales_the_loss_and_skips_steps_with_inf_gradients(policy, tmp_path):
    algo = rlhf_gym.make_algorithm("sft", policy=policy, dataset=demos(), dtype="float16", batch_size=4,
                                   learning_rate=1e-3, max_prompt_tokens=8, max_completion_tokens=8)
    assert algo.scaler.is_enabled()
    scales = [algo.scaler.get_scale()]
    seen = []
    weights = [p.detach().clone() for p in policy.parameters()]
    algo.learn(4, callback=lambda a, m: seen.append(dict(m)), progress_bar=False)
    # The scale starts high (2^16) and halves on each overflowing step, which is skipped and reported as such.
    scales += [m["precision/loss_scale"] for m in seen]
    backed_off = [float(after < before) for before, after in zip(scales, scales[1:])]
    assert [m["precision/skipped_steps"] for m in seen] == backed_off
    assert algo.skipped_steps == sum(backed_off) < 4
    assert all(torch.isfinite(torch.tensor(m["loss/sft"])) for m in seen)
    assert any(not torch.equal(a, b) for a, b in zip(weights, policy.parameters()))

    # Losses whose gradients overflow: the steps are skipped, weights untouched, the scale backs off each time.
    weights = [p.detach().clone() for p in policy.parameters()]
    skipped, scale = algo.skipped_steps, algo.scaler.get_scale()
    for poison in (float("inf"), float("nan")):
        out = policy(*_one_demo(algo))
        algo.clip_and_step(out.logprobs.sum() * poison)
    assert algo.skipped_steps == skipped + 2
    assert all(torch.equal(a, b) for a, b in zip(weights, policy.parameters()))
    assert algo.scaler.get_scale() == scale / 4
    start_scale = scale
    # The scaler's state travels with the checkpoint.
    algo.save(tmp_path / "ckpt")
    again = type(algo).load(tmp_path / "ckpt", dataset=demos())
    assert again.scaler.get_scale() == start_scale / 4


def _one_demo(algo):
    data = algo.data
    return (data.prompt_ids[:2], data.prompt_mask[:2], data.completion_ids[:2], data.completion_mask[:2])


# -- the learned reward model and the SB3 policy ------------------------------------------------------------------
@pytest.fixture
def reward_model_dir(random_model_path, tmp_path):
    from transformers import AutoTokenizer

    from rlhf_gym.reward_model import RewardModel, RewardModelConfig, _new_member

    tokenizer = AutoTokenizer.from_pretrained(random_model_path)
    member = _new_member(random_model_path, RewardModelConfig(backbone=random_model_path), tokenizer.pad_token_id, 0)
    RewardModel([member], tokenizer, max_length=32).save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def test_learned_rm_scores_in_its_own_dtype_on_its_own_device(reward_model_dir):
    prompts, completions = ["The film was"] * 4, [" great", " awful and long", " fine.", " a mess"]
    full = rlhf_gym.make_reward("learned-rm", path=reward_model_dir, device="cpu")
    low = rlhf_gym.make_reward("learned-rm", path=reward_model_dir, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    exact, rounded = full.score(prompts, completions), low.score(prompts, completions)
    assert all(isinstance(s, float) for s in rounded)
    assert max(abs(a - b) for a, b in zip(exact, rounded)) < 0.1 * (max(exact) - min(exact)) + 1e-3
    assert exact != rounded  # it really ran in bfloat16


@no_cuda
@pytest.mark.parametrize(("kwargs", "match"), [({"device": "cuda"}, "no CUDA"), ({"device": "meta"}, "valid:"),
                                               ({"dtype": "int4"}, "valid: float32")])
def test_learned_rm_rejects_a_device_or_dtype_it_cannot_have(reward_model_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        rlhf_gym.make_reward("learned-rm", path=reward_model_dir, **kwargs)


def test_sb3_policy_runs_its_trunk_in_bfloat16_and_refuses_float16(policy):
    from stable_baselines3 import PPO

    from rlhf_gym.sb3 import make_sb3_env

    env = make_sb3_env(n_envs=2, tokenizer=policy.tokenizer, prompts=tiny.review_prompts(4), reward=length_reward,
                       max_new_tokens=4, max_prompt_tokens=8, vocab_size=policy.vocab_size)
    model = PPO("CausalLMPolicy", env, policy_kwargs={"model": policy, "dtype": "bfloat16"}, n_steps=4,
                batch_size=8, n_epochs=1, device="cpu")
    assert policy.compute_dtype is torch.bfloat16
    assert {p.dtype for p in model.policy.parameters()} == {torch.float32}
    obs = model.env.reset()
    with torch.no_grad():
        features = model.policy.extract_features(model.policy.obs_to_tensor(obs)[0])
        policy.compute_dtype = torch.float32
        exact = model.policy.extract_features(model.policy.obs_to_tensor(obs)[0])
        policy.compute_dtype = torch.bfloat16
    assert features.dtype is torch.float32
    assert 0 < (features - exact).abs().max() < 0.1 * exact.abs().max()
    model.learn(8)
    with pytest.raises(ConfigError, match="no loss scaler"):
        PPO("CausalLMPolicy", env, policy_kwargs={"model": policy, "dtype": "float16"}, device="cpu")


# -- learning in bfloat16 -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bfloat16_rloo_on_the_cpu_still_raises_the_ground_truth(tiny_kit):
    """The demo's setup (the tiny kit's pre-trained review policy, the noisy simulated human, VADER as the ground
    truth) trained in bfloat16. Measured: +0.50 after 30 updates (0.110 → 0.611); float32 reaches +0.57 after 40
    (the same +0.3 bar holds it in test_learning.py), bfloat16 +0.58 after 40."""
    from rlhf_gym.rollout import evaluate

    start = Policy.from_pretrained(tiny_kit.path, value_head=False)
    policy = Policy.from_pretrained(tiny_kit.path)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(),
                   reward="simulated-human", reward_kwargs={"preset": "noisy"}, max_new_tokens=24,
                   max_prompt_tokens=16, vocab_size=policy.vocab_size)
    before = evaluate(start, env, num_samples=128, reward="sentiment", seed=7)
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=policy, seed=0, dtype="bfloat16", num_prompts=16,
                                   group_size=4, learning_rate=2e-4, beta=0.05)
    assert algo.reference.dtype is torch.bfloat16
    algo.learn(30, progress_bar=False)
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    after = evaluate(policy, env, num_samples=128, reward="sentiment", seed=7, reference=start)
    assert after["mean"] - before["mean"] >= 0.3, (before["mean"], after["mean"], after["kl"])
    assert after["kl"] < 5
