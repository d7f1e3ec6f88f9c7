"""Supervised fine-tuning on demonstrations, as a built-in plugin: "first you show it the trick". Prepares the
policy that RL then starts from.

``dataset=`` records with ``prompt`` and ``completion`` (a ``.jsonl``/``.parquet`` path, a ``datasets.Dataset`` or a
list of dicts). The loss is the mean negative log-likelihood of the completion tokens (and the EOS that ends them);
prompt tokens are context only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import rlhf_gym
from rlhf_gym.algorithm import Algorithm, AlgorithmConfig
from rlhf_gym.config import hp
from rlhf_gym.data import ShuffledIndices, load_records, tokenize_completions
from rlhf_gym.losses import sft_loss


@dataclass
class SFTConfig(AlgorithmConfig):
    dataset: Any = hp(None, "demonstrations with prompt and completion columns (.jsonl/.parquet path, Dataset or list)")
    batch_size: int = hp(16, "demonstrations per update")
    max_prompt_tokens: int = hp(64, "prompts are left-truncated to this many tokens")
    max_completion_tokens: int = hp(64, "completions are truncated to this many tokens (EOS kept)")
    add_eos: bool = hp(True, "append EOS to every completion so the policy learns to stop")


class SFT(Algorithm):
    """Supervised fine-tuning: maximise the likelihood of demonstration completions given their prompts."""

    Config: Any = SFTConfig
    config: SFTConfig
    name = "sft"
    needs_env = False

    def setup(self) -> None:
        cfg = self.config
        records = load_records(cfg.dataset, ("prompt", "completion"), what="SFT dataset")
        pol = self.policy
        self.prompt_ids, self.prompt_mask = pol.tokenize_prompts([r["prompt"] for r in records], cfg.max_prompt_tokens)
        self.completion_ids, self.completion_mask = tokenize_completions(
            pol.tokenizer, [r["completion"] for r in records], cfg.max_completion_tokens,
            pad_token_id=pol.pad_token_id, eos_token_id=pol.eos_token_id, add_eos=cfg.add_eos)
        self.batches = ShuffledIndices(len(records), cfg.batch_size, cfg.seed)

    def train_step(self) -> dict[str, float]:
        idx = self.shard(self.batches.next())
        mask = self.completion_mask[idx]
        width = int(mask.sum(1).max())  # drop columns that are padding for the whole batch
        start = time.perf_counter()
        out = self.policy(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx, :width], mask[:, :width])
        loss = sft_loss(out.logprobs, mask[:, :width])
        self.clip_and_step(loss)
        return {"loss/sft": loss.item(), "timing/update": time.perf_counter() - start,
                "perf/tokens_per_s": float(mask.sum()) / max(time.perf_counter() - start, 1e-9)}

    def extra_state(self):
        return self.batches.state()

    def load_extra_state(self, tensors, values):
        self.batches.load_state(tensors, values)


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("sft", SFT)
