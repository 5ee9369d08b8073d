"""Hypothesis strategies: one per message type, producing only valid messages."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from proto import (
    Ack,
    Completion,
    Credit,
    Error,
    Heartbeat,
    Hello,
    JudgeRequest,
    JudgeStats,
    Message,
    RolloutGroup,
    SamplingParams,
    Shutdown,
    StatsRequest,
    Status,
    StatusRequest,
    TestCase,
    Verdict,
    WeightAnnounce,
    WeightChunk,
    WeightRequest,
    WorkAborted,
    WorkBatch,
    WorkCancel,
    WorkItem,
)
from proto.judge import REWARDED_STATUSES, VerdictStatus
from proto.run import RunRequest, RunResult, RunStatus
from proto.weights import DTYPES, BroadcastGroup, TensorSpec, WeightManifest

ids = st.text(min_size=1, max_size=40)
texts = st.text(max_size=200)
versions = st.integers(min_value=0, max_value=2**40)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
tokens = st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=64).map(
    lambda xs: np.asarray(xs, dtype=np.int32)
)
test_cases = st.builds(TestCase, input=texts, output=texts)
statuses = st.sampled_from(VerdictStatus.__args__)
file_names = st.from_regex(r"[a-z]{1,8}(/[a-z0-9_.]{1,8}){0,2}", fullmatch=True).filter(
    lambda name: ".." not in name
)


@st.composite
def completions(draw: st.DrawFn) -> Completion:
    token_ids = draw(tokens)
    # log-probabilities are any float32, -inf included (a token the sampler gave no mass).
    logprobs = np.asarray(
        draw(
            st.lists(
                st.floats(width=32, allow_nan=False, max_value=0),
                min_size=len(token_ids),
                max_size=len(token_ids),
            )
        ),
        dtype=np.float32,
    )
    finish = draw(st.sampled_from(["stop", "length"]))
    return Completion(
        token_ids=token_ids,
        logprobs=logprobs,
        finish_reason=finish,
        truncated=finish == "length",
        reward=draw(floats),
        judge_status=draw(statuses),
        judge_detail=draw(texts),
    )


sampling_params = st.builds(
    SamplingParams,
    n=st.integers(1, 64),
    max_tokens=st.integers(1, 65536),
    temperature=st.floats(0, 2),
    top_p=st.floats(0.01, 1),
    top_k=st.integers(-1, 100),
    stop=st.lists(texts, max_size=3),
    seed=st.none() | st.integers(0, 2**31),
)


@st.composite
def work_items(draw: st.DrawFn) -> WorkItem:
    kind = draw(st.sampled_from(["math", "code"]))
    use_text = draw(st.booleans())
    return WorkItem(
        id=draw(ids),
        kind=kind,
        stage=draw(st.integers(0, 10)),
        policy_version=draw(versions),
        prompt=draw(texts) if use_text else None,
        prompt_token_ids=None if use_text else draw(tokens),
        apply_chat_template=draw(st.booleans()),
        sampling=draw(sampling_params),
        lease_s=draw(st.floats(0.1, 1e6)),
        attempt=draw(st.integers(0, 100)),
        **draw(judge_fields(kind)),
    )


@st.composite
def judge_fields(draw: st.DrawFn, kind: str) -> dict:
    """What the judge needs of a math or code item, as work items and judge requests carry it."""
    return {
        "answer": draw(texts) if kind == "math" else None,
        "tests": draw(st.lists(test_cases, min_size=1, max_size=4)) if kind == "code" else None,
        "fn_name": draw(st.none() | ids) if kind == "code" else None,
        "time_limit_s": draw(st.none() | st.floats(0.01, 100)),
        "memory_limit_mb": draw(st.none() | st.integers(1, 1 << 16)),
    }


@st.composite
def judge_requests(draw: st.DrawFn) -> JudgeRequest:
    kind = draw(st.sampled_from(["math", "code"]))
    return JudgeRequest(
        id=draw(ids),
        kind=kind,
        response=draw(texts),
        **draw(judge_fields(kind)),
    )


@st.composite
def verdicts(draw: st.DrawFn) -> Verdict:
    status = draw(statuses)
    return Verdict(id=draw(ids), reward=int(status in REWARDED_STATUSES), status=status, detail=draw(texts))


@st.composite
def weight_chunks(draw: st.DrawFn) -> WeightChunk:
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    shape = draw(st.lists(st.integers(0, 8), max_size=3))
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    offset = draw(st.integers(0, nbytes))
    data = draw(st.binary(max_size=nbytes - offset))
    return WeightChunk(
        version=draw(versions),
        seq=draw(st.integers(0, 10_000)),
        name=draw(ids),
        dtype=dtype,
        shape=shape,
        offset=offset,
        data=data,
        last=draw(st.booleans()),
    )


roles = st.sampled_from(["learner", "generator", "judge", "client"])

MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    WorkItem: work_items(),
    WorkBatch: st.builds(WorkBatch, items=st.lists(work_items(), max_size=3)),
    Credit: st.builds(Credit, generator_id=ids, credits=st.integers(0, 10_000)),
    WorkCancel: st.builds(WorkCancel, work_ids=st.lists(ids, max_size=5), reason=texts),
    RolloutGroup: st.builds(
        RolloutGroup,
        work_id=ids,
        kind=st.sampled_from(["math", "code"]),
        stage=st.integers(0, 10),
        policy_version=versions,
        temperature=st.floats(0, 2),
        generator_id=ids,
        attempt=st.integers(0, 100),
        prompt_token_ids=tokens,
        completions=st.lists(completions(), min_size=1, max_size=4),
        timings=st.dictionaries(texts, floats, max_size=3),
    ),
    WorkAborted: st.builds(WorkAborted, generator_id=ids, work_ids=st.lists(ids, max_size=5), reason=texts),
    JudgeRequest: judge_requests(),
    Verdict: verdicts(),
    RunRequest: st.builds(
        RunRequest,
        id=ids,
        code=texts,
        stdin=texts,
        time_limit_s=st.none() | st.floats(0.01, 100),
        memory_limit_mb=st.none() | st.integers(1, 1 << 16),
        files=st.dictionaries(file_names, st.binary(max_size=64), max_size=3),
        fetch_files=st.lists(file_names, max_size=3),
    ),
    RunResult: st.builds(
        RunResult,
        id=ids,
        status=st.sampled_from(RunStatus.__args__),
        exit_code=st.none() | st.integers(0, 255),
        signal=st.none() | st.integers(1, 64),
        cpu_s=st.floats(0, 1e4),
        wall_s=st.floats(0, 1e4),
        stdout=texts,
        stderr=texts,
        files=st.dictionaries(file_names, st.binary(max_size=64), max_size=3),
        detail=texts,
    ),
    StatsRequest: st.just(StatsRequest()),
    JudgeStats: st.builds(
        JudgeStats,
        counts=st.dictionaries(texts, st.integers(0, 2**40), max_size=5),
        latency_ms=st.dictionaries(texts, floats, max_size=4),
        queue_depth=st.integers(0, 10**6),
        in_flight=st.integers(0, 10**4),
        workers=st.integers(0, 512),
        uptime_s=floats,
    ),
    WeightAnnounce: st.builds(
        WeightAnnounce,
        version=versions,
        num_tensors=st.integers(0, 10**5),
        total_bytes=st.integers(0, 2**50),
        address=texts,
        group=st.none()
        | st.builds(
            BroadcastGroup,
            store=st.just("127.0.0.1:29500"),
            group_id=st.integers(0, 10**6),
            members=st.lists(ids, min_size=1, max_size=4),
            bucket_bytes=st.integers(1, 1 << 30),
        ),
    ),
    WeightRequest: st.builds(WeightRequest, version=versions, generator_id=ids, join_broadcast=st.booleans()),
    WeightManifest: st.builds(
        WeightManifest,
        version=versions,
        tensors=st.lists(
            st.builds(
                TensorSpec,
                name=ids,
                dtype=st.sampled_from(list(DTYPES)),
                shape=st.lists(st.integers(0, 64), max_size=3),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    WeightChunk: weight_chunks(),
    Hello: st.builds(
        Hello,
        sender=ids,
        role=roles,
        host=texts,
        pid=st.integers(0, 2**22),
        info=st.dictionaries(texts, texts, max_size=3),
    ),
    Heartbeat: st.builds(
        Heartbeat,
        sender=ids,
        role=roles,
        time=floats,
        policy_version=st.none() | versions,
        holding=st.integers(0, 10**4),
    ),
    Ack: st.builds(Ack, detail=texts),
    Error: st.builds(
        Error,
        code=st.sampled_from(
            ["bad_request", "busy", "unavailable", "not_found", "shutting_down", "internal"]
        ),
        detail=texts,
        ref_id=st.none() | ids,
    ),
    Shutdown: st.builds(Shutdown, reason=texts, deadline_s=st.floats(0, 1e4)),
    StatusRequest: st.just(StatusRequest()),
    Status: st.builds(
        Status,
        generators=st.lists(ids, max_size=5),
        step=st.integers(0, 10**6),
        version=st.none() | versions,
        stage=st.integers(0, 10),
        done=st.booleans(),
    ),
}

any_message = st.one_of(*MESSAGES.values())
