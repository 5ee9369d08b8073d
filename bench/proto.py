"""Protocol benchmark: rollout encode/decode, and moving weights as chunks versus one raw send.

Prints its figures, then as the last line:
    proto: rollout32k_encode_us=... weights_ratio=...
weights_ratio = time to move the weights as WeightChunk messages through proto's Server/Client
over tcp loopback / time for one raw zmq send of the same bytes, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import msgpack
import numpy as np
import zmq

from proto import (
    Client,
    Completion,
    RolloutGroup,
    Server,
    SocketLimits,
    WeightChunk,
    WeightRequest,
    decode,
    encode,
)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rollout(tokens: int, rng: np.random.Generator) -> RolloutGroup:
    completion = Completion(
        token_ids=rng.integers(0, 150_000, tokens, dtype=np.int32),
        logprobs=-rng.random(tokens, dtype=np.float32),
        finish_reason="length",
        truncated=True,
        reward=0.0,
        judge_status="wrong_answer",
    )
    return RolloutGroup(
        work_id="bench-0",
        kind="math",
        stage=0,
        policy_version=7,
        temperature=1.0,
        generator_id="g0",
        prompt_token_ids=rng.integers(0, 150_000, 512, dtype=np.int32),
        completions=[completion],
        timings={"generate": 1.0, "judge": 0.1},
    )


def bench_rollouts(repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    figures = {}
    for tokens in (8192, 32768):
        message = rollout(tokens, rng)
        frames = [bytes(frame) for frame in encode(message)]
        encode_s = best_of(lambda m=message: encode(m), repeats)
        decode_s = best_of(lambda f=frames: decode(f), repeats)
        # Baseline: the same content as plain msgpack lists, the obvious alternative encoding.
        as_lists = [message.completions[0].token_ids.tolist(), message.completions[0].logprobs.tolist()]
        lists_s = best_of(lambda d=as_lists: msgpack.unpackb(msgpack.packb(d)), repeats)
        label = f"rollout{tokens // 1024}k"
        figures[f"{label}_encode_us"] = encode_s * 1e6
        figures[f"{label}_decode_us"] = decode_s * 1e6
        print(
            f"{label:>10}: {len(frames)} frames {sum(map(len, frames)) / 1024:6.1f} KiB  "
            f"encode {encode_s * 1e6:8.1f} us  "
            f"decode {decode_s * 1e6:8.1f} us  ({tokens / (encode_s + decode_s) / 1e6:6.1f} M tokens/s "
            f"round trip; plain msgpack lists round trip {lists_s * 1e6:8.1f} us)"
        )
    return figures


def weight_tensors(total_bytes: int, tensor_bytes: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    sizes = [tensor_bytes] * (total_bytes // tensor_bytes)
    if total_bytes % tensor_bytes:
        sizes.append(total_bytes % tensor_bytes)
    return [(f"layer.{i}.weight", rng.random(size // 4, dtype=np.float32)) for i, size in enumerate(sizes)]


def serve_chunks(
    server: Server, tensors: list[tuple[str, np.ndarray]], chunk_bytes: int, stop: threading.Event
) -> None:
    while not stop.is_set():
        request = server.recv(timeout_ms=100)
        if request is None or not isinstance(request.message, WeightRequest):
            continue
        chunks = []
        for name, array in tensors:
            raw = memoryview(array).cast("B")
            for offset in range(0, len(raw), chunk_bytes):
                chunks.append((name, array, offset, raw[offset : offset + chunk_bytes]))
        for seq, (name, array, offset, data) in enumerate(chunks):
            chunk = WeightChunk(
                version=request.message.version,
                seq=seq,
                name=name,
                dtype="float32",
                shape=list(array.shape),
                offset=offset,
                data=data,
                last=seq == len(chunks) - 1,
            )
            server.reply(request, chunk)


def fetch_chunks(client: Client, total_bytes: int) -> int:
    client.send(WeightRequest(version=1, generator_id="bench"))
    received = 0
    while True:
        reply = client.recv(timeout_ms=30_000)
        if reply is None:
            raise TimeoutError("weight stream stalled")
        chunk = reply.message
        assert isinstance(chunk, WeightChunk)
        received += chunk.data_bytes
        if chunk.last:
            if received != total_bytes:
                raise RuntimeError(f"received {received} of {total_bytes} bytes")
            return received


def bench_weights(total_mb: int, chunk_mb: int, repeats: int) -> dict[str, float]:
    total = total_mb * 1024 * 1024
    tensors = weight_tensors(total, tensor_bytes=min(total, 16 * 1024 * 1024))
    limits = SocketLimits(recv_timeout_ms=30_000, send_timeout_ms=30_000, hwm=64)
    stop = threading.Event()
    with Server("tcp://127.0.0.1:*", limits=limits, name="bench-weights") as server:
        thread = threading.Thread(target=serve_chunks, args=(server, tensors, chunk_mb * 1024 * 1024, stop))
        thread.start()
        try:
            with Client(server.address, limits=limits) as client:
                chunked_s = best_of(lambda: fetch_chunks(client, total), repeats)
        finally:
            stop.set()
            thread.join()

    # The raw baseline: one zmq message with all the bytes, PAIR over tcp loopback, zero-copy send.
    blob = b"".join(array.tobytes() for _, array in tensors)
    context = zmq.Context()
    receiver = context.socket(zmq.PAIR)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender = context.socket(zmq.PAIR)
    sender.connect(f"tcp://127.0.0.1:{port}")

    def raw_once() -> None:
        sender.send(blob, copy=False)
        receiver.recv(copy=False)

    raw_s = best_of(raw_once, repeats)
    sender.close(0)
    receiver.close(0)
    context.term()
    print(
        f"   weights: {total_mb} MiB in {chunk_mb} MiB chunks {chunked_s * 1e3:8.1f} ms "
        f"({total_mb / chunked_s:7.0f} MiB/s); one raw zmq send {raw_s * 1e3:8.1f} ms "
        f"({total_mb / raw_s:7.0f} MiB/s)"
    )
    return {"weights_ratio": chunked_s / raw_s}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--weights-mb", type=int, default=100)
    parser.add_argument("--chunk-mb", type=int, default=4)
    args = parser.parse_args()
    figures = bench_rollouts(args.repeats * 10)
    figures |= bench_weights(args.weights_mb, args.chunk_mb, args.repeats)
    print(
        f"proto: rollout32k_encode_us={figures['rollout32k_encode_us']:.1f} "
        f"weights_ratio={figures['weights_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
