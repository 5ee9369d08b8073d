"""Generator benchmark: the service against plain vLLM, and the cost of a weight update.

1. Throughput: the same prompts (same seeds and sampling parameters, log-probabilities on) go
   through a `python -m generator` process (scripted dispatcher over tcp, the real judge daemon)
   and through `vllm.LLM.generate` in this process, alternately (each first every other round),
   in the same run; best round against best round. The service's time runs from handing out the
   work to the last acknowledged rollout group, judging included.
2. Weight update: the real learner weight publisher publishes version v+1 of the model the
   generator serves; the dispatcher pushes the announcement and one work item of version v+1
   together. Timed: announcement -> the first rollout group of version v+1 at the dispatcher.
   Against it: one raw zmq send of the same bytes over tcp loopback, right before each update,
   with the generator up (best against best). For the tiny model and for a ~100M-parameter Qwen2
   built locally (learner.tiny.model, larger hidden size and depth). The first update of a
   generator also faults in the pages of its weight file: it is printed, the best one is compared.
One module, over 400 lines: a benchmark is read as one script, start to end.

3. The same update of the ~100M model put on 2 generators at once (one v+1 item each), timed to
   the later of their two groups, against the same on 1 generator, both in this part and by the
   same path (`--update-path zmq`, chunks to each generator, or `broadcast`, one gloo broadcast
   to the generators that joined): update_2gen_ratio is best over best.

Run: `python -m bench.generator` (about 6 minutes on 2 cores). Last line:
    generator: throughput_ratio=... weight_update_s=... weight_update_ratio=...
               update_2gen_ratio=... update_path=...
(throughput_ratio = service tokens/s / plain vLLM tokens/s; the weight figures are the ~100M model's.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import zmq

from generator.config import EngineConfig
from launch.process_group import stop_process_group
from learner.tiny.model import write_tiny_model
from learner.training.broadcaster import WeightBroadcaster
from learner.training.publisher import WeightPublisher
from proto.control import Ack, Hello
from proto.message import Message
from proto.rollout import RolloutGroup, WorkAborted
from proto.sockets import Server
from proto.work import Credit, SamplingParams, WorkBatch, WorkItem

ROOT = Path(__file__).resolve().parents[1]
# how a version reaches the generators here: each fetches it alone from the publisher (WeightChunk
# over ZeroMQ), then reloads it from shared memory
UPDATE_PATHS = {"zmq": "zmq-chunks+shm", "broadcast": "gloo-broadcast+shm"}
MAX_MODEL_LEN = 512


class Dispatcher:
    """The smallest dispatcher that serves generators: credits, work (one item at a time to each
    generator with room, in turn), acks, pushes (to every generator)."""

    def __init__(self) -> None:
        self.server = Server("tcp://127.0.0.1:*", name="bench-dispatcher")
        self.address = self.server.address
        self.queue: deque[WorkItem] = deque()
        self.groups: dict[str, tuple[float, RolloutGroup]] = {}
        self.aborted: list[WorkAborted] = []
        self.credits: dict[bytes, int] = {}  # by generator socket
        self.pushes: deque[Message] = deque()
        self.sent_at: float | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            request = self.server.recv(timeout_ms=20)
            with self.lock:
                if request is not None:
                    message = request.message
                    if isinstance(message, Hello):
                        self.credits[request.peer] = 0
                    elif isinstance(message, Credit):
                        self.credits[request.peer] = self.credits.get(request.peer, 0) + message.credits
                    elif isinstance(message, RolloutGroup):
                        self.groups.setdefault(message.work_id, (time.perf_counter(), message))
                    elif isinstance(message, WorkAborted):
                        self.aborted.append(message)
                    self.server.reply(request, Ack())
                if not self.credits:
                    continue
                while self.pushes:
                    self.sent_at = self.sent_at or time.perf_counter()
                    push = self.pushes.popleft()
                    for peer in self.credits:
                        self.server.send(peer, push)
                items: dict[bytes, list[WorkItem]] = {peer: [] for peer in self.credits}
                while self.queue and any(self.credits.values()):
                    for peer in self.credits:
                        if self.queue and self.credits[peer] > 0:
                            items[peer].append(self.queue.popleft())
                            self.credits[peer] -= 1
                for peer, given in items.items():
                    if given:
                        self.sent_at = self.sent_at or time.perf_counter()
                        self.server.send(peer, WorkBatch(items=given))

    def run(self, items: list[WorkItem], timeout_s: float, *pushes: Message) -> tuple[float, float]:
        """Hand out `items` (after `pushes`); (time the first was sent, time the last group arrived)."""
        with self.lock:
            self.sent_at = None
            self.pushes.extend(pushes)
            self.queue.extend(items)
        deadline = time.monotonic() + timeout_s
        wanted = {item.id for item in items}
        while True:
            with self.lock:
                if wanted <= self.groups.keys():
                    assert self.sent_at is not None
                    return self.sent_at, max(self.groups[w][0] for w in wanted)
                if self.aborted:
                    raise RuntimeError(f"work aborted: {self.aborted[-1]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted - self.groups.keys())} of {len(wanted)} groups missing")
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()


@contextlib.contextmanager
def running(command: list[str], ready: str, timeout_s: float) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """`command` started, once `ready` is in its output: the process and its output lines so far.

    Leaving stops it and everything it started (it runs in a session of its own), however the
    block is left.
    """
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        deadline = time.monotonic() + timeout_s
        while not any(ready in line for line in lines):
            exited = process.poll() is not None
            if exited or time.monotonic() > deadline:
                if exited:
                    reader.join(timeout=2)  # its last lines, often the ones that say why
                status = f"exited with {process.returncode}" if exited else f"not ready after {timeout_s:g} s"
                raise RuntimeError(f"{command[1:4]} did not start ({status}):\n{failure_excerpt(lines)}")
            time.sleep(0.1)
        yield process, lines
    finally:
        stop_process_group(process, grace_s=30)


# The first line of a failure: a traceback, or a line logged at error level (structlog's JSON,
# or vLLM's own format).
FIRST_ERROR = re.compile(
    r'Traceback \(most recent call last\)|"level": "(error|critical)"|\b(ERROR|CRITICAL)\b'
)


def failure_excerpt(lines: list[str], tail: int = 30, after_error: int = 40) -> str:
    """A log's first error and the lines after it, then its last `tail` lines.

    The tail alone often shows only the consequences (a shutdown, a second traceback).
    """
    start_of_tail = max(0, len(lines) - tail)
    first = next((i for i, line in enumerate(lines) if FIRST_ERROR.search(line)), None)
    if first is None or first >= start_of_tail:
        return "".join(lines[start_of_tail:])  # the tail shows it
    head = lines[first : min(first + after_error, start_of_tail)]
    skipped = start_of_tail - first - len(head)
    return (
        f"first error (line {first + 1}):\n{''.join(head)}"
        + (f"[... {skipped} lines ...]\n" if skipped else "")
        + f"last {len(lines) - start_of_tail} lines:\n{''.join(lines[start_of_tail:])}"
    )


def start_generator(
    model: Path, dispatcher: str, judge: str, credits: int, name: str = "bench", extra: list[str] = ()
) -> contextlib.AbstractContextManager[tuple[subprocess.Popen, list[str]]]:
    command = [
        sys.executable, "-m", "generator",
        f"learner={dispatcher}", f"judge={judge}", f"model={model}",
        f"generator_id={name}", f"credits={credits}",
        f"engine.max_model_len={MAX_MODEL_LEN}", "--log-level", "info", *extra,
    ]  # fmt: skip
    return running(command, '"learner_connected"', 600)


@contextlib.contextmanager
def serving(
    model: Path, judge: str, credits: int
) -> Iterator[tuple[Dispatcher, subprocess.Popen, list[str]]]:
    """A dispatcher and a generator of `model` connected to it; the generator's log on a failure."""
    dispatcher = Dispatcher()
    try:
        with start_generator(model, dispatcher.address, judge, credits) as (generator, lines):
            try:
                yield dispatcher, generator, lines
            except Exception:
                print(failure_excerpt(lines, tail=300), file=sys.stderr)
                raise
    finally:
        dispatcher.close()


def work(tag: str, prompts: int, n: int, max_tokens: int, version: int = 0) -> list[WorkItem]:
    return [
        WorkItem(
            id=f"{tag}-{i}",
            kind="math",
            stage=0,
            policy_version=version,
            prompt=f"Compute {17 * i % 997} + {31 * i % 991}.",
            sampling=SamplingParams(n=n, max_tokens=max_tokens, temperature=1.0, seed=i),
            lease_s=600,
            answer=str(17 * i % 997 + 31 * i % 991),
        )
        for i in range(prompts)
    ]


def completion_tokens(dispatcher: Dispatcher, items: list[WorkItem]) -> int:
    return sum(len(c.token_ids) for item in items for c in dispatcher.groups[item.id][1].completions)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by process `root` and all its descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += times.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def bench_throughput(
    model: Path, dispatcher: Dispatcher, args: argparse.Namespace, generator: int, judge: int
) -> float:
    from transformers import AutoTokenizer
    from vllm import LLM, TokensPrompt
    from vllm import SamplingParams as VllmSampling

    tokenizer = AutoTokenizer.from_pretrained(model)
    llm = LLM(
        model=str(model), dtype="float32", enforce_eager=True, max_model_len=MAX_MODEL_LEN,
        seed=0, logprobs_mode="processed_logprobs", enable_chunked_prefill=False,  # as the generator on CPU
        kv_cache_memory_bytes=int(EngineConfig().cpu_kv_cache_gb * (1 << 30)),
    )  # fmt: skip
    service_rates, plain_rates = [], []

    def own_cpu() -> float:  # this process and its engine, without the generator and judge
        return tree_cpu_seconds(os.getpid()) - tree_cpu_seconds(generator) - tree_cpu_seconds(judge)

    def service(items: list[WorkItem]) -> str:
        cpu_before = tree_cpu_seconds(generator), tree_cpu_seconds(judge)
        start, end = dispatcher.run(items, 600)
        cpu_after = tree_cpu_seconds(generator), tree_cpu_seconds(judge)
        used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
        tokens = completion_tokens(dispatcher, items)
        service_rates.append(tokens / (end - start))
        return (
            f"service {tokens} tokens {service_rates[-1]:8.0f} tok/s "
            f"(wall {end - start:.2f} s; CPU s: generator {used[0]:.1f}, judge {used[1]:.1f})"
        )

    def plain(items: list[WorkItem]) -> str:
        prompts = []
        params = []
        for item in items:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": item.prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer.encode(text, add_special_tokens=False)
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            s = item.sampling
            params.append(
                VllmSampling(
                    n=s.n, max_tokens=s.max_tokens, temperature=s.temperature, seed=s.seed,
                    logprobs=0, skip_special_tokens=False,
                )
            )  # fmt: skip
        cpu_before = own_cpu()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        plain_rates.append(tokens / elapsed)
        return (
            f"vllm.LLM.generate {tokens} tokens {plain_rates[-1]:8.0f} tok/s "
            f"(wall {elapsed:.2f} s; CPU s {own_cpu() - cpu_before:.1f})"
        )

    try:
        for round_index in range(args.rounds):
            items = work(f"t{round_index}", args.prompts, args.n, args.max_tokens)
            # Each goes first every other round: neither always runs on a machine just warmed up.
            first, second = (service, plain) if round_index % 2 == 0 else (plain, service)
            said = {first: first(items), second: second(items)}
            print(f"   round {round_index}: {said[service]} | {said[plain]}")
    finally:
        llm.llm_engine.engine_core.shutdown()
    ratio = max(service_rates) / max(plain_rates)
    print(
        f"throughput ({args.prompts} prompts x n={args.n}, <= {args.max_tokens} tokens, "
        f"best of {args.rounds}): "
        f"service {max(service_rates):.0f} tok/s, plain vLLM {max(plain_rates):.0f} tok/s, ratio {ratio:.3f}"
    )
    return ratio


def raw_send_s(total_bytes: int, repeats: int = 5) -> float:
    """One zmq message with all the bytes, PAIR over tcp loopback, zero-copy send; best of `repeats`."""
    blob = bytearray(total_bytes)
    context = zmq.Context()
    receiver = context.socket(zmq.PAIR)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender = context.socket(zmq.PAIR)
    sender.connect(f"tcp://127.0.0.1:{port}")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sender.send(blob, copy=False)
        frame = receiver.recv(copy=False)
        times.append(time.perf_counter() - start)
        assert len(frame) == total_bytes
    sender.close(0)
    receiver.close(0)
    context.term()
    return min(times)


def perturbed(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: t + 0.01 * torch.randn(t.shape, generator=generator, dtype=t.dtype)
        for name, t in tensors.items()
    }


def bench_weight_update(
    model: Path, dispatcher: Dispatcher, generator: subprocess.Popen, lines: list[str], updates: int
) -> tuple[float, float]:
    """(best seconds from announcement to the first group of the new version, raw send seconds)."""
    from safetensors.torch import load_file

    base = load_file(str(model / "model.safetensors"))
    total = sum(t.numel() * t.element_size() for t in base.values())
    params = sum(t.numel() for t in base.values())
    times = []
    phases = []
    raw_times = []
    dispatcher.run(work(f"warm-{model.name}", 1, 1, 4), 600)  # a serving engine is warm
    with WeightPublisher() as publisher:
        for version in range(1, updates + 1):
            # side by side: the raw send runs right before each update, with the generator up
            raw_times.append(raw_send_s(total))
            announce = publisher.publish(version, perturbed(base, version))
            (item,) = work(f"w{version}-{model.name}", 1, 1, 1, version=version)
            cpu_before = cpu_split(generator.pid)
            start, end = dispatcher.run([item], 600, announce)
            cpu = [after - before for before, after in zip(cpu_before, cpu_split(generator.pid), strict=True)]
            group = dispatcher.groups[item.id][1]
            assert group.policy_version == version
            times.append(end - start)
            phases.append(timeline(lines, end - start, group.timings))
            print(
                f"   v{version}: {phases[-1].describe()}; "
                f"CPU s: generator and its engine {cpu[0]:.2f}, publisher and dispatcher {cpu[1]:.2f}"
            )
    best = min(times)
    raw_s = min(raw_times)
    warmed = [json.loads(line) for line in lines if '"weights_warmed"' in line]
    if warmed:  # at start: the first update then finds the file and the engine as later ones do
        print(f"   at start: its own weights reloaded in {warmed[0]['seconds']:.3f} s")
    print(
        f"weight update, {model.name} ({params / 1e6:.1f}M parameters, {total / 2**20:.1f} MiB): "
        f"announcement -> first v+1 group {', '.join(f'{t:.3f}' for t in times)} s "
        f"(last chunk in at {', '.join(f'{p.fetched:.3f}' for p in phases)} s; "
        f"loaded at {', '.join(f'{p.loaded:.3f}' for p in phases)} s; "
        f"first group {', '.join(f'{p.total - p.loaded:.3f}' for p in phases)} s after that); "
        f"one raw zmq send {', '.join(f'{t:.3f}' for t in raw_times)} s; "
        f"ratio {best / raw_s:.2f} (best to best)"
    )
    return best, raw_s


def bench_update_to(model: Path, judge: str, updates: int, generators: int, path: str) -> float:
    """Best seconds from announcement to a group of the new version from each of `generators`.

    path "broadcast": the generators join the learner's broadcast group with the first update
    (fetched as chunks), so only the later ones are timed.
    """
    from safetensors.torch import load_file

    base = load_file(str(model / "model.safetensors"))
    dispatcher = Dispatcher()
    names = [f"bench{g}" for g in range(generators)]
    extra = ["weight_transfer=broadcast"] if path == "broadcast" else []
    broadcaster = WeightBroadcaster() if path == "broadcast" else None
    times = []
    try:
        with contextlib.ExitStack() as stack:
            for name in names:
                stack.enter_context(start_generator(model, dispatcher.address, judge, 4, name, extra))
            publisher = stack.enter_context(WeightPublisher(broadcaster=broadcaster))
            dispatcher.run(work(f"warm{generators}-{model.name}", generators, 1, 4), 600)  # all warm
            first_timed = 2 if path == "broadcast" else 1
            for version in range(1, updates + first_timed):
                announce = publisher.publish(version, perturbed(base, version))
                items = work(f"to{generators}-{version}-{model.name}", generators, 1, 1, version=version)
                start, end = dispatcher.run(items, 600, announce)
                groups = [dispatcher.groups[item.id][1] for item in items]
                assert {g.policy_version for g in groups} == {version}
                assert {g.generator_id for g in groups} == set(names)
                if version >= first_timed:
                    assert path != "broadcast" or announce.group is not None
                    times.append(end - start)
    finally:
        dispatcher.close()
    print(
        f"weight update to {generators} generator(s) by {path}, {model.name}: announcement -> a v+1 group "
        f"from each {', '.join(f'{t:.3f}' for t in times)} s (best {min(times):.3f})"
    )
    return min(times)


def cpu_split(generator: int) -> tuple[float, float]:
    """CPU seconds so far: the generator with its engine; this process (publisher, dispatcher)."""
    theirs = tree_cpu_seconds(generator)
    return theirs, tree_cpu_seconds(os.getpid()) - theirs


@dataclass
class Phases:
    """One update as the generator logged it, in seconds after the announcement arrived."""

    total: float  # the group back at the dispatcher (the measured interval)
    fetched: float = float("nan")  # the last chunk in
    loaded: float = float("nan")  # the version whole in the engine
    first_step: float = float("nan")  # the first tensors loaded while the rest still arrived
    early_mib: float = 0.0  # loaded before the last chunk was in
    last_step: float = float("nan")  # the load call after the last chunk (the reload's last step)
    generate: float = float("nan")  # the first sample, from the group's own timings
    judge: float = float("nan")

    def describe(self) -> str:
        steps = (
            f"loading from {self.first_step:.3f} s ({self.early_mib:.0f} MiB before the last chunk), "
            if self.early_mib
            else ""
        )
        return (
            f"{steps}last chunk in at {self.fetched:.3f} s, loaded at {self.loaded:.3f} s "
            f"(last load call {self.last_step:.3f} s), "
            f"sampled in {self.generate:.3f} s, judged in {self.judge:.3f} s, "
            f"group back at {self.total:.3f} s"
        )


def timeline(lines: list[str], total_s: float, timings: dict[str, float]) -> Phases:
    """The generator's own account of the last update."""
    events = {}
    loaded: dict = {}
    for line in lines:
        if line.startswith("{") and '"event"' in line:
            record = json.loads(line)
            if record["event"] in ("weights_announced", "weight_fetch_done", "weights_loaded"):
                events[record["event"]] = datetime.fromisoformat(record["timestamp"])
            if record["event"] == "weights_loaded":
                loaded = record
    phases = Phases(
        total_s, generate=timings.get("generate", float("nan")), judge=timings.get("judge", float("nan"))
    )
    if len(events) < 3:
        return phases
    zero = events["weights_announced"]
    phases.fetched = (events["weight_fetch_done"] - zero).total_seconds()
    phases.loaded = (events["weights_loaded"] - zero).total_seconds()
    phases.last_step = loaded.get("seconds", float("nan"))
    if "since_first_step_s" in loaded:
        phases.first_step = phases.loaded - loaded["since_first_step_s"]
        phases.early_mib = loaded["early_bytes"] / 2**20
    return phases


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like an error, so that every `finally` stops what it started."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--updates", type=int, default=2, help="weight updates timed per model")
    parser.add_argument("--big-hidden", type=int, default=768)
    parser.add_argument("--big-layers", type=int, default=16)
    parser.add_argument("--skip-throughput", action="store_true", help="weight updates only")
    parser.add_argument("--update-path", choices=["zmq", "broadcast"], default="zmq", help="path of part 3")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    ratio = float("nan")

    with tempfile.TemporaryDirectory(prefix="bench-generator-") as tmp:
        tmp_dir = Path(tmp)
        tiny = write_tiny_model(tmp_dir / "tiny")
        big = write_tiny_model(tmp_dir / "big100m", hidden=args.big_hidden, layers=args.big_layers)
        judge_address = f"ipc://{tmp_dir}/judge.ipc"
        with running(
            [sys.executable, "-m", "judge", "serve", f"bind={judge_address}", "workers=1"],
            "judge_serving",
            120,
        ) as (judge, _):
            with serving(tiny, judge_address, args.prompts) as (dispatcher, generator, lines):
                if not args.skip_throughput:
                    ratio = bench_throughput(tiny, dispatcher, args, generator.pid, judge.pid)
                bench_weight_update(tiny, dispatcher, generator, lines, args.updates)
            with serving(big, judge_address, 4) as (dispatcher, generator, lines):
                update_s, raw_s = bench_weight_update(big, dispatcher, generator, lines, args.updates)
            one_s = bench_update_to(big, judge_address, args.updates, 1, args.update_path)
            two_s = bench_update_to(big, judge_address, args.updates, 2, args.update_path)
    print(
        f"generator: throughput_ratio={ratio:.3f} weight_update_s={update_s:.3f} "
        f"weight_update_ratio={update_s / raw_s:.2f} update_2gen_ratio={two_s / one_s:.2f} "
        f"update_path={UPDATE_PATHS[args.update_path]}"
    )


if __name__ == "__main__":
    main()
