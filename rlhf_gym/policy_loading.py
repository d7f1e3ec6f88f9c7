"""Loading a policy's model and tokenizer: early, readable failures (a checkpoint that is not a causal LM, a
missing tokenizer, a damaged folder: :class:`ModelLoadError`), dtype names, LoRA adapters, and the base weights of
a LoRA-injected state dict. :meth:`rlhf_gym.policy.Policy.from_pretrained` calls these.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhf_gym.errors import ConfigError, RLHFGymError, file_error_message
from rlhf_gym.model_files import (
    damaged_json,
)

__all__ = ["ModelLoadError"]


class ModelLoadError(RLHFGymError, OSError):
    """A model or tokenizer could not be loaded from the name or path given."""


_NON_GENERATIVE_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForMaskedLM",
    "ForImageClassification",
)


def _check_causal_lm(load_from: str, trust_remote_code: bool) -> None:
    """Fail early, with a useful message, on checkpoints that are not causal language models."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(load_from, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(_load_failure_message("model", load_from, exc)) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"{load_from!r} needs custom code to load; pass trust_remote_code=True only if you trust its "
                f"source"
            ) from exc
        raise ModelLoadError(f"cannot read the config of {load_from!r}: {exc}") from exc
    has_remote_model = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    architectures = list(getattr(config, "architectures", None) or [])
    # A checkpoint saved with a task head (a reward model, a classifier) is not a policy, even when its model
    # type also has a causal-LM variant (BERT, RoBERTa).
    task_head_only = bool(architectures) and all(a.endswith(_NON_GENERATIVE_HEADS) for a in architectures)
    if task_head_only or (config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not has_remote_model):
        described = ", ".join(architectures) or config.model_type
        raise ModelLoadError(
            f"{load_from!r} is a {described} checkpoint, not a causal language model; the policy needs a "
            f"*ForCausalLM model (GPT-2, Llama, Qwen, …). Reward models are loaded by rlhf_gym.reward_model."
        )


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use e.g. torch.float32, 'bfloat16', 'float16' or 'auto'")
    return resolved


def _load_tokenizer(source: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_load_failure_message("tokenizer", source, exc)) from exc


def _load_failure_message(what: str, source: str, exc: Exception) -> str:
    directory = Path(source).expanduser()
    if directory.is_dir():  # a local directory: name the damaged file rather than suggest the hub
        names = ("config.json",) if what == "model" else (
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "config.json")
        damaged = damaged_json(directory, names)
        if damaged is not None:
            return file_error_message(damaged[0], damaged[1], f"{what} file")
    return (
        f"could not load the {what} from {source!r} ({exc}). Pass a Hugging Face hub id or a local directory "
        f"holding a saved {what}; note that this machine may be offline, in which case only local directories "
        f"and already-cached hub ids work."
    )


def _apply_lora(model: nn.Module, lora: Any) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if isinstance(lora, Mapping):
        # GPT-2 style Conv1D layers store weights transposed; peft needs to be told (it warns otherwise).
        uses_conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
        options = {"task_type": "CAUSAL_LM", "fan_in_fan_out": uses_conv1d, **lora}
        try:
            config = LoraConfig(**options)
        except TypeError as exc:
            raise ConfigError(f"invalid LoRA options {dict(lora)!r}: {exc}") from exc
    elif isinstance(lora, LoraConfig):
        config = lora
    else:
        raise ConfigError(f"lora must be a peft.LoraConfig or a dict of its arguments, got {type(lora).__name__}")
    return get_peft_model(model, config)


def _base_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The base model's own weights from a LoRA-injected state dict (adapter tensors dropped, names restored)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key or ".modules_to_save." in key:
            continue
        out[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = value
    return out
