"""Experiment trackers: `report_to=` / `--report-to` reach csv, TensorBoard, wandb (offline), MLflow (a local file
store), trackio (local) and a plugin's tracker; each gets the run's config, every metric and the sample table, read
back here from the tracker's own files."""

from __future__ import annotations

import glob
import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import rlhf_gym
from rlhf_gym.errors import ConfigError, UnknownNameError
from rlhf_gym.policy import Policy
from rlhf_gym.run_logger import read_metrics
from rlhf_gym.trackers import Tracker, make_trackers, resolve_report_to


def length_reward(prompts, completions, **kw):
    return [float(len(c.split())) for c in completions]


class Recorder(Tracker):
    """A plugin's tracker that keeps every call."""

    name = "recorder"
    calls: list = []

    def __init__(self, run_dir, **kwargs):
        super().__init__(run_dir, **kwargs)
        self.config = None
        self.metrics: list[tuple[int, dict]] = []
        self.samples: list[dict] = []
        self.closed = False
        Recorder.calls.append(self)

    def log_config(self, config):
        self.config = config

    def log_metrics(self, step, metrics):
        self.metrics.append((step, dict(metrics)))

    def log_samples(self, step, samples):
        self.samples.extend(samples)

    def close(self):
        self.closed = True


class RecorderPlugin:
    @rlhf_gym.hookimpl
    def register_trackers(self, register):
        register("recorder", Recorder)


@pytest.fixture
def recorder_plugin():
    name = rlhf_gym.register_plugin(RecorderPlugin(), name="recorder-plugin")
    Recorder.calls.clear()
    yield
    rlhf_gym.unregister_plugin(name)


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-8, abs_tol=1e-9)


def same_samples(got: list[dict], expected: list[dict]) -> bool:
    """Equal sample tables, floats to 9 significant digits (some services round them)."""
    def close(a, b):
        if isinstance(a, float) or isinstance(b, float):
            return isinstance(a, (int, float)) and isinstance(b, (int, float)) and same_number(float(a), float(b))
        return a == b

    return len(got) == len(expected) and all(
        g.keys() == e.keys() and all(close(g[k], e[k]) for k in e) for g, e in zip(got, expected))


def assert_rows_match(expected: list[dict], got: dict[int, dict], who: str) -> None:
    """Every metric of every metrics.csv row reached the tracker, with its value, at its step."""
    assert sorted(got) == [int(r["step"]) for r in expected], who
    for row in expected:
        logged = got[int(row["step"])]
        for key, value in row.items():
            if key != "step":
                assert key in logged, f"{who}: {key} missing at step {row['step']}"
                assert same_number(float(logged[key]), value), (who, key, logged[key], value)


def test_plugin_tracker_gets_config_every_metric_and_samples_from_python_learn(random_model_path, tmp_path,
                                                                                recorder_plugin):
    policy = Policy.from_pretrained(random_model_path)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=["a b", "c d e", "f"],
                   reward=length_reward, max_new_tokens=6, vocab_size=policy.vocab_size)
    run_dir = tmp_path / "run"
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=policy, num_prompts=2,
                                   group_size=2, run_dir=str(run_dir), sample_every=1, report_to="csv,recorder")
    algo.learn(3, progress_bar=False)
    algo.close()
    (tracker,) = Recorder.calls
    assert tracker.closed
    assert tracker.config == json.loads((run_dir / "config.json").read_text())
    assert tracker.config["report_to"] == "csv,recorder"
    assert_rows_match(read_metrics(run_dir), dict(tracker.metrics), "recorder")
    written = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert tracker.samples == written and len(written) == 3 * algo.config.num_logged_samples
    assert not (run_dir / "tensorboard").exists(), "tensorboard was not asked for"


def test_report_to_names_are_checked_and_none_all_work(tmp_path, recorder_plugin):
    assert resolve_report_to(None) == ["csv", "tensorboard"]
    assert resolve_report_to("none") == [] and resolve_report_to([]) == []
    assert resolve_report_to(" wandb , csv,wandb") == ["wandb", "csv"]
    assert {"csv", "tensorboard", "wandb", "mlflow", "trackio", "recorder"} <= set(resolve_report_to("all"))
    with pytest.raises(UnknownNameError, match="Did you mean 'tensorboard'"):
        resolve_report_to("tensorbord")
    assert make_trackers("none", tmp_path) == []
    assert "recorder" in {e.name for e in rlhf_gym.list_plugins("tracker")}


@pytest.mark.parametrize("name, package", [("wandb", "wandb"), ("mlflow", "mlflow"), ("trackio", "trackio")])
def test_missing_tracker_package_is_one_error_naming_the_pip_extra(name, package, tmp_path, monkeypatch,
                                                                    recorder_plugin):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a))
    assert name not in resolve_report_to("all")
    with pytest.raises(ConfigError, match=rf"needs the {package} package.*rlhf_gym\[trackers\]"):
        make_trackers(f"recorder,{name}", tmp_path)
    assert Recorder.calls == [], "nothing is built when one tracker cannot be"


# -- the CLI, offline, to every service --------------------------------------------------------------------------


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline wandb run file (the LevelDB-style log wandb writes)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "*.wandb"))
    data, block, pos, chunk, records = Path(path).read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


TRACKED_RUN = ["--sft-updates", "0", "--updates", "3", "--eval-samples", "8", "--num-prompts", "4",
               "--max-new-tokens", "8", "--sample-every", "1", "--no-progress"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rlhf_gym", "train", *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_kit):
    """One short `rlhf-gym train` run reporting to every built-in tracker, offline: (run dir, tracker dir, output)."""
    import importlib.util

    missing = [p for p in ("wandb", "mlflow", "trackio") if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[trackers]'")
    tmp = tmp_path_factory.mktemp("tracked")
    out, store = tmp / "run", tmp / "trackers"
    store.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(store), "WANDB_SILENT": "true",
           "MLFLOW_TRACKING_URI": f"file:{store / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
           "TRACKIO_DIR": str(store / "trackio"), "TRACKIO_PROJECT": "cli-test", "MLFLOW_EXPERIMENT_NAME": "cli-test"}
    proc = cli("--out", str(out), *TRACKED_RUN, "--report-to", "csv,tensorboard,wandb,mlflow,trackio", env=env)
    return out, store, proc


@pytest.mark.slow
def test_cli_reports_config_metrics_and_samples_to_wandb_mlflow_and_trackio_offline(tracked_run, monkeypatch):
    out, store, proc = tracked_run
    assert "Downloading artifacts" not in proc.stderr, "--no-progress silences MLflow's bars too"
    config = json.loads((out / "config.json").read_text())
    rows = read_metrics(out)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(samples) == 12 and list((out / "tensorboard").glob("events.out.tfevents.*"))

    # wandb: the run's config, every metric at its step, and the last samples table holds every sample
    (wandb_run,) = [Path(p) for p in glob.glob(str(store / "wandb" / "offline-run-*"))]
    records = wandb_records(wandb_run)
    logged_config = {}
    for r in records:
        which = r.WhichOneof("record_type")
        if which in ("run", "config"):
            updates = r.run.config.update if which == "run" else r.config.update
            logged_config.update({u.key: json.loads(u.value_json) for u in updates})
    assert all(logged_config.get(k) == v for k, v in config.items()), "wandb has the run's config"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): i.value_json for i in r.history.item}
            history.setdefault(int(items["_step"]), {}).update(
                {k: float(json.loads(v)) for k, v in items.items() if not k.startswith(("_", "samples"))})
    assert_rows_match(rows, history, "wandb")
    tables = sorted(wandb_run.glob("files/media/table/samples_*.table.json"), key=lambda p: int(p.name.split("_")[1]))
    table = json.loads(tables[-1].read_text())
    assert same_samples([dict(zip(table["columns"], row)) for row in table["data"]], samples)

    # MLflow (local file store): params, config.json artifact, every metric's history, the samples table
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file:{store / 'mlruns'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    assert run.data.params["algorithm"] == "ppo" and run.data.params["run.updates"] == "3"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://").removeprefix("file:"))
    assert json.loads((artifacts / "config.json").read_text()) == config
    mlflow_rows = {}
    for key in rows[0]:
        if key != "step":
            for m in client.get_metric_history(run.info.run_id, key):
                mlflow_rows.setdefault(m.step, {})[key] = m.value
    assert_rows_match(rows, mlflow_rows, "mlflow")
    table = json.loads((artifacts / "samples.json").read_text())
    assert same_samples([dict(zip(table["columns"], row)) for row in table["data"]], samples)

    # trackio (local SQLite): config, every metric at its step, the samples table
    db = sqlite3.connect(store / "trackio" / "cli-test.db")
    ((trackio_config,),) = db.execute("SELECT config FROM configs").fetchall()
    assert all(json.loads(trackio_config).get(k) == v for k, v in config.items())
    trackio_rows, trackio_samples = {}, []
    for step, metrics in db.execute("SELECT step, metrics FROM metrics ORDER BY id"):
        metrics = json.loads(metrics)
        if "samples" in metrics:
            trackio_samples = metrics["samples"]["_value"]
        else:
            trackio_rows.setdefault(step, {}).update(metrics)
    assert_rows_match(rows, trackio_rows, "trackio")
    assert same_samples(trackio_samples, samples)


@pytest.mark.slow
def test_a_runs_own_config_json_reproduces_the_run(tracked_run, tmp_path):
    """`rlhf-gym train --config RUN/config.json` into a new directory makes the same updates (timings aside)."""
    out, _, _ = tracked_run
    again = tmp_path / "again"
    cli("--config", str(out / "config.json"), "--out", str(again), "--report-to", "csv")
    first, second = read_metrics(out), read_metrics(again)
    assert len(first) == len(second) == 3
    for a, b in zip(first, second, strict=True):
        for key, value in a.items():
            if not key.startswith(("timing/", "perf/")):
                assert same_number(b[key], value), (key, a["step"], value, b[key])
    config, rerun = (json.loads((d / "config.json").read_text()) for d in (out, again))
    assert rerun["run"]["out"] == str(again) and rerun["run_dir"] == str(again)
    assert rerun["report_to"] == "csv" and not (again / "tensorboard").exists()
    assert ({k: v for k, v in rerun["run"].items() if k not in ("out", "algo_config")}
            == {k: v for k, v in config["run"].items() if k not in ("out", "algo_config")})
    drop = ("run", "run_dir", "report_to")
    assert {k: v for k, v in rerun.items() if k not in drop} == {k: v for k, v in config.items() if k not in drop}


def test_resumed_run_continues_the_same_mlflow_run(random_model_path, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resume-test")
    policy = Policy.from_pretrained(random_model_path)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=["a b", "c d e", "f"],
                   reward=length_reward, max_new_tokens=4, vocab_size=policy.vocab_size)
    run_dir = tmp_path / "run"
    config = dict(num_prompts=2, group_size=2, run_dir=str(run_dir), report_to="csv,mlflow")
    algo = rlhf_gym.make_algorithm("rloo", env=env, policy=policy, **config)
    algo.learn(2, progress_bar=False)
    algo.close()
    resumed = rlhf_gym.plugins.algorithm_class("rloo").load(run_dir / "checkpoints" / "last", env=env)
    resumed.learn(4, progress_bar=False)
    resumed.close()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("resume-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "objective/scores")] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in read_metrics(run_dir)] == [1, 2, 3, 4]
