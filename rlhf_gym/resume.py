"""``rlhf-gym train --resume RUN_DIR``: continue a run from its newest intact checkpoint.

Checkpoints are tried newest first and verified against their manifests; a damaged one is skipped with a warning
naming it. Options that may change mid-run are applied and recorded in the run's ``config.json``; the others are
refused by name. A resumed run's directory ends as complete as a fresh one's (``policy/``, ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rlhf_gym.errors import ConfigError
from rlhf_gym.train import (
    RUN_OPTION_HELP,
    RunOptions,
    _connect_ray,
    _eval_summary,
    _options_dict,
    _read_config_file,
    _say,
    make_env,
)


def check_writable(run_dir: Path) -> None:
    """Fail before any work when ``run_dir`` cannot be written (read-only, no permission, disk full)."""
    from rlhf_gym.errors import CheckpointError, write_error_message

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(write_error_message(run_dir, exc, "write to the run directory")) from exc


#: run options a resume may change; the others define the run (model, prompts, reward, batch shape ...)
RESUMABLE_RUN_OPTIONS = frozenset({"updates", "eval_samples"})


def _read_run_config(path: Path) -> dict[str, Any]:
    from rlhf_gym.errors import CheckpointError, file_error_message

    config_file = path / "config.json"
    if not path.is_dir():
        raise ConfigError(f"run directory {path} does not exist; pass the run directory of an earlier `rlhf-gym train`")
    if not config_file.is_file():
        raise ConfigError(f"{path} is not a run directory (no config.json); pass the run directory of an earlier "
                          f"`rlhf-gym train`")
    try:
        saved = json.loads(config_file.read_text())
        if not isinstance(saved, dict) or "algorithm" not in saved:
            raise ValueError("no 'algorithm' entry")
    except (OSError, ValueError) as exc:
        raise CheckpointError(file_error_message(config_file, exc, "run config")) from exc
    return saved


def _initial_policy(path: Path, run_opts: RunOptions, algo: Any) -> Any:
    """The policy the run started from (to score "before" and measure KL against): the checkpoint's frozen
    reference, else the run's SFT policy or ``--model``; None when none of them is at hand."""
    from rlhf_gym.errors import RLHFGymError
    from rlhf_gym.policy import Policy

    reference = getattr(algo, "reference", None)
    if reference is not None and not getattr(reference, "adapter_disabled", True):
        return Policy(reference.model, algo.policy.tokenizer, value_head=False)
    for candidate in (path / "sft", path.parent / "sft", run_opts.model):
        if candidate and (not isinstance(candidate, Path) or candidate.is_dir()):
            try:
                return Policy.from_pretrained(str(candidate), value_head=False).to(algo.policy.device)
            except RLHFGymError:
                continue
    return None


def _explicit_run_options(args: argparse.Namespace | None) -> set[str]:
    if args is None:
        return set()
    given = {k for k in RUN_OPTION_HELP if getattr(args, k, None) is not None}
    if getattr(args, "config", None):
        given |= {k.replace("-", "_") for k in _read_config_file(args.config) if hasattr(RunOptions, k.replace("-", "_"))}
    return given


def resume(run_dir: str, opts: RunOptions, progress: bool, args: argparse.Namespace | None = None) -> int:
    """Continue ``run_dir`` from its newest complete checkpoint up to ``--updates`` updates in total.

    Checkpoints (``step-N`` and ``last``) are tried newest first; a damaged or incomplete one is skipped with a
    warning naming it. Options that may change mid-run (``--updates``, learning rate, β, logging cadence, ...) are
    applied and recorded under ``resumed`` in ``config.json``; the others are refused by name. The run directory
    ends as a fresh run's does: ``policy/``, ``summary.json``, metrics continued from the checkpoint's update.
    """
    import datetime

    from rlhf_gym.checkpoint import find_checkpoints, recover_checkpoints, verify_checkpoint
    from rlhf_gym.errors import CheckpointError, write_error_message
    from rlhf_gym.plugins import algorithm_class
    from rlhf_gym.policy import ModelLoadError, Policy
    from rlhf_gym.rollout import evaluate

    path = Path(run_dir)
    saved = _read_run_config(path)
    run_opts = RunOptions(**{k: v for k, v in (saved.get("run") or {}).items() if hasattr(RunOptions, k)})
    changed_run = {k: getattr(opts, k) for k in _explicit_run_options(args)
                   if getattr(opts, k) != getattr(run_opts, k)}
    refused = sorted(k for k in changed_run if k not in RESUMABLE_RUN_OPTIONS)
    if refused:
        shown = ", ".join(f"--{k.replace('_', '-')} ({getattr(run_opts, k)!r} → {changed_run[k]!r})" for k in refused)
        raise ConfigError(f"cannot change {shown} when resuming {path}: they define the run. A resume may change "
                          f"--updates, --eval-samples and the algorithm fields listed by `rlhf-gym train --algo "
                          f"{saved['algorithm']} --list-fields` that do not change the batch (learning rate, β, "
                          f"logging and saving cadence); start a new run (--out) for anything else")
    for key, value in changed_run.items():
        setattr(run_opts, key, value)
    check_writable(path)
    for note in recover_checkpoints(path / "checkpoints"):
        print(f"note: {note}", file=sys.stderr)
    algo_cls = algorithm_class(saved["algorithm"])
    # --ray ADDRESS / --rollout-workers N given again: resume on another cluster or with another worker count
    ray_overrides = {k: opts.algo_config[k] for k in ("rollout_workers", "ray_address") if k in opts.algo_config}
    if "ray_address" in ray_overrides:
        ray_overrides.setdefault("rollout_workers", max(int(saved.get("rollout_workers") or 0), 1))
    _connect_ray({**saved, **ray_overrides})
    prompts = run_opts.prompts
    if prompts is None and run_opts.model is None:
        from rlhf_gym import tiny

        prompts = tiny.review_prompts()
    overrides = {**{k: v for k, v in opts.algo_config.items() if k != "run_dir"}, **ray_overrides}
    algo = env = None
    tried: list[str] = []
    for ckpt in find_checkpoints(path / "checkpoints"):
        try:
            verify_checkpoint(ckpt)
            policy = Policy.from_pretrained(str(ckpt / "policy"), value_head=algo_cls.needs_value_head)
            env = make_env(run_opts, policy, prompts)
            algo = algo_cls.load(ckpt, env=env, policy=policy, verify=False, run_dir=str(path), **overrides)
            break
        except (CheckpointError, ModelLoadError) as exc:
            print(f"warning: skipping checkpoint {ckpt}: {exc}", file=sys.stderr, flush=True)
            tried.append(ckpt.name)
    if algo is None or env is None:
        found = f" (all damaged or incomplete: {', '.join(tried)})" if tried else ""
        raise CheckpointError(f"{path} has no usable checkpoint to resume from{found}; checkpoints are written to "
                              f"RUN_DIR/checkpoints every --save_every updates and when training ends")
    if run_opts.updates < algo.num_updates:
        raise ConfigError(f"--updates {run_opts.updates} is below the {algo.num_updates} updates checkpoint {ckpt} "
                          f"already holds; pass a larger total")
    changed_algo = {k: v for k, v in getattr(algo, "resumed_overrides", {}).items() if k != "run_dir"}
    run_opts.algo_config = {**run_opts.algo_config, **changed_algo}
    history = list(saved.get("resumed") or [])
    history.append({"at_update": algo.num_updates, "checkpoint": str(ckpt.relative_to(path)),
                    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "overrides": {**changed_algo, **changed_run}})
    algo.run_info = {"run": _options_dict(run_opts), "resumed": history}
    _say(f"Resuming {saved['algorithm']} from {ckpt.relative_to(path)} at update {algo.num_updates} → "
         f"{run_opts.updates}")
    algo.learn(run_opts.updates, progress_bar=progress)
    # The run directory ends as a fresh run's does: the trained policy and a before/after summary.
    summary_file = path / "summary.json"
    try:
        previous = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    except (OSError, ValueError):
        previous = {}
    initial = _initial_policy(path, run_opts, algo)
    before = previous.get("before") if isinstance(previous, dict) else None
    if before is None and initial is not None:
        before = _eval_summary(evaluate(initial, env, num_samples=run_opts.eval_samples,
                                        reward=run_opts.ground_truth, seed=run_opts.seed + 999))
    after = evaluate(algo.policy, env, num_samples=run_opts.eval_samples, reward=run_opts.ground_truth,
                     seed=run_opts.seed + 999, reference=initial)
    algo.close()
    try:
        algo.policy.save_pretrained(path / "policy")
        summary = {"before": before, "after": _eval_summary(after), "kl": after.get("kl")}
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as exc:
        raise CheckpointError(write_error_message(path, exc, "write the trained policy into")) from exc
    env.close()
    _say(f"run directory: {path}")
    return 0
