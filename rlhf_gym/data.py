"""Offline data for the algorithms that learn from records rather than samples (SFT, offline DPO, reward models):
load records from a file, a ``datasets.Dataset``, a preference store or a list, check their columns, render
conversational records (TRL's message-list formats, see :mod:`rlhf_gym.conversations`) with the chat template, and
tokenise them once into padded tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_gym.errors import ConfigError

STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def read_records(source: Any, *, what: str = "dataset") -> tuple[list[dict[str, Any]], str]:
    """``(records, where)`` from ``source``: a ``.jsonl``/``.json``/``.parquet`` path, a preference store
    (``.sqlite``), a ``datasets.Dataset``, or an iterable of dicts; ``where`` names the source in messages.

    Raises:
        ConfigError: a missing file, an unknown file type, no records.
    """
    where = what
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = f"{what} {str(path)!r}"
        if not path.exists():
            raise ConfigError(f"{where} does not exist; pass a .jsonl, .parquet or preference store (.sqlite) file")
        suffix = path.suffix.lower()
        if suffix in STORE_SUFFIXES:
            from rlhf_gym.preference_store import open_store

            with open_store(path) as store:
                store.verify()  # never train on a damaged store: a bad page can hide pairs from a read that works
                records = store.pairs()
        elif suffix in (".jsonl", ".json"):
            from rlhf_gym.preference_store import iter_jsonl

            records = list(iter_jsonl(path))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        else:
            raise ConfigError(f"{where}: unsupported file type {suffix!r}; use .jsonl, .parquet or .sqlite")
    elif hasattr(source, "column_names") and hasattr(source, "to_list"):
        records = source.to_list()
    elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, Mapping)):
        records = [dict(r) for r in source]
    else:
        raise ConfigError(f"{what} must be a file path, a datasets.Dataset or a list of dicts, got {type(source).__name__}")
    if not records:
        raise ConfigError(f"{where} has no records")
    return records, where


def _check_columns(records: list[dict[str, Any]], required: Sequence[str], where: str, expected: str) -> None:
    columns = list(records[0].keys())
    missing = [c for c in required if c not in columns]
    if missing:
        raise ConfigError(
            f"{where} is missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, columns))}. "
            f"{expected}"
        )


def load_records(source: Any, required: Sequence[str], *, what: str = "dataset") -> list[dict[str, Any]]:
    """Text records (dicts) from ``source`` (see :func:`read_records`); every record must have the ``required``
    columns, as text.

    Raises:
        ConfigError: a missing file, an unknown file type, or missing columns (named, with those found).
    """
    records, where = read_records(source, what=what)
    _check_columns(records, required, where, f"Each record needs {', '.join(map(repr, required))}.")
    for i, rec in enumerate(records):
        for c in required:
            if not isinstance(rec.get(c), str):
                raise ConfigError(f"record {i} of {where}: column {c!r} must be text, got {type(rec.get(c)).__name__}")
    return records


# -- conversational records (TRL's formats) ------------------------------------------------------------------

SFT_FORMATS = "'prompt'/'completion' (text, or message lists) or 'messages' (a message list)"
PREFERENCE_FORMATS = ("'prompt'/'chosen'/'rejected' (text, or message lists), or 'chosen'/'rejected' message lists "
                      "that share their opening messages (an implicit prompt)")


def _record_format(records: list[dict[str, Any]], columns: Sequence[str], where: str) -> bool:
    """True if the records are conversational in ``columns``, False if text; one format for all records."""
    def kind(i: int) -> bool:
        values = [records[i].get(c) for c in columns]
        if all(isinstance(v, str) for v in values):
            return False
        if all(isinstance(v, (list, tuple)) for v in values):
            return True
        found = ", ".join(f"{c!r}: {type(v).__name__}" for c, v in zip(columns, values))
        raise ConfigError(f"record {i} of {where}: columns {', '.join(map(repr, columns))} must all be text or all "
                          f"be lists of {{'role', 'content'}} messages; found {found}")

    first = kind(0)
    for i in range(1, len(records)):
        if kind(i) != first:
            raise ConfigError(f"record {i} of {where} is {'conversational' if not first else 'text'} but record 0 "
                              f"is {'conversational' if first else 'text'}; use one format for the whole dataset")
    return first


@dataclass
class SFTData:
    """Demonstrations tokenised once: left-padded prompts, right-padded completions, and which completion tokens
    are learned (``loss_mask``: every completion token for text records; only assistant tokens in conversations)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    loss_mask: torch.Tensor
    conversational: bool

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])


def _left_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def right_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows as one right-padded ``(ids, mask)`` pair of int64 ``(N, longest row)`` tensors."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def tokenize_rendered_prompts(policy: Any, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids, mask)`` of prompts rendered by a chat template, left-truncated to ``max_tokens``.

    No special tokens are added: the template writes its own (a BOS added again would double it)."""
    start = getattr(policy.tokenizer, "bos_token_id", None)
    start = start if start is not None else policy.eos_token_id
    rows = [list(ids)[-max_tokens:] or [start] for ids in
            policy.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    ids, mask = _left_padded(rows, policy.pad_token_id)
    return ids.to(policy.device), mask.to(policy.device)


def load_sft_data(source: Any, policy: Any, *, max_prompt_tokens: int, max_completion_tokens: int,
                  add_eos: bool = True, what: str = "SFT dataset") -> SFTData:
    """Demonstrations in any of TRL's SFT formats, tokenised for ``policy``.

    - text ``prompt``/``completion``: the completion (plus EOS with ``add_eos``) is learned;
    - ``messages``: rendered with the chat template; every assistant turn is learned (its end-of-turn marker
      included), user/system/tool turns are context only;
    - ``prompt``/``completion`` message lists: the completion's assistant turns are learned.

    Conversations are split at their first learned token: what comes before is the prompt (left-truncated to
    ``max_prompt_tokens``), the rest the completion (cut at ``max_completion_tokens``), with later user turns
    inside it masked out of the loss.

    Raises:
        ConfigError: unknown columns, mixed formats, malformed messages or a conversation with nothing to learn,
            naming the record and what is expected.
    """
    records, where = read_records(source, what=what)
    tok = policy.tokenizer
    columns = list(records[0].keys())
    if "messages" in columns:
        conversational, learn_columns = True, ("messages",)
    else:
        _check_columns(records, ("prompt", "completion"), where, f"Give {SFT_FORMATS}.")
        conversational, learn_columns = _record_format(records, ("prompt", "completion"), where), ()
    if not conversational:
        records = load_records(records, ("prompt", "completion"), what=where)
        prompt_ids, prompt_mask = policy.tokenize_prompts([r["prompt"] for r in records], max_prompt_tokens)
        completion_ids, completion_mask = tokenize_completions(
            tok, [r["completion"] for r in records], max_completion_tokens, pad_token_id=policy.pad_token_id,
            eos_token_id=policy.eos_token_id, add_eos=add_eos)
        return SFTData(prompt_ids.cpu(), prompt_mask.cpu(), completion_ids, completion_mask, completion_mask.clone(),
                       False)

    from rlhf_gym.conversations import chat_segments, check_messages, require_chat_template

    require_chat_template(tok, f"the conversational {where}")
    prompts, completions, learned = [], [], []
    for i, rec in enumerate(records):
        if learn_columns:
            messages = check_messages(rec.get("messages"), f"record {i} of {where}, column 'messages'")
            learn_from = 0
        else:
            prompt = check_messages(rec.get("prompt"), f"record {i} of {where}, column 'prompt'")
            messages = prompt + check_messages(rec.get("completion"), f"record {i} of {where}, column 'completion'")
            learn_from = len(prompt)
        ids: list[int] = []
        flags: list[int] = []
        for text, learn in chat_segments(tok, messages, learn_from=learn_from, where=f"record {i} of {where}"):
            piece = list(tok(text, add_special_tokens=False)["input_ids"])
            ids += piece
            flags += [int(learn)] * len(piece)
        if 1 not in flags:
            raise ConfigError(f"record {i} of {where} has no assistant message to learn from; each conversation "
                              f"needs at least one {{'role': 'assistant', ...}} message"
                              + (" in 'completion'" if not learn_columns else ""))
        first = flags.index(1)
        prompts.append(ids[:first][-max_prompt_tokens:])
        completions.append(ids[first:][:max_completion_tokens])
        learned.append(flags[first:][:max_completion_tokens])
    start = getattr(tok, "bos_token_id", None)
    start = start if start is not None else policy.eos_token_id
    prompts = [p or [start] for p in prompts]  # an assistant-first conversation conditions on BOS
    prompt_ids, prompt_mask = _left_padded(prompts, policy.pad_token_id)
    completion_ids, completion_mask = right_padded(completions, policy.pad_token_id)
    loss_mask = torch.zeros_like(completion_mask)
    for i, flags in enumerate(learned):
        loss_mask[i, : len(flags)] = torch.tensor(flags, dtype=torch.long)
    return SFTData(prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask, True)


def load_preference_texts(source: Any, tokenizer: Any, *, what: str = "preference dataset",
                          extra_columns: Sequence[str] = ()) -> tuple[list[dict[str, Any]], bool]:
    """``(records, conversational)``: preference pairs as text ``prompt``/``chosen``/``rejected`` in any of
    TRL's preference formats (see :data:`PREFERENCE_FORMATS`); message lists are rendered with ``tokenizer``'s
    chat template (``prompt`` with the generation prompt, each answer as the text the template adds for it).
    ``extra_columns`` present in a record are kept.

    Raises:
        ConfigError: naming the record and the expected format.
    """
    records, where = read_records(source, what=what)
    return preference_texts(records, tokenizer, where=where, extra_columns=extra_columns)


def preference_texts(records: Sequence[Mapping[str, Any]], tokenizer: Any, *, where: str,
                     extra_columns: Sequence[str] = ()) -> tuple[list[dict[str, Any]], bool]:
    """:func:`load_preference_texts` for records already in memory."""
    records = [dict(r) for r in records]
    columns = list(records[0].keys())
    implicit = "prompt" not in columns and "chosen" in columns and "rejected" in columns
    if implicit:
        if not all(isinstance(r.get("chosen"), (list, tuple)) for r in records):
            raise ConfigError(f"{where} has no 'prompt' column; an implicit prompt is read from 'chosen'/'rejected' "
                              f"message lists only. Give {PREFERENCE_FORMATS}.")
        conversational = True
    else:
        _check_columns(records, ("prompt", "chosen", "rejected"), where, f"Give {PREFERENCE_FORMATS}.")
        conversational = _record_format(records, ("prompt", "chosen", "rejected"), where)
    if not conversational:
        return [dict(r) for r in load_records(records, ("prompt", "chosen", "rejected"), what=where)], False

    from rlhf_gym.conversations import check_messages, extract_prompt, render_pair, require_chat_template

    require_chat_template(tokenizer, f"the conversational {where}")
    out = []
    for i, rec in enumerate(records):
        here = f"record {i} of {where}"
        chosen = check_messages(rec.get("chosen"), f"{here}, column 'chosen'")
        rejected = check_messages(rec.get("rejected"), f"{here}, column 'rejected'")
        if implicit:
            prompt, chosen, rejected = extract_prompt(chosen, rejected, here)
        else:
            prompt = check_messages(rec.get("prompt"), f"{here}, column 'prompt'")
        prompt_text, chosen_text, rejected_text = render_pair(tokenizer, prompt, chosen, rejected, here)
        row = {"prompt": prompt_text, "chosen": chosen_text, "rejected": rejected_text}
        row.update({c: rec[c] for c in extra_columns if c in rec})
        out.append(row)
    return out, True


def tokenize_completions(tokenizer: Any, texts: Sequence[str], max_tokens: int, *, pad_token_id: int,
                         eos_token_id: int | None, add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, mask)`` of completion texts, each ending with EOS (kept even when truncated)."""
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if add_eos and eos_token_id is not None:
            ids = ids[: max_tokens - 1] + [eos_token_id]
        rows.append(ids[:max_tokens] or ([eos_token_id] if eos_token_id is not None else [pad_token_id]))
    return right_padded(rows, pad_token_id)


class ShuffledIndices:
    """Batches of record indices in epochs: each pass over the records is a fresh permutation of a seeded
    generator, so offline training is reproducible and resumes exactly (see :meth:`state`)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.generator)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        """The next ``min(batch_size, n)`` indices, starting a new permutation when a pass ends."""
        take: list[int] = []
        while len(take) < min(self.batch_size, self.n):
            if self.cursor >= self.n:
                self.order = torch.randperm(self.n, generator=self.generator)
                self.cursor = 0
            take.append(int(self.order[self.cursor]))
            self.cursor += 1
        return torch.tensor(take)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"data_rng": self.generator.get_state(), "order": self.order}, {"cursor": self.cursor}

    def load_state(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        self.generator.set_state(tensors["data_rng"])
        self.order, self.cursor = tensors["order"], int(values["cursor"])
