"""What each online algorithm learns, with its default settings, in a fixed wall-clock budget (default 90 s).

The demo task: the tiny kit after SFT, review prompts, a noisy simulated human as the reward, VADER sentiment as
the ground truth. Each algorithm trains from the same start with nothing but its defaults for as many updates as
fit in the budget (one update at a time, so the budget is overrun by at most one update), then 128 fresh samples
(256 with ``--eval-samples 256``) are scored by the ground truth and their KL to the start policy is measured.
Prints one markdown table (the one docs/reward_hacking.md quotes) and writes it, with the machine's load, to
``--out`` as JSON.

    python bench/learning_budget.py                     # every online algorithm, 90 s each
    python bench/learning_budget.py --algos rloo,grpo --seconds 30

Run it on an idle machine: training time is wall-clock time, so a loaded machine fits fewer updates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ALGOS = ("ppo", "reinforce", "rloo", "grpo", "dpo")


def measure(name: str, seconds: float, eval_samples: int, seed: int) -> dict:
    import gymnasium as gym

    import rlhf_gym
    from rlhf_gym import tiny
    from rlhf_gym.policy import Policy
    from rlhf_gym.rollout import evaluate

    kit = tiny.build_tiny_kit()
    start = Policy.from_pretrained(kit.path, value_head=False)
    policy = Policy.from_pretrained(kit.path)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(),
                   reward="simulated-human", reward_kwargs={"preset": "noisy"}, max_new_tokens=24,
                   max_prompt_tokens=16, vocab_size=policy.vocab_size)
    before = evaluate(start, env, num_samples=eval_samples, reward="sentiment", seed=seed + 7)
    algo = rlhf_gym.make_algorithm(name, env=env, policy=policy, seed=seed)
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        algo.learn(algo.num_updates + 1, progress_bar=False)
    trained = time.perf_counter() - began
    after = evaluate(policy, env, num_samples=eval_samples, reward="sentiment", seed=seed + 7, reference=start)
    algo.close()
    env.close()
    return {"algo": name, "updates": algo.num_updates, "seconds": round(trained, 1),
            "s_per_update": round(trained / max(algo.num_updates, 1), 3), "before": round(before["mean"], 3),
            "after": round(after["mean"], 3), "gain": round(after["mean"] - before["mean"], 3),
            "kl": round(after["kl"], 2), "kl_target": algo.config.kl_target, "beta_start": algo.config.beta,
            "beta_end": round(algo.kl_ctl.value, 4), "mean_length": round(after["mean_length"], 1),
            "sample": after["samples"][0]["prompt"] + after["samples"][0]["completion"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", default=",".join(ALGOS), help="comma-separated online algorithms")
    parser.add_argument("--seconds", type=float, default=90.0, help="training wall-clock budget per algorithm")
    parser.add_argument("--eval-samples", type=int, default=128, help="fresh samples scored before and after")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "learning_budget.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    rows = [measure(name.strip(), args.seconds, args.eval_samples, args.seed) for name in args.algos.split(",")]
    print(f"\n{args.seconds:g} s of training per algorithm, defaults only (KL budget {rows[0]['kl_target']} nats), "
          f"{args.eval_samples} fresh samples, {args.threads} torch thread(s), load {load_start[0]:.2f} → "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| algorithm | updates | s/update | ground truth before → after | gain | KL to start | β start → end |")
    print("|---|---:|---:|---|---:|---:|---|")
    for r in rows:
        print(f"| `{r['algo']}` | {r['updates']} | {r['s_per_update']} | {r['before']:.2f} → {r['after']:.2f} | "
              f"{r['gain']:+.2f} | {r['kl']:.2f} | {r['beta_start']:g} → {r['beta_end']:.3g} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": args.seconds, "threads": args.threads, "load": [load_start,
                                                                                         os.getloadavg()],
                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
