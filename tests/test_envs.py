"""Behaviour of the TextGen-v0 and Completion-v0 environments and their native vector versions."""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import rlhf_gym
from rlhf_gym.envs import common, completion, textgen
from rlhf_gym.envs.completion import CompletionEnv, CompletionVectorEnv
from rlhf_gym.envs.textgen import TextGenEnv, TextGenVectorEnv
from rlhf_gym.errors import ConfigError, RewardError

PROMPTS = [f"Review {i}: the film was" for i in range(12)]


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A byte-level BPE with `<|endoftext|>` (eos) and `<|pad|>`, saved and loadable with from_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the movie was great and fun", "a terrible film with a boring plot", "I loved the acting"] * 40
    bpe.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>", padding_side="left"
    )
    path = tmp_path_factory.mktemp("tokenizer") / "tok"
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_tokenizer_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_path)


def length_reward(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


class CountingReward(rlhf_gym.RewardProvider):
    """Records every call; scores are completion lengths, or what `answer` returns."""

    def __init__(self, answer=None):
        self.calls: list[dict] = []
        self.answer = answer
        self.closed = 0

    def score(self, prompts, completions, **row):
        self.calls.append({"prompts": list(prompts), "completions": list(completions), "row": row})
        if self.answer is not None:
            return self.answer(prompts, completions)
        return [float(len(c)) for c in completions]

    def close(self):
        self.closed += 1


def kwargs_for(tokenizer, **extra):
    base = {"tokenizer": tokenizer, "prompts": PROMPTS, "reward": length_reward, "max_new_tokens": 4}
    base.update(extra)
    return base


def token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, ids
    return ids[0]


# -- checkers ------------------------------------------------------------------------------------------------


def test_textgen_passes_gymnasium_and_sb3_checkers(tiny_tokenizer_path):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("rlhf_gym/TextGen-v0", **kwargs_for(tiny_tokenizer_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkers report problems as warnings too
        gym_check_env(env.unwrapped)
        sb3_check_env(TextGenEnv(**kwargs_for(tiny_tokenizer_path)))
    env.close()


def test_completion_passes_gymnasium_checker(tiny_tokenizer_path):
    env = gym.make("rlhf_gym/Completion-v0", **kwargs_for(tiny_tokenizer_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Box action of token ids is not in [-1, 1] by design
        gym_check_env(env.unwrapped)
    env.close()


# -- TextGen-v0 ----------------------------------------------------------------------------------------------


def test_textgen_context_is_right_aligned_and_left_padded(tiny_tokenizer):
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, max_prompt_tokens=16, max_new_tokens=4))
    obs, info = env.reset(seed=0)
    prompt_ids = tiny_tokenizer(info["prompt"], add_special_tokens=False)["input_ids"]
    assert obs["input_ids"].shape == (20,) and obs["input_ids"].dtype == np.int64
    assert obs["input_ids"][-len(prompt_ids) :].tolist() == prompt_ids
    assert (obs["input_ids"][: -len(prompt_ids)] == tiny_tokenizer.pad_token_id).all()
    assert obs["attention_mask"].sum() == len(prompt_ids) and obs["attention_mask"][-1] == 1
    the = token(tiny_tokenizer, "the")
    obs, reward, terminated, truncated, step_info = env.step(the)
    assert obs["input_ids"][-1] == the and obs["input_ids"][-len(prompt_ids) - 1 : -1].tolist() == prompt_ids
    assert obs["attention_mask"].sum() == len(prompt_ids) + 1
    assert (reward, terminated, truncated, step_info) == (0.0, False, False, {})


def test_textgen_eos_terminates_with_the_providers_score(tiny_tokenizer):
    provider = CountingReward()
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, reward=provider, max_new_tokens=5))
    _, reset_info = env.reset(seed=1)
    for word in ("the", " movie"):
        assert env.step(token(tiny_tokenizer, word))[1:4] == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(tiny_tokenizer.eos_token_id)
    assert (terminated, truncated) == (True, False)
    assert info["completion"] == "the movie" and reward == float(len("the movie"))
    assert info["prompt"] == reset_info["prompt"] and info["score"] == reward and info["score_valid"]
    assert info["completion_length"] == 2
    assert obs["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert provider.calls == [{"prompts": [info["prompt"]], "completions": ["the movie"], "row": {}}]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_textgen_reaching_max_new_tokens_truncates(tiny_tokenizer):
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, max_new_tokens=3))
    env.reset(seed=0)
    the = token(tiny_tokenizer, "the")
    outcomes = [env.step(the)[1:4] for _ in range(3)]
    assert outcomes[:2] == [(0.0, False, False)] * 2
    assert outcomes[2] == (9.0, False, True)  # "thethethe"


def test_none_score_gives_zero_reward_and_keeps_none_in_info(tiny_tokenizer):
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, reward=lambda p, c, **k: [None] * len(p)))
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(tiny_tokenizer.eos_token_id)
    assert terminated and reward == 0.0 and info["score"] is None and info["score_valid"] is False


def test_action_space_is_the_model_head_not_the_tokenizer(tiny_tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    n = len(tiny_tokenizer)
    assert TextGenEnv(**kwargs_for(tiny_tokenizer)).action_space.n == n
    assert TextGenEnv(**kwargs_for(tiny_tokenizer, vocab_size=n + 7)).action_space.n == n + 7
    config = GPT2Config(vocab_size=448, n_layer=1, n_head=1, n_embd=8, n_positions=32)
    config.save_pretrained(tmp_path)
    assert TextGenEnv(**kwargs_for(tiny_tokenizer, model=str(tmp_path))).action_space.n == 448
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_layer=1, n_head=1, n_embd=8, n_positions=32))
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, model=model))
    assert env.action_space.high.max() == 511 and env.observation_space["input_ids"].high.max() == 511


def test_tokenizer_larger_than_the_action_space_is_rejected(tiny_tokenizer):
    n = len(tiny_tokenizer)
    with pytest.raises(ConfigError, match=rf"tokenizer has {n} tokens but the action space has 100"):
        TextGenEnv(**kwargs_for(tiny_tokenizer, vocab_size=100))


def test_ids_past_the_tokenizer_decode_to_nothing(tiny_tokenizer):
    n = len(tiny_tokenizer)
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, vocab_size=n + 64, max_new_tokens=2))
    env.reset(seed=0)
    env.step(n + 10)
    _, _, _, truncated, info = env.step(token(tiny_tokenizer, "the"))
    assert truncated and info["completion"] == "the"


def test_render_ansi_shows_prompt_and_completion_so_far(tiny_tokenizer):
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, render_mode="ansi"))
    _, info = env.reset(seed=0)
    env.step(token(tiny_tokenizer, " movie"))
    assert env.render() == info["prompt"] + " movie"


# -- prompts -------------------------------------------------------------------------------------------------


def _prompt_order(env, n):
    return [env.reset()[1]["prompt"] for _ in range(n)]


def test_seeded_reset_reproduces_episodes_exactly(tiny_tokenizer):
    env = TextGenEnv(**kwargs_for(tiny_tokenizer))
    env.reset(seed=7)
    first = _prompt_order(env, 20)
    env.reset(seed=7)
    assert _prompt_order(env, 20) == first
    env.reset(seed=8)
    assert _prompt_order(env, 20) != first
    # a pass visits every prompt once before repeating
    env2 = CompletionEnv(**kwargs_for(tiny_tokenizer))
    seen = [env2.reset(seed=5)[1]["prompt"]] + _prompt_order(env2, len(PROMPTS) - 1)
    assert sorted(seen) == sorted(PROMPTS)


def test_shuffle_false_walks_prompts_in_order(tiny_tokenizer):
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, shuffle=False))
    order = [env.reset(seed=0)[1]["prompt"]] + _prompt_order(env, len(PROMPTS))
    assert order == PROMPTS + PROMPTS[:1]


def test_prompts_load_from_txt_jsonl_and_dataset(tiny_tokenizer, tmp_path):
    import datasets

    txt = tmp_path / "prompts.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=str(txt), shuffle=False))
    assert env.unwrapped._setup.prompts.texts == ["first prompt", "second prompt"]

    provider = CountingReward()
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": f"p{i}", "reference": f"ref{i}"}) for i in range(3)))
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=jsonl, reward=provider, shuffle=False))
    env.reset(seed=0)
    env.step("ok")
    assert provider.calls[-1]["row"] == {"reference": ["ref0"]}

    dataset = datasets.Dataset.from_dict({"prompt": ["a", "b", "c", "d"], "target": [1, 2, 3, 4]})
    vec = CompletionVectorEnv(
        num_envs=4, **kwargs_for(tiny_tokenizer, prompts=dataset, reward=provider, shuffle=False)
    )
    vec.reset(seed=0)
    vec.step(["x"] * 4)
    assert provider.calls[-1]["prompts"] == ["a", "b", "c", "d"]
    assert provider.calls[-1]["row"] == {"target": [1, 2, 3, 4]}


def test_long_prompts_are_left_truncated_and_reported(tiny_tokenizer):
    long_prompt = "the movie was great and fun " * 10
    env = TextGenEnv(
        **kwargs_for(tiny_tokenizer, prompts=[long_prompt, "short"], max_prompt_tokens=8, shuffle=False)
    )
    obs, info = env.reset(seed=0)
    full = tiny_tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    assert info["prompt_truncated"] is True
    assert obs["input_ids"][-8:].tolist() == full[-8:]
    assert info["prompt"] == tiny_tokenizer.decode(full[-8:]) and long_prompt.endswith(info["prompt"])
    assert env.reset()[1]["prompt_truncated"] is False


# -- Completion-v0 -------------------------------------------------------------------------------------------


def test_completion_scores_token_ids_up_to_the_first_eos(tiny_tokenizer):
    provider = CountingReward()
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, reward=provider, max_new_tokens=6))
    obs0, _ = env.reset(seed=0)
    the, movie = token(tiny_tokenizer, "the"), token(tiny_tokenizer, " movie")
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    action = np.array([the, pad, movie, eos, the, the], dtype=np.int64)
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["completion"] == "the movie" and reward == 9.0 and info["completion_length"] == 3
    assert (terminated, truncated) == (True, False)
    assert np.array_equal(obs["input_ids"], obs0["input_ids"])


def test_completion_accepts_a_string_cut_to_max_new_tokens(tiny_tokenizer):
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, max_new_tokens=2))
    env.reset(seed=0)
    _, reward, _, _, info = env.step("the movie was great")
    assert info["completion"] == "the movie" and reward == 9.0
    env.reset()
    assert env.step(" fun")[4]["completion"] == " fun"


# -- vector envs ---------------------------------------------------------------------------------------------


def test_completion_vector_env_makes_one_provider_call_per_step_and_groups_prompts(tiny_tokenizer):
    provider = CountingReward(answer=lambda p, c: [None if x == "skip" else float(len(x)) for x in c])
    envs = gym.make_vec(
        "rlhf_gym/Completion-v0",
        num_envs=6,
        group_size=3,
        vectorization_mode="vector_entry_point",
        **kwargs_for(tiny_tokenizer, reward=provider),
    )
    assert isinstance(envs.unwrapped, CompletionVectorEnv)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    prompts = envs.unwrapped.current_prompts()
    assert obs["input_ids"].shape == (6, 64)
    assert prompts[0] == prompts[1] == prompts[2] and prompts[3] == prompts[4] == prompts[5]
    assert prompts[0] is prompts[2]  # shared, not copied
    assert (obs["input_ids"][0] == obs["input_ids"][2]).all()
    for step in range(3):
        actions = ["a", "bb", "skip", "dddd", "", "the"]
        before, before_obs = envs.unwrapped.current_prompts(), obs
        obs, rewards, terminated, truncated, info = envs.step(actions)
        assert len(provider.calls) == step + 1
        assert provider.calls[-1]["prompts"] == before == info["prompt"]
        assert rewards.dtype == np.float32 and rewards.tolist() == [1.0, 2.0, 0.0, 4.0, 0.0, 3.0]
        assert terminated.all() and not truncated.any()
        assert info["score"] == [1.0, 2.0, None, 4.0, 0.0, 3.0]
        assert info["score_valid"].tolist() == [True, True, False, True, True, True]
        assert info["prompt_truncated"].shape == (6,)
        assert np.array_equal(info["final_obs"][5]["input_ids"], before_obs["input_ids"][5])


def test_completion_vector_env_takes_a_token_array(tiny_tokenizer):
    envs = CompletionVectorEnv(num_envs=2, **kwargs_for(tiny_tokenizer, max_new_tokens=3))
    envs.reset(seed=0)
    the, eos = token(tiny_tokenizer, "the"), tiny_tokenizer.eos_token_id
    _, rewards, _, _, info = envs.step(np.array([[the, the, eos], [eos, the, the]]))
    assert info["completion"] == ["thethe", ""] and rewards.tolist() == [6.0, 0.0]
    assert info["completion_length"].tolist() == [2, 0]


def test_textgen_vector_env_scores_finished_episodes_in_one_call_and_autoresets(tiny_tokenizer):
    provider = CountingReward()
    envs = TextGenVectorEnv(num_envs=4, **kwargs_for(tiny_tokenizer, reward=provider, max_new_tokens=3))
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    start_prompts = envs.current_prompts()
    the, eos = token(tiny_tokenizer, "the"), tiny_tokenizer.eos_token_id
    obs, rewards, terminated, truncated, info = envs.step(np.array([eos, the, eos, the]))
    assert len(provider.calls) == 1 and provider.calls[0]["completions"] == ["", ""]
    assert terminated.tolist() == [True, False, True, False] and not truncated.any()
    assert info["_completion"].tolist() == [True, False, True, False]
    assert info["prompt"][0] == start_prompts[0] and info["final_obs"][0]["input_ids"][-1] == eos
    assert obs["input_ids"][0, -1] != eos and obs["attention_mask"][0].sum() < obs["attention_mask"][1].sum()
    assert obs["input_ids"][1, -1] == the
    envs.step(np.array([the, the, the, the]))
    assert len(provider.calls) == 1  # nobody finished: no call
    obs, rewards, terminated, truncated, info = envs.step(np.array([the, the, the, the]))
    assert truncated.tolist() == [False, True, False, True] and len(provider.calls) == 2
    assert info["completion"][1] == "thethethe" and rewards.tolist() == [0.0, 9.0, 0.0, 9.0]
    assert info["score"][0] is None and not info["_score"][0]


def test_vector_envs_reproduce_with_the_same_seed(tiny_tokenizer):
    envs = CompletionVectorEnv(num_envs=4, **kwargs_for(tiny_tokenizer))

    def batches(seed):
        envs.reset(seed=seed)
        out = [envs.current_prompts()]
        for _ in range(4):
            envs.step(["x"] * 4)
            out.append(envs.current_prompts())
        return out

    assert batches(3) == batches(3) != batches(4)


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["tokenizer", "prompts", "reward"])
def test_missing_kwargs_name_what_to_pass(tiny_tokenizer, missing):
    kwargs = kwargs_for(tiny_tokenizer)
    del kwargs[missing]
    with pytest.raises(ConfigError, match=rf"TextGen-v0 needs {missing}="):
        TextGenEnv(**kwargs)


def test_empty_prompt_sets_and_empty_prompts_are_rejected(tiny_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="holds no prompts"):
        CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=[]))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=str(empty)))
    with pytest.raises(ConfigError, match=r"prompt 1 \(''\) tokenises to no tokens"):
        CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=["fine", ""]))
    with pytest.raises(ConfigError, match="does not exist"):
        CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=str(tmp_path / "missing.jsonl")))
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ConfigError, match="row 0 has no 'prompt' field"):
        CompletionEnv(**kwargs_for(tiny_tokenizer, prompts=bad_rows))


def test_actions_outside_the_space_are_rejected(tiny_tokenizer):
    v = len(tiny_tokenizer)
    env = TextGenEnv(**kwargs_for(tiny_tokenizer))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"outside the action space.*\[0, {v - 1}\]"):
        env.step(v)
    env = CompletionEnv(**kwargs_for(tiny_tokenizer))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"token ids \[-1\] are outside the action space"):
        env.step(np.array([1, -1, 2, 3]))
    with pytest.raises(ValueError, match="up to 4 integer token ids"):
        env.step(np.zeros(9, dtype=np.int64))
    vec = TextGenVectorEnv(num_envs=2, **kwargs_for(tiny_tokenizer))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=rf"actions \[{v}\] are outside the action space"):
        vec.step(np.array([0, v]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        vec.step(np.array([0, 1, 2]))
    cvec = CompletionVectorEnv(num_envs=2, **kwargs_for(tiny_tokenizer))
    cvec.reset(seed=0)
    with pytest.raises(ValueError, match="list of 2 completions"):
        cvec.step(["only one"])
    with pytest.raises(ValueError, match="outside the action space"):
        cvec.step(np.full((2, 4), v + 3))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda p, c: [1.0] * (len(p) + 1), "returned 3 scores for 2 samples"),
        (lambda p, c: [math.nan] * len(p), "NaN/inf"),
        (lambda p, c: [1.0, math.inf], "returned inf at index 1"),
    ],
)
def test_bad_provider_output_raises_reward_error_naming_the_provider(tiny_tokenizer, answer, message):
    provider = CountingReward(answer=answer)
    provider.name = "counting"
    envs = CompletionVectorEnv(num_envs=2, **kwargs_for(tiny_tokenizer, reward=provider))
    envs.reset(seed=0)
    with pytest.raises(RewardError, match=rf"'counting'.*{message}"):
        envs.step(["a", "b"])


def test_provider_extras_reach_info_and_reserved_names_are_refused(tiny_tokenizer):
    class WithExtras(rlhf_gym.RewardProvider):
        def __init__(self, key):
            self.key = key

        def score(self, prompts, completions, **row):
            return [1.0] * len(prompts)

        def score_with_info(self, prompts, completions, **row):
            return self.score(prompts, completions), {self.key: [f"x{i}" for i in range(len(prompts))]}

    envs = CompletionVectorEnv(num_envs=2, **kwargs_for(tiny_tokenizer, reward=WithExtras("truth")))
    envs.reset(seed=0)
    assert envs.step(["a", "b"])[4]["truth"] == ["x0", "x1"]
    env = TextGenEnv(**kwargs_for(tiny_tokenizer, reward=WithExtras("truth")))
    env.reset(seed=0)
    assert env.step(tiny_tokenizer.eos_token_id)[4]["truth"] == "x0"
    env = CompletionEnv(**kwargs_for(tiny_tokenizer, reward=WithExtras("score")))
    env.reset(seed=0)
    with pytest.raises(RewardError, match="extra named 'score'"):
        env.step("a")


# -- determinism, names, lifecycle ---------------------------------------------------------------------------


class HumanLike(CountingReward):
    deterministic = False


def test_non_deterministic_provider_marks_the_env_nondeterministic(tiny_tokenizer):
    env = gym.make("rlhf_gym/TextGen-v0", **kwargs_for(tiny_tokenizer, reward=HumanLike()))
    assert env.spec.nondeterministic is True and env.unwrapped.metadata["nondeterministic"] is True
    gym_check_env(env.unwrapped)  # the checker skips determinism checks it cannot expect to hold
    plain = gym.make("rlhf_gym/TextGen-v0", **kwargs_for(tiny_tokenizer))
    assert plain.spec.nondeterministic is False
    vec = gym.make_vec(
        "rlhf_gym/Completion-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        **kwargs_for(tiny_tokenizer, reward=HumanLike()),
    )
    assert vec.spec.nondeterministic is True
    assert (
        CompletionEnv(**kwargs_for(tiny_tokenizer, reward=HumanLike())).metadata["nondeterministic"] is True
    )


def test_reward_given_by_registered_name_with_reward_kwargs(tiny_tokenizer):
    class Plugin:
        @rlhf_gym.hookimpl
        def register_reward_providers(self, register):
            register("env-test-constant", lambda value: lambda p, c, **kw: [value] * len(p))

    name = rlhf_gym.register_plugin(Plugin(), name="env-test-plugin")
    try:
        env = CompletionEnv(
            **kwargs_for(tiny_tokenizer, reward="env-test-constant", reward_kwargs={"value": 2.5})
        )
        env.reset(seed=0)
        assert env.step("a")[1] == 2.5
    finally:
        rlhf_gym.unregister_plugin(name)


def test_close_closes_the_provider_once(tiny_tokenizer):
    provider = CountingReward()
    env = gym.make("rlhf_gym/TextGen-v0", **kwargs_for(tiny_tokenizer, reward=provider))
    env.close()
    env.close()
    vec = CompletionVectorEnv(num_envs=2, **kwargs_for(tiny_tokenizer, reward=provider))
    vec.close()
    vec.close()
    assert provider.closed == 2


def test_module_prefix_makes_the_env_without_importing_rlhf_gym(tiny_tokenizer_path):
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'rlhf_gym' not in sys.modules\n"
        f"env = gym.make('rlhf_gym:rlhf_gym/TextGen-v0', tokenizer={tiny_tokenizer_path!r}, prompts=['hi there'],"
        " reward=lambda p, c, **k: [1.0] * len(p), max_new_tokens=2)\n"
        "obs, info = env.reset(seed=0)\n"
        "print(type(env.unwrapped).__name__, info['prompt'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TextGenEnv hi there"


@pytest.mark.parametrize("module", [textgen, completion, common])
def test_docstring_examples_run(tiny_tokenizer_path, module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, globs={"tokenizer_path": tiny_tokenizer_path})
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


def test_fast_decoding_matches_the_tokenizers_batch_decode(tiny_tokenizer):
    env = CompletionEnv(**kwargs_for(tiny_tokenizer))
    rows = np.random.default_rng(0).integers(0, len(tiny_tokenizer), size=(16, 12)).tolist()
    assert env.unwrapped._setup.batch_decode(rows) == tiny_tokenizer.batch_decode(
        rows, skip_special_tokens=True
    )
