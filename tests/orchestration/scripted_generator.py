"""A generator without an engine, for orchestration tests: it answers every work item at once
with random tokens and a reward pattern of the test's choosing, tagged with the item's version."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable

from proto import (
    Client,
    Completion,
    Credit,
    Heartbeat,
    Hello,
    RolloutGroup,
    Shutdown,
    SocketLimits,
    WeightAnnounce,
    WorkBatch,
    WorkItem,
)

RewardFn = Callable[[WorkItem, int], float]  # (item, completion index) -> reward


def alternating(item: WorkItem, index: int) -> float:
    return float(index % 2 == 0)


class ScriptedGenerator(threading.Thread):
    def __init__(
        self,
        address: str,
        name: str,
        reward: RewardFn = alternating,
        credits: int = 8,
        vocab: int = 500,
        seed: int = 0,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.address = address
        self.generator_id = name
        self.reward = reward
        self.credits = credits
        self.vocab = vocab
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.announced: list[int] = []
        self.answered: list[str] = []
        self.shutdown_reason: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # surfaced by the test through `error`
            self.error = exc

    def _serve(self) -> None:
        limits = SocketLimits(recv_timeout_ms=5_000, send_timeout_ms=5_000)
        with Client(self.address, limits=limits, identity=self.generator_id) as client:
            # the learner may still be starting (loading its model) when the generators are
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.request(Hello(sender=self.generator_id, role="generator"))
                    break
                except TimeoutError:
                    if time.monotonic() > deadline or self.stop_event.is_set():
                        raise
            client.request(Credit(generator_id=self.generator_id, credits=self.credits))
            last_beat = time.monotonic()
            while not self.stop_event.is_set():
                if time.monotonic() - last_beat > 1.0:  # as real generators do: silence means lost
                    last_beat = time.monotonic()
                    with contextlib.suppress(TimeoutError):  # the run may be over: read on
                        beat = Heartbeat(sender=self.generator_id, role="generator", time=time.time())
                        if self._stopped_by(client.request(beat)):
                            return
                reply = client.recv(timeout_ms=50)
                if reply is None:
                    continue
                message = reply.message
                if isinstance(message, WeightAnnounce):
                    self.announced.append(message.version)
                elif isinstance(message, Shutdown):
                    self.shutdown_reason = message.reason
                    return
                elif isinstance(message, WorkBatch):
                    try:
                        for item in message.items:
                            if self._stopped_by(client.request(self.rollout(item))):
                                return
                            self.answered.append(item.id)
                        credit = Credit(generator_id=self.generator_id, credits=len(message.items))
                        if self._stopped_by(client.request(credit)):
                            return
                    except TimeoutError:
                        if self._told_to_stop(client):  # the run ended meanwhile: nobody answers
                            return
                        raise

    def _stopped_by(self, reply: object) -> bool:
        """Whether the dispatcher answered with a Shutdown (it does once the run has ended)."""
        if isinstance(reply, Shutdown):
            self.shutdown_reason = reply.reason
            return True
        return False

    def _told_to_stop(self, client: Client) -> bool:
        """Whether a Shutdown notice came (what is pushed while a request waits is kept)."""
        while (reply := client.recv(timeout_ms=0)) is not None:
            if isinstance(reply.message, Shutdown):
                self.shutdown_reason = reply.message.reason
                return True
        return False

    def rollout(self, item: WorkItem) -> RolloutGroup:
        assert item.policy_version in self.announced, "work arrived before its weights were announced"
        completions = []
        for index in range(item.sampling.n):
            length = self.rng.randint(1, min(8, item.sampling.max_tokens))
            truncated = length == item.sampling.max_tokens
            reward = self.reward(item, index)
            completions.append(
                Completion(
                    token_ids=[self.rng.randrange(self.vocab) for _ in range(length)],
                    logprobs=[-1.0] * length,
                    finish_reason="length" if truncated else "stop",
                    truncated=truncated,
                    reward=reward,
                    judge_status=("correct" if reward == 1 else "wrong_answer")
                    if item.kind == "math"
                    else ("accepted" if reward == 1 else "wrong_answer"),
                )
            )
        return RolloutGroup(
            work_id=item.id,
            kind=item.kind,
            stage=item.stage,
            policy_version=item.policy_version,
            temperature=item.sampling.temperature,
            generator_id=self.generator_id,
            attempt=item.attempt,
            prompt_token_ids=[1, 2, 3],
            completions=completions,
        )
