"""structlog set-up for `tgw sim`, called once by the CLI entry points.

JSON lines when stderr is not a terminal, coloured key-value output when it is. (device_sim
does not import gateway, so this mirrors gateway.logconfig rather than sharing it.)
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is now (loggers are cached; stderr may be swapped, e.g.
    by a test runner capturing output, and the one seen at configuration closed)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and the standard library's logging for this process.

    Args:
        level: minimum level name (DEBUG, INFO, WARNING, ERROR).
        json: force JSON (True) or console (False) output; None picks by TTY.
    """
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    use_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]  # a TextIO in all that WriteLogger uses
        cache_logger_on_first_use=True,
    )
    # paho and python-can log through the standard library; keep them at WARNING.
    logging.basicConfig(level=max(numeric_level, logging.WARNING), stream=_CurrentStderr())
