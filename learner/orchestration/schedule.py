"""The stage schedule: math stages with growing response lengths, then code stages."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from proto.config import Config


class Stage(Config):
    name: str = Field(min_length=1)
    kind: Literal["math", "code"]
    prompts: Path  # a prompt set file (see learner/orchestration/prompts.py)
    steps: int = Field(ge=1)
    max_response_tokens: int = Field(ge=1)
    batch_prompts: int = Field(ge=1)
    n: int = Field(ge=1)  # completions per prompt
    n_final: int | None = Field(default=None, ge=1)  # ramp n linearly over the stage's epochs
    temperature: float = Field(default=1.0, ge=0)
    temperature_final: float | None = Field(default=None, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    learning_rate: float = Field(gt=0)
    mask_truncated: bool = True  # overlong filtering: truncated completions get no gradient
    filter_solved: bool = False  # drop prompts every completion solved, at each epoch's end
    prompt_template: str = "{prompt}"
    stop: list[str] = []
    ramp_epochs: int = Field(default=1, ge=1)  # epochs over which n and temperature ramp

    @model_validator(mode="after")
    def _template_has_prompt(self) -> Stage:
        if "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {prompt}")
        return self

    def sampling_at(self, epoch: int) -> tuple[int, float]:
        """(n, temperature) in `epoch`: the recipe raises both across the last code stage's epochs."""
        fraction = min(1.0, epoch / max(1, self.ramp_epochs - 1)) if self.ramp_epochs > 1 else 0.0
        n = self.n if self.n_final is None else round(self.n + (self.n_final - self.n) * fraction)
        temperature = self.temperature
        if self.temperature_final is not None:
            temperature += (self.temperature_final - self.temperature) * fraction
        return n, temperature


class Schedule(Config):
    stages: list[Stage] = Field(min_length=1)
    max_staleness: int = Field(default=0, ge=0)  # 0: strictly on-policy
    dynamic_sampling: bool = True  # drop groups whose rewards are all equal; top the batch up
    # ...but after this many batches' worth of such groups in one step, keep them (they train
    # nothing; the step goes on and shows zero_var_frac) rather than sample forever.
    max_zero_variance_batches: float = Field(default=8.0, gt=0)
    seed: int = 0
    lease_s: float = Field(default=600.0, gt=0)  # a prompt not answered in this time is re-issued
    max_attempts: int = Field(default=3, ge=1)  # issues of one prompt before it is skipped
