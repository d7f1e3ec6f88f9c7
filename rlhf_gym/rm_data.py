"""Preference pairs for reward-model training: read from a preference store, a TRL-format file (``.jsonl``,
``.json``, ``.parquet``) or a list of dicts, checked, de-duplicated, and conversations rendered with the chat
template.

:func:`load_preference_pairs` is what :func:`rlhf_gym.rm_training.train_reward_model` reads its data with; it is
also importable from :mod:`rlhf_gym.reward_model`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_gym.errors import ConfigError
from rlhf_gym.reward_model import (
    FILE_SUFFIXES,
    STORE_SUFFIXES,
    RewardModelError,
)

# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------

__all__ = ["load_preference_pairs"]


def _pairs_from_file(path: Path, include_ties: bool) -> list[dict[str, Any]]:
    """TRL-format pairs of a file, validated by (and de-duplicated through) a temporary preference store.
    Implicit-prompt conversations get their shared opening messages as the prompt first."""
    from rlhf_gym.conversations import extract_prompt, is_message_list
    from rlhf_gym.data import read_records
    from rlhf_gym.preference_store import PreferenceStore

    records, where = read_records(path, what="preference file") if path.suffix.lower() != ".json" else ([], "")
    implicit = bool(records) and "prompt" not in records[0] and is_message_list(records[0].get("chosen"))
    with tempfile.TemporaryDirectory(prefix="rlhf_gym_rm_") as tmp, PreferenceStore(Path(tmp) / "pairs.db") as store:
        if implicit:
            rows = []
            for i, rec in enumerate(records):
                if not (is_message_list(rec.get("chosen")) and is_message_list(rec.get("rejected"))):
                    raise RewardModelError(f"record {i} of {where}: with no 'prompt' column, 'chosen' and 'rejected' "
                                           f"must both be message lists that share their opening messages")
                prompt, chosen, rejected = extract_prompt(rec["chosen"], rec["rejected"], f"record {i} of {where}")
                rows.append({**rec, "prompt": prompt, "chosen": chosen, "rejected": rejected})
            store.import_records(rows, source=f"import:{path.name}", where=where)
        else:
            store.import_file(path)
        return store.pairs(include_ties=include_ties)


def _chat_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer``, or a copy with rlhf_gym's plain role-marker chat template when it has none (an encoder
    backbone reads the conversation as text, so any faithful rendering will do)."""
    import copy

    from rlhf_gym.tiny import CHAT_TEMPLATE

    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    plain = copy.copy(tokenizer)
    plain.chat_template = CHAT_TEMPLATE
    return plain


def _verify_store(data: Any) -> None:
    """Check a preference store given by path whole (integrity and row checksums); other sources pass."""
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in STORE_SUFFIXES and Path(data).is_file():
        from rlhf_gym.preference_store import PreferenceStore

        with PreferenceStore(Path(data)) as store:
            store.verify()


def load_preference_pairs(data: Any, include_ties: bool = True, tokenizer: Any = None, *,
                          verify: bool = True) -> list[dict[str, Any]]:
    """Normalise any supported source to a list of ``{"prompt", "chosen", "rejected", "margin", "label"}``.

    Args:
        data: a list of dicts in TRL's columns, a ``datasets.Dataset``, a preference store object, or a path to a
            store (``.sqlite``/``.db``) or a TRL-format file (``.jsonl``, ``.json``, ``.parquet``).
        include_ties: keep pairs whose ``label`` is 0.5.
        verify: check a store given by path whole (integrity and row checksums) before reading it; ``False`` only
            when the caller has just checked it (``train_reward_model`` does so once, before loading a model).

    Raises:
        PreferenceStoreError: a file in the wrong format (the message names the missing columns).
        RewardModelError: anything else that is not preference data.
    """
    from rlhf_gym.preference_store import PreferenceBackend, PreferenceStore

    rows: Sequence[Mapping[str, Any]]
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        suffix = path.suffix.lower()
        if suffix in STORE_SUFFIXES:
            if not path.is_file():
                raise RewardModelError(f"preference store {str(path)!r} does not exist")
            with PreferenceStore(path) as store:
                if verify:  # never train on a damaged store: a bad page can hide pairs from a read that works
                    store.verify()
                rows = store.pairs(include_ties=include_ties)
        elif suffix in FILE_SUFFIXES:
            rows = _pairs_from_file(path, include_ties)
        else:
            raise RewardModelError(
                f"cannot read preferences from {str(path)!r}: give a preference store ({', '.join(STORE_SUFFIXES)}) "
                f"or a TRL-format file with prompt/chosen/rejected columns ({', '.join(FILE_SUFFIXES)})")
    elif isinstance(data, PreferenceBackend):
        data.verify()
        rows = data.pairs(include_ties=include_ties)
    elif hasattr(data, "column_names") and hasattr(data, "__iter__"):
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in data.column_names]
        if missing == ["prompt"]:  # perhaps conversations with an implicit prompt: checked below
            missing = []
        if missing:
            raise RewardModelError(
                f"the dataset is not in TRL's preference format: missing column(s) {', '.join(missing)}; found "
                f"{', '.join(data.column_names)}")
        rows = list(data)
    elif isinstance(data, Sequence) and all(isinstance(r, Mapping) for r in data):
        rows = list(data)
    else:
        raise RewardModelError(
            f"training data must be a list of {{'prompt', 'chosen', 'rejected'}} dicts, a datasets.Dataset, a "
            f"PreferenceStore or a path; got {type(data).__name__}")
    rows = _rendered(rows, tokenizer)
    out = []
    for i, row in enumerate(rows):
        missing = [c for c in ("prompt", "chosen", "rejected") if not isinstance(row.get(c), str)]
        if missing:
            raise RewardModelError(
                f"pair {i} has no text in column(s) {', '.join(missing)}; every pair needs prompt, chosen and "
                f"rejected, as text or as lists of {{'role', 'content'}} messages")
        label = row.get("label")
        label = 1.0 if label is None else float(label)
        if not 0.0 <= label <= 1.0:
            raise RewardModelError(f"pair {i} has label {label}; a label is P(chosen ≻ rejected) in [0, 1]")
        if label == 0.5 and not include_ties:
            continue
        margin = row.get("margin")
        out.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                    "label": label, "margin": 2.0 * label - 1.0 if margin is None else float(margin)})
    return out


def _rendered(rows: Sequence[Mapping[str, Any]], tokenizer: Any) -> Sequence[Mapping[str, Any]]:
    """Conversational pairs rendered to text (text pairs unchanged)."""
    from rlhf_gym.conversations import is_message_list
    from rlhf_gym.data import preference_texts

    if not rows or not any(is_message_list(rows[0].get(c)) for c in ("prompt", "chosen", "rejected")):
        return rows
    if tokenizer is None:
        raise RewardModelError("conversational preference pairs are rendered with the reward model's tokenizer; "
                               "pass tokenizer= (train_reward_model does)")
    try:
        texts, _ = preference_texts(rows, _chat_tokenizer(tokenizer), where="the preference data",
                                    extra_columns=("label", "margin"))
    except ConfigError as exc:
        raise RewardModelError(str(exc)) from None
    return texts
