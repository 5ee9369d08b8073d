"""`launch/gpu-check.sh` where there is no GPU: it says so and runs nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from launch import gpu_check
from tests.launch.supervised import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check would run")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        ["launch/gpu-check.sh", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "no GPU visible" in done.stderr and "nothing to check here" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_part_whose_packages_are_missing_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu_check.PARTS, "run", ["deepspeed", "surely_not_installed_here"])
    assert gpu_check.missing("run") == ["surely_not_installed_here"]
