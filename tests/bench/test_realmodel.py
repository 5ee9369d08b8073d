"""bench.realmodel's figures, read from a run directory written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from bench.realmodel import figures, parameters, short_recipe
from learner.metrics import EvalRecord, MetricsWriter, TrainRecord


def test_figures_come_from_the_runs_records(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"embed": torch.zeros(10, 4), "norm": torch.zeros(4)}, str(model / "model.safetensors"))
    (tmp_path / "learner.yaml").write_text(yaml.safe_dump({"model": {"path": str(model)}}))
    metrics = MetricsWriter(tmp_path, tensorboard=False)
    heldout = {"task": "math", "set_name": "arithmetic", "k": 1, "temperature": 0.0, "mode": "greedy"}
    metrics.write(EvalRecord(step=0, accuracy=0.25, **heldout))
    metrics.write(EvalRecord(step=0, accuracy=0.9, **dict(heldout, set_name="gsm8k")))
    for step, (wall, mismatch) in enumerate([(100.0, 1e-5), (130.0, 3e-5), (150.0, 2e-5)]):
        metrics.write(
            TrainRecord(
                step=step, task="math", reward_mean=0.1, accuracy=0.1, response_len_mean=40.0,
                time=wall, generator_tokens={"gen0": 600}, generate_s=10.0, publish_s=0.5,
                reload_s=1.5, logprob_mismatch=mismatch,
            )
        )  # fmt: skip
    metrics.write(EvalRecord(step=3, accuracy=0.5, **heldout))
    metrics.write(EvalRecord(step=5, accuracy=0.4, **heldout))  # after a code stage: not the math gain
    metrics.close()
    f = figures(tmp_path)
    assert parameters(model) == 44 and f["params"] == 44
    assert f["gen_tokens_per_s"] == pytest.approx(1800 / 30)
    assert f["step_s"] == pytest.approx(25.0)  # 30 and 20 s between records; the first has none before it
    assert f["weight_update_s"] == pytest.approx(2.0)
    assert f["mismatch"] == pytest.approx(2e-5)
    assert (f["heldout_before"], f["heldout_after"], f["heldout_gain"]) == (0.25, 0.5, 0.25)


def test_the_short_run_is_the_math_stage_on_one_held_out_set(tmp_path: Path) -> None:
    recipe = short_recipe(tmp_path / "r.yaml", steps=3, heldout=16)
    stages, sets = recipe["learner"]["schedule"]["stages"], recipe["learner"]["eval"]["sets"]
    assert [(s["kind"], s["steps"]) for s in stages] == [("math", 3)]
    assert [(s["task"], s["limit"]) for s in sets] == [("math", 16)]
    assert yaml.safe_load((tmp_path / "r.yaml").read_text()) == recipe
