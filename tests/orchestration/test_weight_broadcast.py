"""The collective weight path with real gloo groups, a real publisher and real fetchers: members
get each version in one broadcast, a late joiner gets the current weights and then the next
broadcasts, and a member killed mid-broadcast wedges nobody."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch

from generator.weight_broadcast import BroadcastReceiver
from generator.weight_fetch import WeightFetcher
from generator.weight_set import WeightSet
from learner.training.broadcaster import WeightBroadcaster
from learner.training.publisher import WeightPublisher
from proto.collective import process_group, receive_manifest
from proto.weights import ALIGN, WeightAnnounce

TIMEOUT_S = 5.0


def weights(version: int, size: int = 3000) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(version)
    return {
        "embed.weight": torch.randn(size, generator=generator),
        "empty.bias": torch.zeros(0),
        "layer.weight": torch.randn(7, 11, generator=generator).to(torch.bfloat16),
        "head.weight": torch.randn(size // 3, generator=generator),
    }


def fetcher(name: str) -> WeightFetcher:
    return WeightFetcher(name, timeout_s=30, broadcast=BroadcastReceiver(name, TIMEOUT_S))


def take(fetcher: WeightFetcher, version: int, timeout_s: float = 30.0) -> WeightSet:
    deadline = time.monotonic() + timeout_s
    while (result := fetcher.take(version)) is None:
        assert time.monotonic() < deadline, f"{fetcher.generator_id}: no v{version} in {timeout_s} s"
        time.sleep(0.01)
    assert isinstance(result, WeightSet), result
    return result


def assert_holds(weight_set: WeightSet, expected: dict[str, torch.Tensor]) -> None:
    got = {name: torch.as_tensor(value).clone() for name, value in weight_set.tensors()}
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    weight_set.close()


def publish(publisher: WeightPublisher, version: int) -> tuple[WeightAnnounce, dict[str, torch.Tensor]]:
    tensors = weights(version)
    return publisher.publish(version, {k: v.clone() for k, v in tensors.items()}), tensors


def test_members_get_each_version_by_broadcast_and_a_late_joiner_catches_up() -> None:
    broadcaster = WeightBroadcaster(bucket_bytes=1000, timeout_s=TIMEOUT_S)  # many buckets, split tensors
    fetchers = [fetcher("g0"), fetcher("g1")]
    with WeightPublisher(broadcaster=broadcaster) as publisher:
        announce, expected = publish(publisher, 1)
        assert announce.group is None  # nobody has asked yet: everyone fetches chunks, and asks
        for f in fetchers:
            f.want(1, publisher.address, announce)
        for f in fetchers:
            assert_holds(take(f, 1), expected)
        assert publisher.transfers_done == 2

        announce, expected = publish(publisher, 2)
        assert announce.group is not None and sorted(announce.group.members) == ["g0", "g1"]
        for f in fetchers:
            f.want(2, publisher.address, announce)
        for f in fetchers:
            assert_holds(take(f, 2), expected)
        assert publisher.transfers_done == 2  # no chunks: both came in the one broadcast
        first_group = announce.group.group_id

        late = fetcher("g2")  # joins now: the current version over ZeroMQ, then broadcasts
        late.want(2, publisher.address, announce)
        assert_holds(take(late, 2), expected)
        fetchers.append(late)

        announce, expected = publish(publisher, 3)
        assert (
            announce.group is not None
            and announce.group.members[2] == "g2"
            and len(announce.group.members) == 3
        )
        assert announce.group.group_id != first_group
        for f in fetchers:
            f.want(3, publisher.address, announce)
        for f in fetchers:
            assert_holds(take(f, 3), expected)
        assert publisher.transfers_done == 3
        deadline = time.monotonic() + TIMEOUT_S
        while broadcaster.sent < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (broadcaster.sent, broadcaster.failed) == (2, 0)
    for f in fetchers:
        f.close()


@pytest.mark.parametrize("bucket_bytes", [7, ALIGN, 1000, 1 << 20])
def test_a_broadcast_lands_in_the_weight_file_whatever_the_bucket_size(bucket_bytes: int) -> None:
    """Buckets smaller than the gap between two tensors, one bucket per alignment step, tensors
    split across buckets, and the whole version in one bucket."""
    broadcaster = WeightBroadcaster(bucket_bytes=bucket_bytes, timeout_s=TIMEOUT_S)
    member = fetcher("g0")
    with WeightPublisher(broadcaster=broadcaster) as publisher:
        for version in (1, 2):  # over ZeroMQ (asking to join), then by broadcast
            announce, expected = publish(publisher, version)
            assert (announce.group is not None) == (version == 2)
            member.want(version, publisher.address, announce)
            received = take(member, version)
            assert all(entry.offset % ALIGN == 0 for entry in received.entries)
            assert_holds(received, expected)
        assert publisher.transfers_done == 1
    member.close()


def _join_and_die(announce_json: str) -> None:
    """A member that joins the group, reads the manifest, and is killed before the bytes."""
    announce = WeightAnnounce.model_validate_json(announce_json)
    assert announce.group is not None
    pg = process_group(announce.group, announce.group.members.index("doomed") + 1, TIMEOUT_S)
    receive_manifest(pg, TIMEOUT_S)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_a_member_killed_mid_broadcast_wedges_nobody() -> None:
    broadcaster = WeightBroadcaster(bucket_bytes=1 << 16, timeout_s=TIMEOUT_S)
    survivor = fetcher("g0")
    with WeightPublisher(broadcaster=broadcaster) as publisher:
        announce, expected = publish(publisher, 1)
        survivor.want(1, publisher.address, announce)
        assert_holds(take(survivor, 1), expected)
        broadcaster.join("doomed")  # as its own chunk fetch would have asked

        big = {"embed.weight": torch.randn(4_000_000)}  # 16 MB: many buckets after the manifest
        announce = publisher.publish(2, {k: v.clone() for k, v in big.items()})
        assert announce.group is not None and announce.group.members == ["g0", "doomed"]
        doomed = multiprocessing.get_context("spawn").Process(
            target=_join_and_die, args=(announce.model_dump_json(),)
        )
        doomed.start()
        started = time.monotonic()
        survivor.want(2, publisher.address, announce)
        assert_holds(take(survivor, 2, timeout_s=60), big)  # by broadcast, or over ZeroMQ once it failed
        doomed.join(30)
        assert doomed.exitcode == -signal.SIGKILL
        deadline = time.monotonic() + 4 * TIMEOUT_S
        while broadcaster.failed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broadcaster.failed == 1, "the broadcast to a dead member must fail, not hang"
        took = time.monotonic() - started
        print(f"killed member: the broadcast failed and the survivor had v2 after {took:.1f} s")

        announce, expected = publish(publisher, 3)  # a new group, without the dead member
        assert announce.group is not None and announce.group.members == ["g0"]
        survivor.want(3, publisher.address, announce)
        assert_holds(take(survivor, 3), expected)
        deadline = time.monotonic() + TIMEOUT_S
        while broadcaster.sent < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broadcaster.sent == 1
    survivor.close()
