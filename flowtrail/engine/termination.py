"""SIGTERM and Ctrl-C while a flow runs.

While the outermost flow of a process runs on the main thread, SIGTERM raises
`TerminationSignal` in it (a sync flow) or cancels the task running it (an async
flow); the engine's script takes that in and records the cancellation (Cancelling,
then Cancelled). SIGINT (Ctrl-C) raises KeyboardInterrupt the same way, and the run
is recorded Crashed, as Prefect records it. Each handler is installed only where the
signal still has its usual action (for SIGINT, Python's, or asyncio.run's), and that
is restored after.

A signal never lands in the middle of an orchestrator call or of the script's taking
in its answer: it is held back until the script's next step (`Holding`). Landing
there, it cut a call off after its commit and before its answer reached the script,
so the script never knew what it had written: a subflow created Running by that call
was left Running for ever, its parent cancelled or crashed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import weakref
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from flowtrail.engine.context import FlowRunContext
from flowtrail.engine.flow_engine import TerminationSignal

E = TypeVar("E")

__all__ = ["Holding", "holding_here", "terminated", "termination_cancels", "termination_cancels_async"]


class Holding:
    """A signal (SIGTERM, SIGINT) held back while the engine talks to the log, and
    delivered at the script's next step (thrown in there), or when the script ends
    (raised)."""

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
        """Take in a signal: whether it is held back for later (the first one, where
        two come while it is held)."""
        if self.depth and self.pending is None:
            self.pending = signum
        return bool(self.depth)

    def due(self) -> BaseException | None:
        """What the signal held back raises, once nothing holds it any more."""
        if self.depth or self.pending is None:
            return None
        signum, self.pending = self.pending, None
        return _raised_by(signum)

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


def _raised_by(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else TerminationSignal(signum)


def _raise_termination(signum: int, frame: FrameType | None) -> None:
    if not _main.arrived(signum):
        raise _raised_by(signum)


def _owns_sigint(parent: FlowRunContext | None) -> bool:
    """Whether this call holds Ctrl-C back during the engine's calls: the outermost
    flow, on the main thread, where SIGINT raises KeyboardInterrupt as Python's own
    handler (or asyncio.run's, which cancels the main task) has it do."""
    if parent is not None or threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGINT)
    return handler is signal.default_int_handler or _of_asyncio_runner(handler)


def _of_asyncio_runner(handler: object) -> bool:
    """Whether ``handler`` is the one `asyncio.Runner` installs for SIGINT while it runs."""
    function = handler.func if isinstance(handler, functools.partial) else handler
    return isinstance(getattr(function, "__self__", None), asyncio.Runner)


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
    """While the outermost flow runs (main thread only), turn SIGTERM into a
    cancellation, and hold it and Ctrl-C back during the engine's calls."""
    terminates, interrupts = _owns_sigterm(parent), _owns_sigint(parent)
    if terminates or interrupts:
        _main.pending = None
    with (
        _handled(signal.SIGTERM, terminates, signal.SIG_DFL),
        _handled(signal.SIGINT, interrupts, signal.default_int_handler),
    ):
        yield


@contextmanager
def _handled(signum: int, owned: bool, usual: signal.Handlers | Callable[..., object]) -> Iterator[None]:
    """``signum`` raised by `_raise_termination` meanwhile, where ``owned``; then ``usual``."""
    if not owned:
        yield
        return
    signal.signal(signum, _raise_termination)
    try:
        yield
    finally:
        signal.signal(signum, usual)


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
        self.blocked = self.interrupting = False

    def before(self) -> None:
        self.blocked = signal.getsignal(signal.SIGTERM) is _raise_termination
        self.interrupting = signal.getsignal(signal.SIGINT) is _raise_termination
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def in_parent(self) -> None:
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def in_child(self) -> None:
        if self.interrupting:  # Ctrl-C as Python has it: nothing is held back in a child
            signal.signal(signal.SIGINT, signal.default_int_handler)
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


#: The messages of the cancellations `termination_cancels_async` sends the flow's task.
_TERMINATED = "flowtrail: SIGTERM"
_INTERRUPTED = "flowtrail: SIGINT"


@contextmanager
def termination_cancels_async(parent: FlowRunContext | None) -> Iterator[None]:
    """`termination_cancels` for an async flow: SIGTERM (SIGINT) cancels the task
    running it, and the engine's driver, seeing that cancellation, cancels the run
    (records it Crashed), with the hooks, as for a sync flow. (A handler that raised
    from inside the event loop would end `asyncio.run` instead, which cancels every
    task: the run would be recorded Crashed by the runtime.)"""
    task = asyncio.current_task()
    terminates, interrupts = _owns_sigterm(parent), _owns_sigint(parent)
    if task is None or not (terminates or interrupts):
        yield
        return
    loop = asyncio.get_running_loop()
    holding = _tasks[task] = Holding()

    def signalled(signum: int, message: str) -> None:
        if not holding.arrived(signum):
            task.cancel(message)

    usual_sigint = signal.getsignal(signal.SIGINT)
    if terminates:
        loop.add_signal_handler(signal.SIGTERM, signalled, signal.SIGTERM, _TERMINATED)
    if interrupts:
        loop.add_signal_handler(signal.SIGINT, signalled, signal.SIGINT, _INTERRUPTED)
    try:
        yield
    finally:
        if terminates:
            loop.remove_signal_handler(signal.SIGTERM)
        if interrupts:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, usual_sigint)  # asyncio.run's own, where it was
        _tasks.pop(task, None)


def terminated(exc: BaseException) -> BaseException | None:
    """What a cancellation of `termination_cancels_async` stands for: the signal's
    TerminationSignal or KeyboardInterrupt."""
    if isinstance(exc, asyncio.CancelledError) and exc.args in ((_TERMINATED,), (_INTERRUPTED,)):
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # taken in: the run's end is recorded, then it ends
        return _raised_by(signal.SIGTERM if exc.args == (_TERMINATED,) else signal.SIGINT)
    return None
