"""The tiny default policy: a byte-level BPE tokenizer and a 2-layer Qwen2, built locally.

No model hub is reachable, so tests and the default run build this model themselves and then
load it with `from_pretrained` from a directory, exactly as a real checkpoint would be loaded.
`python -m learner.tiny.model --out DIR` writes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from learner.tiny.tasks import code_items, math_items

# The model's vocabulary is padded to this size whatever the tokenizer's training yields (as real
# checkpoints pad theirs), so token-id ranges stay fixed when the tasks' text changes.
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
# R1-style turn format: no system prompt, the assistant turn opens with "<think>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<|endoftext|>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)


def _corpus(seed: int) -> list[str]:
    """The tiny tasks' own text: prompts and worked solutions of both kinds."""
    out = []
    for item in [*math_items(3000, seed), *code_items(1000, seed)]:
        out += [item["prompt"], item["solution"]]
    return out


def build_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0, hidden: int = 128, layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,  # head_dim 64: the smallest the CPU attention kernels take
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def write_tiny_model(out: Path, seed: int = 0, hidden: int = 128, layers: int = 2) -> Path:
    """Build and save the tokenizer and a randomly initialised model into `out`."""
    tokenizer = build_tokenizer(seed)
    model = build_model(VOCAB_SIZE, seed, hidden, layers)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    write_tiny_model(args.out, args.seed, args.hidden, args.layers)
    print(args.out)


if __name__ == "__main__":
    main()
