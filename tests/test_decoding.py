"""Tests of the fast sampler: the static-cache GPT-2 decoder, CDF-inversion token draws and fused activations.

The decoder must be an exact stand-in for the model's own forward (same tokens from the same generator, log-probs
to float rounding), on left-padded batches, with LoRA, and with every way a generation can end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from rlhf_gym.decoding import (
    StaticGPT2Decoder,
    StaticLlamaDecoder,
    TanhGELU,
    fuse_activations,
    sample_tokens,
    static_decoder_for,
)
from rlhf_gym.policy import Policy

PROMPTS = ["the movie", "the food was great and the service", "bad", "a long and slow film about the"]


@pytest.fixture
def model_dir(random_model_path: str) -> Path:
    return Path(random_model_path)


def _both_paths(policy: Policy, seed: int = 0, **kwargs: object) -> tuple[object, object]:
    ids, mask = policy.tokenize_prompts(PROMPTS, max_prompt_tokens=12)
    results = []
    for fast in (True, False):
        policy.fast_decoding = fast
        generator = torch.Generator().manual_seed(seed)  # the same draws on both paths
        results.append(policy.generate(ids, mask, generator=generator, **kwargs))  # type: ignore[arg-type]
    policy.fast_decoding = True
    return results[0], results[1]


# ---------------------------------------------------------------------- token draws


def test_sample_tokens_follows_the_softmax_and_never_draws_masked_tokens() -> None:
    logits = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0]]).repeat(200_000, 1)
    draws = sample_tokens(logits, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=5).double() / draws.numel()
    expected = logits[0].double().softmax(-1)
    assert frequencies[2] == 0.0
    # 200k draws: the standard error of each frequency is below 0.0011; 0.005 is > 4 sigma.
    assert torch.allclose(frequencies, expected, atol=0.005), (frequencies, expected)


def test_sample_tokens_is_reproducible_from_the_generator_and_in_range() -> None:
    logits = torch.randn(64, 300)
    first = sample_tokens(logits, torch.Generator().manual_seed(3))
    again = sample_tokens(logits, torch.Generator().manual_seed(3))
    other = sample_tokens(logits, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.dtype == torch.long and first.shape == (64,)
    assert int(first.min()) >= 0 and int(first.max()) < 300


def test_sample_tokens_with_one_allowed_token_always_draws_it() -> None:
    logits = torch.full((32, 50), float("-inf"))
    logits[:, 17] = 0.0
    assert torch.equal(sample_tokens(logits, torch.Generator().manual_seed(0)), torch.full((32,), 17))


def test_sample_tokens_refuses_nan_logits_with_advice() -> None:
    logits = torch.randn(4, 10)
    logits[2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="diverged.*learning rate"):
        sample_tokens(logits)
    with pytest.raises(FloatingPointError, match="filtered out"):
        sample_tokens(torch.full((2, 5), float("-inf")))


# ---------------------------------------------------------------------- fused activations


def test_fused_activation_is_gelu_new_to_float_rounding(model_dir: Path) -> None:
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    fused = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    keys = set(fused.state_dict())
    assert fuse_activations(fused) == plain.config.n_layer
    assert fuse_activations(fused) == 0  # idempotent
    assert all(isinstance(block.mlp.act, TanhGELU) for block in fused.transformer.h)
    assert set(fused.state_dict()) == keys
    ids = torch.randint(0, 1000, (3, 20))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, fused(ids).logits, atol=1e-5)


def test_policy_fuses_unless_asked_not_to(model_dir: Path) -> None:
    assert isinstance(Policy.from_pretrained(model_dir).model.transformer.h[0].mlp.act, TanhGELU)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    kept = Policy(model, Policy.from_pretrained(model_dir).tokenizer, fused_activations=False)
    assert type(kept.model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"


# ---------------------------------------------------------------------- static-cache decoder


SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
#: Llama-style models the static decoder reproduces: grouped-query attention, biases (Qwen2), q/k norms (Qwen3)
LLAMA_STYLE = {
    "llama": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2}),
    "mistral": (MistralConfig, MistralForCausalLM, {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"num_key_value_heads": 2}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"num_key_value_heads": 1, "head_dim": 16}),
}


def _saved(tmp_path: Path, model_dir: Path, config_cls: type, model_cls: type, extra: dict) -> Path:
    """A random-init model of ``model_cls`` with the test tokenizer, saved for ``Policy.from_pretrained``."""
    tokenizer = Policy.from_pretrained(model_dir).tokenizer
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **{**SMALL, **extra})
    model_cls(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_each_decoder_takes_only_the_architectures_it_reproduces(model_dir: Path) -> None:
    gpt2 = Policy.from_pretrained(model_dir)._trunk
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, **SMALL)).model
    assert StaticGPT2Decoder.supports(gpt2, 64) and not StaticGPT2Decoder.supports(llama, 64)
    assert StaticLlamaDecoder.supports(llama, 64) and not StaticLlamaDecoder.supports(gpt2, 64)
    # a sliding window shorter than the call changes the attention: the model's own forward must run it
    windowed = MistralForCausalLM(MistralConfig(vocab_size=64, sliding_window=16, **SMALL)).model
    assert StaticLlamaDecoder.supports(windowed, 16) and not StaticLlamaDecoder.supports(windowed, 17)
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, **SMALL)).gpt_neox
    assert static_decoder_for(neox, 2, 8, torch.ones(2, 8)) is None


@pytest.mark.parametrize("arch", sorted(LLAMA_STYLE))
def test_llama_style_fast_path_matches_the_model_forward(arch: str, model_dir: Path, tmp_path: Path) -> None:
    config_cls, model_cls, extra = LLAMA_STYLE[arch]
    policy = Policy.from_pretrained(_saved(tmp_path, model_dir, config_cls, model_cls, extra))
    assert static_decoder_for(policy._trunk, 4, 32, torch.ones(4, 32)) is not None
    fast, generic = _both_paths(policy, seed=5, max_new_tokens=16, return_logprobs=True)
    assert torch.equal(fast.completion_ids, generic.completion_ids)  # type: ignore[attr-defined]
    assert torch.allclose(fast.logprobs, generic.logprobs, atol=1e-5)  # type: ignore[attr-defined]
    ids, mask = policy.tokenize_prompts(PROMPTS, max_prompt_tokens=12)
    with torch.no_grad():
        scored = policy(ids, mask, fast.completion_ids, fast.completion_mask).logprobs  # type: ignore[attr-defined]
    assert torch.allclose(fast.logprobs, scored, atol=1e-4)  # type: ignore[attr-defined]


def test_fast_and_generic_paths_sample_the_same_tokens(model_dir: Path) -> None:
    policy = Policy.from_pretrained(model_dir)
    fast, generic = _both_paths(policy, seed=11, max_new_tokens=20,
                                return_logprobs=True, top_p=0.95)
    assert torch.equal(fast.completion_ids, generic.completion_ids)  # type: ignore[attr-defined]
    assert torch.equal(fast.completion_mask, generic.completion_mask)  # type: ignore[attr-defined]
    assert torch.allclose(fast.logprobs, generic.logprobs, atol=1e-5)  # type: ignore[attr-defined]


def test_fast_path_greedy_equals_hf_generate_with_left_padding(model_dir: Path) -> None:
    policy = Policy.from_pretrained(model_dir)
    ids, mask = policy.tokenize_prompts(PROMPTS, max_prompt_tokens=12)
    assert int(mask.sum(1).min()) < ids.shape[1]  # some rows really are padded
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                 pad_token_id=policy.pad_token_id)[:, ids.shape[1]:]
    gen = policy.generate(ids, mask, 24, do_sample=False)
    assert torch.equal(gen.completion_ids, expected)


def test_fast_path_logprobs_match_one_full_forward_and_stay_finite(model_dir: Path) -> None:
    policy = Policy.from_pretrained(model_dir)
    ids, mask = policy.tokenize_prompts(PROMPTS, max_prompt_tokens=16)  # heavy left padding on short prompts
    gen = policy.generate(ids, mask, 16, return_logprobs=True, generator=torch.Generator().manual_seed(2))
    assert gen.logprobs is not None and bool(torch.isfinite(gen.logprobs).all())
    with torch.no_grad():
        scored = policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
    assert torch.allclose(gen.logprobs, scored, atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fast_path_with_lora_matches_the_generic_path(arch: str, model_dir: Path, tmp_path: Path) -> None:
    if arch == "gpt2":
        path, targets = model_dir, None  # peft's default for GPT-2: the fused c_attn
    else:
        path, targets = _saved(tmp_path, model_dir, *LLAMA_STYLE["llama"]), ["q_proj", "k_proj", "v_proj"]
    lora = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, "target_modules": targets}
    policy = Policy.from_pretrained(path, lora=lora)
    assert static_decoder_for(policy._trunk, 4, 64, torch.ones(4, 64)) is not None
    fast, generic = _both_paths(policy, max_new_tokens=12, do_sample=False, return_logprobs=True)
    assert torch.equal(fast.completion_ids, generic.completion_ids)  # type: ignore[attr-defined]
    assert torch.allclose(fast.logprobs, generic.logprobs, atol=1e-5)  # type: ignore[attr-defined]
    # ... and the adapter really is applied: the base model (adapter off) decodes differently.
    ids, mask = policy.tokenize_prompts(PROMPTS, max_prompt_tokens=12)
    with policy.model.disable_adapter():
        base = policy.generate(ids, mask, 12, do_sample=False, return_logprobs=True)
    assert not torch.allclose(base.logprobs, fast.logprobs, atol=1e-3)  # type: ignore[attr-defined]


def test_other_architectures_sample_through_their_own_forward(tmp_path: Path, model_dir: Path) -> None:
    policy = Policy.from_pretrained(_saved(tmp_path, model_dir, GPTNeoXConfig, GPTNeoXForCausalLM, {}))
    ids, mask = policy.tokenize_prompts(PROMPTS, max_prompt_tokens=12)
    gen = policy.generate(ids, mask, 10, do_sample=False, return_logprobs=True)
    with torch.no_grad():
        scored = policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
    assert torch.allclose(gen.logprobs, scored, atol=1e-4)  # type: ignore[arg-type]
