"""Experiment trackers: where a run's config, metrics and sample completions are reported.

One small interface, :class:`Tracker` (``log_config``, ``log_metrics``, ``log_samples``, ``close``), and one
implementation per service, named as transformers' ``report_to`` names them: ``csv`` (``metrics.csv``),
``tensorboard``, ``wandb``, ``mlflow`` and ``trackio``. :class:`~rlhf_gym.run_logger.RunLogger` fans every call
out to the trackers a run asked for. The built-ins are registered through the ``register_trackers`` hook, the same
way a plugin adds its own::

    @rlhf_gym.hookimpl
    def register_trackers(register):
        register("my-service", MyTracker)      # a Tracker subclass

Services are configured the way their own clients are: ``WANDB_PROJECT``/``WANDB_MODE``/``WANDB_DIR``,
``MLFLOW_TRACKING_URI``/``MLFLOW_EXPERIMENT_NAME``, ``TRACKIO_PROJECT``/``TRACKIO_DIR``; the project (experiment)
defaults to ``rlhf_gym`` and the run name to the run directory's name.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from rlhf_gym.errors import ConfigError, UnknownNameError, unknown_name_message

#: what ``report_to=None`` means: the run directory's own files
DEFAULT_REPORT_TO = ("csv", "tensorboard")
#: the pip extra that installs every optional tracker client
TRACKERS_EXTRA = "trackers"
DEFAULT_PROJECT = "rlhf_gym"
#: leading columns of a sample table; other keys follow in sorted order
SAMPLE_COLUMNS = ("step", "prompt", "completion", "score")


def jsonable(value: Any) -> Any:
    """``value`` with every leaf a JSON type (paths as strings, anything else as its ``repr``)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of ``a.b`` keys (for services whose parameters are flat)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def sample_table(samples: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of sample dicts: ``step, prompt, completion, score`` first, other keys sorted after."""
    keys = {k for s in samples for k in s}
    columns = [c for c in SAMPLE_COLUMNS if c in keys] + sorted(keys - set(SAMPLE_COLUMNS))
    rows = [[_cell(s.get(c)) for c in columns] for s in samples]
    return columns, rows


def _cell(value: Any) -> Any:
    value = jsonable(value)
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class Tracker:
    """Base class of experiment trackers. Subclass it and register the class with the ``register_trackers`` hook.

    Args:
        run_dir: the run directory (local trackers write into it; services may keep their files there).
        run_name: a human-readable name of the run (default: the run directory's name).
        resume: the run continues an earlier one (``--resume``): append, do not start over.
        start_step: with ``resume``, the last update already logged; later ones are logged again.
        state: what :meth:`state` returned for the earlier run (e.g. a service's run id), with ``resume``.
    """

    #: the user-facing name (``report_to=``)
    name: ClassVar[str] = "tracker"
    #: import names the tracker needs; a missing one is reported with :attr:`pip_hint`
    requires: ClassVar[tuple[str, ...]] = ()
    #: how to install what it needs
    pip_hint: ClassVar[str] = ""

    def __init__(self, run_dir: str | os.PathLike[str], *, run_name: str | None = None, resume: bool = False,
                 start_step: int = 0, state: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_name = run_name or self.run_dir.name
        self.resume = resume
        self.start_step = start_step
        self.previous_state = dict(state or {})

    @classmethod
    def available(cls) -> bool:
        """Whether every package the tracker needs is installed (what ``report_to="all"`` picks)."""
        return all(importlib.util.find_spec(module) is not None for module in cls.requires)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The run's resolved configuration (JSON-able, possibly nested), once before the first update."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """One update's metrics (floats; NaN where a metric has no value this update)."""

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        """Sample completions (``step``, ``prompt``, ``completion``, ``score``, …) written at update ``step``."""

    def state(self) -> dict[str, Any]:
        """JSON-able values a resumed run needs to continue the same record (e.g. a service's run id)."""
        return {}

    def close(self) -> None:
        """Flush and release everything; called once at the end of the run."""


def _require(tracker: type[Tracker]) -> None:
    missing = [m for m in tracker.requires if importlib.util.find_spec(m) is None]
    if missing:
        hint = tracker.pip_hint or f"pip install {' '.join(missing)}"
        raise ConfigError(
            f"report_to={tracker.name!r} needs the {', '.join(missing)} package, which is not installed: "
            f"{hint}; or leave {tracker.name!r} out of report_to / --report-to")


def _pip_hint(package: str) -> str:
    return f"pip install 'rlhf_gym[{TRACKERS_EXTRA}]' (or pip install {package})"


# -- the run directory's own files -----------------------------------------------------------------------------


class CSVTracker(Tracker):
    """Metrics as metrics.csv in the run directory.

    One row per logged update, a column per metric (a metric first seen later adds a column)."""

    name = "csv"

    def __init__(self, run_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        self.path = self.run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["step"]
        if self.resume and self.path.exists():
            with self.path.open(newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(float(row["step"])) <= self.start_step]
            for row in self.rows:
                self._add_columns(row)
            self._rewrite()
        elif self.path.exists():
            self.path.unlink()

    def _add_columns(self, row: Mapping[str, Any]) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns.extend(new)
        return bool(new)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        row: dict[str, Any] = {"step": step, **metrics}
        self.rows.append(row)
        if self._add_columns(row) or not self.path.exists():
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(row)


class TensorBoardTracker(Tracker):
    """TensorBoard event files under the run directory's tensorboard/.

    Scalars per metric, the config and the samples as text."""

    name = "tensorboard"
    requires = ("tensorboard",)
    pip_hint = "pip install tensorboard"

    def __init__(self, run_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        _require(type(self))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                    purge_step=self.start_step + 1 if self.resume else None)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(jsonable(config), indent=2) + "\n```", 0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        if samples:
            text = "\n\n".join(f"**{s.get('prompt', '')}** {s.get('completion', '')} — {s.get('score')}"
                               for s in samples)
            self.writer.add_text("samples", text, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


# -- services --------------------------------------------------------------------------------------------------


class WandbTracker(Tracker):
    """Weights & Biases (online or WANDB_MODE=offline).

    The config, every metric at its update, and a ``samples`` table of every sample so far. ``WANDB_PROJECT`` (default ``rlhf_gym``), ``WANDB_MODE=offline`` and ``WANDB_DIR`` (default: the run
    directory) are read as wandb reads them; a resumed run continues the same wandb run.
    """

    name = "wandb"
    requires = ("wandb",)
    pip_hint = _pip_hint("wandb")

    def __init__(self, run_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        _require(type(self))
        import wandb

        self._wandb = wandb
        run_id = self.previous_state.get("run_id") if self.resume else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=self.run_name,
                              dir=os.environ.get("WANDB_DIR") or str(self.run_dir), id=run_id,
                              resume="allow" if run_id else None, reinit="create_new")
        self.samples: list[Mapping[str, Any]] = []

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(jsonable(config), allow_val_change=True)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        self.samples.extend(samples)
        columns, rows = sample_table(self.samples)
        self.run.log({"samples": self._wandb.Table(columns=columns, data=rows)}, step=step)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id}

    def close(self) -> None:
        self.run.finish()


class MLflowTracker(Tracker):
    """MLflow, at MLFLOW_TRACKING_URI (a server, a database or a local file store).

    The config as parameters (nested keys joined by '.') and as ``config.json``, every metric at its update, and
    the samples appended to the ``samples.json`` table artifact.

    ``MLFLOW_TRACKING_URI`` (e.g. ``file:/path`` or ``sqlite:///mlflow.db``) and ``MLFLOW_EXPERIMENT_NAME``
    (default ``rlhf_gym``) are read as MLflow reads them; a resumed run continues the same MLflow run.
    """

    name = "mlflow"
    requires = ("mlflow",)
    pip_hint = _pip_hint("mlflow")
    #: MLflow's limit on the length of a parameter value
    MAX_PARAM_LENGTH = 6000

    def __init__(self, run_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        _require(type(self))
        from mlflow import MlflowClient

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run_id = self.previous_state.get("run_id") if self.resume else None
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        if self.resume:  # parameters are immutable in MLflow; the first run's are kept
            return
        params = [Param(k, str(v)[: self.MAX_PARAM_LENGTH]) for k, v in flatten(jsonable(config)).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i: i + 100])
        self.client.log_dict(self.run_id, jsonable(config), "config.json")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i: i + 1000])

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        if samples:
            columns, rows = sample_table(samples)
            self.client.log_table(self.run_id, {c: [r[i] for r in rows] for i, c in enumerate(columns)},
                                  "samples.json")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker(Tracker):
    """Trackio, a local SQLite database by default (or a Hugging Face Space).

    The config, every metric at its update, and a ``samples`` table of every sample so far. ``TRACKIO_PROJECT`` (default ``rlhf_gym``) and ``TRACKIO_DIR`` are read as trackio reads
    them; a resumed run continues the same trackio run."""

    name = "trackio"
    requires = ("trackio",)
    pip_hint = _pip_hint("trackio")

    def __init__(self, run_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        _require(type(self))
        import trackio

        self._trackio = trackio
        self.run: Any = None
        self.samples: list[Mapping[str, Any]] = []

    def _open(self, config: Mapping[str, Any] | None = None) -> Any:
        if self.run is None:
            self.run = self._trackio.init(project=os.environ.get("TRACKIO_PROJECT", DEFAULT_PROJECT),
                                          name=self.run_name, config=jsonable(config or {}),
                                          resume="allow" if self.resume else "never", embed=False,
                                          auto_log_cpu=False, auto_log_gpu=False)
        return self.run

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._open(config)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._open().log(dict(metrics), step=step)

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        self.samples.extend(samples)
        columns, rows = sample_table(self.samples)
        self._open().log({"samples": self._trackio.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


#: the built-in trackers, registered by the ``rlhf_gym_plugins.trackers`` plugin
BUILTIN_TRACKERS: tuple[type[Tracker], ...] = (CSVTracker, TensorBoardTracker, WandbTracker, MLflowTracker,
                                                TrackioTracker)


def registered_trackers() -> dict[str, Any]:
    """``{name: Tracker class or factory}`` of every registered tracker, built-in and plugin."""
    from rlhf_gym.plugins import list_plugins

    return {e.name: e.obj for e in list_plugins("tracker")}


def resolve_report_to(report_to: str | Iterable[str] | None) -> list[str]:
    """The tracker names a ``report_to`` value asks for, checked against the registry.

    ``None``: ``csv`` and ``tensorboard``; ``"none"`` (or an empty list): no tracker; ``"all"``: every registered
    tracker whose packages are installed; otherwise a comma-separated string or a list of names.

    Raises:
        UnknownNameError: a name no plugin registered (the message lists the known ones).
    """
    if report_to is None:
        return list(DEFAULT_REPORT_TO)
    names = [n.strip() for n in report_to.split(",")] if isinstance(report_to, str) else [str(n) for n in report_to]
    names = [n for n in names if n]
    known = registered_trackers()
    if names == ["all"]:
        return [n for n, obj in known.items() if getattr(obj, "available", lambda: True)()]
    if not names or names == ["none"]:
        return []
    out: list[str] = []
    for name in names:
        if name not in known:
            raise UnknownNameError(unknown_name_message(
                "tracker", name, known, "`none` reports nowhere, `all` to every installed tracker; "
                "`rlhf-gym plugins --kind tracker` lists them."))
        if name not in out:
            out.append(name)
    return out


def check_report_to(report_to: str | Iterable[str] | None) -> list[str]:
    """:func:`resolve_report_to`, and a missing package reported as one :class:`ConfigError` naming the pip extra,
    without building anything (so a run can fail before its first minute of work)."""
    known = registered_trackers()
    names = resolve_report_to(report_to)
    for name in names:
        if isinstance(known[name], type) and issubclass(known[name], Tracker):
            _require(known[name])
    return names


def make_trackers(report_to: str | Iterable[str] | None, run_dir: str | os.PathLike[str], *,
                  resume: bool = False, start_step: int = 0,
                  states: Mapping[str, Mapping[str, Any]] | None = None) -> list[Tracker]:
    """Build the trackers ``report_to`` names (see :func:`resolve_report_to`) for one run directory.

    A tracker whose package is missing raises one :class:`ConfigError` naming the pip extra, before any other is
    built; trackers built before a failure are closed again.
    """
    known = registered_trackers()
    names = check_report_to(report_to)
    trackers: list[Tracker] = []
    try:
        for name in names:
            tracker = known[name](run_dir, resume=resume, start_step=start_step,
                                  state=(states or {}).get(name))
            if not isinstance(tracker, Tracker):
                raise ConfigError(f"tracker {name!r} must build an rlhf_gym.trackers.Tracker, got "
                                  f"{type(tracker).__name__}")
            trackers.append(tracker)
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    return trackers
