"""``rlhf-gym train``: train a policy with any registered algorithm and reward provider; with no arguments, the
offline demo.

The demo is the whole of RLHF in a few minutes on a laptop CPU: build the tiny kit (a small GPT-2 pre-trained on
templated movie reviews, cached), fine-tune it on demonstrations (SFT), then PPO against a simulated human whose
ground truth is VADER sentiment, with a KL penalty towards the SFT policy. It prints a before/after table of samples
and scores and the run directory. ``--beta 0`` adds a run without the KL penalty next to it, so the reward hacking
that the penalty prevents is visible: higher reward, degenerate text, a KL many times larger.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_gym.config import parse_json_object
from rlhf_gym.errors import ConfigError

DEMO_BETA = 0.05


@dataclass
class RunOptions:
    """What ``rlhf-gym train`` needs beyond the algorithm's own config."""

    algo: str = "ppo"
    env: str | None = None
    reward: str = "simulated-human"
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    prompts: str | None = None
    updates: int = 120
    sft_updates: int = 30
    eval_samples: int = 128
    max_new_tokens: int = 24
    max_prompt_tokens: int = 16
    ground_truth: str | None = "sentiment"
    seed: int = 0
    out: str | None = None
    algo_config: dict[str, Any] = field(default_factory=dict)


RUN_OPTION_HELP = {
    "algo": "algorithm name (see `rlhf-gym plugins`)",
    "env": "train on this registered environment id (a plugin's task, see `rlhf-gym plugins --kind environment`); "
           "the task brings its prompts and reward, --prompts/--reward are then not used",
    "reward": "reward provider name (see `rlhf-gym plugins`)",
    "reward_kwargs": "JSON object of keyword arguments for the reward provider",
    "model": "policy to train: hub id or local directory (default: the tiny kit, after SFT)",
    "prompts": "prompts: .txt (one per line) or .jsonl (field 'prompt') file (default: the tiny kit's review openers)",
    "updates": "number of RL updates (runs stop on update counts, so they are reproducible)",
    "sft_updates": "SFT updates on the tiny kit's demonstrations before RL (demo only; 0 to skip)",
    "eval_samples": "fresh samples scored before and after training (≥128 keeps the mean's noise near ±0.04)",
    "max_new_tokens": "tokens generated per completion",
    "max_prompt_tokens": "prompts are left-truncated to this many tokens",
    "ground_truth": "provider name of the ground truth reported next to the reward ('none' to skip)",
    "seed": "seed of everything",
    "out": "run directory (default: runs/<algo>-<date>)",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = RunOptions()
    help_text = {key: text if getattr(defaults, key) in (None, {}, "") else f"{text} (default: {getattr(defaults, key)})"
                 for key, text in RUN_OPTION_HELP.items()}
    parser.add_argument("--algo", help=help_text["algo"])
    parser.add_argument("--env", help=help_text["env"])
    parser.add_argument("--reward", help=help_text["reward"])
    parser.add_argument("--reward-kwargs", dest="reward_kwargs", help=help_text["reward_kwargs"])
    parser.add_argument("--model", help=help_text["model"])
    parser.add_argument("--prompts", help=help_text["prompts"])
    parser.add_argument("--config", help="YAML or TOML file of run options and algorithm config fields")
    parser.add_argument("--seed", type=int, help=help_text["seed"])
    parser.add_argument("--out", help=help_text["out"])
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument("--updates", type=int, help=help_text["updates"])
    parser.add_argument("--sft-updates", dest="sft_updates", type=int, help=help_text["sft_updates"])
    parser.add_argument("--eval-samples", dest="eval_samples", type=int, help=help_text["eval_samples"])
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help=help_text["max_new_tokens"])
    parser.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int,
                        help=help_text["max_prompt_tokens"])
    parser.add_argument("--ground-truth", dest="ground_truth", help=help_text["ground_truth"])
    parser.add_argument("--beta", type=float,
                        help=f"KL coefficient β; in the demo, --beta 0 adds a run without the penalty next to the "
                             f"β={DEMO_BETA} one")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any algorithm config field (repeatable); `--FIELD VALUE` works too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.epilog = ("Algorithm config fields (any of them as --FIELD VALUE or --set FIELD=VALUE) are listed by "
                     "`rlhf-gym train --algo NAME --list-fields`.")
    parser.add_argument("--list-fields", action="store_true", help="print the algorithm's config fields and exit")
    parser.set_defaults(_accepts_extra=True)


def _read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {path!r} does not exist")
    text = p.read_text()
    if p.suffix.lower() == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif p.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"config file {path!r}: use .yaml, .yml, .toml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option: value")
    return data


def _parse_extra(extra: list[str]) -> dict[str, str]:
    """``--field value`` / ``--field=value`` pairs left over by argparse."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; algorithm fields are given as --FIELD VALUE")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value = extra[i + 1]
            i += 1
        else:
            value = "true"
        out[key.replace("-", "_")] = value
        i += 1
    return out


def resolve_options(args: argparse.Namespace, extra: list[str]) -> RunOptions:
    """Merge defaults < config file < command line into :class:`RunOptions`."""
    opts = RunOptions()
    data: dict[str, Any] = _read_config_file(args.config) if getattr(args, "config", None) else {}
    cli = {k: getattr(args, k) for k in RUN_OPTION_HELP if getattr(args, k, None) is not None}
    algo_config: dict[str, Any] = {}
    for source in (data, cli):
        for key, value in source.items():
            key = key.replace("-", "_")
            if key == "reward_kwargs" and isinstance(value, str):
                value = parse_json_object(value, "--reward-kwargs")
            if key in ("config", "algo_config"):
                algo_config.update(value if isinstance(value, dict) else {})
            elif hasattr(opts, key):
                setattr(opts, key, value)
            else:
                algo_config[key] = value
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        algo_config[key.strip().replace("-", "_")] = value
    algo_config.update(_parse_extra(extra))
    if getattr(args, "beta", None) is not None:
        algo_config["beta"] = args.beta
    if isinstance(opts.ground_truth, str) and opts.ground_truth.lower() in ("none", ""):
        opts.ground_truth = None
    opts.algo_config = algo_config
    return opts


# -- the run ------------------------------------------------------------------------------------------------------
def _progress(enabled: bool) -> bool:
    return enabled and not os.environ.get("RLHF_GYM_NO_PROGRESS")


def prepare_policy(opts: RunOptions, run_dir: Path, progress: bool):
    """The policy to train, and the prompts: the tiny kit after SFT (demo), or the given model."""
    from rlhf_gym.plugins import algorithm_class, make_algorithm
    from rlhf_gym.policy import Policy

    needs_value_head = bool(getattr(algorithm_class(opts.algo), "needs_value_head", False))
    if opts.model:
        policy = Policy.from_pretrained(opts.model, value_head=needs_value_head)
        return policy, opts.prompts
    from rlhf_gym import tiny

    print("Building the tiny kit (cached after the first run)...", flush=True)
    kit = tiny.build_tiny_kit(seed=0, progress=progress)
    policy = Policy.from_pretrained(kit.path, value_head=needs_value_head)
    if opts.sft_updates > 0:
        print(f"SFT: {opts.sft_updates} updates on demonstrations...", flush=True)
        sft = make_algorithm("sft", policy=policy, dataset=tiny.demonstrations(4000, seed=opts.seed + 1),
                             seed=opts.seed, learning_rate=3e-4, batch_size=32, max_prompt_tokens=opts.max_prompt_tokens,
                             max_completion_tokens=opts.max_new_tokens)
        sft.learn(opts.sft_updates, progress_bar=progress)
        policy.save_pretrained(run_dir / "sft")
    prompts = opts.prompts or tiny.review_prompts()
    return policy, prompts


def check_env_id(env_id: str) -> None:
    """Fail early, naming the close matches, when ``--env`` is not a registered Gymnasium id."""
    import gymnasium as gym

    import rlhf_gym  # noqa: F401  (registers the env ids, the plugins' included)
    from rlhf_gym.errors import unknown_name_message

    if env_id not in gym.registry:
        namespaced = [i for i in gym.registry if "/" in i]  # rlhf_gym's and the plugins' (Gymnasium's are bare)
        raise ConfigError(unknown_name_message("environment id", env_id, namespaced,
                                               "`rlhf-gym plugins --kind environment` lists the plugins' ids."))


def make_env(opts: RunOptions, policy: Any, prompts: Any):
    import gymnasium as gym

    import rlhf_gym  # noqa: F401  (registers the env ids)

    if opts.env:
        # A registered task brings its own prompts/scenarios and rewards; the run supplies the policy's side.
        check_env_id(opts.env)
        return gym.make(opts.env, tokenizer=policy.tokenizer, vocab_size=policy.vocab_size,
                        max_new_tokens=opts.max_new_tokens)
    if prompts is None:
        raise ConfigError("pass --prompts FILE (.txt or .jsonl) when training a model of your own")
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=prompts, reward=opts.reward,
                    reward_kwargs=opts.reward_kwargs or None, max_prompt_tokens=opts.max_prompt_tokens,
                    max_new_tokens=opts.max_new_tokens, vocab_size=policy.vocab_size)


def train_once(opts: RunOptions, run_dir: Path, policy: Any, env: Any, progress: bool, beta: float | None = None,
               label: str = "") -> dict[str, Any]:
    """One RL run from ``policy`` (left untouched: a copy is trained); returns before/after evaluations."""
    import copy

    from rlhf_gym.plugins import make_algorithm
    from rlhf_gym.rollout import evaluate

    config = dict(opts.algo_config)
    if beta is not None:
        config["beta"] = beta
    config.setdefault("seed", opts.seed)
    config.setdefault("run_dir", str(run_dir))
    if opts.ground_truth:
        config.setdefault("true_reward", opts.ground_truth)
    trained = copy.deepcopy(policy)
    algo = make_algorithm(opts.algo, env=env, policy=trained, **config)
    algo.run_info = {"run": _options_dict(opts)}
    print(f"RL{label}: {opts.algo} for {opts.updates} updates (β={getattr(algo.config, 'beta', 'n/a')}) "
          f"→ {run_dir}", flush=True)
    algo.learn(opts.updates, progress_bar=progress)
    # Fresh samples, scored by the ground truth, and their KL to the starting (SFT) policy.
    after = evaluate(trained, env, num_samples=opts.eval_samples, reward=opts.ground_truth, seed=opts.seed + 999,
                     reference=policy)
    algo.close()
    return {"algo": algo, "after": after, "kl": after["kl"], "run_dir": run_dir, "policy": trained}


def _options_dict(opts: RunOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(opts)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_report(before: dict[str, Any], runs: list[tuple[str, dict[str, Any]]], opts: RunOptions) -> None:
    """Before/after table: ground-truth score, KL, and a few samples for each run."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, min(160, os.get_terminal_size(0).columns if sys.stdout.isatty() else 120)))
    what = opts.ground_truth or opts.reward
    table = Table(title=f"Mean {what} score of {opts.eval_samples} fresh samples", show_lines=False)
    table.add_column("policy")
    table.add_column(f"{what}", justify="right")
    table.add_column("KL to SFT (nats/seq)", justify="right")
    table.add_column("mean length", justify="right")
    table.add_row("before (SFT)", f"{before['mean']:.3f}", "0", f"{before['mean_length']:.1f}")
    for name, res in runs:
        table.add_row(name, f"{res['after']['mean']:.3f}", f"{res['kl']:.2f}", f"{res['after']['mean_length']:.1f}")
    console.print(table)
    samples = Table(title="Samples (same prompts)", show_lines=True)
    samples.add_column("prompt")
    samples.add_column("before (SFT)")
    for name, _ in runs:
        samples.add_column(name)
    for i in range(min(4, len(before["samples"]))):
        row = [_short(before["samples"][i]["prompt"], 24),
               f"{_short(before['samples'][i]['completion'])}  [{before['samples'][i]['score']:.2f}]"]
        for _, res in runs:
            s = res["after"]["samples"][i]
            row.append(f"{_short(s['completion'])}  [{s['score']:.2f}]")
        samples.add_row(*row)
    console.print(samples)
    for name, res in runs:
        console.print(f"[bold]{name}[/bold] run directory: {res['run_dir']}")


def run(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    from rlhf_gym.plugins import algorithm_class
    from rlhf_gym.rollout import evaluate
    from rlhf_gym.run_logger import default_run_dir

    opts = resolve_options(args, extra or [])
    if args.list_fields:
        from rlhf_gym.config import field_help

        for name, text in field_help(algorithm_class(opts.algo).Config).items():
            print(f"--{name:<24} {text}")
        return 0
    progress = _progress(not args.no_progress)
    if args.resume:
        return resume(args.resume, opts, progress)
    algo_cls = algorithm_class(opts.algo)  # unknown names fail here, before any work
    if opts.env:
        check_env_id(opts.env)  # so does an unknown --env
    from rlhf_gym.config import build_config

    build_config(algo_cls.Config, opts.algo_config, owner=f"algorithm {opts.algo!r}")
    run_dir = Path(opts.out) if opts.out else default_run_dir(opts.algo)
    run_dir.mkdir(parents=True, exist_ok=True)
    policy, prompts = prepare_policy(opts, run_dir, progress)
    env = make_env(opts, policy, prompts)
    before = evaluate(policy, env, num_samples=opts.eval_samples, reward=opts.ground_truth, seed=opts.seed + 999)
    print(f"Before RL: mean {opts.ground_truth or opts.reward} score {before['mean']:.3f}", flush=True)
    demo = opts.model is None
    runs: list[tuple[str, dict[str, Any]]] = []
    compare_beta = demo and "beta" in opts.algo_config and float(opts.algo_config["beta"]) == 0.0
    if compare_beta:
        for beta, name in ((DEMO_BETA, f"{opts.algo} β={DEMO_BETA}"), (0.0, f"{opts.algo} β=0 (no KL penalty)")):
            sub = run_dir / f"beta-{beta:g}"
            runs.append((name, train_once(opts, sub, policy, env, progress, beta=beta, label=f" [{name}]")))
    else:
        runs.append((f"after {opts.algo}", train_once(opts, run_dir, policy, env, progress)))
    for _, res in runs:
        res["policy"].save_pretrained(res["run_dir"] / "policy")
        summary = {"before": _eval_summary(before), "after": _eval_summary(res["after"]), "kl": res["kl"]}
        (res["run_dir"] / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_report(before, runs, opts)
    env.close()
    return 0


def _eval_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"mean": result["mean"], "std": result["std"], "mean_length": result["mean_length"],
            "samples": result["samples"][:8]}


def resume(run_dir: str, opts: RunOptions, progress: bool) -> int:
    """Continue ``run_dir`` from ``checkpoints/last`` up to ``--updates`` updates in total."""
    from rlhf_gym.plugins import algorithm_class
    from rlhf_gym.policy import Policy

    path = Path(run_dir)
    ckpt = path / "checkpoints" / "last"
    config_file = path / "config.json"
    if not ckpt.is_dir() or not config_file.exists():
        raise ConfigError(f"{run_dir} has no checkpoints/last to resume from; pass the run directory of an earlier "
                          f"`rlhf-gym train`")
    saved = json.loads(config_file.read_text())
    run_opts = RunOptions(**{k: v for k, v in saved.get("run", {}).items() if hasattr(RunOptions, k)})
    run_opts.updates = opts.updates if opts.updates != RunOptions.updates else run_opts.updates
    algo_cls = algorithm_class(saved["algorithm"])
    policy = Policy.from_pretrained(str(ckpt / "policy"), value_head=algo_cls.needs_value_head)
    prompts = run_opts.prompts
    if prompts is None and run_opts.model is None:
        from rlhf_gym import tiny

        prompts = tiny.review_prompts()
    env = make_env(run_opts, policy, prompts)
    algo = algo_cls.load(ckpt, env=env, policy=policy, run_dir=str(path))
    algo.run_info = {"run": _options_dict(run_opts)}
    print(f"Resuming {saved['algorithm']} at update {algo.num_updates} → {run_opts.updates}", flush=True)
    algo.learn(run_opts.updates, progress_bar=progress)
    algo.close()
    print(f"run directory: {path}")
    return 0
