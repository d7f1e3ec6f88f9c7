"""Where a model runs and in which precision: the one place device and dtype strings are understood.

Every component that holds weights (the policy, its reference, the value head, a learned reward model, the SB3
policy) and every algorithm config take ``device`` and ``dtype`` strings; they all resolve them here, so a bad
value fails the same way everywhere, with one message that names the valid choices.

Precision is mixed, not pure: ``dtype="bfloat16"`` or ``"float16"`` runs the forward passes under
``torch.autocast`` while the weights an optimizer updates stay float32 (master weights, so AdamW's small updates
are not rounded away). Frozen weights (a reference copy, the base under a LoRA adapter, a reward model used only
for scoring) are *stored* in the low precision, which is where the memory goes. Log-probs, values, KL,
advantages and losses are computed in float32 whatever the dtype. float16 also needs a loss scaler
(:func:`make_grad_scaler`): its narrow exponent range underflows small gradients otherwise.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from rlhf_gym.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}

__all__ = [
    "DEVICE_CHOICES",
    "DTYPE_CHOICES",
    "autocast",
    "cast_frozen_parameters",
    "check_precision",
    "dtype_name",
    "full_precision",
    "make_grad_scaler",
    "resolve_device",
    "resolve_dtype",
]


def _valid_devices() -> str:
    return ", ".join(repr(c) for c in DEVICE_CHOICES)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """A usable ``torch.device`` for ``spec``: ``"auto"`` (or None) picks CUDA, then Apple's MPS, then the CPU.

    Raises:
        ConfigError: an unknown spec, or a device this machine does not have (e.g. ``"cuda"`` without a GPU);
            the message names the valid choices and what is available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    text = str(spec).strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise ConfigError(f"unknown device {str(spec)!r}; valid: {_valid_devices()}")
    device = torch.device(text)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {str(spec)!r} asked for, but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use device='cpu' or 'auto', or install a CUDA build of torch "
                f"(valid: {_valid_devices()})"
            )
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise ConfigError(f"device {str(spec)!r} asked for, but only cuda:0 … cuda:{count - 1} exist on this machine")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {str(spec)!r} asked for, but Apple's MPS is not available; use 'cpu' or 'auto' "
                          f"(valid: {_valid_devices()})")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(spec: str | torch.dtype | None = "float32") -> torch.dtype:
    """The torch dtype for ``spec`` (``"float32"``, ``"bfloat16"``, ``"float16"``, their short names, or a
    ``torch.dtype`` of those); None means float32.

    Example:
        >>> resolve_dtype("bf16")
        torch.bfloat16
    """
    if spec is None:
        return torch.float32
    if isinstance(spec, torch.dtype):
        if spec in (torch.float32, torch.bfloat16, torch.float16):
            return spec
        raise ConfigError(f"unsupported dtype {spec}; valid: {', '.join(DTYPE_CHOICES)}")
    dtype = _DTYPE_NAMES.get(str(spec).strip().lower().removeprefix("torch."))
    if dtype is None:
        raise ConfigError(f"unknown dtype {str(spec)!r}; valid: {', '.join(DTYPE_CHOICES)}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (for configs and logs)."""
    return str(dtype).removeprefix("torch.")


def check_precision(device: torch.device, dtype: torch.dtype) -> None:
    """Fail early when ``device`` cannot compute in ``dtype`` (e.g. bfloat16 on a pre-Ampere GPU)."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{device} has no bfloat16 support; use dtype='float16' (with its loss scaler) or 'float32'")


def autocast(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def full_precision(device: torch.device | str) -> Iterator[None]:
    """Switch autocast off inside an autocast region (heads whose outputs must stay float32)."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def make_grad_scaler(device: torch.device | str, dtype: torch.dtype) -> torch.amp.GradScaler:
    """A loss scaler for float16 training on ``device``; disabled (every call a pass-through) otherwise."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


def cast_frozen_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Mixed precision's storage rule: parameters that train stay (or become) float32, frozen floating-point
    parameters are stored in ``dtype``. Buffers are left as they are (rotary frequencies stay float32)."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.is_floating_point():
                continue
            want = torch.float32 if param.requires_grad else dtype
            if param.dtype != want:
                param.data = param.data.to(want)
