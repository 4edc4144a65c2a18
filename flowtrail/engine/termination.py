"""SIGTERM and Ctrl-C while a flow runs.

While the outermost flow of a process runs on the main thread, SIGTERM raises
`TerminationSignal` in it (a sync flow) or cancels the task running it (an async
flow; every outermost async flow running on the event loop, where several are
gathered); the engine's script takes that in and records the cancellation
(Cancelling, then Cancelled). SIGINT (Ctrl-C) raises KeyboardInterrupt the same way, and the run
is recorded Crashed, as Prefect records it. Each handler is installed only where the
signal still has its usual action (for SIGINT, Python's, or asyncio.run's), and that
is restored after.

A signal never lands in the middle of an orchestrator call or of the engine's own
code: the whole drive of the engine's script holds it back, and lets it through only
where the flow's own code runs (its function, a sleep, its hooks), or throws it into
the script at its next step (`Holding`). Landing
there, it cut a call off after its commit and before its answer reached the script,
so the script never knew what it had written: a subflow created Running by that call
was left Running for ever, its parent cancelled or crashed. Two exceptions: a second
Ctrl-C is raised at once (whoever presses it again wants out, even from a call that
hangs), and a second SIGTERM while the first one's cancellation is being recorded is
absorbed (raised there, it would leave the run Cancelling, its hooks not run).

A sync flow's timeout is held back the same way: raised from the main thread's timer,
or, on another thread, by a watcher thread (`_ThreadHolding`). A process forked
meanwhile (a pool's workers) starts with the usual handlers and nothing held. Async subflows run side by side in tasks of their own (`asyncio.gather`)
get the signal as their parent's cancellation, which reaches their tasks with its
message; each records its end and then ends as that cancellation (`raised_as_here`).
Sync subflows in threads of their own are not reached: signals run on the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType
from typing import Any, TypeVar

from flowtrail.engine.context import FlowRunContext
from flowtrail.engine.flow_engine import TerminationSignal
from flowtrail.engine.timeouts import FlowTimeout, deliver_in_threads_with, hold_with, raise_in_thread

E = TypeVar("E")

__all__ = [
    "Holding",
    "holding_here",
    "raised_as_here",
    "terminated",
    "termination_cancels",
    "termination_cancels_async",
]


class Holding:
    """A signal (SIGTERM, SIGINT, a sync flow's timeout) held back while the engine
    runs, and delivered at the script's next step (thrown in there), where the flow's
    own code runs again (raised there, `released`), or when the drive ends (raised)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """As new: nothing held, nothing raised (a new outermost flow, a forked child)."""
        self.depth = 0
        #: What the signal (or timeout) that came while held raises, to deliver.
        self.pending: BaseException | None = None
        #: Set while an outermost flow of the main thread has its handlers installed.
        self.owned = False
        #: The signals already raised into the flow (or held to be), and the Ctrl-Cs
        #: that came.
        self.delivered: set[int] = set()
        self.interrupts = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold signals back meanwhile (a whole drive of the engine's script). One that
        came is raised as it ends, where nothing holds them any more."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.deliver()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let signals through meanwhile (the flow's own code: its function, a sleep,
        its hooks), where the flow takes them in; one held until now is raised first."""
        self.depth -= 1
        try:
            self.deliver()
            yield
        finally:
            self.depth += 1

    def arrived(self, signum: int) -> bool:
        """Take in a signal: whether it is taken care of here (held back for later, or
        needing nothing more); False: the caller raises it (or cancels) at once.

        A second Ctrl-C is never held: whoever presses it again wants out now, even in
        the middle of a call. A second SIGTERM while the first one's cancellation is
        being recorded is absorbed: raised in the middle of it, it would leave the run
        Cancelling for ever, its hooks not run.
        """
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                return False
        elif signum in self.delivered:
            return True
        return self.depth > 0 and self.take(self.delivered_now(signum))

    def take(self, error: BaseException) -> bool:
        """Take what a signal or a handler (a flow's timeout) raises, to deliver later:
        whether it is held back (while held; the first of two is kept)."""
        if not self.depth:
            return False
        self.keep(error)
        return True

    def keep(self, error: BaseException) -> None:
        """Keep ``error`` to deliver, unless one is kept already (the first stands)."""
        if self.pending is None:
            self.pending = error

    def delivered_now(self, signum: int) -> BaseException:
        """What ``signum`` raises in the flow, noted as raised there."""
        self.delivered.add(signum)
        return _raised_by(signum)

    def _taken(self) -> BaseException | None:
        """What the signal held back raises, taken off (wherever it is delivered)."""
        came, self.pending = self.pending, None
        return came

    def deliver(self) -> None:
        """Raise the signal held back, if any, where nothing holds it any more."""
        if not self.depth and (came := self._taken()) is not None:
            raise came

    def step(self, script: Generator[E, Any, Any], reply: Any, failure: BaseException | None) -> E:
        """The script's next effect. A signal that came meanwhile, or before, is thrown
        into the script at once (it takes it in at that step); one that came as the
        script ended is raised in place of its end (StopIteration)."""
        while True:
            try:
                effect = script.send(reply) if failure is None else script.throw(failure)
            except BaseException:
                came = self._taken()
                if came is not None:
                    raise came from None
                raise
            came = self._taken()
            if came is None:
                return effect
            reply, failure = None, came


class _ThreadHolding(Holding):
    """What a thread other than the main one holds back: its sync flows' timeouts,
    which a watcher thread raises in it between two bytecodes (`timeouts`). Raised
    inside a call to the log, one cut the call off after its commit, and a subflow
    just created stayed Running for ever.

    The watcher raises it at once only while the flow's own code runs, and otherwise
    leaves it held; the thread going back into the engine's code takes back one
    raised but not yet come through (no bytecode boundary passed meanwhile), to
    deliver it at the script's next step. A lock keeps the two apart."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.ident = threading.get_ident()
        #: The timeout raised in the thread and not yet come through.
        self.raised: type[BaseException] | None = None

    def timed_out(self, exception: type[BaseException]) -> None:
        """The watcher's delivery (on its own thread)."""
        with self.lock:
            if self.depth:
                self.take(exception())
            else:
                self.raised = exception
                raise_in_thread(self.ident, exception)

    def into_the_engine(self) -> None:
        """Going back into the engine's code. A timeout raised meanwhile may come through
        at any bytecode until it is taken back; it is held then (delivered at the
        script's next step) and the way in tried again. Nothing can come through once
        it is taken back, and the depth only grows after that: it grows once."""
        while True:
            try:
                self._into()
            except FlowTimeout as timeout:
                self._came_through(timeout)
                self.keep(timeout)
            else:
                return

    def _into(self) -> None:
        with self.lock:
            came, self.raised = self.raised, None
            if came is not None:
                raise_in_thread(self.ident, None)  # not come through yet: held instead
                self.keep(came())
            self.depth += 1

    def _came_through(self, timeout: FlowTimeout) -> None:
        """``timeout`` was raised in the thread: the one raised there is no longer to come."""
        with self.lock:
            if self.raised is not None and isinstance(timeout, self.raised):
                self.raised = None

    def out_of_the_engine(self) -> None:
        # Nothing is raised in the thread while the depth is above 0 (see timed_out).
        with self.lock:
            assert self.depth > 0, "out of the engine's code without having gone in"
            self.depth -= 1

    @contextmanager
    def held(self) -> Iterator[None]:
        self.into_the_engine()
        try:
            yield
        finally:
            self.out_of_the_engine()
            self.deliver()

    @contextmanager
    def released(self) -> Iterator[None]:
        self.out_of_the_engine()
        try:
            self.deliver()
            yield
        except FlowTimeout as timeout:
            self._came_through(timeout)  # in the flow's own code
            raise
        finally:
            self.into_the_engine()


#: What the main thread's sync flows hold back (signal handlers run on the main thread).
_main = Holding()
hold_with(_main.take)  # a sync flow's timeout fires on the main thread's timer
#: Each other thread's, for its sync flows' timeouts.
_threads = threading.local()
_thread_holdings: weakref.WeakValueDictionary[int, _ThreadHolding] = weakref.WeakValueDictionary()


def _thread_holding() -> _ThreadHolding:
    holding: _ThreadHolding | None = getattr(_threads, "holding", None)
    if holding is None:
        holding = _threads.holding = _thread_holdings[threading.get_ident()] = _ThreadHolding()
    return holding


def _timed_out_in_thread(ident: int, exception: type[BaseException]) -> None:
    holding = _thread_holdings.get(ident)
    if holding is None:
        raise_in_thread(ident, exception)
    else:
        holding.timed_out(exception)


deliver_in_threads_with(_timed_out_in_thread)
#: What each async flow's task holds back, for the outermost flows that own SIGTERM.
_tasks: weakref.WeakKeyDictionary[asyncio.Task[object], Holding] = weakref.WeakKeyDictionary()


def holding_here() -> Holding:
    """Where a flow driven here holds signals back: the process's own on the main
    thread while an outermost sync flow has its handlers installed (also for a flow it
    runs in an event loop of its own, or a sync flow called from a coroutine), the
    task's for an async flow whose task owns them, and otherwise one no signal reaches."""
    main = threading.current_thread() is threading.main_thread()
    if main and _main.owned:
        return _main
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is not None:
        return _tasks.get(task) or Holding()
    return _main if main else _thread_holding()


def _raised_by(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else TerminationSignal(signum)


def _raise_termination(signum: int, frame: FrameType | None) -> None:
    if not _main.arrived(signum):
        raise _main.delivered_now(signum)


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
    if not (terminates or interrupts):
        yield
        return
    _main.reset()  # what an earlier flow left is not this one's
    _main.owned = True
    try:
        with _handled(signal.SIGTERM, terminates), _handled(signal.SIGINT, interrupts):
            yield
    finally:
        _main.owned = False


@contextmanager
def _handled(signum: int, owned: bool) -> Iterator[None]:
    """``signum`` raised by `_raise_termination` meanwhile, where ``owned``; then the
    handler found before, unless another was installed meanwhile (it is left)."""
    if not owned:
        yield
        return
    found = signal.signal(signum, _raise_termination)
    try:
        yield
    finally:
        if signal.getsignal(signum) is _raise_termination:
            signal.signal(signum, found)


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
        self.blocked = self.interrupting = self.looped = False

    def before(self) -> None:
        # An async flow's SIGTERM goes through its event loop (a no-op handler and the
        # loop's wake-up socket, which the child would share): the child's is reset too.
        self.looped = bool(_async_flows)
        self.blocked = signal.getsignal(signal.SIGTERM) is _raise_termination or self.looped
        self.interrupting = signal.getsignal(signal.SIGINT) in (_raise_termination, _interrupt_async)
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def in_parent(self) -> None:
        if self.blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def in_child(self) -> None:
        # Nothing of the parent's flows is the child's: no call under way, no signal
        # held (a fork from another thread while the main one was inside a call).
        _main.reset()
        _tasks.clear()
        _thread_holdings.clear()
        _threads.__dict__.pop("holding", None)  # the forking thread's, inside a call maybe
        _async_flows.clear()
        _sigint_found.clear()
        if self.looped:
            signal.set_wakeup_fd(-1)
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
    task: the run would be recorded Crashed by the runtime.)

    SIGTERM goes through the event loop. SIGINT has a handler of its own, as
    asyncio.run's: it runs even while the loop is blocked, and a second Ctrl-C raises
    KeyboardInterrupt at once wherever the flow is."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminates, interrupts = _joins_sigterm(parent, loop), _owns_sigint(parent)
    if task is None or not (terminates or interrupts):
        yield
        return
    holding = _tasks[task] = Holding()
    if terminates:
        _terminated_flows(loop).append((holding, task))
    if interrupts:
        _sigint_found[:] = [signal.signal(signal.SIGINT, _interrupt_async)]
    _async_flows.append((loop, holding, task))
    try:
        yield
    finally:
        _async_flows.remove((loop, holding, task))
        if terminates:
            _leave_sigterm(loop, (holding, task))
        if not _async_flows and _sigint_found and signal.getsignal(signal.SIGINT) is _interrupt_async:
            signal.signal(signal.SIGINT, _sigint_found.pop())  # asyncio.run's own, where it was
        _tasks.pop(task, None)


_Flow = tuple[Holding, asyncio.Task[Any]]

#: Per event loop, the SIGTERM handler the outermost async flows running there share,
#: and those flows: SIGTERM cancels every one of them (two flows gathered at the top of
#: a program both record Cancelled, not the first alone, the other Crashed when
#: asyncio.run ends).
_sigterm_flows: dict[asyncio.AbstractEventLoop, tuple[Callable[[], None], list[_Flow]]] = {}


def _joins_sigterm(parent: FlowRunContext | None, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this outermost async flow turns SIGTERM into its cancellation: SIGTERM
    still has its default action, or its handler is the one the flows running on this
    loop share (not one the program put in its place meanwhile)."""
    if _owns_sigterm(parent):
        return True
    shared = _sigterm_flows.get(loop)
    return (
        parent is None
        and threading.current_thread() is threading.main_thread()
        and shared is not None
        and _still_ours(loop, shared[0])
    )


def _terminated_flows(loop: asyncio.AbstractEventLoop) -> list[_Flow]:
    """The flows SIGTERM cancels on ``loop``, its handler installed by the first."""
    shared = _sigterm_flows.get(loop)
    if shared is None:
        flows: list[_Flow] = []

        def terminate() -> None:
            ending, _ = _sigterm_waits.setdefault(loop, (set(), asyncio.Event()))
            for holding, task in flows:
                ending.add(task)
                if not holding.arrived(signal.SIGTERM):
                    holding.delivered.add(signal.SIGTERM)
                    task.cancel(_TERMINATED)

        shared = _sigterm_flows[loop] = (terminate, flows)
        loop.add_signal_handler(signal.SIGTERM, terminate)
    return shared[1]


def _leave_sigterm(loop: asyncio.AbstractEventLoop, flow: _Flow) -> None:
    """The flow ends: the last one on its loop takes the handler away (unless the
    program put one of its own in its place)."""
    terminate, flows = _sigterm_flows[loop]
    flows.remove(flow)
    waiting = _sigterm_waits.get(loop)
    if waiting is not None:  # however it ended: the others stop waiting for it
        waiting[0].discard(flow[1])
        if not waiting[0]:
            waiting[1].set()
    if not flows:
        del _sigterm_flows[loop]
        _terminations_raised.discard(loop)  # a later SIGTERM on this loop starts afresh
        _sigterm_waits.pop(loop, None)
        if _still_ours(loop, terminate):
            loop.remove_signal_handler(signal.SIGTERM)


def _still_ours(loop: asyncio.AbstractEventLoop, terminate: Callable[[], None]) -> bool:
    """Whether the loop's SIGTERM handler is still the flow's own: one the flow's code
    put in its place is the program's, and stays once the flow ends. asyncio keeps the
    handlers in ``_signal_handlers``; a loop that does not is taken to hold the flow's."""
    handlers = getattr(loop, "_signal_handlers", None)
    if not isinstance(handlers, dict):
        return True
    handle = handlers.get(signal.SIGTERM)
    return handle is None or getattr(handle, "_callback", terminate) is terminate


#: The outermost async flows running with the signals' handlers installed, the latest
#: last (a Ctrl-C goes to it): their loop, their holding, and their task.
_async_flows: list[tuple[asyncio.AbstractEventLoop, Holding, asyncio.Task[Any]]] = []


#: The SIGINT handler found by the first async flow to install `_interrupt_async`,
#: put back when the last one ends.
_sigint_found: list[signal.Handlers | Callable[[int, FrameType | None], object] | int | None] = []


def _interrupt_async(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C for an async flow, on the main thread between two bytecodes (so also
    while the loop is blocked, which a handler of the loop's would wait for)."""
    if not _async_flows:  # the flows ended as it came
        raise KeyboardInterrupt
    loop, holding, task = _async_flows[-1]
    if holding.arrived(signum):
        return  # held: the engine's script takes it in at its next step
    if holding.interrupts > 1:
        raise KeyboardInterrupt  # a second Ctrl-C: out now, as asyncio.run does
    loop.call_soon_threadsafe(task.cancel, _INTERRUPTED)


def terminated(exc: BaseException) -> BaseException | None:
    """What a cancellation of `termination_cancels_async` stands for: the signal's
    TerminationSignal or KeyboardInterrupt."""
    if isinstance(exc, asyncio.CancelledError) and exc.args in ((_TERMINATED,), (_INTERRUPTED,)):
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # taken in: the run's end is recorded, then it ends
        raised = _raised_by(signal.SIGTERM if exc.args == (_TERMINATED,) else signal.SIGINT)
        # Kept on the error itself (no table to leak from): `raised_as_here` reads it.
        setattr(raised, _CANCELLATION, exc)
        return raised
    return None


#: Where an error `terminated` made keeps the cancellation it stands for.
_CANCELLATION = "_flowtrail_cancellation"


@asynccontextmanager
async def raised_as_here(*, outermost: bool) -> AsyncIterator[None]:
    """An async flow's call, raising what it ended on as fits the task it ran in. A
    signal that reached it as a cancellation of a task other than the one owning the
    signals (a subflow gathered with others, in a task of its own) ends it as that
    cancellation again: raised from such a task, SystemExit and KeyboardInterrupt break
    out of the event loop at once, and the other flows' ends would go unrecorded.

    Several outermost flows (``outermost``) that SIGTERM cancelled on one loop wait for
    each other to have recorded their end (and closed the logs the engine opened for
    them); then the first raises TerminationSignal, which ends the loop, and the others
    end as their cancellation, which asyncio.run, cancelling what is left, waits for.
    Raised while
    another flow still recorded its end, TerminationSignal stopped the loop under it
    (through an ``asyncio.gather`` in the program's main coroutine), its log was never
    closed, and the process hung at exit waiting for that log's thread."""
    try:
        yield
    except (TerminationSignal, KeyboardInterrupt) as error:
        cancellation = getattr(error, _CANCELLATION, None)
        task = asyncio.current_task()
        if outermost and isinstance(error, TerminationSignal) and task in _tasks:
            loop = asyncio.get_running_loop()
            await _others_ended(loop, task)
            if loop not in _terminations_raised or not isinstance(cancellation, asyncio.CancelledError):
                _terminations_raised.add(loop)
                raise
            raise cancellation from error
        if not isinstance(cancellation, asyncio.CancelledError) or task in _tasks:
            raise
        raise cancellation from error


#: The event loops where an outermost flow has raised TerminationSignal already.
_terminations_raised: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

#: How long an outermost flow ended by SIGTERM waits for the others of its loop to
#: record their end (seconds): past it, it ends all the same.
_OTHERS_WAITED_FOR = 30.0


async def _others_ended(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
    """Wait until every other outermost flow SIGTERM cancelled on ``loop`` has ended."""
    waiting = _sigterm_waits.get(loop)
    if waiting is None or task is None:
        return
    ending, all_ended = waiting
    ending.discard(task)
    if not ending:
        all_ended.set()
        return
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(all_ended.wait()), _OTHERS_WAITED_FOR)


#: Per event loop, the outermost flows SIGTERM cancelled that have not ended yet, and
#: an event set once none is left.
_sigterm_waits: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[set[asyncio.Task[Any]], asyncio.Event]
] = weakref.WeakKeyDictionary()
