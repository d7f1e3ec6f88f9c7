"""The offline tiny model kit: a corpus, tokenizer and small GPT-2 policy that rlhf_gym builds for itself.

Tests, examples and the embedded demo need a causal language model that writes real-looking text, yet nothing
may be downloaded from a model hub. This module writes a templated corpus of short movie reviews of mixed
sentiment, trains a byte-level BPE tokenizer on it, and pre-trains a 4-layer GPT-2 on it for a minute or two.
Everything is saved with ``save_pretrained`` and loaded back with ``from_pretrained``, exactly like a hub model,
and cached on disk under a key derived from every setting, so each machine builds a given kit once.

Example:
    >>> from rlhf_gym.tiny import review_corpus, review_prompts
    >>> row = review_corpus(1)[0]
    >>> sorted(row)
    ['completion', 'label', 'prompt']
    >>> row["completion"].endswith(".")
    True
    >>> len(set(review_prompts())) >= 48
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import GPT2Config, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

try:  # advisory file locks are POSIX-only; elsewhere builds simply are not serialised across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: bump when the corpus, tokenizer or training recipe changes, so stale caches are not reused
KIT_VERSION = 2
#: environment variable naming the cache directory (default ``~/.cache/rlhf_gym``)
CACHE_ENV_VAR = "RLHF_GYM_CACHE"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
#: vocabulary size of the BPE tokenizer (special tokens included)
TOKENIZER_VOCAB_SIZE = 1100
#: reviews the tokenizer is trained on
TOKENIZER_CORPUS_SIZE = 4000
#: the model head is the tokenizer length rounded up to a multiple of this, as real checkpoints do
HEAD_MULTIPLE = 64
DEFAULT_PRETRAIN_STEPS = 500
DEFAULT_CORPUS_SIZE = 20000
DEFAULT_PROMPT_COUNT = 64
MANIFEST = "kit.json"
#: the kit's chat template: plain-text role markers the review BPE already encodes (no new tokens, so the
#: pre-trained review model needs no rebuild); each assistant turn ends with EOS, which is where sampling stops
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ 'Assistant: ' + message['content'] }}{% if eos_token %}{{ eos_token }}{% endif %}"
    "{%- else -%}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
CHAT_TEMPLATE_FILE = "chat_template.jinja"

LABELS = ("positive", "negative", "neutral", "mixed")

# ---------------------------------------------------------------------------------------------------------
# The review corpus
# ---------------------------------------------------------------------------------------------------------

# (subject, plural?) — what a review talks about
_SUBJECTS: tuple[tuple[str, bool], ...] = (
    ("the movie", False),
    ("this film", False),
    ("the film", False),
    ("this movie", False),
    ("the acting", False),
    ("the plot", False),
    ("the story", False),
    ("the ending", False),
    ("the soundtrack", False),
    ("the script", False),
    ("the dialogue", False),
    ("the cast", False),
    ("the camera work", False),
    ("the pacing", False),
    ("the lead actor", False),
    ("the lead actress", False),
    ("the director's work", False),
    ("the sequel", False),
    ("the first half", False),
    ("the humor", False),
    ("the villain", False),
    ("the music", False),
    ("the characters", True),
    ("the visual effects", True),
    ("the jokes", True),
    ("the action scenes", True),
)
# how a review may open before its subject, with weights (the bare subject is the most common)
_LEADS: tuple[tuple[str, int], ...] = (
    ("", 8),
    ("I thought", 3),
    ("Honestly,", 2),
    ("Overall,", 2),
    ("In my opinion,", 2),
    ("I felt that", 2),
    ("To be honest,", 1),
    ("For me,", 1),
    ("My friend said", 1),
    ("I have to say", 1),
    ("Frankly,", 1),
    ("My wife thought", 1),
)
# words VADER scores as positive / negative, and descriptive words it does not score at all
_POSITIVE = (
    "great", "wonderful", "brilliant", "superb", "charming", "delightful", "beautiful", "funny", "clever",
    "stunning", "excellent", "fantastic", "lovely", "thrilling", "enjoyable", "inspiring", "amazing", "perfect",
    "impressive", "engaging", "sweet", "smart", "heartfelt", "gorgeous", "elegant", "powerful", "exciting",
    "entertaining", "good", "nice", "fun", "moving", "touching", "gripping", "memorable", "witty", "fresh", "warm",
    "joyful", "hilarious", "strong",
)
_NEGATIVE = (
    "boring", "dull", "awful", "terrible", "bad", "weak", "messy", "stupid", "painful", "annoying",
    "disappointing", "confusing", "ugly", "poor", "lazy", "dreadful", "horrible", "irritating", "miserable",
    "tedious", "flat", "bland", "predictable", "forgettable", "sloppy", "clumsy", "lifeless", "pointless",
    "shallow", "awkward", "trite", "tired", "ridiculous", "depressing",
)
_NEUTRAL = (
    "long", "short", "quiet", "simple", "plain", "ordinary", "typical", "familiar", "dark", "loud", "unusual",
    "different", "old-fashioned", "modern", "classic", "busy", "slow", "fast", "straightforward",
    "conventional", "brief", "talky", "colorful", "lengthy", "detailed", "realistic",
)
_ADVERBS = ("really", "very", "quite", "incredibly", "absolutely", "genuinely", "so", "rather", "fairly", "extremely")
_THINGS = ("ride", "experience", "piece of work", "production", "film", "story", "evening", "watch", "debut")
_POSITIVE_TAILS = (
    "I loved every minute of it.",
    "I would happily watch it again.",
    "I laughed the whole time.",
    "Highly recommended.",
    "The whole family enjoyed it.",
    "It made me smile.",
    "What a treat.",
    "I recommend it to everyone.",
    "It is one of the best films this year.",
    "The audience cheered at the end.",
    "I left the theater happy.",
    "A real pleasure to watch.",
)
_NEGATIVE_TAILS = (
    "I was bored the whole time.",
    "What a waste of time.",
    "I would not watch it again.",
    "Avoid this one.",
    "I nearly fell asleep.",
    "It was a real disappointment.",
    "I wanted my money back.",
    "Nobody in the theater laughed.",
    "It is one of the worst films this year.",
    "I regret buying a ticket.",
    "I hated the last hour.",
    "Sadly it never gets better.",
)
_NEUTRAL_TAILS = (
    "It runs about two hours.",
    "It is set in a small town.",
    "I watched it on a Sunday.",
    "The story takes place in one summer.",
    "My brother watched it with me.",
    "It opens in a busy city.",
    "Most of it happens at night.",
    "It is based on an old book.",
    "The film is mostly in black and white.",
    "It came out last spring.",
    "The second half moves to the coast.",
    "It is the third film in the series.",
)
# weights of the four review kinds; tuned so a pre-trained policy's samples score a mean VADER compound of
# roughly +0.15 (mildly positive, with clearly positive continuations within reach)
_KIND_WEIGHTS = {"positive": 35, "negative": 25, "neutral": 20, "mixed": 20}


def _verb(plural: bool) -> str:
    return "were" if plural else "was"


def _other_subject(rng: random.Random, subject: str) -> tuple[str, bool]:
    while True:
        other = rng.choice(_SUBJECTS)
        if other[0] != subject and not other[0].startswith("this"):
            return other


def _draw_opener(rng: random.Random) -> tuple[str, str, bool, bool]:
    """(prompt, subject, plural, verb_in_prompt) drawn from the corpus's opener distribution."""
    leads, weights = zip(*_LEADS)
    lead = rng.choices(leads, weights=weights)[0]
    subject, plural = rng.choice(_SUBJECTS)
    with_verb = rng.random() < 0.5
    text = f"{lead} {subject}" if lead else subject[0].upper() + subject[1:]
    if with_verb:
        text += " " + _verb(plural)
    return text, subject, plural, with_verb


def _adjective_phrase(rng: random.Random, words: Sequence[str]) -> str:
    form = rng.random()
    if form < 0.35:
        return rng.choice(words)
    if form < 0.65:
        return f"{rng.choice(_ADVERBS)} {rng.choice(words)}"
    first, second = rng.sample(list(words), 2)
    return f"{first} and {second}"


def _judgement(rng: random.Random, kind: str, plural: bool) -> str:
    """The part after the subject's verb: an adjective phrase, possibly extended, ending in a period."""
    words = {"positive": _POSITIVE, "negative": _NEGATIVE, "neutral": _NEUTRAL}[kind]
    tails = {"positive": _POSITIVE_TAILS, "negative": _NEGATIVE_TAILS, "neutral": _NEUTRAL_TAILS}[kind]
    form = rng.random()
    if form < 0.3:
        return f"{_adjective_phrase(rng, words)}."
    if form < 0.5:
        other, other_plural = _other_subject(rng, "")
        return f"{_adjective_phrase(rng, words)}, and {other} {_verb(other_plural)} {rng.choice(words)}."
    if form < 0.65 and not plural:
        article = "an" if (word := rng.choice(words))[0] in "aeiou" else "a"
        return f"{article} {word} {rng.choice(_THINGS)} from start to finish."
    if form < 0.75 and kind == "positive":
        return f"not {rng.choice(_NEGATIVE)} at all."  # VADER reads a negated negative as positive
    if form < 0.75 and kind == "negative":
        return f"not {rng.choice(('very ', 'really ', ''))}{rng.choice(_POSITIVE)}."
    return f"{_adjective_phrase(rng, words)}. {rng.choice(tails)}"


def _mixed(rng: random.Random, subject: str) -> str:
    first, second = rng.sample(["positive", "negative"], 2)
    words = {"positive": _POSITIVE, "negative": _NEGATIVE}
    other, other_plural = _other_subject(rng, subject)
    form = rng.random()
    if form < 0.5:
        return (
            f"{_adjective_phrase(rng, words[first])} but {other} {_verb(other_plural)} "
            f"{_adjective_phrase(rng, words[second])}."
        )
    if form < 0.75:
        return f"{rng.choice(words[first])}, although {other} felt {rng.choice(words[second])}."
    tail = rng.choice(_POSITIVE_TAILS if second == "positive" else _NEGATIVE_TAILS)
    if not tail.startswith("I "):
        tail = tail[0].lower() + tail[1:]
    return f"{_adjective_phrase(rng, words[first])}. Still, {tail}"


def _review(rng: random.Random) -> dict[str, str]:
    prompt, subject, plural, with_verb = _draw_opener(rng)
    kinds, weights = zip(*_KIND_WEIGHTS.items())
    kind = rng.choices(kinds, weights=weights)[0]
    rest = _mixed(rng, subject) if kind == "mixed" else _judgement(rng, kind, plural)
    completion = f" {rest}" if with_verb else f" {_verb(plural)} {rest}"
    return {"prompt": prompt, "completion": completion, "label": kind}


def review_corpus(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` templated short movie reviews of mixed sentiment.

    Each row is ``{"prompt": opener, "completion": rest of the review, "label": kind}``; ``prompt + completion``
    is one or two sentences ending in a period, and ``label`` is one of ``positive``, ``negative``, ``neutral``
    and ``mixed`` ("X but Y"). The same ``(n, seed)`` always gives the same rows, and a longer corpus extends a
    shorter one with the same seed.

    Args:
        n: number of reviews.
        seed: seed of the template choices.

    Example:
        >>> review_corpus(2, seed=3) == review_corpus(3, seed=3)[:2]
        True
    """
    if n < 0:
        raise ValueError(f"review_corpus needs n >= 0 reviews, got {n}")
    rng = random.Random(seed)
    return [_review(rng) for _ in range(n)]


def review_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """Review openers ("The movie was", "I thought the acting", ...) to use as RL prompts.

    They are drawn from the same distribution as the corpus openers, distinct while distinct ones remain.

    Args:
        n: how many; ``None`` gives the default set of 64 distinct openers.
        seed: seed of the draw.
    """
    n = DEFAULT_PROMPT_COUNT if n is None else n
    if n < 0:
        raise ValueError(f"review_prompts needs n >= 0 prompts, got {n}")
    total = len(_SUBJECTS) * len(_LEADS) * 2
    rng = random.Random(f"prompts-{seed}")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        prompt = _draw_opener(rng)[0]
        if prompt not in seen or len(seen) >= total:
            seen.add(prompt)
            out.append(prompt)
    return out


def demonstrations(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` ``{"prompt", "completion"}`` pairs for supervised fine-tuning, in the corpus's distribution."""
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in review_corpus(n, seed)]


def corpus_vocabulary() -> frozenset[str]:
    """Every lower-case word the review templates can produce (punctuation stripped)."""
    parts: list[str] = [lead for lead, _ in _LEADS] + [s for s, _ in _SUBJECTS]
    parts += [*_POSITIVE, *_NEGATIVE, *_NEUTRAL, *_ADVERBS, *_THINGS]
    parts += [*_POSITIVE_TAILS, *_NEGATIVE_TAILS, *_NEUTRAL_TAILS]
    parts += ["was were and but although felt still not very at all an a from start to finish"]
    return frozenset(w for part in parts for w in words_of(part))


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text``, split on whitespace with surrounding punctuation stripped."""
    words = (w.strip(".,!?;:\"()").lower() for w in text.split())
    return [w for w in words if w]


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and model configuration
# ---------------------------------------------------------------------------------------------------------


def build_tokenizer(texts: Iterable[str], vocab_size: int = TOKENIZER_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    ``<|endoftext|>`` (id 0) is the bos and eos token and ``<|pad|>`` (id 1) a separate pad token; padding is on
    the left, as generation needs. No special tokens are added when encoding: a prompt encodes to its own
    tokens only. Any text round-trips, since unknown characters fall back to bytes.

    Args:
        texts: training texts.
        vocab_size: target vocabulary size, special tokens and the 256 byte tokens included.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"a byte-level BPE tokenizer needs vocab_size >= 260 (256 bytes + specials), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=128,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def ensure_chat_template(path: str | os.PathLike[str]) -> None:
    """Give the tokenizer saved in ``path`` the kit's chat template, if it lacks it.

    Kits cached before the template existed gain it in place (one small file, written atomically), so their
    weights and cache keys stay as they are.
    """
    target = Path(path) / CHAT_TEMPLATE_FILE
    config = Path(path) / "tokenizer_config.json"
    if target.is_file() and target.read_text(encoding="utf-8") == CHAT_TEMPLATE:
        return
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("chat_template") == CHAT_TEMPLATE:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{CHAT_TEMPLATE_FILE}.", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(CHAT_TEMPLATE)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def head_size(vocab_size: int) -> int:
    """``vocab_size`` rounded up to a multiple of 64: the size of the model's output head."""
    return int(math.ceil(vocab_size / HEAD_MULTIPLE) * HEAD_MULTIPLE)


def tiny_config(
    vocab_size: int,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 128,
    *,
    eos_token_id: int = 0,
    pad_token_id: int = 1,
) -> GPT2Config:
    """A small GPT-2 configuration with dropout off.

    Args:
        vocab_size: the tokenizer's length; the model head gets it rounded up to a multiple of 64, so the head
            is larger than ``len(tokenizer)`` as in real checkpoints.
        n_layer: transformer blocks.
        n_embd: hidden size.
        n_head: attention heads (must divide ``n_embd``).
        n_positions: longest sequence, prompt plus completion.
        eos_token_id: id of ``<|endoftext|>`` (also bos); 0 for :func:`build_tokenizer`'s tokenizers.
        pad_token_id: id of ``<|pad|>``; 1 for :func:`build_tokenizer`'s tokenizers.

    Example:
        >>> tiny_config(1100).vocab_size
        1152
    """
    from transformers import GPT2Config

    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    return GPT2Config(
        vocab_size=head_size(vocab_size),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


# ---------------------------------------------------------------------------------------------------------
# Disk cache: one directory per key, built under a lock into a temporary directory and renamed into place
# ---------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$RLHF_GYM_CACHE`` if set, else ``~/.cache/rlhf_gym``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf_gym"


def _cache_key(kind: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"kit_version": KIT_VERSION, "kind": kind, **settings}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (blocks until other holders release it)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _build_once(final: Path, build: Callable[[Path], None], force: bool = False) -> bool:
    """Make sure ``final`` holds a complete build; return True if this call built it.

    ``build(tmp)`` writes everything, its manifest last, into a temporary sibling directory that is renamed onto
    ``final`` only when it returns, so a build that raises or is killed never leaves a half directory behind.
    Concurrent processes wait on a lock and then reuse the finished directory.
    """
    if _is_complete(final) and not force:
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if _is_complete(final) and not force:
            return False
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build(tmp)
            if not _is_complete(tmp):
                raise RuntimeError(f"internal error: the build of {final.name} wrote no {MANIFEST}")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def _write_manifest(path: Path, info: dict[str, Any]) -> None:
    import tokenizers
    import torch
    import transformers

    info = {
        "kit_version": KIT_VERSION,
        **info,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (path / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")


def _tokenizer_texts(seed: int) -> list[str]:
    return [r["prompt"] + r["completion"] for r in review_corpus(TOKENIZER_CORPUS_SIZE, seed)]


def build_tiny_tokenizer(cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0) -> str:
    """Path of a cached directory holding the kit's tokenizer (no model); built in about a second if missing.

    The tokenizer is the one every kit of the same ``seed`` uses; load it with ``AutoTokenizer.from_pretrained``.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    settings = {"seed": seed, "vocab_size": TOKENIZER_VOCAB_SIZE, "corpus": TOKENIZER_CORPUS_SIZE}
    final = cache / _cache_key("tokenizer", settings)

    def build(tmp: Path) -> None:
        build_tokenizer(_tokenizer_texts(seed)).save_pretrained(tmp)
        _write_manifest(tmp, {"kind": "tokenizer", **settings})

    _build_once(final, build)
    ensure_chat_template(final)
    return str(final)


@contextlib.contextmanager
def _torch_settings(seed: int, num_threads: int | None) -> Iterator[None]:
    """Seed torch's global generator (restored afterwards) and optionally pin the thread count."""
    import torch

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous_threads)


def random_tiny_model(
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    **config: int,
) -> str:
    """Save the kit's tokenizer and a randomly initialised tiny GPT-2 (no pre-training) into one directory.

    Quick (about a second), for unit tests that need a real model but not sensible text.

    Args:
        path: directory to write (reused if it already holds the same model); ``None`` uses a directory in the
            cache keyed by ``seed`` and ``config``.
        seed: seed of the tokenizer corpus and of the weights.
        cache_dir: cache directory (default :func:`default_cache_dir`), also where the tokenizer is cached.
        **config: overrides of :func:`tiny_config` (``n_layer``, ``n_embd``, ``n_head``, ``n_positions``).

    Returns:
        The directory, loadable with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    """
    from transformers import AutoTokenizer, GPT2LMHeadModel

    settings = {"seed": seed, "config": dict(sorted(config.items()))}
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = Path(path).expanduser() if path is not None else cache / _cache_key("random", settings)
    tokenizer_dir = build_tiny_tokenizer(cache, seed=seed)

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        cfg = tiny_config(
            len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config
        )
        with _torch_settings(seed, None):
            model = GPT2LMHeadModel(cfg)
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        _write_manifest(tmp, {"kind": "random", **settings})

    if target.is_dir() and any(target.iterdir()) and not _is_complete(target):
        raise FileExistsError(f"{target} exists and is not an rlhf_gym tiny model; pass a new or empty directory")
    same = _is_complete(target) and _read_manifest(target).get("config") == settings["config"]
    same = same and _read_manifest(target).get("seed") == seed
    _build_once(target, build, force=not same)
    ensure_chat_template(target)
    return str(target)


def _read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


# ---------------------------------------------------------------------------------------------------------
# Pre-training and the kit
# ---------------------------------------------------------------------------------------------------------


def _review_texts(rows: Sequence[dict[str, str]], eos: str = EOS_TOKEN) -> list[str]:
    return [r["prompt"] + r["completion"] + eos for r in rows]


def _padded_batch(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)``; labels are -100 on padding."""
    from rlhf_gym.data import right_padded

    ids, mask = right_padded(sequences, pad_id)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _lm_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """Next-token cross-entropy of ``model`` on a right-padded batch (padding ignored)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100, reduction=reduction
    )


def heldout_loss(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on ``texts`` (each a whole review)."""
    import torch

    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            ids, mask, labels = _padded_batch(encoded[start : start + batch_size], tokenizer.pad_token_id)
            total += float(_lm_loss(model, ids, mask, labels, "sum"))
            count += int((labels[:, 1:] != -100).sum())
    model.train(was_training)
    return total / max(1, count)


def _length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, bucket: int = 16
) -> Iterator[list[int]]:
    """Endless random batches of indices; each batch is drawn from a window of ``bucket`` batches sorted by
    length, so little compute goes into padding."""
    import torch

    while True:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size * bucket):
            window = sorted(order[start : start + batch_size * bucket], key=lambda i: lengths[i])
            chunks = [window[i : i + batch_size] for i in range(0, len(window) - batch_size + 1, batch_size)]
            for k in torch.randperm(len(chunks), generator=generator).tolist():
                yield chunks[k]


def _pretrain(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
) -> list[float]:
    """Causal-LM pre-training on whole reviews, one right-padded batch per step; returns the training losses."""
    import torch
    from tqdm.auto import tqdm

    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, min(30, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps, warmup))
    batches = _length_bucketed_batches([len(e) for e in encoded], batch_size, generator)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="pre-training tiny GPT-2", disable=not progress, leave=False)
    for _ in bar:
        ids, mask, labels = _padded_batch([encoded[i] for i in next(batches)], tokenizer.pad_token_id)
        loss = _lm_loss(model, ids, mask, labels, "mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses


@dataclass(frozen=True)
class TinyKit:
    """A built (and cached) tiny kit: tokenizer plus pre-trained GPT-2 in one ``save_pretrained`` directory.

    Attributes:
        path: the directory; ``AutoModelForCausalLM.from_pretrained(path)`` and
            ``AutoTokenizer.from_pretrained(path)`` load it.
        tokenizer_path: directory of the tokenizer (the same directory).
        heldout_loss: next-token cross-entropy (nats per token) on held-out reviews after pre-training.
        info: the contents of ``kit.json`` (seed, steps, settings, timings, library versions).
        built: True if this call built the kit, False if it came from the cache.
    """

    path: str
    tokenizer_path: str
    heldout_loss: float
    info: dict[str, Any] = field(default_factory=dict, compare=False)
    built: bool = field(default=False, compare=False)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], built: bool = False) -> TinyKit:
        """The kit saved in ``path`` (a directory written by :func:`build_tiny_kit`)."""
        if not _is_complete(Path(path)):
            raise FileNotFoundError(f"{path} holds no tiny kit ({MANIFEST} missing); build one with build_tiny_kit()")
        info = _read_manifest(path)
        return cls(str(path), str(path), float(info["heldout_loss"]), info, built)

    def load_model(self, **kwargs: Any) -> PreTrainedModel:
        """The pre-trained policy, via ``AutoModelForCausalLM.from_pretrained`` (``kwargs`` passed on)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.path, **kwargs)

    def load_tokenizer(self, **kwargs: Any) -> PreTrainedTokenizerBase:
        """The kit's tokenizer, via ``AutoTokenizer.from_pretrained`` (``kwargs`` passed on)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_path, **kwargs)


def build_tiny_kit(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    n_reviews: int = DEFAULT_CORPUS_SIZE,
    batch_size: int = 64,
    lr: float = 3e-3,
    force: bool = False,
    progress: bool = True,
    num_threads: int | None = 1,
) -> TinyKit:
    """Build, or fetch from the cache, the tiny pre-trained review policy.

    Steps: write ``n_reviews`` reviews → train the tokenizer → random-init a 4×128 GPT-2 → ``pretrain_steps``
    AdamW steps of causal-LM training on whole reviews (``prompt + completion + eos``; warm-up then cosine
    decay) → held-out loss → ``save_pretrained`` (safetensors) with the tokenizer and a ``kit.json``. The result
    is cached under ``cache_dir`` in a folder keyed by a hash of every setting; a second call returns the cached
    kit. Builds are serialised by a file lock and renamed into place when complete, so concurrent callers build
    once and a killed build leaves nothing half-written. The same settings give identical weights on the same
    machine and thread count.

    Args:
        cache_dir: cache directory; default ``$RLHF_GYM_CACHE`` or ``~/.cache/rlhf_gym``.
        seed: seed of the corpus, tokenizer, initial weights and batch order.
        pretrain_steps: optimizer steps; about 300 or more are needed for clean text.
        n_reviews: size of the training corpus.
        batch_size: reviews per step.
        lr: peak learning rate.
        force: rebuild even if a cached kit exists.
        progress: show a progress bar while pre-training.
        num_threads: torch threads to use while building (restored afterwards). The default, 1, builds the same
            kit on every machine (float sums depend on the thread count); None leaves the count as it is.
    """
    from transformers import AutoTokenizer, GPT2LMHeadModel

    if pretrain_steps < 0 or n_reviews < batch_size or batch_size < 1:
        raise ValueError(
            f"build_tiny_kit needs pretrain_steps >= 0 and n_reviews >= batch_size >= 1; got pretrain_steps="
            f"{pretrain_steps}, n_reviews={n_reviews}, batch_size={batch_size}"
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    config = {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 128}
    settings = {
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "n_reviews": n_reviews,
        "batch_size": batch_size,
        "lr": lr,
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "config": config,
    }
    final = cache / _cache_key("kit", settings)

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(cache, seed=seed))
        with _torch_settings(seed, num_threads):
            model = GPT2LMHeadModel(
                tiny_config(
                    len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config
                )
            )
            texts = _review_texts(review_corpus(n_reviews, seed), tokenizer.eos_token)
            losses = _pretrain(
                model, tokenizer, texts, steps=pretrain_steps, batch_size=batch_size, lr=lr, seed=seed,
                progress=progress,
            )
            n_heldout = max(64, min(512, n_reviews // 16))  # a fixed 512 for full-size corpora
            heldout = _review_texts(review_corpus(n_heldout, seed=seed + 7919), tokenizer.eos_token)
            loss = heldout_loss(model, tokenizer, heldout)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        _write_manifest(
            tmp,
            {
                "kind": "kit",
                **settings,
                "heldout_loss": loss,
                "heldout_reviews": n_heldout,
                "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
                "build_seconds": round(time.perf_counter() - started, 2),
                "parameters": sum(p.numel() for p in model.parameters()),
            },
        )

    built = _build_once(final, build, force=force)
    ensure_chat_template(final)
    return TinyKit.from_dir(final, built=built)
