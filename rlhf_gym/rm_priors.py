"""Randomized prior functions for reward-model ensembles: members that disagree away from their training data.

Members trained from one pre-trained backbone on resamples of the same pairs learn nearly the same features, so
they also agree on text none of them was trained on — exactly where a policy that exploits the reward model goes,
and where a pessimistic reward (``mean − λ·std``) needs them to disagree. Following Osband et al. (2018,
"Randomized prior functions for deep reinforcement learning"), each member here is ``f_i(x) + s·p_i(x)``: ``f_i`` is
trained as usual, ``p_i`` is a fixed network of the same architecture with random, untrained weights (its own
seed), standardised to unit spread over the training completions and scaled by ``s``. Training fits the sum to the
preferences, so on the data ``f_i`` learns to cancel what of ``p_i`` contradicts the labels; off the data nothing
cancels the priors, and members disagree by about ``s``.

A member is saved as its trained model (the usual folder) plus ``prior/`` (the random network) and
``prior.json`` (the scale and the standardisation), so a saved ensemble scores exactly as the trained one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

PRIOR_DIR = "prior"
PRIOR_FILE = "prior.json"
#: smallest spread a prior is divided by (a constant random network contributes nothing, rather than infinity)
MIN_PRIOR_STD = 1e-6


class PriorMember(nn.Module):
    """A trainable reward model plus a frozen random prior: ``reward = model(x) + scale · (prior(x) − μ) / σ``.

    Args:
        model: the trained member (a sequence classifier with one output, or a scalar-head model).
        prior: a network of the same kind with random weights; it is frozen here and never trained.
        scale: ``s``, how far members may disagree off the data, in the reward's units.
        rewards_of: ``f(module, input_ids, attention_mask) -> (B,)`` rewards of a plain member.
        mean, std: the prior's standardisation (its mean and std over training texts).
    """

    #: tells the reward model that calling this module returns ``(B,)`` rewards directly
    returns_rewards = True

    def __init__(self, model: nn.Module, prior: nn.Module, scale: float,
                 rewards_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                 mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.prior = prior
        self.prior.requires_grad_(False)
        self.prior.eval()
        self.scale = float(scale)
        self.mean = float(mean)
        self.std = max(float(std), MIN_PRIOR_STD)
        self._rewards_of = rewards_of

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def pooling(self) -> str:
        return str(getattr(self.model, "pooling", "last"))

    def train(self, mode: bool = True) -> PriorMember:
        super().train(mode)
        self.prior.eval()  # the prior is a fixed function: no dropout, ever
        return self

    def prior_rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B,)`` standardised prior outputs (without the scale)."""
        with torch.no_grad():
            raw = self._rewards_of(self.prior, input_ids, attention_mask).float()
        return (raw - self.mean) / self.std

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        trained = self._rewards_of(self.model, input_ids, attention_mask)
        return trained + self.scale * self.prior_rewards(input_ids, attention_mask).to(trained.dtype)

    def standardise(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set the prior's mean and std from its raw outputs on ``(input_ids, attention_mask)`` batches."""
        with torch.no_grad():
            raw = torch.cat([self._rewards_of(self.prior, ids, mask).float().cpu() for ids, mask in batches])
        self.mean = float(raw.mean())
        self.std = max(float(raw.std()) if len(raw) > 1 else 1.0, MIN_PRIOR_STD)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """The trained model in ``path`` (as without a prior), the prior in ``path/prior``, its settings in
        ``path/prior.json``."""
        path = Path(path)
        self.model.save_pretrained(str(path))
        self.prior.save_pretrained(str(path / PRIOR_DIR))
        (path / PRIOR_FILE).write_text(json.dumps({"scale": self.scale, "mean": self.mean, "std": self.std},
                                                  indent=2) + "\n", encoding="utf-8")


def has_prior(folder: str | os.PathLike[str]) -> bool:
    """Whether a member folder was saved with a random prior."""
    return (Path(folder) / PRIOR_FILE).is_file()


def load_prior_settings(folder: str | os.PathLike[str]) -> dict[str, float]:
    """``{"scale", "mean", "std"}`` of a member folder's prior."""
    from rlhf_gym.reward_model import RewardModelError

    file = Path(folder) / PRIOR_FILE
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
        return {key: float(settings[key]) for key in ("scale", "mean", "std")}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RewardModelError(
            f"{file} is damaged ({exc!r}); it must hold the prior's scale, mean and std — retrain the reward model "
            f"with `rlhf-gym train-rm`") from None


def random_copy(model: nn.Module, seed: int) -> nn.Module:
    """A network of ``model``'s architecture with every weight freshly initialised from ``seed`` (nothing of the
    pre-training survives): the untrained prior of one member."""
    import copy

    prior = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        init = getattr(prior, "_init_weights", None)
        trunk = getattr(prior, "trunk", None)  # a scalar-head model: initialise its trunk the trunk's own way
        if init is None and trunk is not None:
            init = getattr(trunk, "_init_weights", None)
        for module in prior.modules():
            if init is not None and module is not prior and module is not trunk:
                init(module)
            elif init is None and hasattr(module, "reset_parameters") and module is not prior:
                module.reset_parameters()
        for name, param in prior.named_parameters():  # heads the init function leaves at zero or untouched
            if param.dim() == 2 and ("score" in name or "head" in name or "classifier" in name):
                nn.init.normal_(param, std=1.0 / param.shape[1] ** 0.5)
    finally:
        torch.random.set_rng_state(generator_state)
    prior.requires_grad_(False)
    prior.eval()
    return prior
