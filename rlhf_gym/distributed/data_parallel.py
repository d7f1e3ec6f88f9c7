"""Data-parallel learners on torch.distributed: N processes, each updating on its shard of the batch.

Every learner holds the whole policy, samples (or reads) its own shard of each batch, and runs the algorithm's
ordinary ``train_step``. What makes N shards add up to one update on the global batch lives here and in the
shared helpers that call it, never in the algorithm plugins:

* **Batch statistics are global.** While :func:`batch_reductions` is active (the base class wraps every
  ``train_step`` in it), :func:`rlhf_gym.advantages.masked_sum` / ``masked_mean`` / ``masked_var`` over a whole
  batch all-reduce their sums and token counts, so a token-mean loss, advantage whitening and reward moments see
  the global batch. Their *value* is the global one on every rank; their *gradient* is this rank's share,
  scaled by the world size, so that
* **gradients are averaged** (:func:`all_reduce_gradients`, DDP's convention) in the optimizer step, before
  clipping and the loss scaler's inf check; the result equals the single-process gradient on the global batch.
* **One writer.** Only rank 0 writes metrics, samples and checkpoints (:func:`is_writer`); logged metrics are
  averaged over the learners first (:func:`average_metrics`).
* **Same seeds.** Parameters start equal (broadcast from rank 0); rank 0 samples from the prompt stream and
  generator a single process would use, rank r > 0 from its own stream derived from ``(seed, r)``
  (:func:`shard_seed`), so a run is reproducible for a given seed and learner count.

Without an initialised process group (or with one process) every function here is a no-op, so the
single-process path runs exactly the code it always ran.

Launching: ``rlhf-gym train --learners N`` spawns N processes on this machine with
:func:`torch.multiprocessing.spawn` (gloo on CPU, NCCL on CUDA, one GPU per rank); under ``torchrun`` (or any
launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) :func:`init_from_env` joins the group
the launcher describes, across nodes too.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from rlhf_gym.errors import ConfigError

__all__ = [
    "active",
    "all_reduce_gradients",
    "all_reduce_sum",
    "any_rank",
    "average_metrics",
    "batch_reductions",
    "broadcast",
    "broadcast_parameters",
    "free_port",
    "global_count",
    "global_sum",
    "init_from_env",
    "init_process_group",
    "is_writer",
    "rank",
    "reducing",
    "shard",
    "shard_offset",
    "shard_seed",
    "shard_size",
    "spawn",
    "world_size",
]

_reducing = False


# -- the process group -------------------------------------------------------------------------------------------
def active() -> bool:
    """Whether this process is one of several data-parallel learners."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This learner's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of learners (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes logs and checkpoints: rank 0, or the only process."""
    return rank() == 0


def default_backend(device: torch.device | str) -> str:
    """NCCL for CUDA learners, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port nobody listens on right now (for the rendezvous of spawned learners)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_process_group(rank: int, world_size: int, *, port: int, backend: str = "gloo",
                       address: str = "127.0.0.1") -> None:
    """Join a group of ``world_size`` learners on this machine that meet at ``address:port``; the process's
    environment then describes it as torchrun's would (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)."""
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size)


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Join the group a launcher such as ``torchrun`` describes in ``RANK``/``WORLD_SIZE``; returns whether there
    is one (False: a plain single process, nothing done)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun, or use "
                          f"`rlhf-gym train --learners N` on one machine")
    dist.init_process_group(default_backend(device))
    return True


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any, backend: str = "gloo") -> None:
    """Run ``fn(rank, world_size, *args)`` in ``nprocs`` fresh processes joined in one group, and wait for all.

    A learner that raises makes this raise too (after the others are stopped)."""
    if nprocs < 1:
        raise ConfigError(f"learners must be ≥ 1, got {nprocs}")
    import torch.multiprocessing as mp

    port = free_port()
    mp.spawn(_spawned, args=(nprocs, port, backend, fn, args), nprocs=nprocs, join=True)


def _spawned(rank: int, nprocs: int, port: int, backend: str, fn: Callable[..., Any], args: tuple) -> None:
    init_process_group(rank, nprocs, port=port, backend=backend)
    try:
        fn(rank, nprocs, *args)
        # Leave together: a learner that tears the group down while another still works on it (rank 0 evaluating
        # and writing the run, say) can abort in the transport's threads.
        dist.barrier()
    finally:
        dist.destroy_process_group()


# -- batch statistics over all learners --------------------------------------------------------------------------
@contextlib.contextmanager
def batch_reductions() -> Iterator[None]:
    """Make whole-batch masked statistics global while active (see the module docstring); a no-op alone."""
    global _reducing
    previous, _reducing = _reducing, active()
    try:
        yield
    finally:
        _reducing = previous


def reducing() -> bool:
    """Whether batch statistics are being reduced over the learners right now."""
    return _reducing


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over the learners (a detached copy)."""
    out = tensor.detach().clone()
    if active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def global_sum(local: torch.Tensor) -> torch.Tensor:
    """``local`` summed over the learners when reducing: the global value, with ``world_size ×`` this rank's
    gradient, so averaging the gradients over the learners gives the gradient of the global sum."""
    if not _reducing:
        return local
    total = all_reduce_sum(local)
    if not local.requires_grad:
        return total
    return total + world_size() * (local - local.detach())


def global_count(n: int | torch.Tensor) -> int:
    """``n`` summed over the learners when reducing (e.g. a token or sample count)."""
    if not _reducing:
        return int(n)
    return int(all_reduce_sum(torch.as_tensor(n, dtype=torch.float64, device=_collective_device())).item())


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any learner (every learner gets the same answer)."""
    if not active():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor(float(flag), device=_collective_device())).item() > 0)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- parameters and gradients ------------------------------------------------------------------------------------
def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every learner's parameters and buffers equal to rank 0's."""
    if not active():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():  # integer/bool buffers are constants (masks, position ids)
                dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the learners, one flat all-reduce per device and dtype.

    A parameter with no gradient on this learner counts as a zero gradient (and gets one), so every learner
    takes part in the same collective."""
    if not active():
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    scale = 1.0 / world_size()
    for (_, _), members in sorted(groups.items(), key=lambda item: (str(item[0][0]), str(item[0][1]))):
        flat = torch.cat([p.grad.reshape(-1) for p in members])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.mul_(scale)
        offset = 0
        for p in members:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


# -- shards, seeds, metrics --------------------------------------------------------------------------------------
def shard(items: torch.Tensor, *, what: str = "batch") -> torch.Tensor:
    """This learner's contiguous block of a global batch of indices (or rows): the first ``len % N`` learners take
    one more. Every learner must get at least one item."""
    if not active():
        return items
    n, world, r = len(items), world_size(), rank()
    if n < world:
        raise ConfigError(f"a {what} of {n} cannot be shared by {world} learners; make it at least {world}")
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return items[start : start + base + (1 if r < extra else 0)]


def shard_offset(n: int) -> tuple[int, int]:
    """``(where this learner's n rows start in the global batch, the global batch size)`` when reducing, else
    ``(0, n)``."""
    if not _reducing:
        return 0, n
    counts = torch.zeros(world_size(), dtype=torch.float64, device=_collective_device())
    counts[rank()] = n
    counts = all_reduce_sum(counts).long().tolist()
    return sum(counts[: rank()]), sum(counts)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every learner (the tensor itself without a process group)."""
    if not active():
        return tensor
    out = tensor.detach().clone().to(_collective_device())
    dist.broadcast(out, src=src)
    return out.to(tensor.device)


def shard_size(n: int, *, what: str = "num_prompts") -> int:
    """How many of ``n`` items per batch this learner takes (see :func:`shard`)."""
    return len(shard(torch.arange(n), what=what))


def shard_seed(seed: int) -> int:
    """The seed of this learner's own sampling streams: ``seed`` itself on rank 0, a seed derived from
    ``(seed, rank)`` elsewhere."""
    if rank() == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank()]).generate_state(1, dtype=np.uint32)[0])


def average_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar metrics averaged over the learners (a key missing or non-finite on a learner is averaged over the
    others); timing and throughput keys are summed where that is what they mean (``perf/``)."""
    if not active():
        return dict(metrics)
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, {k: float(v) for k, v in metrics.items() if _is_number(v)})
    out = dict(metrics)
    for key in {k for m in gathered for k in m}:
        values = [m[key] for m in gathered if key in m and math.isfinite(m[key])]
        if not values:
            continue
        out[key] = sum(values) if key.startswith("perf/") else sum(values) / len(values)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or (
        isinstance(value, torch.Tensor) and value.numel() == 1)
