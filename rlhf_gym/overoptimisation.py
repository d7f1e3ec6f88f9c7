"""Reward over-optimisation, made visible: the proxy score against the ground truth as KL grows.

A policy trained on a proxy reward (a learned reward model, a noisy simulated human) first gains on both the proxy
and the truth the proxy stands for; pushed further from its start, the proxy keeps rising while the truth stalls
and then falls (Gao et al., 2022, "Scaling laws for reward model overoptimization"). When a run logs both
``objective/scores`` (the proxy) and ``objective/true_scores`` (a known ground truth), this module

* draws them against ``objective/kl`` (:func:`plot_gold_vs_proxy`, the run's ``gold_vs_proxy.png``), and
* checks the last part of the run with a small rule (:func:`assess`): over the last third of the logged updates
  (at least :data:`MIN_POINTS` of them), fit a least-squares line of each score against the update number; the run
  is flagged *over-optimised* when the proxy's slope is clearly positive (slope ≥ :data:`RISE_T` standard errors)
  while the truth's is not (slope < :data:`RISE_T` standard errors: flat, falling, or a rise lost in the noise).

The rule reads the logged per-batch means, so it costs nothing at run time; it is a warning, not a proof — a
noisy truth that is still climbing slowly can be flagged, and the cure is the same either way (a larger ``beta``,
a pessimistic reward, or stopping earlier).

Example:
    >>> rows = [{"step": s, "objective/scores": 0.1 * s, "objective/true_scores": 1.0 - 0.05 * (s % 2)}
    ...         for s in range(1, 31)]
    >>> assess(rows)["overoptimised"]
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROXY_KEY = "objective/scores"
TRUTH_KEY = "objective/true_scores"
KL_KEY = "objective/kl"
#: fraction of the logged updates, counted from the end, the rule looks at
TAIL_FRACTION = 1 / 3
#: fewest updates in that window for a verdict (fewer: ``overoptimised`` is ``None``)
MIN_POINTS = 6
#: how many standard errors a slope must exceed to count as a rise
RISE_T = 2.0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def gold_vs_proxy(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """The logged rows that carry both scores: ``{"step", "kl", "proxy", "truth"}`` lists of equal length
    (``kl`` is NaN where a row has no ``objective/kl``)."""
    out: dict[str, list[float]] = {"step": [], "kl": [], "proxy": [], "truth": []}
    for i, row in enumerate(rows):
        proxy, truth = row.get(PROXY_KEY), row.get(TRUTH_KEY)
        if not (_finite(proxy) and _finite(truth)):
            continue
        step = row.get("step", i)
        kl = row.get(KL_KEY)
        out["step"].append(float(step) if _finite(step) else float(i))
        out["kl"].append(float(kl) if _finite(kl) else math.nan)
        out["proxy"].append(float(proxy))
        out["truth"].append(float(truth))
    return out


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ``ys`` against ``xs`` and its standard error (``inf`` with fewer than 3 points or
    no spread in ``xs``; 0 for a perfect fit)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"got {n} x values but {len(ys)} y values")
    if n < 3:
        return 0.0, math.inf
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, math.inf
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return b, math.sqrt(residual / (n - 2) / sxx)


def _t(b: float, se: float) -> float:
    if se == 0:
        return math.inf if b > 0 else (-math.inf if b < 0 else 0.0)
    return b / se


def assess(rows: Sequence[Mapping[str, Any]], *, tail: float = TAIL_FRACTION, min_points: int = MIN_POINTS,
           rise_t: float = RISE_T) -> dict[str, Any]:
    """Whether the proxy kept rising while the truth stopped, over the last ``tail`` of the logged updates.

    Returns:
        ``{"overoptimised": True/False/None, "window": [first step, last step], "points": n,
        "proxy_slope", "proxy_slope_se", "truth_slope", "truth_slope_se"`` (per update), ``"proxy_gain",
        "truth_gain"`` (last minus first logged value over the whole run), ``"reason"``}. ``overoptimised`` is
        ``None`` (with the reason) when the run logged no ground truth or too few updates to judge.
    """
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    curves = gold_vs_proxy(rows)
    n_all = len(curves["step"])
    result: dict[str, Any] = {"overoptimised": None, "points": 0, "window": None}
    if n_all == 0:
        result["reason"] = f"no update logged both {PROXY_KEY} and {TRUTH_KEY} (no ground truth known)"
        return result
    result["proxy_gain"] = curves["proxy"][-1] - curves["proxy"][0]
    result["truth_gain"] = curves["truth"][-1] - curves["truth"][0]
    n = max(int(math.ceil(n_all * tail)), min(min_points, n_all))
    steps, proxy, truth = curves["step"][-n:], curves["proxy"][-n:], curves["truth"][-n:]
    result["points"], result["window"] = n, [steps[0], steps[-1]]
    if n < min_points:
        result["reason"] = f"only {n_all} updates logged both scores; {min_points} are needed to judge"
        return result
    pb, pse = slope(steps, proxy)
    tb, tse = slope(steps, truth)
    result.update(proxy_slope=pb, proxy_slope_se=pse, truth_slope=tb, truth_slope_se=tse)
    proxy_rises, truth_rises = _t(pb, pse) >= rise_t, _t(tb, tse) >= rise_t
    result["overoptimised"] = bool(proxy_rises and not truth_rises)
    if result["overoptimised"]:
        trend = "fell" if tb < 0 else "stalled"
        result["reason"] = (f"over the last {n} updates the proxy rose ({pb:+.3g}/update) while the truth {trend} "
                            f"({tb:+.3g} ± {tse:.2g}/update)")
    elif not proxy_rises:
        result["reason"] = f"the proxy no longer rises clearly over the last {n} updates ({pb:+.3g} ± {pse:.2g})"
    else:
        result["reason"] = f"proxy and truth both still rise over the last {n} updates"
    return result


def plot_gold_vs_proxy(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Draw ``gold_vs_proxy.png``: proxy and ground-truth scores against KL to the reference (against the update
    number where no KL was logged), each on its own y axis since their units differ. ``None`` (no file) when no
    update logged both scores. The file's PNG ``Description`` names the two series drawn."""
    curves = gold_vs_proxy(rows)
    if not curves["step"]:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_kl = all(math.isfinite(k) for k in curves["kl"])
    xs = curves["kl"] if by_kl else curves["step"]
    verdict = assess(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(xs, curves["proxy"], color="tab:blue", marker="o", markersize=4, linewidth=0.8, alpha=0.7, label=PROXY_KEY)
    ax.set_xlabel("KL to the reference (nats / sequence)" if by_kl else "update")
    ax.set_ylabel(f"proxy ({PROXY_KEY})", color="tab:blue")
    twin = ax.twinx()
    twin.plot(xs, curves["truth"], color="tab:green", marker="s", markersize=4, linewidth=0.8, alpha=0.7, label=TRUTH_KEY)
    twin.set_ylabel(f"ground truth ({TRUTH_KEY})", color="tab:green")
    flag = {True: "over-optimised", False: "no over-optimisation flagged", None: "not judged"}[verdict["overoptimised"]]
    ax.set_title(f"Gold vs proxy ({flag})", fontsize=10)
    ax.grid(alpha=0.3)
    handles = ax.get_lines() + twin.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100, metadata={"Description": f"series: {PROXY_KEY}, {TRUTH_KEY}; {flag}"})
    plt.close(fig)
    return out


__all__ = ["MIN_POINTS", "RISE_T", "TAIL_FRACTION", "assess", "gold_vs_proxy", "plot_gold_vs_proxy", "slope"]
