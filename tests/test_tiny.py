"""Tests of the offline tiny model kit: corpus, tokenizer, GPT-2 config, cached and kill-safe builds, pre-training."""

from __future__ import annotations

import multiprocessing
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from rlhf_gym import tiny
from rlhf_gym.tiny import (
    LABELS,
    TinyKit,
    build_tiny_kit,
    build_tokenizer,
    corpus_vocabulary,
    demonstrations,
    heldout_loss,
    random_tiny_model,
    review_corpus,
    review_prompts,
    tiny_config,
    words_of,
)

# settings of a kit that builds in a few seconds: enough to exercise caching, seeding and failure handling
QUICK = {"pretrain_steps": 5, "n_reviews": 256, "batch_size": 16, "progress": False}


def _sample(kit: TinyKit, prompts: list[str], max_new_tokens: int = 24, seed: int = 0) -> list[str]:
    tokenizer, model = kit.load_tokenizer(), kit.load_model()
    torch.manual_seed(seed)
    with torch.inference_mode():
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        out = model.generate(
            **batch, do_sample=True, top_k=0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


# -- corpus ------------------------------------------------------------------------------------------------


def test_review_corpus_is_deterministic_and_mixes_all_sentiments():
    rows = review_corpus(2000, seed=5)
    assert rows == review_corpus(2000, seed=5)
    assert rows != review_corpus(2000, seed=6)
    assert {r["label"] for r in rows} == set(LABELS)
    assert all(r["completion"].startswith(" ") and r["completion"].endswith(".") for r in rows)
    shares = {label: sum(r["label"] == label for r in rows) / len(rows) for label in LABELS}
    assert all(0.15 < share < 0.45 for share in shares.values()), shares
    assert sum("but" in words_of(r["completion"]) for r in rows if r["label"] == "mixed") > 100


def test_review_corpus_is_mildly_positive_by_vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    scores = {label: [] for label in LABELS}
    for row in review_corpus(3000, seed=1):
        scores[row["label"]].append(analyzer.polarity_scores(row["completion"])["compound"])
    overall = statistics.mean(s for values in scores.values() for s in values)
    assert 0.05 < overall < 0.25
    assert statistics.mean(scores["positive"]) > 0.4
    assert statistics.mean(scores["negative"]) < -0.3
    assert abs(statistics.mean(scores["neutral"])) < 0.1


def test_review_prompts_are_distinct_corpus_openers():
    prompts = review_prompts()
    assert len(set(prompts)) == len(prompts) >= 48
    assert review_prompts(seed=1) != prompts and sorted(review_prompts()) == sorted(prompts)
    corpus_openers = {r["prompt"] for r in review_corpus(20000)}
    assert set(prompts) <= corpus_openers
    assert len(review_prompts(1000)) == 1000  # more than the distinct openers: repeats, same distribution


def test_demonstrations_are_prompt_completion_pairs():
    pairs = demonstrations(10, seed=2)
    assert [set(p) for p in pairs] == [{"prompt", "completion"}] * 10
    assert pairs == [{"prompt": r["prompt"], "completion": r["completion"]} for r in review_corpus(10, seed=2)]


def test_negative_counts_are_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="n >= 0"):
        review_corpus(-1)
    with pytest.raises(ValueError, match="n >= 0"):
        review_prompts(-3)


# -- tokenizer and config ------------------------------------------------------------------------------------


def test_tokenizer_round_trips_text(tiny_tokenizer):
    texts = ["The movie was great.", "I thought the acting was dull but the music was lovely.", "Café 🎬 über  x"]
    for text in texts:
        ids = tiny_tokenizer(text)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text
        assert tiny_tokenizer.eos_token_id not in ids  # encoding adds no special tokens
    assert len(tiny_tokenizer("The movie was great.")["input_ids"]) <= 6  # merges learned from the corpus


def test_tokenizer_pads_left_with_a_pad_token_distinct_from_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token == tiny.PAD_TOKEN and tiny_tokenizer.eos_token == tiny.EOS_TOKEN
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.bos_token_id == tiny_tokenizer.eos_token_id
    batch = tiny_tokenizer(["The movie", "I thought the acting was"], padding=True)
    assert batch["input_ids"][0][0] == tiny_tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1


def test_build_tokenizer_rejects_a_vocabulary_smaller_than_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size >= 260"):
        build_tokenizer(["some text"], vocab_size=100)


def test_model_head_is_a_multiple_of_64_larger_than_the_tokenizer(random_model_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_path)
    model = AutoModelForCausalLM.from_pretrained(random_model_path)
    head = model.get_output_embeddings().weight.shape[0]
    assert head == model.config.vocab_size
    assert head % 64 == 0 and head > len(tokenizer)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_tiny_config_has_dropout_off_and_checks_heads():
    config = tiny_config(1000)
    assert config.vocab_size == 1024 and tiny_config(1024).vocab_size == 1024
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    with pytest.raises(ValueError, match="multiple of n_head"):
        tiny_config(1000, n_embd=130, n_head=4)


def test_saved_model_reloads_with_identical_logits(tmp_path, tiny_tokenizer):
    torch.manual_seed(3)
    model = GPT2LMHeadModel(tiny_config(len(tiny_tokenizer), n_layer=2, n_embd=64)).eval()
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = AutoTokenizer.from_pretrained(tmp_path)(["The movie was", "Overall, the plot"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert (tmp_path / "model.safetensors").is_file()


def test_random_tiny_model_reuses_an_identical_directory(tmp_path):
    path = random_tiny_model(tmp_path / "m", cache_dir=tmp_path / "cache", n_layer=1, n_embd=32, n_head=2)
    mtime = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert random_tiny_model(path, cache_dir=tmp_path / "cache", n_layer=1, n_embd=32, n_head=2) == path
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == mtime
    assert AutoModelForCausalLM.from_pretrained(path).config.n_layer == 1
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an rlhf_gym tiny model"):
        random_tiny_model(tmp_path / "junk", cache_dir=tmp_path / "cache")


# -- building, caching, seeding ------------------------------------------------------------------------------


def _state(kit: TinyKit) -> dict[str, torch.Tensor]:
    return kit.load_model().state_dict()


def test_same_seed_gives_identical_weights(tmp_path):
    first = build_tiny_kit(tmp_path / "a", seed=4, **QUICK)
    again = build_tiny_kit(tmp_path / "b", seed=4, **QUICK)
    other = build_tiny_kit(tmp_path / "c", seed=5, **QUICK)
    a, b, c = _state(first), _state(again), _state(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"])
    assert first.heldout_loss == again.heldout_loss


def test_cached_kit_is_reused_without_rebuilding(tmp_path, monkeypatch):
    calls = []
    real = tiny._pretrain
    monkeypatch.setattr(tiny, "_pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = build_tiny_kit(tmp_path, **QUICK)
    weights = Path(first.path) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    second = build_tiny_kit(tmp_path, **QUICK)
    assert (first.built, second.built, len(calls)) == (True, False, 1)
    assert second.path == first.path and weights.stat().st_mtime_ns == mtime
    assert build_tiny_kit(tmp_path, **{**QUICK, "pretrain_steps": 6}).path != first.path  # settings key the cache
    assert build_tiny_kit(tmp_path, force=True, **QUICK).built and len(calls) == 3


def test_failed_build_leaves_no_partial_directory(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(tiny, "_pretrain", explode)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        build_tiny_kit(tmp_path, **QUICK)
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("tokenizer-")]
    monkeypatch.undo()
    kit = build_tiny_kit(tmp_path, **QUICK)  # the lock was released and the next build completes
    assert kit.built and (Path(kit.path) / "kit.json").is_file()


def test_stale_temporary_directory_of_a_killed_build_is_cleaned_up(tmp_path):
    kit = build_tiny_kit(tmp_path, **QUICK)
    stale = tmp_path / f".{Path(kit.path).name}.tmp-dead"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    assert build_tiny_kit(tmp_path, force=True, **QUICK).built
    assert not stale.exists()


def _build_in_child(cache: str, queue: multiprocessing.Queue) -> None:
    queue.put(build_tiny_kit(cache, **QUICK).built)


def test_concurrent_processes_build_the_same_kit_once(tmp_path):
    build_tiny_kit(tmp_path, pretrain_steps=0, n_reviews=16, batch_size=16, progress=False)  # tokenizer first
    ctx = multiprocessing.get_context("spawn")  # fork after torch started its threads can deadlock
    queue = ctx.Queue()
    children = [ctx.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in children) == [False, True]


def test_build_rejects_impossible_settings(tmp_path):
    with pytest.raises(ValueError, match="n_reviews >= batch_size"):
        build_tiny_kit(tmp_path, n_reviews=8, batch_size=16, progress=False)


def test_loading_a_directory_without_a_kit_says_how_to_build_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_tiny_kit"):
        TinyKit.from_dir(tmp_path)


# -- the pre-trained kit -------------------------------------------------------------------------------------


def test_pretrained_kit_reaches_a_low_heldout_loss(tiny_kit):
    assert tiny_kit.heldout_loss < 1.6
    assert tiny_kit.info["pretrain_steps"] >= 300
    tokenizer, model = tiny_kit.load_tokenizer(), tiny_kit.load_model()
    texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in review_corpus(128, seed=99)]
    assert heldout_loss(model, tokenizer, texts) < 1.6  # the stored figure is real, not just recorded
    random_model = GPT2LMHeadModel(model.config)
    assert heldout_loss(random_model, tokenizer, texts[:32]) > 5.0


def test_pretrained_kit_writes_mostly_real_words(tiny_kit):
    completions = _sample(tiny_kit, review_prompts()[:48])
    vocabulary = corpus_vocabulary()
    words = [w for text in completions for w in words_of(text)]
    assert len(words) > 48 * 3
    assert sum(w in vocabulary for w in words) / len(words) >= 0.8
    assert sum(text.rstrip().endswith(".") for text in completions) >= 0.7 * len(completions)
