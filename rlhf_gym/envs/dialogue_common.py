"""Loading for ``rlhf_gym/Dialogue-v0``: scenarios, the chat template, and the env's settings.

A *scenario* is how a conversation starts: a message list (usually a system prompt and the user's first message)
plus any extra fields a reward provider or user simulator reads (an answer key, scripted follow-ups, a persona).
This module reads scenarios from the forms users have them in, renders conversations with the tokenizer's chat
template (or :data:`DEFAULT_CHAT_TEMPLATE` when the tokenizer has none) into the left-padded ``input_ids`` /
``attention_mask`` the other envs observe, and gathers the keyword arguments into one :class:`DialogueSetup`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_gym.envs.common import _batch_decoder, load_tokenizer, resolve_vocab_size
from rlhf_gym.errors import ConfigError
from rlhf_gym.providers import RewardProvider, as_provider
from rlhf_gym.user_simulator import UserSimulator, as_user_simulator

#: Used when the tokenizer has no chat template of its own: ``Role: content`` lines, and ``Assistant:`` as the
#: generation prompt. Assistant turns are stored without surrounding whitespace, so a reply the policy wrote as
#: `` Fine, thanks.`` after ``Assistant:`` renders back to exactly the text it was generated from.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}"
    "{%- if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = frozenset({"system", "user", "assistant", "tool"})
REWARD_MODES = ("turn", "final", "both")
#: scenario fields that describe the opening messages rather than travelling as extras
_OPENING_FIELDS = ("messages", "system", "user", "prompt")
#: row keys the env fills for providers and user simulators; a scenario extra may not reuse them
DIALOGUE_ROW_KEYS = frozenset({"messages", "turn", "scenario_index"})

DEFAULT_MAX_CONTEXT_TOKENS = 256
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_MAX_TURNS = 4


@dataclass
class ScenarioSet:
    """Opening message lists plus per-scenario extra fields (lists as long as ``messages``)."""

    messages: list[list[dict[str, str]]]
    extras: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.messages)

    def row_extras(self, indices: Sequence[int]) -> dict[str, list[Any]]:
        return {key: [values[i] for i in indices] for key, values in self.extras.items()}


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise ConfigError(f"{where}: messages must be a list of {{'role', 'content'}} dicts, got "
                          f"{type(messages).__name__}")
    out = []
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ConfigError(f"{where}: message {j} must be a dict with string 'role' and 'content', got "
                              f"{message!r}")
        if message["role"] not in ROLES:
            raise ConfigError(f"{where}: message {j} has role {message['role']!r}; use one of {sorted(ROLES)}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _scenario_row(item: Any, where: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """One scenario as (opening messages, extras)."""
    if isinstance(item, str):
        if not item.strip():
            raise ConfigError(f"{where} is an empty prompt; remove it")
        return [{"role": "user", "content": item}], {}
    if isinstance(item, Mapping):
        extras = {k: v for k, v in item.items() if k not in _OPENING_FIELDS}
        clash = sorted(set(extras) & DIALOGUE_ROW_KEYS)
        if clash:
            raise ConfigError(f"{where}: field(s) {clash} are filled by the environment; rename them")
        if "messages" in item:
            if any(k in item for k in ("system", "user", "prompt")):
                raise ConfigError(f"{where}: give either 'messages' or 'system'/'user'/'prompt', not both")
            return _check_messages(item["messages"], where), extras
        messages = []
        if item.get("system") is not None:
            messages.append({"role": "system", "content": item["system"]})
        first = item.get("user", item.get("prompt"))
        if first is not None:
            messages.append({"role": "user", "content": first})
        if not messages:
            raise ConfigError(f"{where} has none of 'messages', 'system', 'user', 'prompt'; every scenario needs "
                              f"an opening")
        return _check_messages(messages, where), extras
    return _check_messages(item, where), {}


def load_scenarios(scenarios: Any) -> ScenarioSet:
    """Read the openings of conversations.

    Args:
        scenarios: a list whose items are message lists, plain prompt strings (one user message), or dicts with
            ``messages`` or ``system`` and ``user`` (or ``prompt``) plus extra fields; a ``.jsonl`` path of such
            dicts; a ``.txt`` path (one prompt per line); or a ``datasets.Dataset`` of such rows. A scenario with
            no user message asks the user simulator for the opening.

    Returns:
        The opening message lists and the extra fields, as columns.
    """
    if scenarios is None:
        raise ConfigError("pass scenarios=: a list of message lists, prompts or dicts, or a .jsonl/.txt path")
    source = "scenarios"
    if isinstance(scenarios, (str, os.PathLike)):
        path = Path(scenarios)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"scenarios file {source!r} does not exist; pass a .jsonl/.txt path or a list")
        if path.suffix == ".jsonl":
            from rlhf_gym.preference_store import iter_jsonl

            items: list[Any] = list(iter_jsonl(path, error=ConfigError))
        elif path.suffix == ".txt":
            items = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            raise ConfigError(f"scenarios file {source!r} must end in .jsonl or .txt")
    elif hasattr(scenarios, "column_names") and hasattr(scenarios, "to_list"):
        items = list(scenarios.to_list())
    elif isinstance(scenarios, Sequence):
        items = list(scenarios)
    else:
        raise ConfigError(f"scenarios must be a list or a .jsonl/.txt path, got {type(scenarios).__name__}")
    if not items:
        raise ConfigError(f"{source} holds no scenarios; pass at least one")
    messages, rows = [], []
    for i, item in enumerate(items):
        opening, extras = _scenario_row(item, f"{source}: scenario {i}")
        messages.append(opening)
        rows.append(extras)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return ScenarioSet(messages, {k: [row.get(k) for row in rows] for k in keys})


def resolve_chat_template(tokenizer: Any, chat_template: str | None) -> str | None:
    """The template to render with: ``chat_template`` if given, else the tokenizer's, else the default."""
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ConfigError("chat_template must be a Jinja template string (or None for the tokenizer's own)")
        return chat_template
    if getattr(tokenizer, "chat_template", None):
        return None  # the tokenizer's own
    return DEFAULT_CHAT_TEMPLATE


@dataclass
class ChatFormat:
    """The tokenizer side of a chat env: rendering conversations, encoding them, decoding assistant turns.

    The field names the completion helpers of :mod:`rlhf_gym.envs.common` read (``tokenizer_size``,
    ``pad_token_id``, ``strip_pad``, ``max_new_tokens``, …) mean the same here, so assistant turns are decoded
    exactly as completions are.
    """

    tokenizer: Any
    vocab_size: int
    tokenizer_size: int
    pad_token_id: int
    eos_token_id: int | None
    strip_pad: bool
    max_context_tokens: int
    max_new_tokens: int
    chat_template: str | None  #: ``None``: the tokenizer's own

    def __post_init__(self) -> None:
        self.batch_decode = _batch_decoder(self.tokenizer)

    @property
    def max_prompt_tokens(self) -> int:
        """The observation width (the same as ``max_context_tokens``)."""
        return self.max_context_tokens

    def render(self, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[str]:
        """Each conversation as text, ending with the generation prompt for the assistant's next turn."""
        if not conversations:
            return []
        kwargs = {} if self.chat_template is None else {"chat_template": self.chat_template}
        rendered = self.tokenizer.apply_chat_template(
            [list(c) for c in conversations], add_generation_prompt=True, tokenize=False, **kwargs
        )
        return [rendered] if isinstance(rendered, str) else list(rendered)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rendered texts as left-padded ``(n, max_context_tokens)`` ids and mask, and the untruncated lengths.

        A text longer than the context keeps its last ``max_context_tokens`` tokens (the caller reports it).
        """
        width = self.max_context_tokens
        ids = np.full((len(texts), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        if not texts:
            return ids, mask, lengths
        encoded = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        for i, row in enumerate(encoded):
            lengths[i] = len(row)
            row = row[-width:]
            if row:
                ids[i, width - len(row):] = row
                mask[i, width - len(row):] = 1
        return ids, mask, lengths


def build_chat_format(*, tokenizer: Any, max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, chat_template: str | None = None,
                      vocab_size: int | None = None, model: Any = None) -> dict[str, Any]:
    """The :class:`ChatFormat` fields from a chat env's keyword arguments (validated)."""
    if tokenizer is None:
        raise ConfigError("pass tokenizer= (a tokenizer name/path or object)")
    max_context_tokens = _positive_int(max_context_tokens, "max_context_tokens")
    max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
    tok = load_tokenizer(tokenizer)
    size = resolve_vocab_size(tok, vocab_size, model)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    strip_pad = pad is not None
    if pad is None:
        pad = eos if eos is not None else 0
    return {"tokenizer": tok, "vocab_size": size, "tokenizer_size": len(tok), "pad_token_id": int(pad),
            "eos_token_id": None if eos is None else int(eos), "strip_pad": strip_pad,
            "max_context_tokens": max_context_tokens, "max_new_tokens": max_new_tokens,
            "chat_template": resolve_chat_template(tok, chat_template)}


@dataclass
class DialogueSetup(ChatFormat):
    """What a dialogue env needs, built once from its keyword arguments by :func:`build_dialogue_setup`."""

    provider: RewardProvider | None
    final_provider: RewardProvider | None
    user: UserSimulator
    scenarios: ScenarioSet
    max_turns: int
    reward_mode: str
    shuffle: bool

    @property
    def deterministic(self) -> bool:
        """False when a provider or the user simulator may answer the same input differently (a person)."""
        parts = [self.user, self.provider, self.final_provider]
        return all(bool(getattr(p, "deterministic", True)) for p in parts if p is not None)

    def close(self) -> None:
        for part in (self.provider, self.final_provider, self.user):
            if part is not None:
                part.close()


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def build_dialogue_setup(
    env_name: str,
    *,
    tokenizer: Any = None,
    scenarios: Any = None,
    user: Any = "scripted",
    user_kwargs: Mapping[str, Any] | None = None,
    reward: Any = None,
    reward_kwargs: Mapping[str, Any] | None = None,
    final_reward: Any = None,
    final_reward_kwargs: Mapping[str, Any] | None = None,
    reward_mode: str = "turn",
    max_turns: int = DEFAULT_MAX_TURNS,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    chat_template: str | None = None,
    vocab_size: int | None = None,
    model: Any = None,
    shuffle: bool = True,
) -> DialogueSetup:
    """Validate and load the keyword arguments of ``Dialogue-v0`` (see :class:`~rlhf_gym.envs.dialogue.DialogueEnv`)."""
    missing = [f"{name}= ({what})" for name, value, what in (
        ("tokenizer", tokenizer, "a tokenizer name/path or object"),
        ("scenarios", scenarios, "message lists, prompts or dicts, or a .jsonl/.txt path"),
        ("user", user, "a user-simulator name, a UserSimulator, or f(conversations, **row)"),
    ) if value is None]
    if reward_mode not in REWARD_MODES:
        raise ConfigError(f"{env_name}: reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
    if reward is None and (reward_mode != "final" or final_reward is None):
        missing.append("reward= (a provider name, a RewardProvider, or f(prompts, completions, **kw))")
    if missing:
        raise ConfigError(f"{env_name} needs " + "; ".join(missing))
    max_turns = _positive_int(max_turns, "max_turns")
    chat = build_chat_format(tokenizer=tokenizer, max_context_tokens=max_context_tokens,
                             max_new_tokens=max_new_tokens, chat_template=chat_template, vocab_size=vocab_size,
                             model=model)
    scenario_set = load_scenarios(scenarios)
    provider = as_provider(reward, reward_kwargs) if reward is not None else None
    final = provider
    if final_reward is not None:
        final = as_provider(final_reward, final_reward_kwargs)
    elif final_reward_kwargs:
        raise ConfigError("final_reward_kwargs only apply with final_reward=")
    return DialogueSetup(
        **chat,
        provider=provider if reward_mode in ("turn", "both") else None,
        final_provider=final if reward_mode in ("final", "both") else None,
        user=as_user_simulator(user, user_kwargs),
        scenarios=scenario_set,
        max_turns=max_turns,
        reward_mode=reward_mode,
        shuffle=bool(shuffle),
    )
