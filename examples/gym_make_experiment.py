"""A Gymnasium experiment with rlhf_gym: a random agent, a pre-trained policy and an RL-trained policy, side by side.

Everything goes through ``gym.make``: the one-step ``rlhf_gym/Completion-v0`` env (the action is a whole
completion) and the token-level ``rlhf_gym/TextGen-v0`` env (the action is one token). The reward is the VADER
sentiment of the completion, so "better" means "a more positive movie review".

Run it (the tiny kit is built and cached on first use, a minute or two)::

    python examples/gym_make_experiment.py            # full settings (about a minute after the kit exists)
    python examples/gym_make_experiment.py --quick    # CI settings (also: RLHF_GYM_QUICK=1)

The last line printed is a JSON summary of the mean rewards.
"""

from __future__ import annotations

import argparse
import json
import os

import gymnasium as gym
import numpy as np
import torch

import rlhf_gym
from rlhf_gym.policy import Policy
from rlhf_gym.rollout import evaluate
from rlhf_gym.tiny import build_tiny_kit, review_prompts

MAX_NEW_TOKENS = 20


def random_agent_on_completion_env(env: gym.Env, episodes: int, seed: int) -> float:
    """Mean reward of uniformly random completions: the classic Gym random-agent baseline."""
    env.action_space.seed(seed)
    rewards = []
    obs, info = env.reset(seed=seed)
    for _ in range(episodes):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        obs, info = env.reset()  # a one-step episode: every step ends it
    return float(np.mean(rewards))


@torch.no_grad()
def token_by_token_episodes(env: gym.Env, policy: Policy | None, episodes: int, seed: int) -> tuple[float, str]:
    """Play TextGen-v0 episodes one token at a time; ``policy=None`` picks random tokens.

    A policy reads its next-token logits at the last position of the left-padded observation window. (For
    training, rlhf_gym's algorithms sample whole batches with the KV cache instead of this step loop.)
    """
    generator = torch.Generator().manual_seed(seed)
    env.action_space.seed(seed)
    rewards, last_text = [], ""
    obs, info = env.reset(seed=seed)
    for _ in range(episodes):
        done = False
        while not done:
            if policy is None:
                action = env.action_space.sample()
            else:
                ids = torch.as_tensor(obs["input_ids"]).unsqueeze(0)
                mask = torch.as_tensor(obs["attention_mask"]).unsqueeze(0)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, -1]
                action = int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator))
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        rewards.append(reward)
        last_text = info["prompt"] + info["completion"]
        obs, info = env.reset()
    return float(np.mean(rewards)), last_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CI settings (also RLHF_GYM_QUICK=1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("RLHF_GYM_QUICK") == "1"
    updates, samples, episodes = (20, 128, 3) if quick else (60, 256, 16)

    kit = build_tiny_kit(progress=not quick)
    prompts = review_prompts()
    env_kwargs = dict(tokenizer=kit.path, model=kit.path, prompts=prompts, reward="sentiment",
                      max_new_tokens=MAX_NEW_TOKENS, max_prompt_tokens=16)

    # 1. Completion-v0: one step = one whole completion.
    env = gym.make("rlhf_gym/Completion-v0", **env_kwargs)
    random_mean = random_agent_on_completion_env(env, samples, args.seed)
    print(f"random agent       mean sentiment {random_mean:+.3f}  (uniform token ids)")

    policy = Policy.from_pretrained(kit.path, value_head=False)
    before = evaluate(policy, env, num_samples=samples, seed=args.seed + 1)
    print(f"pre-trained policy mean sentiment {before['mean']:+.3f}  e.g. {before['samples'][0]['prompt']}"
          f"{before['samples'][0]['completion']}")

    # Any registered algorithm trains against the same env; RLOO samples 4 completions per prompt.
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=policy, group_size=4, num_prompts=8,
                                   learning_rate=2e-4, beta=0.05, seed=args.seed)
    algo.learn(updates, progress_bar=not quick)
    after = evaluate(policy, env, num_samples=samples, seed=args.seed + 1)
    print(f"RLOO-trained       mean sentiment {after['mean']:+.3f}  after {updates} updates, e.g. "
          f"{after['samples'][0]['prompt']}{after['samples'][0]['completion']}")

    # 2. TextGen-v0: one step = one token, the interface token-level agents (stable-baselines3) use.
    textgen = gym.make("rlhf_gym/TextGen-v0", **env_kwargs)
    tg_random, _ = token_by_token_episodes(textgen, None, episodes, args.seed)
    tg_policy, text = token_by_token_episodes(textgen, policy, episodes, args.seed)
    print(f"TextGen-v0: random tokens {tg_random:+.3f}, trained policy {tg_policy:+.3f}  e.g. {text!r}")
    env.close()
    textgen.close()

    print(json.dumps({"random": random_mean, "pretrained": before["mean"], "trained": after["mean"],
                      "pretrained_stderr": before["std"] / np.sqrt(samples),
                      "trained_stderr": after["std"] / np.sqrt(samples), "updates": updates,
                      "textgen_random": tg_random, "textgen_trained": tg_policy, "kl": algo.last_metrics["objective/kl"]}))


if __name__ == "__main__":
    main()
