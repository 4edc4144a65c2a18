"""Run a script: the sync driver and the async driver.

Both feed each effect to an executor (a backend's connection wrapper) and send the
result back into the script. A driver error is translated into flowtrail's error tree
by the backend's ``translate`` (the one place where driver errors are named) and thrown
into the script at the ``yield``, so the script can roll back; if the script does not
handle it, it comes out of the driver with the driver's error as its cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from flowtrail.core.effects import Effect, Script

__all__ = ["ToItsEnd", "Translate", "run_async", "run_sync"]

T = TypeVar("T")

#: Turns a driver's exception into flowtrail's (or returns it unchanged if it is not the driver's).
Translate = Callable[[Exception], BaseException]


class ToItsEnd(asyncio.Task):  # type: ignore[type-arg]
    """A task that is never cancelled, not even by the cancelling of every task left
    that ends `asyncio.run`: what it does is seen through, and answered (a group of
    appends committed, a call whose caller must know what it wrote). What it awaits
    bounds it: the store's own timeouts."""

    def cancel(self, msg: Any = None) -> bool:
        return False


def run_sync(script: Script[T], execute: Callable[[Effect], Any], translate: Translate) -> T:
    """Run ``script`` to its end, carrying out each effect with ``execute``."""
    reply: Any = None
    failure: BaseException | None = None
    while True:
        try:
            effect = script.send(reply) if failure is None else script.throw(failure)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        failure = None
        try:
            reply = execute(effect)
        except Exception as exc:
            failure = _typed(exc, translate)


async def run_async(
    script: Script[T], execute: Callable[[Effect], Awaitable[Any]], translate: Translate
) -> T:
    """Run ``script`` to its end, awaiting each effect with ``execute``."""
    reply: Any = None
    failure: BaseException | None = None
    while True:
        try:
            effect = script.send(reply) if failure is None else script.throw(failure)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        failure = None
        try:
            reply = await execute(effect)
        except Exception as exc:
            failure = _typed(exc, translate)


def _typed(exc: Exception, translate: Translate) -> BaseException:
    typed = translate(exc)
    if typed is not exc and typed.__cause__ is None:
        typed.__cause__ = exc
    return typed
