"""A tokenizer built here with DeepSeek-R1-Distill-Qwen's chat template (the hub is out of reach).

Byte-level BPE without merges, so every byte is one token, plus the template's markers as added
tokens, as in the real tokenizer: enough for transformers to render and encode prompts exactly
the way the generator does.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

TEMPLATE_PATH = Path(__file__).parent / "fixtures" / "deepseek_r1_distill_chat_template.jinja"
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
MARKERS = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]


def distill_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer with the R1-Distill template, or `chat_template` instead."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(alphabet)}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    template = TEMPLATE_PATH.read_text(encoding="utf-8") if chat_template is None else chat_template
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, chat_template=template
    )
    tokenizer.add_tokens(MARKERS)
    return tokenizer
