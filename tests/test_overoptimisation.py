"""Over-optimisation made visible: the last-third rule on logged proxy/truth curves, the gold-vs-proxy plot a run
writes, the verdict in the run summary and report, and the frontier's gain and flag columns."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from rlhf_gym.frontier import CSV_COLUMNS, FrontierPoint, read_frontier, write_frontier
from rlhf_gym.overoptimisation import assess, gold_vs_proxy, plot_gold_vs_proxy, slope
from rlhf_gym.run_logger import RunLogger
from rlhf_gym.train import RunOptions, _overoptimisation, print_report


def curves(truth_shape: str, *, n: int = 30, noise: float = 0.05, seed: int = 0, proxy_shape: str = "rises",
           with_kl: bool = True) -> list[dict[str, float]]:
    """Logged rows of a run: the proxy and truth follow named shapes over ``n`` updates, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1) / n
    shapes = {
        "rises": t,
        "stalls": np.minimum(t, 0.5),  # climbs for the first half, then flat
        "falls": np.where(t < 0.5, t, 1.0 - t),  # climbs, then gives it all back
        "flat": np.zeros_like(t),
    }
    proxy = 2.0 * shapes[proxy_shape] + noise * rng.standard_normal(n)
    truth = shapes[truth_shape] + noise * rng.standard_normal(n)
    rows = []
    for i in range(n):
        row = {"step": float(i + 1), "objective/scores": float(proxy[i]), "objective/true_scores": float(truth[i])}
        if with_kl:
            row["objective/kl"] = 0.2 * (i + 1)
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", [0.0, 0.02, 0.05])
@pytest.mark.parametrize(("truth", "flagged"), [("rises", False), ("stalls", True), ("falls", True)])
def test_rule_flags_a_truth_that_stalls_or_falls_while_the_proxy_rises(truth, flagged, noise, seed) -> None:
    verdict = assess(curves(truth, noise=noise, seed=seed))
    assert verdict["overoptimised"] is flagged, verdict["reason"]
    assert verdict["points"] == 10 and verdict["window"] == [21.0, 30.0]
    assert verdict["proxy_slope"] > 0
    if truth == "falls":
        assert verdict["truth_slope"] < 0 and "fell" in verdict["reason"]


@pytest.mark.parametrize("seed", range(5))
def test_rule_does_not_flag_a_proxy_that_has_stopped_rising(seed) -> None:
    verdict = assess(curves("falls", proxy_shape="stalls", seed=seed))
    assert verdict["overoptimised"] is False and "no longer rises" in verdict["reason"]


def test_rule_on_pure_noise_flags_nothing_and_a_truth_lost_in_noise_is_flagged() -> None:
    flat = [assess(curves("flat", proxy_shape="flat", noise=0.3, seed=s))["overoptimised"] for s in range(20)]
    assert sum(flat) <= 2  # a proxy that only jitters is almost never "clearly rising"
    # a truth whose rise over the last third is far below its noise cannot be told from a stalled one
    assert assess(_mixed())["overoptimised"] is True


def _mixed() -> list[dict[str, float]]:
    rows = curves("rises", noise=0.0)
    rng = np.random.default_rng(1)
    for row in rows:
        row["objective/true_scores"] = 0.001 * row["step"] + float(rng.normal(0, 0.5))
    return rows


@pytest.mark.parametrize(("rows", "reason"), [
    ([], "no update logged both"),
    ([{"step": 1.0, "objective/scores": 1.0}] * 10, "no update logged both"),
    (curves("stalls", n=5), "only 5 updates"),
    ([{"step": 1.0, "objective/scores": math.nan, "objective/true_scores": 1.0}] * 10, "no update logged both"),
])
def test_runs_without_a_truth_or_with_too_few_updates_are_not_judged(rows, reason) -> None:
    verdict = assess(rows)
    assert verdict["overoptimised"] is None and reason in verdict["reason"]
    assert _overoptimisation(rows) is None or verdict["points"] > 0


def test_short_runs_use_at_least_min_points_and_rows_missing_a_score_are_skipped() -> None:
    rows = curves("falls", n=12)
    rows.insert(3, {"step": 3.5, "objective/scores": 9.0})  # no truth on this row: ignored
    verdict = assess(rows)
    assert verdict["points"] == 6 and verdict["window"] == [7.0, 12.0]
    assert len(gold_vs_proxy(rows)["step"]) == 12
    assert verdict["proxy_gain"] == pytest.approx(rows[-1]["objective/scores"] - rows[0]["objective/scores"])


def test_slope_and_its_standard_error() -> None:
    assert slope([1, 2, 3, 4], [1, 3, 5, 7]) == (2.0, 0.0)
    b, se = slope([1, 2, 3, 4], [0, 1, 0, 1])
    assert b == pytest.approx(0.2) and se == pytest.approx(math.sqrt(0.8 / 2 / 5))
    assert slope([1, 2], [1, 2])[1] == math.inf and slope([2, 2, 2], [1, 2, 3])[1] == math.inf
    with pytest.raises(ValueError, match="x values"):
        slope([1, 2, 3], [1, 2])


@pytest.mark.parametrize("with_kl", [True, False])
def test_gold_vs_proxy_plot_is_written_with_both_series(tmp_path, with_kl) -> None:
    out = plot_gold_vs_proxy(curves("falls", with_kl=with_kl), tmp_path / "gold_vs_proxy.png")
    assert out is not None and out.stat().st_size > 5000
    description = Image.open(out).text["Description"]
    assert "objective/scores" in description and "objective/true_scores" in description
    assert "over-optimised" in description
    assert plot_gold_vs_proxy([{"step": 1.0, "objective/scores": 1.0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("truth", [True, False])
def test_run_logger_draws_gold_vs_proxy_only_when_a_truth_is_logged(tmp_path, truth) -> None:
    logger = RunLogger(tmp_path, {"algo": "rloo"}, report_to="csv")
    for row in curves("stalls", n=8):
        if not truth:
            row.pop("objective/true_scores")
        logger.log(int(row.pop("step")), row)
    logger.close()
    assert (tmp_path / "reward_curve.png").is_file()
    assert (tmp_path / "gold_vs_proxy.png").is_file() is truth


def result(mean: float) -> dict:
    return {"mean": mean, "mean_length": 7.0, "kl": 1.5,
            "samples": [{"prompt": "The film", "completion": " was fine.", "score": mean}] * 4}


@pytest.mark.parametrize("truth", ["rises", "falls"])
def test_report_warns_only_about_an_over_optimised_run(capsys, truth) -> None:
    verdict = _overoptimisation(curves(truth))
    print_report(result(0.1), [("after rloo", {"after": result(0.3), "kl": 1.5, "run_dir": "r",
                                               "overoptimisation": verdict})], RunOptions())
    out = capsys.readouterr().out
    assert ("over-optimisation" in out) is (truth == "falls")
    assert ("gold_vs_proxy.png" in out) is (truth == "falls")


def point(beta: float | None, proxy: float, true: float, kl: float, verdict: dict | None = None) -> FrontierPoint:
    return FrontierPoint(beta=beta, proxy_score=proxy, proxy_score_std=0.1, true_score=true, true_score_std=0.1,
                         kl=kl, mean_length=8.0, distinct_1=0.5, distinct_2=0.7, repetition=0.1, num_samples=128,
                         samples=[{"prompt": "The film", "completion": " was fine.", "proxy_score": proxy}],
                         overoptimisation=verdict)


def test_frontier_rows_carry_gains_over_the_start_and_the_flag(tmp_path) -> None:
    start = point(None, 0.0, 0.2, 0.0)
    hacked = point(0.0, 2.5, 0.1, 9.0, assess(curves("falls")))
    honest = point(0.2, 0.8, 0.6, 1.0, assess(curves("rises")))
    unjudged = point(0.05, 1.0, 0.5, 2.0, None)
    for p in (hacked, honest, unjudged):
        p.start = start
    paths = write_frontier([hacked, honest, unjudged], tmp_path, start=start)
    assert paths["png"].is_file()
    rows = read_frontier(tmp_path)
    assert [r["overoptimised"] for r in rows] == [1.0, 0.0, None]
    assert rows[0]["proxy_gain"] == pytest.approx(2.5) and rows[0]["true_gain"] == pytest.approx(-0.1)
    assert rows[1]["true_gain"] == pytest.approx(0.4)
    with (tmp_path / "frontier.csv").open(newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames or ()) == CSV_COLUMNS
