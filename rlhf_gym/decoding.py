"""Fast incremental decoding for the sampler: static KV caches for common decoder trunks, and token draws.

:meth:`rlhf_gym.Policy.generate` samples token by token. For GPT-2 (GPT-2, DistilGPT2, the tiny kit's model) and
Llama-style trunks (Llama, Mistral, Qwen2, Qwen3) it runs the layers itself over key/value buffers allocated once
per call, so a step costs the layer maths and nothing else: no growing ``torch.cat`` per layer, no per-step mask
construction, no output dataclasses. The layers' own submodules are called (norms, projections, the MLP, the
rotary module), so LoRA adapters on them keep working. Other architectures use the model's own forward with its KV
cache; both paths give the same tokens from the same generator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "StaticDecoder",
    "StaticGPT2Decoder",
    "StaticLlamaDecoder",
    "TanhGELU",
    "fuse_activations",
    "sample_tokens",
    "static_decoder_for",
]


def sample_tokens(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from ``softmax(logits)`` by inverting the CDF with one uniform per row.

    Exact up to float64 rounding (float32 on Apple's MPS), and an order of magnitude cheaper than ``torch.multinomial`` on a large
    vocabulary (which draws an exponential variate per entry). ``-inf`` logits are never drawn; a row with no
    finite logit (a diverged model) raises :class:`FloatingPointError`.
    """
    probs = logits.softmax(-1)
    dtype = torch.float32 if probs.device.type == "mps" else torch.float64  # Apple's MPS has no float64
    cdf = probs.to(dtype).cumsum_(-1)
    if not bool(torch.isfinite(cdf[:, -1]).all()):
        raise FloatingPointError(
            "the policy produced NaN/inf logits (or every token was filtered out), so there is nothing to sample "
            "from; training has likely diverged: lower the learning rate, keep max_grad_norm on, or resume from an "
            "earlier checkpoint"
        )
    # Drawn where the generator lives (the rollout worker's is a CPU one), so a seed gives the same uniforms on
    # every device.
    where = generator.device if generator is not None else probs.device
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=dtype, device=where).to(probs.device)
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


class StaticDecoder:
    """Prefill and one-token steps of a decoder-only trunk over key/value buffers allocated once per call.

    Subclasses say how to embed tokens and run one layer; this class keeps the buffers and the masks. Every row's
    keys live at fixed buffer positions (the left-padded prompt, then one column per new token), and each step
    attends over the whole contiguous buffer with padding and later positions masked out, which is faster than
    attending over a growing strided slice.

    Args:
        trunk: the model's trunk (possibly inside a PEFT wrapper).
        batch: rows decoded together.
        max_len: prompt length + the most new tokens.
        attention_mask: ``(batch, max_len)`` mask over every position the call will fill (1 = attend).
    """

    def __init__(self, trunk: Any, batch: int, max_len: int, attention_mask: Tensor) -> None:
        self.trunk = trunk
        self.batch = batch
        self.max_len = max_len
        self.key_mask = attention_mask.to(torch.bool)
        self.positions = torch.arange(max_len, device=attention_mask.device)
        self.keys: list[Tensor] = []  # allocated on the prefill, in the dtype the layers compute in
        self.values: list[Tensor] = []

    @classmethod
    def supports(cls, trunk: Any, max_len: int) -> bool:
        """Whether this class reproduces ``trunk`` exactly for sequences of up to ``max_len`` positions."""
        raise NotImplementedError

    # -- what a subclass provides ------------------------------------------------------------------------------
    def _kv_shape(self) -> tuple[int, int]:
        """(key/value heads, head dim)."""
        raise NotImplementedError

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        raise NotImplementedError

    def _layers(self, hidden: Tensor, position_ids: Tensor, start: int, attn_mask: Tensor) -> Tensor:
        """All layers over ``hidden`` (positions ``start ..``), writing keys/values with :meth:`_store`."""
        raise NotImplementedError

    def _final(self, hidden: Tensor) -> Tensor:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------------
    def _store(self, layer: int, start: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``(B, H_kv, S, D)`` keys/values at ``start``; returns that layer's whole buffers."""
        length = key.shape[2]
        self.keys[layer][:, :, start : start + length].copy_(key)
        self.values[layer][:, :, start : start + length].copy_(value)
        return self.keys[layer], self.values[layer]

    def _allocate(self, hidden: Tensor, layers: int) -> None:
        if not self.keys:
            heads, dim = self._kv_shape()
            shape = (self.batch, heads, self.max_len, dim)
            self.keys = [hidden.new_zeros(shape) for _ in range(layers)]
            self.values = [hidden.new_zeros(shape) for _ in range(layers)]

    def prefill(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """Run the prompt (left-padded, ``(B, P)``); returns the final hidden state at its last position."""
        length, total = input_ids.shape[1], self.max_len
        causal = torch.ones(length, total, dtype=torch.bool, device=input_ids.device).tril_()
        # A padding query attends to itself too, so its (unused) row stays finite and no NaN reaches the buffer.
        eye = torch.eye(length, total, dtype=torch.bool, device=causal.device)
        mask = ((causal & self.key_mask[:, None, :]) | eye).unsqueeze(1)
        hidden = self._layers(self._embed(input_ids, position_ids), position_ids, 0, mask)
        return self._final(hidden[:, -1])

    def step(self, tokens: Tensor, position_ids: Tensor, index: int) -> Tensor:
        """Feed one token per row at buffer position ``index``; returns the new final hidden states ``(B, E)``."""
        positions = position_ids.view(-1, 1)
        mask = (self.key_mask & self.positions.le(index))[:, None, None, :]
        hidden = self._layers(self._embed(tokens.unsqueeze(1), positions), positions, index, mask)
        return self._final(hidden[:, -1])


def _has(obj: Any, *names: str) -> bool:
    return all(hasattr(obj, name) for name in names)


class StaticGPT2Decoder(StaticDecoder):
    """GPT-2 architecture (``model_type == "gpt2"``): learned positions, fused ``c_attn``, LayerNorm blocks."""

    def __init__(self, trunk: Any, batch: int, max_len: int, attention_mask: Tensor) -> None:
        super().__init__(trunk, batch, max_len, attention_mask)
        config = trunk.config
        self.blocks = list(trunk.h)
        self.heads = int(config.n_head)
        self.embed = int(config.n_embd)
        self.head_dim = self.embed // self.heads
        self.scales = []
        for index in range(len(self.blocks)):
            scale = self.head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
            if getattr(config, "scale_attn_by_inverse_layer_idx", False):
                scale /= float(index + 1)
            self.scales.append(scale)

    @classmethod
    def supports(cls, trunk: Any, max_len: int) -> bool:
        config = getattr(trunk, "config", None)
        if config is None or getattr(config, "model_type", None) != "gpt2":
            return False
        if getattr(config, "add_cross_attention", False) or getattr(config, "reorder_and_upcast_attn", False):
            return False
        return _has(trunk, "wte", "wpe", "h", "ln_f") and all(
            _has(block, "ln_1", "ln_2", "mlp") and _has(block.attn, "c_attn", "c_proj") for block in trunk.h
        )

    def _kv_shape(self) -> tuple[int, int]:
        return self.heads, self.head_dim

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.trunk.wte(input_ids) + self.trunk.wpe(position_ids)

    def _final(self, hidden: Tensor) -> Tensor:
        return self.trunk.ln_f(hidden)

    def _layers(self, hidden: Tensor, position_ids: Tensor, start: int, attn_mask: Tensor) -> Tensor:
        batch, length, _ = hidden.shape
        self._allocate(hidden, len(self.blocks))
        for index, (block, scale) in enumerate(zip(self.blocks, self.scales, strict=True)):
            attn = block.attn
            qkv = attn.c_attn(block.ln_1(hidden))
            q, k, v = (
                part.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
                for part in qkv.split(self.embed, dim=-1)
            )
            keys, values = self._store(index, start, k, v)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, scale=scale)
            hidden = hidden + attn.c_proj(out.transpose(1, 2).reshape(batch, length, self.embed))
            hidden = hidden + block.mlp(block.ln_2(hidden))
        return hidden


class StaticLlamaDecoder(StaticDecoder):
    """Llama-style trunks (Llama, Mistral, Qwen2, Qwen3): rotary positions from the model's own ``rotary_emb``,
    grouped-query attention, pre-norm layers, optional q/k norms (Qwen3). Sliding-window attention is reproduced
    only when the window covers the whole call (otherwise the model's own forward is used)."""

    MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

    def __init__(self, trunk: Any, batch: int, max_len: int, attention_mask: Tensor) -> None:
        super().__init__(trunk, batch, max_len, attention_mask)
        config = trunk.config
        self.layers = list(trunk.layers)[: int(config.num_hidden_layers)]
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = self.head_dim**-0.5
        self.groups = self.heads // self.kv_heads

    @classmethod
    def supports(cls, trunk: Any, max_len: int) -> bool:
        config = getattr(trunk, "config", None)
        if config is None or getattr(config, "model_type", None) not in cls.MODEL_TYPES:
            return False
        window = getattr(config, "sliding_window", None)
        if getattr(config, "use_sliding_window", True) and window is not None and int(window) < max_len:
            return False
        if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
            return False
        if not _has(trunk, "embed_tokens", "layers", "norm", "rotary_emb"):
            return False
        return all(
            _has(layer, "input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
            and _has(layer.self_attn, "q_proj", "k_proj", "v_proj", "o_proj")
            for layer in trunk.layers
        )

    def _kv_shape(self) -> tuple[int, int]:
        return self.kv_heads, self.head_dim

    def _embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.trunk.embed_tokens(input_ids)

    def _final(self, hidden: Tensor) -> Tensor:
        return self.trunk.norm(hidden)

    def _layers(self, hidden: Tensor, position_ids: Tensor, start: int, attn_mask: Tensor) -> Tensor:
        # One (cos, sin) for all layers, from the model's own rotary module (every RoPE variant it has).
        cos, sin = (t.unsqueeze(1) for t in self.trunk.rotary_emb(hidden, position_ids))  # (B, 1, S, D)
        batch, length, _ = hidden.shape
        self._allocate(hidden, len(self.layers))
        for index, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, length, -1, self.head_dim)
            k = attn.k_proj(x).view(batch, length, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's vector
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = _rotate(q.transpose(1, 2), cos, sin)
            k = _rotate(k.transpose(1, 2), cos, sin)
            v = attn.v_proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
            keys, values = self._store(index, start, k, v)
            if self.groups > 1:
                keys = keys.repeat_interleave(self.groups, dim=1)
                values = values.repeat_interleave(self.groups, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, scale=self.scale)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding: ``x·cos + rotate_half(x)·sin`` with the half-split convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


#: the static-cache decoders, tried in order
DECODERS: tuple[type[StaticDecoder], ...] = (StaticGPT2Decoder, StaticLlamaDecoder)


def static_decoder_for(trunk: Any, batch: int, max_len: int, attention_mask: Tensor) -> StaticDecoder | None:
    """A static-cache decoder reproducing ``trunk`` for this call, or ``None`` (use the model's own forward)."""
    for cls in DECODERS:
        if cls.supports(trunk, max_len):
            return cls(trunk, batch, max_len, attention_mask)
    return None
