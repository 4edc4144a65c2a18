"""The engine's structured logging, with structlog imported on first use.

Importing structlog imports its development renderer too (and rich, when installed):
tens of milliseconds that a program importing flowtrail only to read runs should not
pay. Configure structlog as usual; these loggers follow its configuration.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["bound_contextvars", "get_logger"]


def get_logger(name: str) -> Any:
    """structlog's logger called ``name`` (a lazy proxy: configuration applies on use).

    Where structlog is not configured, its defaults print every level: flowtrail's
    lines are then shown from INFO up (a run's start, end and retries, not each state),
    as Prefect's console shows them. Configured, structlog decides."""
    import structlog

    if structlog.is_configured():
        return structlog.get_logger(name)
    return structlog.wrap_logger(
        None, wrapper_class=structlog.make_filtering_bound_logger(logging.INFO), logger_factory_args=(name,)
    )


def bound_contextvars(**values: object) -> AbstractContextManager[None]:
    """Bind ``values`` to every log line written in the block (structlog's contextvars)."""
    import structlog

    return structlog.contextvars.bound_contextvars(**values)
