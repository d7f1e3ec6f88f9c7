"""Token-level env step rate: ``rlhf_gym/TextGen-v0``'s native vector env with a trivial reward.

No model is involved: actions are random token ids drawn up front, so the figure is the env's own cost per
transition (window shift, bookkeeping, and at each episode's end decoding the completion and one reward call for
every episode that ended). Reported in transitions (single-env steps) per second, for the vector env with several
batch sizes and for one plain ``gym.make`` env.

Run: ``python bench/bench_env.py [--steps 7] [--json out.json]``.
"""

from __future__ import annotations

import time
from typing import Any

import common
import numpy as np

SIDES = ["vector"]
NUM_ENVS = (16, 64, 256)
VECTOR_STEPS = 4 * common.NEW_TOKENS  # per timed chunk: four episodes in every sub-environment


def zero_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """The trivial reward: 0 for everything."""
    return [0.0] * len(completions)


def env_kwargs(setup: common.BenchSetup) -> dict[str, Any]:
    return dict(tokenizer=setup.tokenizer, prompts=setup.prompts, reward=zero_reward,
                max_prompt_tokens=common.PROMPT_TOKENS, max_new_tokens=common.NEW_TOKENS, vocab_size=common.VOCAB)


def vector_rate(setup: common.BenchSetup, num_envs: int, chunks: int, warmup: int) -> list[float]:
    """Transitions/s of ``chunks`` timed chunks of ``VECTOR_STEPS`` vector steps each."""
    import gymnasium as gym

    import rlhf_gym  # noqa: F401

    envs = gym.make_vec("rlhf_gym/TextGen-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                        **env_kwargs(setup))
    envs.reset(seed=common.SEED)
    rng = np.random.default_rng(common.SEED)
    actions = rng.integers(2, common.VOCAB, size=(VECTOR_STEPS, num_envs), dtype=np.int64)
    rates = []
    for chunk in range(warmup + chunks):
        start = time.perf_counter()
        for row in actions:
            envs.step(row)
        elapsed = time.perf_counter() - start
        if chunk >= warmup:
            rates.append(VECTOR_STEPS * num_envs / elapsed)
    envs.close()
    return rates


def single_rate(setup: common.BenchSetup, steps: int = 2000) -> float:
    """Transitions/s of one ``gym.make`` env (with its default wrappers), resetting when episodes end."""
    import gymnasium as gym

    env = gym.make("rlhf_gym/TextGen-v0", **env_kwargs(setup))
    env.reset(seed=common.SEED)
    actions = np.random.default_rng(common.SEED).integers(2, common.VOCAB, size=steps)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES)
    setup = common.build_setup()
    sides = {f"vector_{n}": common.summary(vector_rate(setup, n, args.steps, args.warmup)) for n in NUM_ENVS}
    sides["single"] = common.summary([single_rate(setup)])
    best = max(NUM_ENVS, key=lambda n: sides[f"vector_{n}"]["median"])
    common.emit({"bench": "env", "unit": "transitions/s", "sides": sides, "best_num_envs": best,
                 "peak_rss_mb": common.peak_rss_mb()}, args.json)


if __name__ == "__main__":
    main()
