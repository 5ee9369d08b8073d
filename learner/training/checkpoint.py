"""Atomic checkpoints: everything needed to continue a run bit for bit, or nothing.

Layout of `<root>/step_000000042/`:
    engine/         DeepSpeed state: model, optimizer, LR scheduler (one shard per rank)
    hf/             the model in Hugging Face format, with the tokenizer (any tool can load it)
    rng_rank<R>.pt  torch / CUDA / numpy / python RNG states of each rank
    state.json      step, policy version, optimizer steps, and the caller's `extra_state`
    COMPLETE.json   written last: every file's size; a directory without it is not a checkpoint

A checkpoint is written under `.tmp-...`, fsynced, then renamed into place, so a crash mid-save
leaves the previous one untouched; `find_latest` takes the newest directory whose manifest
matches its files and ignores the rest.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
import torch

log = structlog.get_logger("learner.checkpoint")

FORMAT = 1
MANIFEST = "COMPLETE.json"
STATE = "state.json"
NAME = re.compile(r"^step_(\d{9})$")
TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.jinja)$"
)


class CheckpointEngine(Protocol):
    def save_state(self, directory: Path) -> None: ...
    def load_state(self, directory: Path) -> None: ...
    def save_pretrained(self, directory: Path) -> None: ...


@dataclass
class CheckpointState:
    path: Path
    step: int
    policy_version: int
    optimizer_steps: int
    extra_state: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):  # files before their directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def save(
    root: Path,
    engine: CheckpointEngine,
    *,
    step: int,
    policy_version: int,
    optimizer_steps: int,
    extra_state: dict[str, Any] | None = None,
    hf_model: bool = True,
    tokenizer_dir: Path | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint `step` atomically; every rank calls this. Returns its final path."""
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".tmp-{name}"
    try:
        state_text = json.dumps(
            {
                "format": FORMAT,
                "step": step,
                "policy_version": policy_version,
                "optimizer_steps": optimizer_steps,
                "time": time.time(),
                "extra_state": extra_state or {},
            },
            indent=1,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra_state: must be JSON-serialisable ({exc})") from None
    started = time.perf_counter()
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash mid-save
        tmp.mkdir()
    _barrier()
    engine.save_state(tmp)
    torch.save(rng_state(), tmp / f"rng_rank{_rank()}.pt")
    if hf_model:
        engine.save_pretrained(tmp / "hf")
    _barrier()
    if _rank() == 0:
        if hf_model and tokenizer_dir is not None:
            for source in tokenizer_dir.iterdir():
                if source.is_file() and TOKENIZER_FILES.match(source.name):
                    shutil.copy2(source, tmp / "hf" / source.name)
        (tmp / STATE).write_text(state_text)
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": _manifest(tmp)}))
        _fsync_tree(tmp)  # everything durable before the rename makes it visible
        old = None
        if final.exists():  # the same step saved again (e.g. a final save right after a periodic one)
            old = root / f".tmp-old-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        prune(root, keep_last)
        log.info(
            "checkpoint_saved", path=str(final), step=step, seconds=round(time.perf_counter() - started, 3)
        )
    _barrier()
    return final


def is_complete(path: Path) -> bool:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        return manifest.get("format") == FORMAT and all(
            (path / rel).is_file() and (path / rel).stat().st_size == size for rel, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = NAME.match(path.name)
        if match is None or not path.is_dir():
            continue
        if is_complete(path):
            found.append((int(match.group(1)), path))
        else:
            log.warning("checkpoint_incomplete", path=str(path))
    return [path for _, path in sorted(found)]


def find_latest(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def prune(root: Path, keep_last: int) -> None:
    for path in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load(path: Path, engine: CheckpointEngine) -> CheckpointState:
    """Restore engine state and this rank's RNG from a complete checkpoint."""
    if not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no valid {MANIFEST})")
    state = json.loads((path / STATE).read_text())
    engine.load_state(path)
    rng_file = path / f"rng_rank{_rank()}.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    log.info("checkpoint_loaded", path=str(path), step=state["step"], policy_version=state["policy_version"])
    return CheckpointState(
        path=path,
        step=state["step"],
        policy_version=state["policy_version"],
        optimizer_steps=state["optimizer_steps"],
        extra_state=state["extra_state"],
    )
