"""What a flow call finds around it: the orchestrator to write to, the flow run it is
called from (which makes it a subflow), and the tags in effect.

Where a flow run is written, in order: the orchestrator of the enclosing
``with SyncOrchestrator.open(url)`` / ``async with Orchestrator.open(url)`` block;
else the URL in ``FLOWTRAIL_DATABASE_URL``; else ``sqlite:///~/.flowtrail/flowtrail.db``.
A sync flow writes through a `SyncOrchestrator` and an async flow through an
`Orchestrator`: when the enclosing block opened the other kind, a twin is opened on the
same URL for the call.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrail.core.errors import InvalidUrlError
from flowtrail.core.fold import RunView
from flowtrail.engine.checks import check_name

if TYPE_CHECKING:
    from flowtrail.engine.orchestrator import Orchestrator, SyncOrchestrator

__all__ = ["FlowRunContext", "current_flow_run", "default_url", "enclosing", "tags"]

_ENVIRONMENT_URL = "FLOWTRAIL_DATABASE_URL"


def default_url() -> str:
    """``FLOWTRAIL_DATABASE_URL``, else the embedded log in ``~/.flowtrail``."""
    url = os.environ.get(_ENVIRONMENT_URL)
    if url is not None:
        if not url.strip():
            raise InvalidUrlError(f"{_ENVIRONMENT_URL} is set but empty")
        return url
    return f"sqlite:///{Path.home() / '.flowtrail' / 'flowtrail.db'}"


@dataclass
class Enclosing:
    """The orchestrator of an enclosing ``open(url)`` block (one of the two kinds)."""

    url: str
    sync: SyncOrchestrator | None = None
    asynchronous: Orchestrator | None = None


_enclosing: ContextVar[Enclosing | None] = ContextVar("flowtrail_enclosing_orchestrator", default=None)


def enclosing() -> Enclosing | None:
    return _enclosing.get()


@contextmanager
def entered(
    url: str, *, sync: SyncOrchestrator | None = None, asynchronous: Orchestrator | None = None
) -> Iterator[None]:
    """Make an orchestrator the enclosing one for flows called in the block."""
    token = _enclosing.set(Enclosing(url, sync, asynchronous))
    try:
        yield
    finally:
        _enclosing.reset(token)


@dataclass
class FlowRunContext:
    """The flow run whose function is running (what makes a flow called in it a subflow)."""

    run: RunView
    url: str
    orchestrator: Any
    #: Dynamic keys of the subflows called in this attempt: 0, 1, 2, ...
    counter: Iterator[int] = field(default_factory=itertools.count)


_current: ContextVar[FlowRunContext | None] = ContextVar("flowtrail_current_flow_run", default=None)


def current_flow_run() -> FlowRunContext | None:
    """The flow run whose function is running here, if any."""
    return _current.get()


@contextmanager
def running(context: FlowRunContext) -> Iterator[None]:
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


_tags: ContextVar[tuple[str, ...]] = ContextVar("flowtrail_tags", default=())


@contextmanager
def tags(*names: str) -> Iterator[tuple[str, ...]]:
    """Tag every flow run created in the block (tags accumulate when nested)::

    with flowtrail.tags("nightly", "eu"):
        etl()
    """
    added = tuple(check_name(name, "a tag") for name in names)
    token = _tags.set(tuple(dict.fromkeys((*_tags.get(), *added))))
    try:
        yield _tags.get()
    finally:
        _tags.reset(token)


def current_tags() -> tuple[str, ...]:
    return _tags.get()
