"""TextAgentEnv: a language model playing Gymnasium games (FrozenLake, Blackjack) and a TextArena game through
replies; invalid replies are penalised, reported and can end the episode."""

from __future__ import annotations

import collections
import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.toy_text.frozen_lake import generate_random_map
from gymnasium.utils.env_checker import check_env

from rlhf_gym.envs.dialogue_common import DEFAULT_CHAT_TEMPLATE
from rlhf_gym.envs.text_agent import InvalidReply, TextAgentEnv
from rlhf_gym.envs.text_games import (
    BLACKJACK,
    FROZEN_LAKE,
    TEXTARENA,
    format_blackjack,
    parse_blackjack,
    parse_frozen_lake,
)
from rlhf_gym.errors import ConfigError

MOVES = {0: "left", 1: "down", 2: "right", 3: "up"}
STEPS = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    return plain


def shortest_moves(desc: list[str]) -> list[int]:
    """Breadth-first search from S to G avoiding holes."""
    n = len(desc)
    start = next((r, c) for r in range(n) for c in range(n) if desc[r][c] == "S")
    previous = {start: None}
    queue = collections.deque([start])
    while queue:
        r, c = queue.popleft()
        if desc[r][c] == "G":
            moves = []
            while previous[(r, c)] is not None:
                (r, c), move = previous[(r, c)]
                moves.append(move)
            return moves[::-1]
        for move, (dr, dc) in STEPS.items():
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and nxt not in previous and desc[nxt[0]][nxt[1]] != "H":
                previous[nxt] = ((r, c), move)
                queue.append(nxt)
    raise AssertionError("no path")


def lake(tok, desc, **kw):
    return TextAgentEnv(gym.make("FrozenLake-v1", desc=desc, is_slippery=False), **FROZEN_LAKE, tokenizer=tok,
                        **kw)


@pytest.mark.parametrize("map_seed", [3, 11])
def test_scripted_replies_walk_a_seeded_frozen_lake_to_the_goal(tok, map_seed):
    desc = generate_random_map(size=5, p=0.75, seed=map_seed)
    env = lake(tok, desc)
    obs, info = env.reset(seed=0)
    assert info["messages"][0]["role"] == "system" and "P" in info["messages"][1]["content"]
    total, moves = 0.0, shortest_moves(desc)
    for k, move in enumerate(moves):
        obs, reward, terminated, truncated, info = env.step(f" I will go {MOVES[move]} now.")
        assert info["valid"] and info["action"] == move
        total += reward
        assert terminated == (k == len(moves) - 1)
    assert total == 1.0 and info["ended_by"] == "env" and info["turn"] == len(moves)
    text = tok.decode(obs["input_ids"][obs["attention_mask"].astype(bool)])
    assert text.endswith(f"Assistant: I will go {MOVES[moves[-1]]} now.\nAssistant:")


@pytest.mark.parametrize("reply", ["", " jump!", " left or right?", " UP and down", " 42"])
def test_an_invalid_reply_is_penalised_and_the_game_stays_put(tok, reply):
    desc = generate_random_map(size=4, seed=5)
    env = lake(tok, desc, invalid_penalty=-0.5, max_invalid=2)
    _, info = env.reset(seed=0)
    state = info["messages"][-1]["content"]
    _, reward, terminated, truncated, info = env.step(reply)
    assert reward == -0.5 and not terminated and not truncated
    assert not info["valid"] and info["action"] is None and "exactly one move" in info["invalid_reason"]
    assert info["messages"][-1]["content"] == f"Invalid reply: {info['invalid_reason']}.\n{state}"
    assert info["invalid_count"] == 1 and info["env_info"] == {}
    # a valid reply resets the count; two invalid in a row end the episode
    env.step(f" {MOVES[shortest_moves(desc)[0]]}")
    env.step(reply)
    _, reward, terminated, _, info = env.step(reply)
    assert terminated and info["ended_by"] == "invalid" and info["invalid_count"] == 2 and reward == -0.5


def test_token_id_replies_and_illegal_parsed_actions(tok):
    env = lake(tok, generate_random_map(size=4, seed=5), max_new_tokens=8)
    env.reset(seed=0)
    ids = tok(" down", add_special_tokens=False)["input_ids"]
    _, _, _, _, info = env.step(np.array(ids + [tok.eos_token_id] * (8 - len(ids)), dtype=np.int64))
    assert info["completion"] == " down" and info["valid"] and info["action"] == 1
    illegal = TextAgentEnv(gym.make("FrozenLake-v1", is_slippery=False), formatter=FROZEN_LAKE["formatter"],
                           parser=lambda reply, env: 7, tokenizer=tok)
    illegal.reset(seed=0)
    info = illegal.step(" anything")[4]
    assert not info["valid"] and "7 is not a legal action" in info["invalid_reason"]
    none = TextAgentEnv(gym.make("FrozenLake-v1"), formatter=FROZEN_LAKE["formatter"], parser=lambda r, e: None,
                        tokenizer=tok, max_invalid=None, max_turns=3)
    none.reset(seed=0)
    for _ in range(2):
        assert none.step(" x")[2:4] == (False, False)
    assert none.step(" x")[4]["ended_by"] == "max_turns"


def test_blackjack_formatter_parser_and_rewards_match_the_raw_game(tok):
    assert format_blackjack((14, 1, 1), {}, None) == ("Your hand totals 14 (with a usable ace). The dealer shows an "
                                                     "ace. Reply 'hit' or 'stick'.")
    assert parse_blackjack("I'll HIT.", None) == 1 and parse_blackjack("stand", None) == 0
    for bad in ("hit or stick", "", "double down"):
        with pytest.raises(InvalidReply):
            parse_blackjack(bad, None)
    for seed in range(6):
        raw = gym.make("Blackjack-v1")
        raw.reset(seed=seed)
        _, raw_reward, *_ = raw.step(0)
        env = TextAgentEnv(gym.make("Blackjack-v1"), **BLACKJACK, tokenizer=tok)
        _, info = env.reset(seed=seed)
        assert "Your hand totals" in info["messages"][-1]["content"]
        _, reward, terminated, _, info = env.step(" I stick.")
        assert terminated and reward == raw_reward and info["action"] == 0


def test_text_agent_passes_gymnasium_env_checker_and_rejects_bad_settings(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(lake(tok, generate_random_map(size=4, seed=5), max_new_tokens=8, max_context_tokens=768))
    with pytest.raises(ConfigError, match="formatter"):
        TextAgentEnv(gym.make("FrozenLake-v1"), formatter="x", parser=parse_frozen_lake, tokenizer=tok)
    with pytest.raises(ConfigError, match="max_invalid"):
        TextAgentEnv(gym.make("FrozenLake-v1"), **FROZEN_LAKE, tokenizer=tok, max_invalid=0)
    with pytest.raises(ConfigError, match="gymnasium.Env"):
        TextAgentEnv(object(), **FROZEN_LAKE, tokenizer=tok)
    with pytest.raises(ConfigError, match="env_kwargs"):
        TextAgentEnv(gym.make("FrozenLake-v1"), **FROZEN_LAKE, tokenizer=tok, env_kwargs={"map_name": "8x8"})
    env = TextAgentEnv("FrozenLake-v1", **FROZEN_LAKE, tokenizer=tok, env_kwargs={"map_name": "8x8"},
                       chat_template=DEFAULT_CHAT_TEMPLATE)
    assert env.reset(seed=0)[1]["messages"][1]["content"].count("\n") == 8
    with pytest.raises(ConfigError, match="max_context_tokens"):
        lake(tok, generate_random_map(size=4, seed=5), max_context_tokens=16).reset(seed=0)


def test_a_textarena_game_is_played_through_the_wrapper(tok):
    pytest.importorskip("textarena")
    from rlhf_gym.envs.text_games import TextArenaEnv

    env = TextAgentEnv(TextArenaEnv("GuessTheNumber-v0-raw"), **TEXTARENA, tokenizer=tok, max_new_tokens=8)
    _, info = env.reset(seed=3)
    assert "Guess The Number" in info["messages"][0]["content"]
    _, reward, terminated, _, info = env.step(" I think it is 10")
    assert reward == -1.0 and not info["valid"] and "square brackets" in info["invalid_reason"]
    low, high, total = 1, 20, reward
    for _ in range(8):
        guess = (low + high) // 2
        _, reward, terminated, truncated, info = env.step(f" [{guess}]")
        total += reward
        if terminated or truncated:
            break
        hint = info["messages"][-1]["content"]
        low, high = (guess + 1, high) if "higher" in hint else (low, guess - 1)
    assert terminated and info["ended_by"] == "env" and reward == 1.0
    assert info["env_info"]["reason"].startswith("Congratulations") and not info["env_info"]["invalid_move"]
