"""``rlhf_gym/TextGen-v0``: text generation one token per step, for token-level RL (stable-baselines3 and co.).

The observation is the context so far — prompt plus generated tokens — right-aligned in a window of
``max_prompt_tokens + max_new_tokens`` ids, left-padded, so a causal LM policy reads its next-token logits at
position ``-1``. The reward is 0 until the episode ends (EOS: terminated; ``max_new_tokens`` reached: truncated),
then the reward provider's score of the decoded completion. :class:`TextGenVectorEnv` steps many episodes at once
with numpy and scores every episode that finished in a step with one provider call.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from rlhf_gym.envs.common import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_PROMPT_TOKENS,
    PromptSampler,
    ProviderAwareSpec,
    TextEnvSetup,
    build_setup,
    decode_completions,
    score_batch,
)
from rlhf_gym.envs.render import RENDER_MODES, check_render_mode, render_frame

ENV_ID = "rlhf_gym/TextGen-v0"


def _observation_space(window: int, vocab_size: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "input_ids": spaces.Box(low=0, high=vocab_size - 1, shape=(window,), dtype=np.int64),
            "attention_mask": spaces.Box(low=0, high=1, shape=(window,), dtype=np.int64),
        }
    )


class TextGenEnv(ProviderAwareSpec, gym.Env):
    """Generate a completion of a prompt one token per step; the provider scores it at the end.

    Args:
        tokenizer: a name/path for ``AutoTokenizer.from_pretrained`` or a tokenizer object.
        prompts: a list of strings, a ``.txt`` (one per line) or ``.jsonl`` path (field ``prompt``; other fields
            reach the provider as ``**row`` lists), or a ``datasets.Dataset`` with a ``prompt`` column.
        reward: a provider name, a :class:`~rlhf_gym.RewardProvider`, or a TRL-style callable
            ``f(prompts, completions, **kw) -> list[float | None]``.
        reward_kwargs: keyword arguments for a provider given by name.
        max_prompt_tokens: prompts are tokenised once and left-truncated to this many tokens.
        max_new_tokens: the episode is truncated after this many tokens.
        vocab_size: size of the action space; defaults to ``model``'s head, else ``len(tokenizer)``.
        model: a model object or name/path whose head size gives ``vocab_size``.
        shuffle: draw prompts in a seeded random order (each prompt once per pass) instead of in order.
        render_mode: ``"ansi"`` to render the prompt and the completion so far as text, ``"rgb_array"`` as an
            image (what stable-baselines3's ``make_vec_env`` and video recorders ask for).

    Spaces:
        observation: ``Dict(input_ids=Box(int64, (L,)), attention_mask=Box(int64, (L,)))`` with
        ``L = max_prompt_tokens + max_new_tokens``; the latest token is at index ``L - 1``.
        action: ``Discrete(vocab_size)``, the next token id.

    ``info`` at reset holds ``prompt``, ``prompt_index`` and ``prompt_truncated``; at the end of an episode it
    also holds ``completion``, ``completion_length``, ``score`` (``None`` when the provider gave none; the reward
    is then 0), ``score_valid`` and the provider's extras. A provider with ``deterministic = False`` (a live human)
    makes ``env.spec.nondeterministic`` True when built with ``gym.make``, and ``metadata["nondeterministic"]``
    True in any case.

    Example:
        ``tokenizer_path`` is a tokenizer directory saved with ``save_pretrained``.

        >>> import gymnasium as gym, rlhf_gym
        >>> env = gym.make("rlhf_gym/TextGen-v0", tokenizer=tokenizer_path, prompts=["The movie was"],
        ...                reward=lambda prompts, completions, **kw: [float(len(c)) for c in completions])
        >>> obs, info = env.reset(seed=0)
        >>> obs["input_ids"].shape == (64 + 32,), info["prompt"]
        (True, 'The movie was')
        >>> obs, reward, terminated, truncated, info = env.step(env.unwrapped.eos_token_id)
        >>> terminated, reward, info["completion"]
        (True, 0.0, '')
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 4}

    def __init__(
        self,
        tokenizer: Any = None,
        prompts: Any = None,
        reward: Any = None,
        reward_kwargs: dict[str, Any] | None = None,
        max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        vocab_size: int | None = None,
        model: Any = None,
        shuffle: bool = True,
        render_mode: str | None = None,
    ):
        check_render_mode(ENV_ID, render_mode)  # before anything is loaded
        self._setup = build_setup(
            ENV_ID,
            tokenizer=tokenizer,
            prompts=prompts,
            reward=reward,
            reward_kwargs=reward_kwargs,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            vocab_size=vocab_size,
            model=model,
            shuffle=shuffle,
        )
        self.metadata = self._init_metadata(type(self).metadata)
        self.render_mode = render_mode
        setup = self._setup
        self.window = setup.max_prompt_tokens + setup.max_new_tokens
        self.observation_space = _observation_space(self.window, setup.vocab_size)
        self.action_space = spaces.Discrete(setup.vocab_size)
        self._sampler = PromptSampler(len(setup.prompts), setup.shuffle)
        self._input_ids = np.full(self.window, setup.pad_token_id, dtype=np.int64)
        self._attention_mask = np.zeros(self.window, dtype=np.int64)
        self._generated: list[int] = []
        self._prompt_index = -1
        self._done = True
        self._closed = False

    # -- read-only views ----------------------------------------------------------------------------------
    @property
    def pad_token_id(self) -> int:
        """The id used for left padding."""
        return self._setup.pad_token_id

    @property
    def prompt_texts(self) -> list[str]:
        """Every prompt, as the policy sees it (left-truncated prompts decoded from their kept tokens)."""
        return self._setup.prompts.texts

    # -- gymnasium API ------------------------------------------------------------------------------------
    def _observation(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._input_ids.copy(), "attention_mask": self._attention_mask.copy()}

    def _prompt_info(self) -> dict[str, Any]:
        prompts = self._setup.prompts
        return {
            "prompt": prompts.texts[self._prompt_index],
            "prompt_index": int(self._prompt_index),
            "prompt_truncated": bool(prompts.truncated[self._prompt_index]),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode on the next prompt (a seeded reset starts a fresh, reproducible prompt order)."""
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.restart()
        self._prompt_index = int(self._sampler.draw(self.np_random, 1)[0])
        prompts = self._setup.prompts
        p = self._setup.max_prompt_tokens
        self._input_ids[:] = self._setup.pad_token_id
        self._attention_mask[:] = 0
        self._input_ids[-p:] = prompts.input_ids[self._prompt_index]
        self._attention_mask[-p:] = prompts.attention_mask[self._prompt_index]
        self._generated = []
        self._done = False
        return self._observation(), self._prompt_info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append token ``action``; at EOS or ``max_new_tokens`` the provider scores the completion."""
        if self._done:
            raise RuntimeError(
                f"{ENV_ID}: the episode is over (or never started); call reset() before step()"
            )
        if not self.action_space.contains(action):
            raise ValueError(
                f"{ENV_ID}: action {action!r} is outside the action space {self.action_space}; pass a token id "
                f"in [0, {self._setup.vocab_size - 1}]"
            )
        token = int(action)
        self._input_ids[:-1] = self._input_ids[1:]
        self._attention_mask[:-1] = self._attention_mask[1:]
        self._input_ids[-1] = token
        self._attention_mask[-1] = 1
        self._generated.append(token)
        terminated = token == self._setup.eos_token_id
        truncated = not terminated and len(self._generated) >= self._setup.max_new_tokens
        if not (terminated or truncated):
            return self._observation(), 0.0, False, False, {}
        self._done = True
        tokens = np.asarray([self._generated], dtype=np.int64)
        completion = decode_completions(self._setup, tokens)
        batch = score_batch(self._setup, np.array([self._prompt_index]), completion)
        info = self._prompt_info()
        info.update(
            completion=batch.completions[0],
            completion_length=len(self._generated) - int(terminated),
            score=batch.scores[0],
            score_valid=bool(batch.valid[0]),
        )
        info.update({key: values[0] for key, values in batch.extras.items()})
        return self._observation(), float(batch.rewards[0]), terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        """The prompt followed by the completion so far: text (``"ansi"``) or an RGB image (``"rgb_array"``)."""
        if self.render_mode is None or self._prompt_index < 0:
            return None
        tokens = np.asarray([self._generated], dtype=np.int64)
        completion = decode_completions(self._setup, tokens)[0] if self._generated else ""
        return render_frame(self.render_mode, self._setup.prompts.texts[self._prompt_index], completion)

    def close(self) -> None:
        """Close the reward provider (once)."""
        if not self._closed:
            self._closed = True
            self._setup.provider.close()


class TextGenVectorEnv(ProviderAwareSpec, VectorEnv):
    """``num_envs`` token-level episodes stepped together with numpy; one provider call per step.

    Takes the keyword arguments of :class:`TextGenEnv`. Actions are ``(num_envs,)`` token ids. Autoreset is
    ``SAME_STEP``: an episode that ends in a step is scored and replaced by a new prompt in that same step, so
    the returned observation is already the new episode's first; the ended episode's last observation is in
    ``info["final_obs"]``. Episode results sit at the top level of ``info`` as ``(num_envs,)`` object arrays
    with Gymnasium's ``_key`` masks (``prompt``, ``completion``, ``completion_length``, ``score`` — ``None``
    kept —, ``score_valid``, ``prompt_truncated``, ``prompt_index`` and provider extras); steps where nothing
    ended return ``{}``. Text is decoded only for episodes that ended.

    Example:
        ``tokenizer_path`` is a tokenizer directory saved with ``save_pretrained``.

        >>> import gymnasium as gym, numpy as np, rlhf_gym
        >>> envs = gym.make_vec("rlhf_gym/TextGen-v0", num_envs=4, vectorization_mode="vector_entry_point",
        ...                     tokenizer=tokenizer_path, prompts=["Hi", "Hello"], max_new_tokens=2,
        ...                     reward=lambda prompts, completions, **kw: [1.0] * len(prompts))
        >>> obs, info = envs.reset(seed=0)
        >>> obs["input_ids"].shape
        (4, 66)
        >>> _ = envs.step(np.zeros(4, dtype=np.int64) + 5)
        >>> obs, rewards, terminated, truncated, info = envs.step(np.zeros(4, dtype=np.int64) + 5)
        >>> rewards.tolist(), truncated.tolist()
        ([1.0, 1.0, 1.0, 1.0], [True, True, True, True])
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, setup: TextEnvSetup | None = None, **kwargs: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        kwargs.pop("render_mode", None)
        if setup is not None and kwargs:
            raise ValueError(f"pass either setup= or the env keyword arguments, not both (got {sorted(kwargs)})")
        # An existing setup (another rlhf_gym env's) is shared: same tokenised prompts, tokenizer and provider.
        self._setup = setup if setup is not None else build_setup(ENV_ID, **kwargs)
        self.metadata = self._init_metadata(type(self).metadata)
        setup = self._setup
        self.num_envs = int(num_envs)
        self.window = setup.max_prompt_tokens + setup.max_new_tokens
        self.single_observation_space = _observation_space(self.window, setup.vocab_size)
        self.single_action_space = spaces.Discrete(setup.vocab_size)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._sampler = PromptSampler(len(setup.prompts), setup.shuffle)
        n, window, t = self.num_envs, self.window, setup.max_new_tokens
        self._input_ids = np.full((n, window), setup.pad_token_id, dtype=np.int64)
        self._attention_mask = np.zeros((n, window), dtype=np.int64)
        self._generated = np.full((n, t), setup.pad_token_id, dtype=np.int64)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._prompt_index = np.zeros(n, dtype=np.int64)
        self._rows = np.arange(n)
        self._started = False

    def current_prompts(self) -> list[str]:
        """The prompt text of each sub-environment's current episode."""
        texts = self._setup.prompts.texts
        return [texts[i] for i in self._prompt_index]

    def _start_episodes(self, rows: np.ndarray) -> None:
        setup = self._setup
        idx = self._sampler.draw(self.np_random, len(rows))
        self._prompt_index[rows] = idx
        p = setup.max_prompt_tokens
        self._input_ids[rows, :-p] = setup.pad_token_id
        self._attention_mask[rows, :-p] = 0
        self._input_ids[rows, -p:] = setup.prompts.input_ids[idx]
        self._attention_mask[rows, -p:] = setup.prompts.attention_mask[idx]
        self._generated[rows] = setup.pad_token_id
        self._lengths[rows] = 0

    def _observation(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._input_ids.copy(), "attention_mask": self._attention_mask.copy()}

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new episode in every sub-environment; a seed makes the prompt order reproducible.

        ``seed`` is one int for the whole batch (the batch shares one prompt stream); a list of ints is
        folded into one seed sequence.
        """
        if isinstance(seed, (list, tuple)):
            if not all(isinstance(s, (int, np.integer)) for s in seed):
                raise ValueError(f"seed must be an int or a list of ints, got {seed!r}")
            self._np_random = np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([int(s) for s in seed]))
            )
            self._np_random_seed = -1
        elif seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        if seed is not None:
            self._sampler.restart()
        self._start_episodes(self._rows)
        self._started = True
        prompts = self._setup.prompts
        info = {
            "prompt_index": self._prompt_index.copy(),
            "prompt_truncated": prompts.truncated[self._prompt_index],
        }
        return self._observation(), info

    def _check_actions(self, actions: Any) -> np.ndarray:
        array = np.asarray(actions)
        vocab = self._setup.vocab_size
        if array.shape != (self.num_envs,) or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"{ENV_ID}: actions must be {self.num_envs} token ids (integer array of shape ({self.num_envs},)), "
                f"got shape {array.shape} dtype {array.dtype}"
            )
        array = array.astype(np.int64, copy=False)
        if array.size and (array.min() < 0 or array.max() >= vocab):
            bad = array[(array < 0) | (array >= vocab)]
            raise ValueError(
                f"{ENV_ID}: actions {bad[:5].tolist()} are outside the action space; token ids must lie in "
                f"[0, {vocab - 1}]"
            )
        return array

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Append one token per sub-environment; score and restart the episodes that ended."""
        if not self._started:
            raise RuntimeError(f"{ENV_ID}: call reset() before step()")
        tokens = self._check_actions(actions)
        setup = self._setup
        self._input_ids[:, :-1] = self._input_ids[:, 1:]
        self._input_ids[:, -1] = tokens
        self._attention_mask[:, :-1] = self._attention_mask[:, 1:]
        self._attention_mask[:, -1] = 1
        self._generated[self._rows, self._lengths] = tokens
        self._lengths += 1
        if setup.eos_token_id is None:
            terminated = np.zeros(self.num_envs, dtype=bool)
        else:
            terminated = tokens == setup.eos_token_id
        truncated = (self._lengths >= setup.max_new_tokens) & ~terminated
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        ended = np.flatnonzero(terminated | truncated)
        info: dict[str, Any] = {}
        if len(ended):
            info = self._finish(ended, terminated, rewards)
            self._start_episodes(ended)
        return self._observation(), rewards, terminated, truncated, info

    def _finish(self, ended: np.ndarray, terminated: np.ndarray, rewards: np.ndarray) -> dict[str, Any]:
        """Score the episodes in rows ``ended`` with one provider call; build their ``info`` entries."""
        setup = self._setup
        lengths = self._lengths[ended] - terminated[ended]
        completions = decode_completions(setup, self._generated[ended], lengths)
        prompt_index = self._prompt_index[ended]
        batch = score_batch(setup, prompt_index, completions)
        rewards[ended] = batch.rewards
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[ended] = True
        info: dict[str, Any] = {}

        def put(key: str, values: Any, dtype: Any = object) -> None:
            column = (
                np.full(self.num_envs, None, dtype=object)
                if dtype is object
                else np.zeros(self.num_envs, dtype)
            )
            if dtype is object:
                for row, value in zip(ended, values, strict=True):
                    column[row] = value
            else:
                column[ended] = values
            info[key] = column
            info[f"_{key}"] = mask.copy()

        put("prompt", batch.prompts)
        put("completion", batch.completions)
        put("completion_length", lengths, np.int64)
        put("score", batch.scores)
        put("score_valid", batch.valid, bool)
        put("prompt_truncated", setup.prompts.truncated[prompt_index], bool)
        put("prompt_index", prompt_index, np.int64)
        for key, values in batch.extras.items():
            put(key, values)
        put(
            "final_obs",
            [
                {"input_ids": self._input_ids[row].copy(), "attention_mask": self._attention_mask[row].copy()}
                for row in ended
            ],
        )
        return info

    def close_extras(self, **kwargs: Any) -> None:
        """Close the reward provider."""
        self._setup.provider.close()
