"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A training checkpoint directory holds::

    policy/                     the policy, via save_pretrained (safetensors weights, tokenizer, value head)
    trainer_state.safetensors   optimizer tensors, torch RNG states, algorithm tensors
    trainer_state.json          step, algorithm name, config, optimizer hyper-parameters, numpy/python RNG states
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into (tensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = meta["param_groups"]
    for group, current in zip(groups, optimizer.param_groups, strict=False):
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        # How the update is computed belongs to this process (a fused kernel may not exist on this device).
        for key in ("fused", "foreach", "capturable", "differentiable"):
            if key in current:
                group[key] = current[key]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_trainer_state(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "trainer_state.safetensors"))
    tmp = path / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path / "trainer_state.json")


def load_trainer_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    meta_path = path / "trainer_state.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{path} is not an rlhf_gym checkpoint (no trainer_state.json); pass a directory written by "
            f"Algorithm.save() or a run's checkpoints/step-N folder"
        )
    tensors = load_file(str(path / "trainer_state.safetensors"))
    return tensors, json.loads(meta_path.read_text())
