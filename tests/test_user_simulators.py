"""User simulators: the registry and its hook, the built-ins (scripted, simulated-user, policy-user, live-user in
the terminal and on the web page), and their errors."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

import rlhf_gym
from rlhf_gym.errors import ConfigError, UnknownNameError
from rlhf_gym.live.chat import ChatStopped, WebChatServer
from rlhf_gym.live.terminal import NoTerminalError

GOOD = "I love it, a wonderful and great film!"
BAD = "It was awful, terrible and boring."


def conv(*turns, system=None):
    """A conversation from alternating user/assistant texts, starting with the user."""
    out = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return out


def test_builtin_user_simulators_are_registered_through_the_hook():
    entries = {e.name: e for e in rlhf_gym.list_plugins("user-simulator")}
    assert {"scripted", "simulated-user", "policy-user", "live-user"} <= set(entries)
    assert all(entries[n].distribution == "rlhf_gym" and entries[n].kind == "user-simulator" for n in entries
               if n in ("scripted", "simulated-user", "policy-user", "live-user"))


def test_runtime_plugin_simulator_is_found_by_name_and_unknown_names_suggest():
    class Plugin:
        @rlhf_gym.hookimpl
        def register_user_simulators(self, register):
            register("parrot", lambda prefix="": (lambda cs, **row: [prefix + c[-1]["content"] for c in cs]))

    name = rlhf_gym.register_plugin(Plugin(), name="parrot-plugin")
    try:
        user = rlhf_gym.make_user_simulator("parrot", prefix="> ")
        assert isinstance(user, rlhf_gym.UserSimulator) and user.name == "parrot"
        assert user.reply([conv("a", "b")]) == ["> b"]
        with pytest.raises(UnknownNameError, match="Did you mean 'parrot'"):
            rlhf_gym.make_user_simulator("parot")
    finally:
        rlhf_gym.unregister_plugin(name)
    assert "parrot" not in {e.name for e in rlhf_gym.list_plugins("user-simulator")}


# -- scripted ----------------------------------------------------------------------------------------------------


def test_scripted_user_follows_each_scenarios_script_then_ends(tmp_path):
    user = rlhf_gym.make_user_simulator("scripted")
    row = {"follow_ups": [["f1", "f2"], None], "scenario_index": [0, 1], "opening": [None, None]}
    assert user.reply([conv("q", "a1"), conv("q", "a1")], **row) == ["f1", None]
    assert user.reply([conv("q", "a1", "f1", "a2"), conv("q", "a", "x", "b")], **row) == ["f2", None]
    assert user.reply([conv("q", "a1", "f1", "a2", "f2", "a3")], follow_ups=[["f1", "f2"]]) == [None]
    # one list for every conversation; a list per scenario index; a .jsonl file of lists
    assert rlhf_gym.make_user_simulator("scripted", follow_ups=["same"]).reply([conv("q", "a")] * 2) == ["same"] * 2
    per = rlhf_gym.make_user_simulator("scripted", follow_ups=[["s0"], ["s1"]])
    assert per.reply([conv("q", "a")] * 2, scenario_index=[1, 0]) == ["s1", "s0"]
    path = tmp_path / "script.jsonl"
    path.write_text(json.dumps({"follow_ups": ["j0"]}) + "\n" + json.dumps({"follow_ups": ["j1"]}) + "\n")
    assert rlhf_gym.make_user_simulator("scripted", follow_ups=path).reply(
        [conv("q", "a")] * 2, scenario_index=[0, 1]) == ["j0", "j1"]
    # the opening of a conversation without a user message
    assert user.reply([[{"role": "system", "content": "s"}]], opening=["hello"]) == ["hello"]


@pytest.mark.parametrize("kwargs, reply_row, match", [
    ({"follow_ups": 3}, {}, "must be a list"),
    ({"follow_ups": "missing.jsonl"}, {}, "existing .jsonl"),
    ({"follow_ups": [["a"]]}, {"scenario_index": [4]}, "one list per scenario"),
    ({}, {"follow_ups": ["not a list"]}, "list of strings"),
])
def test_scripted_user_rejects_bad_scripts(kwargs, reply_row, match):
    with pytest.raises(ConfigError, match=match):
        rlhf_gym.make_user_simulator("scripted", **kwargs).reply([conv("q", "a")], **reply_row)


# -- simulated-user ----------------------------------------------------------------------------------------------


def test_simulated_user_moves_on_when_satisfied_and_asks_again_when_not():
    user = rlhf_gym.make_user_simulator("simulated-user", preset="oracle", satisfied_at=0.7,
                                        follow_ups=["next question", "last question"])
    happy, unhappy = conv("How was it?", GOOD), conv("How was it?", BAD)
    out = user.reply([happy, unhappy])
    assert out[0] == "next question" and out[1] in user.retry_messages
    # a follow-up already asked is not asked again; the end of the script ends the conversation
    assert user.reply([conv("q", GOOD, "next question", GOOD)]) == ["last question"]
    assert user.reply([conv("q", GOOD, "next question", GOOD, "last question", GOOD)]) == [None]


def test_simulated_user_gives_up_after_its_patience_runs_out():
    user = rlhf_gym.make_user_simulator("simulated-user", preset="oracle", patience=2,
                                        retry_messages=["again?"])
    assert user.reply([conv("q", BAD)]) == ["again?"]
    assert user.reply([conv("q", BAD, "again?", BAD)]) == ["again?"]
    assert user.reply([conv("q", BAD, "again?", BAD, "again?", BAD)]) == [None]


def test_simulated_users_noise_follows_the_simulated_humans_model_and_reseeds():
    """With rationality β the user's satisfaction with a borderline reply is a coin weighted by the truth."""
    user = rlhf_gym.make_user_simulator("simulated-user", preset="noisy", satisfied_at=0.75, seed=1)
    borderline = [conv("How was it?", "It was good.")] * 400  # VADER 0.44 → 0.72 normalised, under the bar
    decisions = [r == user.script.script(0, {"scenario_index": [0]}) or r is None for r in user.reply(borderline)]
    satisfied = sum(decisions) / len(decisions)
    assert 0.2 < satisfied < 0.6  # noiseless: never satisfied; the noise makes it sometimes
    assert user.rate([conv("q", GOOD)] * 50) != user.rate([conv("q", GOOD)] * 50)  # the stream moves on
    user.reset(7)
    first = user.reply(borderline[:50])
    user.reset(7)
    assert user.reply(borderline[:50]) == first
    oracle = rlhf_gym.make_user_simulator("simulated-user", preset="oracle", satisfied_at=0.75)
    assert all(r is not None for r in oracle.reply(borderline[:20]))  # always asks again


def test_simulated_user_rejects_bad_settings():
    with pytest.raises(ConfigError, match="retry_messages"):
        rlhf_gym.make_user_simulator("simulated-user", retry_messages=[])
    with pytest.raises(ConfigError, match="patience"):
        rlhf_gym.make_user_simulator("simulated-user", patience=0)
    with pytest.raises(ConfigError, match="epsilon"):
        rlhf_gym.make_user_simulator("simulated-user", epsilon=0.9)


# -- policy-user -------------------------------------------------------------------------------------------------


def test_policy_user_writes_turns_with_roles_swapped_and_reproducibly(tiny_kit):
    from rlhf_gym_plugins.user_simulators import _swap_roles

    from rlhf_gym.policy import Policy

    assert _swap_roles(conv("q", "a", system="S"), "persona") == [
        {"role": "system", "content": "persona"}, {"role": "assistant", "content": "q"},
        {"role": "user", "content": "a"}]
    policy = Policy.from_pretrained(tiny_kit.path)
    user = rlhf_gym.make_user_simulator("policy-user", policy=policy, max_new_tokens=12, seed=3)
    conversations = [conv("The movie was", "great fun."), conv("This film is", "boring.")]
    first = user.reply(conversations)
    assert all(isinstance(r, str) and r for r in first) and first != [None, None]
    assert user.reply(conversations) != first  # the stream moves on
    user.reset(3)
    assert user.reply(conversations) == first
    ender = rlhf_gym.make_user_simulator("policy-user", policy=policy, max_new_tokens=12, seed=3,
                                         end_marker=first[0][:1])
    assert ender.reply(conversations)[0] is None


# -- live-user ---------------------------------------------------------------------------------------------------


def test_live_user_in_the_terminal_shows_the_conversation_and_reads_replies(tiny_tokenizer):
    out = io.StringIO()
    user = rlhf_gym.make_user_simulator("live-user", stdin=io.StringIO("tell me more\r\n/end\n\n"), stdout=out)
    assert not user.deterministic
    replies = user.reply([conv("Hi", "Hello, how can I help?"), conv("A", "B"), conv("C", "D")])
    assert replies == ["tell me more", None, None]
    assert "Hello, how can I help?" in out.getvalue() and "conversation 1 of 3" in out.getvalue()
    import gymnasium as gym

    env = gym.make("rlhf_gym/Dialogue-v0", tokenizer=tiny_tokenizer, scenarios=["Hi"], user=user,
                   reward="length")
    assert env.unwrapped.spec.nondeterministic and env.unwrapped.metadata["nondeterministic"]
    for stdin in ("/quit\n", ""):
        user = rlhf_gym.make_user_simulator("live-user", stdin=io.StringIO(stdin), stdout=io.StringIO())
        with pytest.raises(ChatStopped):
            user.reply([conv("Hi", "Hello")])


def test_live_user_without_a_terminal_says_what_to_do(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(NoTerminalError, match="web"):
        rlhf_gym.make_user_simulator("live-user")
    with pytest.raises(ConfigError, match="terminal' or 'web"):
        rlhf_gym.make_user_simulator("live-user", ui="carrier-pigeon")


def _call(server, path, body=None, token=None):
    token = server.token if token is None else token
    request = urllib.request.Request(f"http://{server.host}:{server.port}{path}?token={token}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null") if path.startswith("/api") else None
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_live_user_on_the_web_page_answers_a_dialogue_env(tiny_tokenizer):
    import gymnasium as gym

    server = WebChatServer(port=0)
    server.start()
    try:
        assert _call(server, "/api/chat/next", token="wrong")[0] == 403
        assert _call(server, "/")[0] == 200 and _call(server, "/static/chat.js")[0] == 200
        assert _call(server, "/api/chat/next")[1] == {"turn": None, "pending": 0}

        user = rlhf_gym.UserSimulator()
        user.reply = lambda conversations, **row: server.ask(conversations, timeout_s=20)  # type: ignore[method-assign]
        envs = gym.make_vec("rlhf_gym/Dialogue-v0", num_envs=2, vectorization_mode="vector_entry_point",
                            tokenizer=tiny_tokenizer, scenarios=["Hi", "Yo"], user=user, shuffle=False,
                            reward=lambda p, c, **kw: [0.0] * len(c))
        envs.reset(seed=0)
        result = {}
        stepper = threading.Thread(target=lambda: result.update(zip(
            ("obs", "r", "term", "trunc", "info"), envs.step([" hello", " hey"]))))
        stepper.start()
        turns = []
        for _ in range(100):
            status, body = _call(server, "/api/chat/next")
            if body["pending"] == 2:
                turns.append(body["turn"])
                break
            time.sleep(0.05)
        assert turns and turns[0]["messages"] == [{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "hello"}]
        for bad in ({"id": "x", "text": "a"}, {"id": turns[0]["id"], "text": "  "}, {"id": turns[0]["id"]},
                    {"text": "a"}, ["not", "a", "dict"], {"id": True, "text": "a"},
                    {"id": turns[0]["id"], "text": 5}, {"id": turns[0]["id"], "end": "yes"}):
            assert _call(server, "/api/chat/reply", bad)[0] == 400
        assert _call(server, "/api/chat/reply", {"id": 999, "text": "a"})[0] == 404
        assert _call(server, "/api/chat/reply", {"id": turns[0]["id"], "text": "x" * 100_000})[0] == 413
        assert _call(server, "/api/chat/reply", {"id": turns[0]["id"], "text": "what's up?"})[0] == 200
        assert _call(server, "/api/chat/reply", {"id": turns[0]["id"], "text": "again"})[0] == 409
        second = _call(server, "/api/chat/next")[1]["turn"]
        assert second["messages"][0]["content"] == "Yo"
        assert _call(server, "/api/chat/reply", {"id": second["id"], "end": True})[0] == 200
        stepper.join(timeout=20)
        assert result["term"].tolist() == [False, True]
        assert result["info"]["user_reply"] == ["what's up?", None]
        # a conversation nobody answers in time ends
        assert server.ask([conv("q", "a")], timeout_s=0.2) == [None]
        assert _call(server, "/api/chat/next")[1]["pending"] == 0
    finally:
        server.stop()
