"""Conversational records in TRL's formats, rendered with the tokenizer's chat template.

SFT, DPO and reward-model training accept, next to plain text:

- ``messages``: a list of ``{"role", "content"}`` messages (SFT; every assistant turn is learned, nothing else);
- ``prompt``/``completion`` as message lists (SFT; the completion's assistant turns are learned);
- ``prompt``/``chosen``/``rejected`` as message lists (DPO, reward models);
- implicit prompts: only ``chosen``/``rejected`` conversations that share a prefix, which is the prompt.

Rendering goes through ``tokenizer.apply_chat_template`` one message at a time, so the text of each assistant
turn is exactly what the template adds for it (its end-of-turn marker included), and user/system text is context
only. This needs a template that renders a conversation's prefix as a prefix of the whole (as chat templates do);
one that does not is reported.

Example:
    >>> from rlhf_gym.tiny import build_tiny_tokenizer
    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained(build_tiny_tokenizer())
    >>> chat = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    >>> [(text, learn) for text, learn in chat_segments(tok, chat)]
    [('User: Hi.\\n', False), ('Assistant:', False), (' Hello.<|endoftext|>', True)]
    >>> extract_prompt(chat, [chat[0], {"role": "assistant", "content": "Go away."}])[0]
    [{'role': 'user', 'content': 'Hi.'}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_gym.errors import ConfigError

Message = dict[str, str]


def is_message_list(value: Any) -> bool:
    """Whether ``value`` looks like a conversation (a non-empty list of mappings), valid or not."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, Mapping) for m in value)


def check_messages(value: Any, where: str) -> list[Message]:
    """``value`` as a list of ``{"role", "content"}`` dicts with text in both.

    Raises:
        ConfigError: naming ``where`` (e.g. "record 3 of DPO dataset 'x.jsonl', column 'chosen'") and the message.
    """
    expected = "a list of {'role': ..., 'content': ...} messages with text content"
    if not isinstance(value, (list, tuple)) or not value:
        got = "an empty list" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ConfigError(f"{where}: expected {expected}, got {got}")
    out = []
    for j, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ConfigError(f"{where}: message {j} is a {type(message).__name__}; expected {expected}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ConfigError(f"{where}: message {j} has no 'role' (user, assistant, system); expected {expected}")
        if not isinstance(content, str):
            raise ConfigError(f"{where}: message {j} ({role}) has 'content' of type {type(content).__name__}; "
                              f"expected {expected}")
        out.append({"role": role, "content": content})
    return out


def require_chat_template(tokenizer: Any, what: str = "conversational data") -> None:
    """Raise one clear error when ``tokenizer`` has no chat template to render conversations with."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"{what} is rendered with the tokenizer's chat template, and tokenizer {name!r} has none: set "
            f"tokenizer.chat_template (a Jinja string), or give the records as text columns instead")


def render(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages`` (the empty conversation renders as the empty string)."""
    if not messages:
        return _empty_head(tokenizer) if add_generation_prompt else ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _empty_head(tokenizer: Any) -> str:
    """The generation prompt alone (what the template adds after a conversation to cue the assistant), for a
    conversation that opens with the assistant: templates refuse to render an empty conversation."""
    probe = [{"role": "user", "content": "x"}]
    plain, cued = render(tokenizer, probe), render(tokenizer, probe, add_generation_prompt=True)
    return cued[len(plain):] if cued.startswith(plain) else ""


def _extend(done: str, text: str, where: str, upto: int) -> str:
    if not text.startswith(done):
        raise ConfigError(
            f"{where}: the chat template rendered messages 0..{upto} so that the text of the earlier messages changed "
            f"({done[-40:]!r} is not a prefix of {text[-60:]!r}); per-turn loss masks need a template that renders "
            f"a conversation's prefix as a prefix of the whole")
    return text[len(done):]


def chat_segments(tokenizer: Any, messages: Sequence[Message], *, learn_from: int = 0,
                  where: str = "conversation") -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive ``(text, learn)`` pieces.

    ``learn`` is True exactly for the text the template adds for an assistant message at index ≥ ``learn_from``
    (its content and end-of-turn marker); the generation prompt before it (``"Assistant:"`` or
    ``"<|im_start|>assistant\\n"``), and every user, system or tool message, are context (False).
    """
    require_chat_template(tokenizer)
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            head = render(tokenizer, messages[:i], add_generation_prompt=True) if i else _empty_head(tokenizer)
            segments.append((_extend(done, head, where, i - 1), False))
            done = head
        text = render(tokenizer, messages[: i + 1])
        segments.append((_extend(done, text, where, i), message["role"] == "assistant" and i >= learn_from))
        done = text
    return [(text, learn) for text, learn in segments if text]


def extract_prompt(chosen: Sequence[Message], rejected: Sequence[Message],
                   where: str = "record") -> tuple[list[Message], list[Message], list[Message]]:
    """``(prompt, chosen, rejected)`` from two conversations that share a prompt: the longest common prefix of
    messages is the prompt, and each side must go on with an assistant message.

    Raises:
        ConfigError: the two share nothing, are identical, or part with a message that is not the assistant's.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and dict(chosen[n]) == dict(rejected[n]):
        n += 1
    # answers start with the assistant: when the conversations part at a user turn, the answer is the assistant
    # turn before it (as TRL extracts prompts)
    while 0 < n < min(len(chosen), len(rejected)) and chosen[n]["role"] != "assistant" \
            and chosen[n - 1]["role"] == "assistant":
        n -= 1
    if n == 0:
        raise ConfigError(
            f"{where}: 'chosen' and 'rejected' share no opening messages, so there is no implicit prompt; give a "
            f"'prompt' column, or conversations that start with the same user message(s)")
    if n >= len(chosen) or n >= len(rejected):
        raise ConfigError(f"{where}: 'chosen' and 'rejected' are the same conversation (or one extends the other); "
                          f"a preference pair needs two different assistant answers")
    if chosen[n]["role"] != "assistant" or rejected[n]["role"] != "assistant":
        raise ConfigError(
            f"{where}: after the shared prompt (messages 0..{n - 1}) the conversations go on with a "
            f"{chosen[n]['role']!r}/{rejected[n]['role']!r} message; both must go on with the assistant's answer")
    return [dict(m) for m in chosen[:n]], [dict(m) for m in chosen[n:]], [dict(m) for m in rejected[n:]]


def render_pair(tokenizer: Any, prompt: Sequence[Message], chosen: Sequence[Message],
                rejected: Sequence[Message], where: str = "record") -> tuple[str, str, str]:
    """``(prompt_text, chosen_text, rejected_text)``: the prompt with the generation prompt, and the text the
    template adds for each answer (end-of-turn marker included), so ``prompt_text + chosen_text`` is the whole
    rendered conversation."""
    require_chat_template(tokenizer)
    head = render(tokenizer, prompt, add_generation_prompt=True)
    texts = []
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        full = render(tokenizer, [*prompt, *answer])
        texts.append(_extend(head, full, f"{where}, column {side!r}", len(prompt) + len(answer) - 1))
    return head, texts[0], texts[1]
