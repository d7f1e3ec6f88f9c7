"""Offline text data for the algorithms that learn from records rather than samples (SFT, offline DPO): load
records from a file, a ``datasets.Dataset``, a preference store or a list, check their columns, and tokenise them
once into padded tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_gym.errors import ConfigError

STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def load_records(source: Any, required: Sequence[str], *, what: str = "dataset") -> list[dict[str, Any]]:
    """Records (dicts) from ``source``: a ``.jsonl``/``.json``/``.parquet`` path, a preference store (``.sqlite``),
    a ``datasets.Dataset``, or an iterable of dicts. Every record must have the ``required`` columns.

    Raises:
        ConfigError: a missing file, an unknown file type, or missing columns (named, with those found).
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
    columns = list(records[0].keys())
    missing = [c for c in required if c not in columns]
    if missing:
        raise ConfigError(
            f"{where} is missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, columns))}. "
            f"Each record needs {', '.join(map(repr, required))}."
        )
    for i, rec in enumerate(records):
        for c in required:
            if not isinstance(rec.get(c), str):
                raise ConfigError(f"record {i} of {where}: column {c!r} must be text, got {type(rec.get(c)).__name__}")
    return records


def tokenize_completions(tokenizer: Any, texts: Sequence[str], max_tokens: int, *, pad_token_id: int,
                         eos_token_id: int | None, add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, mask)`` of completion texts, each ending with EOS (kept even when truncated)."""
    rows = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if add_eos and eos_token_id is not None:
            ids = ids[: max_tokens - 1] + [eos_token_id]
        rows.append(ids[:max_tokens] or ([eos_token_id] if eos_token_id is not None else [pad_token_id]))
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return out, mask


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
