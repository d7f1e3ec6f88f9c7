"""Checks of a model directory on disk, so a damaged, pickle or incomplete model is one error naming the file.

:class:`~rlhf_gym.policy.Policy` calls them around ``from_pretrained`` and raises ``ModelLoadError`` with the
message they return: pickle weights are refused before anything is unpickled, weights missing from the file are
refused instead of silently initialised at random, and an exception from deep inside safetensors, json or
transformers becomes a sentence naming the damaged file (:func:`rlhf_gym.errors.file_error_message`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path

from rlhf_gym.errors import file_error_message


def damaged_json(directory: Path, names: Sequence[str]) -> tuple[Path, Exception] | None:
    """The first of ``names`` in ``directory`` that exists but is not valid JSON, with the parse error."""
    for name in names:
        file = directory / name
        if file.is_file():
            try:
                json.loads(file.read_bytes().decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                return file, exc
    return None


def pickle_weights_message(directory: Path) -> str | None:
    """Why a local model whose weights are pickle only (``pytorch_model.bin``, ``*.pt``) is refused, or None."""
    if any(directory.glob("*.safetensors")) or (directory / "model.safetensors.index.json").is_file():
        return None
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    if not pickled:
        return None
    return file_error_message(directory / pickled[0], pickle.UnpicklingError("pickle weights"), "model file")


def missing_weights_message(missing_keys: Sequence[str], directory: Path) -> str | None:
    """Why a model loaded from ``directory`` is refused when its files lack some of its weights (transformers
    would initialise those at random without a word), or None. ``missing_keys`` is what transformers' loader
    reports (``output_loading_info=True``): it knows each architecture's renamed and tied weights."""
    missing = sorted(str(k) for k in missing_keys)
    if not missing:
        return None
    files = sorted(directory.glob("*.safetensors"))
    shown = next((f for f in files if f.name == "model.safetensors"), files[0] if files else directory / "model.safetensors")
    return (f"model file {shown} lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}"
            f"{', …' if len(missing) > 3 else ''}); they would start at random. The file is damaged or belongs to "
            f"another architecture: restore it or use another checkpoint")


def damaged_model_message(directory: Path, exc: BaseException, what: str) -> str:
    """Name the weights file of ``directory`` that failed to load (or the directory when none is found)."""
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "config.json")
    text = str(exc)
    named = [n for n in names if n in text]
    if "pytorch_model.bin" not in named and (directory / "pytorch_model.bin").is_file() and \
            not (directory / "model.safetensors").is_file():
        named = ["pytorch_model.bin"]
    candidates = named or [n for n in names[:3] if (directory / n).is_file()]
    target = directory / candidates[0] if candidates else directory
    return file_error_message(target, exc, f"{what} file")
