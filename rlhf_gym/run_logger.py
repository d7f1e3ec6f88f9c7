"""Where a training run's numbers and samples go: stdout, ``metrics.csv``, TensorBoard, ``samples.jsonl`` and a
``reward_curve.png``.

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

#: metrics plotted in reward_curve.png, first match wins per panel
REWARD_KEYS = ("objective/scores", "objective/true_scores", "objective/rlhf_reward", "rewards/margins")
KL_KEYS = ("objective/kl",)


def default_run_dir(prefix: str = "run") -> Path:
    """``runs/<prefix>-YYYYmmdd-HHMMSS`` under the current directory, made unique with a counter."""
    base = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class RunLogger:
    """Writes one run's metrics and samples.

    Args:
        run_dir: directory of the run (created).
        config: the resolved configuration, written to ``config.json``.
        tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.
        stdout: print a metrics line per :meth:`log` call (the progress bar shows them otherwise).
        append: continue an existing run (resume): keep earlier rows of ``metrics.csv`` up to ``start_step``.
        start_step: with ``append``, rows with a step above it are dropped (they belong to a run that resumed).
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
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stdout = stdout
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["step"]
        if config is not None:
            (self.run_dir / "config.json").write_text(json.dumps(_jsonable(config), indent=2) + "\n")
        if append and self.metrics_path.exists():
            with self.metrics_path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if int(float(row["step"])) <= start_step:
                        self.rows.append({k: _parse(v) for k, v in row.items()})
            for row in self.rows:
                self._add_columns(row)
            self._rewrite_csv()
            if (self.run_dir / "samples.jsonl").exists():
                kept = [line for line in (self.run_dir / "samples.jsonl").read_text().splitlines()
                        if line and json.loads(line).get("step", 0) <= start_step]
                (self.run_dir / "samples.jsonl").write_text("".join(line + "\n" for line in kept))
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if append else None)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _add_columns(self, row: Mapping[str, Any]) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns.extend(new)
        return bool(new)

    def _rewrite_csv(self) -> None:
        tmp = self.metrics_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.metrics_path)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record one update's metrics (numbers only)."""
        row: dict[str, Any] = {"step": step}
        row.update({k: float(v) for k, v in metrics.items()})
        self.rows.append(row)
        if self._add_columns(row) or not self.metrics_path.exists():
            self._rewrite_csv()
        else:
            with self.metrics_path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(row)
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self.stdout:
            shown = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")
            print(f"[step {step}] {shown}", file=sys.stdout, flush=True)

    def log_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        """Append sample completions (prompt, completion, score, …) to ``samples.jsonl`` and TensorBoard."""
        samples = [dict(s, step=step) for s in samples]
        with (self.run_dir / "samples.jsonl").open("a") as f:
            for s in samples:
                f.write(json.dumps(_jsonable(s)) + "\n")
        if self._tb is not None and samples:
            text = "\n\n".join(f"**{s.get('prompt', '')}** {s.get('completion', '')} — {s.get('score')}" for s in samples)
            self._tb.add_text("samples", text, step)

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write ``reward_curve.png``: reward (and ground truth, if logged) and KL over updates."""
        if not self.rows:
            return None
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
        out = Path(path) if path else self.run_dir / "reward_curve.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        self.plot()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _parse(value: str) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as dicts of floats (empty cells become NaN)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as f:
        return [{k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()} for row in csv.DictReader(f)]
