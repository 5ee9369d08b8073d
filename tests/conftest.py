"""Shared fixtures: the tiny model every engine test loads from a directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from learner.tiny.model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen2 (head_dim 64) and its byte-level BPE tokenizer, saved with save_pretrained."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"))
