"""Hand-made rollout groups for the learner's tests."""

from __future__ import annotations

import numpy as np

from proto.rollout import Completion, RolloutGroup


def completion(
    tokens: list[int],
    reward: float,
    *,
    truncated: bool = False,
    status: str | None = None,
    rng: np.random.Generator | None = None,
) -> Completion:
    rng = rng or np.random.default_rng(len(tokens))
    if status is None:
        status = "correct" if reward > 0 else "wrong_answer"
    return Completion(
        token_ids=np.array(tokens, dtype=np.int32),
        # A sampler that disagrees a little with the learner: mismatch metrics and IS weights move.
        logprobs=(-rng.uniform(3.0, 9.0, size=len(tokens))).astype(np.float32),
        finish_reason="length" if truncated else "stop",
        truncated=truncated,
        reward=reward,
        judge_status=status,
    )


def group(
    work_id: str,
    prompt: list[int],
    completions: list[Completion],
    *,
    kind: str = "math",
    version: int = 0,
    stage: int = 0,
    temperature: float = 1.0,
) -> RolloutGroup:
    return RolloutGroup(
        work_id=work_id,
        kind=kind,
        stage=stage,
        policy_version=version,
        temperature=temperature,
        generator_id="test",
        prompt_token_ids=np.array(prompt, dtype=np.int32),
        completions=completions,
    )


def mixed_batch(vocab: int = 512, seed: int = 0) -> list[RolloutGroup]:
    """Mixed prompt and response lengths, truncations, two zero-variance groups, an unjudged one."""
    rng = np.random.default_rng(seed)

    def toks(n: int) -> list[int]:
        return rng.integers(5, vocab, size=n).tolist()

    return [
        group(
            "a",
            toks(3),
            [
                completion(toks(5), 1.0, rng=rng),
                completion(toks(12), 0.0, truncated=True, rng=rng),
                completion(toks(2), 0.0, rng=rng),
                completion(toks(7), 1.0, rng=rng),
            ],
        ),
        group(
            "b",
            toks(9),
            [
                completion(toks(1), 0.0, rng=rng),
                completion(toks(10), 1.0, rng=rng),
                completion(toks(4), 0.0, truncated=True, rng=rng),
            ],
            kind="code",
        ),
        group("c-all-right", toks(5), [completion(toks(3), 1.0, rng=rng), completion(toks(6), 1.0, rng=rng)]),
        group(
            "d-all-wrong",
            toks(4),
            [
                completion(toks(8), 0.0, truncated=True, rng=rng),
                completion(toks(2), 0.0, rng=rng),
            ],
            kind="code",
        ),
        group(
            "e-unjudged",
            toks(6),
            [
                completion(toks(4), 1.0, rng=rng),
                completion(toks(5), 0.0, status="sandbox_error", rng=rng),
            ],
            kind="code",
        ),
        group(
            "f",
            toks(2),
            [
                completion(toks(6), 0.0, truncated=True, rng=rng),
                completion(toks(3), 1.0, rng=rng),
                completion(toks(9), 0.5, rng=rng),
                completion(toks(11), 0.0, rng=rng),
            ],
        ),
    ]
