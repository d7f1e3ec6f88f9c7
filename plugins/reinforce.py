"""REINFORCE with a moving-average baseline, and RLOO (k samples per prompt, leave-one-out baseline), as built-in
plugins.

Each update: sample a batch → reward = score − β·KL(sequence) against the frozen reference → advantage = reward −
baseline → one gradient step on ``−A · log π(y|x)``. On multi-turn envs a sample is a conversation: its reward is
the episode return (turn scores − β·KL, discounted per turn by ``turn_discount``), shared by all its turns. RLOO (Ahmadian et al. 2024) samples ``group_size`` completions
per prompt and uses the mean reward of the *other* completions of the same prompt as each one's baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

import rlhf_gym
from rlhf_gym.advantages import MovingAverageBaseline, masked_mean, masked_scale, rloo_advantages
from rlhf_gym.config import hp
from rlhf_gym.errors import ConfigError
from rlhf_gym.losses import reinforce_loss
from rlhf_gym.online import OnlineAlgorithm, OnlineConfig


@dataclass
class REINFORCEConfig(OnlineConfig):
    baseline_decay: float = hp(0.9, "decay of the moving-average baseline")
    normalize_advantages: bool = hp(False, "divide advantages by their batch standard deviation")


@dataclass
class RLOOConfig(OnlineConfig):
    group_size: int = hp(4, "completions per prompt (k); each one's baseline is the mean of the other k−1")
    normalize_advantages: bool = hp(False, "divide advantages by their batch standard deviation")


class PolicyGradient(OnlineAlgorithm):
    """The update REINFORCE and RLOO share; subclasses say how the baseline is taken in :meth:`advantages`."""

    def advantages(self, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B,) advantages of the sequence rewards; 0 where ``valid`` is False (no score)."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        # -- rollout ---------------------------------------------------------------------------------------------
        batch = self.collect()
        r = batch.rollout
        if not self.has_scores(batch):
            return self.skip_update(batch)
        # -- advantages: sequence reward = score − β·KL, minus the baseline ----------------------------------------
        rewards = batch.scores - self.kl_ctl.value * batch.sequence_kl
        valid = batch.valid
        if (episodes := batch.episodes) is not None:  # multi-turn: one return per conversation
            rewards, valid = episodes.returns(rewards, cfg.turn_discount), episodes.episode_valid
        adv = self.advantages(rewards, valid)
        if cfg.normalize_advantages:
            adv = masked_scale(adv, valid)
        adv_std = float(adv[valid].std()) if int(valid.sum()) > 1 else 0.0
        if episodes is not None:
            adv = episodes.to_turns(adv)  # every turn of a conversation shares its advantage
        # -- update: one gradient step on −A·log π(y|x) --------------------------------------------------------------
        start = time.perf_counter()
        mask = r.completion_mask * batch.valid.unsqueeze(-1).to(r.completion_mask.dtype)
        out = self.policy(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, with_entropy=True,
                          temperature=cfg.temperature)
        loss = reinforce_loss(out.logprobs, adv, mask)
        self.clip_and_step(loss)
        update_time = time.perf_counter() - start
        self.update_kl_controller(batch)
        metrics = self.batch_metrics(batch, entropy=float(masked_mean(out.entropy.detach(), mask)))
        metrics.update({
            "loss/policy_avg": loss.item(),
            "objective/advantage_std": adv_std,
            "timing/update": update_time + r.timing.get("forward", 0.0),
        })
        return metrics



class REINFORCE(PolicyGradient):
    """REINFORCE with a moving-average baseline and a sequence-level KL penalty."""

    Config: Any = REINFORCEConfig
    name = "reinforce"

    def setup(self) -> None:
        super().setup()
        self.baseline = MovingAverageBaseline(self.config.baseline_decay)

    def advantages(self, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Reward minus the moving average of earlier rewards (updated with this batch's scored samples)."""
        adv = torch.zeros_like(rewards)
        adv[valid] = self.baseline(rewards[valid])
        return adv

    def extra_state(self):
        tensors, values = super().extra_state()
        values["baseline"] = self.baseline.state_dict()
        return tensors, values

    def load_extra_state(self, tensors, values):
        super().load_extra_state(tensors, values)
        self.baseline.load_state_dict(values["baseline"])


class RLOO(PolicyGradient):
    """REINFORCE leave-one-out: k samples per prompt, each baselined by the mean reward of the other k−1."""

    Config: Any = RLOOConfig
    name = "rloo"

    def setup(self) -> None:
        if self.config.group_size < 2:
            raise ConfigError(f"rloo needs group_size ≥ 2 completions per prompt, got {self.config.group_size}")
        super().setup()

    def advantages(self, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Leave-one-out over the group's scored members only; 0 for unscored samples and lone scored ones."""
        return rloo_advantages(rewards, self.config.group_size, valid)


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("reinforce", REINFORCE)
    register("rloo", RLOO)
