"""An LLM agent in any text-describable Gymnasium env: the game becomes a conversation.

:class:`TextAgentEnv` wraps an env whose observations a *formatter* can write as text and whose actions a *parser*
can read from a reply. Each step is one assistant turn: the reply is parsed into the inner env's action and the
inner env steps; the next user message is the formatter's description of the new state. The observation is the
conversation rendered with the chat template — the same ``Dict(input_ids, attention_mask)`` as
``rlhf_gym/Dialogue-v0`` — so the policies, rollouts and algorithms of rlhf_gym play games unchanged. A reply that
cannot be parsed leaves the game where it was, earns ``invalid_penalty`` and tells the agent why; after
``max_invalid`` invalid replies in a row the episode terminates. Formatters and parsers for Gymnasium's
Blackjack-v1 and FrozenLake-v1, and an adapter for TextArena games, are in :mod:`rlhf_gym.envs.text_games`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from rlhf_gym.envs.common import completion_rows, decode_completions
from rlhf_gym.envs.dialogue import dialogue_spaces
from rlhf_gym.envs.dialogue_common import (
    DEFAULT_MAX_NEW_TOKENS,
    ChatFormat,
    build_chat_format,
)
from rlhf_gym.errors import ConfigError

ENV_NAME = "TextAgentEnv"

#: ``formatter(observation, info, env) -> str``: the user message describing the inner env's state
Formatter = Callable[[Any, dict[str, Any], gym.Env], str]
#: ``parser(reply, env) -> action``: raise :class:`InvalidReply` (or return ``None``) for an unusable reply
Parser = Callable[[str, gym.Env], Any]


class InvalidReply(ValueError):
    """Raised by a parser: the reply holds no valid action. The message is shown to the agent."""


class TextAgentEnv(gym.Env):
    """A text-describable Gymnasium env played by a language model, one assistant turn per step.

    Args:
        env: the inner env (an object, or an id for ``gym.make``).
        formatter: ``formatter(observation, info, env) -> str``: the user message describing a state.
        parser: ``parser(reply, env) -> action``; raises :class:`InvalidReply` (or returns ``None``) when the reply
            holds no valid action. The action must lie in the inner env's action space.
        tokenizer: a name/path or tokenizer object.
        system: a system message (the rules of the game), shown first.
        invalid_penalty: the reward of a turn whose reply could not be parsed (the game does not move).
        max_invalid: invalid replies in a row that end the episode (``terminated``; ``None``: never).
        max_turns: assistant turns before the episode is truncated (``None``: only the inner env decides).
        max_context_tokens, max_new_tokens, chat_template, vocab_size, model: as for ``Dialogue-v0``.
        env_kwargs: keyword arguments for ``gym.make`` when ``env`` is an id.

    ``info`` holds ``messages``, ``turn``, and after a step ``completion``, ``valid`` (whether the reply parsed),
    ``action`` (the inner action, ``None`` when invalid), ``invalid_reason``, ``invalid_count`` (in a row),
    ``ended_by`` (``"env"``, ``"invalid"``, ``"max_turns"``, ``"context"`` or ``None``) and ``env_info`` (the inner
    env's info). The reward of a valid turn is the inner env's reward.

    Example:
        ``tokenizer_path`` is a tokenizer directory saved with ``save_pretrained``.

        >>> from rlhf_gym.envs.text_games import FROZEN_LAKE
        >>> env = TextAgentEnv(gym.make("FrozenLake-v1", map_name="4x4", is_slippery=False), **FROZEN_LAKE,
        ...                    tokenizer=tokenizer_path)
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step("I will jump!")
        >>> reward, info["valid"], terminated
        (-1.0, False, False)
        >>> obs, reward, terminated, truncated, info = env.step("right")
        >>> info["action"], info["valid"]
        (2, True)
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, env: gym.Env | str, formatter: Formatter, parser: Parser, *, tokenizer: Any = None,
                 system: str | None = None, invalid_penalty: float = -1.0, max_invalid: int | None = 3,
                 max_turns: int | None = None, max_context_tokens: int = 1024,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, chat_template: str | None = None,
                 vocab_size: int | None = None, model: Any = None, env_kwargs: dict[str, Any] | None = None,
                 render_mode: str | None = None):
        if isinstance(env, str):
            env = gym.make(env, **dict(env_kwargs or {}))
        elif env_kwargs:
            raise ConfigError("env_kwargs only apply when env is given as an id")
        if not isinstance(env, gym.Env):
            raise ConfigError(f"{ENV_NAME} wraps a gymnasium.Env (or an id), got {type(env).__name__}")
        if not callable(formatter) or not callable(parser):
            raise ConfigError(f"{ENV_NAME} needs formatter(observation, info, env) -> str and "
                              f"parser(reply, env) -> action callables")
        for name, value in (("max_invalid", max_invalid), ("max_turns", max_turns)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"{ENV_NAME} renders as 'ansi' text only; got render_mode={render_mode!r}")
        self.env = env
        self.formatter = formatter
        self.parser = parser
        self.system = system
        self.invalid_penalty = float(invalid_penalty)
        self.max_invalid = max_invalid
        self.max_turns = max_turns
        self.render_mode = render_mode
        self.chat = ChatFormat(**build_chat_format(tokenizer=tokenizer, max_context_tokens=max_context_tokens,
                                                   max_new_tokens=max_new_tokens, chat_template=chat_template,
                                                   vocab_size=vocab_size, model=model))
        self.observation_space, self.action_space = dialogue_spaces(self.chat)  # type: ignore[arg-type]
        self.messages: list[dict[str, str]] = []
        self._state: tuple[Any, dict[str, Any]] = (None, {})
        self._turn = 0
        self._invalid = 0
        self._done = True

    @property
    def tokenizer(self) -> Any:
        return self.chat.tokenizer

    def _describe(self, observation: Any, info: dict[str, Any]) -> str:
        text = self.formatter(observation, info, self.env)
        if not isinstance(text, str):
            raise ConfigError(f"the formatter must return a string, got {type(text).__name__}")
        return text

    def _observe(self) -> tuple[dict[str, np.ndarray], bool]:
        ids, mask, lengths = self.chat.encode(self.chat.render([self.messages]))
        return {"input_ids": ids[0], "attention_mask": mask[0]}, bool(lengths[0] > self.chat.max_context_tokens)

    def _info(self) -> dict[str, Any]:
        return {"messages": copy.deepcopy(self.messages), "turn": self._turn}

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the inner env (with the same seed and options) and open the conversation with its state."""
        super().reset(seed=seed)
        observation, info = self.env.reset(seed=seed, options=options)
        self._state = (observation, info)
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.messages.append({"role": "user", "content": self._describe(observation, info)})
        self._turn, self._invalid, self._done = 0, 0, False
        obs, overflow = self._observe()
        if overflow:
            raise ConfigError(f"the opening of the game does not fit in max_context_tokens="
                              f"{self.chat.max_context_tokens}; raise it")
        return obs, self._info() | {"env_info": info}

    def _parse(self, reply: str) -> tuple[Any, str | None]:
        try:
            action = self.parser(reply, self.env)
        except InvalidReply as exc:
            return None, str(exc) or "the reply holds no valid action"
        if action is None:
            return None, "the reply holds no valid action"
        if not self.env.action_space.contains(action):
            return None, f"{action!r} is not a legal action"
        return action, None

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Play the assistant's reply ``action`` (token ids or a string)."""
        if self._done:
            raise RuntimeError(f"{ENV_NAME}: the episode is over (or never started); call reset() before step()")
        rows, lengths = completion_rows(self.chat, [action], ENV_NAME)  # type: ignore[arg-type]
        reply = decode_completions(self.chat, rows, lengths)[0]  # type: ignore[arg-type]
        inner_action, reason = self._parse(reply)  # before any change: a parser that raises changes nothing
        self.messages.append({"role": "assistant", "content": reply.strip()})
        self._turn += 1
        terminated = truncated = False
        ended_by: str | None = None
        env_info: dict[str, Any] = {}
        if reason is None:
            observation, reward, terminated, truncated, env_info = self.env.step(inner_action)
            self._state = (observation, env_info)
            self._invalid = 0
            reward = float(reward)
            if terminated or truncated:
                ended_by = "env"
            feedback = self._describe(observation, env_info)
        else:
            self._invalid += 1
            reward = self.invalid_penalty
            if self.max_invalid is not None and self._invalid >= self.max_invalid:
                terminated, ended_by = True, "invalid"
            feedback = f"Invalid reply: {reason}.\n" + self._describe(*self._state)
        if not (terminated or truncated) and self.max_turns is not None and self._turn >= self.max_turns:
            truncated, ended_by = True, "max_turns"
        if not (terminated or truncated):
            self.messages.append({"role": "user", "content": feedback})
        obs, overflow = self._observe()
        if overflow and not (terminated or truncated):
            truncated, ended_by = True, "context"
        self._done = bool(terminated or truncated)
        info = self._info() | {"completion": reply, "valid": reason is None, "action": inner_action,
                               "invalid_reason": reason, "invalid_count": self._invalid, "ended_by": ended_by,
                               "env_info": env_info}
        return obs, reward, bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)

    def close(self) -> None:
        self.env.close()
