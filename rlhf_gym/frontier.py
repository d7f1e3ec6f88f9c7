"""Reward-hacking diagnostics: sweep the KL coefficient β and draw the reward–KL frontier.

When the reward is a proxy (a noisy simulated human, a learned reward model) the policy can raise it in ways the
ground truth does not reward. The KL penalty β·KL(π‖π_start) is what holds that back, and the way to see it is to
train the same start policy at several β and put every run on one picture: KL to the start policy on the x axis,
proxy and ground-truth scores on the y axis, and next to it a sample completion per β, because over-optimised text
(lists of adjectives, repetition, completions that never end) is obvious to read and easy to miss in a mean.

:func:`sweep_beta` does that and writes ``frontier.csv`` (one row per β), ``frontier.png`` and
``frontier_samples.jsonl`` into its output directory, each run's own run directory under ``beta-<β>/`` (with its
``gold_vs_proxy.png`` when a ground truth is known). Each row also says how far proxy and truth moved from the
start policy (``proxy_gain``, ``true_gain``) and whether the run's logged curves show over-optimisation
(``overoptimised``: 1/0, the rule of :mod:`rlhf_gym.overoptimisation`). The
``rlhf-gym frontier`` command wraps it (:func:`configure_parser`, :func:`run`).

Example:
    >>> distinct_n(["great great fun", "great movie"], 1)
    0.6
    >>> round(repetition_rate(["great great great", "a good film"]), 3)
    0.333
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_gym.errors import ConfigError
from rlhf_gym.overoptimisation import assess

#: β values swept when none are given: no penalty, weak, the demo's, strong
DEFAULT_BETAS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.2)
#: algorithm config the command line uses unless overridden (the tiny kit's measured setting)
CLI_DEFAULT_CONFIG: Mapping[str, Any] = {"num_prompts": 16, "learning_rate": 2e-4}
#: config keys :func:`sweep_beta` sets itself, from its own arguments
_OWN_KEYS = ("beta", "seed", "run_dir")
#: columns of frontier.csv, in order
CSV_COLUMNS: tuple[str, ...] = (
    "beta", "algo", "updates", "proxy_score", "proxy_score_std", "true_score", "true_score_std", "kl",
    "mean_length", "distinct_1", "distinct_2", "repetition", "num_samples", "sample", "run_dir",
    "proxy_gain", "true_gain", "overoptimised",
)
_WORD = re.compile(r"[\w']+")


# -- degeneracy measures ------------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (1.0: nothing repeats; near 0: one phrase over and over).

    Args:
        texts: completions.
        n: n-gram length (1 or 2 are the usual choices).

    Returns:
        The ratio in ``[0, 1]``; 0.0 when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = _words(text)
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Iterable[str]) -> float:
    """Mean fraction of words in a completion that repeat an earlier word of the same completion.

    Fluent short reviews sit near 0.1; a policy that repeats its best word climbs towards 1. Texts without
    words are left out; 0.0 when none has any.
    """
    rates = []
    for text in texts:
        words = _words(text)
        if words:
            rates.append(1.0 - len(set(words)) / len(words))
    return sum(rates) / len(rates) if rates else 0.0


# -- results ------------------------------------------------------------------------------------------------------
@dataclass
class FrontierPoint:
    """One β of the sweep, measured on fresh samples of the trained policy.

    ``beta`` is ``None`` for the start policy (measured once, the origin of the frontier).
    """

    beta: float | None
    #: mean score of the env's (proxy) provider, and its standard deviation
    proxy_score: float
    proxy_score_std: float
    #: mean ground-truth score of the same samples (None without a ground truth)
    true_score: float | None
    true_score_std: float | None
    #: mean per-sequence KL to the start policy, nats
    kl: float
    #: mean completion length, tokens
    mean_length: float
    distinct_1: float
    distinct_2: float
    repetition: float
    num_samples: int
    #: the first few samples: prompt, completion, proxy_score, true_score
    samples: list[dict[str, Any]] = field(default_factory=list)
    algo: str = ""
    updates: int = 0
    run_dir: Path | None = None
    #: the start policy measured on the same prompts (the origin this point moved away from)
    start: FrontierPoint | None = field(default=None, repr=False)
    #: the training run's gold-vs-proxy verdict (:func:`rlhf_gym.overoptimisation.assess`), None without a truth
    overoptimisation: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def gains(self) -> tuple[float | None, float | None]:
        """``(proxy gain, true gain)`` over the start policy (None where either side is unknown)."""
        if self.start is None:
            return None, None
        true = None if self.true_score is None or self.start.true_score is None else \
            self.true_score - self.start.true_score
        return self.proxy_score - self.start.proxy_score, true

    @property
    def overoptimised(self) -> bool | None:
        """Whether the run's logged curves were flagged as over-optimised (None: not judged)."""
        return None if self.overoptimisation is None else self.overoptimisation.get("overoptimised")

    @property
    def label(self) -> str:
        """``"β=0.05"``, or ``"start"`` for the start policy."""
        return "start" if self.beta is None else f"β={self.beta:g}"

    def as_row(self) -> dict[str, Any]:
        """The point as a ``frontier.csv`` row (the first sample's completion in ``sample``)."""
        return {
            "beta": "" if self.beta is None else self.beta, "algo": self.algo, "updates": self.updates,
            "proxy_score": self.proxy_score, "proxy_score_std": self.proxy_score_std,
            "true_score": "" if self.true_score is None else self.true_score,
            "true_score_std": "" if self.true_score_std is None else self.true_score_std,
            "kl": self.kl, "mean_length": self.mean_length, "distinct_1": self.distinct_1,
            "distinct_2": self.distinct_2, "repetition": self.repetition, "num_samples": self.num_samples,
            "sample": self.samples[0]["completion"] if self.samples else "",
            "run_dir": "" if self.run_dir is None else str(self.run_dir),
            "proxy_gain": "" if self.gains[0] is None else self.gains[0],
            "true_gain": "" if self.gains[1] is None else self.gains[1],
            "overoptimised": "" if self.overoptimised is None else int(self.overoptimised),
        }


# -- the sweep ----------------------------------------------------------------------------------------------------
def check_betas(betas: Iterable[Any]) -> list[float]:
    """``betas`` as a list of distinct finite floats ≥ 0; anything else raises :class:`ConfigError`."""
    if isinstance(betas, (str, bytes)):
        raise ConfigError(f"betas must be a sequence of numbers, e.g. (0.0, 0.05, 0.2), not the string {betas!r}")
    values: list[float] = []
    for beta in betas:
        try:
            value = float(beta)
        except (TypeError, ValueError):
            raise ConfigError(f"β must be a number, got {beta!r}; pass e.g. betas=(0.0, 0.05, 0.2)") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"β must be a finite number ≥ 0 (0 turns the KL penalty off), got {beta!r}")
        if value in values:
            raise ConfigError(f"β={value:g} appears twice in betas; each β is one run, list it once")
        values.append(value)
    if not values:
        raise ConfigError("betas is empty: give at least one KL coefficient, e.g. betas=(0.0, 0.05, 0.2)")
    return values


def _provider_of(env: Any) -> Any:
    setup = getattr(getattr(env, "unwrapped", env), "setup", None)
    return getattr(setup, "provider", None)


def _reseed_provider(env: Any, seed: int) -> None:
    """Restart a stochastic provider's noise, so every β is trained and judged against the same stream."""
    reset = getattr(_provider_of(env), "reset_rng", None)
    if callable(reset):
        reset(seed)


def measure(policy: Any, env: Any, *, ground_truth: Any = "sentiment", num_samples: int = 128, seed: int = 0,
            reference: Any = None, num_shown: int = 4, beta: float | None = None) -> FrontierPoint:
    """Score ``num_samples`` fresh samples of ``policy`` with ``env``'s provider and with the ground truth.

    Both scores are of the same samples; the KL is to ``reference`` (0 without one). The samples come from the
    same prompts, in the same order, for every policy measured with the same ``seed``.

    Args:
        policy: the :class:`~rlhf_gym.Policy` to sample from.
        env: an rlhf_gym env; its provider is the proxy score.
        ground_truth: provider name, object or callable of the true score (``None``: proxy only).
        num_samples: fresh samples to score (≥ 128 keeps the mean's noise near ±0.04).
        seed: prompt order, sampling and the provider's noise.
        reference: the start policy, for the KL.
        num_shown: how many samples to keep in :attr:`FrontierPoint.samples`.
        beta: recorded in the point.
    """
    import numpy as np

    from rlhf_gym.providers import as_provider, checked_scores
    from rlhf_gym.rollout import evaluate

    _reseed_provider(env, seed)
    result = evaluate(policy, env, num_samples=num_samples, seed=seed, reference=reference)
    prompts = [s["prompt"] for s in result["samples"]]
    completions = [s["completion"] for s in result["samples"]]
    true_scores: list[float] | None = None
    if ground_truth is not None:
        judge = as_provider(ground_truth)
        raw = checked_scores(judge, judge.score(prompts, completions), len(completions))
        true_scores = [math.nan if v is None else float(v) for v in raw]
    true_arr = None if true_scores is None else np.asarray(true_scores, dtype=np.float64)
    shown = []
    for i, s in enumerate(result["samples"][:num_shown]):
        true = None if true_scores is None or math.isnan(true_scores[i]) else true_scores[i]
        shown.append({"prompt": s["prompt"], "completion": s["completion"], "proxy_score": s["score"],
                      "true_score": true})
    true_mean = true_std = None
    if true_arr is not None and bool(np.isfinite(true_arr).any()):
        true_mean, true_std = float(np.nanmean(true_arr)), float(np.nanstd(true_arr))
    return FrontierPoint(
        beta=beta,
        proxy_score=result["mean"], proxy_score_std=result["std"], true_score=true_mean, true_score_std=true_std,
        kl=float(result.get("kl", 0.0)), mean_length=result["mean_length"],
        distinct_1=distinct_n(completions, 1), distinct_2=distinct_n(completions, 2),
        repetition=repetition_rate(completions), num_samples=len(completions), samples=shown,
    )


def _load_start(policy: Any, needs_value_head: bool) -> Any:
    from rlhf_gym.policy import Policy

    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        return Policy.from_pretrained(os.fspath(policy), value_head=needs_value_head)
    raise ConfigError(f"policy must be an rlhf_gym.Policy or a model directory/hub id, got {type(policy).__name__}")


def _is_env(obj: Any) -> bool:
    return hasattr(obj, "step") and hasattr(obj, "reset")


def sweep_beta(
    policy: Any,
    env: Any,
    betas: Sequence[float] = DEFAULT_BETAS,
    algo: str = "rloo",
    updates: int = 60,
    config: Mapping[str, Any] | None = None,
    ground_truth: Any = "sentiment",
    eval_samples: int = 128,
    seed: int = 0,
    out_dir: str | os.PathLike[str] = "runs/frontier",
    progress: bool = True,
    num_shown: int = 4,
) -> list[FrontierPoint]:
    """Train a fresh copy of the start policy at each β and measure where it lands on the reward–KL frontier.

    Every run starts from the same weights with the same seed and the same provider noise, so β is the only
    difference. Each trained policy is measured on fresh samples (same prompts for every β): the proxy score (the
    env's provider), the ground-truth score, the KL to the start policy, the mean length, distinct-1/2 and the
    repetition rate. The start policy is measured too and drawn as the origin.

    Writes into ``out_dir``: ``frontier.csv`` (one row per β, columns :data:`CSV_COLUMNS`), ``frontier.png``
    (:func:`plot_frontier`), ``frontier_samples.jsonl`` (the first ``num_shown`` samples of the start policy and of
    every β) and each run's own run directory ``beta-<β>/`` (metrics.csv, reward curve, samples, checkpoint).

    Args:
        policy: the start policy: an :class:`~rlhf_gym.Policy` (left untouched) or a model directory/hub id.
        env: an rlhf_gym env whose provider is the proxy reward, or a function ``f(policy) -> env``.
        betas: KL coefficients, each a finite number ≥ 0.
        algo: a registered online algorithm (``rloo``, ``ppo``, ``reinforce``, ``dpo``, ...).
        updates: updates per run (runs stop on update counts, so they are reproducible).
        config: further algorithm config fields (not ``beta``, ``seed`` or ``run_dir``, which the sweep sets). Each
            run holds its β fixed (``kl_target=None``) unless ``config`` gives a ``kl_target``.
        ground_truth: provider name, object or callable of the true score; also logged during training as
            ``objective/true_scores``. ``None``: proxy only.
        eval_samples: fresh samples measured per policy.
        seed: seed of every run and of the evaluation.
        out_dir: output directory (created).
        progress: progress bars and one line per β.
        num_shown: samples kept per β for the figure and ``frontier_samples.jsonl``.

    Returns:
        One :class:`FrontierPoint` per β, in the order given.

    Raises:
        ConfigError: empty or negative ``betas``, ``updates``/``eval_samples`` below 1, an unknown algorithm or
            config field, or a config that sets ``beta``/``seed``/``run_dir``.
    """
    from rlhf_gym.config import build_config
    from rlhf_gym.plugins import algorithm_class, make_algorithm

    values = check_betas(betas)
    if int(updates) < 1:
        raise ConfigError(f"updates must be ≥ 1, got {updates}")
    if int(eval_samples) < 1:
        raise ConfigError(f"eval_samples must be ≥ 1 (128 or more for a stable mean), got {eval_samples}")
    config = dict(config or {})
    clash = [k for k in _OWN_KEYS if k in config]
    if clash:
        raise ConfigError(f"config may not set {', '.join(clash)}: the sweep sets them; pass betas=..., seed=..., "
                          f"out_dir=... instead")
    algo_cls: Any = algorithm_class(algo)  # an unknown name fails here, before any work
    build_config(algo_cls.Config, {**config, "beta": 0.0}, owner=f"algorithm {algo!r}")  # typos fail before work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    start = _load_start(policy, algo_cls.needs_value_head)
    made_env = not _is_env(env)
    if made_env:
        if not callable(env):
            raise ConfigError("env must be an rlhf_gym env or a function f(policy) -> env")
        env = env(start)
    eval_seed = seed + 999
    # each point holds its β fixed (no KL budget steering it) unless the config asks for a kl_target
    fixed_beta = {"kl_target": None} if "kl_target" in {f.name for f in dataclasses.fields(algo_cls.Config)} else {}
    try:
        origin = measure(start, env, ground_truth=ground_truth, num_samples=eval_samples, seed=eval_seed,
                         num_shown=num_shown)
        origin.algo = algo
        points: list[FrontierPoint] = []
        for beta in values:
            run_dir = out / f"beta-{beta:g}"
            if progress:
                print(f"frontier: {algo} β={beta:g} for {updates} updates → {run_dir}", flush=True)
            run_config = {**fixed_beta, **config, "beta": beta, "seed": seed, "run_dir": str(run_dir)}
            if isinstance(ground_truth, str):
                run_config.setdefault("true_reward", ground_truth)
            _reseed_provider(env, seed)
            trained = copy.deepcopy(start)
            trainer = make_algorithm(algo, env=env, policy=trained, **run_config)
            trainer.run_info = {"frontier": {"betas": values, "updates": updates, "eval_samples": eval_samples}}
            try:
                trainer.learn(updates, progress_bar=progress)
                logged = list(trainer.logger.rows) if getattr(trainer, "logger", None) is not None else []
            finally:
                trainer.close()
            point = measure(trained, env, ground_truth=ground_truth, num_samples=eval_samples, seed=eval_seed,
                            reference=start, num_shown=num_shown, beta=beta)
            point.algo, point.updates, point.run_dir, point.start = algo, updates, run_dir, origin
            verdict = assess(logged)
            point.overoptimisation = verdict if verdict["points"] else None
            points.append(point)
            del trainer, trained
            write_frontier(points, out, start=origin)  # an interrupted sweep keeps what it has measured
    finally:
        if made_env:
            env.close()
    return points


# -- output files -------------------------------------------------------------------------------------------------
def write_frontier(points: Sequence[FrontierPoint], out_dir: str | os.PathLike[str],
                   start: FrontierPoint | None = None) -> dict[str, Path]:
    """Write ``frontier.csv``, ``frontier_samples.jsonl`` and ``frontier.png`` for ``points`` into ``out_dir``.

    Returns:
        ``{"csv": ..., "samples": ..., "png": ...}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "frontier.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for point in points:
            writer.writerow(point.as_row())
    samples_path = out / "frontier_samples.jsonl"
    with samples_path.open("w", encoding="utf-8") as f:
        for point in ([start] if start is not None else []) + list(points):
            for sample in point.samples:
                row = {"beta": point.beta, "policy": point.label, "kl": point.kl, **sample}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    png_path = plot_frontier(points, out / "frontier.png", start=start)
    return {"csv": csv_path, "samples": samples_path, "png": png_path}


def read_frontier(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``frontier.csv`` (or of the one in a directory), numbers as floats, empty cells as ``None``."""
    p = Path(path)
    if p.is_dir():
        p = p / "frontier.csv"
    if not p.is_file():
        raise ConfigError(f"{path} holds no frontier.csv; write one with sweep_beta() or `rlhf-gym frontier`")
    rows = []
    with p.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if value == "":
                    parsed[key] = None
                elif key in ("algo", "sample", "run_dir"):
                    parsed[key] = value
                else:
                    parsed[key] = float(value)
            rows.append(parsed)
    return rows


def _escape(text: str) -> str:
    """Matplotlib reads ``$...$`` as maths; samples are shown literally."""
    return " ".join(text.split()).replace("$", r"\$")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_frontier(points: Sequence[FrontierPoint], path: str | os.PathLike[str],
                  start: FrontierPoint | None = None) -> Path:
    """Draw the frontier: scores against KL to the start policy, and a sample completion per β.

    Left panel: x = mean per-sequence KL to the start policy (symlog), y = mean proxy score and mean ground-truth
    score, each point labelled with its β; the start policy sits at KL 0. Right panel: for the start policy and
    each β, its numbers and its first sample completion, so degenerate text shows in the figure itself.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = ([start] if start is not None else []) + sorted(points, key=lambda p: (p.kl, -(p.beta or 0.0)))
    fig, (ax, text_ax) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1, 1.25]})
    series = [("proxy_score", "proxy score (env's provider)", "tab:blue", "o")]
    if any(p.true_score is not None for p in shown):
        series.append(("true_score", "ground-truth score", "tab:green", "s"))
    for attr, name, color, marker in series:
        xs = [p.kl for p in shown if getattr(p, attr) is not None]
        ys = [getattr(p, attr) for p in shown if getattr(p, attr) is not None]
        labels = [p.label for p in shown if getattr(p, attr) is not None]
        ax.plot(xs, ys, color=color, marker=marker, linestyle="-", alpha=0.85, label=name)
        labels = [f"{lbl} (over-optimised)" if p.overoptimised and attr == "true_score" else lbl
                  for lbl, p in zip(labels, [p for p in shown if getattr(p, attr) is not None])]
        for x, y, label in zip(xs, ys, labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6 if attr == "proxy_score" else -12),
                        fontsize=8, color=color)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(-0.1, max([1.0, *(p.kl for p in shown)]) * 2.5)  # room for the labels of the farthest point
    ax.set_xlabel("KL to the start policy (nats / sequence, symlog)")
    ax.set_ylabel("mean score of fresh samples")
    algo = next((p.algo for p in points if p.algo), "")
    updates = next((p.updates for p in points if p.updates), 0)
    ax.set_title(f"Reward–KL frontier{f' ({algo}, {updates} updates)' if algo else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")

    text_ax.axis("off")
    per_policy = 2 if len(shown) <= 4 else 1
    text_ax.set_title(f"{'Samples' if per_policy > 1 else 'One sample'} per policy (same prompts for all)",
                      fontsize=10)
    blocks = []
    for p in shown:
        truth = "" if p.true_score is None else f"  truth {p.true_score:.2f}"
        head = (f"{p.label}: KL {p.kl:.1f}  proxy {p.proxy_score:.2f}{truth}  len {p.mean_length:.1f}  "
                f"distinct-2 {p.distinct_2:.2f}  rep {p.repetition:.2f}")
        body = [textwrap.fill(_clip(_escape(f"{s['prompt']} ▸ {s['completion']}"), 220), width=90,
                              initial_indent="   ", subsequent_indent="     ")
                for s in p.samples[:per_policy]]
        blocks.append("\n".join([_escape(head), *body]))
    text_ax.text(0.0, 1.0, "\n\n".join(blocks), va="top", ha="left", family="monospace", fontsize=7.5,
                 transform=text_ax.transAxes)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# -- command line -------------------------------------------------------------------------------------------------
def parse_betas(text: str) -> list[float]:
    """``"0,0.05,0.2"`` → ``[0.0, 0.05, 0.2]`` (checked with :func:`check_betas`)."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    for part in parts:
        try:
            float(part)
        except ValueError:
            raise ConfigError(f"--betas expects comma-separated numbers such as 0,0.05,0.2; got {text!r}") from None
    return check_betas(parts)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``rlhf-gym frontier``."""
    parser.description = (
        "Sweep the KL coefficient β: train the same start policy once per β, then measure fresh samples for the "
        "proxy score, the ground-truth score, KL to the start policy and degeneracy. Writes frontier.csv, "
        "frontier.png and frontier_samples.jsonl. Default: the tiny kit against a noisy simulated human whose "
        "ground truth is VADER sentiment."
    )
    parser.add_argument("--betas", default=",".join(f"{b:g}" for b in (0.0, 0.05, 0.2)),
                        help="comma-separated KL coefficients, each ≥ 0 (default: 0,0.05,0.2)")
    parser.add_argument("--algo", default="rloo", help="online algorithm name (see `rlhf-gym plugins`) (default: rloo)")
    parser.add_argument("--updates", type=int, default=60, help="updates per β (default: 60)")
    parser.add_argument("--out", default="runs/frontier",
                        help="output directory; each β's run directory goes in beta-<β>/ (default: runs/frontier)")
    parser.add_argument("--model", help="start policy: hub id or local directory (default: the tiny kit)")
    parser.add_argument("--prompts", help="prompts: .txt (one per line) or .jsonl (field 'prompt') file "
                                          "(default: the tiny kit's review openers; required with --model)")
    parser.add_argument("--reward", help="proxy reward provider name (default: simulated-human)")
    parser.add_argument("--reward-kwargs", dest="reward_kwargs",
                        help="JSON object of keyword arguments for the reward provider "
                             "(default with the default reward: {\"preset\": \"noisy\"})")
    parser.add_argument("--ground-truth", dest="ground_truth", default="sentiment",
                        help="provider name of the ground truth measured next to the proxy ('none' to skip) "
                             "(default: sentiment)")
    parser.add_argument("--eval-samples", dest="eval_samples", type=int, default=128,
                        help="fresh samples measured per policy (≥128 keeps the mean's noise near ±0.04) (default: 128)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=24,
                        help="tokens generated per completion (default: 24)")
    parser.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int, default=16,
                        help="prompts are left-truncated to this many tokens (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run and of the evaluation (default: 0)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="algorithm config field (repeatable), e.g. --set learning_rate=1e-4 "
                             f"(defaults: {', '.join(f'{k}={v}' for k, v in CLI_DEFAULT_CONFIG.items())})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cli_config(items: Sequence[str]) -> dict[str, Any]:
    config: dict[str, Any] = dict(CLI_DEFAULT_CONFIG)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        config[key.strip().replace("-", "_")] = value.strip()
    return config


def _print_table(points: Sequence[FrontierPoint], ground_truth: Any) -> None:
    truth = str(ground_truth) if ground_truth is not None else "truth"
    start = points[0].start if points else None
    print(f"{'policy':>6}  {'proxy':>6}  {truth[:10]:>10}  {'KL':>7}  {'length':>6}  {'dist-2':>6}  {'rep':>5}  "
          f"{'hacked':>6}  sample")
    for p in ([start] if start is not None else []) + list(points):
        true = "—" if p.true_score is None else f"{p.true_score:.3f}"
        sample = _clip(" ".join(p.samples[0]["completion"].split()), 60) if p.samples else ""
        hacked = {True: "yes", False: "no", None: "—"}[p.overoptimised]
        print(f"{p.label.removeprefix('β='):>6}  {p.proxy_score:6.3f}  {true:>10}  {p.kl:7.2f}  {p.mean_length:6.1f}  "
              f"{p.distinct_2:6.2f}  {p.repetition:5.2f}  {hacked:>6}  {sample}")


def run(args: argparse.Namespace) -> int:
    """``rlhf-gym frontier``: build the start policy and env, sweep β, print the table and the output paths."""
    from rlhf_gym.config import parse_json_object
    from rlhf_gym.train import RunOptions, make_env

    betas = parse_betas(args.betas)
    progress = not args.no_progress and not os.environ.get("RLHF_GYM_NO_PROGRESS")
    reward_kwargs: dict[str, Any] = {}
    if args.reward_kwargs:
        reward_kwargs = parse_json_object(args.reward_kwargs, "--reward-kwargs")
    elif args.reward is None:
        reward_kwargs = {"preset": "noisy"}
    ground_truth = None if str(args.ground_truth).lower() in ("none", "") else args.ground_truth
    opts = RunOptions(algo=args.algo, reward=args.reward or "simulated-human", reward_kwargs=reward_kwargs,
                      model=args.model, prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                      max_prompt_tokens=args.max_prompt_tokens, ground_truth=ground_truth, seed=args.seed)
    config = _cli_config(args.set)
    if args.model:
        if not args.prompts:
            raise ConfigError("pass --prompts FILE (.txt or .jsonl) when sweeping a model of your own")
        policy: Any = args.model
        prompts: Any = args.prompts
    else:
        from rlhf_gym import tiny

        print("Building the tiny kit (cached after the first run)...", flush=True)
        policy = tiny.build_tiny_kit(seed=0, progress=progress).path
        prompts = args.prompts or tiny.review_prompts()

    def env_factory(start: Any) -> Any:
        return make_env(opts, start, prompts)

    points = sweep_beta(policy, env_factory, betas=betas, algo=args.algo, updates=args.updates, config=config,
                        ground_truth=ground_truth, eval_samples=args.eval_samples, seed=args.seed, out_dir=args.out,
                        progress=progress)
    _print_table(points, ground_truth)
    out = Path(args.out)
    print(f"frontier: {out / 'frontier.csv'}, {out / 'frontier.png'}, {out / 'frontier_samples.jsonl'}")
    return 0


__all__ = [
    "CSV_COLUMNS", "DEFAULT_BETAS", "FrontierPoint", "check_betas", "configure_parser", "distinct_n", "measure",
    "parse_betas", "plot_frontier", "read_frontier", "repetition_rate", "run", "sweep_beta", "write_frontier",
]
