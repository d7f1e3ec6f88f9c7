"""The one fixed setup every benchmark times, and the timing, memory and reporting helpers they share.

Every benchmark in ``bench/`` measures rlhf_gym against a reference (TRL, raw ``generate()``, or the least work
the step can be, written in bare torch) on exactly the same work: the tiny kit's tokenizer, a randomly initialised
GPT-2 with 4 layers, 256 dims, 4 heads (``BENCH_SIZE=mid``: 8 layers, 512 dims, 8 heads) and a 2048-token head, 64
prompts of 16 tokens, batches of 16 and 32 new tokens. It also counts each step's FLOPs, so achieved FLOP/s can be
set against the machine's measured matmul rate. This
module builds that setup once per process (weights saved and loaded back with ``from_pretrained``, so every side
starts from identical weights), runs the sides interleaved (A B A B ...) so machine load hits both alike, and
writes each benchmark's figures as JSON for ``run_all.py`` to turn into ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# -- the fixed setup -------------------------------------------------------------------------------------------
#: policy sizes: ``small`` (≈ 3.7M parameters, overhead matters) and ``mid`` (≈ 26M, compute dominates); chosen by
#: ``$BENCH_SIZE`` so one script serves both
SIZES = {"small": (4, 256, 4), "mid": (8, 512, 8)}
SIZE = os.environ.get("BENCH_SIZE", "small")
if SIZE not in SIZES:
    raise SystemExit(f"BENCH_SIZE must be one of {', '.join(SIZES)}, got {SIZE!r}")
N_LAYER, N_EMBD, N_HEAD = SIZES[SIZE]
VOCAB = 2048
NUM_PROMPTS = 64
PROMPT_TOKENS = 16
BATCH = 16
NEW_TOKENS = 32
GROUP = 4
LEARNING_RATE = 1e-6
MAX_GRAD_NORM = 1.0
DPO_BETA = 0.1
RLOO_BETA = 0.05  # TRL RLOOConfig's default: the reference model is used
GRPO_BETA = 0.0  # TRL GRPOConfig's default: no reference model
SEED = 0


def length_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """The trivial reward both sides use: the completion's length in characters (TRL's reward signature)."""
    return [float(len(c)) for c in completions]


@dataclass
class BenchSetup:
    """The fixed benchmark setup: a saved model directory, its tokenizer, prompts and preference pairs.

    Attributes:
        model_dir: directory holding the random-init GPT-2 and the kit's tokenizer (``from_pretrained``-able).
        tokenizer: the kit's tokenizer (left padding, ``<|endoftext|>`` as EOS, ``<|pad|>`` as pad).
        prompts: ``NUM_PROMPTS`` prompts that each encode to exactly ``PROMPT_TOKENS`` tokens.
        pairs: one ``{"prompt", "chosen", "rejected"}`` dict per prompt; completions of ``NEW_TOKENS - 1`` tokens
            (both sides append EOS, giving ``NEW_TOKENS``).
    """

    model_dir: str
    tokenizer: Any
    prompts: list[str]
    pairs: list[dict[str, str]] = field(default_factory=list)

    def load_model(self) -> Any:
        """A fresh copy of the initial weights (``GPT2LMHeadModel.from_pretrained``), in train mode."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        model.train()
        return model

    def load_policy(self, value_head: bool = False) -> Any:
        """A fresh :class:`rlhf_gym.Policy` on a copy of the initial weights."""
        from rlhf_gym.policy import Policy

        return Policy.from_pretrained(self.model_dir, value_head=value_head)

    def prompt_batch(self, rows: list[str]) -> tuple[Any, Any]:
        """Left-padded ``(input_ids, attention_mask)`` of ``rows`` (no special tokens), as the env builds them."""
        encoded = self.tokenizer(rows, add_special_tokens=False, padding=True, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def completion_env(self, num_envs: int, group_size: int = 1) -> Any:
        """``rlhf_gym/Completion-v0``'s native vector env over the setup's prompts, scored by :func:`length_reward`."""
        import gymnasium as gym

        import rlhf_gym  # noqa: F401  (registers the env ids)

        return gym.make_vec(
            "rlhf_gym/Completion-v0",
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            group_size=group_size,
            tokenizer=self.tokenizer,
            prompts=self.prompts,
            reward=length_reward,
            max_prompt_tokens=PROMPT_TOKENS,
            max_new_tokens=NEW_TOKENS,
            vocab_size=VOCAB,
        )


def _exact_prefixes(tokenizer: Any, texts: list[str], n_tokens: int, count: int) -> list[str]:
    """Decoded ``n_tokens``-token prefixes of the joined ``texts`` that re-encode to exactly ``n_tokens`` tokens."""
    out: list[str] = []
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text + " ", add_special_tokens=False)["input_ids"]
        while len(stream) >= n_tokens:
            piece, stream = stream[:n_tokens], stream[n_tokens:]
            decoded = tokenizer.decode(piece)
            exact = len(tokenizer(decoded, add_special_tokens=False)["input_ids"]) == n_tokens
            # no trailing whitespace: a prompt and its completion then tokenise the same apart and joined
            if exact and decoded.strip() and decoded == decoded.rstrip():
                out.append(decoded)
            if len(out) == count:
                return out
    raise RuntimeError(f"the corpus gave only {len(out)} of {count} {n_tokens}-token pieces; raise the corpus size")


def build_setup(workdir: str | os.PathLike[str] | None = None) -> BenchSetup:
    """Build (or reuse) the fixed setup under ``workdir`` (default: ``$RLHF_GYM_BENCH_DIR`` or the kit cache)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from rlhf_gym.tiny import build_tiny_tokenizer, default_cache_dir, review_corpus, tiny_config

    root = Path(workdir or os.environ.get("RLHF_GYM_BENCH_DIR") or default_cache_dir() / "bench")
    model_dir = root / f"gpt2-{N_LAYER}x{N_EMBD}-v{VOCAB}-seed{SEED}"
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(seed=SEED))
    if not (model_dir / "config.json").is_file():
        config = tiny_config(len(tokenizer), n_layer=N_LAYER, n_embd=N_EMBD, n_head=N_HEAD,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        config.vocab_size = VOCAB
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = GPT2LMHeadModel(config)
        tmp = model_dir.with_name(model_dir.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if model_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(model_dir)
    data_file = model_dir / "bench_data.json"
    if data_file.is_file():
        data = json.loads(data_file.read_text())
    else:
        texts = [r["prompt"] + r["completion"] for r in review_corpus(8000, seed=SEED)]
        prompts = _exact_prefixes(tokenizer, texts, PROMPT_TOKENS, NUM_PROMPTS)
        completions = _exact_prefixes(tokenizer, texts[2000:], NEW_TOKENS - 1, 2 * NUM_PROMPTS)
        pairs = [{"prompt": p, "chosen": completions[2 * i], "rejected": completions[2 * i + 1]}
                 for i, p in enumerate(prompts)]
        data = {"prompts": prompts, "pairs": pairs}
        data_file.write_text(json.dumps(data, indent=1) + "\n")
    return BenchSetup(str(model_dir), tokenizer, data["prompts"], data["pairs"])


# -- the least work a step can be -------------------------------------------------------------------------------


def floor_model(model: Any) -> Any:
    """``model`` with the kernels any careful bare-torch loop would use: the fused tanh-GELU (the same function as
    GPT-2's ``gelu_new``), so the floor is never slower than rlhf_gym for a kernel it lacks."""
    from rlhf_gym.decoding import fuse_activations

    fuse_activations(model)
    return model


def floor_optimizer(model: Any) -> Any:
    """AdamW with torch's fused kernel where the build has it (the fastest exact AdamW step)."""
    from rlhf_gym.algorithm import make_adamw

    return make_adamw([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE, weight_decay=0.0)


def floor_sample(model: Any, ids: Any, mask: Any, max_new_tokens: int, eos: int, pad: int,
                 generator: Any = None) -> tuple[Any, Any, Any]:
    """Sample with one static key/value buffer (no per-step allocation or mask building), one uniform per row per
    token, returning ``(completion ids, completion mask, sampled-token log-probs)``: the least work sampling can
    be, so no extra forward is needed for the old log-probs."""
    import torch

    from rlhf_gym.decoding import sample_tokens, static_decoder_for

    batch, prompt_len = ids.shape
    full = torch.ones(batch, prompt_len + max_new_tokens, dtype=mask.dtype)
    full[:, :prompt_len] = mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoder = static_decoder_for(model.transformer, batch, full.shape[1], full)
    if decoder is None:
        raise RuntimeError("the floor needs a trunk the static decoder supports (GPT-2)")
    tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long)
    cmask = torch.zeros((batch, max_new_tokens), dtype=torch.long)
    logps = torch.zeros((batch, max_new_tokens))
    done = torch.zeros(batch, dtype=torch.bool)
    head = model.get_output_embeddings()
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        hidden = decoder.prefill(ids, positions)
        steps = 0
        for t in range(max_new_tokens):
            logits = head(hidden).float()
            token = sample_tokens(logits, generator)
            logps[:, t] = (logits.gather(-1, token.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1))
            cmask[:, t] = (~done).long()
            tokens[:, t] = torch.where(done, torch.tensor(pad), token)
            done |= token == eos
            steps = t + 1
            if bool(done.all()) or steps == max_new_tokens:
                break
            hidden = decoder.step(tokens[:, t], positions[:, -1] + 1 + t, prompt_len + t)
    model.train(was_training)
    return tokens[:, :steps].clone(), cmask[:, :steps].clone(), (logps[:, :steps] * cmask[:, :steps]).clone()


def floor_token_logps(model: Any, ids: Any, mask: Any, prompt_len: int, completion: Any) -> Any:
    """Log-probs of the ``completion`` tokens that follow ``prompt_len`` prompt positions of ``ids``, with the least
    work: the last token is not fed (it predicts nothing scored), the trunk runs once, the LM head only at the
    ``T`` positions that predict completion tokens, and no ``(B, T, V)`` log-softmax is kept."""
    import torch

    ids, mask = ids[:, :-1], mask[:, :-1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.transformer(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    t = completion.shape[1]
    logits = model.get_output_embeddings()(hidden[:, prompt_len - 1: prompt_len - 1 + t]).float()
    return logits.gather(-1, completion.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


# -- FLOPs ---------------------------------------------------------------------------------------------------------


def forward_flops(rows: int, context: int, head_positions: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward of the benchmark GPT-2 over ``rows`` sequences of ``context``
    tokens, with the LM head applied at ``head_positions`` of them: 12·L·d² weights per token in the blocks,
    Q·Kᵀ and A·V over the causal context (half of the square), and d·V per head position."""
    blocks = 2 * rows * context * 12 * N_LAYER * N_EMBD**2
    attention = 2 * 2 * rows * N_LAYER * N_EMBD * context * (context + 1) / 2
    head = 2 * rows * head_positions * N_EMBD * VOCAB
    return float(blocks + attention + head)


def generation_flops(rows: int, prompt: int, new: int) -> float:
    """FLOPs of sampling ``new`` tokens for ``rows`` prompts of ``prompt`` tokens with a KV cache: the prefill,
    then one token per step attending over the cached context, the LM head at every sampled position."""
    prefill = forward_flops(rows, prompt, 1)
    per_token = sum(2 * rows * 12 * N_LAYER * N_EMBD**2 + 2 * 2 * rows * N_LAYER * N_EMBD * (prompt + t + 1)
                    + 2 * rows * N_EMBD * VOCAB for t in range(new - 1))
    return float(prefill + per_token)


def training_flops(rows: int, context: int, head_positions: int) -> float:
    """Forward + backward (≈ 2 × forward) of the policy."""
    return 3 * forward_flops(rows, context, head_positions)


def matmul_peak(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate in FLOP/s with ``threads`` threads: the best of ``repeats`` ``n×n·n×n``
    products, the physical limit every step's achieved FLOP/s is measured against."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# -- process settings and memory -----------------------------------------------------------------------------


def default_threads() -> int:
    """``$BENCH_THREADS``, else 2 (the cores the targets were set on), or 1 when the machine is already busy.

    On a machine whose 1-minute load average exceeds one core's worth, two OpenMP threads per process spin
    against other processes and every side slows down many times over; one thread keeps the sides comparable.
    """
    if os.environ.get("BENCH_THREADS"):
        return int(os.environ["BENCH_THREADS"])
    return 2 if os.getloadavg()[0] < 1.0 else 1


def configure_torch(threads: int | None) -> int:
    """Pin torch's intra-op threads (default: :func:`default_threads`)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    n = threads or default_threads()
    torch.set_num_threads(n)
    torch.manual_seed(SEED)
    return n


def warm_imports(*modules: str) -> None:
    """Import and initialise everything a side needs (modelling code, rlhf_gym's plugins, torch's thread pool, and
    ``modules``), so an RSS baseline taken afterwards counts the work a side does, not library code loaded on first
    use."""
    import importlib

    import torch
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401

    import rlhf_gym
    import rlhf_gym.online  # noqa: F401
    import rlhf_gym.policy  # noqa: F401
    import rlhf_gym.rollout  # noqa: F401

    rlhf_gym.list_plugins()
    for name in modules:
        importlib.import_module(name)
    layer = torch.nn.Linear(8, 8)
    layer(torch.randn(4, 8)).sum().backward()


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- timing ----------------------------------------------------------------------------------------------------


def interleave(sides: Mapping[str, Callable[[], Any]], warmup: int, steps: int) -> dict[str, list[float]]:
    """Run every side's step in turn (A B C A B C ...), ``warmup`` untimed rounds then ``steps`` timed ones.

    Returns each side's list of step times in seconds.
    """
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(warmup + steps):
        for name, step in sides.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def summary(samples: list[float]) -> dict[str, float]:
    """Median, min, max and count of a list of step times."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def trl_training_args(config_cls: Any, output_dir: str, steps: int, **overrides: Any) -> Any:
    """A TRL config for the benchmark: fp32 on CPU, no gradient checkpointing, dropout off, lr 1e-6, clip 1.0,
    constant learning rate, no logging, saving or reporting in the timed window."""
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch",
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        disable_dropout=True,
        report_to=[],
        logging_steps=10**6,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=SEED,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return config_cls(**kwargs)


def trl_interleaved(trainer: Any, name: str, others: Mapping[str, Callable[[], Any]], warmup: int,
                    steps: int) -> dict[str, list[float]]:
    """Time TRL's own training loop step by step, running the other sides between its steps.

    One TRL step is the span from the trainer's ``on_step_begin`` to its ``on_step_end`` callback: generation (for
    the online trainers), forwards, backward, clipping and the optimizer step. After each TRL step the other sides'
    steps run once each, so the order is A B C A B C ... in one process. ``trainer.args.max_steps`` must be
    ``warmup + steps``.
    """
    from transformers import TrainerCallback

    times: dict[str, list[float]] = {name: [], **{k: [] for k in others}}

    class _Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.count = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            elapsed = time.perf_counter() - self.start
            timed = self.count >= warmup
            self.count += 1
            if timed:
                times[name].append(elapsed)
            for other, step in others.items():
                start = time.perf_counter()
                step()
                if timed:
                    times[other].append(time.perf_counter() - start)

    trainer.add_callback(_Interleave())
    trainer.train()
    if len(times[name]) != steps:
        raise RuntimeError(f"TRL ran {len(times[name])} timed steps, expected {steps}; check max_steps")
    return times


# -- command line and output -------------------------------------------------------------------------------------


def parse_args(description: str, sides: list[str], default_steps: int = 7, default_warmup: int = 2,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every benchmark script takes (``extra`` adds a script's own)."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--steps", type=int, default=default_steps, help="timed steps per side (median reported)")
    parser.add_argument("--warmup", type=int, default=default_warmup, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default $BENCH_THREADS, else 2 or 1 on a busy machine)")
    parser.add_argument("--side", choices=sides, default=None,
                        help="run only this side (for its peak RSS) instead of the interleaved comparison")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def emit(payload: dict[str, Any], path: Path | None) -> None:
    """Print the figures and, when ``path`` is given, write them as JSON."""
    text = json.dumps(payload, indent=2, sort_keys=True)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    sys.stdout.flush()


def side_memory(name: str, baseline_mb: float) -> dict[str, Any]:
    """The memory record of a ``--side`` run: peak RSS, and the peak above the post-import baseline."""
    peak = peak_rss_mb()
    return {"side": name, "peak_rss_mb": peak, "baseline_rss_mb": baseline_mb, "peak_above_baseline_mb": peak - baseline_mb}
