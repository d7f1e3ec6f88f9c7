"""Offline DPO step: rlhf_gym's ``dpo`` algorithm vs ``trl.DPOTrainer`` (its default, and with
``precompute_ref_log_probs=True``, what a TRL user who cares about speed sets) vs the least work in bare torch.

All sides train a copy of the same initial weights on the same 64 preference pairs (16-token prompts, 32-token
completions including EOS), 16 pairs per step, β = 0.1, sigmoid loss, AdamW lr 1e-6, gradient clip 1.0. The bare
torch "floor" does what one DPO step must do and nothing else: the reference log-probs of every pair computed once
before timing (the reference is frozen), then per step one policy forward over chosen and rejected rows in one
batch (LM head at completion positions only), the loss, backward, clip and a fused AdamW step, with the fused GELU.
rlhf_gym also caches each pair's reference log-probs (filled during the warm-up's first pass over the data), so
its ratio to the floor is ≥ 1 by construction: what it is above 1 is the framework's overhead.

Run: ``python bench/bench_dpo.py [--steps 7] [--warmup 5] [--json out.json] [--side NAME]``.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import common
import torch
import torch.nn.functional as F

SIDES = ["trl", "trl_precompute", "rlhf_gym", "floor"]


class FloorDPO:
    """One DPO step in bare torch on pre-tokenised pairs with cached reference log-probs: the least work the step
    can be."""

    def __init__(self, setup: common.BenchSetup) -> None:
        tok = setup.tokenizer
        self.model = common.floor_model(setup.load_model())
        self.optimizer = common.floor_optimizer(self.model)
        eos = tok.eos_token_id

        def encode(texts: list[str]) -> list[list[int]]:
            return [ids + [eos] for ids in tok(texts, add_special_tokens=False)["input_ids"]]

        prompts = tok([p["prompt"] for p in setup.pairs], add_special_tokens=False)["input_ids"]
        chosen = encode([p["chosen"] for p in setup.pairs])
        rejected = encode([p["rejected"] for p in setup.pairs])
        width = common.PROMPT_TOKENS + max(len(c) for c in chosen + rejected)
        rows = [p + c for p, c in zip(prompts, chosen)] + [p + r for p, r in zip(prompts, rejected)]
        self.ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        self.mask = torch.zeros((len(rows), width), dtype=torch.long)
        self.loss_mask = torch.zeros((len(rows), width - common.PROMPT_TOKENS), dtype=torch.float32)
        for i, (row, p) in enumerate(zip(rows, prompts + prompts)):
            self.ids[i, : len(row)] = torch.tensor(row)
            self.mask[i, : len(row)] = 1
            self.loss_mask[i, : len(row) - len(p)] = 1
        self.n = len(prompts)
        self.cursor = 0
        reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        with torch.no_grad():  # once, before timing: the reference never changes
            self.ref = self._logps(reference, self.ids, self.mask, self.loss_mask)

    def _logps(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        token = common.floor_token_logps(model, ids, mask, common.PROMPT_TOKENS, ids[:, common.PROMPT_TOKENS:])
        return (token * loss_mask).sum(-1)

    def step(self) -> None:
        idx = (torch.arange(common.BATCH) + self.cursor) % self.n
        self.cursor = (self.cursor + common.BATCH) % self.n
        rows = torch.cat([idx, idx + self.n])
        ids, mask, loss_mask = self.ids[rows], self.mask[rows], self.loss_mask[rows]
        ref = self.ref[rows]
        logps = self._logps(self.model, ids, mask, loss_mask)
        b = common.BATCH
        margin = (logps[:b] - ref[:b]) - (logps[b:] - ref[b:])
        loss = -F.logsigmoid(common.DPO_BETA * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), common.MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def rlhf_gym_dpo(setup: common.BenchSetup) -> Any:
    """rlhf_gym's offline DPO on the setup's pairs; its ``train_step`` is one update."""
    import rlhf_gym

    return rlhf_gym.make_algorithm(
        "dpo", policy=setup.load_policy(), dataset=setup.pairs, batch_size=common.BATCH,
        max_prompt_tokens=common.PROMPT_TOKENS, max_completion_tokens=common.NEW_TOKENS, beta=common.DPO_BETA,
        loss_type="sigmoid", learning_rate=common.LEARNING_RATE, max_grad_norm=common.MAX_GRAD_NORM,
        seed=common.SEED,
    )


def trl_dpo(setup: common.BenchSetup, output_dir: str, steps: int, precompute: bool = False) -> Any:
    """``trl.DPOTrainer`` configured for the same work: the reference recomputed every step (TRL's default), or
    with ``precompute=True`` its log-probs computed once before training (``precompute_ref_log_probs=True``)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = common.trl_training_args(
        DPOConfig, output_dir, steps, beta=common.DPO_BETA, loss_type=["sigmoid"],
        max_length=common.PROMPT_TOKENS + common.NEW_TOKENS, precompute_ref_log_probs=precompute,
    )
    return DPOTrainer(model=setup.load_model(), args=args, train_dataset=Dataset.from_list(setup.pairs),
                      processing_class=setup.tokenizer)


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES, default_warmup=5)
    threads = common.configure_torch(args.threads)
    setup = common.build_setup()
    total = args.warmup + args.steps
    common.warm_imports(*(["datasets", "trl.trainer.dpo_trainer"] if args.side == "trl" else []))
    baseline = common.rss_mb()
    with tempfile.TemporaryDirectory() as out:
        if args.side is not None:
            if args.side.startswith("trl"):
                trainer = trl_dpo(setup, out, total, precompute=args.side == "trl_precompute")
                common.trl_interleaved(trainer, args.side, {}, args.warmup, args.steps)
            else:
                step = rlhf_gym_dpo(setup).train_step if args.side == "rlhf_gym" else FloorDPO(setup).step
                common.interleave({args.side: step}, args.warmup, args.steps)
            common.emit({"bench": "dpo", **common.side_memory(args.side, baseline)}, args.json)
            return
        algo = rlhf_gym_dpo(setup)
        floor = FloorDPO(setup)
        trainer = trl_dpo(setup, out, total)
        times = common.trl_interleaved(trainer, "trl", {"rlhf_gym": algo.train_step, "floor": floor.step},
                                       args.warmup, args.steps)
        # TRL's faster configuration in a second loop, again interleaved with rlhf_gym and the floor
        trainer = trl_dpo(setup, out, total, precompute=True)
        again = common.trl_interleaved(trainer, "trl_precompute", {"rlhf_gym@precompute": algo.train_step,
                                                                   "floor@precompute": floor.step},
                                       args.warmup, args.steps)
        times.update(again)
    flops = common.training_flops(2 * common.BATCH, common.PROMPT_TOKENS + common.NEW_TOKENS, common.NEW_TOKENS)
    common.emit({"bench": "dpo", "threads": threads, "unit": "s/step", "size": common.SIZE, "flops_per_step": flops,
                 "sides": {k: common.summary(v) for k, v in times.items()}, "raw": times}, args.json)


if __name__ == "__main__":
    main()
