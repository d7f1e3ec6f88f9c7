"""Multi-turn RLHF on the tiny kit: a policy learns to remember what the user said two turns ago.

The demo task (``rlhf_gym.tiny_dialogues``): the user says they loved or hated a film; the assistant answers; the
user asks for a review. The review is scored by how well its VADER sentiment matches the opinion stated earlier, so
it can only be solved by reading the history. Steps:

1. supervised fine-tuning of the tiny review model on short dialogues in TRL's ``messages`` format (loss on the
   assistant's turns only), from careless demonstrators whose reviews mostly ignore the opinion, so the SFT policy
   scores about 0.1;
2. RLOO on whole conversations through ``rlhf_gym/OpinionDialogue-v0`` (``Dialogue-v0`` with the task's settings;
   β > 0, KL summed per conversation);
3. the control: the same training where the policy sees only the user's last message (``history="last"``).

Run it (the tiny kit is built and cached on first use, a minute or two)::

    python examples/multiturn_demo.py            # full settings
    python examples/multiturn_demo.py --quick    # CI settings (also: RLHF_GYM_QUICK=1)

The last line printed is a JSON summary: the true score of fresh conversations for the SFT policy, the trained
policy and the control, and the trained policy's KL to the SFT policy (nats per conversation).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gymnasium as gym
import torch

import rlhf_gym
from rlhf_gym.episodes import evaluate_episodes
from rlhf_gym.policy import Policy
from rlhf_gym.tiny import build_tiny_kit
from rlhf_gym.tiny_dialogues import dialogue_corpus, dialogue_scenarios

SFT = {"batch_size": 16, "learning_rate": 1e-3, "max_prompt_tokens": 64, "max_completion_tokens": 64}
RLOO = {"num_prompts": 8, "group_size": 4, "learning_rate": 2e-4, "beta": 0.05}
EVAL_EPISODES = 128


def dialogue_env(policy: Policy, history: str, seed: int = 0) -> gym.Env:
    """The demo task (``rlhf_gym/OpinionDialogue-v0``); ``history="last"`` shows the policy only the last user
    message. ``seed`` picks the scenarios (training and evaluation use different ones)."""
    return gym.make("rlhf_gym/OpinionDialogue-v0", tokenizer=policy.tokenizer, vocab_size=policy.vocab_size,
                    history=history, scenarios=dialogue_scenarios(256, seed=seed))


def fine_tune(kit_path: str, steps: int, seed: int) -> Policy:
    """The SFT policy: the review model taught the dialogue format on ``messages`` records."""
    policy = Policy.from_pretrained(kit_path)
    sft = rlhf_gym.make_algorithm("sft", policy=policy, dataset=dialogue_corpus(800, seed=seed), seed=seed, **SFT)
    sft.learn(steps, progress_bar=False)
    return policy


def train(sft_state: dict, kit_path: str, history: str, updates: int, seed: int) -> Policy:
    """RLOO on whole conversations, from the SFT weights, seeing the history or only the last message."""
    policy = Policy.from_pretrained(kit_path)
    policy.load_state_dict(sft_state)
    algo = rlhf_gym.make_algorithm("rloo", env=dialogue_env(policy, history), policy=policy, seed=seed, **RLOO)
    algo.learn(updates, progress_bar=False)
    return policy


def show(title: str, result: dict) -> None:
    conversation = result["samples"][0]["messages"]
    print(f"\n{title}: mean true score {result['mean']:+.3f}" + (f", KL {result['kl']:.2f}" if "kl" in result else ""))
    for message in conversation:
        print(f"  {message['role']:>9}: {message['content']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("RLHF_GYM_QUICK")),
                        help="CI settings (fewer updates)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    sft_steps, updates, episodes = (100, 15, EVAL_EPISODES) if args.quick else (150, 15, 4 * EVAL_EPISODES)
    started = time.perf_counter()
    kit = build_tiny_kit()

    sft = fine_tune(kit.path, sft_steps, args.seed)
    sft_state = {k: v.clone() for k, v in sft.state_dict().items()}
    full_eval, last_eval = dialogue_env(sft, "all", seed=1), dialogue_env(sft, "last", seed=1)
    before = evaluate_episodes(sft, full_eval, num_episodes=episodes, seed=7)
    show("SFT policy", before)

    trained = train(sft_state, kit.path, "all", updates, args.seed)
    after = evaluate_episodes(trained, full_eval, num_episodes=episodes, seed=7, reference=sft)
    show(f"RLOO, {updates} updates, whole conversation", after)

    control = train(sft_state, kit.path, "last", updates, args.seed)
    blind = evaluate_episodes(control, last_eval, num_episodes=episodes, seed=7, reference=sft)
    show(f"RLOO, {updates} updates, last user message only (control)", blind)

    print(json.dumps({"sft": round(before["mean"], 4), "trained": round(after["mean"], 4),
                      "control": round(blind["mean"], 4), "kl": round(after["kl"], 3),
                      "control_kl": round(blind["kl"], 3), "episodes": episodes, "updates": updates,
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
