"""What the online RL algorithms (PPO, REINFORCE, RLOO, online DPO, third-party ones) share: sampling a batch
through the rollout worker, scoring it, the frozen reference and the KL controller, reward shaping, and the
metrics every run logs.

An algorithm derived from :class:`OnlineAlgorithm` writes only its update: ``train_step`` calls
:meth:`OnlineAlgorithm.collect` for a scored batch with old and reference log-probs, computes its loss with
:mod:`rlhf_gym.losses`, and returns ``self.batch_metrics(batch) | its own``.

A batch in which no sample was scored (a live human who did not answer in time, a provider that timed out or
skipped everything) is normal: ``train_step`` returns :meth:`OnlineAlgorithm.skip_update`'s metrics instead of
updating. No optimizer step is taken (Adam's momentum would otherwise still move the weights), the KL controller
and reward statistics are left alone, and ``batch/skipped`` is 1. The skipped batch still counts as one update
(``num_updates`` advances): an update is one collected batch, so update ``n`` always draws the same prompts and
samples, a run that stops on an update count stops at the same point with or without answers, and a checkpoint at
update ``n`` resumes the same sequence.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_gym.advantages import (
    RunningMoments,
    apply_missing_eos_penalty,
    clip_rewards,
    masked_mean,
    normalise_rewards,
)
from rlhf_gym.algorithm import Algorithm, AlgorithmConfig
from rlhf_gym.config import hp
from rlhf_gym.distributed import data_parallel as dp
from rlhf_gym.episodes import EpisodeRollout
from rlhf_gym.errors import ConfigError
from rlhf_gym.kl import KLController, kl_estimate, make_kl_controller
from rlhf_gym.rollout import Rollout, make_rollout_source

#: default KL budget of every online algorithm, in nats per sample (sequence, or conversation on multi-turn envs)
KL_BUDGET = 2.0
#: default horizon of the adaptive KL controller, in samples
KL_HORIZON = 256
#: default ratio of the controller's fastest fall of β to its fastest rise
KL_RELAX = 0.25


@dataclass
class KLBudgetConfig(AlgorithmConfig):
    """The KL penalty and the budget that steers it: the fields every online algorithm shares with the SB3 adapters.

    A sample is a completion (a conversation on multi-turn envs, an episode for SB3)."""

    beta: float = hp(0.05, "initial KL coefficient β against the frozen reference; the controller then holds the KL "
                           "near kl_target (0: no penalty and no budget)")
    kl_target: float | None = hp(KL_BUDGET, "KL budget: the KL to the reference per sample (nats, summed over its "
                                            "tokens) the adaptive controller steers β towards (None: β stays fixed)")
    kl_horizon: int = hp(KL_HORIZON, "adaptive KL control horizon, in samples: the smaller, the faster β moves "
                                     "(up by at most 20% × batch/horizon per update)")
    kl_relax: float = hp(KL_RELAX, "adaptive KL control: how fast β may fall while the KL is under the budget, as a "
                                   "fraction of how fast it may rise above it (1: Ziegler's symmetric rule)")

    def kl_controller(self, beta: float | None = None) -> KLController:
        """The controller these fields describe, starting from ``beta`` (default: the configured β)."""
        return make_kl_controller(self.beta if beta is None else beta, self.kl_target, self.kl_horizon, self.kl_relax)


@dataclass
class OnlineConfig(KLBudgetConfig):
    """Hyper-parameters of algorithms that sample from the policy while training."""

    num_prompts: int = hp(16, "distinct prompts sampled per update")
    group_size: int = hp(1, "completions sampled per prompt")
    kl_estimator: str = hp("k1", "per-token KL estimator in the penalty and in objective/kl: k1, k2 or k3")
    kl_monitor: str = hp(
        "reference", "with beta=0, how objective/kl is still measured against the starting policy: 'reference' "
        "(a frozen copy, every update), 'every:N' (the same copy, every N updates) or 'off' (not logged)"
    )
    missing_eos_penalty: float | None = hp(None, "subtract this from the score of completions that never end")
    normalize_rewards: bool = hp(False, "standardise scores with running mean/std before use")
    reward_clip: float | None = hp(None, "clip (normalised) scores to ±this")
    reference_device: str | None = hp(None, "device of the frozen reference model (None: the policy's)")
    reference_dtype: str | None = hp(None, "precision of the frozen reference: float32, bfloat16, float16 "
                                           "(None: the policy's dtype)")
    rollout_workers: int = hp(0, "Ray actors that sample the batches (0: sample in this process)")
    ray_address: str | None = hp(None, "Ray cluster to join with rollout_workers > 0 ('auto', 'host:6379'; None: "
                                       "start one on this machine)")
    async_rollouts: bool = hp(False, "Ray mode: sample the next batch while this one trains (needs max_policy_lag ≥ 1)")
    max_policy_lag: int = hp(0, "Ray mode: updates a batch's weights may lag the learner's (0: always on-policy)")
    rollout_num_cpus: float = hp(1.0, "Ray mode: CPUs reserved per rollout actor")
    rollout_num_gpus: float = hp(0.0, "Ray mode: GPUs per rollout actor (> 0: it samples on its GPU)")
    turn_discount: float = hp(1.0, "multi-turn episodes: discount per assistant turn, in returns and across turns "
                                   "in GAE")


@dataclass
class Batch:
    """A scored rollout plus what the update needs, computed once per batch."""

    rollout: Rollout
    #: scores after EOS penalty / normalisation / clipping, (B,)
    scores: torch.Tensor
    #: raw provider scores (B,) and which were given
    raw_scores: torch.Tensor
    valid: torch.Tensor
    #: old log-probs of the sampled tokens (B, T), detached
    logprobs: torch.Tensor
    #: reference log-probs (B, T) or None when β = 0
    ref_logprobs: torch.Tensor | None
    #: per-token KL estimate (B, T) (zeros when β = 0)
    kl: torch.Tensor
    #: old values (B, T) when asked for
    values: torch.Tensor | None = None
    #: whether ``kl`` was measured this batch (False: no reference to measure against; ``kl`` is then zeros)
    kl_measured: bool = True

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.completion_mask

    @property
    def sequence_kl(self) -> torch.Tensor:
        return self.kl.sum(-1)

    @property
    def episodes(self) -> EpisodeRollout | None:
        """The episode layout when the rows are the turns of multi-turn conversations, else None."""
        return self.rollout if isinstance(self.rollout, EpisodeRollout) else None

    @property
    def sample_kl(self) -> torch.Tensor:
        """KL to the reference per sample: per sequence, or summed over each episode's turns."""
        episodes = self.episodes
        return self.sequence_kl if episodes is None else episodes.per_episode(self.sequence_kl)


class OnlineAlgorithm(Algorithm):
    """Base of algorithms that learn from fresh samples of the policy (see module docstring)."""

    Config = OnlineConfig
    config: OnlineConfig

    def setup(self) -> None:
        cfg = self.config
        self.rollouts = self._rollout_worker(cfg.seed)
        self.kl_ctl = cfg.kl_controller()
        # The reference is a frozen copy of the policy as it is now. With β = 0 no penalty needs it, but the KL to
        # the starting policy is still measured (kl_monitor) against the same copy, never reported as a fake 0.
        self.kl_monitor_every = parse_kl_monitor(cfg.kl_monitor)
        self.reference = self.build_reference() if cfg.beta > 0 else None
        self.monitor_reference = (self.build_reference() if self.reference is None and self.kl_monitor_every
                                  else None)
        self.reward_moments = RunningMoments()

    def _rollout_worker(self, seed: int) -> Any:
        # With several learners each samples its shard of the prompts, from its own seeded streams.
        cfg = self.config
        # In this process, or Ray actors running the same worker code (rollout_workers > 0).
        return make_rollout_source(self.env, self.policy, cfg, version=lambda: self.num_updates,
                                   num_prompts=dp.shard_size(cfg.num_prompts), seed=dp.shard_seed(seed))

    def build_reference(self):
        """The policy's frozen reference, placed where ``reference_device`` / ``reference_dtype`` say."""
        return self.policy.reference(self.config.reference_device, self.config.reference_dtype)

    # -- rollout ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, with_values: bool = False, score: bool = True) -> Batch:
        """Sample and score a batch; old (and reference) log-probs from one batched forward each.

        ``score=False`` skips the provider's scores (e.g. online DPO asks it for comparisons instead)."""
        self.policy.eval()
        rollout = self.rollouts.collect(return_logprobs=not with_values, score=score)
        start = time.perf_counter()
        args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        values = None
        if with_values:
            stats = self.policy(*args, with_values=True, temperature=self.config.temperature)
            logprobs, values = stats.logprobs, stats.values
        else:
            logprobs = rollout.logprobs
        ref_logprobs = None
        reference = self.reference
        if reference is None and self.monitor_reference is not None and self.num_updates % self.kl_monitor_every == 0:
            reference = self.monitor_reference
        if reference is not None:
            ref_logprobs = reference.logprobs(*args, temperature=self.config.temperature)
            kl = torch.where(rollout.completion_mask.bool(), kl_estimate(logprobs, ref_logprobs, self.config.kl_estimator),
                             torch.zeros((), dtype=logprobs.dtype))
        else:
            kl = torch.zeros_like(logprobs)
        if self.reference is None:  # measured for the logs only: the update sees no reference
            ref_logprobs = None
        rollout.timing["forward"] = time.perf_counter() - start
        scores = rollout.scores.clone()
        valid = rollout.score_mask.clone()
        shaped = apply_missing_eos_penalty(scores, rollout.has_eos, self.config.missing_eos_penalty)
        if self.config.normalize_rewards:
            self.reward_moments.update(shaped[valid])
            if self.reward_moments.count:
                shaped = normalise_rewards(shaped, self.reward_moments, clip=self.config.reward_clip, update=False)
        else:
            shaped = clip_rewards(shaped, self.config.reward_clip)
        shaped = torch.where(valid, shaped, torch.zeros_like(shaped))
        if isinstance(rollout, EpisodeRollout):  # every turn of a scored episode learns, scored itself or not
            valid = rollout.to_turns(rollout.episode_valid)
        self.policy.train()
        return Batch(rollout=rollout, scores=shaped, raw_scores=scores, valid=valid, logprobs=logprobs,
                     ref_logprobs=ref_logprobs, kl=kl, values=values, kl_measured=reference is not None)

    @staticmethod
    def has_scores(batch: Batch) -> bool:
        """Whether any sample of ``batch`` was scored (otherwise the update is skipped)."""
        return bool(batch.valid.any())

    def skip_update(self, batch: Batch) -> dict[str, float]:
        """Metrics of a batch that carries no learning signal (no sample scored): nothing is stepped or updated."""
        metrics = self.batch_metrics(batch)
        metrics["batch/skipped"] = 1.0
        return metrics

    def update_kl_controller(self, batch: Batch) -> None:
        if self.reference is not None:
            self.kl_ctl.update(float(masked_mean(batch.sample_kl, None)), dp.global_count(len(batch.sample_kl)))

    def minibatches(self, mask: torch.Tensor, minibatch_size: int, epochs: int = 1):
        """``epochs`` passes over the batch in shuffled minibatches of ``minibatch_size`` samples: yields
        ``(index, mask[index])`` for each minibatch with at least one token to learn from.

        With several learners the minibatches are those of the global batch (one permutation for all, drawn by
        rank 0), each learner taking the rows of its own shard; a learner with none of a minibatch's rows takes
        part with one row whose mask is zero, so every learner runs the same steps."""
        n = mask.shape[0]
        offset, total = dp.shard_offset(n)
        for _ in range(epochs):
            order = torch.randperm(total, generator=self.rollouts.generator).to(mask.device)
            if dp.reducing():  # every learner follows rank 0's permutation
                order = dp.broadcast(order)
            for start in range(0, total, minibatch_size):
                chosen = order[start : start + minibatch_size]
                local = chosen[(chosen >= offset) & (chosen < offset + n)] - offset
                mb_mask = mask[local]
                if not dp.any_rank(bool(mb_mask.any())):
                    continue
                if len(local) == 0:
                    local = torch.zeros(1, dtype=torch.long, device=mask.device)
                    mb_mask = torch.zeros_like(mask[local])
                yield local, mb_mask

    # -- metrics ----------------------------------------------------------------------------------------------
    def batch_metrics(self, batch: Batch, entropy: torch.Tensor | None = None) -> dict[str, float]:
        """The metrics every online algorithm logs, with TRL's names."""
        r = batch.rollout
        valid = batch.valid
        raw = batch.raw_scores[valid]
        seq_kl = batch.sequence_kl
        raw_scores = batch.raw_scores
        if (episodes := batch.episodes) is not None:  # one sample = one conversation
            valid, seq_kl = episodes.episode_valid, batch.sample_kl
            raw_scores = episodes.per_episode(torch.where(episodes.score_mask, batch.raw_scores, 0.0))
            raw = raw_scores[valid]
        beta = self.kl_ctl.value
        metrics = {
            "objective/beta": float(beta),
            "completions/mean_length": float(r.completion_mask.sum(-1).float().mean()),
            "completions/eos_fraction": float(r.has_eos.float().mean()),
            "timing/generation": r.timing.get("generation", 0.0),
            "timing/scoring": r.timing.get("scoring", 0.0),
            "perf/tokens_per_s": r.num_tokens / max(r.timing.get("generation", 0.0), 1e-9),
            "batch/scored_fraction": float(valid.float().mean()) if valid.numel() else 0.0,
            "batch/skipped": 0.0,
            **r.metrics,
        }
        provider = self.rollouts.provider
        if hasattr(provider, "last_call_timed_out"):  # a provider with a time limit (rlhf_gym.provider_timeout)
            metrics["batch/timed_out"] = float(bool(provider.last_call_timed_out))
            metrics["provider/timeouts"] = float(provider.timeouts)
        if batch.kl_measured:  # never a 0 standing in for a KL nobody measured
            metrics["objective/kl"] = float(seq_kl.mean())
            metrics["objective/non_score_reward"] = float(-beta * seq_kl.mean())
        if raw.numel():
            metrics["objective/scores"] = float(raw.mean())
            metrics["objective/rlhf_reward"] = float((raw_scores - beta * seq_kl)[valid].mean())
            metrics["objective/scored_fraction"] = float(valid.float().mean())
        if entropy is not None:
            metrics["objective/entropy"] = float(entropy)
        if episodes is not None:
            metrics["episodes/mean_turns"] = len(r) / max(episodes.num_episodes, 1)
        if (uncertainty := _mean_extra(r.extras, "uncertainty")) is not None:
            metrics["reward_model/uncertainty"] = uncertainty
        truth = self.true_scores(r.prompts, r.completions, r.extras)
        if truth:
            metrics["objective/true_scores"] = float(np.mean(truth))
        self.last_samples = r.samples()
        return metrics

    def close(self) -> None:
        super().close()
        close = getattr(getattr(self, "rollouts", None), "close", None)
        if callable(close):
            close()

    # -- checkpoints ------------------------------------------------------------------------------------------
    # The rollout worker (sampling RNG, prompt order, provider state), the KL controller and the reward statistics
    # are saved by the base class as components (Algorithm.checkpointed_components); the reference is a file.
    resumable_fields = Algorithm.resumable_fields | {"beta", "kl_target", "kl_horizon", "kl_relax", "rollout_workers",
                                                    "ray_address"}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        if "rollouts" in values and dp.rank() == 0:  # checkpoints written before the base saved components
            rollout_tensors = {k[len("rollouts/"):]: v for k, v in tensors.items() if k.startswith("rollouts/")}
            self.rollouts.load_state(rollout_tensors, values["rollouts"])
        if "kl_ctl" in values:
            self.kl_ctl.load_state_dict(values["kl_ctl"])
            self.reward_moments.load_state_dict(values["reward_moments"])
        if dp.rank() != 0:  # the checkpoint holds rank 0's streams; the others start fresh ones, seeded by the update reached
            self.rollouts.env.close()
            self.rollouts = self._rollout_worker(self.config.seed + 1_000_003 * self.num_updates)

    def save_files(self, path: Path) -> None:
        # The reference must stay the *initial* policy across resumes: keep its weights with the checkpoint.
        self.policy.save_reference(path / "reference")

    def load_files(self, path: Path) -> None:
        if self.reference is not None:
            self.reference = self.policy.load_reference(path / "reference")
        elif self.monitor_reference is not None:
            self.monitor_reference = self.policy.load_reference(path / "reference")


    @classmethod
    def check_overrides(cls, saved: dict[str, Any], changed: dict[str, Any], where: Path) -> None:
        super().check_overrides(saved, changed, where)
        if float(saved.get("beta") or 0) == 0 and float(changed.get("beta") or 0) > 0:
            raise ConfigError(
                f"cannot turn the KL penalty on (beta 0 → {changed['beta']}) when resuming {where}: the run kept no "
                f"reference model, and the current policy is not the initial one. Start a new run instead"
            )

    def apply_overrides(self, changed: dict[str, Any]) -> None:
        super().apply_overrides(changed)
        if {"beta", "kl_target", "kl_horizon", "kl_relax"} & set(changed):
            cfg = self.config
            # A new β starts from the value given; a new target or horizon continues from the current β.
            beta = cfg.beta if "beta" in changed or cfg.beta == 0 else self.kl_ctl.value
            self.kl_ctl = cfg.kl_controller(beta)


def _mean_extra(extras: dict[str, list[Any]], key: str) -> float | None:
    """The mean of a provider's numeric per-sample extra over the samples that have one (``None`` when none do)."""
    values = [float(v) for v in extras.get(key, ()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else None


def parse_kl_monitor(value: str) -> int:
    """``kl_monitor`` as "measure every N updates" (0: off): ``reference`` → 1, ``every:N`` → N, ``off`` → 0."""
    text = str(value).strip().lower()
    if text in ("reference", "every:1"):
        return 1
    if text in ("off", "none", ""):
        return 0
    if text.startswith("every:"):
        try:
            every = int(text[len("every:"):])
        except ValueError:
            every = 0
        if every >= 1:
            return every
    raise ConfigError(f"kl_monitor must be 'reference', 'every:N' (N ≥ 1 updates) or 'off', got {value!r}")
