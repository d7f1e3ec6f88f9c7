"""Training on whole conversations: multi-turn episodes collected through ``Dialogue-v0``'s vector env.

An episode is a conversation; each assistant turn in it is one *row* of an :class:`EpisodeRollout` — the context
the policy saw (the env's observation, exactly as it was tokenised) as the prompt and the turn it wrote as the
completion. So the token log-probs of a turn are those of the very tokens sampled from that very context, and user,
system and environment tokens are never scored: they sit in the prompt, which every loss treats as context. The
rows of an episode are tied together by ``episode`` and ``turn``:

- PPO runs GAE over the episode's assistant tokens in order (:func:`episode_gae`): each turn's reward (and the
  −β·KL of every token) at its own tokens, values bootstrapped from one turn into the next;
- REINFORCE, RLOO and GRPO use one return per episode (:meth:`EpisodeRollout.returns`, discounted per turn with
  ``turn_discount``), shared by all of its turns; baselines and groups are taken over episodes;
- the KL to the reference is summed per episode.

A batch is a *wave*: ``num_prompts × group_size`` conversations open together (each group of ``group_size`` from the
same scenario) and are stepped until every one has ended. A conversation that ends early waits in its slot, which
takes empty turns (ignored) until the longest one ends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlhf_gym.errors import ConfigError
from rlhf_gym.rollout import Rollout, check_action_space


@dataclass
class EpisodeRollout(Rollout):
    """A :class:`~rlhf_gym.rollout.Rollout` whose rows are the assistant turns of ``num_episodes`` conversations.

    ``scores``/``score_mask`` are per turn (the env's reward for that turn, and whether any provider scored it);
    ``episode`` and ``turn`` say where each row belongs. Episodes are numbered so that the ``group_size`` episodes
    started from one scenario are consecutive.
    """

    episode: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    turn: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    num_episodes: int = 0
    #: each episode's conversation as it ended (message lists), for logs
    conversations: list[list[dict[str, str]]] = field(default_factory=list)

    def per_episode(self, values: torch.Tensor) -> torch.Tensor:
        """``(num_episodes,)`` sums of per-row ``values``."""
        out = torch.zeros(self.num_episodes, dtype=values.dtype, device=values.device)
        return out.index_add_(0, self.episode.to(values.device), values)

    def to_turns(self, values: torch.Tensor) -> torch.Tensor:
        """Per-episode ``values`` broadcast to the episode's rows."""
        return values[self.episode.to(values.device)]

    @property
    def episode_valid(self) -> torch.Tensor:
        """``(num_episodes,)`` bool: episodes with at least one scored turn (others carry no signal)."""
        return self.per_episode(self.score_mask.float()) > 0

    def returns(self, rewards: torch.Tensor, turn_discount: float = 1.0) -> torch.Tensor:
        """``(num_episodes,)`` returns ``Σ_t γ^t · r_t`` of per-row rewards ``r`` (γ = ``turn_discount``, t = the turn)."""
        weights = torch.pow(torch.tensor(float(turn_discount), device=rewards.device),
                            self.turn.to(rewards.device).to(rewards.dtype))
        return self.per_episode(rewards * weights)

    def samples(self, n: int | None = None) -> list[dict[str, Any]]:
        """The first ``n`` conversations for logs: the last context as the prompt, the last turn as the completion,
        the episode's return as the score."""
        n = self.num_episodes if n is None else min(n, self.num_episodes)
        totals = self.per_episode(self.scores.float())
        valid = self.episode_valid
        out = []
        for e in range(n):
            last = int(torch.nonzero(self.episode == e)[-1])
            out.append({"prompt": self.prompts[last], "completion": self.completions[last],
                        "score": float(totals[e]) if bool(valid[e]) else None,
                        "turns": int((self.episode == e).sum())})
        return out


def make_episode_env(env: Any, num_envs: int) -> Any:
    """The :class:`~rlhf_gym.envs.dialogue.DialogueVectorEnv` a worker steps, sharing ``env``'s loaded setup."""
    from rlhf_gym.envs.dialogue import DialogueVectorEnv

    base = getattr(env, "unwrapped", env)
    if isinstance(base, DialogueVectorEnv) and base.num_envs == num_envs:
        return base
    return DialogueVectorEnv(num_envs=num_envs, setup=base.setup)


def is_episode_env(env: Any) -> bool:
    """Whether ``env`` (single or vector, wrapped or not) is a multi-turn dialogue env."""
    from rlhf_gym.envs.dialogue import DialogueEnv, DialogueVectorEnv

    return isinstance(getattr(env, "unwrapped", env), (DialogueEnv, DialogueVectorEnv))


def _trim_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns that are padding in every row of a left-padded batch."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1] - 1
    return ids[:, start:], mask[:, start:]


def _stack_left(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    width = max(r.shape[0] for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (width - r.shape[0], 0), value=pad) for r in rows])


def _stack_right(rows: list[torch.Tensor], pad: float) -> torch.Tensor:
    width = max(r.shape[0] for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0]), value=pad) for r in rows])


def _position_limit(policy: Any) -> int | None:
    config = getattr(getattr(policy, "model", None), "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def _check_context(width: int, max_new_tokens: int, limit: int | None, max_context_tokens: int) -> None:
    """A conversation so far plus a turn must fit in the model's positions."""
    if limit is not None and width + max_new_tokens > limit:
        raise ConfigError(
            f"a conversation reached {width} tokens; with a turn of up to {max_new_tokens} tokens that is more than "
            f"the {limit} positions the policy's model handles. Make the env with max_context_tokens="
            f"{max(limit - max_new_tokens, 1)} or fewer (now {max_context_tokens}): longer conversations are then "
            f"truncated by the env")


class EpisodeWorker:
    """Collects whole conversations from a policy through a ``Dialogue-v0`` vector env (see module docstring).

    Args, as :class:`~rlhf_gym.rollout.RolloutWorker`: ``num_prompts`` scenarios per batch, ``group_size``
    conversations from each, ``seed`` for the scenario order, the user simulator and sampling.
    """

    def __init__(self, env: Any, policy: Any, *, num_prompts: int, group_size: int = 1, seed: int = 0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
        from rlhf_gym.envs.common import PromptSampler

        if num_prompts < 1 or group_size < 1:
            raise ConfigError(f"num_prompts and group_size must be ≥ 1 (got {num_prompts}, {group_size})")
        self.env = make_episode_env(env, num_prompts * group_size)
        self.policy = policy
        self.num_prompts, self.group_size, self.seed = num_prompts, group_size, seed
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        check_action_space(self.env, policy)
        setup = self.env.setup
        self.position_limit = _position_limit(policy)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.scenario_rng = np.random.default_rng(seed)
        self.sampler = PromptSampler(len(setup.scenarios), setup.shuffle)
        self.waves = 0

    @property
    def provider(self) -> Any:
        setup = self.env.setup
        return setup.final_provider if setup.provider is None else setup.provider

    @property
    def max_new_tokens(self) -> int:
        return int(self.env.setup.max_new_tokens)

    @torch.no_grad()
    def collect(self, return_logprobs: bool = False, score: bool = True) -> EpisodeRollout:
        """Run ``num_prompts × group_size`` conversations to their end; one row per assistant turn."""
        if not score:
            raise ConfigError("multi-turn episodes are always scored by the environment; algorithms that ask the "
                              "provider for comparisons instead (online DPO) train on single-turn envs")
        env, policy, k = self.env, self.policy, self.group_size
        n = env.num_envs
        device = next(policy.parameters()).device
        pad, eos = policy.pad_token_id, policy.eos_token_id
        scenarios = np.repeat(self.sampler.draw(self.scenario_rng, self.num_prompts), k)
        obs, _ = env.reset(seed=self.seed if self.waves == 0 else None, options={"scenario_index": scenarios})
        self.waves += 1
        active = np.ones(n, dtype=bool)
        turn = np.zeros(n, dtype=np.int64)
        rows: dict[str, list[Any]] = {key: [] for key in (
            "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs", "score", "valid",
            "prompt", "completion", "episode", "turn", "true_score", "ended_with_eos")}
        conversations: list[list[dict[str, str]]] = [[] for _ in range(n)]
        timing = {"generation": 0.0, "scoring": 0.0}
        while active.any():
            live = np.flatnonzero(active)
            ids, mask = _trim_left(torch.as_tensor(obs["input_ids"][live], device=device),
                                   torch.as_tensor(obs["attention_mask"][live], device=device))
            _check_context(ids.shape[1], self.max_new_tokens, self.position_limit, env.setup.max_context_tokens)
            prompts = env.current_prompts()
            t0 = time.perf_counter()
            gen = policy.generate(ids, mask, self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                                  top_p=self.top_p, generator=self.generator, return_logprobs=return_logprobs)
            t1 = time.perf_counter()
            actions = np.full((n, self.max_new_tokens), pad, dtype=np.int64)
            actions[~active, 0] = eos if eos is not None else pad  # finished conversations wait with empty turns
            actions[live] = gen.pad_to(self.max_new_tokens, pad).completion_ids.cpu().numpy()
            obs, rewards, terminated, truncated, info = env.step(actions)
            timing["generation"] += t1 - t0
            timing["scoring"] += time.perf_counter() - t1
            valid = np.asarray(info["score_valid"], dtype=bool) | np.asarray(info["final_score_valid"], dtype=bool)
            ended = np.asarray(terminated) | np.asarray(truncated)
            eos_ids = torch.tensor(policy.eos_token_ids or (-1,), device=device)
            has_eos = (torch.isin(gen.completion_ids, eos_ids) & gen.completion_mask.bool()).any(dim=1).tolist()
            true = info.get("true_score", [None] * n)
            for j, i in enumerate(live.tolist()):
                rows["prompt_ids"].append(ids[j])
                rows["prompt_mask"].append(mask[j])
                rows["completion_ids"].append(gen.completion_ids[j])
                rows["completion_mask"].append(gen.completion_mask[j])
                if return_logprobs:
                    rows["logprobs"].append(gen.logprobs[j])
                rows["score"].append(float(rewards[i]) if valid[i] else 0.0)
                rows["valid"].append(bool(valid[i]))
                rows["prompt"].append(prompts[i])
                rows["completion"].append(info["completion"][i])
                rows["episode"].append(i)
                rows["turn"].append(int(turn[i]))
                rows["true_score"].append(true[i])
                rows["ended_with_eos"].append(has_eos[j])
                if ended[i]:
                    conversations[i] = info["messages"][i]
            turn[live] += 1
            active &= ~ended
        return self._assemble(rows, conversations, timing, return_logprobs, device)

    def _assemble(self, rows: Mapping[str, list[Any]], conversations: list[list[dict[str, str]]],
                  timing: dict[str, float], with_logprobs: bool, device: torch.device) -> EpisodeRollout:
        """Stack the rows, ordered by episode then turn."""
        order = sorted(range(len(rows["episode"])), key=lambda r: (rows["episode"][r], rows["turn"][r]))

        def pick(key: str) -> list[Any]:
            return [rows[key][r] for r in order]

        pad = self.policy.pad_token_id
        extras: dict[str, list[Any]] = {"ended_with_eos": pick("ended_with_eos"), "turn": pick("turn"),
                                        "episode": pick("episode")}
        if any(v is not None for v in rows["true_score"]):
            extras["true_score"] = pick("true_score")
        return EpisodeRollout(
            prompt_ids=_stack_left(pick("prompt_ids"), pad), prompt_mask=_stack_left(pick("prompt_mask"), 0),
            completion_ids=_stack_right(pick("completion_ids"), pad),
            completion_mask=_stack_right(pick("completion_mask"), 0),
            scores=torch.tensor(pick("score"), dtype=torch.float32, device=device),
            score_mask=torch.tensor(pick("valid"), dtype=torch.bool, device=device),
            prompts=pick("prompt"), completions=pick("completion"), group_size=self.group_size, extras=extras,
            logprobs=_stack_right(pick("logprobs"), 0.0) if with_logprobs else None, timing=timing,
            episode=torch.tensor(pick("episode"), dtype=torch.long, device=device),
            turn=torch.tensor(pick("turn"), dtype=torch.long, device=device),
            num_episodes=self.env.num_envs, conversations=conversations,
        )

    # -- exact resume ------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """RNG states of sampling, scenario order and the user simulator's stream position, for checkpoints."""
        values = {"scenario_rng": self.scenario_rng.bit_generator.state, "sampler": self.sampler.state_dict(),
                  "waves": self.waves}
        return {"sampler_rng": self.generator.get_state()}, values

    def load_state(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        self.generator.set_state(tensors["sampler_rng"])
        self.scenario_rng.bit_generator.state = values["scenario_rng"]
        self.sampler.load_state_dict(values["sampler"])
        self.waves = int(values["waves"])


def make_worker(env: Any, policy: Any, **kwargs: Any) -> Any:
    """An :class:`EpisodeWorker` for dialogue envs, else a :class:`~rlhf_gym.rollout.RolloutWorker`."""
    from rlhf_gym.rollout import RolloutWorker

    return (EpisodeWorker if is_episode_env(env) else RolloutWorker)(env, policy, **kwargs)


def episode_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, rollout: EpisodeRollout,
                gamma: float = 1.0, lam: float = 0.95, turn_discount: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over each episode's assistant tokens in order, across its turns; ``(advantages, returns)`` per row.

    Within a turn tokens follow each other with discount ``gamma``; from a turn's last token to the next turn's
    first the discount is ``gamma × turn_discount``, and the value of the next turn's first token is bootstrapped
    there (the user's reply in between is the environment's move). The episode's last token is terminal.

    Args:
        rewards, values, mask: ``(R, T)`` per-token rewards (−β·KL, plus each turn's score at its last token),
            values and completion masks of the rollout's rows.
        rollout: the rows' episode layout.
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0 and 0.0 <= turn_discount <= 1.0):
        raise ConfigError(f"gamma, lam and turn_discount must lie in [0, 1], got {gamma}, {lam}, {turn_discount}")
    rewards, values = rewards.detach(), values.detach()
    lengths = mask.sum(-1).tolist()
    episode, turn = rollout.episode.tolist(), rollout.turn.tolist()
    flat_r, flat_v, flat_g, where = [], [], [], []
    for e in range(rollout.num_episodes):
        rows = sorted((r for r in range(len(episode)) if episode[r] == e), key=lambda r: turn[r])
        r_parts, v_parts, g_parts, places = [], [], [], []
        for j, r in enumerate(rows):
            n = int(lengths[r])
            positions = mask[r].nonzero().squeeze(-1)[:n]
            r_parts.append(rewards[r, positions])
            v_parts.append(values[r, positions])
            g = torch.full((n,), gamma, dtype=rewards.dtype, device=rewards.device)
            if n:
                g[-1] = gamma * turn_discount if j < len(rows) - 1 else 0.0
            g_parts.append(g)
            places += [(r, int(p)) for p in positions]
        if places:
            flat_r.append(torch.cat(r_parts))
            flat_v.append(torch.cat(v_parts))
            flat_g.append(torch.cat(g_parts))
            where.append(places)
    advantages, returns = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for r_e, v_e, g_e, places in zip(flat_r, flat_v, flat_g, where):
        adv = torch.zeros_like(r_e)
        running = torch.zeros((), dtype=r_e.dtype, device=r_e.device)
        for t in range(r_e.shape[0] - 1, -1, -1):
            next_value = v_e[t + 1] if t + 1 < r_e.shape[0] else torch.zeros_like(running)
            delta = r_e[t] + g_e[t] * next_value - v_e[t]
            running = delta + g_e[t] * lam * running
            adv[t] = running
        rows_idx = torch.tensor([p[0] for p in places], device=rewards.device)
        cols_idx = torch.tensor([p[1] for p in places], device=rewards.device)
        advantages[rows_idx, cols_idx] = adv
        returns[rows_idx, cols_idx] = adv + v_e
    return advantages, returns


@torch.no_grad()
def evaluate_episodes(policy: Any, env: Any, *, num_episodes: int = 128, batch_size: int = 64, seed: int = 12345,
                      temperature: float = 1.0, reference: Any = None, reward: Any = None) -> dict[str, Any]:
    """Mean return of ``num_episodes`` fresh conversations of ``policy`` on a dialogue ``env``.

    Args:
        reference: a :class:`~rlhf_gym.Policy` or reference model: also the mean per-episode KL
            ``Σ_turns Σ_t log π(y_t) − log π_ref(y_t)`` of the sampled turns (``"kl"``), e.g. to the SFT policy.
        reward: judge each finished conversation with this provider (name/object/callable) instead of the env's
            rewards: its score of the last assistant turn (with the whole conversation as ``messages``).

    Returns:
        ``{"mean", "std", "scores", "samples", "mean_turns", "mean_length"}`` and ``"kl"`` with a reference; an
        episode's score is the sum of its turns' rewards (episodes no provider scored are left out). Each sample
        holds the conversation (``messages``), its last context and turn (``prompt``, ``completion``) and ``score``.
    """
    from rlhf_gym.providers import as_provider, checked_scores
    from rlhf_gym.rollout import reference_logprobs

    judge = as_provider(reward) if reward is not None else None
    batch_size = min(batch_size, num_episodes)
    worker = EpisodeWorker(env, policy, num_prompts=batch_size, seed=seed, temperature=temperature)
    ref_logprobs = reference_logprobs(reference)
    scores: list[float] = []
    samples: list[dict[str, Any]] = []
    turns: list[int] = []
    lengths: list[float] = []
    kls: list[float] = []
    was_training = policy.training
    policy.eval()
    try:
        while len(scores) < num_episodes:
            batch = worker.collect(return_logprobs=True)
            totals, valid = batch.per_episode(batch.scores), batch.episode_valid
            if ref_logprobs is not None:
                args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
                token_kl = (batch.logprobs - ref_logprobs(*args, temperature=temperature)) * batch.completion_mask
                kls.extend(batch.per_episode(token_kl.sum(-1)).tolist())
            turns.extend(batch.per_episode(torch.ones_like(batch.scores)).long().tolist())
            lengths.extend(batch.completion_mask.sum(-1).tolist())
            last = [int(torch.nonzero(batch.episode == e)[-1]) for e in range(batch.num_episodes)]
            if judge is not None:
                judged = checked_scores(judge, judge.score(
                    [batch.prompts[r] for r in last], [batch.completions[r] for r in last],
                    messages=batch.conversations), batch.num_episodes)
                valid = torch.tensor([j is not None for j in judged])
                totals = torch.tensor([0.0 if j is None else float(j) for j in judged])
            for e in range(batch.num_episodes):
                if bool(valid[e]) and len(scores) < num_episodes:
                    scores.append(float(totals[e]))
                    samples.append({"messages": batch.conversations[e], "prompt": batch.prompts[last[e]],
                                    "completion": batch.completions[last[e]], "score": float(totals[e])})
    finally:
        policy.train(was_training)
    arr = np.asarray(scores, dtype=np.float64)
    out = {"mean": float(arr.mean()), "std": float(arr.std()), "scores": scores, "samples": samples,
           "mean_turns": float(np.mean(turns)), "mean_length": float(np.mean(lengths))}
    if kls:
        out["kl"] = float(np.mean(kls))
    return out
