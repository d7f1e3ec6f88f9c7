"""What the online RL algorithms (PPO, REINFORCE, RLOO, online DPO, third-party ones) share: sampling a batch
through the rollout worker, scoring it, the frozen reference and the KL controller, reward shaping, and the
metrics every run logs.

An algorithm derived from :class:`OnlineAlgorithm` writes only its update: ``train_step`` calls
:meth:`OnlineAlgorithm.collect` for a scored batch with old and reference log-probs, computes its loss with
:mod:`rlhf_gym.losses`, and returns ``self.batch_metrics(batch) | its own``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_gym.advantages import RunningMoments, apply_missing_eos_penalty, clip_rewards, normalise_rewards
from rlhf_gym.algorithm import Algorithm, AlgorithmConfig
from rlhf_gym.config import hp
from rlhf_gym.errors import ConfigError
from rlhf_gym.kl import kl_estimate, make_kl_controller
from rlhf_gym.rollout import Rollout, RolloutWorker


@dataclass
class OnlineConfig(AlgorithmConfig):
    """Hyper-parameters of algorithms that sample from the policy while training."""

    num_prompts: int = hp(16, "distinct prompts sampled per update")
    group_size: int = hp(1, "completions sampled per prompt")
    beta: float = hp(0.05, "KL coefficient β against the frozen reference (0: no penalty; kl_monitor still logs the KL)")
    kl_target: float | None = hp(None, "adaptive KL control: target KL per sequence (None: fixed β)")
    kl_horizon: int = hp(10000, "adaptive KL control horizon, in samples")
    kl_estimator: str = hp("k1", "per-token KL estimator in the penalty and in objective/kl: k1, k2 or k3")
    kl_monitor: str = hp(
        "reference", "with beta=0, how objective/kl is still measured against the starting policy: 'reference' "
        "(a frozen copy, every update), 'every:N' (the same copy, every N updates) or 'off' (not logged)"
    )
    missing_eos_penalty: float | None = hp(None, "subtract this from the score of completions that never end")
    normalize_rewards: bool = hp(False, "standardise scores with running mean/std before use")
    reward_clip: float | None = hp(None, "clip (normalised) scores to ±this")


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


class OnlineAlgorithm(Algorithm):
    """Base of algorithms that learn from fresh samples of the policy (see module docstring)."""

    Config = OnlineConfig
    config: OnlineConfig

    def setup(self) -> None:
        cfg = self.config
        self.rollouts = RolloutWorker(
            self.env, self.policy, num_prompts=cfg.num_prompts, group_size=cfg.group_size, seed=cfg.seed,
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        )
        self.kl_ctl = make_kl_controller(cfg.beta, cfg.kl_target, cfg.kl_horizon)
        # The reference is a frozen copy of the policy as it is now. With β = 0 no penalty needs it, but the KL to
        # the starting policy is still measured (kl_monitor) against the same copy, never reported as a fake 0.
        self.kl_monitor_every = parse_kl_monitor(cfg.kl_monitor)
        self.reference = self.policy.reference() if cfg.beta > 0 else None
        self.monitor_reference = (self.policy.reference() if self.reference is None and self.kl_monitor_every
                                  else None)
        self.reward_moments = RunningMoments()

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
        if self.config.normalize_rewards and bool(valid.any()):
            self.reward_moments.update(shaped[valid])
            shaped = normalise_rewards(shaped, self.reward_moments, clip=self.config.reward_clip, update=False)
        else:
            shaped = clip_rewards(shaped, self.config.reward_clip)
        shaped = torch.where(valid, shaped, torch.zeros_like(shaped))
        self.policy.train()
        return Batch(rollout=rollout, scores=shaped, raw_scores=scores, valid=valid, logprobs=logprobs,
                     ref_logprobs=ref_logprobs, kl=kl, values=values, kl_measured=reference is not None)

    def update_kl_controller(self, batch: Batch) -> None:
        if self.reference is not None:
            self.kl_ctl.update(float(batch.sequence_kl.mean()), len(batch.rollout))

    # -- metrics ----------------------------------------------------------------------------------------------
    def batch_metrics(self, batch: Batch, entropy: torch.Tensor | None = None) -> dict[str, float]:
        """The metrics every online algorithm logs, with TRL's names."""
        r = batch.rollout
        valid = batch.valid
        raw = batch.raw_scores[valid]
        seq_kl = batch.sequence_kl
        beta = self.kl_ctl.value
        metrics = {
            "objective/beta": float(beta),
            "completions/mean_length": float(r.completion_mask.sum(-1).float().mean()),
            "completions/eos_fraction": float(r.has_eos.float().mean()),
            "timing/generation": r.timing.get("generation", 0.0),
            "timing/scoring": r.timing.get("scoring", 0.0),
            "perf/tokens_per_s": r.num_tokens / max(r.timing.get("generation", 0.0), 1e-9),
        }
        if batch.kl_measured:  # never a 0 standing in for a KL nobody measured
            metrics["objective/kl"] = float(seq_kl.mean())
            metrics["objective/non_score_reward"] = float(-beta * seq_kl.mean())
        if raw.numel():
            metrics["objective/scores"] = float(raw.mean())
            metrics["objective/rlhf_reward"] = float((batch.raw_scores - beta * seq_kl)[valid].mean())
            metrics["objective/scored_fraction"] = float(valid.float().mean())
        if entropy is not None:
            metrics["objective/entropy"] = float(entropy)
        truth = self.true_scores(r.prompts, r.completions, r.extras)
        if truth:
            metrics["objective/true_scores"] = float(np.mean(truth))
        self.last_samples = r.samples()
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------------------
    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, values = self.rollouts.state()
        values = {"rollouts": values, "kl_ctl": self.kl_ctl.state_dict(),
                  "reward_moments": self.reward_moments.state_dict()}
        return {f"rollouts/{k}": v for k, v in tensors.items()}, values

    def load_extra_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        rollout_tensors = {k[len("rollouts/"):]: v for k, v in tensors.items() if k.startswith("rollouts/")}
        self.rollouts.load_state(rollout_tensors, values["rollouts"])
        self.kl_ctl.load_state_dict(values["kl_ctl"])
        self.reward_moments.load_state_dict(values["reward_moments"])

    def save_files(self, path: Path) -> None:
        # The reference must stay the *initial* policy across resumes: keep its weights with the checkpoint.
        self.policy.save_reference(path / "reference")

    def load_files(self, path: Path) -> None:
        if self.reference is not None:
            self.reference = self.policy.load_reference(path / "reference")
        elif self.monitor_reference is not None:
            self.monitor_reference = self.policy.load_reference(path / "reference")


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
