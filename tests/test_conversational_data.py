"""SFT, DPO and reward-model training on TRL's conversational formats: ``messages``, ``prompt``/``completion`` and
``prompt``/``chosen``/``rejected`` as message lists, and implicit prompts. Each trains from a message-list file, the
loss masks cover the assistant's turns and nothing else, and every malformed record gets one error that names it
and says what is expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlhf_gym
from rlhf_gym.conversations import chat_segments, extract_prompt
from rlhf_gym.data import load_preference_texts, load_sft_data
from rlhf_gym.errors import ConfigError
from rlhf_gym.policy import Policy
from rlhf_gym.reward_model import RewardModelError, load_preference_pairs, train_reward_model
from rlhf_gym.tiny import random_tiny_model


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


OPENERS = ["The movie was", "I thought the plot", "The acting", "The ending was"]
GOOD = [" wonderful and moving.", " brilliant.", " clever and funny.", " beautiful."]
BAD = [" dull and awful.", " terrible.", " a boring mess.", " painfully bad."]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return random_tiny_model(tmp_path_factory.mktemp("chat") / "model", n_layer=2, n_embd=64, n_head=2)


@pytest.fixture(scope="module")
def policy(model_path: str) -> Policy:
    return Policy.from_pretrained(model_path, value_head=False)


# -- rendering and masks ------------------------------------------------------------------------------------------


def learned_text(policy: Policy, data, row: int) -> str:
    ids = data.completion_ids[row][data.loss_mask[row].bool()]
    return policy.tokenizer.decode(ids)


def context_text(policy: Policy, data, row: int) -> str:
    prompt = data.prompt_ids[row][data.prompt_mask[row].bool()]
    rest = data.completion_ids[row][(data.completion_mask[row] - data.loss_mask[row]).bool()]
    return policy.tokenizer.decode(prompt) + "|" + policy.tokenizer.decode(rest)


def test_messages_learn_every_assistant_turn_and_no_user_or_system_token(policy):
    chat = [system("Be kind."), user("I loved it."), bot("Tell me more."), user("Review it."),
            bot("It was great.")]
    data = load_sft_data([{"messages": chat}], policy, max_prompt_tokens=64, max_completion_tokens=64)
    eos = policy.tokenizer.eos_token
    assert learned_text(policy, data, 0) == f" Tell me more.{eos} It was great.{eos}"
    context = context_text(policy, data, 0)
    assert "Be kind." in context and "I loved it." in context and "Review it." in context
    assert "Tell me" not in context and "great" not in context
    # the masked and the learned tokens together are exactly the rendered conversation
    whole = policy.tokenizer.apply_chat_template(chat, tokenize=False)
    ids = torch.cat([data.prompt_ids[0][data.prompt_mask[0].bool()], data.completion_ids[0]])
    assert policy.tokenizer.decode(ids) == whole


def test_prompt_completion_message_lists_learn_only_the_completion(policy):
    record = {"prompt": [user("Hi."), bot("Hello."), user("Review it.")], "completion": [bot("It was dull.")]}
    data = load_sft_data([record], policy, max_prompt_tokens=64, max_completion_tokens=64)
    assert learned_text(policy, data, 0) == f" It was dull.{policy.tokenizer.eos_token}"
    assert "Hello." in context_text(policy, data, 0)  # an assistant turn inside the prompt is context


def test_text_records_still_learn_the_completion_and_eos(policy):
    data = load_sft_data([{"prompt": "The movie was", "completion": " fine."}], policy, max_prompt_tokens=8,
                         max_completion_tokens=8)
    assert not data.conversational
    assert learned_text(policy, data, 0) == f" fine.{policy.tokenizer.eos_token}"
    assert torch.equal(data.loss_mask, data.completion_mask)


def test_long_conversations_keep_the_end_of_the_prompt_and_the_start_of_the_answer(policy):
    chat = [user("one two three four five six seven eight nine ten " * 4), bot("yes " * 30)]
    data = load_sft_data([{"messages": chat}], policy, max_prompt_tokens=10, max_completion_tokens=5)
    assert int(data.prompt_mask.sum()) == 10 and int(data.completion_mask.sum()) == 5
    assert policy.tokenizer.decode(data.prompt_ids[0]).endswith("\nAssistant:")
    assert policy.tokenizer.decode(data.completion_ids[0]).startswith(" yes")


def test_implicit_prompt_is_the_shared_opening_and_renders_like_the_explicit_one(policy):
    shared = [user("I loved it."), bot("Nice."), user("Review it.")]
    implicit = {"chosen": shared + [bot("It was great.")], "rejected": shared + [bot("It was bad.")]}
    explicit = {"prompt": shared, "chosen": [bot("It was great.")], "rejected": [bot("It was bad.")]}
    (a,), conv = load_preference_texts([implicit], policy.tokenizer)
    (b,), _ = load_preference_texts([explicit], policy.tokenizer)
    assert conv and a == b
    assert a["prompt"].endswith("User: Review it.\nAssistant:")
    assert a["chosen"] == f" It was great.{policy.tokenizer.eos_token}"


def test_implicit_prompt_backs_up_to_the_assistant_turn_where_users_differ():
    chosen = [user("a"), bot("b"), user("c"), bot("d")]
    rejected = [user("a"), bot("b"), user("x"), bot("y")]
    prompt, c, r = extract_prompt(chosen, rejected)
    assert prompt == [user("a")] and c == chosen[1:] and r == rejected[1:]


def test_segments_cover_a_conversation_that_starts_with_the_assistant(policy):
    segments = chat_segments(policy.tokenizer, [bot("Hi!"), user("Hello.")])
    eos = policy.tokenizer.eos_token
    assert segments == [("Assistant:", False), (" Hi!" + eos, True), ("User: Hello.\n", False)]


# -- each format trains from a message-list file ----------------------------------------------------------------------


def conversations(n: int = 16) -> list[dict]:
    return [{"messages": [user(f"Review {OPENERS[i % 4].lower()}."), bot(OPENERS[i % 4] + GOOD[i % 4])]}
            for i in range(n)]


def test_sft_on_a_messages_file_lowers_its_loss(model_path, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", conversations())
    algo = rlhf_gym.make_algorithm("sft", policy=model_path, dataset=path, batch_size=8, learning_rate=3e-3)
    algo.learn(1, progress_bar=False)
    first = algo.last_metrics["loss/sft"]
    algo.learn(30, progress_bar=False)
    assert algo.last_metrics["loss/sft"] < 0.3 * first


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit-prompt", "implicit-prompt"])
def test_offline_dpo_on_a_message_list_file_learns_the_preferred_answer(model_path, tmp_path, implicit):
    rows = []
    for i in range(8):
        prompt = [user("I loved it."), bot("Nice."), user(f"Review {OPENERS[i % 4].lower()}.")]
        chosen, rejected = [bot(OPENERS[i % 4] + GOOD[i % 4])], [bot(OPENERS[i % 4] + BAD[i % 4])]
        rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected} if implicit
                    else {"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    algo = rlhf_gym.make_algorithm("dpo", policy=model_path, dataset=path, batch_size=8, learning_rate=1e-3)
    algo.learn(1, progress_bar=False)
    first = algo.last_metrics["loss/policy_avg"]
    algo.learn(15, progress_bar=False)
    assert algo.last_metrics["loss/policy_avg"] < 0.5 * first
    assert algo.last_metrics["rewards/accuracies"] == 1.0


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit-prompt", "implicit-prompt"])
def test_reward_model_on_a_message_list_file_ranks_the_preferred_answer_higher(model_path, tmp_path, implicit):
    rows = []
    for i in range(16):
        prompt = [user(f"Review {OPENERS[i % 4].lower()}.")]
        chosen, rejected = [bot(OPENERS[i % 4] + GOOD[i % 4])], [bot(OPENERS[i % 4] + BAD[i % 4])]
        rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected} if implicit
                    else {"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    pairs = load_preference_pairs(path, tokenizer=Policy.from_pretrained(model_path, value_head=False).tokenizer)
    assert len(pairs) == 4 and all(p["prompt"].endswith("Assistant:") for p in pairs)  # de-duplicated, rendered
    model, metrics = train_reward_model(path, {"backbone": model_path, "epochs": 20, "batch_size": 4, "lr": 3e-3,
                                               "eval_fraction": 0.0}, progress=False)
    assert metrics["train_accuracy"] == 1.0
    first = train_reward_model(path, {"backbone": model_path, "epochs": 1, "batch_size": 4, "lr": 3e-3,
                                      "eval_fraction": 0.0}, progress=False)[1]["train_loss"]
    assert metrics["train_loss"] < 0.5 * first


def test_reward_model_without_a_chat_template_reads_plain_role_markers(model_path, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.chat_template = None
    pairs = load_preference_pairs([{"prompt": [user("Hi.")], "chosen": [bot("Yes.")], "rejected": [bot("No.")]}],
                                  tokenizer=tok)
    assert pairs[0]["prompt"] == "User: Hi.\nAssistant:" and pairs[0]["chosen"].startswith(" Yes.")


# -- bad records: one clear error naming the record and what is expected ------------------------------------------------

GOOD_CHAT = [user("Hi."), bot("Hello.")]
BAD_SFT = {
    "messages-not-a-list": ([{"messages": GOOD_CHAT}, {"messages": "Hi there"}], "record 1", "list of"),
    "message-without-role": ([{"messages": [{"content": "Hi."}, bot("x")]}], "record 0", "'role'"),
    "content-not-text": ([{"messages": GOOD_CHAT}, {"messages": [user("a"), {"role": "assistant", "content": 3}]}],
                         "record 1", "'content'"),
    "message-not-a-dict": ([{"messages": [user("a"), "b"]}], "record 0", "message 1"),
    "empty-conversation": ([{"messages": []}], "record 0", "empty list"),
    "no-assistant-turn": ([{"messages": GOOD_CHAT}, {"messages": [user("Hi.")]}], "record 1", "no assistant"),
    "mixed-formats": ([{"prompt": [user("a")], "completion": [bot("b")]}, {"prompt": "a", "completion": " b"}],
                      "record 1", "one format"),
    "half-conversational": ([{"prompt": [user("a")], "completion": " b"}], "record 0", "all be text or all"),
    "no-known-columns": ([{"text": "hello"}], "missing column", "'messages'"),
    "completion-without-assistant": ([{"prompt": [user("a")], "completion": [user("b")]}], "record 0",
                                     "in 'completion'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SFT))
def test_bad_sft_records_get_one_clear_error(policy, case):
    records, where, expected = BAD_SFT[case]
    with pytest.raises(ConfigError) as info:
        load_sft_data(records, policy, max_prompt_tokens=16, max_completion_tokens=16)
    assert where in str(info.value) and expected in str(info.value), str(info.value)


BAD_PAIRS = {
    "no-shared-prompt": ([{"chosen": [user("a"), bot("b")], "rejected": [user("x"), bot("y")]}], "record 0",
                         "share no opening"),
    "identical": ([{"chosen": GOOD_CHAT, "rejected": GOOD_CHAT}], "record 0", "same conversation"),
    "parting-at-a-user-turn": ([{"chosen": [user("a"), user("b"), bot("c")],
                                 "rejected": [user("a"), user("x"), bot("c")]}], "record 0", "assistant's answer"),
    "implicit-text": ([{"chosen": "a b", "rejected": "a c"}], "no 'prompt' column", "message lists"),
    "prompt-text-answers-lists": ([{"prompt": "a", "chosen": [bot("b")], "rejected": [bot("c")]}], "record 0",
                                  "all be text or all"),
    "rejected-malformed": ([{"prompt": [user("a")], "chosen": [bot("b")], "rejected": [{"role": "assistant"}]}],
                           "column 'rejected'", "'content'"),
    "mixed-records": ([{"prompt": [user("a")], "chosen": [bot("b")], "rejected": [bot("c")]},
                       {"prompt": "a", "chosen": " b", "rejected": " c"}], "record 1", "one format"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAIRS))
def test_bad_preference_records_get_one_clear_error(policy, case):
    records, where, expected = BAD_PAIRS[case]
    with pytest.raises(ConfigError) as info:
        load_preference_texts(records, policy.tokenizer)
    assert where in str(info.value) and expected in str(info.value), str(info.value)
    with pytest.raises(RewardModelError) as rm_info:  # the reward model reports the same record
        load_preference_pairs(records, tokenizer=policy.tokenizer)
    assert where in str(rm_info.value) or "pair 0" in str(rm_info.value), str(rm_info.value)


def test_conversations_need_a_chat_template(model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        load_preference_texts([{"prompt": [user("a")], "chosen": [bot("b")], "rejected": [bot("c")]}], tok)


def test_dpo_on_a_bad_conversational_file_names_the_file_and_record(model_path, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": [user("a"), bot("b")], "rejected": [user("z"), bot("y")]}])
    with pytest.raises(ConfigError, match=r"record 0 of DPO dataset '.*bad\.jsonl'.*share no opening"):
        rlhf_gym.make_algorithm("dpo", policy=model_path, dataset=path)
