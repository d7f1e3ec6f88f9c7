"""Dialogue-v0: the conversation protocol, observations, rewards per turn and at the end, endings, the native
vector env, scenario loading and the errors on bad input."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rlhf_gym  # noqa: F401  (registers the ids)
from rlhf_gym.envs.dialogue import DialogueEnv, DialogueVectorEnv, dialogue_task
from rlhf_gym.envs.dialogue_common import DEFAULT_CHAT_TEMPLATE, load_scenarios
from rlhf_gym.errors import ConfigError, RewardError, UnknownNameError

SCENARIOS = [
    {"system": "Be brief.", "user": "Hi!", "follow_ups": ["Tell me more.", "And then?"], "answer": "a"},
    {"user": "What is up?", "follow_ups": ["Why?"], "answer": "b"},
    "Plain prompt",
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    """The tiny tokenizer without a chat template of its own, so the documented default template applies."""
    import copy

    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    return plain


def length_reward(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


class Recorder:
    """A TRL-style reward that records what each call received."""

    def __init__(self, value=1.0):
        self.calls = []
        self.value = value

    def __call__(self, prompts, completions, **row):
        self.calls.append({"prompts": list(prompts), "completions": list(completions), **row})
        return [self.value] * len(prompts)


def make(tokenizer, **kw):
    args = {"tokenizer": tokenizer, "scenarios": SCENARIOS, "reward": length_reward, "shuffle": False}
    return DialogueEnv(**(args | kw))


def decode_obs(tokenizer, obs):
    ids = obs["input_ids"][obs["attention_mask"].astype(bool)]
    return tokenizer.decode(ids)


def test_conversation_follows_the_script_and_ends_when_the_user_does(tok):
    env = make(tok)
    obs, info = env.reset(seed=0)
    assert info["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    obs, reward, terminated, truncated, info = env.step(" Hello there.")
    assert (reward, terminated, truncated) == (13.0, False, False)
    assert info["messages"][-2:] == [{"role": "assistant", "content": "Hello there."},
                                     {"role": "user", "content": "Tell me more."}]
    assert info["user_reply"] == "Tell me more." and info["turn"] == 1 and info["ended_by"] is None
    env.step(" More.")
    obs, reward, terminated, truncated, info = env.step(" Done.")
    assert terminated and not truncated and info["ended_by"] == "user" and info["user_reply"] is None
    assert [m["role"] for m in info["messages"]] == ["system", "user", "assistant", "user", "assistant", "user",
                                                     "assistant"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(" again")


def test_observation_is_the_conversation_rendered_with_the_chat_template(tok):
    env = make(tok, max_context_tokens=128)
    obs, info = env.reset(seed=0)
    assert obs["input_ids"].shape == (128,) and obs["attention_mask"][-1] == 1 and obs["attention_mask"][0] == 0
    assert decode_obs(tok, obs) == "System: Be brief.\nUser: Hi!\nAssistant:"
    obs, *_ = env.step(" Hello.")
    assert decode_obs(tok, obs) == ("System: Be brief.\nUser: Hi!\nAssistant: Hello.\n"
                                               "User: Tell me more.\nAssistant:")
    custom = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    env = make(tok, chat_template=custom)
    obs, _ = env.reset(seed=0)
    assert decode_obs(tok, obs) == "<system>Be brief.<user>Hi!<assistant>"


def test_the_tokenizers_own_chat_template_is_used_when_it_has_one(tok):
    import copy

    own = copy.deepcopy(tok)
    own.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    env = make(own)
    obs, _ = env.reset(seed=0)
    assert decode_obs(own, obs) == "[system] Be brief.\n[user] Hi!\n[assistant]"
    assert env.unwrapped.setup.chat_template is None
    assert make(tok).setup.chat_template == DEFAULT_CHAT_TEMPLATE


def test_providers_see_the_whole_conversation_and_the_last_turn_as_completion(tok):
    reward = Recorder()
    env = make(tok, reward=reward)
    env.reset(seed=0)
    env.step(" First.")
    env.step(" Second.")
    call = reward.calls[-1]
    assert call["completions"] == [" Second."]
    assert call["prompts"][0].endswith("User: Tell me more.\nAssistant:")
    assert call["messages"][0][-1] == {"role": "assistant", "content": "Second."}
    assert call["messages"][0][-2] == {"role": "user", "content": "Tell me more."}
    assert call["answer"] == ["a"] and call["follow_ups"] == [["Tell me more.", "And then?"]]
    assert call["turn"] == [2] and call["scenario_index"] == [0]


@pytest.mark.parametrize("mode", ["turn", "final", "both"])
def test_reward_modes_give_turn_and_final_rewards_where_configured(tok, mode):
    turn, final = Recorder(1.0), Recorder(10.0)
    env = make(tok, reward=turn, final_reward=final, reward_mode=mode)
    env.reset(seed=0)
    rewards, done = [], False
    while not done:
        _, r, terminated, truncated, info = env.step(" ok")
        rewards.append(r)
        done = terminated or truncated
    expected_turn = [1.0, 1.0, 1.0] if mode in ("turn", "both") else [0.0, 0.0, 0.0]
    expected_final = [0.0, 0.0, 10.0] if mode in ("final", "both") else [0.0, 0.0, 0.0]
    assert rewards == [a + b for a, b in zip(expected_turn, expected_final)]
    assert (info["final_score"] == 10.0) == (mode != "turn")
    assert len(final.calls) == (0 if mode == "turn" else 1)
    if mode != "turn":
        assert len(final.calls[0]["messages"][0]) == 7  # the finished conversation


def test_final_mode_falls_back_to_the_turn_reward_provider(tok):
    env = make(tok, reward_mode="final", max_turns=1)
    env.reset(seed=0)
    _, reward, _, truncated, info = env.step(" abc")
    assert truncated and reward == 4.0 and info["final_score"] == 4.0 and info["score"] is None


def test_a_provider_can_end_the_episode_as_solved(tok):
    class Solver(rlhf_gym.RewardProvider):
        def score_with_info(self, prompts, completions, **row):
            return [1.0] * len(prompts), {"solved": ["42" in c for c in completions]}

    env = make(tok, reward=Solver())
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(" no idea")
    assert not terminated and info["solved"] is False
    _, _, terminated, truncated, info = env.step(" it is 42")
    assert terminated and not truncated and info["ended_by"] == "solved" and info["user_reply"] is None


def test_max_turns_and_the_context_limit_truncate(tok):
    env = make(tok, max_turns=2, user_kwargs={"follow_ups": ["go on"] * 9})
    env.reset(seed=0)
    assert env.step(" a")[3] is False
    _, _, terminated, truncated, info = env.step(" b")
    assert truncated and not terminated and info["ended_by"] == "max_turns"

    long = "word " * 60
    env = make(tok, scenarios=[{"user": "Hi", "follow_ups": [long]}], max_context_tokens=48)
    obs, _ = env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(" ok")
    assert truncated and info["ended_by"] == "context" and info["context_length"] > 48
    with pytest.raises(ConfigError, match="max_context_tokens"):
        make(tok, scenarios=[long], max_context_tokens=16).reset(seed=0)


def test_token_id_actions_are_cut_at_eos_and_equal_string_actions(tok):
    ids = tok(" Hello there", add_special_tokens=False)["input_ids"]
    env = make(tok, max_new_tokens=16)
    env.reset(seed=0)
    row = np.full(16, tok.pad_token_id, dtype=np.int64)
    row[: len(ids)] = ids
    row[len(ids)] = tok.eos_token_id
    row[len(ids) + 1:] = ids[0]  # after EOS: ignored
    _, reward, _, _, info = env.step(row)
    assert info["completion"] == " Hello there" and reward == len(" Hello there")
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.full(16, 10**6, dtype=np.int64))


def test_passes_gymnasium_env_checker(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("rlhf_gym/Dialogue-v0", tokenizer=tok, scenarios=SCENARIOS, reward=length_reward,
                       max_new_tokens=8, max_context_tokens=160, user="simulated-user",
                       user_kwargs={"follow_ups": ["more"], "preset": "noisy"})
        check_env(env.unwrapped)


def test_seeded_resets_reproduce_episodes_with_a_noisy_simulated_user(tok):
    def run(seed):
        env = make(tok, user="simulated-user", shuffle=True, max_turns=4,
                   user_kwargs={"preset": "noisy", "satisfied_at": 0.55, "follow_ups": ["more", "again"]})
        out = []
        for episode in range(4):
            env.reset(seed=seed if episode == 0 else None)
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(" it was good and fun")
                done = terminated or truncated
            out.append(info["messages"])
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_vector_env_matches_the_single_env_with_one_call_per_step(tok):
    replies = [" good", " fine thanks", " ok", " yes"]
    reward, user_calls = Recorder(), []

    def user(conversations, **row):
        user_calls.append(len(conversations))
        return ["more" if sum(m["role"] == "assistant" for m in c) < 2 else None for c in conversations]

    envs = gym.make_vec("rlhf_gym/Dialogue-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        tokenizer=tok, scenarios=SCENARIOS, reward=reward, user=user, shuffle=False)
    assert isinstance(envs.unwrapped, DialogueVectorEnv)
    obs, info = envs.reset(seed=0)
    assert obs["input_ids"].shape == (4, 256) and info["scenario_index"].tolist() == [0, 1, 2, 0]
    first = envs.unwrapped.current_messages()
    obs, rewards, terminated, truncated, info = envs.step(replies)
    assert len(reward.calls) == 1 and user_calls == [4]
    assert not terminated.any() and not info["_final_obs"].any()
    obs, rewards, terminated, truncated, info = envs.step(replies)
    assert len(reward.calls) == 2 and user_calls == [4, 4]
    assert terminated.all() and info["_final_obs"].all() and set(info["ended_by"]) == {"user"}
    # the finished conversations are in info; the observation is already the next scenario (SAME_STEP)
    assert all(len(m) == len(first[i]) + 4 - 1 for i, m in enumerate(info["messages"]))
    assert [m[0]["content"] for m in envs.unwrapped.current_messages()] == ["What is up?", "Plain prompt",
                                                                            "Be brief.", "What is up?"]
    for i in range(4):
        single = make(tok, user=user, reward=Recorder())
        single.reset(options={"scenario_index": int(info["scenario_index"][i])})
        single.step(replies[i])
        _, r, term, _, single_info = single.step(replies[i])
        assert term and single_info["messages"] == info["messages"][i] and r == rewards[i]
        final = info["final_obs"][i]
        assert decode_obs(tok, final).endswith(f"User: more\nAssistant:{replies[i]}\nAssistant:")
    envs.close()


def test_dialogue_task_fixes_settings_for_a_registered_id(tok):
    task = dialogue_task("A test task.", scenarios=["Hi"], reward=length_reward, max_turns=1)
    assert task.__doc__ == "A test task."
    env = task(tokenizer=tok, max_new_tokens=4)
    env.reset(seed=0)
    assert env.step(" yo")[3] is True and env.max_new_tokens == 4
    vec = task.vector_entry_point(num_envs=2, tokenizer=tok)
    assert vec.reset(seed=0)[0]["input_ids"].shape[0] == 2
    with pytest.raises(ConfigError, match="unknown settings"):
        dialogue_task(scenario=["Hi"])


def test_scenarios_load_from_every_supported_form(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "A"}], "answer": 1},
        {"system": "S", "prompt": "B"},
    ]) + "\n")
    loaded = load_scenarios(path)
    assert loaded.messages == [[{"role": "user", "content": "A"}],
                               [{"role": "system", "content": "S"}, {"role": "user", "content": "B"}]]
    assert loaded.extras == {"answer": [1, None]}
    txt = tmp_path / "s.txt"
    txt.write_text("one\n\ntwo\n")
    assert load_scenarios(txt).messages == [[{"role": "user", "content": "one"}], [{"role": "user", "content": "two"}]]
    assert load_scenarios([[{"role": "system", "content": "x"}]]).messages == [[{"role": "system", "content": "x"}]]


@pytest.mark.parametrize("bad, match", [
    ([], "no scenarios"),
    (None, "scenarios="),
    ([""], "empty prompt"),
    ([{"answer": 1}], "needs an opening"),
    ([[{"role": "robot", "content": "x"}]], "role 'robot'"),
    ([[{"role": "user", "content": 3}]], "string 'role' and 'content'"),
    ([[{"role": "user"}]], "string 'role' and 'content'"),
    ([{"user": "x", "turn": 2}], "filled by the environment"),
    ([{"messages": [], "user": "x"}], "not both"),
    ("missing.jsonl", "does not exist"),
    (42, "must be a list"),
])
def test_bad_scenarios_get_one_clear_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_scenarios(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"reward": None}, "reward="),
    ({"reward_mode": "sometimes"}, "reward_mode"),
    ({"max_turns": 0}, "max_turns"),
    ({"max_context_tokens": -1}, "max_context_tokens"),
    ({"user": 3}, "user must be"),
    ({"user": "no-such-user"}, "Unknown user simulator"),
    ({"user": lambda c, **r: c, "user_kwargs": {"x": 1}}, "user_kwargs"),
    ({"final_reward_kwargs": {"x": 1}}, "final_reward_kwargs"),
    ({"chat_template": " "}, "chat_template"),
])
def test_bad_settings_get_one_clear_error(tok, kwargs, match):
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        make(tok, **kwargs)


@pytest.mark.parametrize("user, match", [
    (lambda c, **r: ["x"] * (len(c) + 1), "returned 2 replies for 1"),
    (lambda c, **r: [3] * len(c), "returned int"),
    (lambda c, **r: 5, "returned int; it must return a list"),
])
def test_a_broken_user_simulator_is_named_in_the_error(tok, user, match):
    env = make(tok, user=user)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match=match):
        env.step(" hi")


def test_a_simulator_that_never_opens_and_bad_provider_extras_are_errors(tok):
    env = make(tok, scenarios=[[{"role": "system", "content": "S"}]], user=lambda c, **r: [None] * len(c))
    with pytest.raises(ConfigError, match="before it began"):
        env.reset(seed=0)

    class Clash(rlhf_gym.RewardProvider):
        def score_with_info(self, prompts, completions, **row):
            return [1.0] * len(prompts), {"messages": [0] * len(prompts)}

    env = make(tok, reward=Clash())
    env.reset(seed=0)
    with pytest.raises(RewardError, match="'messages'"):
        env.step(" hi")
    env = make(tok, reward=lambda p, c, **kw: [float("nan")] * len(c))
    env.reset(seed=0)
    with pytest.raises(RewardError, match="NaN"):
        env.step(" hi")


def test_the_user_writes_the_opening_when_a_scenario_has_none(tok):
    env = make(tok, scenarios=[{"system": "You help.", "opening": "Hello bot"}])
    _, info = env.reset(seed=0)
    assert info["messages"][-1] == {"role": "user", "content": "Hello bot"}


@pytest.mark.parametrize("fail_in", ["provider", "user", "final"])
def test_a_failing_provider_or_simulator_leaves_every_conversation_as_it_was(tok, fail_in):
    state = {"fail": True}

    def reward(prompts, completions, **row):
        if fail_in == "provider" and state["fail"]:
            raise TimeoutError("judge timed out")
        return [1.0] * len(prompts)

    def final(prompts, completions, **row):
        if fail_in == "final" and state["fail"]:
            raise TimeoutError("judge timed out")
        return [5.0] * len(prompts)

    def user(conversations, **row):
        if fail_in == "user" and state["fail"]:
            raise ConnectionError("the person stepped away")
        return [None] * len(conversations)

    envs = DialogueVectorEnv(num_envs=3, tokenizer=tok, scenarios=SCENARIOS, reward=reward, final_reward=final,
                             reward_mode="both", user=user, shuffle=False)
    obs, _ = envs.reset(seed=0)
    before = envs.current_messages()
    with pytest.raises((TimeoutError, ConnectionError)):
        envs.step([" a", " b", " c"])
    after_obs = envs._batch.observation()
    assert envs.current_messages() == before and np.array_equal(after_obs["input_ids"], obs["input_ids"])
    assert envs._batch.turn.tolist() == [0, 0, 0]
    state["fail"] = False
    _, rewards, terminated, _, info = envs.step([" a", " b", " c"])
    assert rewards.tolist() == [6.0, 6.0, 6.0] and terminated.all() and info["turn"].tolist() == [1, 1, 1]
