"""``rlhf-gym train``: train a policy with any registered algorithm and reward provider; with no arguments, the
offline demo.

The demo is the whole of RLHF in a few minutes on a laptop CPU: build the tiny kit (a small GPT-2 pre-trained on
templated movie reviews, cached), fine-tune it on demonstrations (SFT), then PPO against a simulated human whose
ground truth is VADER sentiment, with a KL penalty towards the SFT policy. It prints a before/after table of samples
and scores and the run directory. ``--beta 0`` adds a run without the KL penalty next to it, so the reward hacking
that the penalty prevents is visible: higher reward, degenerate text, a KL many times larger.

``--device``/``--dtype`` place the run (the algorithm's own fields, also used for the demo's SFT), ``--lora R``
trains a LoRA adapter instead of every weight, and ``--learners N`` runs N data-parallel learner processes on this
machine (:mod:`rlhf_gym.distributed.data_parallel`; under ``torchrun`` the launcher's group is joined instead).
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

#: ``--ray`` given without an address: start a Ray cluster on this machine
LOCAL_RAY = "local"
#: β of the penalised side of the demo's `--beta 0` comparison, for an algorithm whose config has no β default
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
    lora: int = 0
    learners: int = 1
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
    "lora": "train a LoRA adapter of this rank on the policy instead of every weight (0: full fine-tuning); the "
            "reference is then the base with the adapter switched off",
    "learners": "data-parallel learner processes on this machine (gloo on CPU, NCCL on CUDA: one GPU each); "
                "under torchrun leave it at 1",
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
    parser.add_argument("--config", help="YAML, TOML or JSON file of run options and algorithm config fields; a run's "
                                         "own config.json reproduces that run")
    parser.add_argument("--seed", type=int, help=help_text["seed"])
    parser.add_argument("--device", help="where to train: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps "
                                         "(default: cpu)")
    parser.add_argument("--dtype", help="training precision: float32, bfloat16, float16 (autocast with float32 "
                                        "master weights; default: float32)")
    parser.add_argument("--lora", type=int, metavar="R", help=help_text["lora"])
    parser.add_argument("--learners", type=int, metavar="N", help=help_text["learners"])
    parser.add_argument("--out", help=help_text["out"])
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a run from its newest intact checkpoint (step-N or last)")
    parser.add_argument("--updates", type=int, help=help_text["updates"])
    parser.add_argument("--sft-updates", dest="sft_updates", type=int, help=help_text["sft_updates"])
    parser.add_argument("--eval-samples", dest="eval_samples", type=int, help=help_text["eval_samples"])
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help=help_text["max_new_tokens"])
    parser.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int,
                        help=help_text["max_prompt_tokens"])
    parser.add_argument("--ground-truth", dest="ground_truth", help=help_text["ground_truth"])
    parser.add_argument("--beta", type=float,
                        help="KL coefficient β (its starting value when a KL budget, kl_target, steers it; 0: no "
                             "penalty); in the demo, --beta 0 adds a run without the penalty next to one with the "
                             "algorithm's default KL budget")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any algorithm config field (repeatable); `--FIELD VALUE` works too")
    parser.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                        help="sample on Ray rollout actors: join the cluster at ADDRESS ('auto', 'host:6379'), or "
                             "with no ADDRESS start one on this machine (needs the ray extra)")
    parser.add_argument("--rollout-workers", dest="rollout_workers", type=int, metavar="N",
                        help="Ray rollout actors, each sampling a shard of every batch (implies --ray; default 1 "
                             "with --ray)")
    parser.add_argument("--report-to", dest="report_to", metavar="TRACKERS",
                        help="experiment trackers, comma-separated: csv, tensorboard, wandb, mlflow, trackio (or a "
                             "plugin's); 'none'; 'all' (every installed one) (default: csv,tensorboard)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (transformers' and the Hugging Face hub's included)")
    parser.epilog = ("Algorithm config fields (any of them as --FIELD VALUE or --set FIELD=VALUE) are listed by "
                     "`rlhf-gym train --algo NAME --list-fields`.")
    parser.add_argument("--list-fields", action="store_true",
                        help="print every run option and the algorithm's config fields (type, default, help) and exit")
    parser.set_defaults(_accepts_extra=True)


def _read_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {path!r} does not exist")
    text = p.read_text()
    try:
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
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        raise ConfigError(f"config file {path!r} cannot be parsed: {' '.join(str(exc).split())}") from None
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


#: algorithm fields a run's config.json holds that belong to that run only (its directory), not to a rerun
RUN_ONLY_FIELDS = ("run_dir",)


def _from_run_config(data: dict[str, Any]) -> dict[str, Any]:
    """A run's ``config.json`` (``{"algorithm", <fields>..., "run": {<run options>}}``; ``run`` is absent for a run
    made from Python) as a flat config: the run options and every resolved algorithm field, without what belongs to
    that run only (its directory)."""
    run = dict(data.get("run") or {})
    flat = {k: v for k, v in run.items() if k not in ("algo_config", "out")}
    flat["algo"] = data.get("algorithm", run.get("algo"))
    fields = {k: v for k, v in data.items() if k not in ("algorithm", "run", *RUN_ONLY_FIELDS)}
    # Fields the run derived from its options follow the options, so `--seed`/`--ground-truth` still change them.
    for field_name, option in (("seed", "seed"), ("true_reward", "ground_truth")):
        if field_name in fields and fields[field_name] == run.get(option):
            del fields[field_name]
    flat["algo_config"] = fields
    return flat


def resolve_options(args: argparse.Namespace, extra: list[str]) -> RunOptions:
    """Merge defaults < config file < command line into :class:`RunOptions`."""
    opts = RunOptions()
    data: dict[str, Any] = _read_config_file(args.config) if getattr(args, "config", None) else {}
    if "algorithm" in data and isinstance(data.get("run", {}), dict):  # a run directory's own config.json
        data = _from_run_config(data)
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
    for key in ("device", "dtype"):
        if getattr(args, key, None) is not None:
            algo_config[key] = getattr(args, key)
    if not isinstance(opts.lora, int) or opts.lora < 0:
        raise ConfigError(f"--lora takes the adapter rank, an integer ≥ 0 (0: no adapter); got {opts.lora!r}")
    if not isinstance(opts.learners, int) or opts.learners < 1:
        raise ConfigError(f"--learners takes a number of processes ≥ 1, got {opts.learners!r}")
    _ray_options(args, algo_config)
    if getattr(args, "report_to", None) is not None:
        algo_config["report_to"] = args.report_to
    if isinstance(opts.ground_truth, str) and opts.ground_truth.lower() in ("none", ""):
        opts.ground_truth = None
    opts.algo_config = algo_config
    validate_options(opts)
    return opts


#: run options that are counts, with the smallest value each accepts
_COUNT_OPTIONS = {"updates": 1, "sft_updates": 0, "eval_samples": 1, "max_new_tokens": 1, "max_prompt_tokens": 1,
                  "seed": 0}


def validate_options(opts: RunOptions) -> None:
    """Reject run options no run can use, before any work starts, naming the option as the command line spells it."""
    for key, low in _COUNT_OPTIONS.items():
        value = getattr(opts, key)
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{flag} must be a whole number ≥ {low}, got {value!r}")
        if value < low:
            raise ConfigError(f"{flag} must be ≥ {low}, got {value}" + (
                "; runs stop on update counts, so give the number of RL updates to make" if key == "updates" else
                "; the before/after evaluation needs samples (≥ 128 keeps its noise low)" if key == "eval_samples"
                else ""))
    for key in ("algo", "reward"):
        if not isinstance(getattr(opts, key), str) or not getattr(opts, key):
            raise ConfigError(f"--{key} must be a name (see `rlhf-gym plugins`), got {getattr(opts, key)!r}")
    if not isinstance(opts.reward_kwargs, dict):
        raise ConfigError(f"--reward-kwargs must be a JSON object of keyword arguments, got {opts.reward_kwargs!r}")
    from rlhf_gym.plugins import get_entry

    for name in (opts.reward, opts.ground_truth):  # unknown names fail now, not after the SFT warm-up
        if name is not None:
            get_entry("reward", name)


def _ray_options(args: argparse.Namespace, algo_config: dict[str, Any]) -> None:
    """``--ray [ADDRESS]`` / ``--rollout-workers N`` as the algorithm's Ray fields; Ray must be importable."""
    address, workers = getattr(args, "ray", None), getattr(args, "rollout_workers", None)
    if address is None and workers is None:
        return
    from rlhf_gym.distributed.ray_runtime import require_ray

    require_ray()
    if workers is not None and workers < 1:
        raise ConfigError(f"--rollout-workers must be ≥ 1, got {workers}")
    if workers is not None:
        algo_config["rollout_workers"] = workers
    if address is not None:
        algo_config["ray_address"] = None if address == LOCAL_RAY else address


def _connect_ray(algo_config: dict[str, Any]) -> None:
    """Join the run's Ray cluster before anything (a reward placed on its own actor) needs it."""
    if int(algo_config.get("rollout_workers") or 0) > 0:
        from rlhf_gym.distributed.ray_runtime import connect

        connect(algo_config.get("ray_address"))


# -- the run ------------------------------------------------------------------------------------------------------
def _progress(enabled: bool) -> bool:
    return enabled and not os.environ.get("RLHF_GYM_NO_PROGRESS")


def prepare_policy(opts: RunOptions, run_dir: Path, progress: bool):
    """The policy to train, and the prompts: the tiny kit after SFT (demo), or the given model.

    Without ``--prompts``, an offline dataset's own prompts (e.g. offline DPO's preference file) are used, then the
    tiny kit's review openers (demo)."""
    from rlhf_gym.plugins import algorithm_class, make_algorithm
    from rlhf_gym.policy import Policy

    needs_value_head = bool(getattr(algorithm_class(opts.algo), "needs_value_head", False))
    place = {k: opts.algo_config[k] for k in ("device", "dtype") if k in opts.algo_config}
    lora = {"r": opts.lora, "lora_alpha": 2 * opts.lora} if opts.lora else None
    prompts = opts.prompts or dataset_prompts(opts.algo_config.get("dataset"))
    if opts.model:
        policy = Policy.from_pretrained(opts.model, value_head=needs_value_head, lora=lora)
        return policy.place(**place), prompts
    import time

    from rlhf_gym import tiny

    started = time.perf_counter()
    kit = tiny.build_tiny_kit(seed=0, progress=progress)
    if kit.built:
        print(f"Built the tiny kit in {time.perf_counter() - started:.0f} s (cached in {kit.path} for next time)",
              flush=True)
    policy = Policy.from_pretrained(kit.path, value_head=needs_value_head)
    if opts.sft_updates > 0:
        _say(f"SFT: {opts.sft_updates} updates on demonstrations...")
        sft = make_algorithm("sft", policy=policy, dataset=tiny.demonstrations(4000, seed=opts.seed + 1),
                             seed=opts.seed, learning_rate=3e-4, batch_size=32, max_prompt_tokens=opts.max_prompt_tokens,
                             max_completion_tokens=opts.max_new_tokens, report_to="none", **place)
        sft.learn(opts.sft_updates, progress_bar=progress)
        if _writer():
            policy.save_pretrained(run_dir / "sft")
    if lora:  # the adapter goes on the fine-tuned (SFT) weights, which stay the reference
        policy.add_lora(lora)
    return policy.place(**place), prompts or tiny.review_prompts()


def _writer() -> bool:
    from rlhf_gym.distributed import data_parallel as dp

    return dp.is_writer()


def _say(text: str) -> None:
    """Print progress once, from the learner that writes (every process of a one-process run)."""
    if _writer():
        print(text, flush=True)


def check_env_id(env_id: str) -> None:
    """Fail early, naming the close matches, when ``--env`` is not a registered Gymnasium id."""
    import gymnasium as gym

    import rlhf_gym  # noqa: F401  (registers the env ids, the plugins' included)
    from rlhf_gym.errors import unknown_name_message

    if env_id not in gym.registry:
        namespaced = [i for i in gym.registry if "/" in i]  # rlhf_gym's and the plugins' (Gymnasium's are bare)
        raise ConfigError(unknown_name_message("environment id", env_id, namespaced,
                                               "`rlhf-gym plugins --kind environment` lists the plugins' ids."))


def dataset_prompts(dataset: Any) -> list[str] | None:
    """The distinct prompts of an offline dataset given as a file or store path (in their first order), or None."""
    if not isinstance(dataset, (str, os.PathLike)):
        return None
    from rlhf_gym.data import load_records

    records = load_records(dataset, ("prompt",), what="dataset")
    prompts = list(dict.fromkeys(r["prompt"] for r in records if isinstance(r.get("prompt"), str)))
    return prompts or None


def make_reward_provider(opts: RunOptions) -> Any:
    """The reward provider the run trains on, built here so that bad arguments fail with the provider's own error
    (not wrapped by the environment's constructor), before any work."""
    from rlhf_gym.plugins import make_reward

    return make_reward(opts.reward, **(opts.reward_kwargs or {}))


def make_env(opts: RunOptions, policy: Any, prompts: Any, reward: Any = None):
    import gymnasium as gym

    import rlhf_gym  # noqa: F401  (registers the env ids)

    if opts.env:
        # A registered task brings its own prompts/scenarios and rewards; the run supplies the policy's side.
        check_env_id(opts.env)
        return gym.make(opts.env, tokenizer=policy.tokenizer, vocab_size=policy.vocab_size,
                        max_new_tokens=opts.max_new_tokens)
    if prompts is None:
        raise ConfigError("pass --prompts FILE (.txt or .jsonl) when training a model of your own (offline DPO reads "
                          "them from its --dataset file)")
    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=prompts,
                    reward=reward if reward is not None else make_reward_provider(opts),
                    max_prompt_tokens=opts.max_prompt_tokens, max_new_tokens=opts.max_new_tokens,
                    vocab_size=policy.vocab_size)


def kl_setting(config: Any) -> str:
    """How a run holds its KL, in words: ``β from 0.05, KL budget 2 nats``, ``β=0.05 fixed``, ``β=0: no KL penalty``
    or ``no β``."""
    beta = getattr(config, "beta", None)
    if beta is None:
        return "no β"
    target = getattr(config, "kl_target", None)
    if not beta:
        return "β=0: no KL penalty"
    return f"β={beta:g} fixed" if target is None else f"β from {beta:g}, KL budget {target:g} nats"


def train_once(opts: RunOptions, run_dir: Path, policy: Any, env: Any, progress: bool, beta: float | None = None,
               label: str = "") -> dict[str, Any]:
    """One RL run from ``policy`` (left untouched: a copy is trained); returns before/after evaluations. ``beta``
    given overrides the config's."""
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
    _say(f"RL{label}: {opts.algo} for {opts.updates} updates ({kl_setting(algo.config)}) → {run_dir}")
    algo.learn(opts.updates, progress_bar=progress)
    # Fresh samples, scored by the ground truth, and their KL to the starting (SFT) policy.
    after = None
    if _writer():
        after = evaluate(trained, env, num_samples=opts.eval_samples, reward=opts.ground_truth,
                         seed=opts.seed + 999, reference=policy)
    rows = list(algo.logger.rows) if getattr(algo, "logger", None) is not None else []
    algo.close()
    return {"algo": algo, "after": after, "kl": after["kl"] if after else None, "run_dir": run_dir,
            "policy": trained, "overoptimisation": _overoptimisation(rows)}


def _overoptimisation(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's gold-vs-proxy verdict (:func:`rlhf_gym.overoptimisation.assess`), ``None`` without a logged
    ground truth."""
    from rlhf_gym.overoptimisation import assess

    verdict = assess(rows)
    return verdict if verdict["points"] else None


def _options_dict(opts: RunOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(opts)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_report(before: dict[str, Any], runs: list[tuple[str, dict[str, Any]]], opts: RunOptions) -> None:
    """Before/after table: ground-truth score, the trained reward, KL, and a few samples for each run."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, min(160, os.get_terminal_size(0).columns if sys.stdout.isatty() else 160)))
    what = opts.ground_truth or opts.reward
    start = start_label(opts)
    table = Table(title=f"Mean scores of {opts.eval_samples} fresh samples", show_lines=False)
    table.add_column("policy")
    table.add_column(f"{what}" + (" (ground truth)" if opts.ground_truth else ""), justify="right")
    trained = "trained_reward" in before
    if trained:
        table.add_column(f"{opts.reward} (trained reward)", justify="right")
    table.add_column(f"KL to {'SFT' if start == 'SFT' else 'start'} (k1, nats/seq)", justify="right")
    table.add_column("mean length", justify="right")

    def row(name: str, result: dict[str, Any], kl: str) -> list[str]:
        cells = [name, f"{result['mean']:.3f}"]
        if trained:
            cells.append(f"{result['trained_reward']:.3f}" if result.get("trained_reward") is not None else "–")
        return cells + [kl, f"{result['mean_length']:.1f}"]

    table.add_row(*row(f"before ({start})", before, "0"))
    for name, res in runs:
        table.add_row(*row(name, res["after"], f"{res['kl']:.2f}"))
    console.print(table)
    samples = Table(title="Samples (same prompts)", show_lines=True)
    samples.add_column("prompt")
    samples.add_column(f"before ({start})")
    for name, _ in runs:
        samples.add_column(name)
    for i in range(min(4, len(before["samples"]))):
        row_cells = [_short(before["samples"][i]["prompt"], 24),
                     f"{_short(before['samples'][i]['completion'])}  [{before['samples'][i]['score']:.2f}]"]
        for _, res in runs:
            s = res["after"]["samples"][i]
            row_cells.append(f"{_short(s['completion'])}  [{s['score']:.2f}]")
        samples.add_row(*row_cells)
    console.print(samples)
    if any(res["kl"] < 0 for _, res in runs):
        console.print("KL is the k1 estimate (mean of Σ log π − log π_start over the samples): unbiased, but a "
                      "sample mean can fall below 0 when the policies barely differ.")
    for name, res in runs:
        verdict = res.get("overoptimisation")
        if verdict and verdict["overoptimised"]:
            console.print(f"[bold yellow]warning[/bold yellow] {name}: reward over-optimisation — {verdict['reason']}; "
                          f"see gold_vs_proxy.png (a larger beta, a pessimistic reward or fewer updates help)")
        console.print(f"[bold]{name}[/bold] run directory: {res['run_dir']}")


def start_label(opts: RunOptions) -> str:
    """What the starting policy is: "SFT" when the demo fine-tuned it, else the model it was loaded from."""
    if opts.model:
        return "start"
    return "SFT" if opts.sft_updates > 0 else "tiny kit, no SFT"


def add_trained_reward(result: dict[str, Any], opts: RunOptions) -> None:
    """Score ``result``'s samples with the reward the policy is trained on too (when it is not the ground truth and
    asking it costs no person's time), as ``result["trained_reward"]``."""
    if not opts.ground_truth or opts.ground_truth == opts.reward:
        return
    from rlhf_gym.plugins import get_entry, make_reward
    from rlhf_gym.providers import checked_scores

    if not getattr(get_entry("reward", opts.reward).obj, "deterministic", True):  # a person would be asked
        return
    provider = make_reward(opts.reward, **(opts.reward_kwargs or {}))
    samples = result["samples"]
    scores = checked_scores(provider, provider.score([s["prompt"] for s in samples],
                                                     [s["completion"] for s in samples]), len(samples))
    given = [float(v) for v in scores if v is not None]
    result["trained_reward"] = sum(given) / len(given) if given else None


def run(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    from rlhf_gym.plugins import algorithm_class
    from rlhf_gym.rollout import evaluate
    from rlhf_gym.run_logger import default_run_dir, silence_progress_bars

    opts = resolve_options(args, extra or [])
    if args.list_fields:
        print(list_fields(opts.algo))
        return 0
    progress = _progress(not args.no_progress)
    if opts.learners > 1 and "RANK" not in os.environ:  # spawned learners get RANK from their launch
        from rlhf_gym.distributed.launch import spawn_learners

        return spawn_learners(args, extra or [], opts)
    from rlhf_gym.distributed.launch import join_launcher_group

    join_launcher_group(opts)
    if not progress:
        silence_progress_bars()
    if args.resume:
        from rlhf_gym.resume import resume

        return resume(args.resume, opts, progress, args)
    algo_cls = algorithm_class(opts.algo)  # unknown names fail here, before any work
    if opts.env:
        check_env_id(opts.env)  # so does an unknown --env
    if getattr(args, "ray", None) is not None:
        opts.algo_config.setdefault("rollout_workers", 1)
    check_fields(opts.algo, algo_cls, opts.algo_config)
    _connect_ray(opts.algo_config)  # before the reward: a provider placed on its own actor needs the cluster
    reward = make_reward_provider(opts)
    run_dir = Path(opts.out) if opts.out else default_run_dir(opts.algo)
    from rlhf_gym.resume import check_writable

    check_writable(run_dir)
    sides = (run_dir / "kl-budget", *run_dir.glob("beta-*"))  # the two runs of `--beta 0`
    earlier = [c for c in (run_dir / "checkpoints", *(side / "checkpoints" for side in sides))
               if c.is_dir() and any(not p.name.startswith(".") for p in c.iterdir())]  # (not an interrupted save's)
    if earlier:  # a new run's checkpoints mixed with an earlier run's would make --resume pick the wrong one
        raise ConfigError(f"{run_dir} already holds checkpoints of an earlier run ({earlier[0]}); continue that run "
                          f"with `rlhf-gym train --resume {run_dir}`, or pass another --out")
    policy, prompts = prepare_policy(opts, run_dir, progress)
    env = make_env(opts, policy, prompts, reward)
    before = None
    if _writer():
        before = evaluate(policy, env, num_samples=opts.eval_samples, reward=opts.ground_truth, seed=opts.seed + 999)
        add_trained_reward(before, opts)
        _say(f"Before RL: mean {opts.ground_truth or opts.reward} score {before['mean']:.3f}")
    demo = opts.model is None
    runs: list[tuple[str, dict[str, Any]]] = []
    # `--beta 0` on the command line asks for the side-by-side demo; β = 0 from a config file is one plain run.
    compare_beta = demo and getattr(args, "beta", None) == 0.0
    if compare_beta:  # the algorithm's own β and KL budget beside β = 0
        import dataclasses

        default_beta = {f.name: f.default for f in dataclasses.fields(algo_cls.Config)}.get("beta", DEMO_BETA)
        for beta, side, name in ((default_beta, "kl-budget", f"{opts.algo} KL budget"),
                                 (0.0, "beta-0", f"{opts.algo} β=0 (no KL penalty)")):
            runs.append((name, train_once(opts, run_dir / side, policy, env, progress, beta=beta, label=f" [{name}]")))
    else:
        runs.append((f"after {opts.algo}", train_once(opts, run_dir, policy, env, progress)))
    if not _writer():
        env.close()
        return 0
    for _, res in runs:
        add_trained_reward(res["after"], opts)
        res["policy"].save_pretrained(res["run_dir"] / "policy")
        summary = {"before": _eval_summary(before), "after": _eval_summary(res["after"]), "kl": res["kl"],
                   "kl_estimator": "k1", "start": start_label(opts)}
        if res.get("overoptimisation") is not None:
            summary["overoptimisation"] = res["overoptimisation"]
        (res["run_dir"] / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_report(before, runs, opts)
    env.close()
    return 0


def list_fields(algo: str) -> str:
    """Every run option and every field of ``algo``'s config: flag, type, default and help, one per line."""
    import dataclasses
    import typing

    from rlhf_gym.plugins import algorithm_class

    def lines(rows: list[tuple[str, str, str, str]]) -> list[str]:
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        return [f"  {r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}".rstrip() for r in rows]

    def type_name(annotation: Any) -> str:
        return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")

    def default(f: dataclasses.Field) -> str:
        if f.default is not dataclasses.MISSING:
            return repr(f.default)
        return repr(f.default_factory()) if f.default_factory is not dataclasses.MISSING else "(required)"

    run_hints = typing.get_type_hints(RunOptions)
    run_rows = [(f"--{f.name.replace('_', '-')}", type_name(run_hints[f.name]), default(f), RUN_OPTION_HELP[f.name])
                for f in dataclasses.fields(RunOptions) if f.name in RUN_OPTION_HELP]
    config = algorithm_class(algo).Config
    hints = typing.get_type_hints(config)
    algo_rows = [(f"--{f.name.replace('_', '-')}", type_name(hints.get(f.name, f.type)), default(f),
                  f.metadata.get("help", "")) for f in dataclasses.fields(config)]
    header = ("option", "type", "default", "help")
    return "\n".join([
        "Run options (rlhf-gym train, or keys of a --config file):", *lines([header, *run_rows]), "",
        f"Fields of algorithm {algo!r} (--FIELD VALUE, --set FIELD=VALUE, or keys of a --config file):",
        *lines([header, *algo_rows]),
    ])


def check_fields(algo: str, algo_cls: Any, fields: dict[str, Any]) -> None:
    """Build ``algo``'s config from ``fields``; a key that is neither an algorithm field nor a run option fails with
    the closest name among both (``--updatse`` → "did you mean --updates?")."""
    import dataclasses
    import difflib

    from rlhf_gym.config import build_config

    known = {f.name for f in dataclasses.fields(algo_cls.Config)}
    unknown = [k for k in fields if k not in known]
    if unknown:
        candidates = sorted(known | set(RUN_OPTION_HELP) | {"report_to", "beta", "config", "set", "resume"})
        key = unknown[0]
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        hint = f" Did you mean --{close[0].replace('_', '-')}?" if close else ""
        raise ConfigError(
            f"unknown option --{key.replace('_', '-')} for `rlhf-gym train --algo {algo}` (or key {key!r} of a "
            f"--config file).{hint} `rlhf-gym train --algo {algo} --list-fields` lists every run option and "
            f"algorithm field.")
    config = build_config(algo_cls.Config, fields, owner=f"algorithm {algo!r}")
    if hasattr(config, "report_to"):  # an unknown tracker or a missing package fails before any work
        from rlhf_gym.trackers import check_report_to

        check_report_to(config.report_to)


def _eval_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"mean": result["mean"], "std": result["std"], "mean_length": result["mean_length"],
            "samples": result["samples"][:8]}
