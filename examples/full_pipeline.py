"""The whole RLHF pipeline on one set of preferences: collect → reward model → PPO, against DPO on the same data.

1. **Collect**: the tiny kit's policy writes 4 reviews per prompt; a simulated human whose taste is VADER sentiment
   (the "noisy" preset: Boltzmann-rational, so close calls go either way) compares pairs of them. Every answer is
   committed to a SQLite preference store.
2. **Reward model**: a Bradley–Terry reward model on the kit's trunk learns those preferences.
3. **PPO** on the learned reward model (`learned-rm`), with a KL penalty towards the starting policy.
4. **DPO**, offline, on the very same preference store — no reward model at all.
5. **Compare** the three policies by the ground truth the human was judging by (VADER), and head to head with
   the oracle simulated human as the judge (`rlhf_gym.evaluate.compare_policies`).

Run it::

    python examples/full_pipeline.py            # full settings (a few minutes on a laptop CPU)
    python examples/full_pipeline.py --quick    # CI settings (also: RLHF_GYM_QUICK=1)

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import gymnasium as gym

import rlhf_gym
from rlhf_gym.collect import collect_preferences
from rlhf_gym.evaluate import compare_policies, evaluate_policies, format_table
from rlhf_gym.policy import Policy
from rlhf_gym.preference_store import PreferenceStore
from rlhf_gym.reward_model import train_reward_model
from rlhf_gym.tiny import build_tiny_kit, review_prompts

MAX_NEW_TOKENS = 20
MAX_PROMPT_TOKENS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CI settings (also RLHF_GYM_QUICK=1)")
    parser.add_argument("--out", help="directory for the store, reward model and policies (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("RLHF_GYM_QUICK") == "1"
    settings = (dict(prompts=96, ppo_updates=12, dpo_updates=24, samples=64) if quick
                else dict(prompts=512, ppo_updates=60, dpo_updates=120, samples=256))
    out = Path(args.out or tempfile.mkdtemp(prefix="rlhf_gym_pipeline_"))
    out.mkdir(parents=True, exist_ok=True)
    progress = not quick

    kit = build_tiny_kit(progress=progress)
    prompts = review_prompts()
    env_kwargs = dict(tokenizer=kit.path, model=kit.path, prompts=prompts, max_new_tokens=MAX_NEW_TOKENS,
                      max_prompt_tokens=MAX_PROMPT_TOKENS)

    # -- 1. collect preferences ----------------------------------------------------------------------------------
    base = Policy.from_pretrained(kit.path, value_head=False)
    sampling_env = gym.make("rlhf_gym/Completion-v0", reward="sentiment", **env_kwargs)
    human = rlhf_gym.make_reward("simulated-human", ground_truth="sentiment", preset="noisy", seed=args.seed)
    store_path = out / "preferences.sqlite"
    with PreferenceStore(store_path) as store:
        stats = collect_preferences(base, sampling_env, human, store, num_prompts=settings["prompts"], k=4,
                                    pairs_per_prompt=2, seed=args.seed)
        pairs = len(store.pairs())
    print(f"1. collected {stats.answered} answers ({stats.ties} ties, {stats.skipped} skipped) → {pairs} pairs "
          f"in {store_path}")

    # -- 2. reward model -------------------------------------------------------------------------------------------
    rm_dir = out / "reward_model"
    _, rm_metrics = train_reward_model(str(store_path), {"backbone": kit.path, "epochs": 3, "lr": 1e-3,
                                                         "batch_size": 16, "eval_fraction": 0.2,
                                                         "seed": args.seed},
                                       out_dir=rm_dir, progress=progress)
    print(f"2. reward model: held-out accuracy {rm_metrics['accuracy']:.3f} on {int(rm_metrics['num_eval_pairs'])} "
          f"pairs")

    # -- 3. PPO on the learned reward model ------------------------------------------------------------------------
    rm_env = gym.make("rlhf_gym/Completion-v0", reward="learned-rm",
                      reward_kwargs={"path": str(rm_dir), "normalize": "calibration"}, **env_kwargs)
    ppo = rlhf_gym.make_algorithm("ppo", env=rm_env, policy=Policy.from_pretrained(kit.path), num_prompts=16,
                                  learning_rate=1e-4, beta=0.05, true_reward="sentiment", seed=args.seed)
    ppo.learn(settings["ppo_updates"], progress_bar=progress)
    print(f"3. PPO on learned-rm: {ppo.num_updates} updates, last reward {ppo.last_metrics['objective/scores']:+.3f}, "
          f"KL {ppo.last_metrics['objective/kl']:.2f}")
    ppo.policy.save_pretrained(out / "ppo_policy")

    # -- 4. DPO on the same preferences -----------------------------------------------------------------------------
    dpo = rlhf_gym.make_algorithm("dpo", policy=Policy.from_pretrained(kit.path, value_head=False),
                                  dataset=store_path, beta=0.1, learning_rate=1e-4, batch_size=16,
                                  max_prompt_tokens=MAX_PROMPT_TOKENS, max_completion_tokens=MAX_NEW_TOKENS + 4,
                                  seed=args.seed)
    dpo.learn(settings["dpo_updates"], progress_bar=progress)
    print(f"4. DPO on the store: {dpo.num_updates} updates, preference accuracy "
          f"{dpo.last_metrics.get('rewards/accuracies', float('nan')):.3f}")
    dpo.policy.save_pretrained(out / "dpo_policy")

    # -- 5. compare against the ground truth and head to head -----------------------------------------------------
    policies = {"base": kit.path, "ppo": str(out / "ppo_policy"), "dpo": str(out / "dpo_policy")}
    common = dict(prompts=prompts, num_samples=settings["samples"], max_new_tokens=MAX_NEW_TOKENS,
                  max_prompt_tokens=MAX_PROMPT_TOKENS, seed=args.seed + 1)
    results = evaluate_policies(policies, reward="sentiment", **common)
    print("5. ground truth (VADER sentiment) of fresh samples:")
    print(format_table(results, "sentiment"))
    oracle = {"ground_truth": "sentiment", "preset": "oracle", "seed": args.seed}
    ppo_vs_base = compare_policies(policies["ppo"], policies["base"], "simulated-human", judge_kwargs=oracle, **common)
    dpo_vs_base = compare_policies(policies["dpo"], policies["base"], "simulated-human", judge_kwargs=oracle, **common)
    ppo_vs_dpo = compare_policies(policies["ppo"], policies["dpo"], "simulated-human", judge_kwargs=oracle, **common)
    print(f"win rates by the oracle human: PPO vs base {ppo_vs_base['win_rate']:.3f}, DPO vs base "
          f"{dpo_vs_base['win_rate']:.3f}, PPO vs DPO {ppo_vs_dpo['win_rate']:.3f}")
    sampling_env.close()
    rm_env.close()

    truth = {r["policy"]: r["mean"] for r in results}
    print(json.dumps({
        "pairs": pairs, "rm_accuracy": rm_metrics["accuracy"], "ppo_updates": ppo.num_updates,
        "dpo_updates": dpo.num_updates, "dpo_accuracy": dpo.last_metrics.get("rewards/accuracies"),
        "truth_base": truth["base"], "truth_ppo": truth["ppo"], "truth_dpo": truth["dpo"],
        "win_ppo_vs_base": ppo_vs_base["win_rate"], "win_dpo_vs_base": dpo_vs_base["win_rate"],
        "win_ppo_vs_dpo": ppo_vs_dpo["win_rate"], "out": str(out),
    }))


if __name__ == "__main__":
    main()
