"""Live ZeroMQ endpoints: request-reply, bad frames, timeouts, loopback rule, CURVE."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import (
    PROTOCOL_VERSION,
    Ack,
    Client,
    CurveClientKeys,
    CurveServerKeys,
    Error,
    Heartbeat,
    InsecureBindError,
    Message,
    RemoteError,
    Request,
    Server,
    Shutdown,
    SocketLimits,
    WeightChunk,
    WeightRequest,
    decode,
    encode,
    generate_keys,
    is_loopback,
)

FAST = SocketLimits(recv_timeout_ms=2_000, send_timeout_ms=2_000)


def heartbeat(i: int = 0) -> Heartbeat:
    return Heartbeat(sender=f"g{i}", role="generator", time=float(i), holding=i)


def echo(server: Server, request: Request) -> None:
    """Answer a heartbeat with an Ack naming its sender."""
    server.reply(request, Ack(detail=request.message.sender))


@contextmanager
def serving(address: str, handler: Callable[[Server, Request], None] = echo, **kwargs) -> Iterator[Server]:
    server = Server(address, limits=kwargs.pop("limits", FAST), **kwargs)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            request = server.recv(timeout_ms=50)
            if request is not None:
                handler(server, request)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture(params=["ipc", "tcp"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/s.ipc" if request.param == "ipc" else "tcp://127.0.0.1:*"


def test_request_reply(address: str) -> None:
    with serving(address) as server, Client(server.address, limits=FAST) as client:
        for i in range(5):
            assert client.request(heartbeat(i)) == Ack(detail=f"g{i}")


def test_replies_are_matched_to_requests_by_id(address: str) -> None:
    held: list[Request] = []

    def reverse_after_ten(server: Server, request: Request) -> None:
        held.append(request)
        if len(held) == 10:
            for r in reversed(held):
                echo(server, r)

    with serving(address, reverse_after_ten) as server, Client(server.address, limits=FAST) as client:
        sent = {client.send(heartbeat(i)): f"g{i}" for i in range(9)}
        # the tenth waits for its own answer although nine others arrive first
        assert client.request(heartbeat(9)) == Ack(detail="g9")
        got = {}
        while len(got) < 9:
            reply = client.recv(timeout_ms=2_000)
            assert reply is not None
            got[reply.request_id] = reply.message.detail
        assert got == sent


def raw_dealer(address: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.RCVTIMEO, 2_000)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    return socket


def error_reply(socket: zmq.Socket, request_id: bytes) -> Error:
    got_id, payload = socket.recv_multipart()
    assert got_id == request_id  # the error answers the request that caused it
    reply = decode(payload)
    assert isinstance(reply, Error), reply
    assert reply.code == "bad_request"
    return reply


def test_bad_frames_get_a_clear_error_and_the_server_keeps_serving(address: str) -> None:
    limits = SocketLimits(recv_timeout_ms=2_000, send_timeout_ms=2_000, max_frame_bytes=4_096)
    with serving(address, limits=limits) as server, Client(server.address, limits=FAST) as client:
        raw = raw_dealer(server.address)
        cases = [
            ([b"r1", b"\xc1garbage"], "not a msgpack document"),
            ([b"r2", msgpack.packb([PROTOCOL_VERSION + 1, "heartbeat", {}])], "protocol_version"),
            ([b"r3", msgpack.packb([PROTOCOL_VERSION, "heartbeat", {"sender": "x"}])], "heartbeat.role"),
            ([b"r4", msgpack.packb([PROTOCOL_VERSION, "nonsense", {}])], "unknown message type"),
            ([b"r5", b"x" * 5_000], "exceeds the limit of 4096 bytes"),
            ([b"only-one-frame"], "expected frames"),
            ([b"r6", *encode(heartbeat()), b"stray"], "1 frames are not referenced"),
        ]
        for frames, words in cases:
            raw.send_multipart(frames)
            request_id = frames[0] if len(frames) >= 2 else b""
            assert words in error_reply(raw, request_id).detail
            assert client.request(heartbeat(7)) == Ack(detail="g7")  # still serving
        assert server.rejected == len(cases)
        raw.close()


def test_frames_beyond_the_hard_limit_drop_only_that_connection() -> None:
    limits = SocketLimits(recv_timeout_ms=2_000, send_timeout_ms=2_000, max_frame_bytes=1_024)
    with serving("tcp://127.0.0.1:*", limits=limits) as server, Client(server.address, limits=FAST) as good:
        raw = raw_dealer(server.address)
        raw.send_multipart([b"r", b"x" * 100_000])
        with pytest.raises(zmq.Again):
            raw.recv_multipart()
        assert good.request(heartbeat(1)) == Ack(detail="g1")
        raw.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.binary(max_size=64), min_size=1, max_size=4), min_size=1, max_size=8))
def test_fuzzed_frames_on_a_live_socket(frame_lists: list[list[bytes]]) -> None:
    with serving("tcp://127.0.0.1:*") as server, Client(server.address, limits=FAST) as client:
        raw = raw_dealer(server.address)
        for frames in frame_lists:
            raw.send_multipart(frames)
        answered = 0
        while answered < len(frame_lists):
            _, payload = raw.recv_multipart()[-2:]
            message = decode(payload)
            # a fuzzed frame can by chance be a valid heartbeat; everything else is an error
            assert isinstance(message, (Error, Ack))
            answered += 1
        assert client.request(heartbeat(3)) == Ack(detail="g3")
        raw.close()


def test_timeouts_bound_every_wait(tmp_path: Path) -> None:
    limits = SocketLimits(recv_timeout_ms=300, send_timeout_ms=300)
    with Client(f"ipc://{tmp_path}/nobody.ipc", limits=limits) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no server"):
            client.send(heartbeat())
        assert time.monotonic() - start < 2
    with Server("tcp://127.0.0.1:*", limits=limits) as server:
        start = time.monotonic()
        assert server.recv() is None
        assert 0.25 < time.monotonic() - start < 2
        assert server.send(b"no-such-peer", Ack()) is False


def test_a_silent_server_times_out_the_request() -> None:
    with (
        serving("tcp://127.0.0.1:*", lambda server, request: None) as server,
        Client(server.address, limits=SocketLimits(recv_timeout_ms=300)) as client,
        pytest.raises(TimeoutError, match="no reply"),
    ):
        client.request(heartbeat())


def test_error_replies_raise_remote_error() -> None:
    def busy(server: Server, request: Request) -> None:
        server.reply_error(request, "busy", "queue full")

    with serving("tcp://127.0.0.1:*", busy) as server, Client(server.address, limits=FAST) as client:
        with pytest.raises(RemoteError, match="busy: queue full") as err:
            client.request(heartbeat())
        assert err.value.error.code == "busy"


def test_server_pushes_to_a_known_peer() -> None:
    peers: list[bytes] = []

    def remember(server: Server, request: Request) -> None:
        peers.append(request.peer)
        echo(server, request)

    with serving("tcp://127.0.0.1:*", remember) as server, Client(server.address, limits=FAST) as client:
        client.request(heartbeat())
        assert server.send(peers[0], Ack(detail="pushed"))
        reply = client.recv(timeout_ms=2_000)
        assert reply is not None and reply.request_id == b"" and reply.message == Ack(detail="pushed")


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x.ipc", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.0.0.3:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_binding_off_loopback_needs_curve_keys() -> None:
    with pytest.raises(InsecureBindError, match="without CURVE keys"):
        Server("tcp://0.0.0.0:*")
    with pytest.raises(ValueError, match="scheme"):
        is_loopback("127.0.0.1:5555")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    paths = {}
    for name in ("server", "client", "intruder"):
        public, secret = generate_keys(tmp_path / name, name)
        paths[name] = secret
        paths[f"{name}_public"] = public
    allowed.mkdir()
    (allowed / "client.key").write_bytes(paths["client_public"].read_bytes())
    paths["allowed"] = allowed
    return paths


def _curve_request(address: str, curve: CurveClientKeys | None) -> Message:
    limits = SocketLimits(recv_timeout_ms=700, send_timeout_ms=700)
    with Client(address, curve=curve, limits=limits) as client:
        return client.request(heartbeat(5))


def test_curve_admits_only_authorised_clients(keys: dict[str, Path]) -> None:
    server_keys = CurveServerKeys(secret_file=keys["server"], clients_dir=keys["allowed"])
    # off loopback is allowed with keys; the test itself only connects over loopback
    with serving("tcp://0.0.0.0:*", curve=server_keys) as server:
        address = "tcp://127.0.0.1:" + server.address.rsplit(":", 1)[1]
        good = CurveClientKeys(server_public_file=keys["server_public"], secret_file=keys["client"])
        assert _curve_request(address, good) == Ack(detail="g5")
        intruder = CurveClientKeys(server_public_file=keys["server_public"], secret_file=keys["intruder"])
        wrong_server_key = CurveClientKeys(
            server_public_file=keys["intruder_public"], secret_file=keys["client"]
        )
        for curve in (intruder, wrong_server_key, None):
            with pytest.raises(TimeoutError):
                _curve_request(address, curve)
        assert _curve_request(address, good) == Ack(detail="g5")


def test_curve_without_client_list_needs_the_server_key(keys: dict[str, Path]) -> None:
    with serving("tcp://127.0.0.1:*", curve=CurveServerKeys(secret_file=keys["server"])) as server:
        anyone = CurveClientKeys(server_public_file=keys["server_public"])
        assert _curve_request(server.address, anyone) == Ack(detail="g5")
        with pytest.raises(TimeoutError):
            _curve_request(server.address, CurveClientKeys(server_public_file=keys["intruder_public"]))


def test_curve_key_files_are_checked(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Server("tcp://127.0.0.1:*", curve=CurveServerKeys(secret_file=tmp_path / "missing"))
    with pytest.raises(ValueError, match="no secret key"):
        Server("tcp://127.0.0.1:*", curve=CurveServerKeys(secret_file=keys["server_public"]))


def test_large_chunks_travel_in_frames_of_their_own(address: str) -> None:
    data = np.random.default_rng(0).random(300_000, dtype=np.float32)

    def send_weights(server: Server, request: Request) -> None:
        for seq, offset in enumerate(range(0, data.nbytes, 400_000)):
            view = memoryview(data).cast("B")[offset : offset + 400_000]
            last = offset + 400_000 >= data.nbytes
            chunk = WeightChunk(
                version=3,
                seq=seq,
                name="w",
                dtype="float32",
                shape=[300_000],
                offset=offset,
                data=view,
                last=last,
            )
            server.reply(request, chunk)

    with serving(address, send_weights) as server, Client(server.address, limits=FAST) as client:
        client.send(WeightRequest(version=3, generator_id="g"))
        received = bytearray()
        while True:
            reply = client.recv(timeout_ms=2_000)
            assert reply is not None and isinstance(reply.message, WeightChunk)
            assert reply.message.offset == len(received)
            received += reply.message.data
            if reply.message.last:
                break
        assert np.array_equal(np.frombuffer(received, dtype=np.float32), data)


def test_encode_is_what_travels() -> None:
    with serving("tcp://127.0.0.1:*") as server:
        raw = raw_dealer(server.address)
        raw.send_multipart([b"id-1", *encode(heartbeat(2))])
        request_id, payload = raw.recv_multipart()
        assert request_id == b"id-1" and decode(payload) == Ack(detail="g2")
        raw.close()


def test_a_message_sent_just_before_the_server_closes_is_still_read() -> None:
    server = Server("tcp://127.0.0.1:*", limits=FAST)
    with Client(server.address, limits=FAST, identity="g0") as client:
        client.send(heartbeat())
        request = server.recv()
        assert request is not None
        assert server.send(request.peer, Shutdown(reason="bye"))
        server.close(linger_ms=1_000)
        time.sleep(0.2)  # the disconnect is processed before the client reads
        reply = client.recv(timeout_ms=1_000)
        assert reply is not None and reply.message == Shutdown(reason="bye")


def test_pushes_received_while_waiting_for_a_reply_are_all_kept() -> None:
    def push_three_then_reply(server: Server, request: Request) -> None:
        for i in range(3):
            server.send(request.peer, Ack(detail=f"push{i}"))
        echo(server, request)

    with (
        serving("tcp://127.0.0.1:*", push_three_then_reply) as server,
        Client(server.address, limits=FAST) as client,
    ):
        assert client.request(heartbeat(1)) == Ack(detail="g1")
        pushes = [client.recv(timeout_ms=1_000) for _ in range(3)]
        assert [(p.request_id, p.message.detail) for p in pushes] == [(b"", f"push{i}") for i in range(3)]


def test_wait_any_wakes_for_whichever_client_is_answered_first() -> None:
    def slow(server: Server, request: Request) -> None:
        time.sleep(1.0)
        echo(server, request)

    with (
        serving("tcp://127.0.0.1:*", slow) as slow_server,
        serving("tcp://127.0.0.1:*") as fast_server,
        Client(slow_server.address, limits=FAST) as waiting,
        Client(fast_server.address, limits=FAST) as answered,
    ):
        waiting.send(heartbeat(1))
        answered.send(heartbeat(2))
        start = time.monotonic()
        Client.wait_any([waiting, answered], 3_000)
        assert time.monotonic() - start < 0.9
        reply = answered.recv(timeout_ms=0)
        assert reply is not None and reply.message == Ack(detail="g2")
        start = time.monotonic()
        Client.wait_any([waiting, answered], 200)  # nothing more: the timeout bounds the wait
        assert 0.15 < time.monotonic() - start < 0.9
