"""One logging set-up for every component: structlog events with a timestamp, the level and the
component's name; JSON lines when written to a file or a pipe (the run's logs/), a readable line
on a terminal. Libraries that log through the standard `logging` module (vLLM, DeepSpeed) keep
their own lines on the same stream, at the same level.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(
    component: str, level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Logs of `component` go to `stream` (stderr: stdout may carry data, e.g. verdicts)."""
    stream = stream or sys.stderr
    as_json = (not stream.isatty()) if json is None else json
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(level=numeric, format="%(name)s %(levelname)s %(message)s", stream=stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(component=component)
