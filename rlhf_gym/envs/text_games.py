"""Formatters and parsers that let a language model play games through :class:`~rlhf_gym.envs.text_agent.TextAgentEnv`.

- Gymnasium's ``Blackjack-v1`` and ``FrozenLake-v1``: :data:`BLACKJACK` and :data:`FROZEN_LAKE` hold a formatter
  (the state in words), a parser (the move from a reply) and the rules as a system message; pass one as
  ``TextAgentEnv(env, **FROZEN_LAKE, tokenizer=...)``.
- TextArena's single-player games (``pip install rlhf_gym[games]``): :class:`TextArenaEnv` adapts one to the
  Gymnasium API (text observations, text actions, the game's reward at the end), and :data:`TEXTARENA` passes its
  text through, accepting only replies with a ``[move]`` in square brackets, as TextArena's games ask for.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlhf_gym.envs.text_agent import InvalidReply
from rlhf_gym.errors import ConfigError

# -- Blackjack-v1 ------------------------------------------------------------------------------------------------

BLACKJACK_RULES = ("You are playing blackjack against the dealer. Get a hand total closer to 21 than the dealer "
                   "without going over. Each turn reply with one word: 'hit' (take a card) or 'stick' (stop).")
_BLACKJACK_MOVES = {"hit": 1, "stick": 0, "stand": 0}


def format_blackjack(observation: Any, info: dict[str, Any], env: gym.Env) -> str:
    """``(player sum, dealer card, usable ace)`` in words, and the choice."""
    player, dealer, usable_ace = (int(x) for x in observation)
    ace = "with a usable ace" if usable_ace else "no usable ace"
    dealer_card = "an ace" if dealer == 1 else str(dealer)
    return f"Your hand totals {player} ({ace}). The dealer shows {dealer_card}. Reply 'hit' or 'stick'."


def parse_blackjack(reply: str, env: gym.Env) -> int:
    """1 for hit, 0 for stick (or stand); a reply naming neither or both is invalid."""
    words = {w for w in re.findall(r"[a-z]+", reply.lower()) if w in _BLACKJACK_MOVES}
    moves = {_BLACKJACK_MOVES[w] for w in words}
    if len(moves) != 1:
        raise InvalidReply("reply with exactly one of 'hit' or 'stick'")
    return moves.pop()


BLACKJACK: dict[str, Any] = {"formatter": format_blackjack, "parser": parse_blackjack, "system": BLACKJACK_RULES}

# -- FrozenLake-v1 -----------------------------------------------------------------------------------------------

FROZEN_LAKE_RULES = ("You walk on a frozen lake drawn as a grid: S start, F frozen (safe), H hole (you fall in), "
                     "G goal, P you. Reach G without stepping into H. Each turn reply with one move: left, down, "
                     "right or up.")
FROZEN_LAKE_MOVES = {"left": 0, "down": 1, "right": 2, "up": 3}


def format_frozen_lake(observation: Any, info: dict[str, Any], env: gym.Env) -> str:
    """The map with the walker's square marked ``P``, and the position in words."""
    base = env.unwrapped
    desc = np.asarray(base.desc).astype(str)  # type: ignore[attr-defined]
    ncol = int(base.ncol)  # type: ignore[attr-defined]
    row, col = divmod(int(observation), ncol)
    grid = [list(line) for line in desc]
    grid[row][col] = "P"
    lines = "\n".join("".join(line) for line in grid)
    return f"{lines}\nYou are at row {row + 1}, column {col + 1}. Your move (left, down, right or up)?"


def parse_frozen_lake(reply: str, env: gym.Env) -> int:
    """The one direction word in the reply (0 left, 1 down, 2 right, 3 up); none or several is invalid."""
    moves = {FROZEN_LAKE_MOVES[w] for w in re.findall(r"[a-z]+", reply.lower()) if w in FROZEN_LAKE_MOVES}
    if len(moves) != 1:
        raise InvalidReply("reply with exactly one move: left, down, right or up")
    return moves.pop()


FROZEN_LAKE: dict[str, Any] = {"formatter": format_frozen_lake, "parser": parse_frozen_lake,
                               "system": FROZEN_LAKE_RULES}

# -- TextArena ---------------------------------------------------------------------------------------------------


class TextArenaEnv(gym.Env):
    """A single-player TextArena game as a Gymnasium env: text in, text out, the game's reward when it ends.

    Args:
        game: a TextArena id (e.g. ``"GuessTheNumber-v0-raw"``) or a TextArena env object.

    The observation is the text of the game's messages since the last step; the action is the player's text. The
    reward is 0 until the game ends, then the player's reward from TextArena (``info`` holds the game's own end
    report). Moves the game rejects are reported by the game itself (``info["invalid_move"]`` at the end).
    """

    metadata = {"render_modes": []}

    def __init__(self, game: Any = "GuessTheNumber-v0-raw", max_text: int = 4096):
        try:
            import textarena as ta
        except ImportError:
            raise ConfigError("TextArena is not installed; `pip install rlhf_gym[games]` (or `pip install "
                              "textarena`)") from None
        self.game = ta.make(game) if isinstance(game, str) else game
        self.observation_space = spaces.Text(max_length=max_text, min_length=0, charset=_PRINTABLE)
        self.action_space = spaces.Text(max_length=max_text, min_length=0, charset=_PRINTABLE)
        self._done = True

    def _text(self) -> str:
        _, messages = self.game.get_observation()
        return "\n".join(str(m[1]) if isinstance(m, tuple) else str(m) for m in messages)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        game_seed = int(self.np_random.integers(2**31 - 1)) if seed is None else int(seed)
        self.game.reset(num_players=1, seed=game_seed)
        self._done = False
        return self._text(), {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("TextArenaEnv: the game is over; call reset()")
        done, step_info = self.game.step(action=str(action))
        text = self._text()
        if not done:
            return text, 0.0, False, False, dict(step_info or {})
        self._done = True
        rewards, game_info = self.game.close()
        info = dict(step_info or {}) | dict((game_info or {}).get(0, {}))
        return text, float((rewards or {}).get(0, 0.0)), True, False, info


_PRINTABLE = frozenset(chr(c) for c in range(32, 127)) | {"\n", "\t"}


def format_text(observation: Any, info: dict[str, Any], env: gym.Env) -> str:
    """A text observation as it is (TextArena writes its own prompts)."""
    return str(observation) or "(no new messages)"


def parse_bracketed(reply: str, env: gym.Env) -> str:
    """The reply itself, if it holds a ``[move]`` in square brackets (TextArena's move format)."""
    if not re.search(r"\[[^\[\]]+\]", reply):
        raise InvalidReply("put your move in square brackets, e.g. [5]")
    return reply.strip()


TEXTARENA: dict[str, Any] = {"formatter": format_text, "parser": parse_bracketed}
