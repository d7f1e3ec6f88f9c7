"""Time limits for reward providers: a provider that hangs must not hang training.

:func:`with_timeout` gives any provider a limit in seconds per batch. A provider that can stop waiting by itself
(a live human, through its wait policy) is told the limit and keeps the answers that arrived in time. Any other
provider is called in a daemon thread: when the limit passes, the batch gets no scores (``None`` for every
sample, so the update is skipped rather than trained on made-up rewards), a :class:`RewardTimeoutWarning` is
issued, and ``last_call_timed_out`` / ``timeouts`` tell the algorithm's metrics (``batch/timed_out``). The hung
call cannot block the process from exiting (daemon thread), and a provider still busy with an earlier call is not
called again until it returns, so it never runs twice at once.

Use it through any reward's ``timeout`` keyword (``reward_kwargs={"timeout": 30}``, ``--reward-kwargs
'{"timeout": 30}'``), or wrap a provider directly.

Example:
    >>> import time
    >>> slow = with_timeout(lambda prompts, completions, **kw: time.sleep(5) or [1.0] * len(prompts), 0.05)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     slow.score(["p"], ["c"])
    [None]
    >>> slow.last_call_timed_out, slow.timeouts
    (True, 1)
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

from rlhf_gym.errors import ConfigError, RewardError
from rlhf_gym.providers import RewardProvider, Score, as_provider

__all__ = ["RewardTimeoutError", "RewardTimeoutWarning", "TimeoutReward", "check_timeout", "with_timeout"]


class RewardTimeoutWarning(UserWarning):
    """A reward provider did not answer within its time limit; the batch was left unscored."""


class RewardTimeoutError(RewardError):
    """A call that has no "no score" answer (``rank``) did not finish within the provider's time limit."""


def check_timeout(seconds: Any) -> float:
    """``seconds`` as a positive finite float, or a :class:`ConfigError` saying what a timeout is."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(seconds, bool) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"a reward timeout must be a number of seconds > 0, got {seconds!r}")
    return value


def with_timeout(provider: Any, seconds: Any) -> RewardProvider:
    """``provider`` (name, object or callable) with a limit of ``seconds`` per batch; see the module docstring."""
    seconds = check_timeout(seconds)
    provider = as_provider(provider)
    native = getattr(provider, "apply_timeout", None)
    if callable(native):
        native(seconds)
        return provider
    return TimeoutReward(provider, seconds)


class TimeoutReward(RewardProvider):
    """A provider whose calls give up after ``timeout_s`` seconds (see the module docstring)."""

    def __init__(self, provider: RewardProvider, timeout_s: float):
        self.provider = provider
        self.timeout_s = check_timeout(timeout_s)
        self.name = provider.name or type(provider).__name__
        self.deterministic = provider.deterministic
        #: calls that ran out of time so far
        self.timeouts = 0
        #: whether the most recent call ran out of time
        self.last_call_timed_out = False
        self._running: threading.Thread | None = None

    def _call(self, what: str, n: int, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """``(finished, value)`` of ``fn()`` run with the time limit; errors of ``fn`` are raised here."""
        self.last_call_timed_out = False
        if n == 0:
            return True, fn()
        if self._running is not None:  # an earlier call hung: give it this call's time to finish first
            self._running.join(self.timeout_s)
            if self._running.is_alive():
                return self._timed_out(what, n, still_busy=True)
            self._running = None
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"rlhf_gym-reward-{self.name}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._running = thread
            return self._timed_out(what, n)
        if "error" in box:
            raise box["error"]
        return True, box.get("value")

    def _timed_out(self, what: str, n: int, still_busy: bool = False) -> tuple[bool, Any]:
        self.timeouts += 1
        self.last_call_timed_out = True
        why = "is still busy with an earlier call that ran out of time" if still_busy else \
            f"did not return {what} within {self.timeout_s:g} s"
        warnings.warn(
            f"reward provider {self.name!r} {why}; the {n} samples of this batch get no score (None). Raise its "
            f"timeout (reward_kwargs 'timeout') if it is merely slow.", RewardTimeoutWarning, stacklevel=4)
        return False, None

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        done, value = self._call("scores", len(prompts), lambda: self.provider.score(prompts, completions, **row))
        return value if done else [None] * len(prompts)

    def score_with_info(self, prompts: list[str], completions: list[str],
                        **row: Any) -> tuple[list[Score], dict[str, list[Any]]]:
        done, value = self._call("scores", len(prompts),
                                 lambda: self.provider.score_with_info(prompts, completions, **row))
        return value if done else ([None] * len(prompts), {})

    def compare(self, prompts: list[str], completions_a: list[str], completions_b: list[str],
                **row: Any) -> list[Score]:
        done, value = self._call("preferences", len(prompts),
                                 lambda: self.provider.compare(prompts, completions_a, completions_b, **row))
        return value if done else [None] * len(prompts)

    def rank(self, prompt: str, completions: list[str], **row: Any) -> list[int]:
        done, value = self._call("a ranking", len(completions), lambda: self.provider.rank(prompt, completions, **row))
        if not done:
            raise RewardTimeoutError(
                f"reward provider {self.name!r} did not rank {len(completions)} completions within "
                f"{self.timeout_s:g} s; raise its timeout or use feedback='compare', where a late answer is a skip")
        return value

    def close(self) -> None:
        self.provider.close()

    def __getstate__(self) -> dict[str, Any]:
        # A call still running belongs to this process; a copy (another process, a Ray actor) starts idle.
        return {**self.__dict__, "_running": None}

    def __getattr__(self, name: str) -> Any:
        # Everything else (state_dict, extras such as a simulated human's settings) is the wrapped provider's.
        if name.startswith("__") or name == "provider":
            raise AttributeError(name)
        return getattr(self.provider, name)

    def __repr__(self) -> str:
        return f"TimeoutReward({self.provider!r}, timeout_s={self.timeout_s:g})"
