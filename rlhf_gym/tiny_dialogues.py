"""Short dialogues for the tiny kit, and the multi-turn demo task built on them: "remember what the user said".

In the first turn the user says they loved or hated a film; the assistant answers; in a later turn the user asks
for a review. The review is judged by how well its VADER sentiment matches the opinion stated turns earlier, so a
policy that only sees the last user message cannot do better than chance: the information is in the history.

The supervised dialogues teach the format (acknowledge the opinion, then write a review when asked) from careless
demonstrators: only about a third of their reviews agree with the stated opinion, the rest are the review corpus's
own mix whatever the user said. A policy fine-tuned on them agrees a little more often than chance, and
reinforcement learning has something real to learn: to write the review the opinion asks for, every time.

Example:
    >>> rows = dialogue_corpus(2, seed=1)
    >>> [m["role"] for m in rows[0]["messages"]]
    ['user', 'assistant', 'user', 'assistant']
    >>> stated_opinion([{"role": "user", "content": "Honestly, I hated the sequel."}])
    -1
    >>> opinion_match(["I loved the movie."], ["It was wonderful."])[0] > 0.5
    True
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_gym.ground_truth import Sentiment
from rlhf_gym.providers import RewardProvider, Score
from rlhf_gym.tiny import review_corpus

#: the things a user has an opinion about (subjects the review BPE encodes compactly)
FILMS = ("the movie", "the film", "this film", "this movie", "the sequel")
#: how a user states an opinion in the first turn; ``{film}`` is filled in
LOVED = ("I loved {film}.", "I just saw {film} and I loved it.", "Honestly, I loved {film}.",
         "I really loved {film}.")
HATED = ("I hated {film}.", "I just saw {film} and I hated it.", "Honestly, I hated {film}.",
         "I really hated {film}.")
#: the assistant's first answer: it acknowledges the opinion (words the review BPE encodes in few tokens)
ACKNOWLEDGEMENTS = {1: ("So you loved it.", "I see, you loved it."), -1: ("So you hated it.", "I see, you hated it.")}
#: the later request for a review, which says nothing about the opinion
REQUESTS = ("Write a short review of it.", "Please write a review of it.", "Can you review it for me?")
_OPINION_WORDS = {"loved": 1, "hated": -1}
#: how often the demonstrators of :func:`dialogue_corpus` write a review that agrees with the stated opinion
DEMONSTRATOR_AGREEMENT = 0.35
#: how often they open the review by agreeing with the user ("I loved it too.")
DEMONSTRATOR_ECHO = 0.25
_SENTIMENT = Sentiment()
#: the kit's chat template cut down to the last user message: the control in which the policy cannot see the
#: history (``history="last"``)
LAST_MESSAGE_TEMPLATE = (
    "{%- set said = messages | selectattr('role', 'equalto', 'user') | list -%}"
    "{%- if said %}{{ 'User: ' + said[-1]['content'] + '\\n' }}{% endif -%}"
    "{%- if add_generation_prompt %}{{ 'Assistant:' }}{% endif -%}"
)
HISTORIES = ("all", "last")


def stated_opinion(messages: Sequence[Mapping[str, Any]]) -> int:
    """+1 if the user's first stated opinion is "loved", -1 if "hated", 0 if the user stated none."""
    for message in messages:
        if message.get("role") != "user":
            continue
        for word in str(message.get("content", "")).lower().replace(".", " ").split():
            if word in _OPINION_WORDS:
                return _OPINION_WORDS[word]
    return 0


def _opening(rng: random.Random, opinion: int) -> str:
    return rng.choice(LOVED if opinion > 0 else HATED).format(film=rng.choice(FILMS))


def dialogue_scenarios(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` demo-task scenarios: ``{"prompt": opening user message, "follow_ups": [review request],
    "opinion": ±1}``, balanced between the two opinions.

    The same ``(n, seed)`` always gives the same scenarios.
    """
    if n < 0:
        raise ValueError(f"dialogue_scenarios needs n >= 0, got {n}")
    rng = random.Random(f"scenarios-{seed}")
    out = []
    for i in range(n):
        opinion = 1 if i % 2 == 0 else -1
        out.append({"prompt": _opening(rng, opinion), "follow_ups": [rng.choice(REQUESTS)], "opinion": opinion})
    return out


def dialogue_corpus(n: int, seed: int = 0, agreement: float = DEMONSTRATOR_AGREEMENT) -> list[dict[str, Any]]:
    """``n`` short supervised dialogues in TRL's ``messages`` format (plus the stated ``opinion``).

    user: opinion → assistant: acknowledgement → user: review request → assistant: a review from the kit's review
    corpus. With probability ``agreement`` the demonstrator writes a review of the stated opinion's sentiment,
    otherwise one drawn from the corpus's own mix whatever the opinion; with probability ``DEMONSTRATOR_ECHO`` the
    review opens by agreeing with the user ("I hated it too.").
    """
    if n < 0:
        raise ValueError(f"dialogue_corpus needs n >= 0, got {n}")
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"agreement is a probability, got {agreement}")
    rng = random.Random(f"dialogues-{seed}")
    pool = review_corpus(4 * n + 64, seed=seed + 104729)
    by_label = {label: [r for r in pool if r["label"] == label] for label in ("positive", "negative")}
    out = []
    for i in range(n):
        opinion = rng.choice((1, -1))
        if rng.random() < agreement:
            row = rng.choice(by_label["positive" if opinion > 0 else "negative"])
        else:
            row = pool[i]
        review = (row["prompt"] + row["completion"]).strip()
        if rng.random() < DEMONSTRATOR_ECHO:
            review = f"I {'loved' if opinion > 0 else 'hated'} it too. {review}"
        out.append({"messages": [
            {"role": "user", "content": _opening(rng, opinion)},
            {"role": "assistant", "content": rng.choice(ACKNOWLEDGEMENTS[opinion])},
            {"role": "user", "content": rng.choice(REQUESTS)},
            {"role": "assistant", "content": review},
        ], "opinion": opinion})
    return out


def opinion_match(histories: Sequence[str], reviews: Sequence[str], opinions: Sequence[int] | None = None) -> list[float]:
    """The demo's ground truth: VADER compound of each review times the opinion (+1/-1) the user stated.

    Args:
        histories: the conversation before each review (text: the opinion is looked up in it when ``opinions``
            is not given; a history with none scores 0).
        reviews: the assistant's reviews.
        opinions: the stated opinions, when the caller knows them.
    """
    if opinions is None:
        opinions = [stated_opinion([{"role": "user", "content": h}]) for h in histories]
    if not reviews:
        return []
    compound = _SENTIMENT.values(list(histories), list(reviews))
    return [float(c) * int(o) for c, o in zip(compound, opinions, strict=True)]


def opinion_dialogue_settings(history: str = "all", num_scenarios: int = 256, seed: int = 0) -> dict[str, Any]:
    """``Dialogue-v0`` keyword arguments of the demo task (add ``tokenizer=``; any may be overridden).

    The user opens with an opinion, the scripted user asks for a review after the assistant's first answer and
    leaves after its second; the conversation is scored once, at the end, by :class:`OpinionMatchReward`.

    Args:
        history: ``"all"``: the policy sees the whole conversation (the kit's chat template); ``"last"``: only the
            user's last message (the control that cannot know the opinion).
        num_scenarios: how many scenarios (balanced between loved and hated).
        seed: seed of the scenarios.
    """
    if history not in HISTORIES:
        raise ValueError(f"history must be one of {HISTORIES}, got {history!r}")
    return {"scenarios": dialogue_scenarios(num_scenarios, seed), "user": "scripted", "reward": OpinionMatchReward(),
            "reward_mode": "final", "max_turns": 3, "max_context_tokens": 96, "max_new_tokens": 24,
            "chat_template": LAST_MESSAGE_TEMPLATE if history == "last" else None}


def make_opinion_dialogue(history: str = "all", **kwargs: Any) -> Any:
    """``rlhf_gym/OpinionDialogue-v0``: ``Dialogue-v0`` with the demo task's settings (add ``tokenizer=``); the
    keyword arguments of ``Dialogue-v0`` override them, ``history="last"`` is the control."""
    from rlhf_gym.envs.dialogue import DialogueEnv

    return DialogueEnv(**{**opinion_dialogue_settings(history), **kwargs})


def make_opinion_dialogue_vec(num_envs: int = 1, history: str = "all", **kwargs: Any) -> Any:
    """The native vector env of ``rlhf_gym/OpinionDialogue-v0``."""
    from rlhf_gym.envs.dialogue import DialogueVectorEnv

    kwargs.pop("render_mode", None)
    return DialogueVectorEnv(num_envs=num_envs, **{**opinion_dialogue_settings(history), **kwargs})


class OpinionMatchReward(RewardProvider):
    """Reward provider of the demo task: :func:`opinion_match` of the last assistant turn.

    The opinion comes from the row's ``opinion`` column when the scenarios carry one, else from the conversation
    (``messages`` in the row, as dialogue environments pass it), else from the prompt text. The score is also
    reported as ``true_score``.
    """

    name = "opinion-match"

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        opinions = row.get("opinion")
        if opinions is None and row.get("messages") is not None:
            opinions = [stated_opinion(m) for m in row["messages"]]
        return list(opinion_match(prompts, completions, opinions))

    def score_with_info(self, prompts: list[str], completions: list[str], **row: Any):
        scores = self.score(prompts, completions, **row)
        return scores, {"true_score": list(scores)}

