"""Rollouts: a batch of prompts → sampled completions → one batched provider call, through Completion-v0's
vector env.

Algorithms reach generation and reward providers only through this module: the policy samples token ids for the
left-padded prompt ids the env observes (nothing is re-tokenised), the env decodes them once and makes one provider
call for the whole batch. Nothing replays a sequence token by token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from rlhf_gym.errors import ConfigError


@dataclass
class Rollout:
    """One batch of sampled completions and their scores (B = number of samples).

    ``prompt_ids``/``prompt_mask`` are left-padded ``(B, P)``; ``completion_ids``/``completion_mask`` right-padded
    ``(B, T)``. ``scores`` is 0 where ``score_mask`` is False (the provider gave ``None``).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    scores: torch.Tensor
    score_mask: torch.Tensor
    prompts: list[str]
    completions: list[str]
    group_size: int = 1
    extras: dict[str, list[Any]] = field(default_factory=dict)
    logprobs: torch.Tensor | None = None
    timing: dict[str, float] = field(default_factory=dict)
    #: batch-level figures the source of the batch reports (e.g. ``perf/policy_lag`` of Ray rollouts), logged as is
    metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def has_eos(self) -> torch.Tensor:
        """(B,) bool: whether each completion ended with EOS (rather than hitting max_new_tokens)."""
        return self.extras_tensor("ended_with_eos", dtype=torch.bool)

    def extras_tensor(self, key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.extras[key]), dtype=dtype)

    def select(self, index: torch.Tensor | np.ndarray | list[int]) -> Rollout:
        """The samples at ``index`` (tensors indexed, lists picked), e.g. for minibatches."""
        idx = torch.as_tensor(index, dtype=torch.long)
        picked = idx.tolist()
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = value[idx]
            elif isinstance(value, list):
                changes[f.name] = [value[i] for i in picked]
        changes["extras"] = {k: [v[i] for i in picked] for k, v in self.extras.items()}
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Rollout:
        """The same batch with its tensors on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    @classmethod
    def concat(cls, parts: list[Rollout]) -> Rollout:
        """The batches in ``parts`` one after the other (completions right-padded to the longest; masks 0 there).

        Timings are the slowest part's (the parts ran side by side); ``metrics`` is the first part's.
        """
        if not parts:
            raise ValueError("Rollout.concat needs at least one batch")
        if len(parts) == 1:
            return parts[0]
        width = max(p.completion_ids.shape[1] for p in parts)

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1])) if t.shape[1] < width else t

        first = parts[0]
        return cls(
            prompt_ids=torch.cat([p.prompt_ids for p in parts]), prompt_mask=torch.cat([p.prompt_mask for p in parts]),
            completion_ids=torch.cat([padded(p.completion_ids) for p in parts]),
            completion_mask=torch.cat([padded(p.completion_mask) for p in parts]),
            scores=torch.cat([p.scores for p in parts]), score_mask=torch.cat([p.score_mask for p in parts]),
            prompts=[x for p in parts for x in p.prompts], completions=[x for p in parts for x in p.completions],
            group_size=first.group_size,
            extras={k: [x for p in parts for x in p.extras[k]] for k in first.extras if all(k in p.extras for p in parts)},
            logprobs=None if first.logprobs is None else torch.cat([padded(p.logprobs) for p in parts]),
            timing={k: max(p.timing.get(k, 0.0) for p in parts) for k in first.timing},
            metrics=dict(first.metrics),
        )

    def samples(self, n: int | None = None) -> list[dict[str, Any]]:
        """The first ``n`` samples as dicts (prompt, completion, score, extras) for logs."""
        n = len(self) if n is None else min(n, len(self))
        out = []
        for i in range(n):
            row = {"prompt": self.prompts[i], "completion": self.completions[i],
                   "score": float(self.scores[i]) if bool(self.score_mask[i]) else None}
            for key, values in self.extras.items():
                if key in ("true_score",):
                    row[key] = values[i]
            out.append(row)
        return out


def make_rollout_env(env: Any, num_envs: int, group_size: int = 1):
    """The batched Completion-v0 vector env an algorithm samples through, built from ``env``'s settings.

    A :class:`~rlhf_gym.envs.completion.CompletionVectorEnv` with the right batch shape is used as it is; any other
    rlhf_gym env (Completion-v0 or TextGen-v0, single or vector, wrapped or not) shares its loaded setup — the
    tokenised prompts, tokenizer and reward provider object — with a new vector env: nothing is copied or re-tokenised.
    """
    from rlhf_gym.envs.completion import CompletionVectorEnv

    base = getattr(env, "unwrapped", env)
    if isinstance(base, CompletionVectorEnv) and base.num_envs == num_envs and base.group_size == group_size:
        return base
    setup = getattr(base, "setup", None)
    if setup is None:
        raise ConfigError(
            f"algorithms train on rlhf_gym environments; got {type(base).__name__}. Make one with "
            f"gym.make('rlhf_gym/Completion-v0', tokenizer=..., prompts=..., reward=...)"
        )
    return CompletionVectorEnv(num_envs=num_envs, group_size=group_size, setup=setup)


class RolloutWorker:
    """Samples completions from a policy through a Completion-v0 vector env.

    Args:
        env: any rlhf_gym env; see :func:`make_rollout_env`.
        policy: the :class:`~rlhf_gym.Policy` to sample from.
        num_prompts: distinct prompts per batch.
        group_size: completions per prompt (k for RLOO/GRPO-style baselines); batch = num_prompts × group_size.
        seed: seeds prompt order (env) and sampling (a torch.Generator).
        temperature, top_k, top_p: sampling settings.
    """

    def __init__(self, env: Any, policy: Any, *, num_prompts: int, group_size: int = 1, seed: int = 0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
        if num_prompts < 1 or group_size < 1:
            raise ConfigError(f"num_prompts and group_size must be ≥ 1 (got {num_prompts}, {group_size})")
        self.env = make_rollout_env(env, num_prompts * group_size, group_size)
        self.policy = policy
        self.group_size = group_size
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        check_action_space(self.env, policy)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._obs, _ = self.env.reset(seed=seed)

    @property
    def provider(self):
        return self.env.provider

    @property
    def max_new_tokens(self) -> int:
        return int(self.env.max_new_tokens)

    def collect(self, return_logprobs: bool = False, score: bool = True) -> Rollout:
        """Sample one completion per env slot, score them all with one provider call, return the batch.

        With ``score=False`` the provider is not asked (every ``score_mask`` entry is False): for algorithms that
        ask it something else, such as pairwise comparisons.
        """
        device = next(self.policy.parameters()).device
        prompt_ids = torch.as_tensor(self._obs["input_ids"], device=device)
        prompt_mask = torch.as_tensor(self._obs["attention_mask"], device=device)
        t0 = time.perf_counter()
        gen = self.policy.generate(
            prompt_ids, prompt_mask, self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, generator=self.generator, return_logprobs=return_logprobs,
        )
        t1 = time.perf_counter()
        actions = gen.pad_to(self.max_new_tokens, self.policy.pad_token_id).completion_ids.cpu().numpy()
        if score:
            obs, rewards, _, _, info = self.env.step(actions)
            valid = np.asarray(info["score_valid"], dtype=bool)
        else:
            obs, info = self.env.step_unscored(actions)
            rewards, valid = np.zeros(len(actions), dtype=np.float32), np.zeros(len(actions), dtype=bool)
        t2 = time.perf_counter()
        self._obs = obs
        extras = {k: list(v) for k, v in info.items()
                  if k not in ("prompt", "completion", "score", "score_valid", "final_obs") and not k.startswith("_")}
        completion_mask = gen.completion_mask
        eos_ids = torch.tensor(self.policy.eos_token_ids or (-1,), device=device)
        extras["ended_with_eos"] = (
            (torch.isin(gen.completion_ids, eos_ids) & completion_mask.bool()).any(dim=1).cpu().tolist()
        )
        return Rollout(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask,
            completion_ids=gen.completion_ids, completion_mask=completion_mask,
            scores=torch.as_tensor(np.asarray(rewards, dtype=np.float32), device=device),
            score_mask=torch.as_tensor(valid, device=device),
            prompts=list(info["prompt"]), completions=list(info["completion"]),
            group_size=self.group_size, extras=extras,
            logprobs=gen.logprobs if return_logprobs else None,
            timing={"generation": t1 - t0, "scoring": t2 - t1},
        )

    # -- a driver's prompt stream (Ray rollouts): one process draws the prompts, workers sample them --------------
    def next_prompts(self) -> np.ndarray:
        """The prompt indices :meth:`collect` would sample next, moving the prompt stream on past them (the same
        order ``collect`` walks)."""
        index = self.env.current_prompt_indices()
        self._obs, _ = self.env.reset()  # no seed: the next batch of the same stream
        return index

    def point_at(self, prompt_index: np.ndarray | list[int]) -> None:
        """Make the next :meth:`collect` sample the prompts at ``prompt_index`` (one per env slot)."""
        index = np.asarray(prompt_index, dtype=np.int64)
        if index.shape != (self.env.num_envs,):
            raise ValueError(f"point_at needs {self.env.num_envs} prompt indices, got shape {index.shape}")
        state = self.env.get_state()
        self.env.set_state({**state, "prompt_index": index.tolist()})
        prompts = self.env.setup.prompts
        self._obs = {"input_ids": prompts.input_ids[index], "attention_mask": prompts.attention_mask[index]}

    # -- exact resume ------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """RNG states of sampling, prompt order and the provider, for checkpoints."""
        values: dict[str, Any] = {"env": self.env.get_state(),
                                  "obs": {k: np.asarray(v).tolist() for k, v in self._obs.items()}}
        provider_state = getattr(self.provider, "state_dict", None)
        if callable(provider_state):
            values["provider"] = provider_state()
        return {"sampler_rng": self.generator.get_state()}, values

    def load_state(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> None:
        self.generator.set_state(tensors["sampler_rng"])
        self.env.set_state(values["env"])
        self._obs = {k: np.asarray(v, dtype=np.int64) for k, v in values["obs"].items()}
        if "provider" in values and callable(getattr(self.provider, "load_state_dict", None)):
            self.provider.load_state_dict(values["provider"])


def make_rollout_source(env: Any, policy: Any, config: Any, version: Any = None, *, num_prompts: int | None = None,
                        seed: int | None = None) -> Any:
    """Where an online algorithm's batches come from: a :class:`RolloutWorker` in this process, or (with
    ``config.rollout_workers > 0``) a group of Ray actors that sample through the same worker code.

    Args:
        config: the algorithm's config (``num_prompts``, ``group_size``, ``seed``, sampling settings and the Ray
            fields ``rollout_workers``, ``ray_address``, ``async_rollouts``, ``max_policy_lag``).
        version: a callable giving the learner's weight version (its update count); Ray mode tags batches with it.
        num_prompts, seed: this learner's share of the prompts and its seed (default: the config's), for
            data-parallel learners that each sample a shard.
    """
    from rlhf_gym.episodes import is_episode_env, make_worker

    if getattr(config, "rollout_workers", 0) and is_episode_env(env):
        raise ConfigError("Ray rollout workers sample single-turn envs; train on a multi-turn dialogue env in this "
                          "process (rollout_workers=0), or with several learners (--learners N)")
    worker = make_worker(
        env, policy, num_prompts=config.num_prompts if num_prompts is None else num_prompts,
        group_size=config.group_size, seed=config.seed if seed is None else seed,
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
    )
    if not getattr(config, "rollout_workers", 0):
        return worker
    from rlhf_gym.distributed.ray_rollout import RayRolloutGroup

    return RayRolloutGroup(worker, config, version=version)


def check_action_space(env: Any, policy: Any) -> None:
    """The policy's head must produce exactly the env's action vocabulary."""
    env_vocab = int(getattr(getattr(env, "unwrapped", env), "vocab_size", 0) or 0)
    if env_vocab and env_vocab != policy.vocab_size:
        raise ConfigError(
            f"the policy's output head has {policy.vocab_size} tokens but the environment's action space has "
            f"{env_vocab}; make the env with model=<the policy's path> or vocab_size={policy.vocab_size}"
        )


def reference_logprobs(reference: Any) -> Any:
    """``f(prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature)`` giving token log-probs under
    ``reference`` (a frozen reference's own ``logprobs``, or a Policy's forward); None without a reference."""
    if reference is None:
        return None
    own = getattr(reference, "logprobs", None)
    if own is not None:
        return own

    def forward(*args: Any, temperature: float) -> torch.Tensor:  # a Policy: score with its own forward
        return reference(*args, temperature=temperature).logprobs

    return forward


@torch.no_grad()
def evaluate(policy: Any, env: Any, *, num_samples: int = 128, batch_size: int = 64, seed: int = 12345,
             reward: Any = None, temperature: float = 1.0, reference: Any = None) -> dict[str, Any]:
    """Mean score of ``num_samples`` fresh samples from ``policy`` on ``env``'s prompts.

    Args:
        reward: score with this provider (name/object/callable) instead of the env's, e.g. the ground truth
            behind a learned reward model. With a reward given, the env's provider is not asked at all.
        reference: a :class:`~rlhf_gym.Policy` or reference model: also measure the per-sequence KL
            ``Σ_t log π(y_t) − log π_ref(y_t)`` of the samples (``"kl"``), e.g. to the SFT policy.

    Returns:
        ``{"mean", "std", "scores", "samples", "mean_length"}`` and ``"kl"`` with a reference. Unscored samples
        are replaced by fresh ones for up to four times the batches ``num_samples`` needs; after that ``scores``
        holds what was scored (fewer than ``num_samples``), or a RewardError says nothing was.
        On a multi-turn dialogue env a sample is a whole conversation (see
        :func:`rlhf_gym.episodes.evaluate_episodes`).
    """
    from rlhf_gym.episodes import evaluate_episodes, is_episode_env
    from rlhf_gym.providers import as_provider, checked_scores

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a whole number ≥ 1 of samples to score, got {num_samples!r}")
    if is_episode_env(env):
        return evaluate_episodes(policy, env, num_episodes=num_samples, batch_size=batch_size, seed=seed,
                                 temperature=temperature, reference=reference, reward=reward)

    batch_size = min(batch_size, num_samples)
    worker = RolloutWorker(env, policy, num_prompts=batch_size, seed=seed, temperature=temperature)
    judge = as_provider(reward) if reward is not None else None
    ref_logprobs = reference_logprobs(reference)
    scores: list[float] = []
    samples: list[dict[str, Any]] = []
    lengths: list[float] = []
    kls: list[float] = []
    was_training = policy.training
    policy.eval()
    # Unscored samples are drawn again, but not forever: a provider that scores nothing (a live human away, a
    # provider timing out) ends the evaluation instead of looping.
    max_batches = 4 * -(-num_samples // batch_size)
    drawn = 0
    try:
        while len(scores) < num_samples:
            if drawn == max_batches:
                if not scores:
                    from rlhf_gym.errors import RewardError

                    name = getattr(judge or worker.provider, "name", None) or "the reward provider"
                    raise RewardError(f"{name!r} scored none of the {drawn * batch_size} samples drawn for the "
                                      f"evaluation (every score was None); check the provider or its timeout")
                break  # report the scored ones; len(out["scores"]) says how many
            drawn += 1
            batch = worker.collect(return_logprobs=True, score=judge is None)
            if judge is not None:
                values = checked_scores(judge, judge.score(batch.prompts, batch.completions), len(batch))
            else:
                values = [float(s) if bool(m) else None for s, m in zip(batch.scores, batch.score_mask)]
            if ref_logprobs is not None:
                args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
                seq_kl = (batch.logprobs - ref_logprobs(*args, temperature=temperature)) * batch.completion_mask
                kls.extend(seq_kl.sum(-1).tolist())
            for i, v in enumerate(values):
                if v is not None and len(scores) < num_samples:
                    scores.append(v)
                    samples.append({"prompt": batch.prompts[i], "completion": batch.completions[i], "score": v})
            lengths.extend(batch.completion_mask.sum(dim=1).tolist())
    finally:
        policy.train(was_training)
    arr = np.asarray(scores, dtype=np.float64)
    out = {"mean": float(arr.mean()), "std": float(arr.std()), "scores": scores, "samples": samples,
           "mean_length": float(np.mean(lengths))}
    if kls:
        out["kl"] = float(np.mean(kls))
    return out
