"""The codec: every message survives a round trip; every bad frame gets one clear error."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import (
    PROTOCOL_VERSION,
    REGISTRY,
    Completion,
    JudgeRequest,
    Message,
    ProtocolError,
    RolloutGroup,
    SamplingParams,
    Verdict,
    WeightChunk,
    WorkItem,
    decode,
    encode,
)
from tests.proto.strategies import MESSAGES, any_message

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_registered_message_has_a_strategy() -> None:
    assert set(REGISTRY.values()) == set(MESSAGES)


@pytest.mark.parametrize("cls", sorted(MESSAGES, key=lambda c: c.TYPE), ids=lambda c: c.TYPE)
def test_round_trip(cls: type[Message]) -> None:
    @SETTINGS
    @given(MESSAGES[cls])
    def check(message: Message) -> None:
        frames = encode(message)
        decoded = decode(frames)
        assert type(decoded) is cls
        assert decoded == message
        assert [bytes(f) for f in encode(decoded)] == [bytes(f) for f in frames]

    check()


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_error(frame: bytes) -> None:
    try:
        decode(frame)
    except ProtocolError as exc:
        assert exc.field and exc.problem


@SETTINGS
@given(any_message, st.data())
def test_truncated_frames_are_rejected(message: Message, data: st.DataObject) -> None:
    envelope, *buffers = encode(message)
    cut = data.draw(st.integers(0, len(envelope) - 1))
    with pytest.raises(ProtocolError):
        decode([envelope[:cut], *buffers])


@SETTINGS
@given(any_message, st.integers(0, 10**6).filter(lambda v: v != PROTOCOL_VERSION))
def test_wrong_protocol_version(message: Message, version: int) -> None:
    envelope, *buffers = encode(message)
    body = msgpack.unpackb(envelope)[2]
    with pytest.raises(ProtocolError) as err:
        decode([msgpack.packb([version, message.TYPE, body]), *buffers])
    assert err.value.field == "protocol_version"
    assert str(version) in str(err.value)


def _math_item() -> WorkItem:
    return WorkItem(
        id="w1",
        kind="math",
        stage=0,
        policy_version=3,
        prompt="1+1?",
        sampling=SamplingParams(n=4, max_tokens=16),
        lease_s=30,
        answer="2",
    )


def _frame(type_name: str, body: dict, version: int = PROTOCOL_VERSION) -> bytes:
    return msgpack.packb([version, type_name, body], use_bin_type=True)


def test_oversized_frame_names_the_limit() -> None:
    [frame] = encode(_math_item())
    with pytest.raises(ProtocolError) as err:
        decode(frame, max_bytes=len(frame) - 1)
    assert err.value.field == "frame"
    assert "exceeds the limit" in err.value.problem
    assert decode(frame, max_bytes=len(frame)) == _math_item()


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda b: b.pop("stage"), "work_item.stage", "required"),
        (lambda b: b.update(stage="zero"), "work_item.stage", "integer"),
        (lambda b: b.update(stage=True), "work_item.stage", "integer"),
        (lambda b: b.update(kind="poetry"), "work_item.kind", "math"),
        (lambda b: b.update(surprise=1), "work_item.surprise", "Extra"),
        (lambda b: b["sampling"].update(n=0), "work_item.sampling.n", "greater than or equal"),
        (lambda b: b["sampling"].update(temperature="hot"), "work_item.sampling.temperature", "number"),
        (lambda b: b.update(prompt_token_ids=b"\x01\x02\x03"), "work_item.prompt_token_ids", "whole number"),
        (lambda b: b.update(prompt=None), "work_item", "exactly one of prompt"),
        (lambda b: b.update(answer=None), "work_item", "answer"),
        (lambda b: b.update(lease_s=float("nan")), "work_item.lease_s", "finite"),
    ],
)
def test_bad_fields_are_named(mutate, field: str, words: str) -> None:
    body = _math_item().model_dump()
    mutate(body)
    with pytest.raises(ProtocolError) as err:
        decode(_frame("work_item", body))
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [(lambda b: b.pop("temperature"), "required"), (lambda b: b.update(temperature=-0.5), "greater")],
)
def test_a_rollout_group_names_its_sampling_temperature(mutate, words: str) -> None:
    group = RolloutGroup(
        work_id="0/0/p",
        kind="math",
        stage=0,
        policy_version=1,
        temperature=0.6,
        generator_id="g",
        prompt_token_ids=[1],
        completions=[
            Completion(
                token_ids=[2],
                logprobs=[-0.1],
                finish_reason="stop",
                truncated=False,
                reward=1.0,
                judge_status="correct",
            )
        ],
    )
    assert decode(encode(group)).temperature == 0.6
    body = group.model_dump()
    mutate(body)
    with pytest.raises(ProtocolError) as err:
        decode(_frame("rollout_group", body))
    assert err.value.field == "rollout_group.temperature"
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (msgpack.packb({"v": 1}), "frame"),
        (msgpack.packb([PROTOCOL_VERSION, "work_item"]), "frame"),
        (msgpack.packb(["1", "work_item", {}]), "protocol_version"),
        (msgpack.packb([PROTOCOL_VERSION, "no_such_type", {}]), "type"),
        (msgpack.packb([PROTOCOL_VERSION, 7, {}]), "type"),
        (msgpack.packb([PROTOCOL_VERSION, "work_item", [1, 2]]), "work_item"),
        (b"\xc1", "frame"),  # a byte msgpack never uses
        (msgpack.packb([PROTOCOL_VERSION, "ack", {}]) + b"\x00", "frame"),  # trailing bytes
        (b"\x91" * 100_000, "frame"),  # nesting deep enough to exhaust a recursive parser
    ],
)
def test_malformed_envelopes(frame: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(frame)
    assert err.value.field == field


def test_semantic_rules() -> None:
    with pytest.raises(ValueError, match="logprobs"):
        Completion(
            token_ids=[1, 2],
            logprobs=[-0.5],
            finish_reason="stop",
            truncated=False,
            reward=0.0,
            judge_status="wrong_answer",
        )
    with pytest.raises(ValueError, match="truncated"):
        Completion(
            token_ids=[1],
            logprobs=[-0.5],
            finish_reason="length",
            truncated=False,
            reward=0.0,
            judge_status="wrong_answer",
        )
    with pytest.raises(ValueError, match="contradicts"):
        Verdict(id="a", reward=1, status="wrong_answer")
    with pytest.raises(ValueError, match="tests"):
        JudgeRequest(id="a", kind="code", response="x", tests=[])
    with pytest.raises(ValueError, match="overrun"):
        WeightChunk(
            version=1, seq=0, name="w", dtype="float32", shape=[2], offset=4, data=b"\0" * 8, last=True
        )


def test_arrays_travel_as_raw_bytes() -> None:
    tokens = np.arange(32_768, dtype=np.int32)
    item = WorkItem(
        id="w",
        kind="math",
        stage=0,
        policy_version=0,
        prompt_token_ids=tokens,
        sampling=SamplingParams(n=1, max_tokens=1),
        lease_s=1,
        answer="0",
    )
    envelope, tokens_frame = encode(item)  # large arrays travel in a frame of their own
    assert bytes(tokens_frame) == tokens.astype("<i4").tobytes()
    assert np.array_equal(decode([envelope, tokens_frame]).prompt_token_ids, tokens)
    small = item.model_copy(update={"prompt_token_ids": tokens[:100]})
    [frame] = encode(small)
    assert tokens[:100].astype("<i4").tobytes() in frame  # one msgpack bin, not 100 integers


def test_weight_chunks_are_read_in_place() -> None:
    data = np.random.default_rng(0).random(1 << 18, dtype=np.float32)
    chunk = WeightChunk(
        version=2,
        seq=0,
        name="w",
        dtype="float32",
        shape=[1 << 18],
        offset=0,
        data=memoryview(data).cast("B"),
        last=True,
    )
    frames = encode(chunk)
    assert len(frames) == 2
    received = [bytes(frame) for frame in frames]
    decoded = decode(received)
    assert isinstance(decoded.data, memoryview) and decoded.data.obj is received[1]
    assert np.array_equal(np.frombuffer(decoded.data, dtype=np.float32), data)


def test_frame_references_are_checked() -> None:
    chunk = WeightChunk(
        version=2,
        seq=0,
        name="w",
        dtype="uint8",
        shape=[1 << 17],
        offset=0,
        data=b"\1" * (1 << 17),
        last=True,
    )
    envelope, data = encode(chunk)
    cases = [
        ([envelope], "reference to frame 1 of 1"),
        ([envelope, data, b"extra"], "1 frames are not referenced"),
        ([msgpack.packb([PROTOCOL_VERSION, "ack", {"detail": msgpack.ExtType(9, b"")}])], "extension type 9"),
    ]
    for frames, words in cases:
        with pytest.raises(ProtocolError, match=words):
            decode(frames)
    assert decode([envelope, data]) == chunk
