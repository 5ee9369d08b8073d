"""ZeroMQ endpoints that speak proto messages: a ROUTER `Server` and a DEALER `Client`.

Wire frames: the client sends `[request_id, *message_frames]`; the server sees
`[peer, request_id, *message_frames]` and answers on the same request id. A server may also
push messages to a peer it has heard from (request id empty). Every socket has a receive
timeout, a high-water mark and a maximum message size; binding off loopback requires CURVE
keys. Sockets are not thread-safe: use each endpoint from one thread.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import zmq

from proto.codec import DEFAULT_MAX_FRAME_BYTES, ProtocolError, decode, encode
from proto.control import Error, ErrorCode
from proto.curve import CurveClientKeys, CurveServerKeys, secure_client, secure_server
from proto.message import Message

log = structlog.get_logger("proto.sockets")

MAX_REQUEST_ID_BYTES = 64


@dataclass(frozen=True)
class SocketLimits:
    recv_timeout_ms: int = 5_000
    send_timeout_ms: int = 5_000
    hwm: int = 1_000  # messages queued per peer before sends block (then time out)
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES  # larger frames get a clear error reply
    linger_ms: int = 0
    heartbeat_ms: int = 1_000  # transport-level pings: a dead TCP peer is noticed within
    heartbeat_timeout_ms: int = 5_000  # this long, even when no message flows


class InsecureBindError(RuntimeError):
    pass


class RemoteError(RuntimeError):
    """The peer answered a request with an `Error` message."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.detail}")
        self.error = error


def is_loopback(address: str) -> bool:
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"address {address!r} has no scheme: use tcp://HOST:PORT or ipc://PATH")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        raise ValueError(f"address {address!r}: unsupported scheme {scheme!r} (tcp, ipc, inproc)")
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: assume it reaches the network
        return False


def _configure(socket: zmq.Socket, limits: SocketLimits) -> None:
    socket.setsockopt(zmq.RCVTIMEO, limits.recv_timeout_ms)
    socket.setsockopt(zmq.SNDTIMEO, limits.send_timeout_ms)
    socket.setsockopt(zmq.SNDHWM, limits.hwm)
    socket.setsockopt(zmq.RCVHWM, limits.hwm)
    # Above twice the decoder's limit libzmq drops the connection before reading the frame;
    # between the two the frame is read and answered with a clear error.
    socket.setsockopt(zmq.MAXMSGSIZE, 2 * limits.max_frame_bytes + 4096)
    socket.setsockopt(zmq.LINGER, limits.linger_ms)
    socket.setsockopt(zmq.HEARTBEAT_IVL, limits.heartbeat_ms)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, limits.heartbeat_timeout_ms)


def _recv_frames(socket: zmq.Socket, timeout_ms: int) -> list[zmq.Frame] | None:
    """The next multipart message, or None after `timeout_ms`.

    Polling alone is not enough: libzmq does not report messages left in the pipe of a peer
    that has just disconnected, though they can still be read. So try to read first, and poll
    in short slices between tries.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            return socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            return None
        socket.poll(min(remaining_ms, 100), zmq.POLLIN)


@dataclass(frozen=True)
class Request:
    peer: bytes
    request_id: bytes
    message: Message


class Server:
    """A ROUTER socket: receives requests from many clients and answers each one."""

    def __init__(
        self,
        address: str,
        *,
        curve: CurveServerKeys | None = None,
        limits: SocketLimits = SocketLimits(),
        name: str = "server",
    ) -> None:
        if curve is None and not is_loopback(address):
            raise InsecureBindError(
                f"{name}: refusing to bind {address} off loopback without CURVE keys; "
                "create them with `python -m proto keygen` and pass the secret key file"
            )
        self.name = name
        self.limits = limits
        self.rejected = 0  # frames answered with an error instead of being served
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        _configure(self._socket, limits)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer fails loudly
        # A peer that comes back under the identity it had (a restarted client that names itself)
        # takes it over; without this, ZeroMQ ignores the new connection until it has noticed
        # that the old one is gone, and the newcomer's first requests go unanswered.
        self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._authenticator = secure_server(self._socket, curve) if curve else None
        try:
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"{name}: cannot bind {address}: {exc}") from exc
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def bind_inproc(self, name: str) -> str:
        """Bind one more endpoint, `inproc://NAME`, for a peer in this process (`self.context`)."""
        address = f"inproc://{name}"
        self._socket.bind(address)
        return address

    @property
    def context(self) -> zmq.Context:
        return self._context

    def recv(self, timeout_ms: int | None = None) -> Request | None:
        """The next valid request, or None after `timeout_ms`. Bad frames get an error reply."""
        timeout = self.limits.recv_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout / 1000
        while True:
            frames = _recv_frames(self._socket, max(0, int((deadline - time.monotonic()) * 1000)))
            if frames is None:
                return None
            peer = frames[0].bytes
            if len(frames) < 3 or len(frames[1]) > MAX_REQUEST_ID_BYTES:
                self._reject(peer, b"", ProtocolError("frame", "expected frames [request_id, message...]"))
                continue
            request_id = frames[1].bytes
            try:
                message = decode([frame.buffer for frame in frames[2:]], self.limits.max_frame_bytes)
            except ProtocolError as exc:
                self._reject(peer, request_id, exc)
                continue
            return Request(peer, request_id, message)

    def reply(self, request: Request, message: Message) -> bool:
        return self.send(request.peer, message, request.request_id)

    def reply_error(self, request: Request, code: ErrorCode, detail: str) -> bool:
        return self.send(request.peer, Error(code=code, detail=detail[:4000]), request.request_id)

    def send(self, peer: bytes, message: Message, request_id: bytes = b"") -> bool:
        """Send to one peer; False if it is gone or its queue stayed full past the send timeout."""
        try:
            self._socket.send_multipart([peer, request_id, *encode(message)], copy=False)
            return True
        except zmq.Again:
            log.warning("send_timed_out", endpoint=self.name, peer=peer.hex()[:16], type=message.TYPE)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("peer_gone", endpoint=self.name, peer=peer.hex()[:16], type=message.TYPE)
        return False

    def _reject(self, peer: bytes, request_id: bytes, error: ProtocolError) -> None:
        self.rejected += 1
        log.warning("bad_frame", endpoint=self.name, peer=peer.hex()[:16], error=str(error)[:300])
        self.send(
            peer, Error(code="bad_request", detail=str(error)[:4000]), request_id[:MAX_REQUEST_ID_BYTES]
        )

    def close(self, linger_ms: int | None = None) -> None:
        """Close; `linger_ms` bounds how long queued messages may still be delivered."""
        if self._authenticator is not None:
            self._authenticator.stop()
        self._socket.close(linger=self.limits.linger_ms if linger_ms is None else linger_ms)
        self._context.term()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Reply:
    request_id: bytes
    message: Message


class Client:
    """A DEALER socket: many requests in flight to one server, matched to replies by id."""

    _ids = itertools.count()

    def __init__(
        self,
        address: str,
        *,
        curve: CurveClientKeys | None = None,
        limits: SocketLimits = SocketLimits(),
        identity: str | None = None,
        max_stashed: int = 10_000,
    ) -> None:
        if curve is None and not is_loopback(address):
            log.warning("plaintext_connection", address=address, hint="pass CURVE keys off loopback")
        self.address = address
        self.limits = limits
        self.malformed = 0  # replies that failed to decode (dropped)
        self._prefix = f"{os.getpid()}-{id(self):x}-".encode()
        self._stash: OrderedDict[bytes, Message] = OrderedDict()  # replies received out of order
        self._pushed: deque[Message] = deque()  # pushes (empty request id) received meanwhile
        self._max_stashed = max_stashed
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        _configure(self._socket, limits)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards a peer not yet connected
        if identity is not None:
            self._socket.setsockopt(zmq.IDENTITY, identity.encode()[:255])
        if curve is not None:
            secure_client(self._socket, curve)
        self._socket.connect(address)

    def send(self, message: Message) -> bytes:
        """Send a request; returns its id. Raises TimeoutError if the server cannot take it."""
        request_id = self._prefix + str(next(self._ids)).encode()
        try:
            self._socket.send_multipart([request_id, *encode(message)], copy=False)
        except zmq.Again:
            raise TimeoutError(
                f"no server at {self.address} took a {message.TYPE} within {self.limits.send_timeout_ms} ms"
            ) from None
        return request_id

    def recv(self, timeout_ms: int | None = None) -> Reply | None:
        """The next reply or pushed message, or None after `timeout_ms`."""
        if self._pushed:
            return Reply(b"", self._pushed.popleft())
        if self._stash:
            request_id, message = self._stash.popitem(last=False)
            return Reply(request_id, message)
        return self._recv_wire(self.limits.recv_timeout_ms if timeout_ms is None else timeout_ms)

    def request(self, message: Message, timeout_ms: int | None = None) -> Message:
        """Send and wait for the matching reply; `Error` replies raise `RemoteError`."""
        timeout = self.limits.recv_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout / 1000
        request_id = self.send(message)
        while True:
            if request_id in self._stash:
                reply = self._stash.pop(request_id)
            else:
                got = self._recv_wire(max(0, int((deadline - time.monotonic()) * 1000)))
                if got is None:
                    raise TimeoutError(f"no reply to {message.TYPE} from {self.address} within {timeout} ms")
                if got.request_id != request_id:
                    self._stash_reply(got)
                    continue
                reply = got.message
            if isinstance(reply, Error):
                raise RemoteError(reply)
            return reply

    def _recv_wire(self, timeout_ms: int) -> Reply | None:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            frames = _recv_frames(self._socket, max(0, int((deadline - time.monotonic()) * 1000)))
            if frames is None:
                return None
            try:
                if len(frames) < 2:
                    raise ProtocolError("frame", "expected frames [request_id, message...]")
                message = decode([frame.buffer for frame in frames[1:]], self.limits.max_frame_bytes)
                return Reply(frames[0].bytes, message)
            except ProtocolError as exc:
                self.malformed += 1
                log.warning("bad_reply", address=self.address, error=str(exc)[:300])

    def _stash_reply(self, reply: Reply) -> None:
        if reply.request_id:
            self._stash[reply.request_id] = reply.message
        else:
            self._pushed.append(reply.message)
        if len(self._stash) + len(self._pushed) > self._max_stashed:
            # Bounded: the oldest unclaimed reply goes first, then the oldest push.
            dropped = self._stash.popitem(last=False)[1] if self._stash else self._pushed.popleft()
            log.warning("reply_stash_full", address=self.address, dropped=dropped.TYPE)

    def close(self) -> None:
        self._socket.close(linger=self.limits.linger_ms)
        self._context.term()

    @staticmethod
    def wait_any(clients: Sequence[Client], timeout_ms: int) -> None:
        """Wait until one of `clients` has something to `recv`, at most `timeout_ms`.

        For a loop that serves several peers: it wakes for whichever answers first instead of
        waiting on one while the other's answer sits unread. (A message left by a peer that
        has just disconnected is not reported: the timeout bounds that wait.)
        """
        if any(client._pushed or client._stash for client in clients):
            return
        poller = zmq.Poller()
        for client in clients:
            poller.register(client._socket, zmq.POLLIN)
        poller.poll(timeout_ms)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
