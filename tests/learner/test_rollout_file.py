"""Rollout files round-trip exactly; a damaged record is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learner.training.rollout_file import read_groups, write_groups
from tests.learner.rollouts import completion, group, mixed_batch


def test_round_trip(tmp_path: Path) -> None:
    # One long completion: its arrays travel in out-of-band frames of their own.
    long = group("long", list(range(1, 40)), [completion(list(range(20_000)), 1.0), completion([1], 0.0)])
    groups = [*mixed_batch(), long]
    path = tmp_path / "groups.bin"
    assert write_groups(path, groups) == len(groups)
    back = list(read_groups(path))
    assert back == groups
    np.testing.assert_array_equal(back[-1].completions[0].token_ids, np.arange(20_000))


def test_damaged_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / "groups.bin"
    write_groups(path, mixed_batch())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match=r"record 5: truncated frame"):
        list(read_groups(path))
