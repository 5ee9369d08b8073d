"""`python -m generator [--config FILE.yaml] [key=value ...]`: one rollout worker around vLLM."""

from __future__ import annotations

import argparse
import sys

from generator.config import GeneratorConfig
from proto.config import ConfigError, add_settings_arguments, fields_help, load, parse_command_line
from proto.logs import configure_logging


def build_parser(prog: str = "python -m generator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A rollout worker: takes work from the learner's dispatcher, samples it with vLLM, "
        "has the judge score it and sends the judged groups back. Start as many as you like.",
        epilog="Settings: defaults, then --config FILE, then dotted key=value overrides, e.g.\n"
        "  learner=tcp://HOST:5555 judge=tcp://HOST:5556 model=/path/to/model engine.max_model_len=4096\n"
        f"The fields:\n{fields_help(GeneratorConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser, GeneratorConfig)
    return parser


def load_config(argv: list[str], prog: str = "python -m generator") -> tuple[GeneratorConfig, str]:
    args = parse_command_line(build_parser(prog), argv)
    config = load(GeneratorConfig, args.config, args.overrides)
    if not (config.model / "config.json").is_file():
        raise ConfigError(f"model: {config.model} is not a Hugging Face model directory (no config.json)")
    return config, args.log_level


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


def main(argv: list[str] | None = None, prog: str = "python -m generator") -> int:
    try:
        config, level = load_config(sys.argv[1:] if argv is None else argv, prog)
    except ConfigError as exc:
        print(f"generator: bad configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging("generator", level)
    return serve(config)


if __name__ == "__main__":  # vLLM starts its workers with spawn: keep the engine behind this guard
    sys.exit(main())
