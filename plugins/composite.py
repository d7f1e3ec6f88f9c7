"""Built-in plugin: the weighted ``composite`` reward provider."""

from __future__ import annotations

import rlhf_gym
from rlhf_gym.providers import CompositeReward


@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("composite", CompositeReward)
