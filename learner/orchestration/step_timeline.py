"""Where a step's wait for its batch went, from the wall-clock stamps its groups carry, and which
generator sampled what.

A generator stamps each group (Unix seconds) when its prompt entered the engine (`started_at`),
when its samples were out (`sampled_at`) and when its last verdict came back (`judged_at`). The
learner waited from `waited_from` (its weights out) to `ready_at` (the batch complete). That wait
is cut into four consecutive parts that add up to it:

    reload    until the first of the batch's groups started sampling: the announcement, the
              generators' fetch and reload of the new weights, and the work going out
    generate  until the last group's samples were out
    judge     until the last verdict came back (judging that outlasted generation)
    return    until the batch was complete at the learner (sending, accepting, screening)

Groups sampled before the wait began (an older version, where staleness allows) count from its
start. Groups without stamps (an older generator) leave the parts out.
"""

from __future__ import annotations

from collections import Counter

from proto.rollout import RolloutGroup

STAMPS = ("started_at", "sampled_at", "judged_at")


def wait_parts(groups: list[RolloutGroup], waited_from: float, ready_at: float) -> dict[str, float]:
    """{reload_s, generate_s, judge_s, return_s}, adding up to `ready_at - waited_from`; {} without stamps."""
    if not groups or any(not all(key in g.timings for key in STAMPS) for g in groups):
        return {}
    # each boundary no earlier than the one before it and within the wait
    marks = [waited_from]
    for at in (
        min(g.timings["started_at"] for g in groups),
        max(g.timings["sampled_at"] for g in groups),
        max(g.timings["judged_at"] for g in groups),
        ready_at,
    ):
        marks.append(min(max(at, marks[-1]), ready_at))
    names = ("reload_s", "generate_s", "judge_s", "return_s")
    return {name: round(marks[i + 1] - marks[i], 6) for i, name in enumerate(names)}


def by_generator(groups: list[RolloutGroup]) -> dict[str, dict[str, int]]:
    """{generator_groups, generator_tokens}: the groups and completion tokens each generator gave."""
    counted: Counter[str] = Counter(g.generator_id for g in groups)
    tokens: Counter[str] = Counter()
    for g in groups:
        tokens[g.generator_id] += sum(len(c.token_ids) for c in g.completions)
    return {"generator_groups": dict(counted), "generator_tokens": dict(tokens)}
