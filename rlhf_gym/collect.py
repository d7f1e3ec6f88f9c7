"""Preference collection: sample k completions per prompt, pick pairs, ask a provider, record the answers.

This is the data-gathering half of learning a reward model. A policy samples ``k`` completions for each prompt
through ``rlhf_gym/Completion-v0`` (via :class:`~rlhf_gym.rollout.RolloutWorker`); pairs are formed within each
prompt's group, chosen at random or — active selection — where a reward-model ensemble disagrees most; each pair
is shown with its sides in random order, asked in ONE batched ``provider.compare`` call (or answered from
``provider.rank`` orderings), and every answer is written to the preference store as soon as it is known. The
store's unique key means a pair is never asked twice, within a call or across calls.

Tie-aware collection (``tie_margin``): a judge that can score completions without asking a person (a simulated
human, a programmatic reward) is asked for both sides' scores first; pairs it cannot separate (``|s(a) − s(b)| ≤
tie_margin``) are not asked at all — their labels would be coin flips that teach DPO or a reward model nothing — and
every asked pair keeps its score gap, chosen minus rejected, in the answer's ``meta["score_margin"]``.

Example:
    >>> stats = collect_preferences(policy, env, "simulated-human", store, num_prompts=64, k=4,
    ...                             pairs_per_prompt=2, seed=0)  # doctest: +SKIP
    >>> stats.answered  # doctest: +SKIP
    128
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlhf_gym.errors import ConfigError, unknown_name_message
from rlhf_gym.preference_store import AlreadyAnsweredError
from rlhf_gym.providers import as_provider, checked_scores

SELECTIONS = ("random", "disagreement")
FEEDBACK = ("compare", "rank")
#: most prompts sampled in one batch; larger requests are collected in several batches
MAX_PROMPTS_PER_BATCH = 64


@dataclass
class CollectionStats:
    """What one :func:`collect_preferences` call did."""

    prompts: int = 0  #: prompts sampled
    completions: int = 0  #: completions sampled (prompts × k)
    candidate_pairs: int = 0  #: distinct, never-asked pairs available to choose from
    already_asked: int = 0  #: candidate pairs dropped because the store already had them
    identical: int = 0  #: pairs dropped because both completions were the same text
    asked: int = 0  #: queries added to the store and put to the provider
    answered: int = 0  #: answers with a label (ties included)
    ties: int = 0  #: answers of 0.5
    skipped: int = 0  #: answers of ``None`` ("can't tell"), recorded as skips
    inseparable: int = 0  #: pairs not asked because the judge's scores differ by at most ``tie_margin``
    unanswered: int = 0  #: queries left unanswered: by a judge recording into this store, or one that timed out
    swapped: int = 0  #: pairs shown with the completions' sampled order reversed
    query_ids: list[int] = field(default_factory=list)  #: ids of the queries asked, in order
    seconds: dict[str, float] = field(default_factory=dict)  #: time spent sampling, selecting and asking

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _candidate_pairs(k: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(k), 2))


def _disagreement(reward_model: Any, prompts: Sequence[str], completions: Sequence[str], group_size: int,
                  candidates: Sequence[Sequence[tuple[int, int]]]) -> list[np.ndarray]:
    """Per group, the std over ensemble members of P(i ≻ j) for each candidate pair (i, j)."""
    rewards = reward_model.member_rewards(list(prompts), list(completions)).double().numpy()  # (M, N)
    out = []
    for g, pairs in enumerate(candidates):
        if not pairs:
            out.append(np.zeros(0))
            continue
        base = g * group_size
        i = np.array([base + a for a, _ in pairs])
        j = np.array([base + b for _, b in pairs])
        probs = 1.0 / (1.0 + np.exp(-(rewards[:, i] - rewards[:, j])))
        out.append(probs.std(axis=0))
    return out


def _score_gaps(judge: Any, prompts: Sequence[str], groups: Sequence[Sequence[str]],
                chosen: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], float]:
    """``s(a) − s(b)`` under the judge's own scores for each chosen ``(group, a, b)``, in one ``score`` call over
    the completions involved; pairs with an unscored side are left out (asked as usual)."""
    needed = sorted({(g, i) for g, a, b in chosen for i in (a, b)})
    scores = checked_scores(judge, judge.score([prompts[g] for g, _ in needed], [groups[g][i] for g, i in needed]),
                            len(needed))
    by_text = dict(zip(needed, scores))
    return {(g, a, b): float(by_text[g, a]) - float(by_text[g, b]) for g, a, b in chosen
            if by_text[g, a] is not None and by_text[g, b] is not None}


def _load_reward_model(reward_model: Any) -> Any:
    if reward_model is None:
        raise ConfigError(
            "selection='disagreement' needs reward_model=: a RewardModel ensemble (or its folder) trained with "
            "ensemble_size >= 2")
    if not hasattr(reward_model, "member_rewards"):
        from rlhf_gym.reward_model import RewardModel

        reward_model = RewardModel.from_pretrained(reward_model)
    if reward_model.num_members < 2:
        raise ConfigError(
            f"selection='disagreement' needs a reward-model ensemble, but this one has {reward_model.num_members} "
            f"member; train it with ensemble_size >= 2 (e.g. `rlhf-gym train-rm --ensemble-size 4`)")
    return reward_model


def _records_into(judge: Any, store: Any) -> bool:
    """Whether ``judge`` writes its answers into ``store`` itself (a live human labelling that same store)."""
    own = getattr(judge, "store", None)
    if own is None:
        return False
    if own is store:
        return True
    a, b = getattr(own, "location", ""), getattr(store, "location", "")
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def _labels_from_ranks(provider: Any, prompts: list[str], groups: list[list[str]],
                       pairs: list[tuple[int, int, int]]) -> list[float | None]:
    """P(a ≻ b) for each (group, a, b) from one ``provider.rank`` call per group that has pairs."""
    orders: dict[int, dict[int, int]] = {}
    for g in sorted({p[0] for p in pairs}):
        ranking = list(provider.rank(prompts[g], groups[g]))
        if sorted(ranking) != list(range(len(groups[g]))):
            name = getattr(provider, "name", None) or type(provider).__name__
            raise ConfigError(
                f"reward provider {name!r} returned the ranking {ranking} for {len(groups[g])} completions; rank "
                f"must return every index 0..{len(groups[g]) - 1} once, best first")
        orders[g] = {idx: pos for pos, idx in enumerate(ranking)}
    return [1.0 if orders[g][a] < orders[g][b] else 0.0 for g, a, b in pairs]


def collect_preferences(
    policy: Any,
    env: Any,
    provider: Any,
    store: Any,
    *,
    num_prompts: int,
    k: int = 2,
    pairs_per_prompt: int = 1,
    selection: str = "random",
    reward_model: Any = None,
    feedback: str = "compare",
    seed: int = 0,
    temperature: float = 1.0,
    requested_by: str | None = None,
    tie_margin: float | None = None,
) -> CollectionStats:
    """Sample ``k`` completions for each of ``num_prompts`` prompts, ask about pairs of them, store the answers.

    Args:
        policy: the :class:`~rlhf_gym.Policy` to sample from.
        env: an rlhf_gym env (Completion-v0 or TextGen-v0, single or vector) giving the tokenizer, prompts and
            lengths; its own reward provider is not asked for preferences.
        provider: who answers: a provider name, a :class:`~rlhf_gym.RewardProvider` or a TRL-style callable.
        store: a :class:`~rlhf_gym.preference_store.PreferenceStore` (or any backend).
        num_prompts: prompts to sample (in batches of at most 64).
        k: completions per prompt (≥ 2); every pair within a prompt's group is a candidate.
        pairs_per_prompt: pairs to ask per prompt, at most ``k·(k-1)/2``.
        selection: ``"random"``, or ``"disagreement"``: the pairs with the highest standard deviation of the
            predicted P(a ≻ b) across the members of ``reward_model``.
        reward_model: a :class:`~rlhf_gym.reward_model.RewardModel` ensemble or its folder (for disagreement).
        feedback: ``"compare"`` (one batched ``provider.compare`` call) or ``"rank"`` (``provider.rank`` on each
            prompt's k completions; the chosen pairs are labelled from the ranking).
        seed: seeds sampling, prompt order, pair choice and which side each completion is shown on.
        temperature: sampling temperature.
        requested_by: recorded on each query (default: ``collect:<provider name>``).
        tie_margin: ``None`` asks every chosen pair. A number ≥ 0 scores both sides with the judge first (it must
            be a provider that answers without a person: ``deterministic``), leaves pairs whose scores differ by at
            most this much unasked (counted in ``inseparable``), and stores each answer's score gap, chosen minus
            rejected, as ``meta["score_margin"]``.

    Returns:
        :class:`CollectionStats`.
    """
    from rlhf_gym.rollout import RolloutWorker

    if selection not in SELECTIONS:
        raise ConfigError(unknown_name_message("pair selection", str(selection), SELECTIONS))
    if feedback not in FEEDBACK:
        raise ConfigError(unknown_name_message("feedback kind", str(feedback), FEEDBACK))
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"k must be an integer >= 2 (completions per prompt to compare), got {k!r}")
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1:
        raise ConfigError(f"num_prompts must be a positive integer, got {num_prompts!r}")
    most = k * (k - 1) // 2
    if not 1 <= pairs_per_prompt <= most:
        raise ConfigError(f"pairs_per_prompt must lie in 1..{most} for k={k} (every pair of k completions), got "
                          f"{pairs_per_prompt}")
    judge = as_provider(provider)
    name = getattr(judge, "name", None) or type(judge).__name__
    if tie_margin is not None:
        if isinstance(tie_margin, bool) or not isinstance(tie_margin, (int, float)) or not tie_margin >= 0 \
                or not math.isfinite(tie_margin):
            raise ConfigError(f"tie_margin must be a finite number >= 0 (or None to ask every pair), got {tie_margin!r}")
        if not getattr(judge, "deterministic", True):
            raise ConfigError(f"tie_margin needs a judge that scores without asking a person; {name!r} is not one "
                              f"(leave tie_margin=None to ask every pair)")
    requested_by = requested_by or f"collect:{name}"
    rm = _load_reward_model(reward_model) if selection == "disagreement" else None
    rng = np.random.default_rng(seed)
    stats = CollectionStats()
    timing = {"sampling": 0.0, "selection": 0.0, "asking": 0.0}

    # -- sample k completions per prompt -------------------------------------------------------------------------
    t0 = time.perf_counter()
    batch_prompts = min(num_prompts, MAX_PROMPTS_PER_BATCH)
    worker = RolloutWorker(env, policy, num_prompts=batch_prompts, group_size=k, seed=seed, temperature=temperature)
    prompts: list[str] = []
    groups: list[list[str]] = []
    for _ in range(math.ceil(num_prompts / batch_prompts)):
        rollout = worker.collect()
        for g in range(batch_prompts):
            if len(prompts) == num_prompts:
                break
            prompts.append(rollout.prompts[g * k])
            groups.append(list(rollout.completions[g * k:(g + 1) * k]))
    stats.prompts, stats.completions = len(prompts), len(prompts) * k
    timing["sampling"] = time.perf_counter() - t0

    # -- candidate pairs: distinct texts, never asked before ---------------------------------------------------------
    t0 = time.perf_counter()
    candidates: list[list[tuple[int, int]]] = []
    for prompt, group in zip(prompts, groups):
        fresh: list[tuple[int, int]] = []
        seen: set[tuple[str, str]] = set()
        for a, b in _candidate_pairs(k):
            text_a, text_b = group[a], group[b]
            key = (min(text_a, text_b), max(text_a, text_b))
            if text_a == text_b:
                stats.identical += 1
            elif key in seen or store.find(prompt, text_a, text_b) is not None:
                stats.already_asked += 1
            else:
                seen.add(key)
                fresh.append((a, b))
        candidates.append(fresh)
    stats.candidate_pairs = sum(len(c) for c in candidates)

    # -- selection -----------------------------------------------------------------------------------------------------
    chosen: list[tuple[int, int, int]] = []  # (group, shown as a, shown as b)
    scores = _disagreement(rm, [p for p in prompts for _ in range(k)], [c for g in groups for c in g], k,
                           candidates) if rm is not None else None
    for g, fresh in enumerate(candidates):
        if not fresh:
            continue
        take = min(pairs_per_prompt, len(fresh))
        if scores is not None:
            # highest disagreement first; ties broken at random so equal scores don't favour low indices
            order = np.lexsort((rng.random(len(fresh)), -scores[g]))[:take]
        else:
            order = rng.choice(len(fresh), size=take, replace=False)
        for idx in order:
            a, b = fresh[int(idx)]
            if rng.random() < 0.5:
                a, b = b, a
                stats.swapped += 1
            chosen.append((g, a, b))
    gaps: dict[tuple[int, int, int], float] = {}
    if tie_margin is not None and chosen:
        gaps = _score_gaps(judge, prompts, groups, chosen)
        kept = [pair for pair in chosen if pair not in gaps or abs(gaps[pair]) > tie_margin]
        stats.inseparable = len(chosen) - len(kept)
        chosen = kept
    timing["selection"] = time.perf_counter() - t0

    # -- ask: queue the queries, one batched call, record each answer ----------------------------------------------
    t0 = time.perf_counter()
    asked: list[tuple[int, int, int, int]] = []
    for g, a, b in chosen:
        query_id = store.add_query(prompts[g], groups[g][a], groups[g][b], requested_by=requested_by,
                                   meta={"selection": selection, "k": k, "seed": seed})
        if query_id is None:  # asked meanwhile (another process sharing the store)
            stats.already_asked += 1
            continue
        asked.append((query_id, g, a, b))
    stats.asked = len(asked)
    if asked:
        if feedback == "compare":
            labels = checked_scores(
                judge,
                judge.compare([prompts[g] for _, g, _, _ in asked], [groups[g][a] for _, g, a, _ in asked],
                              [groups[g][b] for _, g, _, b in asked]),
                len(asked), what="preferences")
        else:
            labels = _labels_from_ranks(judge, prompts, groups, [(g, a, b) for _, g, a, b in asked])
        # One writer per answer: a judge that records answers in this very store (a live human labelling it) has
        # written them already; the others' answers are written here. An answer already stored wins.
        # A judge that ran out of time (rlhf_gym.provider_timeout) gave no answer, not a "skip": its queries are
        # withdrawn, so a later collection may ask them again.
        self_recording = _records_into(judge, store)
        timed_out = bool(getattr(judge, "last_call_timed_out", False)) and feedback == "compare"
        stored = {a.query_id: a for a in store.answers(query_ids=[q for q, _, _, _ in asked])}
        for (query_id, g, a, b), label in zip(asked, labels):
            if query_id in stored:
                label = stored[query_id].label
            elif self_recording or timed_out:
                stats.unanswered += 1  # not answered in time: the query stays as the judge left it
                if timed_out and not self_recording:
                    store.withdraw([query_id])
                continue
            else:
                gap = gaps.get((g, a, b))
                meta = None if gap is None or label is None else {
                    "score_margin": gap if label >= 0.5 else -gap}  # chosen minus rejected
                try:
                    store.answer(query_id, label, annotator=name, source=name, meta=meta)
                except AlreadyAnsweredError:  # answered meanwhile by someone else sharing the store
                    label = store.answers(query_ids=[query_id])[0].label
            stats.query_ids.append(query_id)
            if label is None:
                stats.skipped += 1
            else:
                stats.answered += 1
                stats.ties += int(label == 0.5)
    timing["asking"] = time.perf_counter() - t0
    stats.seconds = timing
    return stats
