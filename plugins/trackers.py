"""The built-in experiment trackers (``csv``, ``tensorboard``, ``wandb``, ``mlflow``, ``trackio``), registered
through the same hook a third-party tracker uses."""

from __future__ import annotations

import rlhf_gym
from rlhf_gym.trackers import BUILTIN_TRACKERS


@rlhf_gym.hookimpl
def register_trackers(register):
    for tracker in BUILTIN_TRACKERS:
        register(tracker.name, tracker)
