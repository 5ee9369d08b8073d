"""Weight transfer: a scripted publisher's chunk stream becomes the same tensors, or a clear error."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
import torch

from generator.weight_fetch import FetchError, WeightFetcher, fetch_weights
from generator.weight_set import (
    PREFIX,
    UnsupportedDtype,
    WeightFiles,
    WeightSet,
    WeightSetWriter,
    file_prefix,
    read_safetensors,
    remove_orphans,
    safetensors_files,
)
from proto.sockets import Server
from proto.weights import ALIGN, DTYPES, DType, TensorSpec, WeightManifest, torch_dtype
from tests.generator.scripted import Hold, ScriptedPublisher, tensor_chunks


@pytest.fixture
def publisher() -> Iterator[ScriptedPublisher]:
    live = ScriptedPublisher()
    yield live
    live.close()


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(37, 16, generator=generator),
        "model.layers.0.mlp.down_proj.weight": torch.randn(16, 33, generator=generator).to(torch.bfloat16),
        "model.norm.weight": torch.randn(16, generator=generator).to(torch.float16),
        "model.empty": torch.zeros(0, 4),
    }


def as_dict(weight_set: WeightSet) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in weight_set.tensors()}  # type: ignore[union-attr]


def leftover_files(version: int) -> list[str]:
    prefix = file_prefix(version)  # this process's files only
    return glob.glob(f"/dev/shm/{prefix}*") + glob.glob(f"{tempfile.gettempdir()}/{prefix}*")


def test_chunks_reassemble_to_the_same_tensors(publisher: ScriptedPublisher) -> None:
    tensors = sample_tensors()
    announce = publisher.publish(3, tensor_chunks(3, tensors, chunk_bytes=200))
    weight_set = fetch_weights(publisher.address, 3, "g1", announce=announce, timeout_s=10)
    try:
        got = as_dict(weight_set)
        assert list(got) == list(tensors)
        for name, tensor in tensors.items():
            assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
            assert torch.equal(got[name], tensor), name
        assert all(entry.offset % 64 == 0 for entry in weight_set.entries)
    finally:
        weight_set.close()
    assert not weight_set.path.exists()
    assert publisher.requests[0].generator_id == "g1"


def broken_streams() -> dict[str, tuple[list, str]]:
    chunks = tensor_chunks(7, sample_tensors(), chunk_bytes=300)
    swapped = [*chunks]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    other_version = [c.model_copy(update={"version": 6}) if c.seq == 2 else c for c in chunks]
    reshaped = [c.model_copy(update={"shape": [1, 37 * 16]}) if c.seq == 1 else c for c in chunks]
    gap = [c for c in chunks if c.seq != 1]
    gap = [c.model_copy(update={"seq": i}) for i, c in enumerate(gap)]
    return {
        "out of order": (swapped, "arrived where chunk 1 was due"),
        "wrong version": (other_version, "of version 6, not 7"),
        "shape changes": (reshaped, "earlier chunks"),
        "missing bytes": (gap, "expected byte"),
    }


@pytest.mark.parametrize("case", list(broken_streams()))
def test_a_broken_stream_is_refused_and_leaves_no_file(publisher: ScriptedPublisher, case: str) -> None:
    chunks, message = broken_streams()[case]
    publisher.publish(7, chunks)
    with pytest.raises(FetchError) as error:
        fetch_weights(publisher.address, 7, "g1", timeout_s=10)
    assert error.value.code == "stream"
    assert message in str(error.value)
    assert leftover_files(7) == []


def test_announced_size_must_match(publisher: ScriptedPublisher) -> None:
    announce = publisher.publish(8, tensor_chunks(8, sample_tensors(), chunk_bytes=1000))
    wrong = announce.model_copy(update={"num_tensors": announce.num_tensors + 1})
    with pytest.raises(FetchError, match="announced"):
        fetch_weights(publisher.address, 8, "g1", announce=wrong, timeout_s=10)


def test_a_superseded_version_is_not_found(publisher: ScriptedPublisher) -> None:
    with pytest.raises(FetchError) as error:
        fetch_weights(publisher.address, 2, "g1", timeout_s=10)
    assert error.value.code == "not_found"


def test_busy_and_unavailable_are_retried(publisher: ScriptedPublisher) -> None:
    publisher.publish(4, tensor_chunks(4, sample_tensors(), chunk_bytes=500))
    publisher.errors.extend([("busy", "16 transfers running"), ("unavailable", "not yet published")])
    weight_set = fetch_weights(publisher.address, 4, "g1", timeout_s=10)
    weight_set.close()
    assert len(publisher.requests) == 3


def test_a_silent_publisher_times_out() -> None:
    with Server("tcp://127.0.0.1:*", name="silent") as silent:
        started = time.monotonic()
        with pytest.raises(FetchError) as error:
            fetch_weights(silent.address, 1, "g1", timeout_s=1.5, chunk_timeout_s=0.5)
        assert error.value.code == "timeout"
        assert time.monotonic() - started < 5


def test_fetcher_downloads_in_the_background_and_keeps_the_newest(publisher: ScriptedPublisher) -> None:
    tensors = sample_tensors()
    publisher.publish(1, tensor_chunks(1, tensors, chunk_bytes=100))
    publisher.publish(2, tensor_chunks(2, {k: v * 2 for k, v in tensors.items()}, chunk_bytes=100))
    fetcher = WeightFetcher("g1", timeout_s=10)
    try:
        fetcher.want(1, publisher.address)
        fetcher.want(2, publisher.address)
        fetcher.want(1, publisher.address)  # older than wanted: ignored
        deadline = time.monotonic() + 10
        result = None
        while result is None and time.monotonic() < deadline:
            result = fetcher.take(2)
            time.sleep(0.02)
        assert isinstance(result, WeightSet) and result.version == 2
        got = as_dict(result)
        result.close()
        assert torch.equal(got["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"] * 2)
        # work that still needs the older version hears at once that it will not come
        superseded = fetcher.take(1)
        assert isinstance(superseded, FetchError) and superseded.code == "superseded"
    finally:
        fetcher.close()
    assert leftover_files(1) == [] and leftover_files(2) == []


def test_fetcher_reports_a_failure_and_tries_again_when_asked(publisher: ScriptedPublisher) -> None:
    fetcher = WeightFetcher("g1", timeout_s=5)
    try:
        fetcher.want(5, publisher.address)
        deadline = time.monotonic() + 10
        result = None
        while result is None and time.monotonic() < deadline:
            result = fetcher.take(5)
            time.sleep(0.02)
        assert isinstance(result, FetchError) and result.code == "not_found"
        publisher.publish(5, tensor_chunks(5, sample_tensors(), chunk_bytes=1000))
        fetcher.want(5, publisher.address)
        result = None
        while result is None and time.monotonic() < deadline + 10:
            result = fetcher.take(5)
            time.sleep(0.02)
        assert isinstance(result, WeightSet)
        result.close()
        assert publisher.peers[0] != publisher.peers[-1]  # a failed transfer's connection is not kept
    finally:
        fetcher.close()


def test_files_of_dead_processes_are_removed() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    orphan = f"{shm}/{PREFIX}{pid}-v9-x"  # named as that process named its files
    mine = f"{shm}/{file_prefix(9)}x"
    for path in (orphan, mine):
        open(path, "wb").close()
    try:
        removed = [str(p) for p in remove_orphans()]
        assert orphan in removed and not os.path.exists(orphan)
        assert os.path.exists(mine)
    finally:
        for path in (orphan, mine):
            if os.path.exists(path):
                os.unlink(path)


def wait_for(predicate, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while (value := predicate()) is None or value is False:
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
    return value


def test_arrivals_show_complete_tensors_before_the_transfer_ends(publisher: ScriptedPublisher) -> None:
    tensors = sample_tensors()
    names = list(tensors)
    chunks = tensor_chunks(6, tensors, chunk_bytes=256)
    first = sum(c.name == names[0] for c in chunks)
    assert sum(c.name == names[1] for c in chunks) > 1
    announce = publisher.publish(6, chunks)
    hold = publisher.holds[6] = Hold(after=first + 1)  # the first tensor and part of the second
    fetcher = WeightFetcher("g1", timeout_s=10)
    try:
        fetcher.want(6, publisher.address, announce)
        assert hold.reached.wait(10)
        arrivals = wait_for(lambda: fetcher.arriving(6))
        arrived = arrivals.wait(0, min_bytes=1, timeout_s=5)
        assert [e.name for e in arrived] == names[:1]
        assert arrivals.wait(1, min_bytes=1, timeout_s=0.2) == []  # the second is incomplete
        assert not arrivals.ended and fetcher.take(6) is None
        expected = tensors[names[0]].contiguous().view(torch.uint8).flatten().numpy().tobytes()
        with open(arrivals.path, "rb") as handle:  # readable while the rest still arrives
            handle.seek(arrived[0].offset)
            assert handle.read(arrived[0].nbytes) == expected
        hold.release.set()
        result = wait_for(lambda: fetcher.take(6))
        assert isinstance(result, WeightSet) and result.path == arrivals.path
        assert arrivals.ended and not arrivals.failed
        assert [e.name for e in arrivals.wait(0, 1, 0)] == list(tensors)
        result.close()
    finally:
        hold.release.set()
        fetcher.close()
    assert leftover_files(6) == []


def test_the_next_version_is_written_into_the_kept_file(publisher: ScriptedPublisher) -> None:
    tensors = sample_tensors()
    fetcher = WeightFetcher("g1", timeout_s=10)
    try:
        publisher.publish(1, tensor_chunks(1, tensors, chunk_bytes=100))
        fetcher.want(1, publisher.address)
        first = wait_for(lambda: fetcher.take(1))
        assert isinstance(first, WeightSet)
        inode = first.path.stat().st_ino
        first.close()
        assert first.path.exists()  # kept for the next version
        doubled = {k: v * 2 for k, v in tensors.items()}
        publisher.publish(2, tensor_chunks(2, doubled, chunk_bytes=100))
        fetcher.want(2, publisher.address)
        second = wait_for(lambda: fetcher.take(2))
        assert isinstance(second, WeightSet)
        assert second.path.stat().st_ino == inode and not first.path.exists()
        assert len(set(publisher.peers)) == 1  # and over the same connection
        assert second.path.name.startswith(file_prefix(2))
        got = as_dict(second)
        for name, tensor in doubled.items():
            assert torch.equal(got[name], tensor), name
        second.close()
    finally:
        fetcher.close()
    assert leftover_files(1) == [] and leftover_files(2) == []


def test_a_failed_transfer_keeps_its_file_while_a_loader_reads_it() -> None:
    chunks = tensor_chunks(3, sample_tensors(), chunk_bytes=300)
    writer = WeightSetWriter(3)
    for chunk in chunks[:3]:
        writer.write(chunk)
    arrivals = writer.arrivals
    with arrivals.pinned() as readable:
        assert readable
        writer.discard()  # the transfer broke while a loader reads what arrived
        assert arrivals.path.exists() and arrivals.failed and arrivals.ended
        assert arrivals.wait(0, 1, 0) == []  # nothing more to load from a failed transfer
    assert not arrivals.path.exists()
    with arrivals.pinned() as readable:
        assert not readable


def test_a_laid_out_stream_is_written_in_place_and_completes_tensor_by_tensor() -> None:
    tensors = sample_tensors()
    specs = [
        TensorSpec(name=name, dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape))  # type: ignore[arg-type]
        for name, t in tensors.items()
    ]
    manifest = WeightManifest(version=4, tensors=specs)
    offsets, total = manifest.layout()
    assert all(offset % ALIGN == 0 for offset in offsets)
    ends = [offset + spec.nbytes for offset, spec in zip(offsets, specs, strict=True)]
    assert all(end <= start for end, start in zip(ends, offsets[1:], strict=False)) and total == ends[-1]

    writer = WeightSetWriter(4)
    assert writer.lay_out(manifest) == total
    with pytest.raises(ValueError, match="came laid out"):
        writer.write(tensor_chunks(4, tensors, chunk_bytes=300)[0])
    image = bytearray(total)  # what the learner sends: each tensor at its offset
    for offset, tensor in zip(offsets, tensors.values(), strict=True):
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        image[offset : offset + len(raw)] = raw
    cut = ends[0] + 1  # into the second tensor: only the first is complete
    writer.view(0, cut)[:] = image[:cut]
    writer.filled_to(cut)
    assert [e.name for e in writer.arrivals.wait(0, 0, 0)] == [specs[0].name]
    with pytest.raises(ValueError, match="incomplete"):
        writer.finish()
    writer.view(cut, total - cut)[:] = image[cut:]
    writer.filled_to(total)
    # the empty tensor at the end counts as it is reached; the set holds the same tensors
    assert [e.name for e in writer.arrivals.wait(0, 0, 0)] == list(tensors)
    weight_set = writer.finish()
    for name, tensor in as_dict(weight_set).items():
        assert tensor.dtype == tensors[name].dtype and torch.equal(tensor, tensors[name]), name
    weight_set.close()
    assert leftover_files(4) == []


def test_a_model_directory_reads_into_a_kept_file(tmp_path: Path) -> None:
    """What a generator loads at start to warm its reload path: every tensor, bit for bit."""
    from safetensors.torch import save_file

    tensors = {
        "a.weight": torch.randn(3, 5),
        "b.weight": torch.randn(7).to(torch.bfloat16),
        "c.scale": torch.tensor(2.5),
        "d.empty": torch.zeros(0, 4),
    }
    save_file(dict(list(tensors.items())[:2]), str(tmp_path / "model-00001.safetensors"))
    save_file(dict(list(tensors.items())[2:]), str(tmp_path / "model-00002.safetensors"))
    files = WeightFiles(keep=1)
    try:
        weight_set = read_safetensors(sorted(tmp_path.glob("*.safetensors")), 0, files)
        assert weight_set.total_bytes >= 3 * 5 * 4 + 7 * 2 + 4
        read = {name: tensor.clone() for name, tensor in weight_set.tensors()}  # type: ignore[union-attr]
        path = weight_set.path
        weight_set.close()
        assert read.keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape, name
            assert torch.equal(read[name], tensor), name
        assert path.exists(), "the file is kept for the next version"
        assert files.open(1).capacity >= weight_set.total_bytes
    finally:
        files.close()
    assert not path.exists()


def test_a_model_directory_with_a_dtype_no_stream_carries_is_refused_before_writing(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"q.weight": torch.ones(4, dtype=torch.int8)}, str(tmp_path / "model.safetensors"))
    before = set(glob.glob(f"{tempfile.gettempdir()}/*")) | set(glob.glob("/dev/shm/*"))
    with pytest.raises(UnsupportedDtype, match=r"q\.weight is I8"):
        read_safetensors([tmp_path / "model.safetensors"], 0)
    after = set(glob.glob(f"{tempfile.gettempdir()}/*")) | set(glob.glob("/dev/shm/*"))
    assert not {p for p in after - before if "acerl-weights" in p}


def test_the_safetensors_of_a_model_directory_are_those_its_index_names(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name in [*shards, "consolidated.safetensors"]:
        save_file({"w": torch.ones(2)}, str(tmp_path / name))
    assert [p.name for p in safetensors_files(tmp_path)] == ["consolidated.safetensors", *shards]
    weight_map = {"a": shards[1], "b": shards[0], "c": shards[1]}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert [p.name for p in safetensors_files(tmp_path)] == shards


def test_the_dtype_table_names_every_wire_dtype_as_torch_and_safetensors_do(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    assert set(DTYPES) == set(get_args(DType))
    tensors = {name: torch.zeros(3, dtype=torch_dtype(name)) for name in DTYPES}
    save_file(tensors, str(tmp_path / "all.safetensors"))
    with safe_open(str(tmp_path / "all.safetensors"), framework="pt") as handle:
        for name, info in DTYPES.items():
            assert tensors[name].element_size() == info.itemsize, name
            assert handle.get_slice(name).get_dtype() == info.safetensors, name
