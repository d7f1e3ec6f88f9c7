"""The ``Algorithm`` base class: what every training algorithm, built-in or third-party, has in common.

In the spirit of stable-baselines3: a ``Config`` dataclass holds every hyper-parameter (default + one-line help),
``__init__(env, policy, **config)`` rejects unknown keys, ``learn(total_updates)`` runs the loop with a progress
bar, metrics and callbacks, and ``save(dir)`` / ``load(dir, env=...)`` checkpoint everything needed to continue the
same curve: weights (safetensors), optimizer state, every RNG, the step counter and the algorithm's own state.

A subclass implements :meth:`Algorithm.train_step` (one update, returning its metrics) and, if it keeps state
beyond the policy and optimizer, :meth:`Algorithm.extra_state` / :meth:`Algorithm.load_extra_state`.

Devices and precision (``device``, ``dtype``) are applied here, once: the policy is placed with
:meth:`rlhf_gym.Policy.place` (float32 master weights, autocast forwards) and :meth:`Algorithm.clip_and_step`
scales float16 losses with a grad scaler. With several data-parallel learners
(:mod:`rlhf_gym.distributed.data_parallel`) the same step averages gradients over them, batch statistics inside
``train_step`` are global, and only rank 0 writes logs and checkpoints; subclasses take their shard of an offline
batch with :meth:`Algorithm.shard`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rlhf_gym.checkpoint import (
    STATE_FORMAT,
    atomic_directory,
    components_state,
    fault_point,
    flatten_optimizer_state,
    load_trainer_state,
    recover_checkpoints,
    restore_components,
    restore_optimizer_state,
    save_failure,
    save_trainer_state,
    verify_checkpoint,
    write_manifest,
)
from rlhf_gym.config import build_config, config_to_dict, hp
from rlhf_gym.devices import check_precision, make_grad_scaler, resolve_device, resolve_dtype
from rlhf_gym.distributed import data_parallel as dp
from rlhf_gym.errors import CheckpointError, ConfigError, RLHFGymError, write_error_message


def make_adamw(params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` with the fused kernel (one pass over each tensor, no temporaries) where this torch
    build has it for the parameters' device, else the default multi-tensor one; the same update either way."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


@dataclass
class AlgorithmConfig:
    """Hyper-parameters shared by all algorithms."""

    seed: int = hp(0, "seed for torch, sampling, prompt order and the reward provider")
    learning_rate: float = hp(1e-4, "AdamW learning rate")
    weight_decay: float = hp(0.0, "AdamW weight decay")
    adam_eps: float = hp(1e-8, "AdamW epsilon")
    max_grad_norm: float = hp(1.0, "clip the global gradient norm to this (0: no clipping)")
    temperature: float = hp(1.0, "sampling temperature of rollouts")
    top_k: int = hp(0, "sample from the k most likely tokens only (0: off)")
    top_p: float = hp(1.0, "nucleus sampling mass (1.0: off)")
    log_every: int = hp(1, "log metrics every N updates")
    sample_every: int = hp(10, "write sample completions to samples.jsonl every N updates (0: never)")
    num_logged_samples: int = hp(4, "how many samples to write each time")
    save_every: int = hp(
        0, "write <run_dir>/checkpoints/step-N every N updates, which a killed run resumes from (0: only `last`, at "
           "the end)"
    )
    run_dir: str | None = hp(None, "run directory for metrics.csv, TensorBoard, samples and checkpoints (None: none)")
    tensorboard: bool = hp(True, "write TensorBoard event files into the run directory (with report_to=None)")
    report_to: str | list[str] | None = hp(
        None, "experiment trackers, comma-separated: csv, tensorboard, wandb, mlflow, trackio, a plugin's; "
        "'none'; 'all' (the installed ones); None: csv,tensorboard"
    )
    true_reward: str | None = hp(
        None, "provider name of a ground truth logged as objective/true_scores next to the proxy reward"
    )
    device: str = hp("cpu", "torch device of the policy: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    dtype: str = hp("float32", "training precision: float32, bfloat16 or float16 (autocast with float32 master "
                               "weights; float16 adds a loss scaler)")


class Callback:
    """Hooks into :meth:`Algorithm.learn`. Return ``False`` from :meth:`on_step` to stop training early."""

    def on_learn_start(self, algo: Algorithm) -> None:
        """Called once before the first update."""

    def on_step(self, algo: Algorithm, metrics: dict[str, float]) -> bool | None:
        """Called after every update with its metrics."""
        return None

    def on_learn_end(self, algo: Algorithm) -> None:
        """Called once after the last update."""


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[Algorithm, dict[str, float]], bool | None]):
        self.fn = fn

    def on_step(self, algo: Algorithm, metrics: dict[str, float]) -> bool | None:
        return self.fn(algo, metrics)


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def on_learn_start(self, algo: Algorithm) -> None:
        for cb in self.callbacks:
            cb.on_learn_start(algo)

    def on_step(self, algo: Algorithm, metrics: dict[str, float]) -> bool | None:
        keep_going = True
        for cb in self.callbacks:
            if cb.on_step(algo, metrics) is False:
                keep_going = False
        return keep_going

    def on_learn_end(self, algo: Algorithm) -> None:
        for cb in self.callbacks:
            cb.on_learn_end(algo)


def as_callback(callback: Any) -> Callback:
    """A :class:`Callback`, a function ``f(algo, metrics)``, a list of either, or ``None``."""
    if callback is None:
        return CallbackList([])
    if isinstance(callback, Callback):
        return callback
    if isinstance(callback, (list, tuple)):
        return CallbackList([as_callback(c) for c in callback])
    if callable(callback):
        return _FunctionCallback(callback)
    raise TypeError(f"callback must be a Callback, a function f(algo, metrics), or a list of them; got {callback!r}")


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (rlhf_gym's own code draws from local generators; a plugin
    may use the global ones, and checkpoints save all three)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Algorithm:
    """Base class of training algorithms.

    Subclasses set ``Config`` to a dataclass derived from :class:`AlgorithmConfig` and implement
    :meth:`train_step`. ``needs_env`` / ``needs_value_head`` tell the base what to prepare.

    Args:
        env: a ``rlhf_gym/Completion-v0`` or ``TextGen-v0`` env (single or vector); algorithms build the batched
            rollout env they need from its settings.
        policy: a :class:`rlhf_gym.Policy`, or a model name/path to load one from.
        **config: fields of ``Config``; unknown keys raise :class:`rlhf_gym.ConfigError` listing the valid ones.
    """

    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    #: registered name (set by subclasses; used in checkpoints and run directories)
    name: ClassVar[str] = "algorithm"
    needs_env: ClassVar[bool] = True
    needs_value_head: ClassVar[bool] = False
    #: config fields a resumed run may change (:meth:`load` refuses the others by name: they would break the curve)
    resumable_fields: ClassVar[frozenset[str]] = frozenset({
        "learning_rate", "weight_decay", "adam_eps", "max_grad_norm", "log_every", "sample_every",
        "num_logged_samples", "save_every", "run_dir", "tensorboard", "true_reward", "device",
    })
    #: attributes never saved as components (the base saves them its own way, or they hold no state)
    _not_components: ClassVar[frozenset[str]] = frozenset({"policy", "optimizer", "config", "logger", "reference"})

    def __init__(self, env: Any = None, policy: Any = None, **config: Any) -> None:
        self.config = build_config(self.Config, config, owner=f"algorithm {self.name!r}")
        self.num_updates = 0
        set_seed(self.config.seed)
        self.policy = self._resolve_policy(policy)
        if self.needs_env and env is None:
            raise ConfigError(
                f"algorithm {self.name!r} needs an environment: pass env=gym.make('rlhf_gym/Completion-v0', ...)"
            )
        self.env = env
        self.scaler = make_grad_scaler(self.device, self.dtype)
        #: optimizer steps the float16 loss scaler skipped (inf/NaN gradients), in all and in the current update
        self.skipped_steps = 0
        self._skipped_this_update = 0
        self.logger = None
        self._true_reward = None
        #: extra run information written into the run directory's config.json (e.g. the CLI's options)
        self.run_info: dict[str, Any] = {}
        self.resumed_overrides: dict[str, Any] = {}
        self.optimizer = self.build_optimizer()
        self.setup()

    # -- construction ------------------------------------------------------------------------------------------
    def _resolve_policy(self, policy: Any):
        from rlhf_gym.policy import Policy

        if policy is None:
            raise ConfigError(
                f"algorithm {self.name!r} needs a policy: pass policy=rlhf_gym.Policy.from_pretrained(<hub id or "
                f"local dir>) or the path itself"
            )
        if isinstance(policy, (str, Path)):
            policy = Policy.from_pretrained(str(policy), value_head=self.needs_value_head)
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be an rlhf_gym.Policy or a model name/path, got {type(policy).__name__}")
        if self.needs_value_head and policy.value_head is None:
            policy.add_value_head()
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.dtype)
        check_precision(self.device, self.dtype)
        policy.place(self.device, self.dtype)
        dp.broadcast_parameters(policy)  # every learner starts from rank 0's weights
        return policy

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the policy's trainable parameters, fused where the device supports it (override for other
        optimisers)."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not self.needs_value_head and self.policy.value_head is not None:  # no gradient would ever reach it
            skip = {id(p) for p in self.policy.value_head.parameters()}
            params = [p for p in params if id(p) not in skip]
        return make_adamw(
            params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay, eps=self.config.adam_eps
        )

    def setup(self) -> None:
        """Build what the algorithm needs beyond policy and optimizer (rollout env, reference model, ...)."""

    # -- the loop ----------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """Run one update and return its metrics (TRL's metric names where one exists)."""
        raise NotImplementedError(f"{type(self).__name__} must implement train_step()")

    def clip_and_step(self, loss: torch.Tensor | None = None) -> float:
        """Backward ``loss`` (if given), clip gradients, step the optimizer, zero grads; returns the grad norm.

        float16: the loss is scaled before the backward and the gradients unscaled before clipping; a step with
        inf/NaN gradients is skipped (and counted in ``precision/skipped_steps``). Several learners: gradients
        are averaged over them first, so every learner takes the same step."""
        if loss is not None:
            self.scaler.scale(loss).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        dp.all_reduce_gradients(params)
        self.scaler.unscale_(self.optimizer)
        norm = 0.0
        if self.config.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale:
            self.skipped_steps += 1
            self._skipped_this_update += 1
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This learner's part of a global batch of record indices (all of it with one learner)."""
        return dp.shard(indices)

    @staticmethod
    def anywhere(flag: bool) -> bool:
        """Whether ``flag`` holds on any learner (``flag`` itself with one): for decisions every learner must
        take alike, such as skipping an update."""
        return dp.any_rank(flag)

    def _open_logger(self) -> None:
        if self.logger is not None or not self.config.run_dir or not dp.is_writer():
            return
        from rlhf_gym.run_logger import RunLogger

        resumed = self.num_updates > 0
        try:
            self.logger = RunLogger(
                self.config.run_dir,
                config={"algorithm": self.name, **config_to_dict(self.config), **self.run_info},
                tensorboard=self.config.tensorboard,
                report_to=self.config.report_to,
                append=resumed,
                start_step=self.num_updates,
            )
        except OSError as exc:
            raise CheckpointError(write_error_message(self.config.run_dir, exc, "write to the run directory")) from exc

    def learn(self, total_updates: int, callback: Any = None, progress_bar: bool = True) -> Algorithm:
        """Train until ``total_updates`` updates have been made in all (a resumed run continues its count).

        Args:
            total_updates: the update count to reach; runs stop on update counts, so they are reproducible.
            callback: a :class:`Callback`, a function ``f(algo, metrics) -> bool | None`` (``False`` stops), or a list.
            progress_bar: show a tqdm bar with the reward and KL.
        """
        from tqdm.auto import tqdm

        if total_updates < self.num_updates:
            raise ValueError(f"total_updates={total_updates} is below the {self.num_updates} updates already made")
        cb = as_callback(callback)
        if self.config.run_dir:
            recover_checkpoints(Path(self.config.run_dir) / "checkpoints")
        self._open_logger()
        cb.on_learn_start(self)
        bar = tqdm(total=total_updates, initial=self.num_updates, disable=not progress_bar or not dp.is_writer(),
                   desc=self.name, dynamic_ncols=True, leave=True)
        # `last` is written on the way out only when the state is whole: not after an error inside an update (the
        # optimizer may have stepped without the count moving) nor after a failed save; periodic checkpoints
        # (save_every) are what a killed run resumes from.
        consistent = True
        try:
            while self.num_updates < total_updates:
                t0 = time.perf_counter()
                consistent = False
                self._skipped_this_update = 0
                with dp.batch_reductions():
                    metrics = self.train_step()
                self.num_updates += 1
                consistent = True
                metrics.setdefault("timing/step", time.perf_counter() - t0)
                if self.scaler.is_enabled():
                    metrics["precision/skipped_steps"] = float(self._skipped_this_update)
                    metrics["precision/loss_scale"] = float(self.scaler.get_scale())
                metrics = dp.average_metrics(metrics)
                self.last_metrics = metrics
                self._log(metrics)
                bar.update(1)
                bar.set_postfix(_postfix(metrics), refresh=False)
                if (self.config.save_every and self.config.run_dir and dp.is_writer()
                        and self.num_updates % self.config.save_every == 0):
                    consistent = False
                    self.save(Path(self.config.run_dir) / "checkpoints" / f"step-{self.num_updates}")
                    consistent = True
                if cb.on_step(self, metrics) is False:
                    break
        finally:
            bar.close()
            cb.on_learn_end(self)
            if self.logger is not None:
                if self.config.run_dir and consistent:
                    self.save(Path(self.config.run_dir) / "checkpoints" / "last")
                self.logger.plot()
        return self

    def _log(self, metrics: Mapping[str, float]) -> None:
        if self.logger is None:
            return
        if self.num_updates % max(self.config.log_every, 1) == 0:
            self.logger.log(self.num_updates, {k: v for k, v in metrics.items() if np.isscalar(v)})
        samples = getattr(self, "last_samples", None)
        if samples and self.config.sample_every and self.num_updates % self.config.sample_every == 0:
            self.logger.log_samples(self.num_updates, samples[: self.config.num_logged_samples])

    def close(self) -> None:
        """Close the run logger (writes reward_curve.png) and the environments."""
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    # -- ground truth for over-optimisation diagnostics ---------------------------------------------------------
    def true_scores(self, prompts: list[str], completions: list[str], extras: Mapping[str, list] | None = None):
        """Ground-truth scores for logging: the provider's ``true_score`` extras, or ``config.true_reward``."""
        if extras and "true_score" in extras:
            values = [v for v in extras["true_score"] if v is not None]
            return values or None
        if self.config.true_reward:
            from rlhf_gym.plugins import make_reward
            from rlhf_gym.providers import checked_scores

            if self._true_reward is None:
                self._true_reward = make_reward(self.config.true_reward)
            scores = checked_scores(self._true_reward, self._true_reward.score(prompts, completions), len(prompts))
            return [s for s in scores if s is not None] or None
        return None

    # -- checkpoints -------------------------------------------------------------------------------------------
    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able values) of algorithm state beyond policy and optimizer. Override with the same keys
        in :meth:`load_extra_state`."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def save_files(self, path: Path) -> None:
        """Write files beyond the policy and trainer state into checkpoint directory ``path`` (e.g. a reference
        model); read them back in :meth:`load_files`."""

    def load_files(self, path: Path) -> None:
        """Read what :meth:`save_files` wrote."""

    def checkpointed_components(self) -> dict[str, Any]:
        """The objects whose state every checkpoint holds without the algorithm saving them itself: each public
        attribute that is a rollout worker, batch sampler, RNG (torch, numpy, ``random``), KL controller, running
        statistic, reward provider (anything with ``state``/``load_state`` or ``state_dict``/``load_state_dict``)
        or rlhf_gym vector env. :meth:`load` rebuilds the algorithm (``setup`` creates them afresh) and restores
        each by attribute name, so a plugin that keeps a ``RolloutWorker`` in ``self.rollouts`` resumes exactly."""
        from rlhf_gym.checkpoint import _kind

        return {name: value for name, value in vars(self).items()
                if not name.startswith("_") and name not in self._not_components and _kind(value) is not None}

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint directory (safetensors + JSON, no pickle) that :meth:`load` resumes from.

        The directory appears whole or not at all: it is built next to ``path``, flushed to disk, given a manifest
        of every file's size and SHA-256, and renamed into place (an earlier checkpoint at ``path`` is replaced
        only then).

        Raises:
            CheckpointError: the disk is full, the directory is read-only, or ``path`` holds something else.
        """
        path = Path(path)
        try:
            with atomic_directory(path) as tmp:
                self._write_checkpoint(tmp)
                fault_point("manifest")
                write_manifest(tmp, num_updates=self.num_updates, algorithm=self.name)
        except RLHFGymError:
            raise
        except OSError as exc:
            raise save_failure(path, exc) from exc
        except Exception as exc:  # some writers (safetensors) wrap the OS error in their own type
            if "No space left" in str(exc) or "Read-only file system" in str(exc):
                import errno

                code = errno.ENOSPC if "No space left" in str(exc) else errno.EROFS
                raise save_failure(path, OSError(code, str(exc))) from exc
            raise
        return path

    def _write_checkpoint(self, path: Path) -> None:
        self.policy.save_pretrained(path / "policy")
        fault_point("policy")
        self.save_files(path)
        fault_point("files")
        tensors, optim_meta = flatten_optimizer_state(self.optimizer)
        tensors["rng/torch"] = torch.get_rng_state()
        np_state = np.random.get_state()
        tensors["rng/numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
        component_tensors, component_values = components_state(self.checkpointed_components())
        tensors.update(component_tensors)
        extra_tensors, extra_values = self.extra_state()
        tensors.update({f"extra/{k}": v.detach().cpu() for k, v in extra_tensors.items()})
        meta = {
            "format": STATE_FORMAT,
            "algorithm": self.name,
            "num_updates": self.num_updates,
            "config": config_to_dict(self.config),
            "optimizer": optim_meta,
            "rng": {"python": _python_rng_state(), "numpy": [np_state[0], *np_state[2:]]},
            "components": component_values,
            "extra": extra_values,
        }
        if self.scaler.is_enabled():
            meta["scaler"] = self.scaler.state_dict()
        save_trainer_state(path, tensors, meta)
        fault_point("trainer_state")

    @classmethod
    def check_overrides(cls, saved: dict[str, Any], changed: dict[str, Any], where: Path) -> None:
        """Refuse config changes a resumed run cannot take (anything outside :attr:`resumable_fields`)."""
        refused = sorted(k for k in changed if k not in cls.resumable_fields)
        if refused:
            shown = ", ".join(f"{k} ({saved.get(k)!r} → {changed[k]!r})" for k in refused)
            raise ConfigError(
                f"cannot change {shown} when resuming {where}: the run would no longer continue the same curve. "
                f"Fields a resume may change: {', '.join(sorted(cls.resumable_fields))}. To train with other "
                f"settings, start a new run from the checkpoint's weights (--model {where / 'policy'})"
            )

    def apply_overrides(self, changed: dict[str, Any]) -> None:
        """Put config changes made at :meth:`load` into effect where state restored from the checkpoint holds
        the old value (the optimizer's param groups); subclasses extend it for their own state."""
        for field, key in (("learning_rate", "lr"), ("weight_decay", "weight_decay"), ("adam_eps", "eps")):
            if field in changed:
                for group in self.optimizer.param_groups:
                    group[key] = changed[field]

    @classmethod
    def load(cls, path: str | Path, env: Any = None, policy: Any = None, *, verify: bool = True,
             **overrides: Any) -> Algorithm:
        """Rebuild an algorithm from :meth:`save`'s directory; training continues the same curve.

        Every file is first checked against the checkpoint's manifest (``verify=False``: the caller just did). ``overrides`` change config fields that
        may change mid-run (:attr:`resumable_fields`: learning rate, KL coefficient, logging and saving cadence,
        ``run_dir``, ...; the others raise :class:`ConfigError`); ``policy`` defaults to the checkpoint's own.

        Raises:
            CheckpointError: a file is missing, truncated or damaged (named in the message).
        """
        from rlhf_gym.policy import Policy

        path = Path(path)
        manifest = verify_checkpoint(path) if verify else None
        tensors, meta = load_trainer_state(path)
        if manifest is not None and manifest.get("num_updates") != meta.get("num_updates"):
            raise CheckpointError(f"checkpoint {path}: trainer_state.json holds update {meta.get('num_updates')}, its "
                                  f"manifest.json update {manifest.get('num_updates')}; the checkpoint was altered")
        if meta.get("algorithm") not in (cls.name, None) and cls is not Algorithm:
            raise ConfigError(
                f"{path} holds a {meta.get('algorithm')!r} checkpoint, not {cls.name!r}; load it with "
                f"rlhf_gym.plugins.algorithm_class({meta.get('algorithm')!r}).load(...)"
            )
        saved = meta["config"]
        merged = config_to_dict(build_config(cls.Config, {**saved, **overrides}, owner=f"algorithm {cls.name!r}"))
        changed = {k: merged[k] for k in overrides if merged.get(k) != saved.get(k)}
        cls.check_overrides(saved, changed, path)
        if policy is None:
            policy = Policy.from_pretrained(str(path / "policy"), value_head=cls.needs_value_head)
        algo = cls(env=env, policy=policy, **{**saved, **overrides})
        try:
            restore_optimizer_state(algo.optimizer, tensors, meta["optimizer"])
            if "components" in meta:  # (checkpoints older than manifests keep them in extra_state)
                restore_components(algo.checkpointed_components(), tensors, meta["components"], path)
            torch.set_rng_state(tensors["rng/torch"])
            _set_python_rng_state(meta["rng"]["python"])
            if "rng/numpy" in tensors and "numpy" in meta["rng"]:
                kind, *rest = meta["rng"]["numpy"]
                np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), *rest))
            algo.num_updates = int(meta["num_updates"])
            if meta.get("scaler") and algo.scaler.is_enabled():
                algo.scaler.load_state_dict(meta["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint {path}: trainer_state does not fit this {cls.name!r} algorithm "
                                  f"({type(exc).__name__}: {exc}); it was written with other settings or code") from exc
        extra = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}
        algo.load_files(path)
        algo.load_extra_state(extra, meta.get("extra", {}))
        algo.apply_overrides(changed)
        #: the config fields this load changed from the checkpoint's values (recorded by `rlhf-gym train --resume`)
        algo.resumed_overrides = changed
        return algo


def _python_rng_state() -> list[Any]:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _set_python_rng_state(value: list[Any]) -> None:
    random.setstate((value[0], tuple(value[1]), value[2]))


def _postfix(metrics: Mapping[str, float]) -> dict[str, str]:
    shown = {}
    for key, label in (("objective/scores", "reward"), ("objective/true_scores", "true"), ("objective/kl", "kl"),
                       ("loss/policy_avg", "loss"), ("rewards/accuracies", "acc")):
        if key in metrics:
            shown[label] = f"{metrics[key]:.3f}"
    return shown


def config_fields(algo_cls: type[Algorithm]) -> list[dataclasses.Field]:
    """The config fields of an algorithm class (for CLIs and docs)."""
    return list(dataclasses.fields(algo_cls.Config))
