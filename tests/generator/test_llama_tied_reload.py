"""An in-place weight update of a Llama with tied embeddings (SmolLM2's architecture): the update
reaches the output head through the tie, as a fresh engine on the new weights shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from generator.config import EngineConfig
from generator.engine import Engine
from tests.generator.extension import ENGINE_ARGS, parameter_checksum
from tests.generator.scripted import model_tensors, perturbed
from tests.generator.test_engine import _assert_matches, _load_v1, _probe

pytestmark = pytest.mark.slow


def write_tied_llama(out: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Llama (head_dim 64, the smallest the CPU kernels take) with the tiny tokenizer."""
    for path in tokenizer_dir.iterdir():
        if path.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(path, out / path.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as SmolLM2 has
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_a_tied_llama_updated_in_place_samples_as_a_fresh_engine_on_the_new_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "v0").mkdir()
    v0 = write_tied_llama(tmp_path / "v0", tiny_model_dir)
    assert set(model_tensors(v0)) >= {"model.embed_tokens.weight"}
    assert "lm_head.weight" not in model_tensors(v0)  # the tie is saved once, as the learner sends it
    v1 = tmp_path / "v1"
    shutil.copytree(v0, v1)
    save_file(perturbed(model_tensors(v0), seed=1), str(v1 / "model.safetensors"))

    config = EngineConfig(max_model_len=512, in_process=False, args=ENGINE_ARGS)
    fresh = Engine(v1, config, version=1)
    try:
        expected = (_probe(fresh), parameter_checksum(fresh))
    finally:
        fresh.close()
    engine = Engine(v0, config)
    try:
        before = _probe(engine)
        _load_v1(engine, v1)
        assert [t for t, _, _ in _probe(engine)] != [t for t, _, _ in before], "the update changed nothing"
        _assert_matches(engine, expected)
    finally:
        engine.close()
