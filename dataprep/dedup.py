"""`acerl data dedup`: drop repeated problems, keeping the first.

Reasons, checked in this order: "exact" (the same prompt text), "normalised" (the same problem
text after `dataprep.text.normalised`, so a template change does not hide a repeat), and for code
"url" (the same `meta.url`: one source problem scraped twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataprep.text import normalised
from proto.prompt import Kind


@dataclass(frozen=True)
class Removal:
    id: str
    kept_id: str
    reason: str

    def report(self) -> dict[str, str]:
        return {"id": self.id, "kept_id": self.kept_id, "reason": self.reason}


def dedup(records: list[dict[str, Any]], kind: Kind) -> tuple[list[dict[str, Any]], list[Removal]]:
    """The records kept (in order) and one removal per dropped record."""
    by_prompt: dict[str, str] = {}
    by_text: dict[str, str] = {}
    by_url: dict[str, str] = {}
    kept: list[dict[str, Any]] = []
    removed: list[Removal] = []
    for record in records:
        ident, prompt = record["id"], record["prompt"]
        text = normalised(prompt)
        url = (record.get("meta") or {}).get("url") if kind == "code" else None
        url = url.strip() if isinstance(url, str) and url.strip() else None
        if prompt in by_prompt:
            removed.append(Removal(ident, by_prompt[prompt], "exact"))
        elif text in by_text:
            removed.append(Removal(ident, by_text[text], "normalised"))
        elif url is not None and url in by_url:
            removed.append(Removal(ident, by_url[url], "url"))
        else:
            by_prompt[prompt] = by_text[text] = ident
            if url is not None:
                by_url[url] = ident
            kept.append(record)
    return kept, removed
