"""Supervised fine-tuning on demonstrations, as a built-in plugin: "first you show it the trick". Prepares the
policy that RL then starts from.

``dataset=`` records in any of TRL's SFT formats (a ``.jsonl``/``.parquet`` path, a ``datasets.Dataset`` or a list of
dicts): text ``prompt``/``completion``, a ``messages`` conversation, or ``prompt``/``completion`` message lists.
The loss is the mean negative log-likelihood of the learned tokens: the completion (and the EOS that ends it), or
in a conversation every assistant turn as the chat template renders it; prompt, user and system tokens are context
only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import rlhf_gym
from rlhf_gym.algorithm import Algorithm, AlgorithmConfig
from rlhf_gym.config import hp
from rlhf_gym.data import ShuffledIndices, load_sft_data
from rlhf_gym.losses import sft_loss


@dataclass
class SFTConfig(AlgorithmConfig):
    dataset: Any = hp(None, "demonstrations: prompt/completion text or message lists, or messages "
                            "(.jsonl/.parquet path, Dataset or list)")
    batch_size: int = hp(16, "demonstrations per update")
    max_prompt_tokens: int = hp(64, "prompts are left-truncated to this many tokens")
    max_completion_tokens: int = hp(64, "completions (a conversation from its first assistant turn) are truncated to "
                                        "this many tokens (EOS kept)")
    add_eos: bool = hp(True, "append EOS to every text completion so the policy learns to stop (conversations end "
                             "their turns as the chat template does)")


class SFT(Algorithm):
    """Supervised fine-tuning: maximise the likelihood of demonstration completions given their prompts."""

    Config: Any = SFTConfig
    config: SFTConfig
    name = "sft"
    needs_env = False

    def setup(self) -> None:
        cfg = self.config
        self.data = load_sft_data(cfg.dataset, self.policy, max_prompt_tokens=cfg.max_prompt_tokens,
                                  max_completion_tokens=cfg.max_completion_tokens, add_eos=cfg.add_eos)
        self.batches = ShuffledIndices(len(self.data), cfg.batch_size, cfg.seed)

    def train_step(self) -> dict[str, float]:
        data, idx = self.data, self.shard(self.batches.next())
        mask = data.completion_mask[idx]
        width = int(mask.sum(1).max())  # drop columns that are padding for the whole batch
        device = self.policy.device
        start = time.perf_counter()
        out = self.policy(data.prompt_ids[idx].to(device), data.prompt_mask[idx].to(device),
                          data.completion_ids[idx, :width].to(device), mask[:, :width].to(device))
        learned = data.loss_mask[idx, :width].to(device)  # user/system turns inside a conversation: context only
        loss = sft_loss(out.logprobs, learned)
        self.clip_and_step(loss)
        return {"loss/sft": loss.item(), "timing/update": time.perf_counter() - start,
                "perf/tokens_per_s": float(learned.sum()) / max(time.perf_counter() - start, 1e-9)}

    def extra_state(self):
        return self.batches.state()

    def load_extra_state(self, tensors, values):
        self.batches.load_state(tensors, values)


@rlhf_gym.hookimpl
def register_algorithms(register):
    register("sft", SFT)
