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
from rlhf_gym.episodes import EpisodeRollout, make_worker
from rlhf_gym.kl import kl_estimate, make_kl_controller
from rlhf_gym.rollout import Rollout


@dataclass
class OnlineConfig(AlgorithmConfig):
    """Hyper-parameters of algorithms that sample from the policy while training."""

    num_prompts: int = hp(16, "distinct prompts sampled per update")
    group_size: int = hp(1, "completions sampled per prompt")
    beta: float = hp(0.05, "KL coefficient β against the frozen reference (0: no reference model at all)")
    kl_target: float | None = hp(None, "adaptive KL control: target KL per sequence (None: fixed β)")
    kl_horizon: int = hp(10000, "adaptive KL control horizon, in samples")
    kl_estimator: str = hp("k1", "per-token KL estimator in the penalty: k1, k2 or k3")
    missing_eos_penalty: float | None = hp(None, "subtract this from the score of completions that never end")
    normalize_rewards: bool = hp(False, "standardise scores with running mean/std before use")
    reward_clip: float | None = hp(None, "clip (normalised) scores to ±this")
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
        self.rollouts = make_worker(
            self.env, self.policy, num_prompts=cfg.num_prompts, group_size=cfg.group_size, seed=cfg.seed,
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        )
        self.kl_ctl = make_kl_controller(cfg.beta, cfg.kl_target, cfg.kl_horizon)
        # The reference is a frozen copy of the policy as it is now; skipped entirely when β = 0.
        self.reference = self.policy.reference() if cfg.beta > 0 else None
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
        if self.reference is not None:
            ref_logprobs = self.reference.logprobs(*args, temperature=self.config.temperature)
            kl = torch.where(rollout.completion_mask.bool(), kl_estimate(logprobs, ref_logprobs, self.config.kl_estimator),
                             torch.zeros((), dtype=logprobs.dtype))
        else:
            kl = torch.zeros_like(logprobs)
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
        if isinstance(rollout, EpisodeRollout):  # every turn of a scored episode learns, scored itself or not
            valid = rollout.to_turns(rollout.episode_valid)
        self.policy.train()
        return Batch(rollout=rollout, scores=shaped, raw_scores=scores, valid=valid, logprobs=logprobs,
                     ref_logprobs=ref_logprobs, kl=kl, values=values)

    def update_kl_controller(self, batch: Batch) -> None:
        if self.reference is not None:
            self.kl_ctl.update(float(batch.sample_kl.mean()), len(batch.sample_kl))

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
            "objective/kl": float(seq_kl.mean()),
            "objective/non_score_reward": float(-beta * seq_kl.mean()),
            "objective/beta": float(beta),
            "completions/mean_length": float(r.completion_mask.sum(-1).float().mean()),
            "completions/eos_fraction": float(r.has_eos.float().mean()),
            "timing/generation": r.timing.get("generation", 0.0),
            "timing/scoring": r.timing.get("scoring", 0.0),
            "perf/tokens_per_s": r.num_tokens / max(r.timing.get("generation", 0.0), 1e-9),
        }
        if raw.numel():
            metrics["objective/scores"] = float(raw.mean())
            metrics["objective/rlhf_reward"] = float((raw_scores - beta * seq_kl)[valid].mean())
            metrics["objective/scored_fraction"] = float(valid.float().mean())
        if entropy is not None:
            metrics["objective/entropy"] = float(entropy)
        if episodes is not None:
            metrics["episodes/mean_turns"] = len(r) / max(episodes.num_episodes, 1)
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
