"""What a process forked while it has logs open keeps of them.

A database connection must not be used on both sides of a fork: the child would write
through the parent's session, or inherit a lock another thread held at that moment and
wait on it forever. So in the child every store opened before the fork refuses each
call (`StoreError`), and the child opens the log again.

What the handlers do, and why:

- **Before the fork** they take every open sync store's locks, waiting for the calls
  under way in other threads to end, so that the child's copy of each connection is idle
  (no statement running, no transaction but one the forking thread itself is in). One
  fork at a time: a second thread forking meanwhile waits for the first. Opening and
  closing a store take no lock of theirs (a thread closing one holds its lock, which a
  fork may be waiting for): a store opened while a fork waits is not held across it,
  and the child treats it as not idle.
- **In the child** they make no driver call at all. Any other thread may have been
  inside SQLite at the fork (a plain ``sqlite3`` user, aiosqlite's thread), leaving
  one of SQLite's process-wide mutexes held in the child for good: a close there would
  wait forever, even in a child that never touches a log. The parent's connections are
  handed to their backend (`Connection.left_behind`), which keeps them referenced for the
  child's life (collected, they would be closed) and, for SQLite, closes the idle ones
  when the child first opens a SQLite log itself (see `flowtrail.store.sqlite`).
- **Async stores** cannot be held: aiosqlite's thread and psycopg's connections do
  not take the store's locks. Their copies are never touched in the child.

A signal handler's exception (Ctrl-C) that interrupts the wait before a fork does not
stop it: the handler goes on waiting, raises the exception once every lock is taken,
and CPython prints it as it does any fork handler's and forks on, the stores held.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

from flowtrail.core.effects import Effect, Script
from flowtrail.core.errors import StoreError
from flowtrail.store.drivers import Translate

__all__ = ["AsyncForked", "Forked", "register", "unregister"]

_FORKED = (
    "this log was opened before the process forked, and a connection cannot cross a fork: "
    "open the log again in this process"
)


class Forked:
    """What a connection opened by the parent process is in a forked child."""

    def execute(self, effect: Effect) -> Any:
        raise StoreError(_FORKED)

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        pass

    def left_behind(self, idle: bool) -> None:
        pass


class AsyncForked:
    """`Forked`, awaited."""

    async def run(self, script: Script[Any], translate: Translate) -> Any:
        raise StoreError(_FORKED)

    async def execute(self, effect: Effect) -> Any:
        raise StoreError(_FORKED)

    async def abandon(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def left_behind(self, idle: bool) -> None:
        pass


class Held(Protocol):
    """A sync store, as the fork handlers see it."""

    @property
    def _write_lock(self) -> Any: ...

    @property
    def _read_lock(self) -> Any: ...

    def _left_behind(self, idle: bool) -> bool:
        """In the child: let go of the parent's connections (idle: no call or
        transaction of theirs was under way at the fork); whether it is still usable."""
        ...


class Unheld(Protocol):
    """An async store, as the fork handlers see it."""

    def _left_behind(self, idle: bool) -> bool: ...


class _Registry:
    """The stores open in this process, and what the fork under way holds."""

    def __init__(self) -> None:
        #: Lets one fork at a time through.
        self.lock = threading.RLock()
        self.sync: weakref.WeakSet[Held] = weakref.WeakSet()
        self.unheld: weakref.WeakSet[Unheld] = weakref.WeakSet()
        #: The stores' locks the fork under way took, each with its recursion count before.
        self.taken: list[tuple[Any, int]] = []
        #: Each held store, and whether it was idle (no call of the forking thread's own).
        self.stores: list[tuple[Held, bool]] = []


_registry = _Registry()


def register(store: Held | Unheld, *, held: bool) -> None:
    """Note an opened store (``held``: a sync one, whose locks a fork takes)."""
    if held:
        _registry.sync.add(store)  # type: ignore[arg-type]
    else:
        _registry.unheld.add(store)


def unregister(store: Held | Unheld) -> None:
    _registry.sync.discard(store)  # type: ignore[arg-type]
    _registry.unheld.discard(store)


def _snapshot(stores: weakref.WeakSet[Held]) -> list[Held]:
    """The stores in the set, read while other threads may add or remove some."""
    while True:
        try:
            return list(stores)
        except RuntimeError:  # changed size meanwhile: read again
            continue


def _acquire(lock: Any, interrupted: list[BaseException]) -> int:
    """Acquire an RLock, however long it takes; its recursion count before.

    The count, not the acquire's return, says whether this thread holds it: a signal
    handler's exception may land before or after the acquire (it is kept in
    ``interrupted``).
    """
    before: int = lock._recursion_count()
    while lock._recursion_count() == before:
        try:
            lock.acquire()
        except BaseException as exc:
            interrupted.append(exc)
    return before


def _before_fork() -> None:
    interrupted: list[BaseException] = []
    # The bookkeeping below is this fork's alone once the lock is held: another thread
    # forking meanwhile waits here, writing nothing.
    _acquire(_registry.lock, interrupted)
    taken: list[tuple[Any, int]] = []
    stores: list[tuple[Held, bool]] = []
    _registry.taken, _registry.stores = taken, stores
    for store in _snapshot(_registry.sync):
        write = _acquire(store._write_lock, interrupted)
        taken.append((store._write_lock, write))
        read = _acquire(store._read_lock, interrupted)
        taken.append((store._read_lock, read))
        stores.append((store, write == 0 and read == 0))
    if interrupted:
        raise interrupted[0]


def _let_go() -> None:
    """Release the stores' locks this fork took, newest first."""
    for lock, before in reversed(_registry.taken):
        while lock._recursion_count() > before:
            lock.release()
    _registry.taken, _registry.stores = [], []


def _after_fork_in_parent() -> None:
    _let_go()
    _registry.lock.release()


def _after_fork_in_child() -> None:
    registry = _registry
    idle = {id(store): quiet for store, quiet in registry.stores}
    _let_go()
    # No other thread runs here: the sets can be read and replaced as they are.
    usable = [store for store in list(registry.sync) if store._left_behind(idle.get(id(store), False))]
    for unheld in list(registry.unheld):
        unheld._left_behind(False)
    registry.lock = threading.RLock()
    registry.sync = weakref.WeakSet(usable)
    registry.unheld = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
