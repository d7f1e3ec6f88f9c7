"""What a policy and its frozen reference share: position ids from masks, the trunk/LM-head split, ONE batched
forward over ``[prompt; completion]`` that projects the LM head only at completion positions (log-probs, and values
and entropy on request), top-k/top-p filtering, and :class:`ReferenceModel`, the frozen copy the KL is measured
against. :class:`~rlhf_gym.policy.Policy` builds on these; everything here is importable from
:mod:`rlhf_gym.policy` too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlhf_gym.devices import autocast, full_precision
from rlhf_gym.errors import ConfigError

__all__ = ["Generation", "ReferenceModel", "TokenStats", "position_ids_from_mask"]


@dataclass
class Generation:
    """A batch of sampled completions.

    Attributes:
        completion_ids: ``(B, T)`` int64 token ids, right-padded with the pad id after each row's first EOS.
            ``T`` is ``max_new_tokens``, or fewer when every row ended early.
        completion_mask: ``(B, T)`` int64, 1 for generated tokens up to and including the first EOS, 0 after.
        logprobs: ``(B, T)`` float32 log-probs of the sampled tokens under the policy's distribution at the
            sampling temperature (``log_softmax(logits / temperature)``), before top-k/top-p filtering and EOS
            suppression, zero where the mask is 0; ``None`` unless ``return_logprobs=True``.
    """

    completion_ids: Tensor
    completion_mask: Tensor
    logprobs: Tensor | None = None

    @property
    def lengths(self) -> Tensor:
        """``(B,)`` number of generated tokens per row, EOS included."""
        return self.completion_mask.sum(-1)

    def pad_to(self, length: int, pad_token_id: int) -> Generation:
        """Return a copy right-padded to ``length`` tokens (mask 0, log-prob 0 on the new columns)."""
        extra = length - self.completion_ids.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {self.completion_ids.shape[1]} tokens down to {length}")
        if extra == 0:
            return self
        return Generation(
            completion_ids=F.pad(self.completion_ids, (0, extra), value=pad_token_id),
            completion_mask=F.pad(self.completion_mask, (0, extra), value=0),
            logprobs=None if self.logprobs is None else F.pad(self.logprobs, (0, extra), value=0.0),
        )


@dataclass
class TokenStats:
    """Per-completion-token outputs of one batched forward, each ``(B, T)`` and zero where the mask is 0.

    Attributes:
        logprobs: log-prob of each completion token under ``log_softmax(logits / temperature)``.
        values: value-head estimate of the state before each token (float32), when asked for.
        entropy: entropy of the next-token distribution at each completion position, when asked for.
    """

    logprobs: Tensor
    values: Tensor | None = None
    entropy: Tensor | None = None


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids for left- or right-padded rows: ``cumsum(mask) - 1`` clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def _split_lm(model: Any) -> tuple[Any, Any]:
    """Find the trunk (the module producing final hidden states) and the LM head of a causal LM.

    For a PEFT model the trunk is the wrapped model's own trunk, whose layers carry the adapter, so calling it
    directly honours ``disable_adapter()``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trunk = getattr(base, "base_model", None)
    if trunk is None or trunk is base:
        trunk = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if trunk is None or trunk is base or head is None:
        raise ConfigError(
            f"{type(base).__name__} does not expose its transformer trunk and LM head (base_model / "
            f"get_output_embeddings); Policy needs a Hugging Face *ForCausalLM model"
        )
    return trunk, head


def _completion_hidden(
    trunk: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor
) -> Tensor:
    """Final hidden states at the positions that predict each completion token: ``P-1 … P+T-2``."""
    if input_ids.shape[0] != completion_ids.shape[0]:
        raise ValueError(
            f"prompt batch ({input_ids.shape[0]}) and completion batch ({completion_ids.shape[0]}) differ"
        )
    prompt_len, completion_len = input_ids.shape[1], completion_ids.shape[1]
    ids = torch.cat([input_ids, completion_ids.to(input_ids.dtype)], dim=1)
    mask = torch.cat([attention_mask, completion_mask.to(attention_mask.dtype)], dim=1)
    # The last completion token predicts nothing we score, so it need not be fed at all.
    ids, mask = ids[:, :-1], mask[:, :-1]
    hidden = trunk(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).last_hidden_state
    return hidden[:, prompt_len - 1 : prompt_len - 1 + completion_len]


def _token_stats(
    head: nn.Module,
    hidden: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float,
    with_entropy: bool,
    value_head: nn.Module | None = None,
) -> TokenStats:
    """Log-probs (and entropy, values) of completion tokens from their predicting hidden states."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    mask = completion_mask.to(torch.bool)
    ids = completion_ids.long().unsqueeze(-1)
    entropy = None
    if with_entropy:
        logp_all = torch.log_softmax(logits, dim=-1)
        logprobs = logp_all.gather(-1, ids).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~mask, 0.0)
    else:  # no (B, T, V) log-softmax tensor kept around
        logprobs = logits.gather(-1, ids).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    values = None
    if value_head is not None:
        with full_precision(hidden.device):  # the value head is float32 and its estimates stay float32
            values = value_head(hidden.float()).squeeze(-1).masked_fill(~mask, 0.0)
    return TokenStats(logprobs=logprobs.masked_fill(~mask, 0.0), values=values, entropy=entropy)


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _check_prompt_batch(input_ids: Tensor, attention_mask: Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be (batch, prompt_len); got {tuple(input_ids.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    if input_ids.shape[1] == 0 or not bool(attention_mask[:, -1].all()):
        raise ValueError(
            "prompts must be left-padded with at least one real token per row (attention_mask[:, -1] == 1); "
            "build them with Policy.tokenize_prompts"
        )


def _filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k then nucleus filtering: tokens outside the kept set get ``-inf``."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


class ReferenceModel:
    """The frozen model the KL penalty is measured against.

    Either an independent frozen copy of the policy's language model, or (LoRA) the policy's own model with the
    adapter switched off for the duration of each call. Never part of the policy's parameters.

    A frozen copy may live on another device and in another dtype than the policy (``device`` / ``dtype``, e.g. a
    bfloat16 reference on a second GPU): inputs are moved to it and the log-probs come back, in float32, to the
    device the inputs came from.
    """

    def __init__(self, model: Any, *, adapter_disabled: bool = False, dtype: torch.dtype | None = None) -> None:
        self.model: Any = model
        self.adapter_disabled = adapter_disabled
        self._trunk, self._head = _split_lm(model)
        #: compute precision (autocast); the weights of a frozen copy are stored in it too
        self.dtype: torch.dtype = dtype if dtype is not None else self._head.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the reference's weights."""
        return self._head.weight.device

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), (
                self.model.disable_adapter() if self.adapter_disabled else contextlib.nullcontext()
            ):
                yield
        finally:
            self.model.train(was_training)

    def logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        temperature: float = 1.0,
    ) -> Tensor:
        """``(B, T)`` log-probs of the completion tokens under the reference model (0 where masked).

        Runs under ``torch.inference_mode()``; the result is a plain tensor usable in a loss.
        """
        home = input_ids.device
        here = self.device
        input_ids, attention_mask = input_ids.to(here), attention_mask.to(here)
        completion_ids, completion_mask = completion_ids.to(here), completion_mask.to(here)
        with self._frozen(), autocast(here, self.dtype):
            hidden = _completion_hidden(self._trunk, input_ids, attention_mask, completion_ids, completion_mask)
            stats = _token_stats(
                self._head, hidden, completion_ids, completion_mask, temperature=temperature, with_entropy=False
            )
        return stats.logprobs.to(home, copy=True)

    def sequence_logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        temperature: float = 1.0,
    ) -> Tensor:
        """``(B,)`` summed completion log-probs under the reference model (DPO's reference term)."""
        return self.logprobs(
            input_ids, attention_mask, completion_ids, completion_mask, temperature=temperature
        ).sum(-1)
