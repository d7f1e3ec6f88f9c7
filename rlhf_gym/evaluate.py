"""``rlhf-gym eval``: score saved policies on a prompt set with any reward provider, and compare two of them.

Training curves report the reward the policy was trained on; this module answers the questions asked after a run:
how good is each saved policy by some provider (often a ground truth the policy never saw), and how often does one
policy's completion beat another's for the same prompt when a judge compares them side by side.

Every policy is sampled with the same seed, so all of them see the same prompts in the same order (common random
numbers), which makes differences between policies less noisy than independent evaluations would be.

Example:
    >>> from rlhf_gym.evaluate import win_rate
    >>> judge = lambda prompts, completions, **kw: [float("great" in c) for c in completions]
    >>> result = win_rate(["p", "p"], ["great", "fine"], ["fine", "fine"], judge)
    >>> result["wins"], result["ties"], result["losses"]  # "fine" against "fine" is a tie
    (1, 1, 0)
    >>> round(result["win_rate"], 3)  # mean of P(a > b): sigmoid(1 - 0) and 0.5
    0.616
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_gym.config import parse_json_object
from rlhf_gym.errors import ConfigError

DEFAULT_REWARD = "sentiment"
DEFAULT_SAMPLES = 128
DEFAULT_MAX_NEW_TOKENS = 24
DEFAULT_MAX_PROMPT_TOKENS = 16
DEFAULT_SEED = 12345
#: ``--policy tiny`` stands for the tiny kit's pre-trained policy (built and cached on first use)
TINY_POLICY = "tiny"


# -- loading -------------------------------------------------------------------------------------------------------
def resolve_policy_path(spec: str) -> str:
    """The model directory behind a ``--policy`` value.

    Accepts a model directory (a model's ``config.json`` inside), a run directory of ``rlhf-gym train`` (its
    ``policy/``; a run that has not finished yet falls back to its newest checkpoint's policy), or ``tiny`` for the
    tiny kit's pre-trained policy. A run directory's own ``config.json`` (the run's settings) is never taken for a
    model's.
    """
    if spec == TINY_POLICY:
        from rlhf_gym.tiny import build_tiny_kit

        return build_tiny_kit(progress=False).path
    path = Path(spec).expanduser()
    if _is_model_dir(path / "policy"):
        return str(path / "policy")
    if _is_model_dir(path):
        return str(path)
    checkpoint = _newest_checkpoint_policy(path)
    if checkpoint is not None:
        print(f"{spec}: no policy/ yet (the run has not finished); using {checkpoint}", file=sys.stderr)
        return str(checkpoint)
    if path.is_dir():
        what = "a run directory without a saved policy/ or checkpoint" if (path / "config.json").is_file() else \
            "no saved policy (no model config.json, and no policy/ sub-directory)"
        raise ConfigError(
            f"{spec!r} holds {what}; pass a directory written by Policy.save_pretrained or the run directory of "
            f"`rlhf-gym train`"
        )
    raise ConfigError(
        f"policy {spec!r} does not exist; pass a saved model directory, a run directory, or {TINY_POLICY!r} for "
        f"the tiny kit's policy"
    )


def _is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a Hugging Face model: a ``config.json`` naming its ``model_type``."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def _newest_checkpoint_policy(run_dir: Path) -> Path | None:
    """``checkpoints/last/policy`` of a run, else the policy of its highest ``checkpoints/step-N``."""
    checkpoints = run_dir / "checkpoints"
    if _is_model_dir(checkpoints / "last" / "policy"):
        return checkpoints / "last" / "policy"
    steps = []
    if checkpoints.is_dir():
        for child in checkpoints.iterdir():
            number = child.name.removeprefix("step-")
            if child.name.startswith("step-") and number.isdigit() and _is_model_dir(child / "policy"):
                steps.append((int(number), child / "policy"))
    return max(steps)[1] if steps else None


def load_policy(policy: Any) -> Any:
    """A :class:`~rlhf_gym.Policy` from a policy object, a ``--policy`` value or a path (no value head)."""
    from rlhf_gym.policy import Policy

    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, (str, os.PathLike)):
        raise TypeError(f"a policy must be an rlhf_gym.Policy or a path, got {type(policy).__name__}")
    return Policy.from_pretrained(resolve_policy_path(os.fspath(policy)), value_head=False)


def _default_prompts() -> list[str]:
    from rlhf_gym.tiny import review_prompts

    return review_prompts()


def _make_env(policy: Any, prompts: Any, provider: Any, max_new_tokens: int, max_prompt_tokens: int) -> Any:
    import gymnasium as gym

    import rlhf_gym  # noqa: F401  (registers the env ids)

    return gym.make("rlhf_gym/Completion-v0", tokenizer=policy.tokenizer, prompts=prompts, reward=provider,
                    max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                    vocab_size=policy.vocab_size)


def _label(spec: Any, index: int) -> str:
    return os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else f"policy-{index}"


def _check_count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return value


# -- the Python API ------------------------------------------------------------------------------------------------
def evaluate_policies(
    policies: Sequence[Any] | Mapping[str, Any],
    *,
    prompts: Any = None,
    reward: Any = DEFAULT_REWARD,
    reward_kwargs: Mapping[str, Any] | None = None,
    num_samples: int = DEFAULT_SAMPLES,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    seed: int = DEFAULT_SEED,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """Score fresh samples of each policy with one reward provider.

    Args:
        policies: policies (:class:`~rlhf_gym.Policy` objects or paths, see :func:`resolve_policy_path`), or a
            mapping ``{label: policy}``.
        prompts: anything ``Completion-v0`` accepts (list, ``.txt``/``.jsonl`` path, ``datasets.Dataset``);
            default: the tiny kit's review openers.
        reward: provider name, provider object or TRL-style callable; built once and shared by all policies.
        reward_kwargs: keyword arguments of a provider given by name.
        num_samples: scored samples per policy (≥ 128 keeps the noise of a mean near ±0.04).
        max_new_tokens: tokens generated per completion.
        max_prompt_tokens: prompts are left-truncated to this many tokens.
        seed: sampling and prompt-order seed, the same for every policy.
        batch_size: completions sampled per batch.
        temperature: sampling temperature.

    Returns:
        One dict per policy, in order: ``policy`` (label), ``mean``, ``std``, ``stderr``, ``num_samples``,
        ``mean_length`` (tokens) and ``samples`` (prompt, completion, score).
    """
    from rlhf_gym.providers import as_provider
    from rlhf_gym.rollout import evaluate

    _check_count("num_samples", num_samples)
    _check_count("max_new_tokens", max_new_tokens)
    items = list(policies.items()) if isinstance(policies, Mapping) else [(None, p) for p in policies]
    if not items:
        raise ConfigError("evaluate_policies needs at least one policy (a path or an rlhf_gym.Policy)")
    prompts = _default_prompts() if prompts is None else prompts
    provider = as_provider(reward, reward_kwargs)
    results: list[dict[str, Any]] = []
    try:
        for i, (label, spec) in enumerate(items):
            policy = load_policy(spec)
            env = _make_env(policy, prompts, provider, max_new_tokens, max_prompt_tokens)
            out = evaluate(policy, env, num_samples=num_samples, batch_size=batch_size, seed=seed,
                           temperature=temperature)
            n = len(out["scores"])
            results.append({
                "policy": label if label is not None else _label(spec, i),
                "mean": out["mean"], "std": out["std"], "stderr": out["std"] / math.sqrt(max(n, 1)),
                "num_samples": n, "mean_length": out["mean_length"], "samples": out["samples"],
            })
    finally:
        provider.close()
    return results


def win_rate(
    prompts: Sequence[str],
    completions_a: Sequence[str],
    completions_b: Sequence[str],
    judge: Any,
    judge_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """How often ``a`` beats ``b`` on the same prompts, by ``judge.compare``; ties count half.

    The judge's answer per pair is P(a ≻ b): hard labels (1, 0, 0.5) from humans and simulated humans, soft
    Bradley–Terry probabilities from score-based providers. The win rate is the mean answer over the pairs the
    judge did not skip (``None``), so a tie adds half a win.

    Args:
        prompts: one prompt per pair.
        completions_a: the first policy's completions.
        completions_b: the second policy's completions for the same prompts.
        judge: provider name, provider object or TRL-style callable.
        judge_kwargs: keyword arguments of a judge given by name.

    Returns:
        ``win_rate`` (of ``a``; NaN when every pair was skipped), ``wins``, ``losses``, ``ties`` (answers above,
        below and at 0.5), ``skipped`` and ``pairs``.
    """
    from rlhf_gym.providers import as_provider, checked_scores

    if not (len(prompts) == len(completions_a) == len(completions_b)):
        raise ConfigError(
            f"win_rate needs one completion of each policy per prompt; got {len(prompts)} prompts, "
            f"{len(completions_a)} and {len(completions_b)} completions"
        )
    provider = as_provider(judge, judge_kwargs)
    answers = checked_scores(provider, provider.compare(list(prompts), list(completions_a), list(completions_b)),
                             len(prompts), what="preferences")
    decided = [a for a in answers if a is not None]
    return {
        "win_rate": sum(decided) / len(decided) if decided else float("nan"),
        "wins": sum(a > 0.5 for a in decided),
        "losses": sum(a < 0.5 for a in decided),
        "ties": sum(a == 0.5 for a in decided),
        "skipped": len(answers) - len(decided),
        "pairs": len(answers),
    }


def compare_policies(
    policy_a: Any,
    policy_b: Any,
    judge: Any,
    *,
    judge_kwargs: Mapping[str, Any] | None = None,
    prompts: Any = None,
    num_samples: int = DEFAULT_SAMPLES,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    seed: int = DEFAULT_SEED,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Sample both policies on the same prompts and return :func:`win_rate` of ``a`` over ``b``.

    Both policies are sampled through a rollout worker with the same seed, so the i-th completion of each answers
    the same prompt. The result also holds up to 8 ``examples`` (prompt, both completions, the judge's answer).
    """
    from rlhf_gym.rollout import RolloutWorker

    _check_count("num_samples", num_samples)
    prompts = _default_prompts() if prompts is None else prompts
    batch = min(batch_size, num_samples)
    texts: list[tuple[list[str], list[str]]] = []
    for spec in (policy_a, policy_b):
        policy = load_policy(spec)
        env = _make_env(policy, prompts, lambda p, c, **kw: [0.0] * len(p), max_new_tokens, max_prompt_tokens)
        worker = RolloutWorker(env, policy, num_prompts=batch, seed=seed, temperature=temperature)
        was_training = policy.training
        policy.eval()
        seen_prompts: list[str] = []
        completions: list[str] = []
        try:
            while len(completions) < num_samples:
                rollout = worker.collect()
                seen_prompts.extend(rollout.prompts)
                completions.extend(rollout.completions)
        finally:
            policy.train(was_training)
        texts.append((seen_prompts[:num_samples], completions[:num_samples]))
    (prompts_a, comps_a), (prompts_b, comps_b) = texts
    if prompts_a != prompts_b:
        raise ConfigError(
            "the two policies saw different prompts (their tokenizers truncate prompts differently); use policies "
            "with the same tokenizer, or raise max_prompt_tokens so no prompt is cut"
        )
    result = win_rate(prompts_a, comps_a, comps_b, judge, judge_kwargs)
    result["examples"] = [{"prompt": p, "a": a, "b": b} for p, a, b in list(zip(prompts_a, comps_a, comps_b))[:8]]
    return result


# -- the command ---------------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``rlhf-gym eval``."""
    parser.add_argument("--policy", action="append", default=[], metavar="PATH",
                        help="saved policy directory or `rlhf-gym train` run directory (repeatable); "
                             f"{TINY_POLICY!r} is the tiny kit's pre-trained policy")
    parser.add_argument("--prompts", metavar="FILE",
                        help="prompts: .txt (one per line) or .jsonl (field 'prompt') file (default: the tiny kit's "
                             "review openers)")
    parser.add_argument("--reward", default=DEFAULT_REWARD,
                        help=f"reward provider that scores each policy (see `rlhf-gym plugins`; default: "
                             f"{DEFAULT_REWARD})")
    parser.add_argument("--reward-kwargs", metavar="JSON",
                        help="JSON object of keyword arguments for the reward provider, e.g. '{\"preset\": \"noisy\"}'")
    parser.add_argument("--judge", metavar="NAME",
                        help="provider whose compare() judges the two --policy values side by side on the same "
                             "prompts; prints the win rate of the first (ties count half)")
    parser.add_argument("--judge-kwargs", metavar="JSON", help="JSON object of keyword arguments for the judge")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                        help=f"samples per policy (default: {DEFAULT_SAMPLES}; fewer than 128 makes means noisy)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                        help=f"tokens generated per completion (default: {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS, metavar="N",
                        help=f"prompts are left-truncated to this many tokens (default: {DEFAULT_MAX_PROMPT_TOKENS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of sampling and prompt order, the same for every policy (default: {DEFAULT_SEED})")
    parser.add_argument("--show", type=int, default=2, metavar="N",
                        help="sample completions printed per policy (default: 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    """Evaluate the ``--policy`` values and print a table (or ``--json``)."""
    policies: list[str] = list(args.policy)
    if not policies:
        raise ConfigError(f"pass at least one --policy PATH (a saved policy, a run directory, or {TINY_POLICY!r})")
    if args.judge and len(policies) != 2:
        raise ConfigError(f"--judge compares exactly two policies; got {len(policies)} --policy values")
    reward_kwargs = parse_json_object(args.reward_kwargs, "--reward-kwargs")
    judge_kwargs = parse_json_object(args.judge_kwargs, "--judge-kwargs")
    prompts = args.prompts
    if prompts is not None and not Path(prompts).is_file():
        raise ConfigError(f"prompts file {prompts!r} does not exist; pass a .txt (one prompt per line) or .jsonl file")
    settings = dict(prompts=prompts, num_samples=args.samples, max_new_tokens=args.max_new_tokens,
                    max_prompt_tokens=args.max_prompt_tokens, seed=args.seed)
    labelled = {spec: resolve_policy_path(spec) for spec in policies}
    results = evaluate_policies(labelled, reward=args.reward, reward_kwargs=reward_kwargs, **settings)
    comparison = None
    if args.judge:
        comparison = compare_policies(labelled[policies[0]], labelled[policies[1]], args.judge,
                                      judge_kwargs=judge_kwargs, **settings)
        comparison.update({"a": policies[0], "b": policies[1], "judge": args.judge})
    if args.json:
        summary = {"reward": args.reward, "policies": [{k: v for k, v in r.items() if k != "samples"}
                                                       | {"samples": r["samples"][: args.show]} for r in results]}
        if comparison is not None:
            summary["comparison"] = comparison
        print(json.dumps(summary))
        return 0
    print(format_table(results, args.reward))
    for r in results:
        for sample in r["samples"][: args.show]:
            print(f"  [{r['policy']}] {sample['score']:+.3f}  {sample['prompt']}|{sample['completion']}")
    if comparison is not None:
        print(f"\nwin rate of {policies[0]} over {policies[1]} judged by {args.judge}: {comparison['win_rate']:.3f} "
              f"({comparison['wins']} wins, {comparison['ties']} ties, {comparison['losses']} losses, "
              f"{comparison['skipped']} skipped)")
    sys.stdout.flush()
    return 0


def format_table(results: Sequence[Mapping[str, Any]], reward: Any = "") -> str:
    """A plain-text comparison table of :func:`evaluate_policies` results."""
    rows = [("POLICY", f"MEAN {reward}".strip(), "± SE", "STD", "LENGTH", "N")]
    rows += [(str(r["policy"]), f"{r['mean']:+.4f}", f"{r['stderr']:.4f}", f"{r['std']:.4f}",
              f"{r['mean_length']:.1f}", str(r["num_samples"])) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)
