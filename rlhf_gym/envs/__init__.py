"""Gymnasium environments for text generation. ``register_envs()`` runs on ``import rlhf_gym``."""

from __future__ import annotations

import gymnasium as gym

TEXTGEN_ID = "rlhf_gym/TextGen-v0"
COMPLETION_ID = "rlhf_gym/Completion-v0"
DIALOGUE_ID = "rlhf_gym/Dialogue-v0"
OPINION_DIALOGUE_ID = "rlhf_gym/OpinionDialogue-v0"


def register_envs() -> None:
    """Register the environment ids with Gymnasium (idempotent)."""
    if TEXTGEN_ID not in gym.registry:
        gym.register(
            id=TEXTGEN_ID,
            entry_point="rlhf_gym.envs.textgen:TextGenEnv",
            vector_entry_point="rlhf_gym.envs.textgen:TextGenVectorEnv",
        )
    if COMPLETION_ID not in gym.registry:
        gym.register(
            id=COMPLETION_ID,
            entry_point="rlhf_gym.envs.completion:CompletionEnv",
            vector_entry_point="rlhf_gym.envs.completion:CompletionVectorEnv",
        )
    if DIALOGUE_ID not in gym.registry:
        gym.register(
            id=DIALOGUE_ID,
            entry_point="rlhf_gym.envs.dialogue:DialogueEnv",
            vector_entry_point="rlhf_gym.envs.dialogue:DialogueVectorEnv",
        )
    if OPINION_DIALOGUE_ID not in gym.registry:  # the tiny kit's multi-turn demo task
        gym.register(
            id=OPINION_DIALOGUE_ID,
            entry_point="rlhf_gym.tiny_dialogues:make_opinion_dialogue",
            vector_entry_point="rlhf_gym.tiny_dialogues:make_opinion_dialogue_vec",
        )
