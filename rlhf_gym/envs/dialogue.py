"""``rlhf_gym/Dialogue-v0``: multi-turn conversations, one assistant turn per step.

The environment owns the protocol: it starts a conversation from a scenario, renders it with the chat template
as the observation, appends the policy's turn (token ids or a string), asks the reward provider to judge, asks the
user simulator for the next message, and decides when the episode ends — the user ends it (replies ``None``), the
task is solved (a provider's ``solved`` extra), ``max_turns`` assistant turns were taken, or the conversation no
longer fits in ``max_context_tokens``. :class:`DialogueVectorEnv` runs a batch of conversations with one provider
call and one user-simulator call per step for all of them; :class:`DialogueEnv` is the same engine with one
conversation, so the two behave alike by construction.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from rlhf_gym.envs.common import (
    PromptSampler,
    ProviderAwareSpec,
    completion_rows,
    decode_completions,
    score_completions,
)
from rlhf_gym.envs.dialogue_common import (
    DEFAULT_MAX_CONTEXT_TOKENS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_TURNS,
    DIALOGUE_ROW_KEYS,
    DialogueSetup,
    build_dialogue_setup,
)
from rlhf_gym.errors import ConfigError, RewardError
from rlhf_gym.providers import scores_to_array
from rlhf_gym.user_simulator import checked_replies

ENV_ID = "rlhf_gym/Dialogue-v0"
#: why an episode ended, in ``info["ended_by"]`` (``None`` while it goes on)
END_REASONS = ("user", "solved", "max_turns", "context")
_ENV_INFO_KEYS = frozenset({"messages", "completion", "completion_length", "score", "score_valid", "final_score",
                            "final_score_valid", "turn", "ended_by", "user_reply", "scenario_index", "solved",
                            "context_length", "final_obs", "final_info"})


def dialogue_spaces(setup: DialogueSetup) -> tuple[spaces.Dict, spaces.Box]:
    """(observation space, action space) of one conversation."""
    width, vocab = setup.max_context_tokens, setup.vocab_size
    obs = spaces.Dict({
        "input_ids": spaces.Box(low=0, high=vocab - 1, shape=(width,), dtype=np.int64),
        "attention_mask": spaces.Box(low=0, high=1, shape=(width,), dtype=np.int64),
    })
    return obs, spaces.Box(low=0, high=vocab - 1, shape=(setup.max_new_tokens,), dtype=np.int64)


class ConversationBatch:
    """The protocol of ``n`` conversations at once: the engine behind both dialogue envs.

    Holds each slot's messages, scenario, turn count and rendered context; :meth:`start` opens new conversations
    in some slots and :meth:`step` takes one assistant turn in every slot.
    """

    def __init__(self, setup: DialogueSetup, n: int):
        self.setup = setup
        self.n = n
        self.messages: list[list[dict[str, str]]] = [[] for _ in range(n)]
        self.scenario = np.full(n, -1, dtype=np.int64)
        self.turn = np.zeros(n, dtype=np.int64)
        self.rendered: list[str] = [""] * n
        self.ids = np.full((n, setup.max_context_tokens), setup.pad_token_id, dtype=np.int64)
        self.mask = np.zeros((n, setup.max_context_tokens), dtype=np.int64)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.started = False

    # -- rows for providers and simulators ------------------------------------------------------------------
    def _row(self, slots: list[int]) -> dict[str, list[Any]]:
        row = self.setup.scenarios.row_extras(self.scenario[slots].tolist())
        row["scenario_index"] = [int(self.scenario[i]) for i in slots]
        row["turn"] = [int(self.turn[i]) for i in slots]
        return row

    def _ask_user(self, slots: list[int]) -> list[str | None]:
        if not slots:
            return []
        user = self.setup.user
        conversations = [copy.deepcopy(self.messages[i]) for i in slots]
        return checked_replies(user, user.reply(conversations, **self._row(slots)), len(slots))

    def _render(self, slots: list[int]) -> np.ndarray:
        """Render ``slots`` into the observation buffers; returns which of them overflow the context."""
        texts = self.setup.render([self.messages[i] for i in slots])
        ids, mask, lengths = self.setup.encode(texts)
        for k, i in enumerate(slots):
            self.rendered[i] = texts[k]
        self.ids[slots], self.mask[slots], self.lengths[slots] = ids, mask, lengths
        return lengths > self.setup.max_context_tokens

    # -- opening ---------------------------------------------------------------------------------------------
    def start(self, slots: list[int], scenario_indices: np.ndarray) -> None:
        """Open a conversation from each scenario in ``slots``; the user simulator writes missing openings."""
        scenarios = self.setup.scenarios
        for i, s in zip(slots, scenario_indices.tolist(), strict=True):
            self.messages[i] = copy.deepcopy(scenarios.messages[s])
            self.scenario[i] = s
            self.turn[i] = 0
        need_opening = [i for i in slots if not any(m["role"] == "user" for m in self.messages[i])]
        for i, text in zip(need_opening, self._ask_user(need_opening), strict=True):
            if text is None:
                raise ConfigError(
                    f"user simulator {self.setup.user!r} ended conversation {int(self.scenario[i])} before it "
                    f"began; give scenarios a first user message or a simulator that writes openings"
                )
            self.messages[i].append({"role": "user", "content": text})
        overflow = self._render(slots)
        if overflow.any():
            k = int(np.flatnonzero(overflow)[0])
            raise ConfigError(
                f"scenario {int(self.scenario[slots[k]])} renders to {int(self.lengths[slots[k]])} tokens, more "
                f"than max_context_tokens={self.setup.max_context_tokens}; raise max_context_tokens or shorten it"
            )
        self.started = True

    def observation(self, slots: list[int] | None = None) -> dict[str, np.ndarray]:
        index = slice(None) if slots is None else slots
        return {"input_ids": self.ids[index].copy(), "attention_mask": self.mask[index].copy()}

    # -- one assistant turn everywhere -----------------------------------------------------------------------
    def _score(self, provider: Any, slots: list[int], prompts: list[str],
               completions: list[str]) -> tuple[list[Any], np.ndarray, np.ndarray, dict[str, list[Any]]]:
        row = self._row(slots)
        row["messages"] = [copy.deepcopy(self.messages[i]) for i in slots]
        scores, extras = score_completions(provider, prompts, completions, row)
        name = getattr(provider, "name", None) or type(provider).__name__
        for key in extras:
            if key in _ENV_INFO_KEYS - {"solved"} or key in DIALOGUE_ROW_KEYS:
                raise RewardError(f"reward provider {name!r} returned an extra named {key!r}, which the dialogue "
                                  f"environment fills itself; rename that extra")
        rewards, valid = scores_to_array(scores)
        return scores, rewards, valid, extras

    def step(self, rows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   list[dict[str, Any]]]:
        """Take one assistant turn (token rows) in every slot; returns rewards, terminated, truncated, infos.

        If a provider or the user simulator raises, every conversation is left as it was before the step, so the
        step can be retried (a person who stepped away, a judge that timed out).
        """
        saved = (copy.deepcopy(self.messages), self.turn.copy(), list(self.rendered), self.ids.copy(),
                 self.mask.copy(), self.lengths.copy())
        try:
            return self._step(rows, lengths)
        except BaseException:
            self.messages, self.turn, self.rendered, self.ids, self.mask, self.lengths = saved
            raise

    def _step(self, rows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                    list[dict[str, Any]]]:
        setup, n, every = self.setup, self.n, list(range(self.n))
        completions = decode_completions(setup, rows, lengths)  # type: ignore[arg-type]
        prompts = list(self.rendered)
        for i in every:
            self.messages[i].append({"role": "assistant", "content": completions[i].strip()})
            self.turn[i] += 1
        infos: list[dict[str, Any]] = [{"completion": completions[i], "completion_length": int(lengths[i]),
                                        "turn": int(self.turn[i]), "scenario_index": int(self.scenario[i]),
                                        "score": None, "score_valid": False, "final_score": None,
                                        "final_score_valid": False, "user_reply": None, "ended_by": None}
                                       for i in every]
        rewards = np.zeros(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        ended_by: list[str | None] = [None] * n

        # judge the turn (one call for every slot)
        if setup.provider is not None:
            scores, turn_rewards, valid, extras = self._score(setup.provider, every, prompts, completions)
            rewards += turn_rewards
            for i in every:
                infos[i].update(score=scores[i], score_valid=bool(valid[i]))
                infos[i].update({key: values[i] for key, values in extras.items()})
                if bool(extras.get("solved", [False] * n)[i]):
                    terminated[i], ended_by[i] = True, "solved"
        for i in every:
            if not terminated[i] and self.turn[i] >= setup.max_turns:
                truncated[i], ended_by[i] = True, "max_turns"

        # the user's next message (one call for every conversation that goes on)
        going = [i for i in every if not (terminated[i] or truncated[i])]
        for i, text in zip(going, self._ask_user(going), strict=True):
            infos[i]["user_reply"] = text
            if text is None:
                terminated[i], ended_by[i] = True, "user"
            else:
                self.messages[i].append({"role": "user", "content": text})
        replied = [i for i in going if not terminated[i]]
        overflow = self._render(replied)
        for k, i in enumerate(replied):
            if overflow[k]:
                truncated[i], ended_by[i] = True, "context"
        # the last observation of a conversation that ended shows all of it
        self._render([i for i in every if (terminated[i] or truncated[i]) and i not in replied])

        # judge finished conversations as a whole (one call)
        done = [i for i in every if terminated[i] or truncated[i]]
        if setup.final_provider is not None and done:
            scores, final_rewards, valid, extras = self._score(
                setup.final_provider, done, [prompts[i] for i in done], [completions[i] for i in done])
            for k, i in enumerate(done):
                rewards[i] += final_rewards[k]
                infos[i].update(final_score=scores[k], final_score_valid=bool(valid[k]))
                infos[i].update({key: values[k] for key, values in extras.items() if key not in infos[i]})
        for i in every:
            infos[i]["ended_by"] = ended_by[i]
            infos[i]["context_length"] = int(self.lengths[i])
            infos[i]["messages"] = copy.deepcopy(self.messages[i])
        return rewards, terminated, truncated, infos


class DialogueEnv(ProviderAwareSpec, gym.Env):
    """A conversation with a user simulator, one assistant turn per step.

    Args:
        tokenizer: a name/path for ``AutoTokenizer.from_pretrained`` or a tokenizer object.
        scenarios: how conversations open (see :func:`~rlhf_gym.envs.dialogue_common.load_scenarios`): message
            lists, prompt strings, dicts with ``messages`` or ``system``/``user`` plus extra fields, a
            ``.jsonl``/``.txt`` path or a ``datasets.Dataset``. Extra fields reach providers and the simulator.
        user: the other side: a user-simulator name (``scripted``, ``simulated-user``, ``policy-user``,
            ``live-user`` or a plugin's), a :class:`~rlhf_gym.UserSimulator`, or ``f(conversations, **row)``.
        user_kwargs: keyword arguments for a simulator given by name.
        reward: the per-turn provider (name, :class:`~rlhf_gym.RewardProvider` or TRL-style callable). It sees
            the rendered conversation before the turn as the prompt, the turn as the completion, and the whole
            conversation as ``messages`` in the row (with ``turn``, ``scenario_index`` and the scenario's extras).
            A ``solved`` extra that is true ends the episode (``terminated``).
        final_reward: the provider judging a finished conversation (default: ``reward``).
        reward_mode: ``"turn"`` (reward every turn), ``"final"`` (only when the episode ends) or ``"both"``.
        max_turns: assistant turns before the episode is truncated.
        max_context_tokens: width of the observation; a conversation that outgrows it is truncated.
        max_new_tokens: the longest assistant turn (the action's length).
        chat_template: a Jinja chat template; default: the tokenizer's own, else
            :data:`~rlhf_gym.envs.dialogue_common.DEFAULT_CHAT_TEMPLATE` (``Role: content`` lines).
        vocab_size, model: size of the action space, as in ``Completion-v0``.
        shuffle: draw scenarios in a seeded random order rather than in file order.
        render_mode: ``"ansi"`` (``render()`` returns the conversation as text) or ``None``.

    Spaces:
        observation: ``Dict(input_ids=Box(int64, (max_context_tokens,)), attention_mask=...)``, left-padded: the
        conversation rendered with the generation prompt for the assistant's turn.
        action: ``Box(int64, (max_new_tokens,))`` token ids (cut at the first EOS), or a ``str``.

    ``info`` holds ``messages`` (the conversation so far), ``scenario_index`` and ``turn``; after a step also
    ``completion``, ``score``/``score_valid`` (per-turn), ``final_score``/``final_score_valid`` (at the end),
    ``user_reply``, ``ended_by`` (``"user"``, ``"solved"``, ``"max_turns"``, ``"context"`` or ``None``),
    ``context_length`` and the providers' extras.

    Example:
        ``tokenizer_path`` is a tokenizer directory saved with ``save_pretrained``.

        >>> import gymnasium as gym, rlhf_gym
        >>> env = gym.make("rlhf_gym/Dialogue-v0", tokenizer=tokenizer_path,
        ...                scenarios=[{"user": "Hi!", "follow_ups": ["Tell me more."]}],
        ...                reward=lambda prompts, completions, **kw: [float(len(c)) for c in completions])
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(" Hello there.")
        >>> reward, terminated, info["messages"][-1]
        (13.0, False, {'role': 'user', 'content': 'Tell me more.'})
        >>> obs, reward, terminated, truncated, info = env.step(" It was fun.")
        >>> terminated, info["ended_by"], len(info["messages"])
        (True, 'user', 4)
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, tokenizer: Any = None, scenarios: Any = None, user: Any = "scripted",
                 user_kwargs: dict[str, Any] | None = None, reward: Any = None,
                 reward_kwargs: dict[str, Any] | None = None, final_reward: Any = None,
                 final_reward_kwargs: dict[str, Any] | None = None, reward_mode: str = "turn",
                 max_turns: int = DEFAULT_MAX_TURNS, max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, chat_template: str | None = None,
                 vocab_size: int | None = None, model: Any = None, shuffle: bool = True,
                 render_mode: str | None = None, setup: DialogueSetup | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"{ENV_ID} renders as 'ansi' text only; got render_mode={render_mode!r}")
        self._setup = setup if setup is not None else build_dialogue_setup(
            ENV_ID, tokenizer=tokenizer, scenarios=scenarios, user=user, user_kwargs=user_kwargs, reward=reward,
            reward_kwargs=reward_kwargs, final_reward=final_reward, final_reward_kwargs=final_reward_kwargs,
            reward_mode=reward_mode, max_turns=max_turns, max_context_tokens=max_context_tokens,
            max_new_tokens=max_new_tokens, chat_template=chat_template, vocab_size=vocab_size, model=model,
            shuffle=shuffle)
        self.render_mode = render_mode
        self.metadata = self._init_metadata(type(self).metadata)
        self.observation_space, self.action_space = dialogue_spaces(self._setup)
        self._sampler = PromptSampler(len(self._setup.scenarios), self._setup.shuffle)
        self._batch = ConversationBatch(self._setup, 1)
        self._done = True
        self._closed = False

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation so far (a copy)."""
        return copy.deepcopy(self._batch.messages[0])

    def _info(self) -> dict[str, Any]:
        return {"messages": self.messages, "scenario_index": int(self._batch.scenario[0]),
                "turn": int(self._batch.turn[0])}

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Open the next scenario's conversation (a seeded reset also restarts the user simulator's stream).

        ``options={"scenario_index": i}`` opens scenario ``i`` instead of the next one drawn.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.restart()
            self._setup.user.reset(seed)
        index = (options or {}).get("scenario_index")
        if index is None:
            chosen = self._sampler.draw(self.np_random, 1)
        else:
            if not 0 <= int(index) < len(self._setup.scenarios):
                raise ValueError(f"scenario_index {index} is outside [0, {len(self._setup.scenarios)})")
            chosen = np.array([int(index)], dtype=np.int64)
        self._batch.start([0], chosen)
        self._done = False
        return self._observe()

    def _observe(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        obs = self._batch.observation()
        return {k: v[0] for k, v in obs.items()}, self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Take the assistant's turn ``action`` (token ids or a string)."""
        if self._done:
            raise RuntimeError(f"{ENV_ID}: the episode is over (or never started); call reset() before step()")
        rows, lengths = completion_rows(self._setup, [action], ENV_ID)  # type: ignore[arg-type]
        rewards, terminated, truncated, infos = self._batch.step(rows, lengths)
        self._done = bool(terminated[0] or truncated[0])
        obs, _ = self._observe()
        return obs, float(rewards[0]), bool(terminated[0]), bool(truncated[0]), infos[0]

    def render(self) -> str | None:
        """The conversation as text (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"{m['role']}: {m['content']}" for m in self._batch.messages[0])

    def close(self) -> None:
        """Close the providers and the user simulator (once)."""
        if not self._closed:
            self._closed = True
            self._setup.close()


class DialogueVectorEnv(ProviderAwareSpec, VectorEnv):
    """``num_envs`` conversations stepped together: one provider call and one user-simulator call per step.

    Args:
        num_envs: conversations per step.
        setup: share another dialogue env's loaded settings (tokenizer, scenarios, providers, simulator).
        **kwargs: the keyword arguments of :class:`DialogueEnv`.

    Autoreset is ``SAME_STEP``, as in Gymnasium 1.x's vector envs with that mode: a conversation that ends is
    replaced at once by a new one, whose observation is returned; the finished one's last observation is in
    ``info["final_obs"]`` (an object array, ``None`` where nothing ended; mask ``info["_final_obs"]``). ``info``
    holds, per sub-env, the step just taken: ``messages`` (the conversation as the step left it — the finished
    conversation where one ended), ``completion``, ``score``, ``final_score``, ``ended_by``, ``user_reply``,
    ``turn``, ``scenario_index`` (lists, arrays for numbers and flags) and the providers' extras.
    :meth:`current_messages` gives the conversations being observed now.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, setup: DialogueSetup | None = None, **kwargs: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        kwargs.pop("render_mode", None)
        if setup is not None and kwargs:
            raise ValueError(f"pass either setup= or the env keyword arguments, not both (got {sorted(kwargs)})")
        self._setup = setup if setup is not None else build_dialogue_setup(ENV_ID, **kwargs)
        self.metadata = self._init_metadata(type(self).metadata)
        self.num_envs = int(num_envs)
        self.single_observation_space, self.single_action_space = dialogue_spaces(self._setup)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._sampler = PromptSampler(len(self._setup.scenarios), self._setup.shuffle)
        self._batch = ConversationBatch(self._setup, self.num_envs)

    def current_messages(self) -> list[list[dict[str, str]]]:
        """The conversations being observed now (copies), one per sub-env."""
        if not self._batch.started:
            raise RuntimeError(f"{ENV_ID}: call reset() first")
        return copy.deepcopy(self._batch.messages)

    def current_prompts(self) -> list[str]:
        """The observed conversations as rendered text (what the observation's tokens spell)."""
        if not self._batch.started:
            raise RuntimeError(f"{ENV_ID}: call reset() first")
        return list(self._batch.rendered)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Open ``num_envs`` conversations; a seed makes scenario order and the simulator reproducible.

        ``options={"scenario_index": [...]}`` (one index per sub-env) opens those scenarios instead of the next ones
        drawn, e.g. the same scenario in several sub-envs for group baselines.
        """
        if seed is not None:
            if not isinstance(seed, (int, np.integer)):
                raise ValueError(f"{ENV_ID}: seed must be one int for the whole batch, got {seed!r}")
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
            self._sampler.restart()
            self._setup.user.reset(int(seed))
        every = list(range(self.num_envs))
        index = (options or {}).get("scenario_index")
        if index is None:
            chosen = self._sampler.draw(self.np_random, self.num_envs)
        else:
            chosen = np.asarray(index, dtype=np.int64).reshape(-1)
            if chosen.shape[0] != self.num_envs or (chosen < 0).any() or (chosen >= len(self._setup.scenarios)).any():
                raise ValueError(f"{ENV_ID}: options['scenario_index'] must hold {self.num_envs} indices in "
                                 f"[0, {len(self._setup.scenarios)}), got {index!r}")
        self._batch.start(every, chosen)
        return self._batch.observation(), self._reset_info()

    def _reset_info(self) -> dict[str, Any]:
        return {"messages": self.current_messages(), "scenario_index": self._batch.scenario.copy(),
                "turn": self._batch.turn.copy()}

    def _action_rows(self, actions: Any) -> tuple[np.ndarray, np.ndarray]:
        n, t = self.num_envs, self._setup.max_new_tokens
        if hasattr(actions, "__array__") and not isinstance(actions, (list, tuple, str)):
            array = np.asarray(actions)
            if array.ndim != 2 or array.shape[0] != n or array.shape[1] > t \
                    or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{ENV_ID}: actions must be an integer array of shape ({n}, {t}) (or a list of "
                                 f"{n} strings), got shape {array.shape} dtype {array.dtype}")
            return completion_rows(self._setup, list(array), ENV_ID)  # type: ignore[arg-type]
        if isinstance(actions, str) or not hasattr(actions, "__len__") or len(actions) != n:
            raise ValueError(f"{ENV_ID}: actions must be an integer array of shape ({n}, {t}) or a list of {n} "
                             f"turns (strings or token-id sequences), got {type(actions).__name__}")
        return completion_rows(self._setup, list(actions), ENV_ID)  # type: ignore[arg-type]

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                                          dict[str, Any]]:
        """One assistant turn in every conversation; finished ones are replaced by new ones at once."""
        if not self._batch.started:
            raise RuntimeError(f"{ENV_ID}: call reset() before step()")
        rows, lengths = self._action_rows(actions)
        rewards, terminated, truncated, infos = self._batch.step(rows, lengths)
        done = np.flatnonzero(terminated | truncated).tolist()
        final_obs = np.empty(self.num_envs, dtype=object)
        finished = self._batch.observation()
        for i in done:
            final_obs[i] = {"input_ids": finished["input_ids"][i], "attention_mask": finished["attention_mask"][i]}
        if done:
            self._batch.start(done, self._sampler.draw(self.np_random, len(done)))
        info: dict[str, Any] = {}
        for key in dict.fromkeys(k for row in infos for k in row):
            values = [row.get(key) for row in infos]
            if key in ("score_valid", "final_score_valid"):
                info[key] = np.array(values, dtype=bool)
            elif key in ("turn", "scenario_index", "completion_length", "context_length"):
                info[key] = np.array(values, dtype=np.int64)
            else:
                info[key] = values
        info["final_obs"] = final_obs
        info["_final_obs"] = terminated | truncated
        return self._batch.observation(), rewards, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Close the providers and the user simulator."""
        self._setup.close()


def dialogue_task(description: str | None = None, **defaults: Any) -> Any:
    """A ``Dialogue-v0`` factory with a task's settings fixed, for ``register_environments``.

    ``description`` is the one line ``rlhf-gym plugins`` shows. ``defaults`` are :class:`DialogueEnv` keyword arguments (scenarios, user simulator, rewards, turn limits);
    those given to ``gym.make`` / ``gym.make_vec`` (the tokenizer, at least) are added and win. The factory's
    ``vector_entry_point`` builds the native :class:`DialogueVectorEnv`.

    Example:
        >>> task = dialogue_task(scenarios=["Hi!"], reward=lambda p, c, **kw: [1.0] * len(c), max_turns=2)
        >>> env = task(tokenizer=tokenizer_path)
        >>> env.reset(seed=0)[1]["messages"]
        [{'role': 'user', 'content': 'Hi!'}]
    """
    unknown = sorted(set(defaults) - set(DialogueEnv.__init__.__code__.co_varnames))
    if unknown:
        raise ConfigError(f"dialogue_task got unknown settings {unknown}; see DialogueEnv's arguments")

    def make(**kwargs: Any) -> DialogueEnv:
        return DialogueEnv(**{**defaults, **kwargs})

    def make_vec(num_envs: int = 1, **kwargs: Any) -> DialogueVectorEnv:
        return DialogueVectorEnv(num_envs=num_envs, **{**defaults, **kwargs})

    make.vector_entry_point = make_vec  # type: ignore[attr-defined]
    make.__doc__ = description or "A Dialogue-v0 task."
    return make
