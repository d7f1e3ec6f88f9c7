"""The policy wrapper every algorithm trains: a Hugging Face causal LM, its tokenizer and a value head.

Rollouts, algorithms, the reward model and the SB3 adapter all go through :class:`Policy`, so the two costly
operations of RLHF live here, written once and kept fast:

* :meth:`Policy.generate` samples a batch of completions with the KV cache under ``torch.inference_mode()``, one
  token per step for the whole batch, and can return the sampled tokens' log-probs on the way;
* :meth:`Policy.forward` runs ONE batched forward over ``[prompt; completion]`` and returns every completion
  token's log-prob (plus values and entropy on request), projecting the LM head only at completion positions.

Tensor conventions (see ``docs/architecture.md``): prompts are left-padded ``(B, P)``; completions are
right-padded ``(B, T)`` with a mask that covers the tokens up to and including the first EOS; position ids are
always ``cumsum(mask) - 1`` clamped at 0, so left padding gives exactly the numbers an unpadded row would.

The value head is a ``Linear(hidden, 1)`` on the policy's own final hidden states (one trunk). The reference
model for the KL penalty is built only when asked for (:meth:`Policy.reference`): a frozen copy of the weights,
or, for a LoRA policy, the same base model with the adapter switched off, which costs no memory at all.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhf_gym.decoding import TanhGELU, fuse_activations, sample_tokens, static_decoder_for
from rlhf_gym.devices import autocast, cast_frozen_parameters, resolve_device, resolve_dtype
from rlhf_gym.errors import CheckpointError, ConfigError, file_error_message
from rlhf_gym.lm_ops import (
    Generation,
    ReferenceModel,
    TokenStats,
    _check_prompt_batch,
    _completion_hidden,
    _filter_logits,
    _output_cache,
    _split_lm,
    _token_stats,
    position_ids_from_mask,
)
from rlhf_gym.model_files import (
    damaged_model_message,
    missing_weights_message,
    pickle_weights_message,
)
from rlhf_gym.policy_loading import (
    ModelLoadError,
    _apply_lora,
    _as_dtype,
    _base_state_dict,
    _check_causal_lm,
    _load_failure_message,
    _load_tokenizer,
)

VALUE_HEAD_FILE = "value_head.safetensors"
ADAPTER_DIR = "adapter"


class Policy(nn.Module):
    """A causal LM with its tokenizer and an optional value head on the same trunk.

    Args:
        model: a Hugging Face ``*ForCausalLM`` model, or a ``peft`` model wrapping one (LoRA).
        tokenizer: its tokenizer.
        value_head: add a ``Linear(hidden, 1)`` value head (float32, initialised small), or pass a module.
        disable_dropout: set every dropout probability of the language model to 0 (LoRA dropout excepted), so
            sampling, training forwards and the reference agree — the usual choice for RL fine-tuning.
        fused_activations: swap GPT-2's ``gelu_new`` (five elementwise ops) for the fused kernel of the same
            function (:func:`rlhf_gym.decoding.fuse_activations`; equal to float rounding, weights untouched).

    Example:
        >>> policy = Policy.from_pretrained("path/to/model", lora={"r": 8})      # doctest: +SKIP
        >>> ids, mask = policy.tokenize_prompts(["The movie was"], max_prompt_tokens=32)  # doctest: +SKIP
        >>> gen = policy.generate(ids, mask, 32, return_logprobs=True)          # doctest: +SKIP
        >>> stats = policy(ids, mask, gen.completion_ids, gen.completion_mask, with_values=True)  # doctest: +SKIP
    """

    model: Any
    _trunk: Any
    _head: Any

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        value_head: bool | nn.Module = True,
        disable_dropout: bool = True,
        fused_activations: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        trunk, head = _split_lm(model)
        # Plain attributes, not submodules: they are parts of `model` and must not appear twice in state_dict.
        object.__setattr__(self, "_trunk", trunk)
        object.__setattr__(self, "_head", head)
        if disable_dropout:
            for name, module in model.named_modules():
                if isinstance(module, nn.Dropout) and "lora_dropout" not in name:
                    module.p = 0.0
        if fused_activations:
            fuse_activations(model)
        self.value_head: nn.Module | None = None
        if value_head is True:
            self.add_value_head()
        elif isinstance(value_head, nn.Module):
            self.value_head = value_head
        self.eos_token_ids: tuple[int, ...] = self._find_eos_ids()
        self.eos_token_id: int | None = self.eos_token_ids[0] if self.eos_token_ids else None
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id: int = int(pad if pad is not None else (self.eos_token_id or 0))
        self._reference: ReferenceModel | None = None
        #: the reference was placed on its own device/dtype, so moving the policy leaves it where it is
        self._reference_pinned = False
        #: precision of forward passes and sampling (autocast below float32); see :meth:`place`
        self.compute_dtype: torch.dtype = head.weight.dtype if head.weight.is_floating_point() else torch.float32
        #: sample GPT-2 and Llama-style models through :mod:`rlhf_gym.decoding`'s static-cache decoders (same
        #: tokens, less overhead); False: always the model's own forward.
        self.fast_decoding = True

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        tokenizer: Any = None,
        value_head: bool = True,
        lora: Any = None,
        trust_remote_code: bool = False,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        disable_dropout: bool = True,
    ) -> Policy:
        """Load a causal LM (hub id or local directory) and wrap it.

        A directory written by :meth:`save_pretrained` restores everything: the model, its LoRA adapter (kept
        separate, so the reference is still the base) and the value head.

        Args:
            name_or_path: a Hugging Face hub id or a local directory.
            tokenizer: a tokenizer object or name/path; default: the one stored with the model.
            value_head: attach a value head (restored from ``value_head.safetensors`` when the directory has one).
            lora: a ``peft.LoraConfig`` or a dict of its keyword arguments to train a LoRA adapter instead of all
                weights.
            trust_remote_code: allow custom modelling code shipped with the checkpoint (off by default).
            dtype: weight dtype (``torch.bfloat16`` or ``"bfloat16"``), also the compute precision until
                :meth:`place` sets another; the value head stays float32.
            device: where to put the model: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
            disable_dropout: see :class:`Policy`.

        Raises:
            ModelLoadError: the path does not exist, the hub cannot be reached, or the checkpoint is not a
                causal language model.
        """
        from transformers import AutoModelForCausalLM

        source = os.fspath(name_or_path)
        path = Path(source).expanduser()
        looks_local = path.is_absolute() or source.startswith((".", "~")) or path.exists()
        if looks_local and not path.is_dir():
            raise ModelLoadError(
                f"model path {source!r} does not exist. Pass a Hugging Face hub id or a local directory holding "
                f"a saved model (config.json + weights, e.g. written by Policy.save_pretrained)."
            )
        load_from = str(path) if looks_local else source
        adapter_dir = path / ADAPTER_DIR if looks_local else None
        has_adapter = adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file()
        if has_adapter and lora is not None:
            raise ConfigError(
                f"{source!r} already holds a LoRA adapter; load it without `lora=` to continue training it"
            )

        _check_causal_lm(load_from, trust_remote_code)
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if looks_local:
            refused = pickle_weights_message(path)
            if refused:
                raise ModelLoadError(refused)
            kwargs["use_safetensors"] = True
        if dtype is not None:
            kwargs["dtype"] = _as_dtype(dtype)
        try:
            model: Any
            model, loading = AutoModelForCausalLM.from_pretrained(load_from, output_loading_info=True, **kwargs)
            missing = missing_weights_message(loading.get("missing_keys") or [], path) if looks_local else None
            if missing:
                raise ModelLoadError(missing)
        except ModelLoadError:
            raise
        except Exception as exc:
            if looks_local:  # damaged, truncated or pickle weights: one sentence naming the file
                raise ModelLoadError(damaged_model_message(path, exc, "model")) from exc
            if isinstance(exc, OSError):
                raise ModelLoadError(_load_failure_message("model", source, exc)) from exc
            raise
        if device is not None:
            model = model.to(resolve_device(device))

        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(os.fspath(tokenizer) if tokenizer is not None else load_from, trust_remote_code)

        if has_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        elif lora is not None:
            model = _apply_lora(model, lora)

        value_file = path / VALUE_HEAD_FILE if looks_local else None
        policy = cls(model, tokenizer, value_head=value_head, disable_dropout=disable_dropout)
        if value_head and value_file is not None and value_file.is_file():
            from safetensors.torch import load_file

            assert policy.value_head is not None
            try:
                policy.value_head.load_state_dict(load_file(str(value_file), device=str(policy.device)))
            except Exception as exc:
                raise ModelLoadError(file_error_message(value_file, exc, "value head file")) from exc
        return policy

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Policy:
        """Load a directory written by :meth:`save_pretrained` (same as :meth:`from_pretrained`)."""
        return cls.from_pretrained(path, **kwargs)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write the model (safetensors), tokenizer and value head to ``path``.

        A LoRA policy writes its base weights at the top level and the adapter under ``adapter/``, so loading the
        directory gives back the same policy and the same reference model.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.is_peft:
            base = self.model.get_base_model()
            base.save_pretrained(str(path), state_dict=_base_state_dict(base.state_dict()))
            self.model.save_pretrained(str(path / ADAPTER_DIR))
        else:
            self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        if self.value_head is not None:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
            save_file(state, str(path / VALUE_HEAD_FILE))

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Size of the LM head's output (the action space), which may differ from ``len(tokenizer)``."""
        return int(self._head.weight.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the language model's weights."""
        return self._head.weight.device

    @property
    def is_peft(self) -> bool:
        """Whether the model is a ``peft`` model (LoRA)."""
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "get_base_model")

    def place(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Policy:
        """Put the policy on ``device`` and train it in mixed precision ``dtype``; returns ``self``.

        Parameters that train (all weights, or the LoRA adapter) and the value head are kept in float32 — the
        master weights the optimizer updates — while frozen ones (the base under a LoRA adapter) are stored in
        ``dtype``; forward passes and sampling run under ``torch.autocast(dtype)``; log-probs and values come out
        in float32. ``dtype=None`` keeps the current precision, ``device=None`` the current device. A frozen
        reference copy built without a device of its own follows the policy.

        Example:
            >>> policy.place("cuda", "bfloat16")  # doctest: +SKIP
        """
        if device is not None:
            self.to(resolve_device(device))
        if dtype is not None:
            self.compute_dtype = resolve_dtype(dtype)
            cast_frozen_parameters(self, self.compute_dtype)
            if self._reference is not None and not self._reference.adapter_disabled and not self._reference_pinned:
                cast_frozen_parameters(self._reference.model, self.compute_dtype)
                self._reference.dtype = self.compute_dtype
            elif self._reference is not None and self._reference.adapter_disabled:
                self._reference.dtype = self.compute_dtype
        return self

    def add_lora(self, lora: Any) -> Policy:
        """Wrap the language model in a fresh LoRA adapter (a ``peft.LoraConfig`` or a dict of its arguments):
        from now on only the adapter (and the value head) train, and the reference is these weights with the
        adapter switched off. Returns ``self``."""
        if self.is_peft:
            raise ConfigError("this policy already has a LoRA adapter; train it as it is")
        if self._reference is not None:
            raise ConfigError("add the LoRA adapter before the reference model is built")
        self.model = _apply_lora(self.model, lora)
        trunk, head = _split_lm(self.model)
        object.__setattr__(self, "_trunk", trunk)
        object.__setattr__(self, "_head", head)
        return self

    def _autocast(self) -> Any:
        return autocast(self.device, self.compute_dtype)

    def add_value_head(self) -> nn.Module:
        """Attach a fresh value head (``Linear(hidden, 1)``, float32, near-zero init) and return it."""
        hidden_size = self._head.weight.shape[1]
        head = nn.Linear(hidden_size, 1, dtype=torch.float32, device=self._head.weight.device)
        # Drawn from its own fixed-seed generator, not the global RNG, so a policy is the same however many
        # were built before it in the process (seeded runs reproduce exactly).
        init = torch.Generator().manual_seed(0)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=init) * 1e-3)
        nn.init.zeros_(head.bias)
        self.value_head = head
        return head

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters an optimizer should update: all weights, or the adapter and value head with LoRA."""
        return [p for p in self.parameters() if p.requires_grad]

    def _find_eos_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        candidates: list[Any] = [getattr(self.tokenizer, "eos_token_id", None)]
        generation_config = getattr(self._base_model(), "generation_config", None)
        candidates.append(getattr(generation_config, "eos_token_id", None))
        for value in candidates:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item is not None and int(item) not in ids:
                    ids.append(int(item))
        return tuple(ids)

    def _base_model(self) -> nn.Module:
        return self.model.get_base_model() if self.is_peft else self.model

    # ------------------------------------------------------------------ tokenisation

    def tokenize_prompts(self, prompts: Sequence[str], max_prompt_tokens: int) -> tuple[Tensor, Tensor]:
        """Tokenise prompts into a left-padded batch, keeping the last ``max_prompt_tokens`` tokens of each.

        A prompt with no tokens at all becomes the BOS (else EOS) token, so every row has something to condition
        on. Returns ``(input_ids, attention_mask)``, both int64 ``(B, P)`` on the policy's device.
        """
        if isinstance(prompts, str):
            raise TypeError("tokenize_prompts takes a list of prompts, not a single string")
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        start = getattr(self.tokenizer, "bos_token_id", None)
        start = start if start is not None else self.eos_token_id
        rows = []
        for ids in encoded:
            ids = list(ids)[-max_prompt_tokens:]
            if not ids:
                if start is None:
                    raise ValueError("an empty prompt needs a BOS or EOS token, and the tokenizer has neither")
                ids = [start]
            rows.append(ids)
        width = max((len(r) for r in rows), default=1)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    # ------------------------------------------------------------------ sampling

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        do_sample: bool = True,
        min_new_tokens: int = 0,
        generator: torch.Generator | None = None,
        return_logprobs: bool = False,
    ) -> Generation:
        """Sample completions for a left-padded prompt batch, with the KV cache, under inference mode.

        Args:
            input_ids: ``(B, P)`` left-padded prompt ids (see :meth:`tokenize_prompts`).
            attention_mask: ``(B, P)`` its mask.
            max_new_tokens: the most tokens to generate; stops earlier once every row has produced EOS.
            temperature: logits are divided by it before sampling (and for the returned log-probs).
            top_k: keep only the ``top_k`` most likely tokens when sampling (0: all).
            top_p: nucleus sampling: keep the smallest set of tokens with probability mass >= ``top_p``.
            do_sample: sample (True) or take the most likely token (False).
            min_new_tokens: EOS cannot be chosen before this many tokens.
            generator: random generator for reproducible sampling (on the policy's device).
            return_logprobs: also return each sampled token's log-prob under ``log_softmax(logits /
                temperature)`` — the distribution :meth:`forward` scores with the same temperature, i.e. without
                the top-k/top-p filtering or EOS suppression.

        Returns:
            A :class:`Generation`; ``completion_ids`` is right-padded with the pad id after each row's first EOS.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy), got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
        _check_prompt_batch(input_ids, attention_mask)
        with torch.inference_mode(), self._autocast():
            ids, mask, logprobs = self._sample(
                input_ids,
                attention_mask,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                do_sample=do_sample,
                min_new_tokens=min_new_tokens,
                generator=generator,
                return_logprobs=return_logprobs,
            )
        # Clone outside inference mode so callers can use the results in autograd (e.g. as gather indices).
        return Generation(ids.clone(), mask.clone(), None if logprobs is None else logprobs.clone())

    def _sample(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int,
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        do_sample: bool,
        min_new_tokens: int,
        generator: torch.Generator | None,
        return_logprobs: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        batch, prompt_len = input_ids.shape
        device = input_ids.device
        was_training = self.model.training
        self.model.eval()
        try:
            # Pre-allocated buffers; each step writes one column.
            full_mask = torch.ones(batch, prompt_len + max_new_tokens, dtype=attention_mask.dtype, device=device)
            full_mask[:, :prompt_len] = attention_mask
            tokens = torch.full((batch, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
            token_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
            logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device) if return_logprobs else None
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)
            pad = torch.tensor(self.pad_token_id, dtype=torch.long, device=device)

            positions = position_ids_from_mask(attention_mask)
            next_position = positions[:, -1] + 1
            step = self._decoder(input_ids, positions, full_mask)
            hidden = step(None, None, prompt_len - 1)
            steps = 0
            for t in range(max_new_tokens):
                logits = self._head(hidden).float()
                if temperature != 1.0:
                    logits = logits / temperature
                choice_logits = logits
                if t < min_new_tokens and eos.numel():
                    choice_logits = logits.index_fill(-1, eos, float("-inf"))
                if do_sample:
                    next_token = sample_tokens(_filter_logits(choice_logits, top_k, top_p), generator)
                else:
                    next_token = choice_logits.argmax(-1)
                if logprobs is not None:
                    picked = logits.gather(-1, next_token.unsqueeze(-1)).squeeze(-1)
                    logprobs[:, t] = (picked - torch.logsumexp(logits, dim=-1)).masked_fill_(done, 0.0)
                token_mask[:, t] = (~done).long()
                tokens[:, t] = torch.where(done, pad, next_token)
                done |= torch.isin(next_token, eos)
                steps = t + 1
                if steps == max_new_tokens or bool(done.all()):
                    break
                hidden = step(tokens[:, t], next_position + t, prompt_len + t)
        finally:
            self.model.train(was_training)
        return (
            tokens[:, :steps],
            token_mask[:, :steps],
            None if logprobs is None else logprobs[:, :steps],
        )

    def _decoder(
        self, input_ids: Tensor, position_ids: Tensor, full_mask: Tensor
    ) -> Callable[[Tensor | None, Tensor | None, int], Tensor]:
        """A step function ``(tokens, positions, index) -> final hidden states (B, E)``; its first call (``None``
        tokens) runs the prompt. The static-cache GPT-2 decoder when the trunk allows it, else the model's own
        forward with its KV cache."""
        decoder = (
            static_decoder_for(self._trunk, input_ids.shape[0], full_mask.shape[1], full_mask)
            if self.fast_decoding
            else None
        )
        if decoder is not None:

            def fast(tokens: Tensor | None, positions: Tensor | None, index: int) -> Tensor:
                assert decoder is not None
                if tokens is None or positions is None:
                    return decoder.prefill(input_ids, position_ids)
                return decoder.step(tokens, positions, index)

            return fast

        # transformers 5.x names the KV cache argument `cache`; older releases `past_key_values`.
        cache_arg = "cache" if "cache" in inspect.signature(self._trunk.forward).parameters else "past_key_values"
        cache: Any = None

        def generic(tokens: Tensor | None, positions: Tensor | None, index: int) -> Tensor:
            nonlocal cache
            if tokens is None or positions is None:
                out = self._trunk(
                    input_ids=input_ids, attention_mask=full_mask[:, : index + 1], position_ids=position_ids,
                    use_cache=True,
                )
            else:
                out = self._trunk(
                    input_ids=tokens.unsqueeze(1), attention_mask=full_mask[:, : index + 1],
                    position_ids=positions.unsqueeze(1), use_cache=True, **{cache_arg: cache},
                )
            cache = _output_cache(out)
            return out.last_hidden_state[:, -1]

        return generic

    # ------------------------------------------------------------------ scoring

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        with_values: bool = False,
        with_entropy: bool = False,
        temperature: float = 1.0,
    ) -> TokenStats:
        """One batched forward over ``[prompt; completion]``: per-token log-probs, and values/entropy on request.

        The LM head is applied only at the ``T`` positions that predict completion tokens. Gradients flow (call it
        under ``torch.no_grad()`` for old log-probs if you do not use :meth:`generate`'s).

        Args:
            input_ids: ``(B, P)`` left-padded prompt ids.
            attention_mask: ``(B, P)`` prompt mask.
            completion_ids: ``(B, T)`` right-padded completion ids.
            completion_mask: ``(B, T)`` completion mask.
            with_values: also return the value head's estimates (needs a value head).
            with_entropy: also return the entropy of each next-token distribution.
            temperature: divide the logits by it (match the sampling temperature).
        """
        if with_values and self.value_head is None:
            raise ConfigError("with_values=True needs a value head; build the Policy with value_head=True")
        _check_prompt_batch(input_ids, attention_mask)
        if completion_ids.shape != completion_mask.shape or completion_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"completion_ids {tuple(completion_ids.shape)} and completion_mask {tuple(completion_mask.shape)} "
                f"must both be (batch={input_ids.shape[0]}, completion_len)"
            )
        with self._autocast():
            hidden = _completion_hidden(self._trunk, input_ids, attention_mask, completion_ids, completion_mask)
            return _token_stats(
                self._head,
                hidden,
                completion_ids,
                completion_mask,
                temperature=temperature,
                with_entropy=with_entropy,
                value_head=self.value_head if with_values else None,
            )

    def sequence_logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        temperature: float = 1.0,
    ) -> Tensor:
        """``(B,)`` sum of completion-token log-probs (what DPO compares)."""
        return self.forward(
            input_ids, attention_mask, completion_ids, completion_mask, temperature=temperature
        ).logprobs.sum(-1)

    def reference(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> ReferenceModel:
        """The frozen reference model, built on the first call and reused after.

        With LoRA it is the base model with the adapter disabled (always the initial weights, no extra memory).
        Otherwise it is a frozen deep copy of the language model *as it is at the first call*: ask for it before
        training starts, and only when it is needed (KL coefficient β > 0).

        Args:
            device: where a frozen copy lives (default: with the policy, following it when it moves).
            dtype: the copy's storage and compute precision (default: the policy's compute precision).
        """
        if self._reference is None:
            if self.is_peft:
                if device is not None and resolve_device(device) != self.device:
                    raise ConfigError(
                        f"a LoRA policy's reference is its own base model (adapter disabled), so it lives on the "
                        f"policy's device {self.device}; drop reference_device={str(device)!r} or train without LoRA"
                    )
                self._reference = ReferenceModel(self.model, adapter_disabled=True, dtype=self.compute_dtype)
            else:
                want = resolve_dtype(dtype) if dtype is not None else self.compute_dtype
                frozen = copy.deepcopy(self.model).eval()
                frozen.requires_grad_(False)
                frozen.to(resolve_device(device) if device is not None else self.device)
                cast_frozen_parameters(frozen, want)
                self._reference = ReferenceModel(frozen, dtype=want)
                self._reference_pinned = device is not None or dtype is not None
        return self._reference

    def save_reference(self, path: str | os.PathLike[str]) -> None:
        """Write a frozen-copy reference's weights to ``path`` (a checkpoint's ``reference/``), so a resumed run
        still measures KL against the *initial* policy; :meth:`load_reference` reads them back. Nothing to write
        without a reference, or with LoRA (the reference is the base model, saved with the policy anyway).
        """
        if self._reference is not None and not self._reference.adapter_disabled:
            self._reference.model.save_pretrained(os.fspath(path))

    def load_reference(self, path: str | os.PathLike[str]) -> ReferenceModel | None:
        """Make the model :meth:`save_reference` wrote at ``path`` this policy's frozen reference, if the policy has
        a frozen-copy reference and ``path`` holds one; returns the reference in use afterwards.

        It gets the same treatment as the policy's own copy (activations fused when the policy's are), so a resumed
        run computes exactly the KL the uninterrupted one did.
        """
        if self._reference is None or self._reference.adapter_disabled:
            return self._reference
        if not Path(path).is_dir():
            # Never fall back to the current weights: KL against them would silently measure something else.
            raise CheckpointError(
                f"the frozen reference model is missing: {path} does not exist. The checkpoint is incomplete; "
                f"resume from another checkpoint (`rlhf-gym train --resume RUN_DIR` picks the newest intact one)"
            )
        from transformers import AutoModelForCausalLM

        current = self._reference
        try:
            model = AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=current.model.dtype,
                                                         use_safetensors=True)
            model = model.to(current.device).eval()
        except Exception as exc:
            raise CheckpointError(damaged_model_message(Path(path), exc, "reference model")) from exc
        model.requires_grad_(False)
        if any(isinstance(module, TanhGELU) for module in self.model.modules()):
            fuse_activations(model)
        self._reference = ReferenceModel(model, dtype=current.dtype)
        return self._reference

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Policy:  # type: ignore[override]
        # Keep a frozen reference copy on the same device/dtype as the policy when the policy is moved, unless it
        # was given a place of its own.
        super()._apply(fn, recurse)
        if self._reference is not None and not self._reference.adapter_disabled and not self._reference_pinned:
            self._reference.model._apply(fn, recurse)
        return self


__all__ = [
    "Generation",
    "ModelLoadError",
    "Policy",
    "ReferenceModel",
    "TokenStats",
    "position_ids_from_mask",
]
