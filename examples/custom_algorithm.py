"""Register a custom algorithm: best-of-n imitation (expert iteration), trained through ``make_algorithm``.

An algorithm is an :class:`rlhf_gym.Algorithm` subclass with a ``Config`` dataclass and a ``train_step``. It is
registered by a plugin — here a small object with an ``@rlhf_gym.hookimpl`` ``register_algorithms`` hook handed
to ``rlhf_gym.register_plugin``; an installed package would expose the same hook through the ``rlhf_gym``
entry-point group — and built by name exactly like the built-in ``ppo`` or ``rloo``.

Best-of-n: sample ``n`` completions per prompt, keep the one the reward provider scores highest, and take a
supervised step towards it. No value head, no reference model, no policy-gradient estimator.

Run it::

    python examples/custom_algorithm.py            # full settings
    python examples/custom_algorithm.py --quick    # CI settings (also: RLHF_GYM_QUICK=1)

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

import rlhf_gym
from rlhf_gym.algorithm import Algorithm, AlgorithmConfig
from rlhf_gym.config import hp
from rlhf_gym.losses import sft_loss
from rlhf_gym.rollout import RolloutWorker, evaluate
from rlhf_gym.tiny import build_tiny_kit, review_prompts


@dataclass
class BestOfNConfig(AlgorithmConfig):
    """Hyper-parameters of best-of-n imitation (plus every shared one: seed, learning_rate, ...)."""

    learning_rate: float = hp(3e-4, "AdamW learning rate")
    num_prompts: int = hp(8, "distinct prompts per update")
    n: int = hp(4, "completions sampled per prompt; the best-scored one is imitated")


class BestOfN(Algorithm):
    """Expert iteration: imitate the best of n sampled completions of each prompt."""

    Config: Any = BestOfNConfig
    config: BestOfNConfig
    name = "best-of-n"

    def setup(self) -> None:
        cfg = self.config
        # The rollout worker samples num_prompts × n completions and scores them with one provider call.
        self.rollouts = RolloutWorker(self.env, self.policy, num_prompts=cfg.num_prompts, group_size=cfg.n,
                                      seed=cfg.seed, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)

    def train_step(self) -> dict[str, float]:
        n = self.config.n
        # -- rollout -------------------------------------------------------------------------------------------
        self.policy.eval()
        batch = self.rollouts.collect()
        self.policy.train()
        # -- selection: the best completion of each prompt's group (unscored samples never win) ------------------
        scores = batch.scores.masked_fill(~batch.score_mask, float("-inf")).view(-1, n)
        best = scores.argmax(dim=1) + torch.arange(scores.shape[0]) * n
        keep = torch.isfinite(scores.max(dim=1).values)
        chosen = batch.select(best[keep])
        # -- update: one supervised step on the chosen completions ------------------------------------------------
        start = time.perf_counter()
        out = self.policy(chosen.prompt_ids, chosen.prompt_mask, chosen.completion_ids, chosen.completion_mask)
        loss = sft_loss(out.logprobs, chosen.completion_mask)
        self.clip_and_step(loss)
        self.last_samples = chosen.samples()
        valid = batch.scores[batch.score_mask]
        return {
            "objective/scores": float(valid.mean()) if valid.numel() else float("nan"),
            "objective/best_scores": float(chosen.scores.mean()) if len(chosen) else float("nan"),
            "loss/sft": loss.item(),
            "timing/generation": batch.timing["generation"],
            "timing/update": time.perf_counter() - start,
        }


class BestOfNPlugin:
    """The plugin: one hook implementation that registers the algorithm under a user-facing name."""

    @rlhf_gym.hookimpl
    def register_algorithms(self, register):
        register("best-of-n", BestOfN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CI settings (also RLHF_GYM_QUICK=1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("RLHF_GYM_QUICK") == "1"
    updates, samples = (15, 64) if quick else (80, 256)

    rlhf_gym.register_plugin(BestOfNPlugin(), name="best-of-n-example")
    entry = next(e for e in rlhf_gym.list_plugins("algorithm") if e.name == "best-of-n")
    print(f"registered {entry.name!r} ({entry.kind}) from {entry.distribution}: {entry.description}")

    kit = build_tiny_kit(progress=not quick)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=kit.path, model=kit.path, prompts=review_prompts(),
                   reward="sentiment", max_new_tokens=20, max_prompt_tokens=16)
    algo = rlhf_gym.make_algorithm("best-of-n", env=env, policy=kit.path, n=4, num_prompts=8, seed=args.seed)
    before = evaluate(algo.policy, env, num_samples=samples, seed=args.seed + 1)
    algo.learn(updates, progress_bar=not quick)
    after = evaluate(algo.policy, env, num_samples=samples, seed=args.seed + 1)
    print(f"mean sentiment: {before['mean']:+.3f} before, {after['mean']:+.3f} after {updates} best-of-4 updates")
    print(f"sample after: {after['samples'][0]['prompt']}{after['samples'][0]['completion']}")
    env.close()
    print(json.dumps({"algorithm": entry.name, "distribution": entry.distribution, "updates": algo.num_updates,
                      "before": before["mean"], "after": after["mean"],
                      "best_scores": algo.last_metrics["objective/best_scores"],
                      "scores": algo.last_metrics["objective/scores"]}))


if __name__ == "__main__":
    main()
