"""``rlhf_gym/Completion-v0``: one whole completion per step, the shape of RLHF for language models.

An episode is one step: the observation is a (left-padded) prompt, the action is the completion — token ids or a
string — and the reward is the provider's score. :class:`CompletionVectorEnv` is what rollouts use: it takes the
completions of a whole batch of prompts, scores them with one provider call, and hands back the next batch,
optionally with each prompt repeated for a group of ``group_size`` samples (RLOO, GRPO).
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
    completion_lengths,
    completion_rows,
    decode_completions,
    score_batch,
)
from rlhf_gym.envs.render import RENDER_MODES, check_render_mode, render_frame

ENV_ID = "rlhf_gym/Completion-v0"


def _prompt_space(max_prompt_tokens: int, vocab_size: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "input_ids": spaces.Box(low=0, high=vocab_size - 1, shape=(max_prompt_tokens,), dtype=np.int64),
            "attention_mask": spaces.Box(low=0, high=1, shape=(max_prompt_tokens,), dtype=np.int64),
        }
    )


def _completion_space(max_new_tokens: int, vocab_size: int) -> spaces.Box:
    return spaces.Box(low=0, high=vocab_size - 1, shape=(max_new_tokens,), dtype=np.int64)


class CompletionEnv(ProviderAwareSpec, gym.Env):
    """One-step episodes: observe a prompt, act with a whole completion, receive the provider's score.

    Takes the keyword arguments of :class:`~rlhf_gym.envs.textgen.TextGenEnv` (``tokenizer``, ``prompts``,
    ``reward``, ``reward_kwargs``, ``max_prompt_tokens``, ``max_new_tokens``, ``vocab_size``, ``model``,
    ``shuffle``, ``render_mode``: ``"ansi"`` or ``"rgb_array"`` show the prompt and its last completion).

    Spaces:
        observation: ``Dict(input_ids=Box(int64, (max_prompt_tokens,)), attention_mask=...)``, left-padded.
        action: ``Box(int64, (max_new_tokens,), 0, vocab_size - 1)``: completion token ids. Tokens after the
        first EOS and pad tokens are ignored. A ``str`` is accepted too (tokenised, cut to ``max_new_tokens``).

    ``info`` after the step holds ``prompt``, ``completion`` (decoded from the kept tokens), ``completion_length``,
    ``score`` (``None`` when the provider gave none; the reward is then 0), ``score_valid``, ``prompt_index``,
    ``prompt_truncated`` and the provider's extras. Determinism is marked as in ``TextGenEnv``.

    Example:
        ``tokenizer_path`` is a tokenizer directory saved with ``save_pretrained``.

        >>> import gymnasium as gym, rlhf_gym
        >>> env = gym.make("rlhf_gym/Completion-v0", tokenizer=tokenizer_path, prompts=["The movie was"],
        ...                reward=lambda prompts, completions, **kw: [float(len(c)) for c in completions])
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(" great fun")
        >>> reward, terminated, info["completion"]
        (10.0, True, ' great fun')
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 1}

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
        self._last_completion = ""
        setup = self._setup
        self.observation_space = _prompt_space(setup.max_prompt_tokens, setup.vocab_size)
        self.action_space = _completion_space(setup.max_new_tokens, setup.vocab_size)
        self._sampler = PromptSampler(len(setup.prompts), setup.shuffle)
        self._prompt_index = -1
        self._done = True
        self._closed = False

    def _observation(self) -> dict[str, np.ndarray]:
        prompts = self._setup.prompts
        return {
            "input_ids": prompts.input_ids[self._prompt_index].copy(),
            "attention_mask": prompts.attention_mask[self._prompt_index].copy(),
        }

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
        """Draw the next prompt (a seeded reset starts a fresh, reproducible prompt order)."""
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.restart()
        self._prompt_index = int(self._sampler.draw(self.np_random, 1)[0])
        self._done = False
        self._last_completion = ""
        return self._observation(), self._prompt_info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Score the completion ``action`` (token ids or a string); the episode then terminates."""
        if self._done:
            raise RuntimeError(
                f"{ENV_ID}: the episode is over (or never started); call reset() before step()"
            )
        tokens, lengths = completion_rows(self._setup, [action], ENV_ID)
        completions = decode_completions(self._setup, tokens, lengths)
        batch = score_batch(self._setup, np.array([self._prompt_index]), completions)
        self._done = True
        self._last_completion = batch.completions[0]
        info = self._prompt_info()
        info.update(
            completion=batch.completions[0],
            completion_length=int(lengths[0]),
            score=batch.scores[0],
            score_valid=bool(batch.valid[0]),
        )
        info.update({key: values[0] for key, values in batch.extras.items()})
        return self._observation(), float(batch.rewards[0]), True, False, info

    def render(self) -> str | np.ndarray | None:
        """The prompt and its last completion: text (``"ansi"``) or an RGB image (``"rgb_array"``)."""
        prompt = self._setup.prompts.texts[self._prompt_index] if self._prompt_index >= 0 else None
        return render_frame(self.render_mode, prompt, self._last_completion)

    def close(self) -> None:
        """Close the reward provider (once)."""
        if not self._closed:
            self._closed = True
            self._setup.provider.close()


class CompletionVectorEnv(ProviderAwareSpec, VectorEnv):
    """A batch of ``num_envs`` one-step episodes scored with ONE provider call per step.

    Args:
        num_envs: completions per step.
        group_size: consecutive groups of this many sub-environments get the same prompt (RLOO/GRPO);
            ``num_envs`` must be a multiple of it.
        **kwargs: the keyword arguments of :class:`CompletionEnv`.

    ``step(actions)`` takes a ``(num_envs, max_new_tokens)`` integer array (or a list of ``num_envs`` strings /
    token sequences), decodes all completions, scores them in one call and returns the NEXT batch of prompts as
    the observation (autoreset ``SAME_STEP``: every sub-environment terminates each step; the scored prompts are in
    ``info["final_obs"]``). ``info`` holds, for the scored batch: ``prompt``, ``completion`` and ``score`` lists
    (``None`` kept), ``score_valid`` / ``prompt_truncated`` bool arrays, ``prompt_index`` / ``completion_length``
    int arrays, and the provider's extras as lists. Prompt strings are shared between a group, never copied.
    :meth:`current_prompts` gives the texts of the batch being observed, so a rollout holding token ids needs no
    re-tokenising.

    Example:
        ``tokenizer_path`` is a tokenizer directory saved with ``save_pretrained``.

        >>> import gymnasium as gym, rlhf_gym
        >>> envs = gym.make_vec("rlhf_gym/Completion-v0", num_envs=4, group_size=2,
        ...                     vectorization_mode="vector_entry_point", tokenizer=tokenizer_path,
        ...                     prompts=["Hi", "Hello"], reward=lambda p, c, **kw: [float(len(x)) for x in c])
        >>> obs, info = envs.reset(seed=0)
        >>> prompts = envs.unwrapped.current_prompts()
        >>> prompts[0] == prompts[1], obs["input_ids"].shape
        (True, (4, 64))
        >>> obs, rewards, terminated, truncated, info = envs.step(["a", "bb", "ccc", "dddd"])
        >>> rewards.tolist(), bool(terminated.all()), info["prompt"] == prompts
        ([1.0, 2.0, 3.0, 4.0], True, True)
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, group_size: int = 1, setup: TextEnvSetup | None = None, **kwargs: Any):
        for name, value in (("num_envs", num_envs), ("group_size", group_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_envs % group_size:
            raise ValueError(
                f"num_envs ({num_envs}) must be a multiple of group_size ({group_size}) so every group of "
                f"{group_size} shares one prompt"
            )
        kwargs.pop("render_mode", None)
        if setup is not None and kwargs:
            raise ValueError(f"pass either setup= or the env keyword arguments, not both (got {sorted(kwargs)})")
        # An existing setup (another rlhf_gym env's) is shared: same tokenised prompts, tokenizer and provider.
        self._setup = setup if setup is not None else build_setup(ENV_ID, **kwargs)
        self.metadata = self._init_metadata(type(self).metadata)
        setup = self._setup
        self.num_envs = int(num_envs)
        self.group_size = int(group_size)
        self.single_observation_space = _prompt_space(setup.max_prompt_tokens, setup.vocab_size)
        self.single_action_space = _completion_space(setup.max_new_tokens, setup.vocab_size)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._sampler = PromptSampler(len(setup.prompts), setup.shuffle)
        self._prompt_index: np.ndarray | None = None

    def _require_started(self) -> np.ndarray:
        if self._prompt_index is None:
            raise RuntimeError(f"{ENV_ID}: call reset() before step() or current_prompts()")
        return self._prompt_index

    def current_prompts(self) -> list[str]:
        """The prompt texts of the batch currently observed (group members share one string object)."""
        texts = self._setup.prompts.texts
        return [texts[i] for i in self._require_started()]

    def current_prompt_indices(self) -> np.ndarray:
        """Indices into the prompt set of the batch currently observed."""
        return self._require_started().copy()

    def get_state(self) -> dict[str, Any]:
        """JSON-able state (RNG, prompt pass, current batch) so a checkpointed run continues exactly."""
        return {"rng": self.np_random.bit_generator.state, "sampler": self._sampler.state_dict(),
                "prompt_index": None if self._prompt_index is None else self._prompt_index.tolist()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""
        self.np_random.bit_generator.state = state["rng"]
        self._sampler.load_state_dict(state["sampler"])
        index = state["prompt_index"]
        self._prompt_index = None if index is None else np.asarray(index, dtype=np.int64)

    def _next_batch(self) -> None:
        groups = self._sampler.draw(self.np_random, self.num_envs // self.group_size)
        self._prompt_index = np.repeat(groups, self.group_size)

    def _observation(self) -> dict[str, np.ndarray]:
        prompts = self._setup.prompts
        index = self._require_started()
        return {"input_ids": prompts.input_ids[index], "attention_mask": prompts.attention_mask[index]}

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Draw a batch of prompts; a seed makes the prompt order reproducible.

        ``seed`` is one int for the whole batch (one prompt stream feeds every sub-environment); a list of ints
        is folded into one seed sequence.
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
        self._next_batch()
        index = self._require_started()
        info = {"prompt_index": index.copy(), "prompt_truncated": self._setup.prompts.truncated[index]}
        return self._observation(), info

    def _action_rows(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        setup = self._setup
        n, t, vocab = self.num_envs, setup.max_new_tokens, setup.vocab_size
        if hasattr(actions, "__array__") and not isinstance(actions, (list, tuple, str)):
            array = np.asarray(actions)
            if (
                array.ndim != 2
                or array.shape[0] != n
                or array.shape[1] > t
                or not np.issubdtype(array.dtype, np.integer)
            ):
                raise ValueError(
                    f"{ENV_ID}: actions must be an integer array of shape ({n}, {t}) (or a list of {n} strings), "
                    f"got shape {array.shape} dtype {array.dtype}"
                )
            if array.size and (array.min() < 0 or array.max() >= vocab):
                bad = array[(array < 0) | (array >= vocab)]
                raise ValueError(
                    f"{ENV_ID}: token ids {bad[:5].tolist()} are outside the action space; ids must lie in "
                    f"[0, {vocab - 1}]"
                )
            rows = np.full((n, t), setup.pad_token_id, dtype=np.int64)
            rows[:, : array.shape[1]] = array
            lengths = np.minimum(completion_lengths(rows, setup.eos_token_id), array.shape[1])
            return rows, lengths
        if isinstance(actions, str) or not hasattr(actions, "__len__") or len(actions) != n:
            raise ValueError(
                f"{ENV_ID}: actions must be an integer array of shape ({n}, {t}) or a list of {n} completions "
                f"(strings or token-id sequences), got {type(actions).__name__}"
            )
        return completion_rows(setup, list(actions), ENV_ID)

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score one completion per sub-environment with one provider call; observe the next prompt batch."""
        return self._advance(actions, score=True)

    def step_unscored(self, actions: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Decode the completions and observe the next prompt batch WITHOUT asking the provider for scores.

        For algorithms that ask the provider something else about the samples (online DPO's pairwise ``compare``,
        preference collection): a live human is then not asked to rate completions nobody uses.
        Returns ``(next_obs, info)``; ``info`` has no ``score``.
        """
        obs, _, _, _, info = self._advance(actions, score=False)
        return obs, info

    def _advance(self, actions: Any, score: bool) -> tuple[Any, ...]:
        index = self._require_started()
        rows, lengths = self._action_rows(actions)
        completions = decode_completions(self._setup, rows, lengths)
        prompts = self._setup.prompts
        info: dict[str, Any] = {
            "prompt": [prompts.texts[i] for i in index],
            "completion": completions,
            "completion_length": lengths,
            "prompt_index": index,
            "prompt_truncated": prompts.truncated[index],
        }
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        if score:
            batch = score_batch(self._setup, index, completions)
            rewards = batch.rewards
            info.update({"prompt": batch.prompts, "score": batch.scores, "score_valid": batch.valid, **batch.extras})
        final = self._observation()
        final_obs = np.empty(self.num_envs, dtype=object)
        for i in range(self.num_envs):
            final_obs[i] = {"input_ids": final["input_ids"][i], "attention_mask": final["attention_mask"][i]}
        info["final_obs"] = final_obs
        self._next_batch()
        terminated = np.ones(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        return self._observation(), rewards, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Close the reward provider."""
        self._setup.provider.close()
