"""Built-in plugin: the ``live-human`` reward provider (a person rates or compares, via the preference store)."""

from __future__ import annotations

import rlhf_gym
from rlhf_gym.live import LiveHuman


@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("live-human", LiveHuman)
