"""The generator's worker extension, plus a look at the parameters the engine's workers hold."""

from __future__ import annotations

from typing import Any

from generator.weight_loader import WeightReloadExtension

# engine.args that start an engine with this extension in place of the generator's own
ENGINE_ARGS = {"worker_extension_cls": "tests.generator.extension.ChecksumExtension"}


class ChecksumExtension(WeightReloadExtension):
    def acerl_parameter_checksum(self) -> dict[str, float]:
        """Sum of every parameter, by name: shows whether a reload reached the workers."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {name: float(param.detach().double().sum()) for name, param in model.named_parameters()}


def parameter_checksum(engine: Any) -> dict[str, float]:
    """The parameter sums of an Engine started with ENGINE_ARGS."""
    return engine.llm.collective_rpc("acerl_parameter_checksum")[0]
