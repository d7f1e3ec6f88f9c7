"""Run every benchmark in ``bench/`` and regenerate ``bench/RESULTS.md`` — the one command behind ``make bench``.

Each benchmark runs in its own process (so one side's memory never counts against another's), writes its figures
as JSON under ``bench/results/``, and this script turns them into the table in ``RESULTS.md``: the ratios against
the targets first, then the step times, the PPO phases, peak memory, the machine and the exact commands. Sides of
a comparison run interleaved (A B A B ...) inside one process; peak RSS comes from a separate short run of each
side alone (``--side``).

Run: ``python bench/run_all.py [--steps 7] [--quick] [--no-memory] [--only dpo,rloo,...]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
#: glibc setting that stops the heap from keeping freed blocks (see the PPO memory note in RESULTS.md)
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class Bench:
    """One benchmark run: a script, its arguments, the sides it compares, extra environment."""

    name: str
    script: str
    args: list[str] = field(default_factory=list)
    sides: list[str] = field(default_factory=list)  # sides whose peak RSS is measured alone
    env: dict[str, str] = field(default_factory=dict)
    warmup: int | None = None
    steps: int | None = None  # at most this many timed steps (a slow benchmark's share of `make bench`)


BENCHES = [
    Bench("dpo", "bench_dpo.py", sides=["trl", "rlhf_gym", "floor"], warmup=5),
    Bench("rloo", "bench_rloo.py", ["--algo", "rloo"], sides=["trl", "rlhf_gym", "floor"]),
    Bench("grpo", "bench_rloo.py", ["--algo", "grpo"], sides=["trl", "rlhf_gym", "floor"]),
    Bench("rloo_mid", "bench_rloo.py", ["--algo", "rloo"], env={"BENCH_SIZE": "mid"}, warmup=1, steps=5),
    Bench("ppo", "bench_ppo.py"),
    Bench("ppo_mmap", "bench_ppo.py", env=MMAP_ENV),
    Bench("rollout", "bench_rollout.py", sides=["env", "policy_generate", "hf_generate"]),
    Bench("env", "bench_env.py"),
    Bench("sb3", "bench_sb3.py"),  # written separately; skipped when absent
    Bench("ray", "bench_ray.py"),  # needs the ray extra
]


METHOD_NOTES = [
    "- **TRL**: its own `trainer.train()` loop. One step is the span from the trainer's `on_step_begin` to its "
    "`on_step_end` callback: generation (RLOO/GRPO), every forward, backward, clipping and the optimizer step. The "
    "other sides' steps run inside `on_step_end` after TRL's step has been timed, giving the A B C order.",
    "- **rlhf_gym**: `algo.train_step()` of `make_algorithm(\"dpo\" | \"rloo\" | \"grpo\" | \"ppo\", ...)`. "
    "Its sampler (`Policy.generate`) runs the GPT-2 blocks over one key/value buffer per call (no per-step "
    "`torch.cat` or mask building) and draws each token with one uniform per row (`torch.multinomial` draws an "
    "exponential per vocabulary entry); `Policy` swaps `gelu_new` for the fused tanh-GELU kernel (the same function) "
    "and AdamW uses torch's fused kernel. TRL and the floor use the model as loaded and HF `generate()`.",
    "- **floor**: the least work the step can be, in bare torch: pre-tokenised prompts, sampling over one static "
    "key/value buffer that keeps the sampled tokens' log-probs (rlhf_gym's decoder and token draw, no old-log-prob "
    "forward), the LM head only at completion positions (`logits_to_keep`), the reference forward only where the "
    "step needs it (RLOO; DPO's reference log-probs are computed once before timing), the fused GELU and fused "
    "AdamW. rlhf_gym's ratio to it is therefore ≥ 1 by construction; the excess is the framework's overhead.",
    "- **DPO**: rlhf_gym computes each pair's reference log-probs once (the reference is frozen) and caches them; "
    "TRL by default (`precompute_ref_log_probs=False`) runs the reference forward every step, and with "
    "`precompute_ref_log_probs=True` (timed in a second training loop, interleaved again with rlhf_gym and the floor) "
    "computes them once before its first step. The warm-up (5 steps) covers rlhf_gym's first pass over the 64 pairs.",
    "- **GRPO**: β = 0 on every side; rlhf_gym's KL monitor (`kl_monitor`, on by default to log the KL to the "
    "starting policy) is turned off, since TRL measures no KL at β = 0.",
    "- **FLOP/s**: each step's useful FLOPs (2 per multiply-add: the blocks' 12·L·d² per token, causal attention, "
    "the LM head where it is applied; backward = 2 × forward; sampling with a KV cache; the reference forward only "
    "where the step needs it), the same count for every side, divided by the side's median step time, and set "
    "against this machine's fp32 matmul rate measured with the same thread count (the physical limit).",
    "- **Mid-size policy** (`rloo_mid`, `BENCH_SIZE=mid`): the RLOO comparison on an 8-layer, 512-dim GPT-2 "
    "(≈ 26M parameters), where compute rather than per-step overhead dominates.",
    "- **RLOO**: rlhf_gym takes the old log-probs from the sampler; TRL runs an extra no-grad forward for them. "
    "Both run the reference forward (β = 0.05).",
    "- **Peak RSS**: each side alone in a fresh process (`--side`), `ru_maxrss`, minus the RSS after imports.",
    "- **PPO memory**: with glibc's default dynamic mmap threshold, blocks freed after the first update can stay "
    "in the heap, so RSS keeps memory the live tensors no longer use; the `MALLOC_MMAP_THRESHOLD_` run shows the "
    "live peak (weights + reference copy + gradients + AdamW state + one minibatch's activations).",
]


#: where the time (or memory) goes when a target is missed, keyed by the start of the comparison's label
MISS_NOTES = {
    "RLOO": "TRL's RLOO step = HF `generate()` + an old-log-prob forward + a reference forward + forward/backward; "
    "rlhf_gym's drops the old-log-prob forward (the sampler returns the log-probs). The rest is the same tensor "
    "work, so the gap to 0.8 × TRL is what TRL spends outside the floor (re-tokenising, decoding, metrics).",
    "GRPO": "With β = 0 and one iteration TRL skips both extra forwards, so TRL's GRPO step is the floor plus its "
    "per-step overhead (re-tokenising prompts, `batch_decode`, metric gathering) and ≤ 0.8 × TRL means about 0.8 × "
    "the floor. About half of every side's step is sampling 16 × 32 tokens; rlhf_gym gets under the floor only "
    "through its sampler (see the rollout row) and the fused GELU/AdamW kernels, so a loaded machine that slows "
    "the sampler's share shows here first.",
    "DPO": "rlhf_gym's DPO step is one forward/backward over 32 rows (reference log-probs cached per pair); against "
    "the floor, the excess is the framework's per-step overhead (batch assembly, metrics).",
    "rollout": "The env adds one decode and one reward call per batch; sampling is `Policy.generate`.",
    "Ray rollout": "Ray mode adds, per step, the weight publication (`ray.put` of the state_dict as arrays, the "
    "actor's copy into its parameters) and one actor call: about 20 ms here. The rest of the gap is the actor "
    "sampling slower than the learner's process while the machine is loaded; measured alone, an actor and the "
    "driver sample the same batch at the same speed.",
    "PPO peak": "Live tensors at the peak are weights + reference copy + gradients + AdamW state + one minibatch's "
    "activations; the reference copy and the gradients are outside the budget. Above that, glibc's dynamic mmap "
    "threshold keeps blocks freed after the first update in the heap: the `MALLOC_MMAP_THRESHOLD_` row is the same "
    "run with the threshold pinned.",
}


def command(bench: Bench, steps: int, warmup: int | None, out: Path, side: str | None = None) -> list[str]:
    cmd = [sys.executable, str(BENCH_DIR / bench.script), *bench.args, "--json", str(out)]
    if bench.name == "sb3":  # slow (SB3 replays every token): its own step counts, except in a quick check
        return cmd + (["--steps", "1", "--warmup", "0"] if steps < 3 else [])
    cmd += ["--steps", str(min(steps, bench.steps or steps))]
    if warmup is not None:
        cmd += ["--warmup", str(warmup)]
    if side is not None:
        cmd += ["--side", side]
    return cmd


def shown(cmd: list[str], env: dict[str, str]) -> str:
    """A command as a user would type it from the repository root."""
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    args = [".venv/bin/python" if c == sys.executable else os.path.relpath(c, common.REPO_ROOT)
            if c.startswith(str(common.REPO_ROOT)) else c for c in cmd]
    return (prefix + " " if prefix else "") + shlex.join(args)


def run(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any] | str:
    """Run one benchmark process; its JSON figures, or the reason it failed."""
    out = Path(cmd[cmd.index("--json") + 1])
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT,
                              cwd=common.REPO_ROOT, check=False)
    print(f"  {time.perf_counter() - start:6.1f} s  {shown(cmd, {})}", flush=True)
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text().strip().splitlines()[-3:]
        return f"exit {proc.returncode}: " + " | ".join(tail)
    return json.loads(out.read_text())


# -- the report ---------------------------------------------------------------------------------------------------


def paired_ratio(result: dict[str, Any], ours: str, ref: str, invert: bool = False) -> float:
    """Median over interleaved rounds of ``ours_i / ref_i`` (load hits both sides of a round alike)."""
    a, b = result["raw"][ours], result["raw"][ref]
    ratios = [(y / x) if invert else (x / y) for x, y in zip(a, b)]
    return statistics.median(ratios)


def fmt(value: float, digits: int = 3) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if value < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def ratio_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []

    def add(label: str, value: float | None, op: str, target: float, detail: str) -> None:
        if value is None:
            rows.append([label, "—", f"{op} {target}", "not run", detail])
            return
        ok = value <= target if op == "≤" else value >= target
        rows.append([label, f"**{value:.2f}**", f"{op} {target}", "met" if ok else "**missed**", detail])

    def step_pair(name: str, label: str, target: float) -> None:
        r = results.get(name)
        if not isinstance(r, dict):
            add(f"{label} vs TRL", None, "≤", target, str(r))
            add(f"{label} vs least-work floor", None, "≤", FLOOR_TARGET, "")
            return
        s = r["sides"]
        add(f"{label} vs TRL", paired_ratio(r, "rlhf_gym", "trl"), "≤", target,
            f"{fmt(s['rlhf_gym']['median'])} s vs {fmt(s['trl']['median'])} s")
        if "trl_precompute" in s:
            add(f"{label} vs TRL with `precompute_ref_log_probs=True`",
                paired_ratio(r, "rlhf_gym@precompute", "trl_precompute"), "≤", 0.8,
                f"{fmt(s['rlhf_gym@precompute']['median'])} s vs {fmt(s['trl_precompute']['median'])} s")
        add(f"{label} vs least-work floor (≥ 1 by construction)", paired_ratio(r, "rlhf_gym", "floor"), "≤",
            FLOOR_TARGET, f"{fmt(s['rlhf_gym']['median'])} s vs {fmt(s['floor']['median'])} s")

    step_pair("dpo", "DPO step", 0.7)
    step_pair("rloo", "RLOO (k=4) step", 0.8)
    step_pair("grpo", "GRPO-style (k=4) step", 0.8)
    step_pair("rloo_mid", "RLOO (k=4) step, ≈26M-parameter policy", 0.8)
    r = results.get("rollout")
    if isinstance(r, dict):
        s = r["sides"]
        add("rollout via Completion-v0 vector env vs raw `generate()` (tokens/s)",
            paired_ratio(r, "env", "hf_generate"), "≥", 1.0,
            f"{fmt(s['env']['median'])} vs {fmt(s['hf_generate']['median'])} tokens/s")
    else:
        add("rollout via env vs raw `generate()`", None, "≥", 1.0, str(r))
    r = results.get("env")
    if isinstance(r, dict):
        best = r["sides"][f"vector_{r['best_num_envs']}"]["median"]
        add("token-level vector env, steps/s ÷ 50,000", best / 50_000, "≥", 1.0,
            f"{fmt(best)} transitions/s at num_envs={r['best_num_envs']}")
    else:
        add("token-level vector env", None, "≥", 1.0, str(r))
    for name, label in (("ppo", "PPO peak RSS ÷ (weights + optimizer + minibatch activations)"),
                        ("ppo_mmap", f"same, with `{' '.join(f'{k}={v}' for k, v in MMAP_ENV.items())}`")):
        r = results.get(name)
        if isinstance(r, dict):
            m = r["memory"]
            add(label, m["ratio_to_budget"], "≤", 2.0,
                f"{fmt(m['peak_above_baseline_mb'])} MiB above baseline vs {fmt(m['budget_mb'])} MiB")
        else:
            add(label, None, "≤", 2.0, str(r))
    r = results.get("ray")
    if isinstance(r, dict):
        s = r["sides"]
        add("Ray rollout, 1 worker vs in-process (tokens/s; overhead ≤ 10%)", 1 - r["overhead_1_worker"], "≥", 0.9,
            f"{fmt(s['ray_1']['median'])} vs {fmt(s['in_process']['median'])} tokens/s")
    else:
        add("Ray rollout, 1 worker vs in-process", None, "≥", 0.9, str(r))
    return rows


def ray_section(result: Any) -> list[str]:
    """Throughput of the Ray rollout workers, the overhead at one worker and the two-worker scaling efficiency."""
    parts = ["## Ray rollout workers (`bench/bench_ray.py`)", ""]
    if not isinstance(result, dict):
        return parts + [f"Not measured here: {result or 'bench/bench_ray.py is absent'}.", ""]
    s = result["sides"]
    return parts + [
        "Each step publishes new weights (every actor loads them from the object store) and samples 16 × 32 tokens; "
        "one torch thread per actor and in the in-process side.",
        "",
        table(["side", "tokens/s (median)", "step s (median)"],
              [[k, fmt(v["median"]), fmt(result["step_s"][k]["median"])] for k, v in s.items()]),
        "",
        f"Overhead of Ray mode at 1 worker: {result['overhead_1_worker']:.1%} (target ≤ 10%). Scaling efficiency "
        f"of 2 workers, tokens/s ÷ (2 × 1 worker): {result['scaling_efficiency_2_workers']:.0%}. Two workers scale only "
        "on two idle cores (compare the load average), and only as far as a half batch is cheaper: a decoding step "
        "of this small model costs nearly as much for 8 rows as for 16.",
        "",
    ]


#: rlhf_gym ÷ the least-work floor: at most this much framework overhead
FLOOR_TARGET = 1.1


def flops_rows(results: dict[str, Any], peak: float | None) -> list[list[str]]:
    """Achieved FLOP/s of every side of every step benchmark, and its fraction of the measured matmul rate."""
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        for side, s in r["sides"].items():
            if "flops_per_step" in r and side in r.get("flops_sides", r["sides"]):
                work, rate = f"{r['flops_per_step'] / 1e9:.2f} G per step", r["flops_per_step"] / s["median"]
            elif "flops_per_token" in r:  # a rate in tokens/s
                work, rate = f"{r['flops_per_token'] / 1e6:.2f} M per token", r["flops_per_token"] * s["median"]
            else:
                continue
            rows.append([name, side, work, f"{rate / 1e9:.2f}", f"{rate / peak:.1%}" if peak else "—"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(threads: int, load_start: tuple[float, ...], load_end: tuple[float, ...]) -> list[str]:
    import importlib.metadata as md

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for dist in ("torch", "transformers", "trl", "gymnasium", "stable_baselines3", "accelerate"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}",
        f"- {', '.join(versions)}",
        f"- torch threads per benchmark process: {threads} (`BENCH_THREADS`; default 2, or 1 when the machine is busy)",
        f"- load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in load_start)}; at end: "
        f"{', '.join(f'{x:.2f}' for x in load_end)}",
        f"- generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
    ]


def step_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("dpo", "rloo", "grpo", "rloo_mid"):
        r = results.get(name)
        if not isinstance(r, dict):
            continue
        for side in r["sides"]:
            s = r["sides"][side]
            rows.append([name, side, fmt(s["median"]), fmt(s["min"]), fmt(s["max"]), str(s["n"])])
    r = results.get("rollout")
    if isinstance(r, dict):
        for side, s in r["sides"].items():
            rows.append(["rollout (tokens/s)", side, fmt(s["median"]), fmt(s["min"]), fmt(s["max"]), str(s["n"])])
    return rows


def write_report(results: dict[str, Any], memory: dict[str, Any], commands: list[str], threads: int,
                 load_start: tuple[float, ...], load_end: tuple[float, ...], path: Path,
                 peak: float | None = None) -> None:
    ratios = ratio_rows(results)
    missed = [(row[0], next((n for key, n in MISS_NOTES.items() if row[0].startswith(key)), "see the tables below"))
              for row in ratios if row[3] == "**missed**"]
    parts = [
        "# Benchmarks",
        "",
        "Generated by `bench/run_all.py` (`make bench`); do not edit by hand. Setup: the tiny kit's "
        f"tokenizer, a random-init GPT-2 with n_layer={common.N_LAYER}, n_embd={common.N_EMBD}, "
        f"n_head={common.N_HEAD}, a {common.VOCAB}-token head; {common.NUM_PROMPTS} prompts of "
        f"{common.PROMPT_TOKENS} tokens, batch {common.BATCH}, {common.NEW_TOKENS} new tokens; fp32, dropout "
        f"off, no gradient checkpointing, AdamW lr {common.LEARNING_RATE:g}, grad clip {common.MAX_GRAD_NORM}. "
        "RLOO/GRPO batches are 4 prompts × 4 completions; the reward is the completion's length in characters, "
        f"the same callable on both sides. DPO β = {common.DPO_BETA} (sigmoid); RLOO β = {common.RLOO_BETA} and "
        f"GRPO β = {common.GRPO_BETA} (TRL's defaults).",
        "",
        "Ratios are the median over interleaved rounds (A B C A B C … in one process) of rlhf_gym ÷ reference, "
        "so machine load hits both sides of a round alike; times are medians after warm-up.",
        "",
        "## Ratios against the targets",
        "",
        table(["comparison", "ratio", "target", "", "medians"], ratios),
        "",
        *[f"- *{label}* missed: {note}" for label, note in missed],
        "" if missed else "All targets met.",
        "",
        "## Step times (seconds; rollout in tokens/s)",
        "",
        table(["benchmark", "side", "median", "min", "max", "steps"], step_rows(results)),
        "",
        "## Achieved FLOP/s against this machine's matmul rate",
        "",
        (f"fp32 matmul rate measured here with {threads} thread(s): **{peak / 1e9:.1f} GFLOP/s** (best of 5 "
         "1024×1024 products, before and after the runs). Each step's useful FLOPs are the same for every side "
         "of a benchmark. A busy machine understates the rate (fractions can then exceed 100%): measure idle."
         if peak else "Matmul rate not measured."),
        "",
        table(["benchmark", "side", "FLOPs", "GFLOP/s", "of matmul rate"], flops_rows(results, peak)),
        "",
    ]
    ppo = results.get("ppo")
    if isinstance(ppo, dict):
        s = ppo["sides"]
        m = ppo["memory"]
        parts += [
            "## PPO (no TRL counterpart): time per phase",
            "",
            table(["phase", "median s", "share"],
                  [[k, fmt(s[k]["median"]), f"{s[k]['median'] / s['step']['median']:.0%}"]
                   for k in ("generation", "scoring", "forward", "update", "step")]),
            "",
            "`forward` = the old log-prob/value forward and the reference forward of the batch; `update` = 4 "
            "epochs × 2 minibatches of 8 (forward, backward, clip, AdamW step).",
            "",
            f"Memory: {m['parameters']:,} parameters; weights {m['weights_mb']:.1f} MiB, AdamW state "
            f"{m['optimizer_state_mb']:.1f} MiB, activations saved for backward by one minibatch "
            f"{m['minibatch_activations_mb']:.1f} MiB (measured with autograd's saved-tensor hooks) → budget "
            f"{m['budget_mb']:.1f} MiB; peak RSS {m['peak_rss_mb']:.0f} MiB, of which "
            f"{m['peak_above_baseline_mb']:.0f} MiB above the baseline taken after imports.",
            "",
        ]
    if memory:
        rows = [[k.split(":")[0], k.split(":")[1], fmt(v["peak_rss_mb"]), fmt(v["peak_above_baseline_mb"])]
                if isinstance(v, dict) else [k.split(":")[0], k.split(":")[1], "—", str(v)]
                for k, v in memory.items()]
        parts += ["## Peak RSS of each side (run alone)", "",
                  "Baseline = RSS after importing the libraries the side uses (torch, transformers, rlhf_gym, "
                  "and TRL for TRL's side) and loading the tokenizer.", "",
                  table(["benchmark", "side", "peak RSS MiB", "above baseline MiB"], rows), ""]
    env = results.get("env")
    if isinstance(env, dict):
        parts += ["## Token-level env (`TextGen-v0`, trivial reward, random actions, no model)", "",
                  table(["env", "transitions/s (median)"],
                        [[k, fmt(v["median"])] for k, v in env["sides"].items()]), ""]
    sb3 = results.get("sb3")
    parts += ["## SB3 on `TextGen-v0` (`bench/bench_sb3.py`)", ""]
    if isinstance(sb3, dict):
        sides = {k: v for k, v in sb3.get("sides", {}).items() if isinstance(v, dict)}
        if sides:
            parts += [table(["side", "step s (median)", "tokens/s", "sampling tokens/s", "bytes per stored token"],
                            [[k, fmt(v["step_s"]["median"]), fmt(v["tokens_per_s"]), fmt(v["sampling_tokens_per_s"]),
                              fmt(v["bytes_per_transition"])] for k, v in sides.items()]), ""]
        rates = sb3.get("env_transitions_per_s", {})
        if rates:
            parts += [table(["SB3 VecEnv over TextGen-v0", "transitions/s (median)"],
                            [[k, fmt(v["median"])] for k, v in rates.items()]), ""]
    else:
        parts += [f"Not measured here: {sb3 or 'bench/bench_sb3.py is absent'}.", ""]
    parts += ray_section(results.get("ray"))
    parts += gpu_section(path)
    parts += ["## How each side is timed", "", *METHOD_NOTES, ""]
    parts += ["## Machine", "", *machine(threads, load_start, load_end), "",
              "## Commands", "", "Everything above: `make bench` (installs `.[bench]`, then runs "
              "`.venv/bin/python bench/run_all.py`). The individual runs were:", "", "```",
              *commands, "```", ""]
    path.write_text("\n".join(parts))


def gpu_section(path: Path) -> list[str]:
    """The GPU section ``bench/bench_gpu.py`` wrote on a CUDA machine, carried over unchanged (this machine may
    have no GPU to measure it again)."""
    start, end = "<!-- gpu-bench -->", "<!-- /gpu-bench -->"
    old = path.read_text() if path.is_file() else ""
    if start in old and end in old:
        return [start + old.split(start, 1)[1].split(end, 1)[0] + end, ""]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per side (≥ 5 for the reported medians)")
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 warm-up, no memory runs: to check it works")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-side peak-RSS runs")
    parser.add_argument("--only", default="", help="comma list of benchmarks to run (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS_MD, help="where to write the report")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the last run's bench/results/all.json without running anything")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS_DIR / "all.json").read_text())
        write_report(saved["results"], saved["memory"], saved["commands"], saved["threads"],
                     tuple(saved["load_start"]), tuple(saved["load_end"]), args.output, saved.get("peak_flops"))
        print(f"wrote {os.path.relpath(args.output)}")
        return
    steps = 2 if args.quick else args.steps
    only = {n for n in args.only.split(",") if n}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {[b.name for b in BENCHES]}")
    threads = common.default_threads()
    base_env = {"BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / ".gitignore").write_text("# raw figures and logs of the last run; RESULTS.md is the report\n*\n")
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    commands: list[str] = []
    print(f"running benchmarks with {threads} torch thread(s); load average {load_start[0]:.2f}", flush=True)
    peak = common.matmul_peak(threads)
    print(f"  fp32 matmul rate: {peak / 1e9:.1f} GFLOP/s", flush=True)
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        if not (BENCH_DIR / bench.script).is_file():
            results[bench.name] = f"bench/{bench.script} is absent"
            continue
        warmup = 1 if args.quick else bench.warmup
        env = {**base_env, **bench.env}
        cmd = command(bench, steps, warmup, RESULTS_DIR / f"{bench.name}.json")
        commands.append(shown(cmd, {"BENCH_THREADS": str(threads), **bench.env}))
        results[bench.name] = run(cmd, env, RESULTS_DIR / f"{bench.name}.log")
        if args.quick or args.no_memory:
            continue
        for side in bench.sides:
            out = RESULTS_DIR / f"{bench.name}-{side}.mem.json"
            cmd = command(bench, 2, 1, out, side)
            commands.append(shown(cmd, {"BENCH_THREADS": str(threads), **bench.env}))
            memory[f"{bench.name}:{side}"] = run(cmd, env, out.with_suffix(".log"))
    load_end = os.getloadavg()
    # the rate again at the end: a busy moment at the start must not understate the limit
    peak = max(peak, common.matmul_peak(threads))
    saved = {"results": results, "memory": memory, "commands": commands, "threads": threads,
             "load_start": load_start, "load_end": load_end, "peak_flops": peak}
    (RESULTS_DIR / "all.json").write_text(json.dumps(saved, indent=1) + "\n")
    write_report(results, memory, commands, threads, load_start, load_end, args.output, peak)
    print(f"wrote {os.path.relpath(args.output)}")
    failed = [k for k, v in results.items() if isinstance(v, str) and k != "sb3"]
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)} (see bench/results/*.log)")


if __name__ == "__main__":
    main()
