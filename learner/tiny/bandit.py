"""A synthetic on-policy task for the demo and the tests: a contextual bandit over tokens.

Each prompt is a fixed random token sequence; the policy answers with a few sampled tokens and
earns reward 1 when the first one lies in a fixed target set (a quarter of the vocabulary), 0
otherwise. The exact expected reward (the target set's probability mass) is measurable, so a
test sees learning without sampling noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from proto.rollout import Completion, RolloutGroup


class TargetTokenBandit:
    def __init__(
        self,
        vocab_size: int,
        *,
        prompts: int = 8,
        prompt_len: int = 6,
        completion_len: int = 3,
        n: int = 8,
        target_frac: float = 0.25,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.prompts = rng.integers(0, vocab_size, size=(prompts, prompt_len)).astype(np.int32)
        self.targets = torch.from_numpy(
            rng.choice(vocab_size, size=int(target_frac * vocab_size), replace=False)
        )
        self.completion_len = completion_len
        self.n = n
        self._batches = 0

    @torch.no_grad()
    def sample(
        self, model: Any, version: int, *, temperature: float = 1.0, stage: int = 0
    ) -> list[RolloutGroup]:
        """n completions per prompt from `model` (torch's global RNG), judged by the target rule."""
        device = next(model.parameters()).device
        ids = torch.from_numpy(np.repeat(self.prompts, self.n, axis=0)).long().to(device)
        tokens, logps = [], []
        for _ in range(self.completion_len):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1].float() / temperature
            logsm = torch.log_softmax(logits, dim=-1)
            token = torch.multinomial(logsm.exp(), 1)
            tokens.append(token)
            logps.append(logsm.gather(-1, token))
            ids = torch.cat([ids, token], dim=1)
        tokens_np = torch.cat(tokens, 1).cpu().numpy().astype(np.int32)
        logps_np = torch.cat(logps, 1).cpu().numpy().astype(np.float32)
        hit = torch.isin(torch.from_numpy(tokens_np[:, 0]).long(), self.targets).numpy()
        groups = []
        for p in range(len(self.prompts)):
            rows = range(p * self.n, (p + 1) * self.n)
            completions = [
                Completion(
                    token_ids=tokens_np[r],
                    logprobs=logps_np[r],
                    finish_reason="stop",
                    truncated=False,
                    reward=float(hit[r]),
                    judge_status="correct" if hit[r] else "wrong_answer",
                )
                for r in rows
            ]
            groups.append(
                RolloutGroup(
                    work_id=f"bandit-{self._batches}-{p}",
                    kind="math",
                    stage=stage,
                    policy_version=version,
                    temperature=temperature,
                    generator_id="bandit",
                    prompt_token_ids=self.prompts[p],
                    completions=completions,
                )
            )
        self._batches += 1
        return groups

    @torch.no_grad()
    def expected_reward(self, model: Any, *, temperature: float = 1.0) -> float:
        """The policy's exact success probability, averaged over the prompts."""
        device = next(model.parameters()).device
        ids = torch.from_numpy(self.prompts).long().to(device)
        probs = torch.softmax(
            model(input_ids=ids, use_cache=False).logits[:, -1].float() / temperature, dim=-1
        )
        return float(probs[:, self.targets.to(device)].sum(-1).mean())
