"""Resume across real process deaths: SIGKILL after a checkpoint, and SIGKILL in the middle of one.

`python -m learner demo` trains on a task sampled from the policy itself (torch's RNG), so an
exact continuation needs the weights, Adam's moments, the scheduler, the step counters and the
RNG state all restored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.config import LearnerConfig
from learner.training import checkpoint
from learner.training.trainer import Learner

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DIST_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
TIMING = {"step_s", "tokens_per_s", "publish_s"}


def child_env() -> dict[str, str]:
    # This test process may hold a torch.distributed store; each child must pick its own port.
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def demo(run_dir: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "learner", "demo", "--steps", "6", "--log-level", "warning",
        f"run_dir={run_dir}", f"model.path={model_dir}", "checkpoint.every_steps=3",
        "metrics.tensorboard=false", "optim.warmup_steps=2", *extra,
    ]  # fmt: skip


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_sigkill_then_resume_equals_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(demo(straight, tiny_model_dir))

    proc = subprocess.Popen(
        demo(killed, tiny_model_dir),
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = killed / "checkpoints" / checkpoint.checkpoint_name(3)
    deadline = time.monotonic() + 240
    while not checkpoint.is_complete(first):
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint at step 3 within 240 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.find_latest(killed / "checkpoints") == first, (
        "killed too late: step 6 was already saved"
    )

    run([*demo(killed, tiny_model_dir), "--resume"])

    last = checkpoint.checkpoint_name(6)
    want = load_file(straight / "checkpoints" / last / "hf" / "model.safetensors")
    got = load_file(killed / "checkpoints" / last / "hf" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name  # bit for bit
    engine_file = "engine/mp_rank_00_model_states.pt"
    want_opt = torch.load(straight / "checkpoints" / last / engine_file, weights_only=False)["optimizer"]
    got_opt = torch.load(killed / "checkpoints" / last / engine_file, weights_only=False)["optimizer"]
    for index, moments in want_opt["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, got_opt["state"][index][key]), (index, key)
    # The metrics of the resumed run hold each step once, identical to the uninterrupted run's.
    assert records(killed) == records(straight)
    assert [r["step"] for r in records(killed)] == list(range(6))


CRASHING_SAVE = """
import os, signal, sys
from learner.tiny.bandit import TargetTokenBandit
from learner.config import LearnerConfig
from learner.training.grpo import select_groups
from learner.training.trainer import Learner

cfg = LearnerConfig.model_validate({"run_dir": sys.argv[1], "model": {"path": sys.argv[2]}})
learner = Learner(cfg)
task = TargetTokenBandit(learner.engine.module.config.vocab_size, prompts=4, n=4)
def step():
    groups = task.sample(learner.engine.module, learner.version)
    learner.train_step(select_groups(groups, drop_zero_variance=True))

step()
learner.save_checkpoint({"good": True})
step()
write_hf = learner.engine.save_pretrained

def dying(directory):
    write_hf(directory)  # engine state and model files are on disk...
    os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies before manifest and rename

learner.engine.save_pretrained = dying
learner.save_checkpoint({"good": False})
"""


def test_sigkill_mid_save_leaves_the_last_good_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, str(run_dir), str(tiny_model_dir)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    root = run_dir / "checkpoints"
    assert (root / ".tmp-step_000000002" / "hf").is_dir()  # the save was under way
    assert checkpoint.find_latest(root) == root / checkpoint.checkpoint_name(1)

    learner = Learner(LearnerConfig.model_validate({"run_dir": run_dir, "model": {"path": tiny_model_dir}}))
    state = learner.resume()
    assert state is not None and (state.step, state.extra_state) == (1, {"good": True})
