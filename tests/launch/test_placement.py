"""The placement plan: disjoint GPUs for every component, a memory estimate, refusal with numbers,
and a run that starts exactly what its plan lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.placement import ModelShape, Plan, PlanError, learner_memory, place, plan_recipe
from launch.recipe import Recipe, load_recipe
from launch.supervisor import Supervisor
from tests.launch.supervised import ROOT

SEVEN_B = ModelShape(
    parameters_b=7.62, hidden_size=3584, intermediate_size=18944, layers=28, vocab_size=152064
)


def recipe(name: str, *overrides: str) -> Recipe:
    return load_recipe(ROOT / f"launch/recipes/{name}.yaml", list(overrides))


def devices(component: dict) -> set[str]:
    named = component["env"].get("CUDA_VISIBLE_DEVICES", "")
    return {d for d in named.split(",") if d}


@pytest.mark.parametrize("name", ["acereason-7b", "acereason-14b"])
def test_the_paper_recipes_fill_an_8_gpu_node_with_disjoint_devices(name: str) -> None:
    plan = plan_recipe(recipe(name), gpus=8).as_json()
    assert plan["gpus"] == 8
    by_kind: dict[str, list[dict]] = {}
    for component in plan["components"]:
        assert set(component) >= {"name", "kind", "gpus", "command", "env", "memory_gb"}
        by_kind.setdefault(component["kind"], []).append(component)
    (learner,) = by_kind["learner"]
    assert learner["ranks"] == len(learner["gpus"]) and learner["memory_gb"] <= 80
    (judge,) = by_kind["judge"]
    assert judge["gpus"] == [] and judge["env"] == {"CUDA_VISIBLE_DEVICES": ""}  # no GPU for the judge
    used = [gpu for c in plan["components"] for gpu in c["gpus"]]
    assert len(used) == len(set(used)) == 8  # every GPU once
    named = [devices(c) for c in plan["components"]]
    for i, a in enumerate(named):
        for b in named[i + 1 :]:
            assert not a & b
    assert {c["kind"] for c in plan["components"]} == {"learner", "generator", "judge"}


def test_the_7b_plan_is_four_learner_ranks_and_four_generators() -> None:
    plan = plan_recipe(recipe("acereason-7b"), gpus=8)
    learner = next(c for c in plan.components if c.kind == "learner")
    assert (learner.ranks, learner.gpus) == (4, [0, 1, 2, 3])
    assert learner.env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    generators = [c for c in plan.components if c.kind == "generator"]
    assert [c.gpus for c in generators] == [[4], [5], [6], [7]]
    assert all(c.memory_gb == pytest.approx(0.85 * 80) for c in generators)


def test_a_plan_that_does_not_fit_is_refused_with_the_numbers() -> None:
    too_big = recipe(
        "acereason-14b", "learner.ranks=4", "generators=4", "learner.batching.micro_batch_tokens=65536"
    )
    estimate = r"learner: (\d+\.\d) GB per GPU \(weights .*\) > 80\.0 GB per GPU"
    with pytest.raises(PlanError, match=estimate) as info:
        plan_recipe(too_big, gpus=8)
    assert float(info.value.args[0].split("learner: ")[1].split(" GB")[0]) > 80
    count = r"needs 9 GPUs \(learner.ranks 4 \+ generators 5 x tensor_parallel_size 1\)"
    with pytest.raises(PlanError, match=count):
        plan_recipe(recipe("acereason-7b", "generators=5"), gpus=8)
    share = r"generator: weights 15\.2 GB per GPU .* share 0\.15 x 80\.0 = 12\.0 GB"
    with pytest.raises(PlanError, match=share):
        plan_recipe(recipe("acereason-7b", "generator.engine.gpu_memory_utilization=0.15"), gpus=8)


def test_tensor_parallel_generators_take_that_many_gpus_and_a_narrowed_node_keeps_its_names() -> None:
    plan = place(
        gpus=4,
        visible=["4", "5", "6", "7"],  # CUDA_VISIBLE_DEVICES=4,5,6,7 on the node
        gpu_memory_gb=80.0,
        shape=SEVEN_B,
        ranks=2,
        generators=1,
        tensor_parallel=2,
        generator_memory_share=0.9,
        learner_memory_parts={"all": 50.0},
        weight_bytes=2,
    )
    env = {c.name: c.env["CUDA_VISIBLE_DEVICES"] for c in plan.components}
    assert env == {"judge": "", "learner": "4,5", "generator0": "6,7"}


def test_a_learner_only_node_is_a_valid_plan() -> None:
    plan = plan_recipe(recipe("acereason-7b", "generators=0"), gpus=4)
    assert [c.kind for c in plan.components] == ["judge", "learner"]


def test_the_cpu_plan_has_the_same_shape_without_gpus() -> None:
    plan = plan_recipe(recipe("acereason-7b"), gpus=0).as_json()
    assert plan["gpus"] == 0
    assert [c["kind"] for c in plan["components"]] == ["judge", "learner", *["generator"] * 4]
    assert all(c["gpus"] == [] and c["env"] == {} for c in plan["components"])


def test_the_estimate_shards_what_zero_shards_and_leaves_out_what_is_offloaded() -> None:
    def states(**kwargs: object) -> float:
        parts = learner_memory(
            SEVEN_B, weight_bytes=2, micro_batch_tokens=1, logits_chunk_tokens=1, gradient_checkpointing=True,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        return parts["weights"] + parts["grads"] + parts["optimizer"]

    full = 7.62 * 16  # bf16 weights and grads, fp32 master, Adam's two moments
    assert states(zero_stage=0, ranks=4) == pytest.approx(full, abs=0.05)
    assert states(zero_stage=1, ranks=4) == pytest.approx(7.62 * (4 + 12 / 4), abs=0.05)
    assert states(zero_stage=2, ranks=4) == pytest.approx(7.62 * (2 + 14 / 4), abs=0.05)
    assert states(zero_stage=3, ranks=4) == pytest.approx(full / 4, abs=0.05)
    assert states(zero_stage=3, ranks=4, offload_optimizer=True) == pytest.approx(7.62, abs=0.05)
    checkpointed = learner_memory(
        SEVEN_B, weight_bytes=2, zero_stage=3, ranks=4, micro_batch_tokens=65536, logits_chunk_tokens=1024,
        gradient_checkpointing=True,
    )  # fmt: skip
    not_checkpointed = learner_memory(
        SEVEN_B, weight_bytes=2, zero_stage=3, ranks=4, micro_batch_tokens=65536, logits_chunk_tokens=1024,
        gradient_checkpointing=False,
    )  # fmt: skip
    assert checkpointed["activations"] < not_checkpointed["activations"] / 5


def test_a_run_starts_exactly_its_plan(tmp_path: Path) -> None:
    run = Supervisor(recipe("acereason-7b"), tmp_path, resume=False, max_steps=None, gpus=8)
    assert [c.name for c in run.components] == [c.name for c in run.plan.components]
    for component, placed in zip(run.components, run.plan.components, strict=True):
        assert component.argv == placed.command and component.env == placed.env
    learner = run.learner.argv
    assert learner[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=4"]


def test_dry_run_writes_the_plan_and_prints_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "run", "--dry-run", "--gpus", "8",
         "--recipe", "launch/recipes/acereason-7b.yaml", "--run-dir", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads((run_dir / "plan.json").read_text())
    assert [p.name for p in run_dir.iterdir()] == ["plan.json"]  # nothing else written or started
    assert plan["gpus"] == 8 and len(plan["components"]) == 6
    assert "placement: 8 GPUs of 80 GB" in done.stderr and "learner per GPU: weights" in done.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "launch.cli", "run", "--dry-run", "--gpus", "8", "generators=5",
         "--recipe", "launch/recipes/acereason-7b.yaml", "--run-dir", str(tmp_path / "refused")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "needs 9 GPUs" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_colocated_components_share_a_gpu_within_its_memory() -> None:
    def one_gpu(share: float) -> Plan:
        return place(
            gpus=1,
            visible=["0"],
            gpu_memory_gb=80.0,
            shape=SEVEN_B,
            ranks=1,
            generators=1,
            tensor_parallel=1,
            generator_memory_share=share,
            learner_memory_parts={"all": 30.0},
            weight_bytes=2,
            colocate=True,
        )

    plan = one_gpu(0.3)
    assert {c.name: c.gpus for c in plan.components} == {"judge": [], "learner": [0], "generator0": [0]}
    with pytest.raises(PlanError, match=r"GPU 0: learner 30\.0 \+ generator0 56\.0 = 86\.0 GB > 80\.0 GB"):
        one_gpu(0.7)


def test_an_evaluation_gives_every_gpu_to_generators() -> None:
    """`acerl eval` runs an evaluation process in the learner's place: it trains nothing."""
    plan = plan_recipe(recipe("acereason-7b", "generators=8"), gpus=8, evaluating=True)
    placed = {c.name: c for c in plan.components}
    assert placed["learner"].gpus == [] and placed["learner"].env == {"CUDA_VISIBLE_DEVICES": ""}
    assert [placed[f"generator{g}"].gpus for g in range(8)] == [[g] for g in range(8)]
    with pytest.raises(PlanError, match="needs 12 GPUs"):
        plan_recipe(recipe("acereason-7b", "generators=8"), gpus=8)  # training: 4 ranks + 8
