"""Shared pytest fixtures: the offline tiny tokenizer, a random-init tiny GPT-2, and the pre-trained tiny kit.

Everything is built locally (nothing comes from a model hub) and cached on disk, so the whole suite builds each
piece once per machine. The cache is ``$RLHF_GYM_CACHE`` when set, else ``<repo>/.cache/rlhf_gym``; the variable is
set for the test session so code under test and subprocesses (CLI tests) share the same cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rlhf_gym.tiny import CACHE_ENV_VAR, TinyKit, build_tiny_kit, build_tiny_tokenizer, random_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault(CACHE_ENV_VAR, str(REPO_ROOT / ".cache" / "rlhf_gym"))

# One intra-op thread: the tiny models gain nothing from more, results are then the same on any core count, and
# subprocess-based tests (CLI, examples, the pseudo-terminal) are not starved by an oversubscribed parent.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cache_dir() -> Path:
    """The cache directory the test session builds tiny tokenizers and kits in."""
    return Path(os.environ[CACHE_ENV_VAR]).expanduser()


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tiny_cache_dir: Path) -> str:
    """Directory of the kit's byte-level BPE tokenizer (no model)."""
    return build_tiny_tokenizer(tiny_cache_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path: str):
    """The kit's tokenizer, loaded with ``AutoTokenizer.from_pretrained``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_path)


@pytest.fixture(scope="session")
def random_model_path(tmp_path_factory: pytest.TempPathFactory, tiny_cache_dir: Path) -> str:
    """Directory with the tokenizer and a random-init tiny GPT-2 (no pre-training); a fresh copy per session."""
    return random_tiny_model(tmp_path_factory.mktemp("tiny") / "random_model", cache_dir=tiny_cache_dir)


@pytest.fixture(scope="session")
def tiny_kit(tiny_cache_dir: Path) -> TinyKit:
    """The pre-trained tiny review policy; built once per machine (a minute or two) and then read from the cache."""
    return build_tiny_kit(tiny_cache_dir, progress=False)
