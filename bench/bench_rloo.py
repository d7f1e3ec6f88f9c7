"""Online steps: rlhf_gym RLOO (k = 4) vs ``trl.RLOOTrainer``, and a GRPO-style step vs ``trl.GRPOTrainer``.

Every side samples 4 prompts × 4 completions of up to 32 tokens from a copy of the same initial weights, scores
them with the same trivial reward (completion length), and makes one AdamW step (lr 1e-6, clip 1.0). RLOO uses
β = 0.05 (TRL's default: a reference forward per step), the GRPO-style step β = 0 (TRL's default: no reference).

* rlhf_gym RLOO is ``make_algorithm("rloo", ...)``; its step samples through ``Completion-v0``'s vector env.
* rlhf_gym GRPO is ``make_algorithm("grpo", ...)`` (β = 0: the sampler's log-probs are the old ones, no extra
  forward; group-normalised advantages; clipped objective).
* The "floor" is the least work the step can be, in bare torch: sampling over one static key/value buffer with
  the sampled tokens' log-probs kept (so no old-log-prob forward), decode, score, (reference forward), one policy
  forward over the completion positions, loss, backward, clip, a fused AdamW step, the fused GELU. rlhf_gym's
  ratio to it is ≥ 1 by construction; what it is above 1 is the framework's overhead.

``BENCH_SIZE=mid`` runs the same comparison on the ≈ 26M-parameter policy, where compute, not overhead, dominates.

Run: ``python bench/bench_rloo.py --algo rloo|grpo [--steps 7] [--warmup 2] [--json out.json] [--side NAME]``.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import common
import torch

SIDES = ["trl", "rlhf_gym", "floor"]


class FloorOnline:
    """One RLOO or GRPO step in bare torch with static-cache sampling: the least work the step can be."""

    def __init__(self, setup: common.BenchSetup, algo: str) -> None:
        self.algo = algo
        self.beta = common.RLOO_BETA if algo == "rloo" else common.GRPO_BETA
        self.tokenizer = setup.tokenizer
        self.model = common.floor_model(setup.load_model())
        self.ref = copy.deepcopy(self.model).eval().requires_grad_(False) if self.beta > 0 else None
        self.optimizer = common.floor_optimizer(self.model)
        self.generator = torch.Generator().manual_seed(common.SEED)
        self.prompts = setup.prompts
        self.ids, self.mask = setup.prompt_batch(self.prompts)  # tokenised once
        self.eos = setup.tokenizer.eos_token_id
        self.pad = setup.tokenizer.pad_token_id
        self.cursor = 0
        self.num_prompts = common.BATCH // common.GROUP

    def _token_logps(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        return common.floor_token_logps(model, ids, mask, ids.shape[1] - completion.shape[1], completion)

    def step(self) -> None:
        g, k = self.num_prompts, common.GROUP
        rows = (torch.arange(g) + self.cursor) % len(self.prompts)
        self.cursor = (self.cursor + g) % len(self.prompts)
        ids = self.ids[rows].repeat_interleave(k, 0)
        mask = self.mask[rows].repeat_interleave(k, 0)
        # -- sample (log-probs of the sampled tokens come with them) ----------------------------------------
        completion, cmask, old = common.floor_sample(self.model, ids, mask, common.NEW_TOKENS, self.eos, self.pad,
                                                     self.generator)
        out = torch.cat([ids, completion], 1)
        texts = self.tokenizer.batch_decode(completion, skip_special_tokens=True)
        scores = torch.tensor(common.length_reward([self.prompts[int(r)] for r in rows.repeat_interleave(k)], texts))
        full_mask = torch.cat([mask, cmask], 1)
        fmask = cmask.float()
        # -- forward(s) -------------------------------------------------------------------------------------
        logps = self._token_logps(self.model, out, full_mask, completion)
        if self.ref is not None:
            with torch.no_grad():
                ref = self._token_logps(self.ref, out, full_mask, completion)
            scores = scores - self.beta * ((logps.detach() - ref) * fmask).sum(1)
        grouped = scores.view(g, k)
        # -- loss --------------------------------------------------------------------------------------------
        if self.algo == "rloo":
            adv = (grouped - (grouped.sum(1, keepdim=True) - grouped) / (k - 1)).reshape(-1)
            seq = (logps * fmask).sum(1)
            ratio = torch.exp(seq - (old * fmask).sum(1))
            loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
        else:
            adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1, 1)
            ratio = torch.exp(logps - old)
            per_token = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
            loss = (per_token * fmask).sum() / fmask.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), common.MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def rlhf_gym_step(setup: common.BenchSetup, algo: str) -> Any:
    """The rlhf_gym side's step function for ``algo``."""
    import rlhf_gym

    return rlhf_gym.make_algorithm(
        algo, env=setup.completion_env(common.BATCH, common.GROUP), policy=setup.load_policy(),
        num_prompts=common.BATCH // common.GROUP, group_size=common.GROUP,
        beta=common.RLOO_BETA if algo == "rloo" else common.GRPO_BETA,
        kl_monitor="off",  # TRL measures no KL at β = 0 either: the same work on both sides
        learning_rate=common.LEARNING_RATE, max_grad_norm=common.MAX_GRAD_NORM, seed=common.SEED,
    ).train_step


def trl_trainer(setup: common.BenchSetup, algo: str, output_dir: str, steps: int) -> Any:
    """``trl.RLOOTrainer`` / ``trl.GRPOTrainer`` configured for the same work."""
    from datasets import Dataset

    if algo == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

        beta = common.RLOO_BETA
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

        beta = common.GRPO_BETA
    args = common.trl_training_args(
        Config, output_dir, steps, num_generations=common.GROUP, max_completion_length=common.NEW_TOKENS,
        beta=beta, use_vllm=False, temperature=1.0, top_k=0, top_p=1.0, log_completions=False,
    )
    return Trainer(model=setup.load_model(), reward_funcs=common.length_reward, args=args,
                   train_dataset=Dataset.from_list([{"prompt": p} for p in setup.prompts]),
                   processing_class=setup.tokenizer)


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0], SIDES, extra=lambda p: p.add_argument(
        "--algo", choices=["rloo", "grpo"], default="rloo", help="which online step to compare"))
    algo = args.algo
    threads = common.configure_torch(args.threads)
    setup = common.build_setup()
    total = args.warmup + args.steps
    common.warm_imports(*([f"trl.trainer.{algo}_trainer", "datasets"] if args.side == "trl" else []))
    baseline = common.rss_mb()
    with tempfile.TemporaryDirectory() as out:
        if args.side is not None:
            if args.side == "trl":
                common.trl_interleaved(trl_trainer(setup, algo, out, total), "trl", {}, args.warmup, args.steps)
            else:
                step = rlhf_gym_step(setup, algo) if args.side == "rlhf_gym" else FloorOnline(setup, algo).step
                common.interleave({args.side: step}, args.warmup, args.steps)
            common.emit({"bench": algo, **common.side_memory(args.side, baseline)}, args.json)
            return
        ours = rlhf_gym_step(setup, algo)
        floor = FloorOnline(setup, algo).step
        trainer = trl_trainer(setup, algo, out, total)
        times = common.trl_interleaved(trainer, "trl", {"rlhf_gym": ours, "floor": floor}, args.warmup, args.steps)
    context = common.PROMPT_TOKENS + common.NEW_TOKENS
    flops = (common.generation_flops(common.BATCH, common.PROMPT_TOKENS, common.NEW_TOKENS)
             + common.training_flops(common.BATCH, context, common.NEW_TOKENS)
             + (common.forward_flops(common.BATCH, context, common.NEW_TOKENS) if algo == "rloo" else 0.0))
    common.emit({"bench": algo, "threads": threads, "unit": "s/step", "size": common.SIZE, "flops_per_step": flops,
                 "sides": {k: common.summary(v) for k, v in times.items()}, "raw": times}, args.json)


if __name__ == "__main__":
    main()
