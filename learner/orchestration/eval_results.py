"""What an evaluation round leaves on disk: one line per prompt, and a summary.

    per_prompt.jsonl  {"id", "k", "correct", "pass1", "mean_length", "truncated", "statuses", "meta"?}
    summary.json      avg@k, pass@k' for every k' <= k (the unbiased estimator of Chen et al.
                      2021 from k samples), statuses, lengths, skipped prompts; broken down by
                      difficulty and by month where the prompts' `meta` has a difficulty or a date

Training's held-out rounds and `acerl eval` both write these, from the same round object.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

from learner.orchestration.evaluation import EvalRound

BREAKDOWNS = {"difficulty": "by_difficulty", "date": "by_month"}


def pass_at(n: int, correct: int, k: int) -> float:
    """The unbiased estimate of pass@k from `correct` of `n` samples: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n (n = {n})")
    if n - correct < k:
        return 1.0
    # the product form of the ratio of binomials: no huge integers, no loss of precision
    miss = 1.0
    for i in range(n - correct + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def prompt_rows(evaluation: EvalRound) -> list[dict[str, Any]]:
    """One row per scored prompt, in the prompt set's order."""
    rows = []
    for work_id, prompt in evaluation.prompts.items():
        group = evaluation.results.get(work_id)
        if group is None:
            continue
        completions = group.completions
        correct = sum(1 for c in completions if c.reward > 0)
        row: dict[str, Any] = {
            "id": prompt.id,
            "k": len(completions),
            "correct": correct,
            "pass1": correct / len(completions),
            "mean_length": sum(len(c.token_ids) for c in completions) / len(completions),
            "truncated": sum(1 for c in completions if c.truncated),
            "statuses": dict(collections.Counter(c.judge_status for c in completions)),
        }
        if prompt.meta:
            row["meta"] = prompt.meta
        rows.append(row)
    return rows


def _month(value: Any) -> str:
    """ "2024-08-03T00:00:00" or "2024-08-03" -> "2024-08"; anything else as it is."""
    text = str(value)
    return text[:7] if len(text) >= 7 and text[4] == "-" else text


def _scores(rows: list[dict[str, Any]], k: int) -> dict[str, Any]:
    return {
        "prompts": len(rows),
        f"avg@{k}": sum(r["pass1"] for r in rows) / len(rows),
        f"pass@{k}": sum(pass_at(r["k"], r["correct"], k) for r in rows) / len(rows),
    }


def summarize(
    rows: list[dict[str, Any]], k: int, skipped: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """The round's scores; `settings` (task, temperature, max_tokens, ...) are kept beside them."""
    summary: dict[str, Any] = {**settings, "k": k, "prompts": len(rows), "skipped": skipped}
    if not rows:
        return summary
    samples = sum(r["k"] for r in rows)
    statuses: collections.Counter[str] = collections.Counter()
    for r in rows:
        statuses.update(r["statuses"])
    summary[f"avg@{k}"] = sum(r["pass1"] for r in rows) / len(rows)
    summary["pass@"] = {
        str(j): sum(pass_at(r["k"], r["correct"], j) for r in rows) / len(rows) for j in range(1, k + 1)
    }
    summary["mean_length"] = sum(r["mean_length"] * r["k"] for r in rows) / samples
    summary["truncated_frac"] = sum(r["truncated"] for r in rows) / samples
    summary["statuses"] = dict(statuses.most_common())
    for key, name in BREAKDOWNS.items():
        groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in rows:
            value = (r.get("meta") or {}).get(key)
            if value is not None:
                groups[_month(value) if key == "date" else str(value)].append(r)
        if groups:
            summary[name] = {label: _scores(group, k) for label, group in sorted(groups.items())}
    return summary


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(directory: Path, evaluation: EvalRound, settings: dict[str, Any]) -> dict[str, Any]:
    """Write per_prompt.jsonl and summary.json of a finished round under `directory`; the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = prompt_rows(evaluation)
    skipped = [p.id for work_id, p in evaluation.prompts.items() if work_id not in evaluation.results]
    summary = summarize(rows, evaluation.sampling.n, skipped, settings)
    _write_atomic(directory / "per_prompt.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write_atomic(directory / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
