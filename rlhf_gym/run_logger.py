"""Where a training run's numbers and samples go: stdout, ``samples.jsonl``, a ``reward_curve.png`` (and, when a
ground truth is logged, ``gold_vs_proxy.png``), and every experiment tracker the run reports to (``metrics.csv``, TensorBoard, wandb, MLflow, trackio, a plugin's).

Every run directory holds the resolved config (``config.json``) next to those files, so a run can be read, plotted
and reproduced without the process that wrote it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlhf_gym.trackers import DEFAULT_REPORT_TO, Tracker, jsonable, make_trackers

#: metrics plotted in reward_curve.png, first match wins per panel
REWARD_KEYS = ("objective/scores", "objective/true_scores", "objective/rlhf_reward", "rewards/margins")
KL_KEYS = ("objective/kl",)
#: tracker state (e.g. a service's run id) a resumed run reads back
TRACKER_STATE_FILE = "trackers.json"


def default_run_dir(prefix: str = "run") -> Path:
    """``runs/<prefix>-YYYYmmdd-HHMMSS`` under the current directory, made unique with a counter."""
    base = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


class RunLogger:
    """Writes one run's config, metrics and samples, and fans them out to the run's trackers.

    The run directory always gets ``config.json``, ``samples.jsonl`` and ``reward_curve.png``; ``metrics.csv``
    (tracker ``csv``), TensorBoard events (``tensorboard``), wandb, MLflow, trackio or a plugin's tracker are what
    ``report_to`` names (see :func:`rlhf_gym.trackers.resolve_report_to`).

    Args:
        run_dir: directory of the run (created).
        config: the resolved configuration, written to ``config.json`` and given to every tracker.
        tensorboard: with ``report_to=None``, whether the default trackers include TensorBoard.
        stdout: print a metrics line per :meth:`log` call (the progress bar shows them otherwise).
        append: continue an existing run (resume): keep earlier rows of ``metrics.csv`` up to ``start_step``.
        start_step: with ``append``, rows with a step above it are dropped (they belong to a run that resumed).
        report_to: tracker names (a comma-separated string or a list; ``"none"``, ``"all"``); ``None``: ``csv``
            and, with ``tensorboard``, ``tensorboard``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: Mapping[str, Any] | None = None,
        *,
        tensorboard: bool = True,
        stdout: bool = False,
        append: bool = False,
        start_step: int = 0,
        report_to: str | Iterable[str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stdout = stdout
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["step"]
        if config is not None:
            (self.run_dir / "config.json").write_text(json.dumps(jsonable(config), indent=2) + "\n")
        if append and self.metrics_path.exists():
            with self.metrics_path.open(newline="") as f:
                self.rows = [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)
                             if int(float(row["step"])) <= start_step]
            for row in self.rows:
                self.columns.extend(k for k in row if k not in self.columns)
        samples_path = self.run_dir / "samples.jsonl"
        if append and samples_path.exists():
            kept = [line for line in samples_path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= start_step]
            samples_path.write_text("".join(line + "\n" for line in kept))
        if report_to is None and not tensorboard:
            report_to = [n for n in DEFAULT_REPORT_TO if n != "tensorboard"]
        states_path = self.run_dir / TRACKER_STATE_FILE
        states = json.loads(states_path.read_text()) if append and states_path.exists() else {}
        self.trackers: list[Tracker] = make_trackers(report_to, self.run_dir, resume=append, start_step=start_step,
                                                     states=states)
        if any(t.state() for t in self.trackers):
            states_path.write_text(json.dumps({t.name: t.state() for t in self.trackers}, indent=2) + "\n")
        if config is not None:
            for tracker in self.trackers:
                tracker.log_config(jsonable(config))

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    @property
    def report_to(self) -> list[str]:
        """Names of the trackers this run reports to."""
        return [t.name for t in self.trackers]

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record one update's metrics (numbers only) with every tracker."""
        values = {k: float(v) for k, v in metrics.items()}
        row: dict[str, Any] = {"step": step, **values}
        self.rows.append(row)
        self.columns.extend(k for k in row if k not in self.columns)
        for tracker in self.trackers:
            tracker.log_metrics(step, values)
        if self.stdout:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            print(f"[step {step}] {shown}", file=sys.stdout, flush=True)

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        """Append sample completions (prompt, completion, score, …) to ``samples.jsonl`` and every tracker."""
        samples = [jsonable(dict(s, step=step)) for s in samples]
        with (self.run_dir / "samples.jsonl").open("a") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")
        for tracker in self.trackers:
            tracker.log_samples(step, samples)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write ``reward_curve.png``: reward (and ground truth, if logged) and KL over updates; with a ground truth,
        ``gold_vs_proxy.png`` next to it too (:func:`rlhf_gym.overoptimisation.plot_gold_vs_proxy`)."""
        if not self.rows:
            return None
        from rlhf_gym.overoptimisation import plot_gold_vs_proxy

        out = Path(path) if path else self.run_dir / "reward_curve.png"
        plot_gold_vs_proxy(self.rows, out.with_name("gold_vs_proxy.png"))
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.rows]
        reward_keys = [k for k in REWARD_KEYS if k in self.columns]
        kl_keys = [k for k in KL_KEYS if k in self.columns]
        fig, axes = plt.subplots(1, 2 if kl_keys else 1, figsize=(10 if kl_keys else 5.5, 3.8), squeeze=False)
        ax = axes[0][0]
        for key in reward_keys:
            ax.plot(steps, [r.get(key, math.nan) for r in self.rows], label=key)
        ax.set_xlabel("update")
        ax.set_ylabel("reward")
        ax.set_title("Reward")
        if reward_keys:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        if kl_keys:
            ax = axes[0][1]
            for key in kl_keys:
                ax.plot(steps, [r.get(key, math.nan) for r in self.rows], color="tab:red", label=key)
            ax.set_xlabel("update")
            ax.set_ylabel("nats / sequence")
            ax.set_title("KL to the reference")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        """Write ``reward_curve.png`` and close every tracker (once)."""
        self.plot()
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


def _parse(value: str) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as dicts of floats (empty cells become NaN)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()} for row in csv.DictReader(f)]


def silence_progress_bars() -> None:
    """Turn off the progress bars of transformers (loading/saving checkpoints), the Hugging Face hub (downloads)
    and MLflow (artifacts), for ``--no-progress``; rlhf_gym's own bars are switched off by their callers."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
