"""Launching data-parallel learners for ``rlhf-gym train``: ``--learners N`` spawns N processes of the same
command joined in one torch.distributed group; under ``torchrun`` the launcher's group is joined instead. Each CUDA
learner gets its own GPU.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rlhf_gym.errors import ConfigError


def learner_device(opts: Any, local_rank: int) -> None:
    """Give each CUDA learner its own GPU (``cuda`` / ``auto`` become ``cuda:<local rank>``)."""
    import torch

    device = str(opts.algo_config.get("device", "cpu"))
    if torch.cuda.is_available() and device in ("cuda", "auto"):
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def spawn_learners(args: argparse.Namespace, extra: list[str], opts: Any) -> int:
    """``--learners N``: run this same command in N processes joined in one torch.distributed group."""
    import torch

    from rlhf_gym.devices import resolve_device
    from rlhf_gym.distributed import data_parallel as dp

    device = resolve_device(opts.algo_config.get("device", "cpu"))
    if device.type == "cuda" and opts.learners > torch.cuda.device_count():
        raise ConfigError(f"--learners {opts.learners} on CUDA needs a GPU per learner; this machine has "
                          f"{torch.cuda.device_count()}")
    if opts.out is None and not args.resume:  # every learner must agree on the run directory
        from rlhf_gym.run_logger import default_run_dir

        args.out = str(default_run_dir(opts.algo))
    plain = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    dp.spawn(_learner_main, opts.learners, plain, extra, backend=dp.default_backend(device))
    return 0


def _learner_main(rank: int, world: int, plain: dict[str, Any], extra: list[str]) -> None:
    from rlhf_gym.train import run

    run(argparse.Namespace(**plain), extra)


def join_launcher_group(opts: Any) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) join its process group, one GPU per local rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    from rlhf_gym.devices import resolve_device
    from rlhf_gym.distributed import data_parallel as dp

    learner_device(opts, int(os.environ.get("LOCAL_RANK", "0")))
    dp.init_from_env(resolve_device(opts.algo_config.get("device", "cpu")))
