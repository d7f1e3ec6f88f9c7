"""PPO for language models (token-level, Ziegler et al. 2019 / Ouyang et al. 2022), as a built-in plugin.

Each update: sample a batch through the rollout worker → old log-probs and values in one batched forward,
reference log-probs in another → per-token rewards (−β·KL on every token, the score on the last) → GAE (γ=1, λ=0.95)
→ ``ppo_epochs`` passes over shuffled minibatches of the clipped policy loss + ``vf_coef`` × clipped value loss.
On multi-turn envs GAE runs over a conversation's assistant turns in order, each turn's score at its last token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import rlhf_gym
from rlhf_gym.advantages import gae, masked_mean, masked_whiten
from rlhf_gym.config import hp
from rlhf_gym.episodes import episode_gae
from rlhf_gym.kl import kl_penalised_rewards
from rlhf_gym.losses import ppo_policy_loss, ppo_value_loss
from rlhf_gym.online import OnlineAlgorithm, OnlineConfig


@dataclass
class PPOConfig(OnlineConfig):
    learning_rate: float = hp(1e-4, "AdamW learning rate")
    beta: float = hp(0.1, "initial KL coefficient β of the per-token penalty; the controller then holds the KL near "
                          "kl_target (0: no penalty and no budget). Higher than the others' start: PPO takes "
                          "ppo_epochs × minibatches steps per batch, so its KL moves furthest between two β updates")
    ppo_epochs: int = hp(4, "passes over each batch")
    minibatch_size: int = hp(8, "samples per gradient step")
    clip_range: float = hp(0.2, "policy ratio clip ε")
    clip_range_value: float = hp(0.2, "value clip around the old values")
    vf_coef: float = hp(0.1, "weight of the value loss")
    gamma: float = hp(1.0, "discount")
    lam: float = hp(0.95, "GAE λ")
    whiten_advantages: bool = hp(True, "standardise advantages over the batch")


class PPO(OnlineAlgorithm):
    """Token-level PPO with GAE, a value head on the policy's trunk and a KL penalty folded into the reward."""

    Config = PPOConfig
    config: PPOConfig
    name = "ppo"
    needs_value_head = True

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        # -- rollout: samples, scores, old log-probs/values, reference log-probs ------------------------------
        batch = self.collect(with_values=True)
        r = batch.rollout
        if not self.has_scores(batch):
            return self.skip_update(batch)
        mask = r.completion_mask
        args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
        # Samples without a score carry no signal: mask their tokens out of every loss.
        loss_mask = mask * batch.valid.unsqueeze(-1).to(mask.dtype)

        # -- advantages: −β·KL per token, the score at the last token, GAE over the completion ------------------
        rewards = kl_penalised_rewards(batch.scores, batch.logprobs, batch.ref_logprobs, mask, self.kl_ctl.value,
                                       self.config.kl_estimator).rewards
        if batch.episodes is None:
            advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        else:  # multi-turn: one GAE pass over each episode's assistant tokens, across its turns
            advantages, returns = episode_gae(rewards, batch.values, mask, batch.episodes, cfg.gamma, cfg.lam,
                                              cfg.turn_discount)
        if cfg.whiten_advantages and int(loss_mask.sum()) > 1:  # a variance needs two scored tokens
            advantages = masked_whiten(advantages, loss_mask)

        # -- update: epochs × minibatches of clipped policy + value loss -----------------------------------------
        start = time.perf_counter()
        stats: dict[str, list[float]] = {"pg": [], "vf": [], "clip": [], "vclip": [], "approx_kl": [], "ent": []}
        for idx, mb_mask in self.minibatches(loss_mask, cfg.minibatch_size, cfg.ppo_epochs):
            out = self.policy(*(a[idx] for a in args), with_values=True, with_entropy=True,
                              temperature=cfg.temperature)
            pg_loss, pg_stats = ppo_policy_loss(out.logprobs, batch.logprobs[idx], advantages[idx], mb_mask,
                                                cfg.clip_range)
            vf_loss, vf_stats = ppo_value_loss(out.values, batch.values[idx], returns[idx], mb_mask,
                                               cfg.clip_range_value)
            self.clip_and_step(pg_loss + cfg.vf_coef * vf_loss)
            stats["pg"].append(pg_loss.item())
            stats["vf"].append(vf_loss.item())
            stats["clip"].append(float(pg_stats.clipfrac))
            stats["vclip"].append(float(vf_stats.vf_clipfrac))
            stats["approx_kl"].append(float(pg_stats.approx_kl))
            stats["ent"].append(float(masked_mean(out.entropy.detach(), mb_mask)))
        update_time = time.perf_counter() - start
        self.update_kl_controller(batch)

        def avg(key: str) -> float:
            return sum(stats[key]) / max(len(stats[key]), 1)

        metrics = self.batch_metrics(batch, entropy=avg("ent"))
        metrics.update({
            "loss/policy_avg": avg("pg"),
            "loss/value_avg": avg("vf"),
            "policy/clipfrac_avg": avg("clip"),
            "val/clipfrac_avg": avg("vclip"),
            "policy/approxkl_avg": avg("approx_kl"),
            "timing/update": update_time + r.timing.get("forward", 0.0),
        })
        return metrics


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("ppo", PPO)
