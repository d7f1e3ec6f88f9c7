"""An rlhf_gym environment package in one module: two tasks, each a Gymnasium id.

Install it with ``pip install ./examples/rlhf_dialogue_tasks``; after ``import rlhf_gym`` the ids work with
``gym.make`` (only the tokenizer and sizes are the caller's; scenarios, user and rewards come with the task) and
with ``rlhf-gym train --env ID``::

    env = gym.make("dialogue_tasks/MovieChat-v0", tokenizer=policy.tokenizer)

- ``dialogue_tasks/MovieChat-v0``: a conversation about a film with a scripted movie-goer; each reply is rewarded
  for warm words, and a reply that answers the user's recommendation question with a verdict solves the task.
- ``dialogue_tasks/UpbeatReview-v0``: one-turn review openers rewarded for upbeat words (a ``Completion-v0``
  task, so every rlhf_gym algorithm trains on it as it is).
It also registers a user simulator, ``impatient-user``, that leaves after a short reply.
"""

from __future__ import annotations

import re

import rlhf_gym
from rlhf_gym.envs.completion import CompletionEnv, CompletionVectorEnv
from rlhf_gym.envs.dialogue import dialogue_task

WARM_WORDS = ("great", "fun", "love", "loved", "wonderful", "enjoy", "enjoyed", "good", "best", "beautiful")
_WARM = re.compile(r"\b(" + "|".join(WARM_WORDS) + r")\b", re.IGNORECASE)
_VERDICT = re.compile(r"\b(yes|no|recommend|skip)\b", re.IGNORECASE)

SCENARIOS = [
    {"system": "You are a friendly film critic.", "user": "I just saw the new space movie. What did you think?",
     "follow_ups": ["Would you recommend it to a friend?", "Thanks! Anything else worth seeing?"]},
    {"system": "You are a friendly film critic.", "user": "Tell me about the comedy everyone is talking about.",
     "follow_ups": ["Would you recommend it to a friend?", "Which actor stood out?"]},
    {"system": "You are a friendly film critic.", "user": "Is the new thriller any good?",
     "follow_ups": ["Would you recommend it to a friend?"]},
]
REVIEW_OPENERS = ["The movie was", "I watched this film and", "This film is", "The acting in this movie"]


class WarmReplies(rlhf_gym.RewardProvider):
    """Warm words per reply (capped at 3, scaled to [0, 1]); a verdict after the recommendation question solves."""

    def score_with_info(self, prompts, completions, messages=None, **row):
        scores = [min(len(_WARM.findall(c)), 3) / 3 for c in completions]
        solved = []
        for conversation, completion in zip(messages or [[]] * len(completions), completions):
            asked = [m["content"] for m in conversation if m["role"] == "user"]
            solved.append(bool(asked and "recommend" in asked[-1] and _VERDICT.search(completion)))
        return scores, {"solved": solved}

    def score(self, prompts, completions, **row):
        return self.score_with_info(prompts, completions, **row)[0]


def upbeat_words(prompts, completions, **kwargs):
    """TRL-style reward: warm words in the completion, capped at 3, scaled to [0, 1]."""
    return [min(len(_WARM.findall(c)), 3) / 3 for c in completions]


def impatient_user(conversations, **row):
    """Leaves after a reply of fewer than three words; otherwise asks for more."""
    out = []
    for conversation in conversations:
        last = conversation[-1]["content"] if conversation and conversation[-1]["role"] == "assistant" else ""
        out.append(None if len(last.split()) < 3 else "Go on.")
    return out


def make_impatient_user():
    """A user who leaves after a reply of fewer than three words."""
    return impatient_user


def upbeat_review(**kwargs):
    """``Completion-v0`` with the task's prompts and reward; the caller gives the tokenizer and sizes."""
    return CompletionEnv(**{"prompts": REVIEW_OPENERS, "reward": upbeat_words, **kwargs})


def _upbeat_review_vec(num_envs=1, group_size=1, **kwargs):
    kwargs.pop("render_mode", None)
    return CompletionVectorEnv(num_envs=num_envs, group_size=group_size,
                               **{"prompts": REVIEW_OPENERS, "reward": upbeat_words, **kwargs})


upbeat_review.vector_entry_point = _upbeat_review_vec


@rlhf_gym.hookimpl
def register_environments(register):
    register("dialogue_tasks/MovieChat-v0", dialogue_task("A film chat with a scripted movie-goer; warm replies "
                                                         "score, a verdict on recommending solves it.",
                                                         scenarios=SCENARIOS, user="scripted",
                                                         reward=WarmReplies(), max_turns=3, max_context_tokens=256))
    register("dialogue_tasks/UpbeatReview-v0", upbeat_review)


@rlhf_gym.hookimpl
def register_user_simulators(register):
    register("impatient-user", make_impatient_user)
