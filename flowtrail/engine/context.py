"""What a flow call finds around it: the orchestrator to write to, the flow run it is
called from (which makes it a subflow), and the tags in effect.

Where a flow run is written, in order: the orchestrator of the enclosing
``with SyncOrchestrator.open(url)`` / ``async with Orchestrator.open(url)`` block;
else, called in a thread of its own, the log of the block open in another thread of
the process (through an orchestrator of its own; an error where several logs are open);
else the URL in ``FLOWTRAIL_DATABASE_URL``; else ``sqlite:///~/.flowtrail/flowtrail.db``.
A sync flow writes through a `SyncOrchestrator` and an async flow through an
`Orchestrator`: when the enclosing block opened the other kind, a twin is opened on the
same URL for the call.

A process forked while a flow ran (a ``multiprocessing`` pool started in a flow) keeps
its context: flows called there are subflows of that flow run, written through an
orchestrator the child opens on the same URL, with subflow keys of the child's own (the
parent's counts, copied into each child, would give two children's calls one key, and
the second would take the first one's subflow for its own).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtrail.core.errors import InvalidUrlError
from flowtrail.core.fold import RunView
from flowtrail.engine.checks import check_name
from flowtrail.store.urls import sqlite_url

if TYPE_CHECKING:
    from flowtrail.engine.orchestrator import Orchestrator, SyncOrchestrator

__all__ = [
    "FlowRunContext",
    "FlowsUnderWay",
    "current_flow_run",
    "default_url",
    "enclosing",
    "flows_under_way",
    "tags",
]

_ENVIRONMENT_URL = "FLOWTRAIL_DATABASE_URL"


def default_url() -> str:
    """``FLOWTRAIL_DATABASE_URL``, else the embedded log in ``~/.flowtrail``."""
    url = os.environ.get(_ENVIRONMENT_URL)
    if url is not None:
        if not url.strip():
            raise InvalidUrlError(f"{_ENVIRONMENT_URL} is set but empty")
        return url
    return sqlite_url(Path.home() / ".flowtrail" / "flowtrail.db")


@dataclass
class Enclosing:
    """The orchestrator of an enclosing ``open(url)`` block (one of the two kinds)."""

    url: str
    sync: SyncOrchestrator | None = None
    asynchronous: Orchestrator | None = None
    #: The process that opened it.
    pid: int = field(default_factory=os.getpid)


_enclosing: ContextVar[Enclosing | None] = ContextVar("flowtrail_enclosing_orchestrator", default=None)


def enclosing() -> Enclosing | None:
    """The block a flow called here is in: the one around the call, else the one open
    in another thread of this process (`_open_blocks`)."""
    around = _enclosing.get()
    return around if around is not None else _open_blocks.elsewhere()


class _OpenBlocks:
    """The blocks open in this process, whichever thread opened them. A flow called in
    a thread of its own (a pool's worker: threads do not inherit the context of the
    one that started them) writes to that log too, through an orchestrator of its own,
    rather than to another log without a word; Prefect's flows called in threads write
    to the one API the process is set up with."""

    def __init__(self) -> None:
        self.blocks: list[Enclosing] = []
        self.lock = threading.Lock()

    def add(self, block: Enclosing) -> None:
        with self.lock:
            self.blocks.append(block)

    def remove(self, block: Enclosing) -> None:
        with self.lock:
            self.blocks = [other for other in self.blocks if other is not block]

    def elsewhere(self) -> Enclosing | None:
        with self.lock:
            urls = list(dict.fromkeys(block.url for block in self.blocks))
            opener = self.blocks[-1] if self.blocks else None
        if opener is None:
            return None
        if len(urls) > 1:
            raise InvalidUrlError(
                f"this flow is called outside every open block, and {len(urls)} logs are open "
                "in other threads of this process: call it in the context of one "
                "(contextvars.copy_context().run), or open a block around the call"
            )
        return Enclosing(opener.url, pid=opener.pid)

    def after_fork(self) -> None:
        self.lock = threading.Lock()  # another thread may have held it at the fork


_open_blocks = _OpenBlocks()


@contextmanager
def entered(
    url: str, *, sync: SyncOrchestrator | None = None, asynchronous: Orchestrator | None = None
) -> Iterator[None]:
    """Make an orchestrator the enclosing one for flows called in the block."""
    block = Enclosing(url, sync, asynchronous)
    token = _enclosing.set(block)
    _open_blocks.add(block)
    try:
        yield
    finally:
        _open_blocks.remove(block)
        _enclosing.reset(token)


class FlowsUnderWay:
    """The async flows under way on one orchestrator, by the task running each. A flow
    can outlive the call that started it, and the flow that called it: `asyncio.gather`
    returns at its first child cancelled or failed, and the other children go on; a
    flow may be started in a task nobody awaits. Closed under them, the log would leave
    them unable to record their end (Running for ever). So one the engine opened is
    closed by the last flow using it, and a block cancels those still under way as it
    ends (as `asyncio.run` cancels the tasks left) and waits for them to record it.

    Counted in one event loop at a time (the one of the flows under way; a later
    `asyncio.run` starts afresh): a use from another loop is refused by the log anyway."""

    def __init__(self) -> None:
        self.tasks: dict[asyncio.Task[Any], int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._none = asyncio.Event()
        self._none.set()

    @contextmanager
    def one(self) -> Iterator[None]:
        """A flow under way meanwhile, in the running task."""
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        if loop is not self._loop and not self.tasks:
            self._loop, self._none = loop, asyncio.Event()
            self._none.set()
        if task is None or loop is not self._loop:
            yield
            return
        self.tasks[task] = self.tasks.get(task, 0) + 1
        self._none.clear()
        try:
            yield
        finally:
            if self.tasks[task] > 1:
                self.tasks[task] -= 1
            else:
                del self.tasks[task]
            if not self.tasks:
                self._none.set()

    async def ended(self) -> None:
        """Cancel the flows still under way in other tasks, and wait for their end."""
        if asyncio.get_running_loop() is not self._loop:
            return
        me = asyncio.current_task()
        for task in list(self.tasks):
            if task is not me and not task.cancelling():  # not one being cancelled already
                task.cancel()
        await self._none.wait()


_under_way: weakref.WeakKeyDictionary[Any, FlowsUnderWay] = weakref.WeakKeyDictionary()


def flows_under_way(orchestrator: Orchestrator) -> FlowsUnderWay:
    """The async flows under way on ``orchestrator``."""
    found = _under_way.get(orchestrator)
    if found is None:
        found = _under_way[orchestrator] = FlowsUnderWay()
    return found


@dataclass
class FlowRunContext:
    """The flow run whose function is running (what makes a flow called in it a subflow)."""

    run: RunView
    url: str
    orchestrator: Any
    #: What the subflow keys of a forked child start with (see `current_flow_run`).
    key_prefix: str = ""
    #: The process the flow runs in.
    pid: int = field(default_factory=os.getpid)
    #: The count of each subflow's calls in this attempt, by its task key.
    _counts: dict[str, Iterator[int]] = field(default_factory=dict, init=False, repr=False)

    def dynamic_key(self, task_key: str) -> str:
        """The next call's dynamic key for the subflow of ``task_key``: 0, 1, 2, ...
        counted for each subflow apart (Prefect's dynamic_key_for_task_run).

        One count for all subflows would tie a call's key to every call made before it:
        a retry that calls one more subflow first (a branch it takes this time) would
        shift the keys of the calls after it, and each would find the finished child of
        the call before it and return that child's result as its own.
        """
        # setdefault and itertools.count are each one step in C: threads sharing the
        # context (a forked child's) never draw one number twice.
        count = next(self._counts.setdefault(task_key, itertools.count()))
        return f"{self.key_prefix}-{count}" if self.key_prefix else str(count)


_current: ContextVar[FlowRunContext | None] = ContextVar("flowtrail_current_flow_run", default=None)

#: In a forked child: the contexts it inherited, as this process uses them (by id).
_adopted: dict[int, FlowRunContext] = {}


def current_flow_run() -> FlowRunContext | None:
    """The flow run whose function is running here, if any (in a forked child, the one
    running in the process it was forked from: see the module's docs)."""
    context = _current.get()
    if context is None or context.pid == os.getpid():
        return context
    adopted = _adopted.get(id(context))
    if adopted is None:
        # Keys no other process can make: each child is a new attempt at none of the
        # parent's calls, and a restarted child finds nothing of an earlier one to reuse.
        prefix = uuid.uuid4().hex
        adopted = _adopted[id(context)] = FlowRunContext(
            run=context.run,
            url=context.url,
            orchestrator=context.orchestrator,
            key_prefix=prefix,
            pid=context.pid,
        )
    return adopted


def task_run_name(flow_name: str, dynamic_key: str) -> str:
    """The name of a subflow call's parent task run, as Prefect names it: ``square-0``,
    ``square-1``, ... for the calls of ``square``; in a forked child, whose keys carry a
    prefix of its own, ``square-<its first 8 digits>-0``."""
    prefix, _, count = dynamic_key.rpartition("-")
    return f"{flow_name}-{prefix[:8]}-{count}" if prefix else f"{flow_name}-{dynamic_key}"


if hasattr(os, "register_at_fork"):  # a grandchild adopts afresh
    os.register_at_fork(after_in_child=_adopted.clear)
    os.register_at_fork(after_in_child=_open_blocks.after_fork)


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
