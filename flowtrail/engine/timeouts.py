"""Timeouts that interrupt a sync flow's function, wherever it is.

On the main thread of a POSIX process, an interval timer raises `FlowTimeout` from a
SIGALRM handler, which also breaks blocking calls such as ``time.sleep``. Nested
timeouts share the one timer: it is always set for the nearest deadline, and the
exception names the deadline that passed, so an outer flow's timeout is not mistaken
by an inner flow for its own. Elsewhere (another thread, no SIGALRM), a watcher thread
raises the exception in the flow's thread between two bytecodes, which cannot break
a blocking call but does stop Python code; this is what Prefect does too.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["FlowTimeout", "deliver_in_threads_with", "hold_with", "raise_in_thread", "sync_timeout"]


class FlowTimeout(BaseException):
    """A flow's time is up; ``token`` says whose deadline passed.

    A BaseException, as asyncio's cancellation and Prefect's timeout scope are: the
    function's own ``except Exception`` (a retry loop, say) and a failing hook's
    handler must not swallow the deadline. The engine turns it into the run's
    TimedOut state, or a subflow's Failed one.
    """

    def __init__(self, token: object, seconds: float) -> None:
        super().__init__(f"exceeded the timeout of {seconds:g} second(s)")
        self.token = token
        self.seconds = seconds


class _Alarms:
    """The deadlines set on the main thread's interval timer, nearest first."""

    def __init__(self) -> None:
        self.deadlines: list[tuple[float, object, float]] = []
        self.previous: Any = None

    def arm(self) -> None:
        if self.deadlines:
            left = max(self.deadlines[0][0] - time.monotonic(), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left)
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def fire(self, signum: int, frame: FrameType | None) -> None:
        if not self.deadlines:
            return
        deadline, token, seconds = self.deadlines[0]
        if deadline - time.monotonic() > 1e-3:
            self.arm()  # woken early (another deadline was removed meanwhile)
            return
        self.deadlines.pop(0)
        self.arm()
        timeout = FlowTimeout(token, seconds)
        if any(holder(timeout) for holder in _holders):
            return
        raise timeout


_alarms = _Alarms()

#: What may take a timeout the timer raises in and deliver it later: a call returning
#: True has (`flowtrail.engine.termination`: while the engine is inside a call to the
#: log, where raising would cut the call off after its commit).
_holders: list[Callable[[BaseException], bool]] = []


def hold_with(holder: Callable[[BaseException], bool]) -> None:
    """Let ``holder`` take the timeouts the timer raises (see `_holders`)."""
    _holders.append(holder)


def raise_in_thread(ident: int, exception: type[BaseException] | None) -> None:
    """Have the thread ``ident`` raise ``exception`` between two bytecodes (None: no
    longer raise the one it was given and has not raised yet)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exception) if exception is not None else None
    )


#: How a watcher delivers a thread's timeout: at once, unless the engine holds it back
#: (`flowtrail.engine.termination`, as for the main thread's timer).
_thread_delivery: list[Callable[[int, type[BaseException]], None]] = [raise_in_thread]


def deliver_in_threads_with(delivery: Callable[[int, type[BaseException]], None]) -> None:
    """Let ``delivery`` deliver the timeouts that watchers raise in other threads."""
    _thread_delivery[:] = [delivery]


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def sync_timeout(seconds: float | None, token: object) -> Iterator[None]:
    """Raise `FlowTimeout` (with ``token``) in this thread if the block lasts ``seconds``."""
    if seconds is None:
        yield
        return
    if _can_use_alarm():
        yield from _alarm_timeout(seconds, token)
    else:
        yield from _watcher_timeout(seconds, token)


def _alarm_timeout(seconds: float, token: object) -> Iterator[None]:
    entry = (time.monotonic() + seconds, token, seconds)
    if not _alarms.deadlines:
        _alarms.previous = signal.signal(signal.SIGALRM, _alarms.fire)
    _alarms.deadlines.append(entry)
    _alarms.deadlines.sort(key=lambda item: item[0])
    _alarms.arm()
    try:
        yield
    finally:
        if entry in _alarms.deadlines:
            _alarms.deadlines.remove(entry)
        _alarms.arm()
        if not _alarms.deadlines:
            signal.signal(signal.SIGALRM, _alarms.previous or signal.SIG_DFL)


def _watcher_timeout(seconds: float, token: object) -> Iterator[None]:
    target = threading.get_ident()
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            exception = type(
                f"FlowTimeout_{id(token)}", (FlowTimeout,), {"__init__": _bound_init(token, seconds)}
            )
            _thread_delivery[0](target, exception)

    watcher = threading.Thread(target=watch, name="flowtrail-timeout", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _bound_init(token: object, seconds: float) -> Any:
    # PyThreadState_SetAsyncExc raises the class with no arguments: bind them here.
    def __init__(self: FlowTimeout) -> None:
        FlowTimeout.__init__(self, token, seconds)

    return __init__
