"""The weight publisher over real ZeroMQ sockets: exact tensors, versions, interleaved transfers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch

from generator.weight_set import WeightSetWriter
from learner.training.publisher import WeightPublisher, weight_chunks
from proto.curve import CurveClientKeys, CurveServerKeys, generate_keys
from proto.rollout import WorkAborted
from proto.sockets import Client, RemoteError
from proto.weights import WeightChunk, WeightRequest


def sample_tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(64, 48, generator=g),  # several chunks
        "model.norm.weight": torch.randn(48, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(7, 5, generator=g).half(),
        "counter": torch.arange(3, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }


def reassemble(version: int, chunks: Iterable[WeightChunk]) -> dict[str, torch.Tensor]:
    """The tensors a generator rebuilds from `chunks` (its writer checks order and coverage)."""
    writer = WeightSetWriter(version)
    for chunk in chunks:
        writer.write(chunk)
    weight_set = writer.finish()
    try:
        return {name: tensor.clone() for name, tensor in weight_set.tensors()}  # type: ignore[union-attr]
    finally:
        weight_set.close()


def received(client: Client, request_id: bytes, timeout_ms: int = 10_000) -> Iterator[WeightChunk]:
    """The chunks answering `request_id`, up to the last one."""
    while True:
        reply = client.recv(timeout_ms)
        assert reply is not None, "no chunk within the timeout"
        assert reply.request_id == request_id
        assert isinstance(reply.message, WeightChunk), reply.message
        yield reply.message
        if reply.message.last:
            return


def fetch(client: Client, version: int) -> dict[str, torch.Tensor]:
    request_id = client.send(WeightRequest(version=version, generator_id="gen-test"))
    return reassemble(version, received(client, request_id))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        raw_a, raw_b = (t.contiguous().reshape(-1).view(torch.uint8) for t in (a[name], b[name]))
        assert torch.equal(raw_a, raw_b), name


def test_chunks_cover_every_byte_in_order() -> None:
    tensors = sample_tensors(0)
    chunks = list(weight_chunks(tensors, version=3, chunk_bytes=1024))
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks].count(True) == 1 and chunks[-1].last
    assert sum(c.name == "model.embed_tokens.weight" for c in chunks) == 12  # 64*48*4 bytes / 1024
    assert_bitwise_equal(reassemble(3, chunks), tensors)


def test_generator_fetches_the_published_version() -> None:
    with WeightPublisher(chunk_bytes=1024) as publisher:
        tensors = sample_tensors(1)
        announce = publisher.publish(1, tensors)
        assert announce.address == publisher.address and announce.num_tensors == 5
        assert announce.total_bytes == sum(t.numel() * t.element_size() for t in tensors.values())
        with Client(publisher.address) as client:
            assert_bitwise_equal(fetch(client, 1), tensors)


def test_versions_and_bad_requests_get_clear_errors() -> None:
    with WeightPublisher(chunk_bytes=1024) as publisher, Client(publisher.address) as client:
        with pytest.raises(RemoteError, match="unavailable"):
            client.request(WeightRequest(version=0, generator_id="g"), timeout_ms=5000)
        publisher.publish(4, sample_tensors(4))
        with pytest.raises(RemoteError, match="not_found: version 3 superseded by 4"):
            client.request(WeightRequest(version=3, generator_id="g"), timeout_ms=5000)
        with pytest.raises(RemoteError, match="unavailable: version 5"):
            client.request(WeightRequest(version=5, generator_id="g"), timeout_ms=5000)
        with pytest.raises(RemoteError, match="bad_request"):
            client.request(WorkAborted(generator_id="g", work_ids=[], reason="x"), timeout_ms=5000)
        with pytest.raises(ValueError, match="not newer"):
            publisher.publish(4, sample_tensors(5))


def test_transfers_interleave_and_keep_their_snapshot() -> None:
    """Two generators fetch at once; a version published mid-transfer does not change the
    bytes of the transfer in progress, and later requests get the new one."""
    with WeightPublisher(chunk_bytes=1024) as publisher:
        v1, v2 = sample_tensors(10), sample_tensors(20)
        publisher.publish(1, v1)
        with Client(publisher.address) as a, Client(publisher.address) as b:
            id_a = a.send(WeightRequest(version=1, generator_id="a"))
            id_b = b.send(WeightRequest(version=1, generator_id="b"))
            first_a, first_b = a.recv(10_000), b.recv(10_000)  # both transfers under way
            assert first_a is not None and first_a.request_id == id_a
            assert first_b is not None and first_b.request_id == id_b
            publisher.publish(2, v2)
            results = {}
            for name, client, request_id, first in (("a", a, id_a, first_a), ("b", b, id_b, first_b)):
                assert isinstance(first.message, WeightChunk) and not first.message.last
                results[name] = reassemble(1, [first.message, *received(client, request_id)])
            assert_bitwise_equal(results["a"], v1)
            assert_bitwise_equal(results["b"], v1)
            assert_bitwise_equal(fetch(a, 2), v2)
        deadline = time.monotonic() + 10  # the counter moves just after the last chunk leaves
        while publisher.transfers_done < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert publisher.transfers_done == 3


def test_unsupported_dtype_is_refused_at_publish() -> None:
    with WeightPublisher() as publisher, pytest.raises(ValueError, match=r"w: dtype torch\.complex64"):
        publisher.publish(1, {"w": torch.zeros(2, dtype=torch.complex64)})


def test_curve_encrypted_transfer(tmp_path: Path) -> None:
    server_public, server_secret = generate_keys(tmp_path, "learner")
    tensors = sample_tensors(7)
    with WeightPublisher(chunk_bytes=1024, curve=CurveServerKeys(server_secret)) as publisher:
        publisher.publish(1, tensors)
        with Client(publisher.address, curve=CurveClientKeys(server_public)) as client:
            assert_bitwise_equal(fetch(client, 1), tensors)
