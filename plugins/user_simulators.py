"""Built-in plugin: the user simulators of ``rlhf_gym/Dialogue-v0``.

Registers, through ``register_user_simulators``:

- ``scripted`` (:class:`ScriptedUser`): follow-up messages from a script — each scenario's own list, one list for
  all, or a file — and the end of the conversation when the script runs out;
- ``simulated-user`` (:class:`SimulatedUser`): a user who judges each reply by a ground truth with the simulated
  human's noise model (:class:`~rlhf_gym_plugins.simulated_human.SimulatedHuman`), moves on to the next follow-up
  when satisfied, asks again when not, and leaves when the script is done or patience runs out;
- ``policy-user`` (:class:`PolicyUser`): another language model writes the user's turns (model-as-user; the
  trained policy itself for self-play);
- ``live-user`` (:class:`LiveUser`): a person types the user's turns in the terminal or on a local web page.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import rlhf_gym
from rlhf_gym.errors import ConfigError
from rlhf_gym.user_simulator import Conversation, UserSimulator

DEFAULT_RETRIES = (
    "That doesn't really answer me. Can you try again?",
    "Hmm, not quite. Could you say that differently?",
    "I'm not happy with that. Please try once more.",
)


def _assistant_turns(conversation: Conversation) -> int:
    return sum(1 for m in conversation if m["role"] == "assistant")


def _last(conversation: Conversation, role: str) -> str:
    return next((m["content"] for m in reversed(conversation) if m["role"] == role), "")


def _load_script(follow_ups: Any) -> Any:
    """A ``.jsonl`` file (one ``{"follow_ups": [...]}`` object per scenario) as a list of lists."""
    if not isinstance(follow_ups, (str, os.PathLike)):
        return follow_ups
    from rlhf_gym.preference_store import iter_jsonl

    path = Path(follow_ups)
    if path.suffix != ".jsonl" or not path.is_file():
        raise ConfigError(f"follow_ups file {str(path)!r} must be an existing .jsonl file (one list per scenario)")
    return [row.get("follow_ups") or [] for row in iter_jsonl(path, error=ConfigError)]


class ScriptedUser(UserSimulator):
    """Follow-ups from a script; the conversation ends when the script runs out.

    After the assistant's k-th turn the user says the k-th follow-up of its conversation's script, then ``None``.

    Args:
        follow_ups: the script. ``None``: each scenario's own list in its ``key`` field; a list of strings: the same
            script for every conversation; a list of lists (or a ``.jsonl`` path with one
            ``{"follow_ups": [...]}`` per line): the script of scenario ``i`` at index ``i``.
        key: the scenario field holding per-scenario scripts.
        opening_key: the scenario field holding the user's first message, for scenarios without one.

    Example:
        >>> user = ScriptedUser(follow_ups=["And then?"])
        >>> user.reply([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])
        ['And then?']
    """

    def __init__(self, follow_ups: Any = None, key: str = "follow_ups", opening_key: str = "opening"):
        self.follow_ups = _load_script(follow_ups)
        if self.follow_ups is not None and (isinstance(self.follow_ups, str)
                                            or not isinstance(self.follow_ups, Sequence)):
            raise ConfigError(f"follow_ups must be a list (or a .jsonl path), got {type(follow_ups).__name__}")
        self.key = key
        self.opening_key = opening_key

    def script(self, i: int, row: dict[str, list[Any]]) -> list[str]:
        """The follow-ups of conversation ``i`` of a batch."""
        if self.follow_ups is None:
            script = (row.get(self.key) or [None] * (i + 1))[i] or []
        elif all(isinstance(f, str) for f in self.follow_ups):
            script = self.follow_ups
        else:
            scenario = row["scenario_index"][i]
            if scenario >= len(self.follow_ups):
                raise ConfigError(f"the follow-up script has {len(self.follow_ups)} entries but the conversation "
                                  f"comes from scenario {scenario}; give one list per scenario")
            script = self.follow_ups[scenario] or []
        if isinstance(script, str) or not all(isinstance(s, str) for s in script):
            raise ConfigError(f"follow-ups must be a list of strings, got {script!r}")
        return list(script)

    def opening(self, i: int, row: dict[str, list[Any]]) -> str | None:
        value = (row.get(self.opening_key) or [None] * (i + 1))[i]
        return value if isinstance(value, str) else None

    def reply(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        row.setdefault("scenario_index", list(range(len(conversations))))
        out: list[str | None] = []
        for i, conversation in enumerate(conversations):
            k = _assistant_turns(conversation)
            if k == 0:
                out.append(self.opening(i, row))
                continue
            script = self.script(i, row)
            out.append(script[k - 1] if k - 1 < len(script) else None)
        return out


class SimulatedUser(UserSimulator):
    """A user who judges each reply by a noisy ground truth and reacts to it.

    The last assistant reply is rated (as a completion of the user's last message) by a
    :class:`~rlhf_gym_plugins.simulated_human.SimulatedHuman` — the same noise model as the simulated annotator:
    rationality β, mistakes ε, length bias, presets. Then:

    - rating ≥ ``satisfied_at``: the user moves on to the next follow-up of its script not yet said, or, when the
      script is done (or empty), ends the conversation (``None``);
    - otherwise: the user asks again with one of ``retry_messages`` (drawn from its seeded stream), and gives up
      (``None``) after ``patience`` unsatisfying replies in a row (``None``: never).

    Args:
        ground_truth: what the user judges by (any :func:`rlhf_gym.ground_truth.get_ground_truth` spec).
        preset: a simulated-human preset (``oracle``, ``noisy``, ``mistake``, …).
        satisfied_at: rating threshold on the normalised ``[0, 1]`` scale.
        follow_ups, key, opening_key: the script, as for :class:`ScriptedUser`.
        retry_messages: what an unsatisfied user says.
        patience: unsatisfying replies in a row before the user leaves.
        seed: seeds the ratings and the choice of retry messages.
        **judge_kwargs: other :class:`SimulatedHuman` arguments (``beta``, ``epsilon``, ``length_bias``, …).
    """

    def __init__(self, ground_truth: Any = "sentiment", preset: str | None = None, *, satisfied_at: float = 0.7,
                 follow_ups: Any = None, key: str = "follow_ups", opening_key: str = "opening",
                 retry_messages: Sequence[str] = DEFAULT_RETRIES, patience: int | None = None, seed: int = 0,
                 **judge_kwargs: Any):
        from rlhf_gym_plugins.simulated_human import SimulatedHuman

        self.judge = SimulatedHuman(ground_truth, preset, seed=seed, **judge_kwargs)
        self.script = ScriptedUser(follow_ups, key=key, opening_key=opening_key)
        if not retry_messages or not all(isinstance(m, str) and m for m in retry_messages):
            raise ConfigError("retry_messages must be a non-empty list of non-empty strings")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
        self.satisfied_at = float(satisfied_at)
        self.retry_messages = list(retry_messages)
        self.patience = patience
        self.seed = seed
        self.deterministic = self.judge.deterministic
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        self.judge.reset_rng(seed)
        self._rng = np.random.default_rng(self.seed if seed is None else seed)

    def _retries_in_a_row(self, conversation: Conversation) -> int:
        count = 0
        for message in reversed(conversation):
            if message["role"] == "user":
                if message["content"] not in self.retry_messages:
                    break
                count += 1
        return count

    def rate(self, conversations: list[Conversation]) -> list[float]:
        """The user's (noisy) rating of each conversation's last assistant reply, on ``[0, 1]``."""
        prompts = [_last(c, "user") for c in conversations]
        replies = [_last(c, "assistant") for c in conversations]
        return [float(r) for r in self.judge.score(prompts, replies)]

    def reply(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        row.setdefault("scenario_index", list(range(len(conversations))))
        out: list[str | None] = [None] * len(conversations)
        judged = [i for i, c in enumerate(conversations) if _assistant_turns(c) > 0]
        for i, c in enumerate(conversations):
            if _assistant_turns(c) == 0:
                out[i] = self.script.opening(i, row)
        ratings = self.rate([conversations[i] for i in judged]) if judged else []
        draws = self._rng.integers(len(self.retry_messages), size=len(judged))
        for k, i in enumerate(judged):
            conversation = conversations[i]
            if ratings[k] >= self.satisfied_at:
                said = {m["content"] for m in conversation if m["role"] == "user"}
                out[i] = next((f for f in self.script.script(i, row) if f not in said), None)
            elif self.patience is not None and self._retries_in_a_row(conversation) + 1 > self.patience:
                out[i] = None
            else:
                out[i] = self.retry_messages[int(draws[k])]
        return out


def _swap_roles(conversation: Conversation, system: str | None) -> Conversation:
    swapped = {"user": "assistant", "assistant": "user"}
    out = [{"role": "system", "content": system}] if system else []
    out += [{"role": swapped[m["role"]], "content": m["content"]} for m in conversation if m["role"] in swapped]
    return out


class PolicyUser(UserSimulator):
    """Another language model writes the user's turns: model-as-user, or self-play with the trained policy.

    The conversation is shown to the model with the roles swapped (its "assistant" turns are the user's), after an
    optional persona ``system`` prompt, rendered with the chat template (the tokenizer's, else the plain default);
    the model samples the next user message. An empty message, or one containing ``end_marker``, ends the
    conversation.

    Args:
        policy: a :class:`rlhf_gym.Policy`, or a name/path for :meth:`Policy.from_pretrained`. Passing the policy
            being trained gives self-play.
        system: the persona the model plays (a system message), e.g. "You are a curious customer."
        max_new_tokens: the longest user message.
        max_context_tokens: the conversation is left-truncated to this many tokens for the model.
        temperature, top_k, top_p: sampling settings.
        chat_template: a Jinja template (default: the tokenizer's, else the plain ``Role: content`` one).
        end_marker: text that ends the conversation when the model writes it (``None``: only an empty message).
        seed: seeds sampling; :meth:`reset` restarts it.
    """

    def __init__(self, policy: Any, system: str | None = None, *, max_new_tokens: int = 32,
                 max_context_tokens: int = 256, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 chat_template: str | None = None, end_marker: str | None = None, seed: int = 0):
        from rlhf_gym.envs.dialogue_common import resolve_chat_template
        from rlhf_gym.policy import Policy

        self.policy = policy if isinstance(policy, Policy) else Policy.from_pretrained(policy)
        self.system = system
        self.max_new_tokens = int(max_new_tokens)
        self.max_context_tokens = int(max_context_tokens)
        self.sampling = {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}
        self.chat_template = resolve_chat_template(self.policy.tokenizer, chat_template)
        self.end_marker = end_marker
        self.seed = seed
        self._generator: Any = None
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        import torch

        self._generator = torch.Generator(device=self.policy.device)
        self._generator.manual_seed(int(self.seed if seed is None else seed))

    def _encode(self, texts: list[str]) -> tuple[Any, Any]:
        """Rendered texts as a left-padded batch of their last ``max_context_tokens`` tokens (the template already
        holds any special tokens, so none are added)."""
        import torch

        rows = [ids[-self.max_context_tokens:] or [self.policy.pad_token_id]
                for ids in self.policy.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.policy.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        return ids.to(self.policy.device), mask.to(self.policy.device)

    def reply(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        if not conversations:
            return []
        tokenizer = self.policy.tokenizer
        kwargs = {} if self.chat_template is None else {"chat_template": self.chat_template}
        texts = tokenizer.apply_chat_template([_swap_roles(c, self.system) for c in conversations],
                                              add_generation_prompt=True, tokenize=False, **kwargs)
        ids, mask = self._encode(list(texts))
        generation = self.policy.generate(ids, mask, self.max_new_tokens, generator=self._generator,
                                          **self.sampling)
        out: list[str | None] = []
        for text in tokenizer.batch_decode(generation.completion_ids.tolist(), skip_special_tokens=True):
            text = text.strip()
            ended = not text or (self.end_marker is not None and self.end_marker in text)
            out.append(None if ended else text)
        return out


class LiveUser(UserSimulator):
    """A person writes the user's turns: in the terminal, or on a local web page.

    Each conversation of a batch is shown in turn; the person types the next message. An empty message or
    ``/end`` ends that conversation, ``/quit`` stops (:class:`rlhf_gym.live.chat.ChatStopped`). With
    ``ui="web"`` the page at :attr:`url` (127.0.0.1 only, with an access token) shows the waiting conversations and
    takes the replies; a conversation nobody answers within ``timeout_s`` ends.

    Args:
        ui: ``"terminal"`` or ``"web"``.
        host, port: where the web page listens (port 0: any free port).
        timeout_s: how long to wait for a reply on the web page (``None``: for ever).
        stdin, stdout: streams for the terminal (default: the process's own, which must be a terminal).
    """

    deterministic = False

    def __init__(self, ui: str = "terminal", *, host: str = "127.0.0.1", port: int = 0,
                 timeout_s: float | None = None, stdin: Any = None, stdout: Any = None):
        from rlhf_gym.live import chat

        if ui == "terminal":
            self.front: Any = chat.TerminalChat(stdin=stdin, stdout=stdout)
        elif ui == "web":
            self.front = chat.WebChatServer(host=host, port=port).start()
            print(f"Chat as the user at {self.front.url}", flush=True)
        else:
            raise ConfigError(f"live-user ui must be 'terminal' or 'web', got {ui!r}")
        self.ui = ui
        self.timeout_s = timeout_s

    @property
    def url(self) -> str | None:
        """The web page's address (``ui="web"``)."""
        return getattr(self.front, "url", None)

    def reply(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        if self.ui == "web":
            return self.front.ask(conversations, timeout_s=self.timeout_s)
        return self.front.ask(conversations)

    def close(self) -> None:
        stop = getattr(self.front, "stop", None)
        if stop is not None:
            stop()


@rlhf_gym.hookimpl
def register_user_simulators(register):
    register("scripted", ScriptedUser)
    register("simulated-user", SimulatedUser)
    register("policy-user", PolicyUser)
    register("live-user", LiveUser)
