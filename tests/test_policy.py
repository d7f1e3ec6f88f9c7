"""Tests of the policy wrapper: cached sampling, one-forward token statistics, reference models, LoRA, saving.

Every test loads the random-init tiny GPT-2 checkpoint from ``conftest.py`` through ``from_pretrained``, as a real
checkpoint would be loaded; its head (1152) is wider than its tokenizer (1100), as real checkpoints' often are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    PretrainedConfig,
    T5Config,
)

from rlhf_gym.policy import Generation, ModelLoadError, Policy, position_ids_from_mask

PROMPTS = ["the movie", "the food was great and the service", "bad", "a long and slow film about the"]


@pytest.fixture
def model_dir(random_model_path: str) -> Path:
    """The shared random-init tiny GPT-2 checkpoint (tokenizer + weights) from ``conftest.py``."""
    return Path(random_model_path)


@pytest.fixture
def policy(model_dir: Path) -> Policy:
    return Policy.from_pretrained(model_dir)


def _batch(policy: Policy) -> tuple[torch.Tensor, torch.Tensor]:
    return policy.tokenize_prompts(PROMPTS, max_prompt_tokens=12)


def _full_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, gen: Generation) -> torch.Tensor:
    """Reference computation: every position's logits from the plain HF forward, sliced to the completion."""
    all_ids = torch.cat([ids, gen.completion_ids], 1)
    all_mask = torch.cat([mask, gen.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=all_ids, attention_mask=all_mask, position_ids=position_ids_from_mask(all_mask)).logits
    prompt_len, completion_len = ids.shape[1], gen.completion_ids.shape[1]
    return logits[:, prompt_len - 1 : prompt_len - 1 + completion_len].float()


# ---------------------------------------------------------------------- prompts and sampling


def test_prompts_are_left_padded_and_left_truncated(policy: Policy) -> None:
    ids, mask = policy.tokenize_prompts(["the movie", "a long and slow film about the sea"], max_prompt_tokens=4)
    full = policy.tokenizer("a long and slow film about the sea")["input_ids"]
    assert ids.shape == (2, 4)
    assert ids[1].tolist() == full[-4:]  # the end of a long prompt is kept
    short = policy.tokenizer("the movie")["input_ids"]
    assert mask[0].tolist() == [0] * (4 - len(short)) + [1] * len(short)
    assert ids[0, mask[0].bool()].tolist() == short
    assert (ids[0, ~mask[0].bool()] == policy.pad_token_id).all()


def test_cached_sampling_logprobs_equal_one_full_forward(policy: Policy) -> None:
    ids, mask = _batch(policy)
    assert (mask == 0).any(), "the batch must exercise left padding"
    gen = policy.generate(
        ids, mask, 24, temperature=0.7, top_k=50, generator=torch.Generator().manual_seed(0), return_logprobs=True
    )
    with torch.no_grad():
        stats = policy(ids, mask, gen.completion_ids, gen.completion_mask, temperature=0.7)
    assert gen.logprobs is not None
    torch.testing.assert_close(gen.logprobs, stats.logprobs, atol=1e-5, rtol=0)
    # ... and both equal the unfiltered distribution of a plain HF forward at that temperature.
    expected = torch.log_softmax(_full_logits(policy.model, ids, mask, gen) / 0.7, -1)
    expected = expected.gather(-1, gen.completion_ids.unsqueeze(-1)).squeeze(-1) * gen.completion_mask
    torch.testing.assert_close(stats.logprobs, expected, atol=1e-5, rtol=0)


def test_completion_mask_stops_at_first_eos_and_pads_follow(policy: Policy) -> None:
    # Make half of the vocabulary end a completion so rows stop at different, early steps.
    policy.eos_token_ids = tuple(i for i in range(0, policy.vocab_size, 2) if i != policy.pad_token_id)
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 64, generator=torch.Generator().manual_seed(1), return_logprobs=True)
    assert gen.completion_ids.shape[1] < 64, "generation should stop once every row has ended"
    is_eos = torch.isin(gen.completion_ids, torch.tensor(policy.eos_token_ids)) & gen.completion_mask.bool()
    lengths = gen.lengths
    assert len(set(lengths.tolist())) > 1, "rows should end at different steps"
    for row in range(len(PROMPTS)):
        n = int(lengths[row])
        assert gen.completion_mask[row].tolist() == [1] * n + [0] * (gen.completion_ids.shape[1] - n)
        assert is_eos[row].nonzero().flatten().tolist() == [n - 1]  # exactly one EOS, the last kept token
        assert (gen.completion_ids[row, n:] == policy.pad_token_id).all()
        assert gen.logprobs is not None and (gen.logprobs[row, n:] == 0).all()
        assert (gen.logprobs[row, :n] < 0).all()


def test_padding_a_generation_extends_it_with_masked_pads(policy: Policy) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 5, generator=torch.Generator().manual_seed(0), return_logprobs=True)
    padded = gen.pad_to(9, policy.pad_token_id)
    assert padded.completion_ids.shape == (len(PROMPTS), 9)
    assert torch.equal(padded.completion_ids[:, :5], gen.completion_ids)
    assert (padded.completion_ids[:, 5:] == policy.pad_token_id).all()
    assert (padded.completion_mask[:, 5:] == 0).all() and torch.equal(padded.lengths, gen.lengths)
    assert padded.logprobs is not None and (padded.logprobs[:, 5:] == 0).all()
    with pytest.raises(ValueError, match="cannot pad"):
        gen.pad_to(3, policy.pad_token_id)


def test_min_new_tokens_keeps_eos_out_until_reached(policy: Policy) -> None:
    policy.eos_token_ids = tuple(i for i in range(0, policy.vocab_size, 2) if i != policy.pad_token_id)
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 32, min_new_tokens=6, generator=torch.Generator().manual_seed(2))
    assert (gen.lengths >= 6).all()
    assert (gen.lengths < 12).any()  # EOS is still reached soon after


def test_greedy_matches_hf_generate_on_left_padded_batch(policy: Policy, model_dir: Path) -> None:
    ids, mask = _batch(policy)
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected = hf_model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=policy.pad_token_id
    )[:, ids.shape[1] :]
    gen = policy.generate(ids, mask, 16, do_sample=False)
    assert torch.equal(gen.completion_ids, expected)


def test_same_generator_seed_reproduces_samples(policy: Policy) -> None:
    ids, mask = _batch(policy)
    first = policy.generate(ids, mask, 20, top_p=0.9, generator=torch.Generator().manual_seed(7))
    again = policy.generate(ids, mask, 20, top_p=0.9, generator=torch.Generator().manual_seed(7))
    other = policy.generate(ids, mask, 20, top_p=0.9, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.completion_mask, again.completion_mask)
    assert not torch.equal(first.completion_ids, other.completion_ids)


def test_top_k_one_sampling_is_greedy(policy: Policy) -> None:
    ids, mask = _batch(policy)
    sampled = policy.generate(ids, mask, 12, top_k=1, generator=torch.Generator().manual_seed(3))
    greedy = policy.generate(ids, mask, 12, do_sample=False)
    assert torch.equal(sampled.completion_ids, greedy.completion_ids)


def test_right_padded_prompts_are_rejected_with_advice(policy: Policy) -> None:
    ids, mask = _batch(policy)
    with pytest.raises(ValueError, match="left-padded.*tokenize_prompts"):
        policy.generate(ids.flip(1), mask.flip(1), 4)


def test_generation_outputs_can_be_used_in_autograd(policy: Policy) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 8, generator=torch.Generator().manual_seed(0), return_logprobs=True)
    stats = policy(ids, mask, gen.completion_ids, gen.completion_mask)
    assert gen.logprobs is not None
    ratio = torch.exp(stats.logprobs - gen.logprobs)
    ratio.sum().backward()  # would fail if generate returned inference-mode tensors
    assert policy.model.get_output_embeddings().weight.grad is not None


# ---------------------------------------------------------------------- one-forward statistics


def test_entropy_matches_its_definition(policy: Policy) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        stats = policy(ids, mask, gen.completion_ids, gen.completion_mask, with_entropy=True, temperature=1.3)
    probs = torch.softmax(_full_logits(policy.model, ids, mask, gen) / 1.3, -1)
    expected = -(probs * probs.log()).sum(-1) * gen.completion_mask
    assert stats.entropy is not None
    torch.testing.assert_close(stats.entropy, expected, atol=1e-5, rtol=0)
    assert (stats.entropy[gen.completion_mask.bool()] > 0).all()


def test_values_have_completion_shape_are_masked_and_trainable(policy: Policy) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(5))
    completion_mask = gen.completion_mask.clone()
    completion_mask[0, 5:] = 0  # a row that ended early
    stats = policy(ids, mask, gen.completion_ids, completion_mask, with_values=True)
    assert stats.values is not None and stats.values.shape == gen.completion_ids.shape
    assert stats.values.dtype == torch.float32
    assert (stats.values[0, 5:] == 0).all() and (stats.logprobs[0, 5:] == 0).all()
    assert (stats.values[completion_mask.bool()] != 0).all()
    assert stats.values.abs().max() < 1.0  # the head starts small
    stats.values.sum().backward()
    assert policy.value_head is not None and policy.value_head.weight.grad is not None
    assert policy.model.transformer.h[0].mlp.c_fc.weight.grad is not None  # one trunk: values train it too


def test_values_without_a_value_head_is_a_clear_error(model_dir: Path) -> None:
    policy = Policy.from_pretrained(model_dir, value_head=False)
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(Exception, match="value_head=True"):
        policy(ids, mask, gen.completion_ids, gen.completion_mask, with_values=True)
    head = policy.add_value_head()
    assert any(p is head.weight for p in policy.trainable_parameters())
    values = policy(ids, mask, gen.completion_ids, gen.completion_mask, with_values=True).values
    assert values is not None and values.shape == gen.completion_ids.shape


def test_sequence_logprobs_sum_the_masked_token_logprobs(policy: Policy) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        per_token = policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
        total = policy.sequence_logprobs(ids, mask, gen.completion_ids, gen.completion_mask)
    torch.testing.assert_close(total, per_token.sum(-1))


# ---------------------------------------------------------------------- reference models and LoRA


def _sgd_step(policy: Policy, ids: torch.Tensor, mask: torch.Tensor, gen: Generation) -> None:
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-2)
    loss = -policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs.sum()
    loss.backward()
    optimizer.step()


def test_reference_is_a_frozen_copy_outside_the_policy_parameters(policy: Policy) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(0))
    reference = policy.reference()
    assert policy.reference() is reference
    before = reference.logprobs(ids, mask, gen.completion_ids, gen.completion_mask)
    own = {id(p) for p in policy.parameters()}
    assert not any(id(p) in own for p in reference.model.parameters())
    assert not any(p.requires_grad for p in reference.model.parameters())
    _sgd_step(policy, ids, mask, gen)
    after = reference.logprobs(ids, mask, gen.completion_ids, gen.completion_mask)
    with torch.no_grad():
        moved = policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
    torch.testing.assert_close(after, before)
    assert (moved - before).abs().max() > 1e-3


def test_lora_trains_only_the_adapter_and_value_head(model_dir: Path) -> None:
    policy = Policy.from_pretrained(model_dir, lora={"r": 4, "lora_alpha": 8})
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("value_head.") for n in names)
    assert any(n.startswith("value_head.") for n in names)
    assert {id(p) for p in policy.trainable_parameters()} == {
        id(p) for p in policy.parameters() if p.requires_grad
    }


def test_lora_reference_is_the_base_model_while_the_policy_moves(model_dir: Path) -> None:
    base = Policy.from_pretrained(model_dir, value_head=False)
    policy = Policy.from_pretrained(model_dir, lora={"r": 4, "lora_alpha": 8})
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logprobs = base(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
    _sgd_step(policy, ids, mask, gen)
    reference = policy.reference()
    torch.testing.assert_close(
        reference.logprobs(ids, mask, gen.completion_ids, gen.completion_mask), base_logprobs, atol=1e-6, rtol=0
    )
    with torch.no_grad():
        adapted = policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
    assert (adapted - base_logprobs).abs().max() > 1e-3
    # The reference call leaves the adapter switched back on.
    with torch.no_grad():
        again = policy(ids, mask, gen.completion_ids, gen.completion_mask).logprobs
    torch.testing.assert_close(again, adapted)


# ---------------------------------------------------------------------- saving and loading


def test_save_then_load_gives_identical_logprobs_and_value_head(policy: Policy, tmp_path: Path) -> None:
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(0))
    _sgd_step(policy, ids, mask, gen)
    assert policy.value_head is not None
    with torch.no_grad():
        policy.value_head.weight.normal_()
        expected = policy(ids, mask, gen.completion_ids, gen.completion_mask, with_values=True)
    policy.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert (tmp_path / "saved" / "value_head.safetensors").is_file()
    loaded = Policy.load(tmp_path / "saved")
    with torch.no_grad():
        got = loaded(ids, mask, gen.completion_ids, gen.completion_mask, with_values=True)
    torch.testing.assert_close(got.logprobs, expected.logprobs, atol=0, rtol=0)
    torch.testing.assert_close(got.values, expected.values, atol=0, rtol=0)


def test_lora_save_then_load_keeps_adapter_and_base_reference(model_dir: Path, tmp_path: Path) -> None:
    policy = Policy.from_pretrained(model_dir, lora={"r": 4, "lora_alpha": 8})
    ids, mask = _batch(policy)
    gen = policy.generate(ids, mask, 10, generator=torch.Generator().manual_seed(0))
    _sgd_step(policy, ids, mask, gen)
    args = (ids, mask, gen.completion_ids, gen.completion_mask)
    with torch.no_grad():
        expected = policy(*args, with_values=True)
    expected_reference = policy.reference().logprobs(*args)
    policy.save_pretrained(tmp_path / "saved")
    loaded = Policy.from_pretrained(tmp_path / "saved")
    assert loaded.is_peft
    with torch.no_grad():
        got = loaded(*args, with_values=True)
    torch.testing.assert_close(got.logprobs, expected.logprobs, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.values, expected.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.reference().logprobs(*args), expected_reference, atol=1e-6, rtol=0)
    assert all("lora_" in n or n.startswith("value_head.") for n, p in loaded.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------------- errors and metadata


def test_missing_model_path_error_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist.*hub id or a local directory"):
        Policy.from_pretrained(tmp_path / "no-such-model")


@pytest.mark.parametrize(
    "config",
    [
        # a reward-model checkpoint: BERT has a causal-LM variant, but this one was saved as a classifier
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   architectures=["BertForSequenceClassification"]),
        # a model type with no causal-LM variant at all
        T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
    ],
    ids=["reward-model", "encoder-decoder"],
)
def test_non_causal_lm_checkpoint_is_rejected(config: PretrainedConfig, tmp_path: Path) -> None:
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        Policy.from_pretrained(tmp_path)


def test_remote_code_is_not_run_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    (tmp_path / "config.json").write_text(
        '{"model_type": "custom-lm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig", '
        '"AutoModelForCausalLM": "modeling_custom.CustomLM"}}'
    )
    (tmp_path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        Policy.from_pretrained(tmp_path)
    assert not marker.exists()


def test_vocab_size_reads_the_head_not_the_tokenizer(policy: Policy) -> None:
    head_rows = policy.model.get_output_embeddings().weight.shape[0]
    assert len(policy.tokenizer) < head_rows
    assert policy.vocab_size == head_rows


def test_pad_falls_back_to_eos_when_the_tokenizer_has_none(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    policy = Policy(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
    assert policy.eos_token_id == tokenizer.eos_token_id
    assert policy.pad_token_id == policy.eos_token_id
    ids, mask = policy.tokenize_prompts(["bad", "the food was great"], max_prompt_tokens=8)
    assert (ids[mask == 0] == tokenizer.eos_token_id).all()
