"""What a trained reward model's numbers mean when the objective behind the labels is known.

Held-out accuracy measures agreement with the *labels*, which a noisy annotator gets wrong, and a data set of
near-identical pairs can make it look good or bad for reasons unrelated to the objective. Given the ground truth
(any truth or registered reward provider, see :func:`rlhf_gym.ground_truth.get_ground_truth`), this module reports:

- ``truth_agreement``: the fraction of held-out pairs the reward model orders as the ground truth does (pairs the
  truth ties are left out: nothing to agree with there);
- ``truth_label_agreement``: the same for the labels themselves, the ceiling a model fitted to them approaches;
- ``truth_train_ties``: the fraction of training pairs the truth scores equally, whose labels (whatever they are)
  carry no information about it. :func:`tie_warning` speaks up when they are the majority.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: two truth scores closer than this (relative to the larger magnitude, or absolutely near 0) are a tie
TIE_TOLERANCE = 1e-9
#: above this fraction of ties among training pairs, :func:`tie_warning` warns
TIE_WARNING_FRACTION = 0.5


def truth_gaps(truth: Any, pairs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``truth(chosen) − truth(rejected)`` of every pair, 0 where the truth ties them."""
    if not pairs:
        return np.zeros(0)
    prompts = [p["prompt"] for p in pairs]
    chosen = truth.values(prompts, [p["chosen"] for p in pairs])
    rejected = truth.values(prompts, [p["rejected"] for p in pairs])
    gap = np.asarray(chosen, dtype=np.float64) - np.asarray(rejected, dtype=np.float64)
    scale = np.maximum(np.maximum(np.abs(chosen), np.abs(rejected)), 1.0)
    return np.where(np.abs(gap) <= TIE_TOLERANCE * scale, 0.0, gap)


def truth_report(model: Any, train_pairs: Sequence[Mapping[str, Any]], eval_pairs: Sequence[Mapping[str, Any]],
                 ground_truth: Any, batch_size: int = 64, **truth_kwargs: Any) -> dict[str, float]:
    """Agreement of ``model`` and of the labels with ``ground_truth`` on ``eval_pairs`` (the training pairs when
    there are none: keys then start with ``train_``), and the fraction of training pairs the truth ties.

    Returns:
        ``truth_agreement``, ``truth_label_agreement`` (NaN when every pair is a tie on the truth),
        ``truth_pairs`` (pairs not tied on it), ``truth_train_ties``.
    """
    from rlhf_gym.ground_truth import get_ground_truth

    truth = get_ground_truth(ground_truth, **truth_kwargs)
    train_gap = truth_gaps(truth, train_pairs)
    report = {"truth_train_ties": float(np.mean(train_gap == 0)) if len(train_gap) else float("nan")}
    pairs, prefix = (eval_pairs, "") if eval_pairs else (train_pairs[:2048], "train_")
    gap = truth_gaps(truth, pairs) if eval_pairs else train_gap[:2048]
    decided = gap != 0
    report[f"{prefix}truth_pairs"] = float(decided.sum())
    if not decided.any():
        report[f"{prefix}truth_agreement"] = report[f"{prefix}truth_label_agreement"] = float("nan")
        return report
    prompts = [p["prompt"] for p in pairs]
    r_chosen, _ = model.score_texts(prompts, [p["chosen"] for p in pairs], batch_size)
    r_rejected, _ = model.score_texts(prompts, [p["rejected"] for p in pairs], batch_size)
    model_gap = (r_chosen - r_rejected).detach().cpu().double().numpy()
    labels = np.asarray([float(p.get("label", 1.0)) for p in pairs])
    label_sign = np.sign(labels - 0.5)  # +1: chosen preferred, -1: rejected, 0: a tie in the data
    truth_sign = np.sign(gap)
    report[f"{prefix}truth_agreement"] = float(np.mean(np.sign(model_gap)[decided] == truth_sign[decided]))
    report[f"{prefix}truth_label_agreement"] = float(np.mean(label_sign[decided] == truth_sign[decided]))
    return report


def tie_warning(report: Mapping[str, float], truth_name: str) -> str | None:
    """A sentence for the user when most training pairs are ties on the truth, else None."""
    ties = report.get("truth_train_ties", float("nan"))
    if not ties > TIE_WARNING_FRACTION:
        return None
    return (f"{ties:.0%} of the training pairs are ties on the ground truth {truth_name!r}: their labels carry no "
            f"information about it, so the reward model learns whatever else separated them (length, position, "
            f"noise). Collect pairs whose completions differ on it (more distinct samples per prompt, or "
            f"selection='disagreement').")


def format_report(report: Mapping[str, float], truth_name: str) -> list[str]:
    """The lines ``rlhf-gym train-rm`` prints about the ground truth."""
    prefix = "" if "truth_agreement" in report else "train_"
    where = "held-out" if not prefix else "training (no held-out pairs)"
    n = int(report.get(f"{prefix}truth_pairs", 0))
    if n == 0:
        lines = [f"ground truth {truth_name!r}: every {where} pair is a tie on it; agreement cannot be measured"]
    else:
        lines = [f"agreement with ground truth {truth_name!r} on {n} {where} pairs it does not tie: reward model "
                 f"{report[f'{prefix}truth_agreement']:.3f}, the labels themselves "
                 f"{report[f'{prefix}truth_label_agreement']:.3f}"]
    warning = tie_warning(report, truth_name)
    if warning:
        lines.append(f"warning: {warning}")
    return lines
