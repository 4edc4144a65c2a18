"""The engine's structured logging, with structlog imported on first use.

Importing structlog imports its development renderer too (and rich, when installed):
tens of milliseconds that a program importing flowtrail only to read runs should not
pay. Configure structlog as usual; these loggers follow its configuration.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["bound_contextvars", "get_logger"]


def get_logger(name: str) -> Any:
    """structlog's logger called ``name`` (a lazy proxy: configuration applies on use).

    Where structlog is not configured, its defaults print every level to standard
    output, and a traceback with every local variable: flowtrail's lines are then shown
    from INFO up (a run's start, end and retries, not each state) on standard error, as
    Prefect's console shows them, leaving standard output to the program (``python
    etl.py > out.json``), with tracebacks of the code alone. Configured, structlog
    decides."""
    import structlog

    if structlog.is_configured():
        return structlog.get_logger(name)
    if sys.stderr is None:  # no standard error (pythonw, a daemon with fd 2 closed): no lines
        return structlog.wrap_logger(structlog.ReturnLogger(), processors=[])
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=_unconfigured_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


@functools.cache
def _unconfigured_processors() -> list[Any]:
    """structlog's default processors, its console renderer showing no local variables."""
    import structlog

    processors = list(structlog.get_config()["processors"])
    if processors and isinstance(processors[-1], structlog.dev.ConsoleRenderer):
        terminal = sys.stderr is not None and sys.stderr.isatty()
        formatter: Any = structlog.dev.plain_traceback  # in a file: no colours, no frames drawn
        if terminal and importlib.util.find_spec("rich") is not None:
            formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
        processors[-1] = structlog.dev.ConsoleRenderer(colors=terminal, exception_formatter=formatter)
    return processors


def bound_contextvars(**values: object) -> AbstractContextManager[None]:
    """Bind ``values`` to every log line written in the block (structlog's contextvars)."""
    import structlog

    return structlog.contextvars.bound_contextvars(**values)
