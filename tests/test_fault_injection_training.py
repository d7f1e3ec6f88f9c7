"""Fault injection for training runs and checkpoints: kills at many points of training and saving, full disks,
and every checkpoint file damaged in many ways.

What must hold: a killed run resumed with ``rlhf-gym train --resume`` either finishes with exactly the parameters
and metrics of an unbroken run, or stops with one ``error:`` line; a damaged checkpoint is refused with a message
naming the file; a failed save leaves the previous checkpoints as they were. Every random choice is seeded, so a
failure reproduces.

Training runs in processes forked from a forkserver that has imported torch and rlhf_gym once, so each kill costs
a fork, not an interpreter start. A kill lands at a named point (a phase of a save, or inside an update after the
optimizer stepped): the child reports that it reached the point and waits there to be SIGKILLed.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

import rlhf_gym
from rlhf_gym import checkpoint, tiny
from rlhf_gym.errors import CheckpointError, RLHFGymError

SEED = 1130
UPDATES = 6
SAVE_EVERY = 2
SAVE_PHASES = ("policy", "files", "trainer_state", "manifest", "before-rename")
REPLACE_PHASES = ("swap", "replaced")


# -- the child processes -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fault_injection_child"])
    # The forkserver imports its preload modules from the environment's path (it does not inherit sys.path).
    here = str(Path(__file__).resolve().parent)
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = here + (os.pathsep + previous if previous else "")
    try:
        from fault_injection_child import train

        warm = ctx.Process(target=train, args=(["--version"], None, os.devnull, os.devnull))
        warm.start()
        warm.join()
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    return ctx


def run_child(ctx, argv: list[str], tmp: Path, kill_at: tuple | None = None, kill_when=None,
              timeout: float = 60.0) -> tuple[int | None, str]:
    """Run the CLI in a child; SIGKILL it when it reaches ``kill_at`` or as soon as ``kill_when()`` is true.
    Returns (exit code or None when killed, its output)."""
    status, log = tmp / f"status-{time.monotonic_ns()}", tmp / f"log-{time.monotonic_ns()}"
    from fault_injection_child import train

    proc = ctx.Process(target=train, args=(argv, kill_at, str(status), str(log)))
    proc.start()
    start = time.monotonic()
    killed = False
    while proc.is_alive():
        if status.exists() or (kill_when is not None and kill_when()):
            proc.kill()
            killed = True
            break
        if time.monotonic() - start > timeout:
            proc.kill()
            proc.join()
            raise AssertionError(f"child {argv} ran over {timeout}s:\n{log.read_text() if log.exists() else ''}")
        time.sleep(0.005)
    proc.join()
    output = log.read_text() if log.exists() else ""
    return (None if killed and proc.exitcode is not None and proc.exitcode < 0 else proc.exitcode), output


# -- the run every kill is compared with ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def train_args(workdir: Path, random_model_path: str) -> list[str]:
    prompts = workdir / "prompts.txt"
    prompts.write_text("\n".join(tiny.review_prompts(8)) + "\n")
    return ["train", "--algo", "rloo", "--model", random_model_path, "--prompts", str(prompts), "--reward", "length",
            "--eval-samples", "2", "--ground-truth", "none", "--no-progress", "--num_prompts", "2", "--group_size",
            "2", "--max-new-tokens", "4", "--save_every", str(SAVE_EVERY), "--tensorboard", "false",
            "--sample_every", "1"]


def final_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    from safetensors.torch import load_file

    from rlhf_gym.run_logger import read_metrics

    weights = load_file(str(run_dir / "checkpoints" / "last" / "policy" / "model.safetensors"))
    rows = [{k: v for k, v in r.items() if not k.startswith(("timing/", "perf/"))} for r in read_metrics(run_dir)]
    return weights, rows


@pytest.fixture(scope="module")
def unbroken(forkserver, workdir: Path, train_args: list[str]):
    run_dir = workdir / "unbroken"
    code, out = run_child(forkserver, [*train_args, "--updates", str(UPDATES), "--out", str(run_dir)], workdir)
    assert code == 0, out
    return final_state(run_dir)


@pytest.fixture(scope="module")
def half_run(forkserver, workdir: Path, train_args: list[str]) -> Path:
    """A run stopped cleanly at update 3: it has step-2 and `last` (3), so a resume replaces `last`."""
    run_dir = workdir / "half"
    code, out = run_child(forkserver, [*train_args, "--updates", "3", "--out", str(run_dir)], workdir)
    assert code == 0, out
    return run_dir


def _kill_points() -> list[tuple[str, tuple]]:
    """Seeded choice of kill points: in each save phase of some save, and inside some updates."""
    rng = random.Random(SEED)
    fresh = [("fresh", ("optimizer-stepped", k)) for k in rng.sample(range(1, UPDATES + 1), 2)]
    offset = rng.randrange(UPDATES // SAVE_EVERY)  # phases spread over the run's saves (step-2, -4, -6)
    fresh += [("fresh", (phase, 1 + (i + offset) % (UPDATES // SAVE_EVERY))) for i, phase in enumerate(SAVE_PHASES)]
    # A resume of the half run writes step-4, step-6 and then replaces `last`: the 3rd save of that leg.
    resumed = [("resume", ("swap", 1)), ("resume", ("replaced", 1)), ("resume", ("manifest", 3))]
    resumed += [("resume", ("optimizer-stepped", rng.randint(1, 3)))]
    return fresh + resumed


def _assert_continues_or_refuses(forkserver, workdir, run_dir: Path, unbroken) -> str:
    code, out = run_child(forkserver, ["train", "--resume", str(run_dir), "--updates", str(UPDATES), "--no-progress"],
                          workdir)
    if code == 2:
        lines = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "no usable checkpoint" in lines[0] and "Traceback" not in out, out
        return "refused"
    assert code == 0, out
    weights, rows = final_state(run_dir)
    want_weights, want_rows = unbroken
    assert set(weights) == set(want_weights)
    assert all(torch.equal(weights[k], want_weights[k]) for k in weights), "resumed to different parameters"
    assert rows == want_rows, "resumed to different metrics"
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")], "leftovers not cleaned"
    assert (run_dir / "policy" / "model.safetensors").is_file() and (run_dir / "summary.json").is_file()
    return "continued"


@pytest.mark.parametrize(("leg", "kill_at"), _kill_points(), ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else v)
def test_killed_run_resumes_to_the_unbroken_result(forkserver, workdir, train_args, unbroken, half_run, leg, kill_at,
                                                   tmp_path):
    run_dir = tmp_path / "run"
    if leg == "fresh":
        argv = [*train_args, "--updates", str(UPDATES), "--out", str(run_dir)]
    else:
        shutil.copytree(half_run, run_dir)
        argv = ["train", "--resume", str(run_dir), "--updates", str(UPDATES), "--no-progress"]
    code, out = run_child(forkserver, argv, workdir, kill_at=kill_at)
    assert code is None, f"the child was not killed at {kill_at}:\n{out}"
    outcome = _assert_continues_or_refuses(forkserver, workdir, run_dir, unbroken)
    # A kill after the first whole checkpoint must continue; only one before it may leave nothing to resume.
    point, count = kill_at
    step_2_whole = leg == "resume" or (count > SAVE_EVERY if point == "optimizer-stepped" else count > 1)
    if step_2_whole:
        assert outcome == "continued"


def test_kills_at_random_times_never_resume_wrongly(forkserver, workdir, train_args, unbroken, tmp_path):
    """Kills not tied to any named point: a seeded random moment after the n-th logged update."""
    rng = random.Random(SEED + 1)
    outcomes = []
    for i in range(2):
        run_dir = tmp_path / f"run-{i}"
        rows, delay = rng.randint(1, 4), rng.uniform(0.0, 0.08)
        seen: list[float] = []

        def due(run_dir=run_dir, rows=rows, delay=delay, seen=seen) -> bool:
            metrics = run_dir / "metrics.csv"
            if not seen and metrics.exists() and len(metrics.read_text().splitlines()) > rows:
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() - seen[0] >= delay

        code, out = run_child(forkserver, [*train_args, "--updates", str(UPDATES), "--out", str(run_dir)], workdir,
                              kill_when=due)
        if code == 0:  # finished before the kill landed: nothing to resume
            continue
        outcomes.append(_assert_continues_or_refuses(forkserver, workdir, run_dir, unbroken))
    assert outcomes  # at least one kill landed mid-run


# -- checkpoints damaged on disk ---------------------------------------------------------------------------------
def length_reward(prompts, completions, **kw):
    return [len(c.split()) / 8.0 for c in completions]


@pytest.fixture(scope="module")
def trained(random_model_path, tmp_path_factory):
    """One PPO checkpoint (value head and reference included) and the env to load it with."""
    import gymnasium as gym

    from rlhf_gym.policy import Policy

    policy = Policy.from_pretrained(random_model_path, value_head=True)
    env = gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=tiny.review_prompts(8),
                   reward=length_reward, max_new_tokens=4, max_prompt_tokens=8, vocab_size=policy.vocab_size)
    algo = rlhf_gym.make_algorithm("ppo", env=env, policy=policy, num_prompts=2, minibatch_size=2, ppo_epochs=1,
                                   seed=1)
    algo.learn(1, progress_bar=False)
    path = algo.save(tmp_path_factory.mktemp("ckpt") / "step-1")
    return type(algo), path, env


def _corrupt(file: Path, mode: str, rng: random.Random) -> None:
    data = file.read_bytes()
    if mode == "truncate":
        file.write_bytes(data[: rng.randrange(len(data))] if data else b"")
    elif mode == "empty":
        file.write_bytes(b"")
    elif mode == "zero-fill":
        start = rng.randrange(len(data))
        length = rng.randint(1, max(1, min(4096, len(data) - start)))
        file.write_bytes(data[:start] + bytes(length) + data[start + length:])
    elif mode == "flip":
        buf = bytearray(data)
        for offset in rng.sample(range(len(buf)), min(3, len(buf))):
            buf[offset] ^= 1 << rng.randrange(8)
        file.write_bytes(bytes(buf))
    elif mode == "garbage":
        file.write_bytes(rng.randbytes(rng.randint(1, 2048)))
    elif mode == "pickle":
        file.write_bytes(pickle.dumps({"weights": list(range(10))}))
    elif mode == "delete":
        file.unlink()
    else:
        raise ValueError(mode)


MODES = ("truncate", "empty", "zero-fill", "flip", "garbage", "pickle", "delete")


def _checkpoint_files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def test_every_damaged_checkpoint_file_is_refused_naming_it(trained, tmp_path):
    cls, path, env = trained
    rng = random.Random(SEED + 2)
    files = _checkpoint_files(path)
    assert {"manifest.json", "trainer_state.json", "trainer_state.safetensors", "policy/model.safetensors",
            "policy/config.json", "policy/value_head.safetensors", "reference/model.safetensors"} <= set(files)
    tried = 0
    for rel in files:
        for mode in MODES:
            if mode == "empty" and (path / rel).stat().st_size == 0:
                continue
            copy = tmp_path / f"v{tried}"
            shutil.copytree(path, copy)
            _corrupt(copy / rel, mode, rng)
            with pytest.raises(CheckpointError) as err:
                cls.load(copy, env=env)
            assert rel in str(err.value) or (rel == "manifest.json" and "manifest" in str(err.value)), (rel, mode)
            assert "\n" not in str(err.value)
            shutil.rmtree(copy)
            tried += 1
    assert tried >= 7 * len(files) - 3


@pytest.mark.parametrize("part", ["reference", "policy", "policy/tokenizer.json", "policy/value_head.safetensors"])
def test_missing_part_is_an_error_never_a_substitute(trained, tmp_path, part):
    cls, path, env = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    target = copy / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match=part.split("/")[0]):
        cls.load(copy, env=env)


def test_reference_deleted_from_a_checkpoint_without_manifest_is_still_an_error(trained, tmp_path):
    """Even past the manifest (re-written over a deleted reference/), the reference is never replaced by the
    current policy."""
    cls, path, env = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "reference")
    meta = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").unlink()
    checkpoint.write_manifest(copy, num_updates=meta["num_updates"], algorithm=meta["algorithm"])
    with pytest.raises(CheckpointError, match="reference model is missing"):
        cls.load(copy, env=env)


@pytest.mark.parametrize("rel", ["trainer_state.json", "trainer_state.safetensors", "policy/model.safetensors",
                                 "policy/config.json", "policy/tokenizer.json", "policy/value_head.safetensors"])
@pytest.mark.parametrize("mode", ["truncate", "empty", "garbage", "pickle"])
def test_unreadable_files_behind_a_consistent_manifest_are_named(trained, tmp_path, rel, mode):
    """Files damaged before the manifest was written (so it agrees with them) still give one error naming them."""
    cls, path, env = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    _corrupt(copy / rel, mode, random.Random(f"{SEED}{rel}{mode}"))
    meta = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").unlink()
    checkpoint.write_manifest(copy, num_updates=meta["num_updates"], algorithm=meta["algorithm"])
    with pytest.raises(RLHFGymError) as err:
        cls.load(copy, env=env)
    assert Path(rel).name in str(err.value) and "\n" not in str(err.value)


def test_a_pickle_next_to_the_weights_is_refused(trained, tmp_path):
    cls, path, env = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    (copy / "policy" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        cls.load(copy, env=env)


# -- saves that fail ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", SAVE_PHASES + REPLACE_PHASES)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failed_save_leaves_the_previous_checkpoint_whole(trained, tmp_path, phase, code):
    cls, path, env = trained
    algo = cls.load(path, env=env)
    target = tmp_path / "last"
    algo.save(target)
    before = checkpoint.verify_checkpoint(target)

    def fail(point):
        if point == phase:
            raise OSError(code, os.strerror(code))

    checkpoint.phase_hook = fail
    try:
        if phase == "replaced":  # the new checkpoint is in place; only tidying the old one is left
            algo.save(target)
        else:
            with pytest.raises(CheckpointError, match="disk is full" if code == errno.ENOSPC else "read-only"):
                algo.save(target)
    finally:
        checkpoint.phase_hook = None
    assert checkpoint.verify_checkpoint(target)["files"] == before["files"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(checkpoint.TMP_PREFIX)] == []
    checkpoint.recover_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_interrupted_replacement_is_restored_on_the_next_run(trained, tmp_path):
    cls, path, env = trained
    algo = cls.load(path, env=env)
    target = tmp_path / "last"
    algo.save(target)
    aside = tmp_path / f"{checkpoint.OLD_PREFIX}last-999999-abcd"
    os.rename(target, aside)  # a kill between moving the old `last` aside and renaming the new one in
    (tmp_path / f"{checkpoint.TMP_PREFIX}last-999999-abcd").mkdir()
    assert checkpoint.find_checkpoints(tmp_path) == []
    notes = checkpoint.recover_checkpoints(tmp_path)
    assert len(notes) == 2 and checkpoint.find_checkpoints(tmp_path) == [target]
    checkpoint.verify_checkpoint(target)


def test_saving_over_a_directory_that_is_not_a_checkpoint_refuses(trained, tmp_path):
    cls, path, env = trained
    algo = cls.load(path, env=env)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not an rlhf_gym checkpoint"):
        algo.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# -- the command line: one `error:` line, exit code 2 ---------------------------------------------------------------
def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from rlhf_gym.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("file", "mode", "expect"), [
    ("model.safetensors", "truncate", "model.safetensors"), ("model.safetensors", "empty", "model.safetensors"),
    ("model.safetensors", "garbage", "model.safetensors"), ("config.json", "garbage", "config.json"),
    ("model.safetensors", "pickle-bin", "refuses pickle"), ("model.safetensors", "drop-tensors", "would start at random"),
])
def test_damaged_model_given_to_train_is_one_error_line(random_model_path, train_args, tmp_path, capsys, file, mode,
                                                        expect):
    model = tmp_path / "model"
    shutil.copytree(random_model_path, model)
    if mode == "pickle-bin":
        (model / file).unlink()
        (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif mode == "drop-tensors":  # a whole, readable file that lacks some of the model's weights
        from safetensors.torch import load_file, save_file

        weights = load_file(str(model / file))
        kept = sorted(weights)[::2]
        save_file({k: weights[k] for k in kept}, str(model / file), metadata={"format": "pt"})
    else:
        _corrupt(model / file, mode, random.Random(SEED))
    argv = [a if a != random_model_path else str(model) for a in train_args]
    code, _, err = _cli([*argv, "--updates", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert expect in _one_error_line(err)


def test_resume_skips_a_damaged_newest_checkpoint_and_says_so(half_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(half_run, run_dir)
    _corrupt(run_dir / "checkpoints" / "last" / "policy" / "model.safetensors", "flip", random.Random(SEED))
    code, _, err = _cli(["train", "--resume", str(run_dir), "--updates", "4", "--no-progress"], capsys)
    assert code == 0, err
    assert "warning: skipping checkpoint" in err and "last" in err and "model.safetensors" in err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resumed"][-1]["checkpoint"] == "checkpoints/step-2" and config["resumed"][-1]["at_update"] == 2
    assert [r["step"] for r in __import__("rlhf_gym.run_logger").run_logger.read_metrics(run_dir)] == [1, 2, 3, 4]

    for ckpt in (run_dir / "checkpoints").iterdir():  # every checkpoint damaged: nothing to resume from
        (ckpt / "trainer_state.json").write_text("{")
    code, _, err = _cli(["train", "--resume", str(run_dir), "--updates", "6", "--no-progress"], capsys)
    assert code == 2 and "no usable checkpoint" in _one_error_line(err)


def test_resume_applies_safe_overrides_records_them_and_refuses_the_rest_by_name(half_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(half_run, run_dir)
    for argv, name in ((["--group_size", "4"], "group_size"), (["--model", "gpt2"], "--model"),
                       (["--num_prompts", "3"], "num_prompts"), (["--seed", "9"], "--seed"),
                       (["--updates", "1"], "below the 3 updates")):
        code, _, err = _cli(["train", "--resume", str(run_dir), "--no-progress", *argv], capsys)
        assert code == 2 and name in _one_error_line(err), (argv, err)
    code, _, err = _cli(["train", "--resume", str(run_dir), "--updates", "4", "--no-progress", "--beta", "3",
                         "--learning_rate", "5"], capsys)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["beta"] == 3.0 and config["learning_rate"] == 5.0 and config["run"]["algo_config"]["beta"] == 3.0
    assert config["resumed"][-1]["overrides"] == {"beta": 3.0, "learning_rate": 5.0, "updates": 4}
    state = json.loads((run_dir / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {5.0}
    rows = __import__("rlhf_gym.run_logger").run_logger.read_metrics(run_dir)
    # the KL budget's controller moves β a little each update; the override restarts it from 3
    assert [r["objective/beta"] for r in rows] == pytest.approx([0.05, 0.05, 0.05, 3.0], rel=0.01)
    assert (run_dir / "policy" / "model.safetensors").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["after"]["mean"] is not None


def test_full_disk_or_read_only_run_dir_is_one_error_line(train_args, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"

    def disk_full(point):
        if point == "trainer_state" and (run_dir / "checkpoints" / "step-2").is_dir():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "phase_hook", disk_full)
    code, _, err = _cli([*train_args, "--updates", "6", "--out", str(run_dir)], capsys)
    assert code == 2 and "disk is full" in _one_error_line(err)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]
    checkpoint.verify_checkpoint(run_dir / "checkpoints" / "step-2")

    monkeypatch.setattr(checkpoint, "phase_hook", None)
    code, _, err = _cli([*train_args, "--updates", "6", "--out", str(run_dir)], capsys)  # a new run over it
    assert code == 2 and "already holds checkpoints of an earlier run" in _one_error_line(err)

    real_write = Path.write_bytes

    def read_only(self, data):
        if str(self).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    for argv in (["train", "--resume", str(run_dir), "--no-progress"],
                 [*train_args, "--updates", "1", "--out", str(tmp_path / "other")]):
        code, _, err = _cli(argv, capsys)
        assert code == 2 and "read-only" in _one_error_line(err)


# -- a plugin written as docs/plugins.md shows resumes exactly, saving nothing itself --------------------------------
def _example_module():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "custom_algorithm_example", Path(__file__).resolve().parents[1] / "examples" / "custom_algorithm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class RandomPicks(rlhf_gym.Algorithm):
    """A plugin with RNGs of every kind as plain attributes (and the global numpy one): all saved by the base."""

    name = "random-picks"

    def setup(self):
        import numpy as np

        from rlhf_gym.rollout import RolloutWorker

        self.rollouts = RolloutWorker(self.env, self.policy, num_prompts=2, group_size=2, seed=self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.coin = random.Random(self.config.seed)
        self.noise = torch.Generator().manual_seed(self.config.seed)

    def train_step(self):
        import numpy as np

        from rlhf_gym.losses import sft_loss

        batch = self.rollouts.collect()
        pick = int(self.rng.integers(len(batch)))
        scale = self.coin.random() + float(np.random.rand()) + float(torch.rand((), generator=self.noise))
        one = batch.select(torch.tensor([pick]))
        out = self.policy(one.prompt_ids, one.prompt_mask, one.completion_ids, one.completion_mask)
        self.clip_and_step(scale * sft_loss(out.logprobs, one.completion_mask))
        return {"pick": float(pick), "scale": scale, "objective/scores": float(batch.scores.mean())}


@pytest.mark.parametrize(("which", "stop_at"), [("docs", 1), ("docs", 3), ("rngs", 2)])
def test_plugin_as_the_docs_show_resumes_bit_identically(random_model_path, trained, tmp_path, which, stop_at):
    from rlhf_gym.policy import Policy

    _, _, env = trained
    if which == "docs":
        cls, config = _example_module().BestOfN, {"n": 2, "num_prompts": 2, "seed": 5}
    else:
        cls, config = RandomPicks, {"seed": 5}

    def fresh(**extra):
        return cls(env=env, policy=Policy.from_pretrained(random_model_path, value_head=False), **config, **extra)

    def record(into):
        return lambda algo, m: into.append({k: v for k, v in m.items() if not k.startswith(("timing", "perf"))})

    straight, want = fresh(), []
    straight.learn(4, callback=record(want), progress_bar=False)
    run_dir = tmp_path / "run"
    first, got = fresh(run_dir=str(run_dir), save_every=1, tensorboard=False), []
    first.learn(4, callback=[record(got), lambda algo, m: algo.num_updates < stop_at], progress_bar=False)
    first.close()
    resumed = cls.load(run_dir / "checkpoints" / f"step-{stop_at}", env=env)
    assert resumed.num_updates == stop_at
    resumed.learn(4, callback=record(got), progress_bar=False)
    assert got == want
    for p, q in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_library_load_applies_kl_overrides_and_refuses_turning_the_penalty_on(random_model_path, trained, tmp_path):
    from rlhf_gym.errors import ConfigError
    from rlhf_gym.kl import AdaptiveKLController

    _, _, env = trained
    for beta in (0.0, 0.1):
        algo = rlhf_gym.make_algorithm("rloo", env=env, policy=random_model_path, num_prompts=2, group_size=2,
                                       beta=beta, kl_target=None, seed=2)  # β fixed, so turning the budget on shows
        algo.learn(1, progress_bar=False)
        algo.save(tmp_path / f"beta-{beta}")
    cls = type(algo)
    with pytest.raises(ConfigError, match="cannot turn the KL penalty on"):
        cls.load(tmp_path / "beta-0.0", env=env, beta=0.5)
    with pytest.raises(ConfigError, match=r"cannot change group_size \(2 → 3\)"):
        cls.load(tmp_path / "beta-0.1", env=env, group_size=3)
    adaptive = cls.load(tmp_path / "beta-0.1", env=env, kl_target=4.0, learning_rate=1e-3)
    assert isinstance(adaptive.kl_ctl, AdaptiveKLController) and adaptive.kl_ctl.value == pytest.approx(0.1)
    assert {g["lr"] for g in adaptive.optimizer.param_groups} == {1e-3}
    assert adaptive.resumed_overrides == {"kl_target": 4.0, "learning_rate": 1e-3}
    off = cls.load(tmp_path / "beta-0.1", env=env, beta=0.0)
    assert off.reference is None and off.kl_ctl.value == 0.0
