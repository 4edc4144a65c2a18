"""SIGTERM while a flow runs: the run is cancelled (Cancelling, then Cancelled).

While the outermost flow of a process runs on the main thread, SIGTERM raises
`TerminationSignal` in it (a sync flow) or cancels the task running it (an async
flow); the engine's script takes that in and records the cancellation. The handler is
installed only where SIGTERM still has its default action, and restored after.

A signal never lands in the middle of an orchestrator call or of the script's taking
in its answer: it is held back until the script's next step (`Holding`). Landing
there, it cut a call off after its commit and before its answer reached the script,
so the script never knew what it had written: a subflow created Running by that call
was left Running for ever, its parent cancelled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import weakref
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from flowtrail.engine.context import FlowRunContext
from flowtrail.engine.flow_engine import TerminationSignal

E = TypeVar("E")

__all__ = ["Holding", "holding_here", "terminated", "termination_cancels", "termination_cancels_async"]


class Holding:
    """SIGTERM held back while the engine talks to the log, and delivered at the
    script's next step (thrown in there), or when the script ends (raised)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def arrived(self, signum: int) -> bool:
        """Take in a SIGTERM: whether it is held back for later."""
        if self.depth:
            self.pending = signum
        return bool(self.depth)

    def due(self) -> TerminationSignal | None:
        """The signal held back, once nothing holds it any more."""
        if self.depth or self.pending is None:
            return None
        signum, self.pending = self.pending, None
        return TerminationSignal(signum)

    def deliver(self) -> None:
        """Raise the signal held back, if any (the script has ended: its caller takes it)."""
        due = self.due()
        if due is not None:
            raise due

    def step(self, script: Generator[E, Any, Any], reply: Any, failure: BaseException | None) -> E:
        """The script's next effect, taken with SIGTERM held back. A signal that came
        meanwhile is thrown into the script at once (it takes it in at that step); one
        that came as the script ended is raised in place of its end (StopIteration)."""
        while True:
            try:
                with self.held():
                    effect = script.send(reply) if failure is None else script.throw(failure)
            except BaseException:
                self.deliver()
                raise
            due = self.due()
            if due is None:
                return effect
            reply, failure = None, due


#: What the main thread's sync flows hold back (signal handlers run on the main thread).
_main = Holding()
#: What each async flow's task holds back, for the outermost flows that own SIGTERM.
_tasks: weakref.WeakKeyDictionary[asyncio.Task[object], Holding] = weakref.WeakKeyDictionary()


def holding_here() -> Holding:
    """Where a flow driven here holds SIGTERM back: the process's own for the main
    thread's sync flows, the task's for an async flow whose task owns SIGTERM, and
    otherwise one no signal reaches."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is not None:
        return _tasks.get(task) or Holding()
    return _main if threading.current_thread() is threading.main_thread() else Holding()


def _raise_termination(signum: int, frame: FrameType | None) -> None:
    if not _main.arrived(signum):
        raise TerminationSignal(signum)


def _owns_sigterm(parent: FlowRunContext | None) -> bool:
    """Whether this call turns SIGTERM into a cancellation: the outermost flow, on the
    main thread, where SIGTERM still has its default action."""
    return (
        parent is None
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )


@contextmanager
def termination_cancels(parent: FlowRunContext | None) -> Iterator[None]:
    """Turn SIGTERM into a cancellation while the outermost flow runs (main thread only)."""
    if not _owns_sigterm(parent):
        yield
        return
    _main.pending = None
    signal.signal(signal.SIGTERM, _raise_termination)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _ForkedTermination:
    """A process forked while a flow's SIGTERM handler is installed (a pool of workers
    the flow starts, say) gets SIGTERM's default action back, and loses no SIGTERM.

    CPython drops a signal that reaches a child between the fork and its own reset of
    signal state (the handler runs nowhere): a busy machine's worker, sent SIGTERM by
    `multiprocessing.Pool.terminate` before it ever ran, then waited for work for ever,
    and the pool with it. So SIGTERM is blocked across the fork, and the child unblocks
    it only once its handler is the default one again, which ends it at once.
    """

    def __init__(self) -> None:
        self.blocked = False

    def before(self) -> None:
        self.blocked = signal.getsignal(signal.SIGTERM) is _raise_termination
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def in_parent(self) -> None:
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def in_child(self) -> None:
        if self.blocked:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            finally:  # never leave the child deaf to SIGTERM
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


_forked_termination = _ForkedTermination()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_forked_termination.before,
        after_in_parent=_forked_termination.in_parent,
        after_in_child=_forked_termination.in_child,
    )


#: The message of the cancellation `termination_cancels_async` sends the flow's task.
_TERMINATED = "flowtrail: SIGTERM"


@contextmanager
def termination_cancels_async(parent: FlowRunContext | None) -> Iterator[None]:
    """`termination_cancels` for an async flow: SIGTERM cancels the task running it,
    and the engine's driver, seeing that cancellation, cancels the run (Cancelling,
    then Cancelled), with the cancellation hooks, as for a sync flow. (A handler that
    raised from inside the event loop would end `asyncio.run` instead, which cancels
    every task: the run would be recorded Crashed.)"""
    task = asyncio.current_task()
    if not _owns_sigterm(parent) or task is None:
        yield
        return
    loop = asyncio.get_running_loop()
    holding = _tasks[task] = Holding()

    def terminate() -> None:
        if not holding.arrived(signal.SIGTERM):
            task.cancel(_TERMINATED)

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        _tasks.pop(task, None)


def terminated(exc: BaseException) -> TerminationSignal | None:
    """The termination a cancellation of `termination_cancels_async` stands for."""
    if isinstance(exc, asyncio.CancelledError) and exc.args == (_TERMINATED,):
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # taken in: the run's cancellation is recorded, then it ends
        return TerminationSignal(signal.SIGTERM)
    return None
