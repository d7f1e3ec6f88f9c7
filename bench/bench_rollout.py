"""Rollout throughput: sampling through ``Completion-v0``'s vector env vs raw HF ``model.generate()``.

Each step samples 16 completions of up to 32 tokens for 16 prompts of 16 tokens from the same model object.

* ``env``: :meth:`rlhf_gym.rollout.RolloutWorker.collect` — the policy samples for the prompts the vector env
  observes, the env decodes the completions, makes one reward call and serves the next batch;
* ``policy_generate``: :meth:`rlhf_gym.Policy.generate` alone (the sampler without the env), to split the cost;
* ``hf_generate``: ``model.generate(do_sample=True, top_k=0, max_new_tokens=32)`` on pre-tokenised prompts.

Tokens counted are the completion tokens up to and including the first EOS. Reported: tokens/s per step.

Run: ``python bench/bench_rollout.py [--steps 7] [--warmup 2] [--json out.json] [--side NAME]``.
"""

from __future__ import annotations

from collections.abc import Callable

import common
import torch

SIDES = ["env", "policy_generate", "hf_generate"]


def build_sides(setup: common.BenchSetup, names: list[str]) -> dict[str, Callable[[], int]]:
    """Step functions returning the number of completion tokens they sampled."""
    from rlhf_gym.rollout import RolloutWorker

    policy = setup.load_policy()
    policy.eval()
    model = setup.load_model().eval()  # the same weights as loaded: no rlhf_gym kernels on the reference side
    tok = setup.tokenizer
    ids, mask = setup.prompt_batch(setup.prompts)
    generator = torch.Generator().manual_seed(common.SEED)
    cursor = {"hf": 0, "policy": 0}

    def next_rows(key: str) -> torch.Tensor:
        rows = (torch.arange(common.BATCH) + cursor[key]) % len(setup.prompts)
        cursor[key] = (cursor[key] + common.BATCH) % len(setup.prompts)
        return rows

    sides: dict[str, Callable[[], int]] = {}
    if "env" in names:
        worker = RolloutWorker(setup.completion_env(common.BATCH), policy, num_prompts=common.BATCH,
                               seed=common.SEED)
        sides["env"] = lambda: worker.collect().num_tokens
    if "policy_generate" in names:

        def policy_generate() -> int:
            rows = next_rows("policy")
            gen = policy.generate(ids[rows], mask[rows], common.NEW_TOKENS, generator=generator)
            return int(gen.completion_mask.sum())

        sides["policy_generate"] = policy_generate
    if "hf_generate" in names:

        def hf_generate() -> int:
            rows = next_rows("hf")
            with torch.no_grad():
                out = model.generate(input_ids=ids[rows], attention_mask=mask[rows], do_sample=True, top_k=0,
                                     top_p=1.0, temperature=1.0, max_new_tokens=common.NEW_TOKENS,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            completion = out[:, ids.shape[1]:]
            is_eos = completion == tok.eos_token_id
            lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion.shape[1])
            return int(lengths.sum())

        sides["hf_generate"] = hf_generate
    return sides


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES)
    threads = common.configure_torch(args.threads)
    setup = common.build_setup()
    common.warm_imports()
    baseline = common.rss_mb()
    names = [args.side] if args.side else SIDES
    sides = build_sides(setup, names)
    tokens: dict[str, list[int]] = {name: [] for name in sides}

    def counting(name: str, step: Callable[[], int]) -> Callable[[], None]:
        return lambda: tokens[name].append(step())

    times = common.interleave({n: counting(n, s) for n, s in sides.items()}, args.warmup, args.steps)
    if args.side:
        common.emit({"bench": "rollout", **common.side_memory(args.side, baseline)}, args.json)
        return
    rates = {n: [tk / t for tk, t in zip(tokens[n][args.warmup:], times[n])] for n in sides}
    per_token = common.generation_flops(common.BATCH, common.PROMPT_TOKENS, common.NEW_TOKENS) / (
        common.BATCH * common.NEW_TOKENS)
    common.emit({"bench": "rollout", "threads": threads, "unit": "tokens/s", "flops_per_token": per_token,
                 "sides": {n: common.summary(r) for n, r in rates.items()},
                 "step_s": {n: common.summary(t) for n, t in times.items()}, "raw": rates}, args.json)


if __name__ == "__main__":
    main()
