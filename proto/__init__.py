"""Everything that crosses a process boundary: messages, their codec, and ZeroMQ endpoints."""

from proto.codec import DEFAULT_MAX_FRAME_BYTES, ProtocolError, decode, encode
from proto.control import Ack, Error, Heartbeat, Hello, Shutdown, Status, StatusRequest
from proto.curve import CurveClientKeys, CurveServerKeys, generate_keys
from proto.judge import JudgeRequest, JudgeStats, StatsRequest, TestCase, Verdict
from proto.message import PROTOCOL_VERSION, REGISTRY, Message
from proto.rollout import Completion, RolloutGroup, WorkAborted
from proto.run import RunRequest, RunResult
from proto.sockets import Client, InsecureBindError, RemoteError, Request, Server, SocketLimits, is_loopback
from proto.weights import WeightAnnounce, WeightChunk, WeightRequest
from proto.work import Credit, SamplingParams, WorkBatch, WorkCancel, WorkItem

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "REGISTRY",
    "Ack",
    "Client",
    "Completion",
    "Credit",
    "CurveClientKeys",
    "CurveServerKeys",
    "Error",
    "Heartbeat",
    "Hello",
    "InsecureBindError",
    "JudgeRequest",
    "JudgeStats",
    "Message",
    "ProtocolError",
    "RemoteError",
    "Request",
    "RolloutGroup",
    "RunRequest",
    "RunResult",
    "SamplingParams",
    "Server",
    "Shutdown",
    "SocketLimits",
    "StatsRequest",
    "Status",
    "StatusRequest",
    "TestCase",
    "Verdict",
    "WeightAnnounce",
    "WeightChunk",
    "WeightRequest",
    "WorkAborted",
    "WorkBatch",
    "WorkCancel",
    "WorkItem",
    "decode",
    "encode",
    "generate_keys",
    "is_loopback",
]
