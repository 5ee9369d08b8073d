"""`python -m generator --learner ADDR --judge ADDR --model PATH [--engine-args KEY=VALUE ...]`."""

from __future__ import annotations

import logging
import sys

import structlog

from generator.config import ConfigError, GeneratorConfig, load_config


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s", stream=sys.stderr)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def serve(config: GeneratorConfig) -> int:
    from generator.engine import Engine
    from generator.weight_loader import resolve_path
    from generator.worker import Worker

    engine = Engine(
        config.model,
        config.engine,
        weight_path=resolve_path(config.weight_path),
        version=config.initial_version,
    )
    return Worker(config, engine).run()


def main() -> int:
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"python -m generator: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    return serve(config)


if __name__ == "__main__":  # vLLM starts its workers with spawn: keep the engine behind this guard
    sys.exit(main())
