"""Built-in plugin: the ``learned-rm`` reward provider, a trained reward model loaded by path.

A reward model's raw outputs have an arbitrary offset and scale (Bradley–Terry only fixes differences), so the
provider can normalise them: with running statistics of everything it has scored, or with the mean and standard
deviation over a calibration set (by default the training completions recorded in the model's ``rm_card.json``).
For an ensemble the score is ``mean + α·std`` of the members' rewards by default; a negative α is pessimistic about
completions the members disagree on, which dampens reward hacking. ``conservative="mean-std"`` says the same with a
positive λ (``mean − λ·std``; ``penalise="excess"`` pays only for the std above the members' usual std on their
training completions) and ``conservative="min"`` scores the worst member. Every ensemble score comes with
the members' standard deviation as the per-sample extra ``uncertainty``, which online algorithms log per batch as
``reward_model/uncertainty``.

The normalisation state is a small JSON-able dict (:meth:`LearnedRewardModel.state_dict`), so a checkpoint that
stores it resumes with exactly the same scores.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import rlhf_gym
from rlhf_gym.errors import ConfigError, unknown_name_message
from rlhf_gym.providers import RewardProvider, Score
from rlhf_gym.reward_model import CONSERVATIVE_MODES, combine_members

NORMALIZE_MODES = ("none", "running", "calibration")
#: which part of the members' disagreement ``conservative="mean-std"`` pays for
PENALISE_MODES = ("all", "excess")
#: smallest standard deviation divided by, so a constant reward model does not blow scores up
MIN_STD = 1e-6


def _read_calibration_file(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Prompts and completions of a calibration file: ``.jsonl``/``.json``/``.parquet`` rows with ``prompt`` and
    either ``completion`` or TRL's ``chosen``/``rejected`` (both sides are used)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise ConfigError(
                f"calibration file {str(path)!r} must be .jsonl, .json or .parquet with prompt + completion (or "
                f"prompt + chosen/rejected) columns")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"calibration file {str(path)!r} is not valid JSON ({exc.msg})") from None
    prompts: list[str] = []
    completions: list[str] = []
    for i, row in enumerate(rows if isinstance(rows, list) else []):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ConfigError(f"row {i} of calibration file {str(path)!r} has no 'prompt' text")
        sides = [row["completion"]] if "completion" in row else [row.get("chosen"), row.get("rejected")]
        for text in sides:
            if not isinstance(text, str):
                raise ConfigError(
                    f"row {i} of calibration file {str(path)!r} needs a 'completion' (or 'chosen' and 'rejected') text")
            prompts.append(row["prompt"])
            completions.append(text)
    if not prompts:
        raise ConfigError(f"calibration file {str(path)!r} holds no rows; give a list of prompt/completion records")
    return prompts, completions


class LearnedRewardModel(RewardProvider):
    """A reward model trained with ``rlhf-gym train-rm`` (or any HF sequence classifier with one output).

    Args:
        path: the reward model's folder (weights, tokenizer, ``rm_card.json``).
        batch_size: texts per forward pass.
        normalize: ``"none"`` (raw rewards), ``"running"`` (running mean/std of every reward scored so far, this
            batch included) or ``"calibration"`` (fixed mean/std over a calibration set).
        calibration_prompts: with ``calibration_completions``, the calibration set; when neither they nor
            ``calibration_file`` are given, ``"calibration"`` uses the statistics saved in ``rm_card.json``.
        calibration_completions: completions of the calibration set.
        calibration_file: ``.jsonl``/``.json``/``.parquet`` with ``prompt`` and ``completion`` (or ``chosen`` and
            ``rejected``) columns.
        alpha: with ``conservative="mean"``, the score is ``mean + α·std`` over ensemble members (0 for a single
            model); negative is pessimistic.
        conservative: how members combine: ``"mean"`` (``mean + α·std``), ``"mean-std"`` (the pessimistic
            ``mean − λ·std``) or ``"min"`` (the worst member). Normalisation applies afterwards, with statistics of
            the members' mean.
        lam: λ of ``conservative="mean-std"`` (≥ 0).
        penalise: with ``conservative="mean-std"``, ``"all"`` pays λ for all of the members' std; ``"excess"`` only
            for the std above their mean std on the training completions (recorded in ``rm_card.json``), so
            disagreement as large as on the data costs nothing.
        device: where to run the model: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"`` — on its own device, apart from the policy, if you like.
        dtype: storage and compute precision of the model: ``"float32"``, ``"bfloat16"`` or ``"float16"``
            (scores are float32 either way).

    Example:
        >>> env = gym.make("rlhf_gym/Completion-v0", tokenizer=kit, reward="learned-rm",
        ...                reward_kwargs={"path": "runs/rm", "normalize": "calibration"})  # doctest: +SKIP
    """

    deterministic = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = 64,
        normalize: str = "none",
        calibration_prompts: Sequence[str] | None = None,
        calibration_completions: Sequence[str] | None = None,
        calibration_file: str | os.PathLike[str] | None = None,
        alpha: float = 0.0,
        conservative: str = "mean",
        lam: float = 1.0,
        penalise: str = "all",
        device: str | None = "auto",
        dtype: str | None = "float32",
    ) -> None:
        from rlhf_gym.reward_model import RewardModel

        if normalize not in NORMALIZE_MODES:
            raise ConfigError(unknown_name_message("normalize mode", str(normalize), NORMALIZE_MODES))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not math.isfinite(float(alpha)):
            raise ConfigError(f"alpha must be a finite number, got {alpha!r}")
        if conservative not in CONSERVATIVE_MODES:
            raise ConfigError(unknown_name_message("conservative mode", str(conservative), CONSERVATIVE_MODES))
        if isinstance(lam, bool) or not math.isfinite(float(lam)) or float(lam) < 0:
            raise ConfigError(f"lam must be a finite number >= 0 (mean - lam*std), got {lam!r}")
        if conservative != "mean" and float(alpha) != 0.0:
            raise ConfigError(
                f"alpha applies only with conservative='mean'; with conservative={conservative!r} drop alpha "
                f"(use lam for 'mean-std')")
        if penalise not in PENALISE_MODES:
            raise ConfigError(unknown_name_message("penalise mode", str(penalise), PENALISE_MODES))
        if penalise != "all" and conservative != "mean-std":
            raise ConfigError(f"penalise={penalise!r} applies only with conservative='mean-std'")
        if conservative == "mean" and float(lam) != 1.0:
            raise ConfigError("lam applies only with conservative='mean-std'; set conservative='mean-std' or use alpha")
        if (calibration_prompts is None) != (calibration_completions is None):
            raise ConfigError("give calibration_prompts and calibration_completions together (one per completion)")
        if calibration_file is not None and calibration_prompts is not None:
            raise ConfigError("give either calibration_file or calibration_prompts/completions, not both")
        if normalize != "calibration" and (calibration_file is not None or calibration_prompts is not None):
            raise ConfigError(f"a calibration set only applies with normalize='calibration' (got {normalize!r})")
        from rlhf_gym.devices import check_precision, resolve_device, resolve_dtype

        place, precision = resolve_device(device), resolve_dtype(dtype)
        check_precision(place, precision)
        self.path = str(path)
        self.model = RewardModel.from_pretrained(path, device=place, dtype=precision)
        self.batch_size = batch_size
        self.normalize = normalize
        self.alpha = float(alpha)
        self.conservative = conservative
        self.lam = float(lam)
        self.penalise = penalise
        self.baseline_std = 0.0
        if penalise == "excess":
            saved = (self.model.card.get("calibration") or {}).get("member_std")
            if saved is None:
                raise ConfigError(
                    f"penalise='excess' needs the members' std on their training completions, which reward model "
                    f"{self.path!r} does not record in rm_card.json; retrain it with `rlhf-gym train-rm`, or use "
                    f"penalise='all'")
            self.baseline_std = float(saved)
        self.name = "learned-rm"
        self._count = 0
        self._mean = 0.0
        self._m2 = 0.0
        if normalize == "calibration":
            self._calibrate(calibration_prompts, calibration_completions, calibration_file)

    # -- normalisation -----------------------------------------------------------------------------------------
    def _calibrate(self, prompts: Sequence[str] | None, completions: Sequence[str] | None,
                   file: str | os.PathLike[str] | None) -> None:
        if file is not None:
            prompts, completions = _read_calibration_file(file)
        if prompts is None or completions is None:
            saved = self.model.card.get("calibration")
            if not saved:
                raise ConfigError(
                    f"reward model {self.path!r} has no calibration statistics in its rm_card.json; pass "
                    f"calibration_prompts/calibration_completions or a calibration_file")
            self._count, self._mean = int(saved["count"]), float(saved["mean"])
            self._m2 = float(saved["std"]) ** 2 * max(self._count - 1, 1)
            return
        if len(prompts) != len(completions) or len(prompts) < 2:
            raise ConfigError(
                f"the calibration set needs at least 2 texts and one prompt per completion (got {len(prompts)} "
                f"prompts, {len(completions)} completions)")
        mean, _ = self.model.score_texts(list(prompts), list(completions), self.batch_size)
        values = mean.double()
        self._count = len(values)
        self._mean = float(values.mean())
        self._m2 = float(((values - values.mean()) ** 2).sum())

    def _update_running(self, values: torch.Tensor) -> None:
        """Merge a batch into the running mean and sum of squared deviations (Chan et al.'s parallel update)."""
        n_b = len(values)
        if n_b == 0:
            return
        batch = values.double()
        mean_b = float(batch.mean())
        m2_b = float(((batch - mean_b) ** 2).sum())
        total = self._count + n_b
        delta = mean_b - self._mean
        self._mean += delta * n_b / total
        self._m2 += m2_b + delta * delta * self._count * n_b / total
        self._count = total

    @property
    def reward_mean(self) -> float:
        """The mean subtracted from raw rewards (0 with ``normalize="none"``)."""
        return self._mean if self.normalize != "none" else 0.0

    @property
    def reward_std(self) -> float:
        """The standard deviation raw rewards are divided by (1 with ``normalize="none"``)."""
        if self.normalize == "none" or self._count < 2:
            return 1.0
        return max(math.sqrt(self._m2 / (self._count - 1)), MIN_STD)

    def state_dict(self) -> dict[str, Any]:
        """The normalisation state as a JSON-able dict (for checkpoints)."""
        return {"normalize": self.normalize, "count": self._count, "mean": self._mean, "m2": self._m2,
                "alpha": self.alpha, "conservative": self.conservative, "lam": self.lam, "penalise": self.penalise,
                "baseline_std": self.baseline_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, so scoring resumes exactly."""
        if state.get("normalize", self.normalize) != self.normalize:
            raise ConfigError(
                f"the saved learned-rm state uses normalize={state['normalize']!r} but this provider uses "
                f"{self.normalize!r}; build the provider with the same settings to resume")
        self._count, self._mean, self._m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        self.alpha = float(state.get("alpha", self.alpha))
        self.conservative = str(state.get("conservative", self.conservative))
        self.lam = float(state.get("lam", self.lam))
        self.penalise = str(state.get("penalise", self.penalise))
        self.baseline_std = float(state.get("baseline_std", self.baseline_std))

    # -- scoring --------------------------------------------------------------------------------------------------
    def raw_scores(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised ``(mean, std)`` over ensemble members, each ``(N,)``."""
        return self.model.score_texts(prompts, completions, self.batch_size)

    def score_with_info(
        self, prompts: list[str], completions: list[str], **row: Any
    ) -> tuple[list[Score], dict[str, list[Any]]]:
        """Scores plus ``rm_raw`` (the members' mean reward before normalisation) and, for ensembles, ``rm_std``
        and ``uncertainty`` (both the members' standard deviation, in normalised units for ``uncertainty``)."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        rewards = self.model.member_rewards(list(prompts), list(completions), self.batch_size).double()
        combined, mean, std = combine_members(rewards, self.conservative, alpha=self.alpha, lam=self.lam,
                                              baseline_std=self.baseline_std)
        if self.normalize == "running":
            self._update_running(mean)
        score = (combined - self.reward_mean) / self.reward_std
        extras: dict[str, list[Any]] = {"rm_raw": mean.tolist()}
        if self.model.num_members > 1:
            extras["rm_std"] = std.tolist()
            extras["uncertainty"] = (std / self.reward_std).tolist()
        return [float(s) for s in score.tolist()], extras

    def score(self, prompts: list[str], completions: list[str], **row: Any) -> list[Score]:
        return self.score_with_info(prompts, completions, **row)[0]

    def __repr__(self) -> str:
        return (f"LearnedRewardModel(path={self.path!r}, members={self.model.num_members}, "
                f"normalize={self.normalize!r}, alpha={self.alpha}, conservative={self.conservative!r}, "
                f"lam={self.lam})")


@rlhf_gym.hookimpl
def register_reward_providers(register):
    register("learned-rm", LearnedRewardModel)
