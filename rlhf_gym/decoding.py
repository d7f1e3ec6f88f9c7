"""Fast incremental decoding for the sampler: a static KV cache for GPT-2-architecture trunks, and token draws.

:meth:`rlhf_gym.Policy.generate` samples token by token. For GPT-2-style trunks (GPT-2, DistilGPT2, the tiny kit's
model, anything with ``wte``/``wpe``/``h[i].attn.c_attn``/``ln_f``) it runs the blocks itself over a key/value
buffer allocated once per call, so a step costs the block maths and nothing else: no growing ``torch.cat`` per
layer, no per-step mask construction, no output dataclasses. The block's own submodules are called (layer norms,
``c_attn``, ``c_proj``, the MLP), so LoRA adapters on them keep working. Other architectures use the model's own
forward with its KV cache; both paths give the same tokens from the same generator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StaticGPT2Decoder", "TanhGELU", "fuse_activations", "sample_tokens"]


def sample_tokens(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from ``softmax(logits)`` by inverting the CDF with one uniform per row.

    Exact up to float64 rounding, and an order of magnitude cheaper than ``torch.multinomial`` on a large
    vocabulary (which draws an exponential variate per entry). ``-inf`` logits are never drawn; a row with no
    finite logit (a diverged model) raises :class:`FloatingPointError`.
    """
    probs = logits.softmax(-1)
    cdf = probs.to(torch.float64).cumsum_(-1)
    if not bool(torch.isfinite(cdf[:, -1]).all()):
        raise FloatingPointError(
            "the policy produced NaN/inf logits (or every token was filtered out), so there is nothing to sample "
            "from; training has likely diverged: lower the learning rate, keep max_grad_norm on, or resume from an "
            "earlier checkpoint"
        )
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device)
    # side="right": the first index whose cumulative mass exceeds u; a zero-mass entry covers an empty interval.
    picked = torch.searchsorted(cdf, u.mul_(cdf[:, -1:]), right=True).squeeze_(-1)
    return picked.clamp_(max=probs.shape[-1] - 1)


class TanhGELU(nn.Module):
    """GELU with the tanh approximation as one fused kernel: the same function as GPT-2's ``gelu_new``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> int:
    """Swap Hugging Face's ``NewGELUActivation`` (``gelu_new``, five elementwise ops and five saved tensors) for
    :class:`TanhGELU` in place; returns how many were swapped.

    The two agree to float rounding (~2e-7); weights and config are untouched, so a saved model reloads as before.
    """
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "NewGELUActivation":
                setattr(parent, name, TanhGELU())
                swapped += 1
    return swapped


class StaticGPT2Decoder:
    """Prefill and one-token steps of a GPT-2-architecture trunk over a pre-allocated key/value buffer.

    Args:
        trunk: the ``GPT2Model`` (possibly inside a PEFT wrapper).
        batch: rows decoded together.
        max_len: prompt length + the most new tokens.
        attention_mask: ``(batch, max_len)`` mask over every position the call will fill (1 = attend).
    """

    def __init__(self, trunk: Any, batch: int, max_len: int, attention_mask: Tensor) -> None:
        config = trunk.config
        self.trunk = trunk
        self.blocks = list(trunk.h)
        self.heads = int(config.n_head)
        self.embed = int(config.n_embd)
        self.head_dim = self.embed // self.heads
        self.shape = (batch, self.heads, max_len, self.head_dim)
        self.keys: list[Tensor] = []  # allocated on the prefill, in the dtype the blocks compute in
        self.values: list[Tensor] = []
        self.key_mask = attention_mask.to(torch.bool)
        self.positions = torch.arange(max_len, device=attention_mask.device)
        self.scales = []
        for index in range(len(self.blocks)):
            scale = self.head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
            if getattr(config, "scale_attn_by_inverse_layer_idx", False):
                scale /= float(index + 1)
            self.scales.append(scale)

    @staticmethod
    def supports(trunk: Any) -> bool:
        """Whether ``trunk`` is a GPT-2-architecture decoder this class reproduces exactly."""
        config = getattr(trunk, "config", None)
        if config is None or getattr(config, "model_type", None) != "gpt2":
            return False
        if getattr(config, "add_cross_attention", False) or getattr(config, "reorder_and_upcast_attn", False):
            return False
        if not all(hasattr(trunk, name) for name in ("wte", "wpe", "h", "ln_f")):
            return False
        return all(
            hasattr(block, "ln_1") and hasattr(block, "ln_2") and hasattr(block, "mlp")
            and hasattr(block.attn, "c_attn") and hasattr(block.attn, "c_proj")
            for block in trunk.h
        )

    def _run(self, hidden: Tensor, start: int, attn_mask: Tensor) -> Tensor:
        """Blocks over ``hidden`` = positions ``start .. start+S-1``; writes their keys/values into the buffer."""
        batch, length, _ = hidden.shape
        if not self.keys:
            self.keys = [hidden.new_zeros(self.shape) for _ in self.blocks]
            self.values = [hidden.new_zeros(self.shape) for _ in self.blocks]
        for block, keys, values, scale in zip(self.blocks, self.keys, self.values, self.scales, strict=True):
            attn = block.attn
            qkv = attn.c_attn(block.ln_1(hidden))
            q, k, v = (
                part.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
                for part in qkv.split(self.embed, dim=-1)
            )
            keys[:, :, start : start + length].copy_(k)
            values[:, :, start : start + length].copy_(v)
            # Attending over the whole (contiguous) buffer with the later positions masked out is faster than
            # over a strided slice of it.
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, scale=scale)
            hidden = hidden + attn.c_proj(out.transpose(1, 2).reshape(batch, length, self.embed))
            hidden = hidden + block.mlp(block.ln_2(hidden))
        return hidden

    def prefill(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """Run the prompt (left-padded, ``(B, P)``); returns the final hidden state at its last position."""
        length, total = input_ids.shape[1], self.key_mask.shape[1]
        causal = torch.ones(length, total, dtype=torch.bool, device=input_ids.device).tril_()
        # A padding query attends to itself too, so its (unused) row stays finite and no NaN reaches the buffer.
        eye = torch.eye(length, total, dtype=torch.bool, device=causal.device)
        mask = (causal & self.key_mask[:, None, :]) | eye
        hidden = self.trunk.wte(input_ids) + self.trunk.wpe(position_ids)
        hidden = self._run(hidden, 0, mask.unsqueeze(1))
        return self.trunk.ln_f(hidden[:, -1])

    def step(self, tokens: Tensor, position_ids: Tensor, index: int) -> Tensor:
        """Feed one token per row at buffer position ``index``; returns the new final hidden states ``(B, E)``."""
        hidden = self.trunk.wte(tokens.unsqueeze(1)) + self.trunk.wpe(position_ids.view(-1, 1))
        mask = (self.key_mask & self.positions.le(index))[:, None, None, :]
        return self.trunk.ln_f(self._run(hidden, index, mask)[:, -1])
