"""stable-baselines3 on TextGen-v0 (``sb3-ppo``) vs the native batched ``rloo``, and the SB3 vector env's step rate.

Both training sides start from the fixed setup's weights (``common.build_setup``: 4×256 GPT-2, 2048-token head,
16-token prompts, up to 32 new tokens, the trivial length reward, β = 0.05, lr 1e-6) and do the same amount of
sampling per step: 16 completions of up to 32 tokens.

* ``sb3-ppo`` is ``make_algorithm("sb3-ppo", n_envs=16, n_steps=32, batch_size=512, n_epochs=1)``: 512 token
  transitions per step, each sampled by a forward over its whole context (SB3 has no KV cache) plus a reference
  forward for the KL penalty, then one gradient step over the 512 transitions — every one re-evaluated over its
  full context again.
* ``rloo`` is ``make_algorithm("rloo", num_prompts=4, group_size=4)``: KV-cached batched sampling, one batched
  forward for the reference log-probs, one policy forward + backward over the 16 sequences.

Reported per side: step time (median of interleaved steps), generated tokens per step, tokens/s overall and during
sampling, and the memory a stored transition (token) costs in the side's rollout storage. The env part times
random actions with a zero reward through ``make_sb3_env`` (``native``: rlhf_gym's batched vector env behind SB3's
``VecEnv`` API; ``dummy``: SB3's ``DummyVecEnv`` over single envs) — no model involved.

Run: ``python bench/bench_sb3.py [--steps 3] [--warmup 1] [--json out.json] [--side sb3-ppo|rloo]``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import common
import numpy as np
import torch

SIDES = ["sb3-ppo", "rloo"]
ENV_SIZES = (16, 64)
ENV_STEPS = 4 * common.NEW_TOKENS


def zero_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """The trivial reward for the env timing: 0 for everything."""
    return [0.0] * len(completions)


def env_kwargs(setup: common.BenchSetup, reward: Any = common.length_reward) -> dict[str, Any]:
    return dict(tokenizer=setup.tokenizer, prompts=setup.prompts, reward=reward,
                max_prompt_tokens=common.PROMPT_TOKENS, max_new_tokens=common.NEW_TOKENS, vocab_size=common.VOCAB)


# -- training sides -------------------------------------------------------------------------------------------


def build_sb3(setup: common.BenchSetup) -> Any:
    import gymnasium as gym

    import rlhf_gym

    env = gym.make("rlhf_gym/TextGen-v0", **env_kwargs(setup))
    return rlhf_gym.make_algorithm(
        "sb3-ppo", env=env, policy=setup.load_policy(value_head=True), n_envs=common.BATCH, n_steps=common.NEW_TOKENS,
        batch_size=common.BATCH * common.NEW_TOKENS, n_epochs=1, learning_rate=common.LEARNING_RATE,
        beta=common.RLOO_BETA, seed=common.SEED,
    )


def build_rloo(setup: common.BenchSetup) -> Any:
    import rlhf_gym

    return rlhf_gym.make_algorithm(
        "rloo", env=setup.completion_env(common.BATCH), policy=setup.load_policy(), num_prompts=common.BATCH // common.GROUP,
        group_size=common.GROUP, learning_rate=common.LEARNING_RATE, beta=common.RLOO_BETA, seed=common.SEED,
    )


def sb3_bytes_per_transition(algo: Any) -> float:
    """Bytes SB3's rollout buffer holds per stored transition (observations, action, reward, value, …)."""
    buffer = algo.model.rollout_buffer
    arrays = [*buffer.observations.values(), buffer.actions, buffer.rewards, buffer.returns, buffer.episode_starts,
              buffer.values, buffer.log_probs, buffer.advantages]
    return sum(a.nbytes for a in arrays) / (buffer.buffer_size * buffer.n_envs)


def rloo_bytes_per_token(algo: Any) -> float:
    """Bytes a native rollout batch holds per generated token (prompt and completion ids, masks, log-probs,
    scores)."""
    rollout = algo.rollouts.collect(return_logprobs=True)
    tensors = [v for v in vars(rollout).values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / max(rollout.num_tokens, 1)


def step_fn(algo: Any, records: list[dict[str, float]]) -> Any:
    def step() -> None:
        metrics = algo.train_step()
        algo.num_updates += 1
        records.append(metrics)

    return step


def tokens_per_step(name: str, metrics: dict[str, float]) -> float:
    if name == "sb3-ppo":
        return float(common.BATCH * common.NEW_TOKENS)  # one transition is one generated token
    return metrics["completions/mean_length"] * common.BATCH


def training(setup: common.BenchSetup, names: list[str], warmup: int, steps: int) -> dict[str, Any]:
    builders = {"sb3-ppo": build_sb3, "rloo": build_rloo}
    algos = {name: builders[name](setup) for name in names}
    records: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    times = common.interleave({name: step_fn(algos[name], records[name]) for name in names}, warmup, steps)
    out: dict[str, Any] = {}
    for name in names:
        timed = records[name][warmup:]
        step_s = float(np.median(times[name]))
        tokens = float(np.median([tokens_per_step(name, m) for m in timed]))
        generation_s = float(np.median([m["timing/generation"] for m in timed]))
        out[name] = {
            "step_s": common.summary(times[name]),
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s,
            "sampling_tokens_per_s": tokens / generation_s,
            "generation_s": generation_s,
            "update_s": float(np.median([m["timing/update"] for m in timed])),
            "bytes_per_transition": sb3_bytes_per_transition(algos[name]) if name == "sb3-ppo"
            else rloo_bytes_per_token(algos[name]),
        }
    return out


# -- env step rate ----------------------------------------------------------------------------------------------


def env_rate(setup: common.BenchSetup, vectorization: str, n_envs: int, chunks: int, warmup: int) -> list[float]:
    """Transitions/s through ``make_sb3_env`` with random token actions and a zero reward."""
    from rlhf_gym.sb3 import make_sb3_env

    env = make_sb3_env(n_envs, vectorization=vectorization, seed=common.SEED, **env_kwargs(setup, zero_reward))
    env.reset()
    actions = np.random.default_rng(common.SEED).integers(2, common.VOCAB, size=(ENV_STEPS, n_envs), dtype=np.int64)
    rates = []
    for chunk in range(warmup + chunks):
        start = time.perf_counter()
        for row in actions:
            env.step(row)
        if chunk >= warmup:
            rates.append(ENV_STEPS * n_envs / (time.perf_counter() - start))
    env.close()
    return rates


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES, default_steps=3, default_warmup=1)
    threads = common.configure_torch(args.threads)
    setup = common.build_setup()
    baseline = common.rss_mb()
    payload: dict[str, Any] = {"bench": "sb3", "threads": threads, "load_average_1m": os.getloadavg()[0]}
    if args.side:
        payload["sides"] = training(setup, [args.side], args.warmup, args.steps)
        payload["memory"] = common.side_memory(args.side, baseline)
    else:
        sides = training(setup, SIDES, args.warmup, args.steps)
        sides["ratio_rloo_over_sb3_tokens_per_s"] = sides["rloo"]["tokens_per_s"] / sides["sb3-ppo"]["tokens_per_s"]
        payload["sides"] = sides
        payload["env_transitions_per_s"] = {
            f"{vec}_{n}": common.summary(env_rate(setup, vec, n, args.steps, args.warmup))
            for vec in ("native", "dummy") for n in ENV_SIZES
        }
    payload["load_average_1m_end"] = os.getloadavg()[0]
    common.emit(payload, args.json)


if __name__ == "__main__":
    main()
