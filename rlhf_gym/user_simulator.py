"""User simulators: the other side of a conversation, in batches.

A multi-turn environment (``rlhf_gym/Dialogue-v0``) owns the protocol — whose turn it is and when the episode
ends — and a reward provider owns judgement. What the *user* says next is neither: it comes from a user simulator.
The contract::

    reply(conversations: list[list[dict]], **row) -> list[str | None]    # None ends that conversation
    reset(seed)                                                            # restart the simulator's randomness

``conversations`` are message lists (``{"role": ..., "content": ...}``) whose last message is usually the
assistant's; a conversation with no assistant turn yet asks for the user's opening message. ``row`` carries the
scenario's extra fields as lists (one per conversation, as a reward provider's ``**row``) plus
``scenario_index``. Anywhere a simulator is accepted, a plain callable ``f(conversations, **row) -> list`` or a
registered name (see :func:`rlhf_gym.make_user_simulator`) is accepted too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlhf_gym.errors import ConfigError

Message = dict[str, str]
Conversation = list[Message]


class UserSimulator:
    """Base class of user simulators. Subclass it and implement :meth:`reply`.

    Example:
        >>> class Echo(UserSimulator):
        ...     def reply(self, conversations, **row):
        ...         return [None if len(c) > 3 else "You said: " + c[-1]["content"] for c in conversations]
        >>> Echo().reply([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])
        ['You said: Hello']
    """

    #: user-facing name, set by the registry when the simulator is built by name
    name: str | None = None
    #: False where the same conversation may get different replies after the same ``reset(seed)`` (a person)
    deterministic: bool = True

    def reply(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        """The user's next message for each conversation; ``None`` ends that conversation."""
        raise NotImplementedError(f"{type(self).__name__} must implement reply(conversations, **row)")

    def reset(self, seed: int | None = None) -> None:
        """Restart the simulator's random stream from ``seed`` (called by the env's seeded ``reset``)."""

    def close(self) -> None:
        """Release resources (servers, models). Called by the env's ``close()``."""

    def __call__(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        return self.reply(conversations, **row)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CallableUser(UserSimulator):
    """Adapter for a plain function ``f(conversations, **row) -> list[str | None]``."""

    def __init__(self, fn: Callable[..., Sequence[str | None]], name: str | None = None):
        if not callable(fn):
            raise TypeError(f"CallableUser needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def reply(self, conversations: list[Conversation], **row: Any) -> list[str | None]:
        return self.fn(conversations, **row)  # checked by the caller (checked_replies)


def as_user_simulator(user: Any, user_kwargs: Mapping[str, Any] | None = None) -> UserSimulator:
    """Turn a simulator name, a :class:`UserSimulator` or a callable into a :class:`UserSimulator`."""
    user_kwargs = dict(user_kwargs or {})
    if isinstance(user, UserSimulator):
        if user_kwargs:
            raise ConfigError("user_kwargs only apply when the user simulator is given by name")
        return user
    if isinstance(user, str):
        from rlhf_gym.plugins import make_user_simulator

        return make_user_simulator(user, **user_kwargs)
    if callable(user):
        if user_kwargs:
            raise ConfigError("user_kwargs only apply when the user simulator is given by name")
        return CallableUser(user)
    raise ConfigError(
        f"user must be a user-simulator name (see `rlhf-gym plugins --kind user-simulator`), a UserSimulator, or a "
        f"callable f(conversations, **row) -> list[str | None]; got {type(user).__name__}"
    )


def checked_replies(user: Any, replies: Any, expected: int) -> list[str | None]:
    """Validate a simulator's answer: one string or ``None`` per conversation.

    Raises:
        ConfigError: naming the simulator, when the count is wrong or a reply is neither a string nor ``None``.
    """
    name = getattr(user, "name", None) or type(user).__name__
    try:
        replies = list(replies)
    except TypeError:
        raise ConfigError(
            f"user simulator {name!r} returned {type(replies).__name__}; it must return a list of {expected} "
            f"replies (str, or None to end a conversation)"
        ) from None
    if len(replies) != expected:
        raise ConfigError(
            f"user simulator {name!r} returned {len(replies)} replies for {expected} conversations; return "
            f"exactly one (str, or None to end it) per conversation"
        )
    for i, reply in enumerate(replies):
        if reply is not None and not isinstance(reply, str):
            raise ConfigError(
                f"user simulator {name!r} returned {type(reply).__name__} at index {i}; a reply is a string, or "
                f"None to end the conversation"
            )
    return replies
