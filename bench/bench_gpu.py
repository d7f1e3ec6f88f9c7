"""GPU benchmark: rollout throughput and a bfloat16 PPO step on one CUDA device, with float32 beside them.

Self-contained: the model is a ~25M-parameter GPT-2 (8 layers × 512, 8 heads) built from a config with the tiny
kit's tokenizer (built locally in about a second), so nothing is downloaded. Measured, each after warm-up steps and
with the device synchronised around every timed step:

* rollout: one batch of 64 prompts × 64 new tokens through the rollout worker training uses (sampling through
  ``Completion-v0``'s vector env, scoring with a length reward), in tokens/s, bfloat16 and float32;
* PPO step: the built-in ``ppo`` (64 samples, minibatches of 16, 2 epochs, β = 0.05 against a frozen reference),
  whole-step seconds, bfloat16 (autocast, float32 master weights) and float32, and peak device memory.

Without CUDA it prints ``skipped: no CUDA`` and exits 0. ``--device cpu --quick`` runs a miniature of the same
code on the CPU (a 2-layer model, tiny batches) so the script is exercised where there is no GPU.

Results: markdown rows on stdout, a JSON file (``--json``), and — on a full run — a section of
``bench/RESULTS.md`` between ``<!-- gpu-bench -->`` markers (replaced on each run; ``--results none`` to skip).
Every section runs under a time budget (``--budget`` seconds, default 200): what would not fit is reported as
skipped, and a section that fails is reported with its error while the others still run (exit status 1 then).

Run: ``python bench/bench_gpu.py [--device cuda] [--json gpu.json]``; ``python bench/bench_gpu.py --device cpu
--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
START_MARK, END_MARK = "<!-- gpu-bench -->", "<!-- /gpu-bench -->"

FULL = {"n_layer": 8, "n_embd": 512, "n_head": 8, "prompts": 64, "new_tokens": 64, "minibatch": 16, "epochs": 2,
        "warmup": 2, "steps": 5}
QUICK = {"n_layer": 1, "n_embd": 32, "n_head": 2, "prompts": 2, "new_tokens": 4, "minibatch": 2, "epochs": 1,
         "warmup": 1, "steps": 1}


def length_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Longer completions score higher (cheap, deterministic; the policy's speed is what is measured)."""
    return [len(c) / 32.0 for c in completions]


class Bench:
    """Holds the model directory, the settings, the time budget and the rows measured so far."""

    def __init__(self, device: Any, size: dict[str, int], budget: float, workdir: Path) -> None:
        self.device = device
        self.size = size
        self.deadline = time.perf_counter() + budget
        self.workdir = workdir
        self.rows: list[dict[str, Any]] = []
        self.failed = False
        self.model_dir, self.tokenizer, self.num_params = self._build_model()

    # -- setup ----------------------------------------------------------------------------------------------------
    def _build_model(self) -> tuple[str, Any, int]:
        import torch
        from transformers import AutoTokenizer, GPT2LMHeadModel

        from rlhf_gym.tiny import build_tiny_tokenizer, tiny_config

        tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(self.workdir / "cache"))
        config = tiny_config(len(tokenizer), n_layer=self.size["n_layer"], n_embd=self.size["n_embd"],
                             n_head=self.size["n_head"], n_positions=256, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = GPT2LMHeadModel(config)
        path = self.workdir / "model"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path), tokenizer, sum(p.numel() for p in model.parameters())

    def make_ppo(self, dtype: str) -> Any:
        import gymnasium as gym

        import rlhf_gym
        from rlhf_gym import tiny
        from rlhf_gym.policy import Policy

        policy = Policy.from_pretrained(self.model_dir)
        env = gym.make("rlhf_gym/Completion-v0", tokenizer=self.tokenizer, prompts=tiny.review_prompts(256),
                       reward=length_reward, max_new_tokens=self.size["new_tokens"], max_prompt_tokens=16,
                       vocab_size=policy.vocab_size)
        return rlhf_gym.make_algorithm(
            "ppo", env=env, policy=policy, device=str(self.device), dtype=dtype, num_prompts=self.size["prompts"],
            minibatch_size=self.size["minibatch"], ppo_epochs=self.size["epochs"], beta=0.05, learning_rate=1e-6,
            seed=0)

    # -- running sections -----------------------------------------------------------------------------------------
    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement; record its row, or why it did not run."""
        left = self.deadline - time.perf_counter()
        if left <= 0:
            self.rows.append({"name": name, "status": "skipped: time budget spent"})
            print(f"[bench_gpu] {name}: skipped (time budget spent)", flush=True)
            return
        print(f"[bench_gpu] {name} ({left:.0f} s of budget left)...", flush=True)
        try:
            row = fn()
            row.update(name=name, status="ok")
        except Exception as exc:  # one failing section must not lose the others' figures
            traceback.print_exc()
            row = {"name": name, "status": f"error: {type(exc).__name__}: {exc}"[:300]}
            self.failed = True
        finally:
            self._free()
        self.rows.append(row)
        print(f"[bench_gpu] {name}: {row}", flush=True)

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _timed(self, step: Callable[[], Any]) -> tuple[list[float], list[Any]]:
        times, outs = [], []
        for i in range(self.size["warmup"] + self.size["steps"]):
            if time.perf_counter() > self.deadline and i > self.size["warmup"]:
                break  # keep the steps already timed
            self._sync()
            t0 = time.perf_counter()
            out = step()
            self._sync()
            if i >= self.size["warmup"]:
                times.append(time.perf_counter() - t0)
                outs.append(out)
        if not times:
            raise RuntimeError("the time budget ran out during warm-up")
        return times, outs

    def rollout(self, dtype: str) -> dict[str, Any]:
        algo = self.make_ppo(dtype)
        algo.policy.eval()
        times, rollouts = self._timed(lambda: algo.rollouts.collect(return_logprobs=True))
        tokens = [r.num_tokens for r in rollouts]
        rates = [n / t for n, t in zip(tokens, times)]
        return {"dtype": dtype, "tokens_per_s": statistics.median(rates), "batch": len(rollouts[0]),
                "tokens_per_batch": statistics.median(tokens), "seconds_median": statistics.median(times),
                "steps": len(times)}

    def ppo_step(self, dtype: str) -> dict[str, Any]:
        import torch

        algo = self.make_ppo(dtype)
        times, metrics = self._timed(algo.train_step)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else float("nan")
        return {"dtype": dtype, "step_s_median": statistics.median(times), "step_s_min": min(times),
                "generation_s": statistics.median(m["timing/generation"] for m in metrics),
                "update_s": statistics.median(m["timing/update"] for m in metrics),
                "peak_mem_mib": peak, "kl": metrics[-1]["objective/kl"], "steps": len(times)}


# -- reporting ------------------------------------------------------------------------------------------------------
def environment(device: Any) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def markdown(bench: Bench, env: dict[str, Any], quick: bool) -> str:
    size = bench.size
    lines = [
        "## GPU: bfloat16 PPO step and rollout throughput (`bench/bench_gpu.py`)",
        "",
        f"{env.get('gpu', env['device'])}, torch {env['torch']}"
        + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
        + f". Model: GPT-2 {size['n_layer']}×{size['n_embd']} built from a config ({bench.num_params / 1e6:.1f}M "
        f"parameters, the tiny kit's tokenizer); {size['prompts']} prompts × {size['new_tokens']} new tokens; PPO "
        f"minibatches of {size['minibatch']}, {size['epochs']} epochs, β = 0.05; medians of {size['steps']} steps "
        f"after {size['warmup']} warm-up, device synchronised around each."
        + (" **Quick CPU miniature, not a GPU figure.**" if quick else ""),
        "",
        "| measurement | dtype | median | detail |",
        "|---|---|---|---|",
    ]
    for row in bench.rows:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | | | {row['status']} |")
        elif "tokens_per_s" in row:
            lines.append(f"| {row['name']} | {row['dtype']} | {row['tokens_per_s']:,.0f} tokens/s | "
                         f"{row['tokens_per_batch']:.0f} tokens per batch of {row['batch']}, "
                         f"{row['seconds_median']:.3f} s |")
        else:
            lines.append(f"| {row['name']} | {row['dtype']} | {row['step_s_median']:.3f} s/step | "
                         f"generation {row['generation_s']:.3f} s, update {row['update_s']:.3f} s, "
                         f"peak memory {row['peak_mem_mib']:.0f} MiB |")
    by_name = {r["name"]: r for r in bench.rows if r["status"] == "ok"}
    if "PPO step bf16" in by_name and "PPO step fp32" in by_name:
        ratio = by_name["PPO step fp32"]["step_s_median"] / by_name["PPO step bf16"]["step_s_median"]
        lines += ["", f"bfloat16 PPO step speed-up over float32: **{ratio:.2f}×**."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace (or append) the marked GPU section of ``path``, leaving the rest of the file as it is."""
    block = f"{START_MARK}\n{text}{END_MARK}\n"
    old = path.read_text() if path.is_file() else ""
    if START_MARK in old and END_MARK in old:
        head, rest = old.split(START_MARK, 1)
        tail = rest.split(END_MARK, 1)[1].lstrip("\n")
        new = head + block + tail
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --quick)")
    parser.add_argument("--quick", action="store_true", help="a miniature run (for checking the script on a CPU)")
    parser.add_argument("--budget", type=float, default=200.0, help="seconds for all measurements together")
    parser.add_argument("--json", type=Path, help="write the rows and the environment as JSON here")
    parser.add_argument("--results", default=None,
                        help="markdown file whose GPU section is replaced (default: bench/RESULTS.md on a full run, "
                             "none with --quick); 'none' to write nothing")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: no CUDA (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from rlhf_gym.devices import resolve_device

    device = resolve_device(args.device)
    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        bench = Bench(device, size, args.budget, Path(tmp))
        print(f"[bench_gpu] {bench.num_params / 1e6:.1f}M-parameter GPT-2 on {device}", flush=True)
        bench.section("rollout bf16", lambda: bench.rollout("bfloat16"))
        bench.section("PPO step bf16", lambda: bench.ppo_step("bfloat16"))
        bench.section("rollout fp32", lambda: bench.rollout("float32"))
        bench.section("PPO step fp32", lambda: bench.ppo_step("float32"))
    env = environment(device)
    text = markdown(bench, env, args.quick)
    print()
    print(text)
    print(f"[bench_gpu] done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "size": size, "params": bench.num_params,
                                         "rows": bench.rows}, indent=2) + "\n")
    results = args.results if args.results is not None else ("none" if args.quick else str(BENCH_DIR / "RESULTS.md"))
    if results.lower() != "none":
        write_section(Path(results), text)
        print(f"[bench_gpu] wrote the GPU section of {results}")
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
