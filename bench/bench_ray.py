"""Ray rollout workers: sampling throughput with 1 and 2 Ray actors against the in-process rollout worker.

Each step is what an update asks of its rollout source: new weights are published (a fresh version every step, so
every actor loads them from the object store) and one batch of 16 completions of up to 32 tokens is sampled and
scored through ``Completion-v0``:

* ``in_process``: :meth:`rlhf_gym.rollout.RolloutWorker.collect` in this process;
* ``ray_1``: :class:`rlhf_gym.distributed.ray_rollout.RayRolloutGroup` with one actor (the whole batch);
* ``ray_2``: the same with two actors (8 prompts each), side by side on the machine's cores.

Reported: tokens/s per step; the overhead of Ray mode at one worker (``1 - ray_1 / in_process``, target ≤ 10%) and
the scaling efficiency of two workers (``ray_2 / (2 × ray_1)``). Each actor and this process use one torch thread
(Ray gives an actor ``num_cpus`` threads), so one worker and the in-process side do the same work on one core.
Ray starts its worker processes at niceness 15; on a machine other work shares that alone slows the actors against
everything else, so this benchmark starts its cluster with ``RAY_worker_niceness=0`` (set it to override) and
measures what Ray mode itself costs.

Run: ``python bench/bench_ray.py [--steps 7] [--warmup 2] [--json out.json]`` (needs the ``ray`` extra).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from types import SimpleNamespace

import common

SIDES = ["in_process", "ray_1", "ray_2"]


def group_config(workers: int) -> SimpleNamespace:
    return SimpleNamespace(num_prompts=common.BATCH, group_size=1, seed=common.SEED, temperature=1.0, top_k=0,
                           top_p=1.0, rollout_workers=workers, ray_address=None, async_rollouts=False,
                           max_policy_lag=0, rollout_num_cpus=1.0, rollout_num_gpus=0.0)


def build_sides(setup: common.BenchSetup, names: list[str]) -> tuple[dict[str, Callable[[], int]], list[Callable]]:
    """Step functions returning the completion tokens they sampled, and what to close afterwards."""
    from rlhf_gym.distributed.ray_rollout import RayRolloutGroup
    from rlhf_gym.rollout import RolloutWorker

    sides: dict[str, Callable[[], int]] = {}
    closers: list[Callable] = []
    for name in names:
        policy = setup.load_policy().eval()
        worker = RolloutWorker(setup.completion_env(common.BATCH), policy, num_prompts=common.BATCH, seed=common.SEED)
        if name == "in_process":
            sides[name] = lambda worker=worker: worker.collect(return_logprobs=True).num_tokens
            continue
        version = {"value": 0}
        group = RayRolloutGroup(worker, group_config(int(name[-1])), version=lambda v=version: v["value"])
        closers.append(group.close)

        def step(group=group, version=version) -> int:
            version["value"] += 1  # as after an update: every actor loads new weights before sampling
            return group.collect(return_logprobs=True).num_tokens

        sides[name] = step
    return sides, closers


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES)
    threads = common.configure_torch(1)
    os.environ.setdefault("RAY_worker_niceness", "0")  # read by the cluster ray.init starts below
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(common)  # the env's reward function travels to the actors by value
    # Three logical CPUs: the 1- and 2-worker groups are alive together, but the sides run one at a time.
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=200 * 2**20,
             logging_level="error")
    setup = common.build_setup()
    common.warm_imports()
    names = [args.side] if args.side else SIDES
    sides, closers = build_sides(setup, names)
    tokens: dict[str, list[int]] = {name: [] for name in sides}

    def counting(name: str, step: Callable[[], int]) -> Callable[[], None]:
        return lambda: tokens[name].append(step())

    try:
        times = common.interleave({n: counting(n, s) for n, s in sides.items()}, args.warmup, args.steps)
    finally:
        for close in closers:
            close()
        ray.shutdown()
    rates = {n: [tk / t for tk, t in zip(tokens[n][args.warmup:], times[n])] for n in sides}
    payload = {"bench": "ray", "threads": threads, "unit": "tokens/s",
               "sides": {n: common.summary(r) for n, r in rates.items()},
               "step_s": {n: common.summary(t) for n, t in times.items()}, "raw": rates}
    if {"in_process", "ray_1"} <= rates.keys():
        payload["overhead_1_worker"] = 1 - statistics.median(
            [r / b for r, b in zip(rates["ray_1"], rates["in_process"])])
    if {"ray_1", "ray_2"} <= rates.keys():
        payload["scaling_efficiency_2_workers"] = statistics.median(
            [two / (2 * one) for two, one in zip(rates["ray_2"], rates["ray_1"])])
    common.emit(payload, args.json)


if __name__ == "__main__":
    main()
