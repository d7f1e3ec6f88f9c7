"""PPO step: rlhf_gym's ``ppo`` algorithm, absolute time per step, per phase, and peak memory.

TRL has no PPO trainer outside its experimental package, so there is no reference side: this benchmark reports
the step time split into phases (sampling, scoring, the old-log-prob/value and reference forwards, the update
epochs) and checks memory against a budget: peak RSS above the process's post-import baseline must stay within
2 × (policy weights + optimizer state + the activations one minibatch keeps for backward). The activations are
measured, not guessed: the bytes of every distinct tensor autograd saves during one minibatch forward.

Setup: 16 prompts × 1 completion of up to 32 tokens, 4 epochs × minibatches of 8, β = 0.05, lr 1e-6, clip 1.0.

Run: ``python bench/bench_ppo.py [--steps 7] [--warmup 2] [--json out.json]``.
"""

from __future__ import annotations

import time
from typing import Any

import common
import torch

SIDES = ["rlhf_gym"]
MINIBATCH = 8


def build_ppo(setup: common.BenchSetup) -> Any:
    import rlhf_gym

    return rlhf_gym.make_algorithm(
        "ppo", env=setup.completion_env(common.BATCH), policy=setup.load_policy(value_head=True),
        num_prompts=common.BATCH, learning_rate=common.LEARNING_RATE, max_grad_norm=common.MAX_GRAD_NORM,
        minibatch_size=MINIBATCH, seed=common.SEED,
    )


def activation_bytes(algo: Any) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one PPO minibatch forward (and loss)."""
    from rlhf_gym.losses import ppo_policy_loss, ppo_value_loss

    policy = algo.policy
    batch = algo.collect(with_values=True)
    r = batch.rollout
    idx = torch.arange(MINIBATCH)
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and t.device.type == "cpu":
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in policy.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = policy(r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx], r.completion_mask[idx],
                     with_values=True, with_entropy=True)
        mask = r.completion_mask[idx]
        pg, _ = ppo_policy_loss(out.logprobs, batch.logprobs[idx], torch.ones(MINIBATCH), mask, 0.2)
        vf, _ = ppo_value_loss(out.values, batch.values[idx], torch.zeros_like(out.values), mask, 0.2)
        loss = pg + 0.1 * vf
    loss.backward()
    policy.zero_grad(set_to_none=True)
    return sum(n for (ptr, _), n in seen.items() if ptr not in params)


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES)
    threads = common.configure_torch(args.threads)
    setup = common.build_setup()
    common.warm_imports()
    baseline = common.rss_mb()
    algo = build_ppo(setup)
    phases: dict[str, list[float]] = {"generation": [], "scoring": [], "forward": [], "update": [], "step": []}
    collect = algo.collect

    def timed_collect(*a: Any, **kw: Any) -> Any:
        batch = collect(*a, **kw)
        for key in ("generation", "scoring", "forward"):
            phases[key].append(batch.rollout.timing.get(key, 0.0))
        return batch

    algo.collect = timed_collect
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        algo.train_step()
        phases["step"].append(time.perf_counter() - start)
        phases["update"].append(phases["step"][-1] - sum(phases[k][-1] for k in ("generation", "scoring", "forward")))
        if i < args.warmup:
            for values in phases.values():
                values.pop()
    peak = common.peak_rss_mb()
    algo.collect = collect
    n_params = sum(p.numel() for p in algo.policy.parameters())
    weights = sum(p.numel() * p.element_size() for p in algo.policy.parameters())
    optimizer = sum(t.numel() * t.element_size() for s in algo.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.dim() > 0)
    activations = activation_bytes(algo)
    budget_mb = (weights + optimizer + activations) / 2**20
    above = peak - baseline
    context = common.PROMPT_TOKENS + common.NEW_TOKENS
    epochs = int(algo.config.ppo_epochs)
    flops = (common.generation_flops(common.BATCH, common.PROMPT_TOKENS, common.NEW_TOKENS)
             + 2 * common.forward_flops(common.BATCH, context, common.NEW_TOKENS)  # old log-probs/values, reference
             + epochs * common.training_flops(common.BATCH, context, common.NEW_TOKENS))
    common.emit({
        "bench": "ppo", "threads": threads, "unit": "s/step", "flops_per_step": flops, "flops_sides": ["step"],
        "sides": {k: common.summary(v) for k, v in phases.items()},
        "memory": {"peak_rss_mb": peak, "baseline_rss_mb": baseline, "peak_above_baseline_mb": above,
                   "parameters": n_params, "weights_mb": weights / 2**20, "optimizer_state_mb": optimizer / 2**20,
                   "minibatch_activations_mb": activations / 2**20, "budget_mb": budget_mb,
                   "ratio_to_budget": above / budget_mb},
        "raw": phases,
    }, args.json)


if __name__ == "__main__":
    main()
