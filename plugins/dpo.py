"""The DPO adapter (Rafailov et al. 2023), as a built-in plugin: learn from preference pairs directly, no reward
model.

- **Offline**: ``dataset=`` a TRL-format preference file (``prompt``/``chosen``/``rejected`` as text or as message
  lists, or implicit-prompt ``chosen``/``rejected`` conversations: ``.jsonl``, ``.parquet``), a preference store
  (``.sqlite``), a ``datasets.Dataset`` or a list of dicts. Conversations are rendered with the chat template.
  Everything is tokenised once; each pair's reference log-probs are computed once and cached. ``epochs`` stops
  training after that many passes over the pairs; with noisy labels, ``label_smoothing`` (conservative DPO) keeps a
  longer run from drifting (docs/reward_models.md, "Offline DPO from noisy pairs", has the measurements).
- **Online** (no dataset): each update samples ``group_size`` completions per prompt through the env, asks the
  env's reward provider to ``compare`` every pair within a prompt's group in one batched call (this is where a
  simulated or live human's pairwise judgement enters), and updates on the decided pairs (ties and skips dropped).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

import rlhf_gym
from rlhf_gym.advantages import masked_mean
from rlhf_gym.config import hp
from rlhf_gym.data import (
    ShuffledIndices,
    load_preference_texts,
    tokenize_completions,
    tokenize_rendered_prompts,
)
from rlhf_gym.errors import ConfigError
from rlhf_gym.losses import DPO_LOSS_TYPES, dpo_loss
from rlhf_gym.online import OnlineAlgorithm, OnlineConfig
from rlhf_gym.providers import checked_scores


@dataclass
class DPOConfig(OnlineConfig):
    beta: float = hp(0.1, "DPO β: strength of the implicit KL regularisation towards the reference (online: its "
                          "starting value, which the KL controller then steers to hold kl_target)")
    loss_type: str = hp("sigmoid", f"DPO loss: {', '.join(DPO_LOSS_TYPES)}")
    label_smoothing: float = hp(0.0, "conservative DPO: assumed label-flip probability (sigmoid loss only)")
    dataset: Any = hp(None, "offline preference pairs (.jsonl/.parquet/.sqlite path, Dataset or list); None: online")
    batch_size: int = hp(16, "offline: pairs per update")
    epochs: float | None = hp(None, "offline: stop after this many passes over the pairs when learn()'s update count "
                                    "would run longer (None: the update count alone)")
    max_prompt_tokens: int = hp(64, "offline: prompts are left-truncated to this many tokens")
    max_completion_tokens: int = hp(64, "offline: completions are truncated to this many tokens")
    group_size: int = hp(2, "online: completions sampled per prompt; every pair within a prompt is compared")
    score_samples: bool = hp(False, "online: also ask the provider to score the samples, for objective/scores "
                                    "(leave off with a live human)")


class DPO(OnlineAlgorithm):
    """Direct preference optimisation, offline from a preference dataset or online from a judge's comparisons."""

    Config: Any = DPOConfig
    config: DPOConfig
    name = "dpo"
    needs_env = False  # offline DPO needs none; online DPO checks for one in setup()

    def setup(self) -> None:
        cfg = self.config
        if cfg.loss_type not in DPO_LOSS_TYPES:
            raise ConfigError(f"unknown DPO loss_type {cfg.loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
        if cfg.beta <= 0:
            raise ConfigError(f"DPO needs beta > 0, got {cfg.beta}")
        self.offline = cfg.dataset is not None
        if cfg.epochs is not None:
            if not self.offline:
                raise ConfigError("epochs counts passes over an offline preference dataset; online DPO stops on the "
                                  "update count alone (pass dataset=..., or leave epochs=None)")
            if isinstance(cfg.epochs, bool) or not isinstance(cfg.epochs, (int, float)) or not cfg.epochs > 0 \
                    or not math.isfinite(cfg.epochs):
                raise ConfigError(f"epochs must be a finite number > 0 of passes over the pairs (e.g. 1), or None, "
                                  f"got {cfg.epochs!r}")
        if self.offline:
            self.reference = self.build_reference()
            self._setup_offline()
            self.rollouts = None
        else:
            if self.env is None:
                raise ConfigError("online DPO samples from an environment: pass env=..., or dataset=... for offline DPO")
            if cfg.group_size < 2:
                raise ConfigError(f"online DPO needs group_size ≥ 2 completions per prompt, got {cfg.group_size}")
            super().setup()  # builds the reference (β > 0) and the KL controller that steers β online

    # -- offline data: tokenised once, reference log-probs cached ---------------------------------------------------
    def _setup_offline(self) -> None:
        cfg = self.config
        pol = self.policy
        records, conversational = load_preference_texts(cfg.dataset, pol.tokenizer, what="DPO dataset")
        prompts = [r["prompt"] for r in records]
        self.prompt_ids, self.prompt_mask = (tokenize_rendered_prompts(pol, prompts, cfg.max_prompt_tokens)
                                             if conversational else pol.tokenize_prompts(prompts, cfg.max_prompt_tokens))
        # a conversation's answers end as the chat template ends an assistant turn; text answers get EOS
        tok = dict(pad_token_id=pol.pad_token_id, eos_token_id=pol.eos_token_id, add_eos=not conversational)
        self.chosen_ids, self.chosen_mask = tokenize_completions(
            pol.tokenizer, [r["chosen"] for r in records], cfg.max_completion_tokens, **tok)
        self.rejected_ids, self.rejected_mask = tokenize_completions(
            pol.tokenizer, [r["rejected"] for r in records], cfg.max_completion_tokens, **tok)
        self.ref_cache = torch.full((len(records), 2), float("nan"))
        self.batches = ShuffledIndices(len(records), cfg.batch_size, cfg.seed)

    def learn(self, total_updates: int, callback: Any = None, progress_bar: bool = True) -> DPO:
        """As :meth:`Algorithm.learn`; offline with ``epochs`` set, training also stops once the updates made reach
        ``ceil(epochs · pairs / batch_size)``, whichever comes first."""
        cap = self.epoch_limit
        if cap is not None and total_updates > cap:
            total_updates = max(cap, self.num_updates)
        super().learn(total_updates, callback=callback, progress_bar=progress_bar)
        return self

    @property
    def epoch_limit(self) -> int | None:
        """The update count at which ``epochs`` passes over the offline pairs are done (``None``: no limit)."""
        if not self.offline or self.config.epochs is None:
            return None
        return max(1, math.ceil(self.config.epochs * self.batches.n / self.config.batch_size))

    # -- the update -------------------------------------------------------------------------------------------------
    def _dpo_update(self, prompt_ids, prompt_mask, chosen_ids, chosen_mask, rejected_ids, rejected_mask,
                    ref_chosen, ref_rejected, weight=None) -> dict[str, float]:
        """One gradient step on a batch of pairs (``weight`` 0 drops a pair); chosen and rejected go through one
        batched forward."""
        cfg = self.config
        n = chosen_ids.shape[0]
        width = max(chosen_ids.shape[1], rejected_ids.shape[1])
        pad = self.policy.pad_token_id

        def widen(ids, mask):
            extra = width - ids.shape[1]
            return (torch.nn.functional.pad(ids, (0, extra), value=pad),
                    torch.nn.functional.pad(mask, (0, extra), value=0))

        c_ids, c_mask = widen(chosen_ids, chosen_mask)
        r_ids, r_mask = widen(rejected_ids, rejected_mask)
        seq = self.policy.sequence_logprobs(torch.cat([prompt_ids, prompt_ids]), torch.cat([prompt_mask, prompt_mask]),
                                            torch.cat([c_ids, r_ids]), torch.cat([c_mask, r_mask]))
        beta = cfg.beta if self.offline else self.kl_ctl.value
        out = dpo_loss(seq[:n], seq[n:], ref_chosen, ref_rejected, beta=beta, loss_type=cfg.loss_type,
                       label_smoothing=cfg.label_smoothing, chosen_lengths=chosen_mask.sum(-1),
                       rejected_lengths=rejected_mask.sum(-1))
        loss = masked_mean(out.losses, weight)
        self.clip_and_step(loss)
        margins = out.chosen_rewards - out.rejected_rewards
        return {
            "loss/policy_avg": loss.item(),
            "rewards/chosen": float(out.chosen_rewards.mean()),
            "rewards/rejected": float(out.rejected_rewards.mean()),
            "rewards/accuracies": float((margins > 0).float().mean()),
            "rewards/margins": float(margins.mean()),
            "logps/chosen": float(seq[:n].detach().mean()),
            "logps/rejected": float(seq[n:].detach().mean()),
        }

    def train_step(self) -> dict[str, float]:
        return self._offline_step() if self.offline else self._online_step()

    def _offline_step(self) -> dict[str, float]:
        idx = self.shard(self.batches.next())
        p_ids, p_mask = self.prompt_ids[idx], self.prompt_mask[idx]
        c_ids, c_mask = self.chosen_ids[idx], self.chosen_mask[idx]
        r_ids, r_mask = self.rejected_ids[idx], self.rejected_mask[idx]
        missing = torch.isnan(self.ref_cache[idx, 0])
        if bool(missing.any()):  # reference log-probs: once per pair, ever (cached on the CPU)
            m = missing
            for column, (ids, mask) in enumerate(((c_ids, c_mask), (r_ids, r_mask))):
                ref = self.reference.sequence_logprobs(p_ids[m], p_mask[m], ids[m], mask[m])
                self.ref_cache[idx[m], column] = ref.float().cpu()
        start = time.perf_counter()
        ref = self.ref_cache[idx].to(self.policy.device)
        metrics = self._dpo_update(p_ids, p_mask, c_ids, c_mask, r_ids, r_mask, ref[:, 0], ref[:, 1])
        metrics["timing/update"] = time.perf_counter() - start
        return metrics

    def _online_step(self) -> dict[str, float]:
        cfg = self.config
        # -- rollout: k completions per prompt, and the judge's comparisons of every pair within a prompt --------------
        batch = self.collect(score=self.config.score_samples)
        r = batch.rollout
        k = cfg.group_size
        pairs = [(g * k + i, g * k + j) for g in range(len(r) // k) for i, j in itertools.combinations(range(k), 2)]
        provider = self.rollouts.provider
        start = time.perf_counter()
        prefs = checked_scores(provider, provider.compare(
            [r.prompts[i] for i, _ in pairs], [r.completions[i] for i, _ in pairs],
            [r.completions[j] for _, j in pairs]), len(pairs), what="preferences")
        compare_time = time.perf_counter() - start
        decided = [(i, j) if p > 0.5 else (j, i) for (i, j), p in zip(pairs, prefs) if p is not None and p != 0.5]
        metrics = self.batch_metrics(batch)
        answered = sum(p is not None for p in prefs)
        metrics.update({"timing/compare": compare_time, "preferences/decided_fraction": len(decided) / max(len(pairs), 1),
                        "batch/scored_fraction": answered / max(len(pairs), 1)})
        if not self.anywhere(bool(decided)):  # no learner has a decided pair: nothing to learn, no optimizer step
            metrics["batch/skipped"] = 1.0
            return metrics
        weight = None
        if not decided:  # other learners have pairs: take part in their step with one pair that weighs nothing
            decided, weight = [pairs[0]], torch.zeros(1, dtype=torch.bool)
        chosen = torch.tensor([c for c, _ in decided])
        rejected = torch.tensor([x for _, x in decided])
        # -- reference log-probs once for the batch, then one DPO step ---------------------------------------------------
        args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
        ref = self.reference.sequence_logprobs(*args)
        start = time.perf_counter()
        metrics.update(self._dpo_update(
            r.prompt_ids[chosen], r.prompt_mask[chosen], r.completion_ids[chosen], r.completion_mask[chosen],
            r.completion_ids[rejected], r.completion_mask[rejected], ref[chosen], ref[rejected],
            weight=None if weight is None else weight.to(ref.device)))
        metrics["timing/update"] = time.perf_counter() - start
        self.update_kl_controller(batch)
        return metrics

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def extra_state(self):
        if not self.offline:
            return super().extra_state()
        tensors, values = self.batches.state()
        return {**tensors, "ref_cache": self.ref_cache}, values

    def load_extra_state(self, tensors, values):
        if not self.offline:
            return super().load_extra_state(tensors, values)
        self.batches.load_state(tensors, values)
        self.ref_cache = tensors["ref_cache"]


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("dpo", DPO)
