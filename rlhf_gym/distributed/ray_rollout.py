"""Ray rollout workers: N actors, each holding a copy of the policy and a :class:`~rlhf_gym.rollout.RolloutWorker`
over the same env setup, sample the shards of every batch.

How a batch is made (:class:`RayRolloutGroup`, on the learner):

1. The learner's own :class:`RolloutWorker` draws the batch's prompt indices from its prompt stream (the same order
   an in-process run walks) and splits them, group-aligned, into one contiguous shard per actor.
2. Each actor is told the weight version to sample with and the object-store reference of those weights (the
   learner's ``state_dict`` as CPU arrays, ``ray.put`` after its last update); it loads them only when its version
   differs.
3. Each call carries the worker's sampler RNG and provider state and returns them advanced with the shard, so the
   learner always holds every worker's position: an actor killed and restarted by Ray re-runs the retried call
   from the same state and gives the same shard (nothing lost, nothing counted twice), and checkpoints hold it.
4. The shards are concatenated in actor order. With one actor the learner's generator is the actor's, so a Ray run
   with one worker samples exactly what the in-process run samples.

Off-policy samples are allowed only up to ``max_policy_lag`` updates: weights are published again whenever the
batch being made would otherwise be older than that, and every batch reports ``perf/policy_version`` and
``perf/policy_lag``. ``async_rollouts`` launches the next batch as soon as one is taken, so it samples while the
learner trains (lag 1 in steady state).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlhf_gym.distributed.ray_reward import check_replicable, load_provider_state, provider_state
from rlhf_gym.distributed.ray_runtime import actor_device, actor_options, connect, require_ray
from rlhf_gym.errors import ConfigError
from rlhf_gym.rollout import Rollout, RolloutWorker

ray = require_ray()

#: seed offset between rollout workers' sampling streams (rank 0 uses the run's seed itself)
RANK_SEED_STRIDE = 1_000_003


class RolloutActor:
    """One Ray rollout worker: a :class:`RolloutWorker` over a copy of the learner's env setup and policy."""

    def __init__(self, setup: Any, policy: Any, *, rank: int, num_prompts: int, group_size: int, seed: int,
                 temperature: float, top_k: int, top_p: float, num_gpus: float = 0.0) -> None:
        from rlhf_gym.envs.completion import CompletionVectorEnv

        self.rank = rank
        self.policy = policy.to(actor_device(num_gpus)).eval()
        if rank > 0 and callable(getattr(setup.provider, "reset_rng", None)):
            # A noisy annotator copied to several workers must not repeat one noise stream in every shard.
            setup.provider.reset_rng(np.random.SeedSequence([seed, rank]))
        env = CompletionVectorEnv(num_envs=num_prompts * group_size, group_size=group_size, setup=setup)
        self.worker = RolloutWorker(env, self.policy, num_prompts=num_prompts, group_size=group_size,
                                    seed=seed + RANK_SEED_STRIDE * rank, temperature=temperature, top_k=top_k,
                                    top_p=top_p)
        self.version = -1

    def initial_state(self) -> tuple[torch.Tensor, Any]:
        """(sampler RNG state, provider state) of a fresh worker of this rank."""
        return self.worker.generator.get_state(), provider_state(self.worker.provider)

    def sample(self, version: int, weights: list[Any], prompt_index: np.ndarray, rng_state: torch.Tensor,
               reward_state: Any, return_logprobs: bool, score: bool) -> dict[str, Any]:
        """The shard for ``prompt_index``, sampled with weights ``version`` from the given RNG/provider state.

        ``weights`` is ``[ObjectRef]`` (wrapped so Ray passes the reference, not the tensors): fetched only when
        this actor holds another version. Same arguments, same answer: safe to retry on a restarted actor.
        """
        if version != self.version:
            load_published_state(self.policy, ray.get(weights[0]))
            self.version = version
        self.worker.generator.set_state(rng_state)
        load_provider_state(self.worker.provider, reward_state)
        self.worker.point_at(prompt_index)
        with torch.no_grad():
            rollout = self.worker.collect(return_logprobs=return_logprobs, score=score)
        return {"rollout": rollout.to("cpu"), "rng": self.worker.generator.get_state(),
                "reward_state": provider_state(self.worker.provider), "version": version}

    def pid(self) -> int:
        return os.getpid()


RolloutActorRemote = ray.remote(RolloutActor)


def publishable_state(policy: torch.nn.Module) -> dict[str, Any]:
    """The policy's weights as CPU numpy arrays, ready for ``ray.put``: Ray stores numpy arrays without pickling
    their bytes and an actor reads them in place from shared memory (half the time of torch tensors here).
    Dtypes numpy lacks (bfloat16) travel as same-width integers and a note of their dtype."""
    arrays, dtypes = {}, {}
    for name, value in policy.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if value.dtype == torch.bfloat16:
            dtypes[name] = "bfloat16"
            value = value.view(torch.int16)
        arrays[name] = value.numpy()
    return {"arrays": arrays, "dtypes": dtypes}


def load_published_state(module: torch.nn.Module, published: dict[str, Any]) -> None:
    """Copy what :func:`publishable_state` made into ``module``'s weights."""
    with warnings.catch_warnings():  # the arrays are read-only views of the object store; they are only read
        warnings.simplefilter("ignore", UserWarning)
        state = {name: torch.from_numpy(array) for name, array in published["arrays"].items()}
    for name, dtype in published["dtypes"].items():
        state[name] = state[name].view(getattr(torch, dtype))
    module.load_state_dict(state)


def policy_for_actors(policy: Any) -> Any:
    """An object-store reference to a CPU copy of ``policy`` without its frozen reference model."""
    reference = policy.__dict__.get("_reference")
    policy.__dict__["_reference"] = None
    try:
        if next(policy.parameters()).device.type == "cpu":
            return ray.put(policy)  # serialised right here, before the reference is put back
        return ray.put(copy.deepcopy(policy).to("cpu"))
    finally:
        policy.__dict__["_reference"] = reference


def shard_sizes(num_prompts: int, workers: int) -> list[int]:
    """Prompt groups per worker: as even as possible, the larger shards first."""
    if workers < 1:
        raise ConfigError(f"rollout_workers must be 0 (sample in this process) or a number of Ray actors, got {workers}")
    if num_prompts < workers:
        raise ConfigError(f"num_prompts={num_prompts} cannot be split over rollout_workers={workers}: every worker "
                          f"needs at least one prompt; lower rollout_workers or raise num_prompts")
    return [len(part) for part in np.array_split(np.arange(num_prompts), workers)]


def check_resources(workers: int, num_cpus: float, num_gpus: float, address: str | None) -> None:
    """Refuse a group the cluster cannot hold now (its actors would wait forever, e.g. a reward server already took
    the CPU); on a cluster joined by address, which may add nodes on demand, only warn."""
    free = ray.available_resources()
    short = [f"{need:g} {name} ({workers} × {each:g}) but the cluster has {free.get(name, 0):g} free"
             for name, each in (("CPU", num_cpus), ("GPU", num_gpus))
             for need in [workers * each] if need > free.get(name, 0) + 1e-9]
    if not short:
        return
    message = (f"rollout_workers={workers} need " + "; ".join(short) + ": lower rollout_workers, "
               "rollout_num_cpus (e.g. 0.5) or rollout_num_gpus, or add nodes")
    if address in (None, "", "local"):
        raise ConfigError(message)
    warnings.warn(message + " (waiting for the cluster to grow)", stacklevel=3)


@dataclass
class _InFlight:
    """A batch launched on the actors and not yet taken."""

    calls: list[Any]
    version: int
    prompt_index: np.ndarray
    kind: tuple[bool, bool]


class RayRolloutGroup:
    """A rollout source backed by Ray actors, with :class:`RolloutWorker`'s interface (see the module docstring).

    Args:
        local: the learner's in-process worker: its prompt stream feeds every batch, and (without async) its
            generator and provider are worker 0's, as in an in-process run.
        config: an online algorithm's config (``rollout_workers``, ``ray_address``, ``async_rollouts``,
            ``max_policy_lag``, ``rollout_num_cpus``, ``rollout_num_gpus`` and the sampling settings).
        version: callable giving the learner's current weight version (its update count).
    """

    def __init__(self, local: RolloutWorker, config: Any, version: Callable[[], int] | None = None) -> None:
        workers = int(config.rollout_workers)
        self.max_policy_lag = int(config.max_policy_lag)
        self.asynchronous = bool(config.async_rollouts)
        if self.max_policy_lag < 0:
            raise ConfigError(f"max_policy_lag must be ≥ 0, got {self.max_policy_lag}")
        if self.asynchronous and self.max_policy_lag < 1:
            raise ConfigError("async_rollouts samples the next batch with the weights of the update before it: set "
                              "max_policy_lag ≥ 1 to allow that one-update lag")
        check_replicable(local.provider, workers)
        self.local = local
        self.version = version or (lambda: 0)
        groups = shard_sizes(config.num_prompts, workers)
        self.sizes = [g * local.group_size for g in groups]
        connect(config.ray_address)
        check_resources(workers, config.rollout_num_cpus, config.rollout_num_gpus, config.ray_address)
        # Held for the group's life: Ray restarts a killed actor from these same constructor arguments.
        self._setup_ref = setup_ref = ray.put(local.env.setup)
        self._policy_ref = policy_ref = policy_for_actors(local.policy)
        options = actor_options(config.rollout_num_cpus, config.rollout_num_gpus)
        self.actors = [
            RolloutActorRemote.options(**options).remote(
                setup_ref, policy_ref, rank=rank, num_prompts=g, group_size=local.group_size, seed=config.seed,
                temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                num_gpus=config.rollout_num_gpus)
            for rank, g in enumerate(groups)
        ]
        initial = ray.get([a.initial_state.remote() for a in self.actors])
        self._rng = [rng for rng, _ in initial]
        self._reward_state = [state for _, state in initial]
        self._published: tuple[int, Any] | None = None
        self._in_flight: _InFlight | None = None
        self._ready: tuple[Rollout, int, tuple[bool, bool]] | None = None

    # -- RolloutWorker's interface ------------------------------------------------------------------------------
    @property
    def generator(self) -> torch.Generator:
        return self.local.generator

    @property
    def provider(self) -> Any:
        return self.local.provider

    @property
    def env(self) -> Any:
        return self.local.env

    @property
    def policy(self) -> Any:
        return self.local.policy

    @property
    def group_size(self) -> int:
        return self.local.group_size

    @property
    def max_new_tokens(self) -> int:
        return self.local.max_new_tokens

    @property
    def num_workers(self) -> int:
        return len(self.actors)

    def collect(self, return_logprobs: bool = False, score: bool = True) -> Rollout:
        """The next batch: the prefetched one in async mode, else sampled now with the current weights."""
        kind = (return_logprobs, score)
        start = time.perf_counter()
        if self._ready is None and self._in_flight is None:
            self._in_flight = self._launch(self.version(), kind)
        if self._ready is None:
            self._ready = self._gather()
        rollout, version, made_as = self._ready
        self._ready = None
        if made_as != kind:
            raise RuntimeError(f"the prefetched batch was made with (return_logprobs, score)={made_as}, but "
                               f"collect asked for {kind}; call collect the same way every update")
        lag = self.version() - version
        if not 0 <= lag <= self.max_policy_lag:
            raise RuntimeError(f"batch sampled with weights {version} while the learner is at {self.version()} "
                               f"(lag {lag} > max_policy_lag={self.max_policy_lag})")
        if self.asynchronous:
            self._in_flight = self._launch(self.version() + 1, kind)
        rollout.metrics = {**rollout.metrics, "perf/policy_version": float(version), "perf/policy_lag": float(lag),
                           "timing/rollout_wait": time.perf_counter() - start}
        return rollout.to(next(self.local.policy.parameters()).device)

    # -- launching and gathering --------------------------------------------------------------------------------
    def _weights_for(self, consumed_at: int) -> tuple[int, Any]:
        """The published weights to sample a batch the learner takes at update ``consumed_at``: the current ones
        unless the last published are at most ``max_policy_lag`` updates older than that."""
        if self._published is None or consumed_at - self._published[0] > self.max_policy_lag:
            self._published = (self.version(), ray.put(publishable_state(self.local.policy)))
        return self._published

    def _rank_rng(self, rank: int) -> torch.Tensor:
        return self.local.generator.get_state() if rank == 0 and not self.asynchronous else self._rng[rank]

    def _rank_reward_state(self, rank: int) -> Any:
        if rank == 0 and not self.asynchronous:
            return provider_state(self.local.provider)
        return self._reward_state[rank]

    def _launch(self, consumed_at: int, kind: tuple[bool, bool]) -> _InFlight:
        version, ref = self._weights_for(consumed_at)
        index = self.local.next_prompts()
        shards = np.split(index, np.cumsum(self.sizes)[:-1])
        calls = [actor.sample.remote(version, [ref], shard, self._rank_rng(r), self._rank_reward_state(r), *kind)
                 for r, (actor, shard) in enumerate(zip(self.actors, shards))]
        return _InFlight(calls, version, index, kind)

    def _gather(self) -> tuple[Rollout, int, tuple[bool, bool]]:
        """Wait for the batch in flight; take each worker's advanced state; check the prompt accounting."""
        flight = self._in_flight
        assert flight is not None
        results = ray.get(flight.calls)
        self._in_flight = None
        for rank, result in enumerate(results):
            if result["version"] != flight.version:
                raise RuntimeError(f"rollout worker {rank} sampled weights {result['version']}, not {flight.version}")
            self._rng[rank], self._reward_state[rank] = result["rng"], result["reward_state"]
            if rank == 0 and not self.asynchronous:
                self.local.generator.set_state(result["rng"])
                load_provider_state(self.local.provider, result["reward_state"])
        rollout = Rollout.concat([r["rollout"] for r in results])
        sampled = np.asarray(rollout.extras["prompt_index"], dtype=np.int64)
        if not np.array_equal(sampled, flight.prompt_index):
            raise RuntimeError("rollout workers returned other prompts than they were given")
        return rollout, flight.version, flight.kind

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The in-process worker's state (prompt stream; worker 0 without async) plus every Ray worker's RNG and
        provider state, the published weight version and, in async mode, the prefetched batch itself."""
        if self._in_flight is not None:
            self._ready = self._gather()
        tensors, values = self.local.state()
        for rank, rng in enumerate(self._rng):
            tensors[f"ray/worker{rank}/sampler_rng"] = rng
        ray_values: dict[str, Any] = {
            "workers": len(self.actors), "reward_state": self._reward_state,
            "weights_version": None if self._published is None else self._published[0],
        }
        if self._ready is not None:
            rollout, version, kind = self._ready
            batch_tensors, batch_values = rollout_to_state(rollout)
            tensors.update({f"ray/ready/{k}": v for k, v in batch_tensors.items()})
            ray_values["ready"] = {**batch_values, "version": version, "kind": list(kind)}
        values["ray"] = ray_values
        return tensors, values

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        """Restore :meth:`state`; an in-process checkpoint (no Ray part) restarts the Ray workers' streams."""
        self.local.load_state(tensors, values)
        self._in_flight = self._ready = None
        saved = values.get("ray")
        if not saved:
            return
        for rank in range(min(len(self.actors), int(saved["workers"]))):
            self._rng[rank] = tensors[f"ray/worker{rank}/sampler_rng"]
            self._reward_state[rank] = saved["reward_state"][rank]
        if "ready" in saved:
            ready = saved["ready"]
            batch = {k[len("ray/ready/"):]: v for k, v in tensors.items() if k.startswith("ray/ready/")}
            self._ready = (rollout_from_state(batch, ready), int(ready["version"]), tuple(ready["kind"]))

    def worker_pids(self) -> list[int]:
        """Process ids of the rollout actors (they change when Ray restarts one)."""
        return [int(p) for p in ray.get([a.pid.remote() for a in self.actors])]

    def close(self) -> None:
        """Stop the actors and drop the published weights."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        self._published = self._in_flight = self._setup_ref = self._policy_ref = None


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def rollout_to_state(rollout: Rollout) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able values) of a batch, for checkpoints."""
    tensors = {name: getattr(rollout, name).detach().cpu().contiguous()
               for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "scores", "score_mask",
                            "logprobs") if getattr(rollout, name) is not None}
    values = {"prompts": list(rollout.prompts), "completions": list(rollout.completions),
              "group_size": rollout.group_size, "timing": dict(rollout.timing), "metrics": dict(rollout.metrics),
              "extras": {k: [_plain(v) for v in vs] for k, vs in rollout.extras.items()}}
    return tensors, values


def rollout_from_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> Rollout:
    """The batch :func:`rollout_to_state` saved."""
    return Rollout(prompts=list(values["prompts"]), completions=list(values["completions"]),
                   group_size=int(values["group_size"]), extras={k: list(v) for k, v in values["extras"].items()},
                   timing=dict(values["timing"]), metrics=dict(values["metrics"]), logprobs=tensors.get("logprobs"),
                   **{k: v for k, v in tensors.items() if k != "logprobs"})
