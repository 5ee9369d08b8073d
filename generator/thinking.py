"""Whether a rendered prompt leaves the response inside an open `<think>` block.

DeepSeek-R1-Distill's and AceReason-Nemotron's chat templates end the generation prompt with
`<｜Assistant｜><think>\\n`: the response then starts inside the reasoning and holds only the
closing `</think>`. The judge must know, or it scores a box inside unfinished reasoning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

THINK_OPEN = "<think>"
TAIL_TOKENS = 8  # enough for `<think>` and the whitespace after it; the prompt may be long


def opens_think(rendered_prompt: str) -> bool:
    """True if the prompt text ends with `<think>`, trailing whitespace aside."""
    return rendered_prompt.rstrip().endswith(THINK_OPEN)


def prompt_opens_think(tokenizer: Any, prompt_token_ids: np.ndarray) -> bool:
    """`opens_think` of the prompt's text, decoded from its last tokens only."""
    tail = TAIL_TOKENS
    while True:
        ids = prompt_token_ids[-tail:].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=False)
        # A tail of nothing but whitespace says nothing yet: look further back.
        if text.strip() or tail >= len(prompt_token_ids):
            return opens_think(text)
        tail *= 2
