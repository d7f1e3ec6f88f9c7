"""An rlhf_gym reward plugin in one module: rewards completions that use given keywords.

Install it with ``pip install ./examples/rlhf_keyword_plugin`` and use it by name::

    env = gym.make("rlhf_gym/Completion-v0", tokenizer=..., prompts=[...],
                   reward="keyword-count", reward_kwargs={"keywords": ["great", "fun"]})
"""

from __future__ import annotations

import re

import rlhf_gym


class KeywordCount(rlhf_gym.RewardProvider):
    """Fraction of the given keywords that appear in the completion (whole words, case-insensitive)."""

    def __init__(self, keywords: list[str] = ("great",)):
        if not keywords:
            raise ValueError("keyword-count needs at least one keyword, e.g. keywords=['great']")
        self.patterns = [re.compile(rf"\b{re.escape(k)}\b", re.IGNORECASE) for k in keywords]

    def score(self, prompts, completions, **row):
        return [sum(bool(p.search(c)) for p in self.patterns) / len(self.patterns) for c in completions]


@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("keyword-count", KeywordCount)
