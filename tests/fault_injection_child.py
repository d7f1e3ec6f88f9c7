"""The training process that tests/test_fault_injection_training.py kills: imported once by a forkserver (which
pays for torch and transformers once), then forked per run.

A run stops itself at one named point (a phase of a checkpoint save, or inside an update right after the optimizer
stepped), reports it in a status file and waits there to be SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch
import transformers  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
from transformers.models.gpt2 import modeling_gpt2  # noqa: F401

import rlhf_gym  # noqa: F401
import rlhf_gym.cli
import rlhf_gym.online  # noqa: F401
import rlhf_gym.train  # noqa: F401
from rlhf_gym import checkpoint
from rlhf_gym.algorithm import Algorithm

with contextlib.suppress(ImportError):
    import matplotlib.pyplot  # noqa: F401
    import rlhf_gym_plugins.reinforce  # noqa: F401


def train(argv: list[str], kill_at: tuple[str, int] | None, status: str, log: str) -> None:
    """Run ``rlhf-gym argv``; on reaching ``kill_at`` (point, n-th time) write ``status`` and wait to be killed.
    The process exits with the CLI's exit code."""
    torch.set_num_threads(1)
    os.environ["RLHF_GYM_NO_PROGRESS"] = "1"
    counts: dict[str, int] = {}

    def reached(point: str) -> None:
        counts[point] = counts.get(point, 0) + 1
        if kill_at is not None and (point, counts[point]) == tuple(kill_at):
            Path(status).write_text(f"{point} {counts[point]}")
            time.sleep(120)

    checkpoint.phase_hook = reached
    original = Algorithm.clip_and_step

    def clip_and_step(self, loss=None):
        norm = original(self, loss)
        reached("optimizer-stepped")  # inside an update: the weights moved, the update count not yet
        return norm

    Algorithm.clip_and_step = clip_and_step  # type: ignore[method-assign]
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = rlhf_gym.cli.main(argv)
        sys.stdout.flush()
    os._exit(code)
