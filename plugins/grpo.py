"""GRPO (Shao et al. 2024, DeepSeekMath), as a built-in plugin: k completions per prompt, advantages normalised
within each prompt's group, PPO's clipped objective on every token, and the KL to the reference as a loss term
(k3 estimator) rather than folded into the reward. No value head. On multi-turn envs a group is ``group_size``
conversations from one scenario, normalised on their episode returns (discounted per turn by ``turn_discount``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import rlhf_gym
from rlhf_gym.advantages import group_normalised_advantages, masked_mean
from rlhf_gym.config import hp
from rlhf_gym.errors import ConfigError
from rlhf_gym.kl import kl_k3
from rlhf_gym.losses import ppo_policy_loss
from rlhf_gym.online import OnlineAlgorithm, OnlineConfig


@dataclass
class GRPOConfig(OnlineConfig):
    group_size: int = hp(4, "completions per prompt; advantages are normalised within each prompt's group")
    beta: float = hp(0.2, "initial weight of the k3 KL-to-reference loss term, steered by the KL controller to hold "
                           "kl_target (0: no KL term and no budget; kl_monitor still logs the KL)")
    num_iterations: int = hp(1, "gradient steps on each batch (PPO-style clipping keeps later ones close)")
    clip_range: float = hp(0.2, "policy ratio clip ε")
    scale_rewards: bool = hp(True, "divide by the group's standard deviation (False: Dr. GRPO, mean only)")


class GRPO(OnlineAlgorithm):
    """Group relative policy optimisation: group-normalised advantages, clipped objective, KL as a loss term."""

    Config: Any = GRPOConfig
    config: GRPOConfig
    name = "grpo"

    def setup(self) -> None:
        if self.config.group_size < 2:
            raise ConfigError(f"grpo needs group_size ≥ 2 completions per prompt, got {self.config.group_size}")
        super().setup()

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        # -- rollout ---------------------------------------------------------------------------------------------
        batch = self.collect()
        r = batch.rollout
        if not self.has_scores(batch):
            return self.skip_update(batch)
        # -- advantages: scores normalised within each prompt's group, over its scored members only ---------------
        scores, valid = batch.scores, batch.valid
        if (episodes := batch.episodes) is not None:  # multi-turn: one return per conversation
            scores, valid = episodes.returns(scores, cfg.turn_discount), episodes.episode_valid
        adv = group_normalised_advantages(scores, cfg.group_size, scale=cfg.scale_rewards, valid=valid)
        if episodes is not None:
            adv = episodes.to_turns(adv)
        mask = r.completion_mask * batch.valid.unsqueeze(-1).to(r.completion_mask.dtype)
        # -- update: clipped objective + β·k3 KL per token ------------------------------------------------------------
        start = time.perf_counter()
        args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
        for _ in range(cfg.num_iterations):
            out = self.policy(*args, with_entropy=True, temperature=cfg.temperature)
            loss, stats = ppo_policy_loss(out.logprobs, batch.logprobs, adv, mask, cfg.clip_range)
            if batch.ref_logprobs is not None:
                loss = loss + self.kl_ctl.value * masked_mean(kl_k3(out.logprobs, batch.ref_logprobs), mask)
            self.clip_and_step(loss)
        update_time = time.perf_counter() - start
        self.update_kl_controller(batch)
        metrics = self.batch_metrics(batch, entropy=float(masked_mean(out.entropy.detach(), mask)))
        metrics.update({
            "loss/policy_avg": loss.item(),
            "policy/clipfrac_avg": float(stats.clipfrac),
            "timing/update": update_time + r.timing.get("forward", 0.0),
        })
        return metrics


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("grpo", GRPO)
