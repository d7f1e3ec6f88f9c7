"""Loading and bookkeeping shared by the text environments.

``TextGen-v0`` and ``Completion-v0`` (and their native vector versions) take the same keyword arguments: a
tokenizer, a prompt set, a reward provider and a few sizes. This module turns those arguments into one
:class:`TextEnvSetup` (tokenizer, provider, prompts tokenised once, action-space size), draws prompts in a
seeded order, decodes completions and validates what the provider returns, so every environment behaves the same
on the same input.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_gym.errors import ConfigError, RewardError
from rlhf_gym.providers import RewardProvider, Score, as_provider, checked_scores, scores_to_array

#: ``info`` keys the environments fill themselves; a provider extra may not reuse them.
RESERVED_INFO_KEYS = frozenset(
    {
        "prompt",
        "completion",
        "score",
        "score_valid",
        "prompt_truncated",
        "prompt_index",
        "completion_length",
        "final_obs",
        "final_info",
    }
)

DEFAULT_MAX_PROMPT_TOKENS = 64
DEFAULT_MAX_NEW_TOKENS = 32


@dataclass
class PromptSet:
    """A prompt set tokenised once: left-padded, left-truncated token ids plus per-row extras.

    Attributes:
        texts: the text each prompt conditions the policy on; when a prompt was longer than
            ``max_prompt_tokens`` this is the decoded text of the kept (last) tokens.
        input_ids: ``(n, max_prompt_tokens)`` int64, left-padded with the pad id.
        attention_mask: ``(n, max_prompt_tokens)`` int64, 1 on prompt tokens.
        truncated: ``(n,)`` bool, True where tokens were cut from the left.
        extras: other columns of the source (``.jsonl`` fields, dataset columns), one list entry per prompt;
            they reach the provider as ``**row`` lists.
    """

    texts: list[str]
    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: np.ndarray
    extras: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.texts)

    def row_extras(self, indices: Sequence[int] | np.ndarray) -> dict[str, list[Any]]:
        """The extras of the prompts at ``indices``, as lists in that order (the provider's ``**row``)."""
        return {key: [values[i] for i in indices] for key, values in self.extras.items()}


@dataclass
class TextEnvSetup:
    """Everything an environment needs, built once from its keyword arguments by :func:`build_setup`."""

    tokenizer: Any
    provider: RewardProvider
    prompts: PromptSet
    vocab_size: int  #: size of the action space (the model head), >= ``len(tokenizer)``
    tokenizer_size: int  #: ``len(tokenizer)``; ids at or above it decode to nothing
    pad_token_id: int
    eos_token_id: int | None
    strip_pad: bool  #: whether pad ids are dropped from completions (only when the tokenizer has its own pad)
    max_prompt_tokens: int
    max_new_tokens: int
    shuffle: bool

    def __post_init__(self) -> None:
        self.batch_decode = _batch_decoder(self.tokenizer)

    @property
    def deterministic(self) -> bool:
        """False when the provider may judge the same text differently (a live human)."""
        return bool(getattr(self.provider, "deterministic", True))


# -- loading -----------------------------------------------------------------------------------------------


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object from a name/path (``AutoTokenizer.from_pretrained``) or the object itself."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"could not load tokenizer {str(tokenizer)!r} ({exc}); pass a local directory saved with "
                f"`save_pretrained` or a tokenizer object"
            ) from exc
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise ConfigError(
            f"tokenizer must be a name/path or a Hugging Face tokenizer object, got {type(tokenizer).__name__}"
        )
    return tokenizer


def _batch_decoder(tokenizer: Any) -> Any:
    """``rows -> texts`` without special tokens; straight to the Rust tokenizer where that gives the same text.

    ``batch_decode`` of a fast tokenizer converts every id through Python before reaching the Rust decoder; that
    dominates a vector env's step, so the backend is called directly unless the Python side would change the
    text (clean-up of tokenisation spaces).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        # one call per row: ``decode_batch`` starts a thread pool, slower than the work for a step's few rows
        return lambda rows: [backend.decode(row, skip_special_tokens=True) for row in rows]
    return lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True)


def _rows_to_columns(
    rows: Sequence[Mapping[str, Any]], source: str
) -> tuple[list[str], dict[str, list[Any]]]:
    texts: list[str] = []
    keys: dict[str, None] = {}
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ConfigError(f"{source}: row {i} has no 'prompt' field; every row needs one")
        texts.append(row["prompt"])
        for key in row:
            if key != "prompt":
                keys[key] = None
    extras = {key: [row.get(key) for row in rows] for key in keys}
    return texts, extras


def load_prompts(prompts: Any) -> tuple[list[str], dict[str, list[Any]]]:
    """Read a prompt source into (texts, per-row extras).

    Args:
        prompts: a list of strings; a list of dicts with a ``prompt`` key; a ``.txt`` path (one prompt per
            non-empty line); a ``.jsonl`` path (field ``prompt``, other fields become extras); or a
            ``datasets.Dataset`` with a ``prompt`` column (other columns become extras).

    Returns:
        The prompt texts and a dict of extra columns (lists as long as the texts).
    """
    if prompts is None:
        raise ConfigError("pass prompts=: a list of strings, a .txt/.jsonl path, or a datasets.Dataset")
    extras: dict[str, list[Any]] = {}
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise ConfigError(
                f"prompts file {str(path)!r} does not exist; pass a .txt/.jsonl path, or a list of strings "
                f"(wrap a single prompt as [prompt])"
            )
        if path.suffix == ".txt":
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            source = str(path)
        elif path.suffix == ".jsonl":
            from rlhf_gym.preference_store import iter_jsonl

            rows = list(iter_jsonl(path, error=ConfigError))
            texts, extras = _rows_to_columns(rows, str(path))
            source = str(path)
        else:
            raise ConfigError(f"prompts file {str(path)!r} must end in .txt (one per line) or .jsonl")
    elif hasattr(prompts, "column_names") and hasattr(prompts, "to_dict"):
        if "prompt" not in prompts.column_names:
            raise ConfigError(
                f"the prompts dataset has columns {prompts.column_names} but no 'prompt' column; rename the "
                f"prompt column to 'prompt'"
            )
        columns = prompts.to_dict()
        texts = list(columns.pop("prompt"))
        extras = {key: list(values) for key, values in columns.items()}
        source = "the prompts dataset"
    elif isinstance(prompts, (Sequence, np.ndarray)):
        items = list(prompts)
        if items and all(isinstance(item, Mapping) for item in items):
            texts, extras = _rows_to_columns(items, "prompts")
        else:
            texts = items
        source = "prompts"
    else:
        raise ConfigError(
            f"prompts must be a list of strings, a .txt/.jsonl path or a datasets.Dataset, got "
            f"{type(prompts).__name__}"
        )
    if not texts:
        raise ConfigError(f"{source} holds no prompts; pass at least one prompt")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"{source}: prompt {i} is {type(text).__name__}, not a string")
    return texts, extras


def _head_size(model: Any) -> int | None:
    """The output size of a model object's LM head, or its config's ``vocab_size``."""
    for candidate in (model, getattr(model, "model", None)):
        if candidate is None:
            continue
        get_head = getattr(candidate, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        weight = getattr(head, "weight", None)
        if weight is not None and getattr(weight, "ndim", 0) == 2:
            return int(weight.shape[0])
        config_size = getattr(getattr(candidate, "config", None), "vocab_size", None)
        if config_size is not None:
            return int(config_size)
        if isinstance(getattr(candidate, "vocab_size", None), int):
            return int(candidate.vocab_size)
    return None


def resolve_vocab_size(tokenizer: Any, vocab_size: int | None = None, model: Any = None) -> int:
    """Size of the token action space: the model head's size, never guessed from the tokenizer's name.

    Order: ``vocab_size`` if given; else the head of ``model`` (an object, or a name/path whose
    ``AutoConfig.from_pretrained(...).vocab_size`` is read); else ``len(tokenizer)``.

    Raises:
        ConfigError: the tokenizer has more tokens than the action space, or the size cannot be found.
    """
    n_tokens = len(tokenizer)
    if vocab_size is not None:
        size, source = int(vocab_size), f"vocab_size={vocab_size}"
    elif model is not None:
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoConfig

            try:
                found = getattr(AutoConfig.from_pretrained(str(model)), "vocab_size", None)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"could not read the config of model {str(model)!r} ({exc})") from exc
            source = f"the config of model {str(model)!r}"
        else:
            found = _head_size(model)
            source = f"the head of {type(model).__name__}"
        if found is None:
            raise ConfigError(f"cannot find the vocabulary size of {source}; pass vocab_size= explicitly")
        size = int(found)
    else:
        size, source = n_tokens, "len(tokenizer)"
    if size < 1:
        raise ConfigError(f"the action space needs at least one token; {source} gives {size}")
    if n_tokens > size:
        raise ConfigError(
            f"tokenizer has {n_tokens} tokens but the action space has {size} (from {source}); the policy could "
            f"never emit tokens {size}..{n_tokens - 1}. Pass the tokenizer that belongs to the model, or a "
            f"vocab_size >= {n_tokens}"
        )
    return size


def tokenize_prompts(
    tokenizer: Any,
    texts: list[str],
    extras: dict[str, list[Any]],
    max_prompt_tokens: int,
    pad_token_id: int,
) -> PromptSet:
    """Tokenise every prompt once (no special tokens), keep the last ``max_prompt_tokens`` ids, left-pad.

    Raises:
        ConfigError: a prompt tokenises to no tokens.
    """
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = len(texts)
    input_ids = np.full((n, max_prompt_tokens), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((n, max_prompt_tokens), dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    kept_texts = list(texts)
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ConfigError(
                f"prompt {i} ({texts[i]!r}) tokenises to no tokens; remove empty prompts from the prompt set"
            )
        if len(ids) > max_prompt_tokens:
            ids = ids[-max_prompt_tokens:]
            truncated[i] = True
            kept_texts[i] = tokenizer.decode(ids)
        input_ids[i, max_prompt_tokens - len(ids) :] = ids
        attention_mask[i, max_prompt_tokens - len(ids) :] = 1
    return PromptSet(kept_texts, input_ids, attention_mask, truncated, extras)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def build_setup(
    env_name: str,
    *,
    tokenizer: Any = None,
    prompts: Any = None,
    reward: Any = None,
    reward_kwargs: Mapping[str, Any] | None = None,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    vocab_size: int | None = None,
    model: Any = None,
    shuffle: bool = True,
) -> TextEnvSetup:
    """Validate and load the common keyword arguments of the text environments.

    Args:
        env_name: the environment's id, used in error messages.
        tokenizer: a name/path for ``AutoTokenizer.from_pretrained`` or a tokenizer object.
        prompts: see :func:`load_prompts`.
        reward: a provider name, a :class:`~rlhf_gym.RewardProvider`, or a TRL-style callable.
        reward_kwargs: keyword arguments for a provider given by name.
        max_prompt_tokens: prompts are left-truncated to this many tokens.
        max_new_tokens: the longest completion.
        vocab_size: size of the token action space (defaults: the model head, else ``len(tokenizer)``).
        model: a model object or a name/path whose head size sets ``vocab_size``.
        shuffle: draw prompts in a seeded random order (each once per pass) rather than in file order.
    """
    missing = [
        f"{name}= ({what})"
        for name, value, what in (
            ("tokenizer", tokenizer, "a tokenizer name/path or object"),
            ("prompts", prompts, "a list of strings, a .txt/.jsonl path, or a datasets.Dataset"),
            ("reward", reward, "a provider name, a RewardProvider, or f(prompts, completions, **kw)"),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"{env_name} needs " + "; ".join(missing))
    max_prompt_tokens = _positive_int(max_prompt_tokens, "max_prompt_tokens")
    max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
    texts, extras = load_prompts(prompts)
    tok = load_tokenizer(tokenizer)
    size = resolve_vocab_size(tok, vocab_size, model)
    eos = tok.eos_token_id
    pad = tok.pad_token_id
    strip_pad = pad is not None
    if pad is None:
        pad = eos if eos is not None else 0
    for label, token_id in (("pad", pad), ("eos", eos)):
        if token_id is not None and not 0 <= token_id < size:
            raise ConfigError(
                f"the tokenizer's {label} id {token_id} lies outside the action space [0, {size})"
            )
    prompt_set = tokenize_prompts(tok, texts, extras, max_prompt_tokens, int(pad))
    provider = as_provider(reward, reward_kwargs, tokenizer=tok)
    return TextEnvSetup(
        tokenizer=tok,
        provider=provider,
        prompts=prompt_set,
        vocab_size=size,
        tokenizer_size=len(tok),
        pad_token_id=int(pad),
        eos_token_id=None if eos is None else int(eos),
        strip_pad=strip_pad,
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        shuffle=bool(shuffle),
    )


# -- prompt order ------------------------------------------------------------------------------------------


class PromptSampler:
    """Prompt indices in passes over the set: each pass a permutation from the env's ``np_random`` (or file
    order without shuffling). :meth:`restart` (on a seeded reset) starts a fresh pass, so seeds reproduce."""

    def __init__(self, n: int, shuffle: bool):
        self.n = n
        self.shuffle = shuffle
        self._order = np.arange(n)
        self._pos = n

    def restart(self) -> None:
        """Begin a new pass at the next draw."""
        self._pos = self.n

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position in the current pass (for exact resumes)."""
        return {"order": self._order.tolist(), "pos": int(self._pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order = np.asarray(state["order"], dtype=np.int64)
        self._pos = int(state["pos"])

    def draw(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """The next ``k`` prompt indices (int64 array)."""
        parts = []
        while k > 0:
            if self._pos >= self.n:
                self._order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
                self._pos = 0
            take = min(k, self.n - self._pos)
            parts.append(self._order[self._pos : self._pos + take])
            self._pos += take
            k -= take
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


# -- completions and scores --------------------------------------------------------------------------------


def completion_lengths(tokens: np.ndarray, eos_token_id: int | None) -> np.ndarray:
    """Per row of ``tokens`` ``(k, T)``: the number of tokens before the first EOS (T if there is none)."""
    if eos_token_id is None or tokens.shape[1] == 0:
        return np.full(tokens.shape[0], tokens.shape[1], dtype=np.int64)
    is_eos = tokens == eos_token_id
    return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), tokens.shape[1]).astype(np.int64)


def decode_completions(
    setup: TextEnvSetup, tokens: np.ndarray, lengths: np.ndarray | None = None
) -> list[str]:
    """Decode completion rows: cut at the first EOS, drop pad ids and ids the tokenizer does not have."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(len(tokens), -1)
    if lengths is None:
        lengths = completion_lengths(tokens, setup.eos_token_id)
    rows: list[list[int]] = []
    for row, length in zip(tokens, lengths, strict=True):
        kept = row[:length]
        keep = kept < setup.tokenizer_size
        if setup.strip_pad:
            keep &= kept != setup.pad_token_id
        rows.append(kept[keep].tolist())
    return setup.batch_decode(rows)


def completion_rows(
    setup: TextEnvSetup, actions: Sequence[Any], env_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """Completion actions (strings or token-id sequences) as ``(k, max_new_tokens)`` ids and their lengths.

    A string is tokenised without special tokens and cut to ``max_new_tokens``; a token sequence may be
    shorter than ``max_new_tokens`` (it ends there). The length counts the tokens before the first EOS.

    Raises:
        ValueError: a sequence that is too long, not integer, or holds ids outside ``[0, vocab_size)``.
    """
    t, vocab = setup.max_new_tokens, setup.vocab_size
    rows = np.full((len(actions), t), setup.pad_token_id, dtype=np.int64)
    given = np.full(len(actions), t, dtype=np.int64)
    texts = [(i, a) for i, a in enumerate(actions) if isinstance(a, str)]
    if texts:
        encoded = setup.tokenizer([a for _, a in texts], add_special_tokens=False)["input_ids"]
        for (i, _), ids in zip(texts, encoded, strict=True):
            ids = ids[:t]
            rows[i, : len(ids)] = ids
            given[i] = len(ids)
    for i, action in enumerate(actions):
        if isinstance(action, str):
            continue
        array = np.asarray(action)
        if (
            array.ndim != 1
            or array.shape[0] > t
            or not (array.size == 0 or np.issubdtype(array.dtype, np.integer))
        ):
            raise ValueError(
                f"{env_id}: a completion action must be a string or up to {t} integer token ids (shape "
                f"({t},)), got shape {array.shape} dtype {array.dtype}"
            )
        if array.size and (array.min() < 0 or array.max() >= vocab):
            bad = array[(array < 0) | (array >= vocab)]
            raise ValueError(
                f"{env_id}: token ids {bad[:5].tolist()} are outside the action space; ids must lie in "
                f"[0, {vocab - 1}]"
            )
        rows[i, : array.shape[0]] = array
        given[i] = array.shape[0]
    lengths = np.minimum(completion_lengths(rows, setup.eos_token_id), given)
    return rows, lengths


def score_completions(
    provider: RewardProvider, prompts: list[str], completions: list[str], row: Mapping[str, list[Any]]
) -> tuple[list[Score], dict[str, list[Any]]]:
    """One provider call for a batch; scores validated with ``checked_scores``, extras checked for length.

    Raises:
        RewardError: wrong number of scores or extras, NaN/inf, or an extra named like a key the env fills.
    """
    raw_scores, raw_extras = provider.score_with_info(prompts, completions, **row)
    scores = checked_scores(provider, raw_scores, len(prompts))
    name = getattr(provider, "name", None) or type(provider).__name__
    extras: dict[str, list[Any]] = {}
    for key, values in dict(raw_extras or {}).items():
        if key in RESERVED_INFO_KEYS or key.startswith("_"):
            raise RewardError(
                f"reward provider {name!r} returned an extra named {key!r}, which the environment fills itself; "
                f"rename that extra"
            )
        values = list(values)
        if len(values) != len(prompts):
            raise RewardError(
                f"reward provider {name!r} returned {len(values)} values of extra {key!r} for {len(prompts)} "
                f"samples; return one per sample"
            )
        extras[key] = values
    return scores, extras


@dataclass
class ScoredBatch:
    """Completions of a batch of prompts, scored with one provider call."""

    prompts: list[str]
    completions: list[str]
    scores: list[Score]  #: as the provider gave them (``None`` kept)
    rewards: np.ndarray  #: ``(k,)`` float32, 0 where the score is ``None``
    valid: np.ndarray  #: ``(k,)`` bool, False where the score is ``None``
    extras: dict[str, list[Any]]  #: the provider's per-sample extras


def score_batch(setup: TextEnvSetup, prompt_indices: np.ndarray, completions: list[str]) -> ScoredBatch:
    """Score ``completions`` of the prompts at ``prompt_indices`` in one provider call (with their extras)."""
    prompts = [setup.prompts.texts[i] for i in prompt_indices]
    row = setup.prompts.row_extras(prompt_indices)
    scores, extras = score_completions(setup.provider, prompts, completions, row)
    rewards, valid = scores_to_array(scores)
    return ScoredBatch(prompts, completions, scores, rewards, valid, extras)


# -- determinism -------------------------------------------------------------------------------------------


class ProviderAwareSpec:
    """Mixin of every rlhf_gym env: read-only views of the shared setup, and it keeps ``spec.nondeterministic`` True whenever the env's provider is not deterministic.

    ``gym.make``/``gym.make_vec`` assign ``env.unwrapped.spec`` after construction, copying the registered
    ``nondeterministic=False``; this setter replaces it by ``nondeterministic=True`` for a provider such as a
    live human, so Gymnasium's checker and users read the truth from the spec. The same flag is in
    ``env.metadata["nondeterministic"]`` for envs built directly (whose spec is None).
    """

    _setup: TextEnvSetup

    @property
    def spec(self) -> Any:
        return self.__dict__.get("_spec")

    @spec.setter
    def spec(self, value: Any) -> None:
        setup = self.__dict__.get("_setup")
        if value is not None and setup is not None and not setup.deterministic and not value.nondeterministic:
            value = dataclasses.replace(value, nondeterministic=True)
        self.__dict__["_spec"] = value

    def _init_metadata(self, base: Mapping[str, Any]) -> dict[str, Any]:
        return {**base, "nondeterministic": not self._setup.deterministic}

    @property
    def tokenizer(self) -> Any:
        """The tokenizer prompts were encoded with."""
        return self._setup.tokenizer

    @property
    def provider(self) -> Any:
        """The reward provider scoring completions."""
        return self._setup.provider

    @property
    def eos_token_id(self) -> int | None:
        """The token that ends a completion (an episode of TextGen-v0); None if the tokenizer has none."""
        return self._setup.eos_token_id

    @property
    def setup(self) -> TextEnvSetup:
        """The env's loaded settings (tokenizer, tokenised prompts, provider, lengths), shareable with other envs."""
        return self._setup

    @property
    def max_new_tokens(self) -> int:
        return self._setup.max_new_tokens

    @property
    def max_prompt_tokens(self) -> int:
        return self._setup.max_prompt_tokens

    @property
    def vocab_size(self) -> int:
        """Size of the action vocabulary (the model head)."""
        return self._setup.vocab_size
