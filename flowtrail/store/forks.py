"""What a process forked while it has logs open keeps of them.

A database connection must not be used on both sides of a fork: the child would write
through the parent's session, or inherit a lock another thread held at that moment and
wait on it forever. So in the child every store opened before the fork refuses each
call (`StoreError`), and the child opens the log again.

What the handlers do, and why:

- **Before the fork** they take every open sync store's locks, waiting for the calls
  under way in other threads to end, so that the child's copy of each connection is idle
  (no statement running, no transaction but one the forking thread itself is in). A
  call on one store may wait on another's lock (a projection reading a second log), in
  an order the fork cannot know: a lock not free within `PATIENCE` makes the fork let
  go of all it took and start again with that store first, and after `MOST_WAIT` it goes
  on without the stores still busy, whose copies the child then treats as in use. Two
  threads forking at once each keep their own account; two forking from inside calls
  leave each other's store at once (`_pin`). Last, the fork waits
  for the sync stores being opened (`changing`): a copy of a connection being made
  could not be told apart from the parent's in use. (One being closed is closed under
  its store's lock, and the store forgotten only then.)
- **In the child** they make no driver call at all. Any other thread may have been
  inside SQLite at the fork (a plain ``sqlite3`` user, aiosqlite's thread), leaving one
  of SQLite's process-wide mutexes held in the child for good: a close there would wait
  forever, even in a child that never touches a log. The stores only swap their
  connections for ones that refuse every call; the backends keep the parent's
  connections referenced for the child's life (collected, they would be closed) and
  deal with them when the child opens a log itself (`flowtrail.store.sqlite_forks`).
- **Async stores** cannot be held: aiosqlite's thread and psycopg's connections do
  not take the store's locks. Their copies are never touched in the child.

Fork handlers run newest first, so the standard library's that take a lock before a
fork (`logging`, `concurrent.futures`) are registered before these (imported first):
run after them, one of theirs would hold its lock while ours waits for a store, and a
thread forking from inside a call on that store would wait for that lock. (Another
library's handler registered later may still do so, until `MOST_WAIT`.)

A signal handler's exception (Ctrl-C) that lands in a handler does not stop it: the
handler finishes its work and then raises the exception, which CPython reports as it
does any fork handler's, and forks on.
"""

from __future__ import annotations

# Their fork handlers must be registered before ours (see the docstring's last points).
import concurrent.futures.thread  # noqa: F401
import itertools
import logging  # noqa: F401
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from flowtrail.core.effects import Effect, Script
from flowtrail.core.errors import StoreError
from flowtrail.store.drivers import Translate

__all__ = [
    "MOST_WAIT",
    "PATIENCE",
    "AsyncRefusing",
    "Refusing",
    "changing",
    "in_child",
    "register",
    "unregister",
]

#: Seconds a fork waits for one store's lock before it lets go of the others and tries again.
PATIENCE = 0.05
#: Seconds a fork waits for the stores in all before it goes on without the busy ones.
MOST_WAIT = 10.0

_FORKED = (
    "this log was opened before the process forked, and a connection cannot cross a fork: "
    "open the log again in this process"
)


class Refusing:
    """A connection no call may use: a parent's, in a forked child (the default
    message), or a closed store's."""

    def __init__(self, message: str = _FORKED) -> None:
        self.message = message

    def execute(self, effect: Effect) -> Any:
        raise StoreError(self.message)

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        pass

    def left_behind(self, idle: bool) -> None:
        pass


class AsyncRefusing:
    """`Refusing`, awaited."""

    def __init__(self, message: str = _FORKED) -> None:
        self.message = message

    async def run(self, script: Script[Any], translate: Translate) -> Any:
        raise StoreError(self.message)

    async def execute(self, effect: Effect) -> Any:
        raise StoreError(self.message)

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
        """In the child: let go of the parent's connections (idle: the fork held the
        store, outside any call of the forking thread's); whether it is still usable."""
        ...


class Unheld(Protocol):
    """An async store, as the fork handlers see it."""

    def _left_behind(self, idle: bool) -> bool: ...


_order = itertools.count()
#: The stores open in this process by id: each with the order in which forks take them,
#: and whether they take its locks (a sync store's). A plain dict of weak references:
#: copied whole in one step while other threads change it, and a store dropped without
#: being closed is skipped.
_open: dict[int, tuple[weakref.ref[Any], int, bool]] = {}
#: What to do in a child once the stores are left behind (the backends' part).
_in_child: list[Callable[[], None]] = []
#: Held while a sync store is opened, from its first connection until it is registered
#: and ready (see `changing`); a fork takes it after the stores' locks.
_gate = threading.RLock()
#: The stores' locks each thread forking now held before its fork began (it forks from
#: inside a call): no other fork can have them before that one is done (see `_pin`).
_pinned: dict[int, int] = {}


@contextmanager
def changing() -> Iterator[None]:
    """A sync store is being opened (from its first connection until it is registered
    and ready), or a file looked at: a fork waits for the block to end."""
    with _gate:
        yield


class _Account(threading.local):
    """What the fork under way in this thread holds."""

    def __init__(self) -> None:
        #: Each lock this fork may have taken, with its recursion count before.
        self.taken: list[tuple[Any, int]] = []
        #: Each store held, and whether it was idle.
        self.stores: list[tuple[Held, bool]] = []


_account = _Account()


def register(store: Held | Unheld, *, held: bool) -> None:
    """Note an opened store (``held``: a sync one, whose locks a fork takes)."""
    _open[id(store)] = (weakref.ref(store), next(_order), held)


def unregister(store: Held | Unheld) -> None:
    entry = _open.get(id(store))
    if entry is not None and entry[0]() is store:
        _open.pop(id(store), None)


def in_child(callback: Callable[[], None]) -> None:
    """Call ``callback`` in every forked child, after the stores are left behind."""
    _in_child.append(callback)


def _registered() -> list[tuple[Any, bool]]:
    """The open stores in the order forks take them, each with whether they are held
    (a dict's copy is one step, whatever other threads open or close meanwhile)."""
    entries = sorted(_open.copy().values(), key=lambda entry: entry[1])
    return [(store, held) for ref, _, held in entries if (store := ref()) is not None]


def _snapshot() -> list[Held]:
    """The open sync stores, in the order forks take them."""
    return [store for store, held in _registered() if held]


def _pin(stores: list[Held]) -> None:
    """Note the locks this thread holds as its fork begins (it forks from inside a call).
    Two threads each forking from inside a call on a store the other's fork waits for
    would wait until `MOST_WAIT`: each leaves the other's store at once, in use."""
    me = threading.get_ident()
    for store in stores:
        for lock in (store._write_lock, store._read_lock):
            if _depth(lock) > 0:
                _pinned[id(lock)] = me


def _unpin() -> None:
    me = threading.get_ident()
    for key, owner in list(_pinned.items()):
        if owner == me:
            _pinned.pop(key, None)


def _pinned_elsewhere(lock: Any) -> bool:
    """Whether ``lock`` is one that another fork holds from before, while this one holds
    some too: each waiting for the other's would wait until `MOST_WAIT`. (A fork holding
    none waits: the other lets go of it once its call ends.)"""
    me = threading.get_ident()
    owner = _pinned.get(id(lock))
    return owner is not None and owner != me and me in _pinned.values()


def _depth(lock: Any) -> int:
    """How many times this thread holds an RLock. The locks of early CPython 3.11
    releases cannot say: then 1 if it holds it at all, which is all `_take` needs, since
    it never acquires a lock this thread already holds."""
    count = getattr(lock, "_recursion_count", None)
    if count is not None:
        return int(count())
    return 1 if lock._is_owned() else 0


def _take(lock: Any, timeout: float, interrupted: list[BaseException]) -> int | None:
    """Acquire an RLock within ``timeout`` seconds (0: only if free now): its recursion
    count before, or None.

    The lock is put to the account before it is acquired, and the count, not the
    acquire's return, says whether this thread holds it: a signal handler's exception
    may land anywhere (it is kept in ``interrupted``)."""
    before = _depth(lock)
    if before > 0:  # this thread's already, for as long as the fork lasts
        return before
    _account.taken.append((lock, before))
    end = time.monotonic() + timeout
    while _depth(lock) == before:
        try:
            left = end - time.monotonic()
            if left <= 0 or _pinned_elsewhere(lock):
                lock.acquire(blocking=False)
                return before if _depth(lock) > before else None
            lock.acquire(timeout=min(left, PATIENCE / 5))
        except Exception:
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: a signal handler's
            interrupted.append(exc)
    return before


def _hold(
    stores: list[Held], timeout: float, interrupted: list[BaseException], *, skip: bool = False
) -> Held | None:
    """Take each store's locks in turn: the first store not taken in ``timeout``, or None
    (with ``skip``, or a timeout of 0: leave the busy ones and go on)."""
    for store in stores:
        write = _take(store._write_lock, timeout, interrupted)
        if write is None or store._read_lock is store._write_lock:
            read = write  # one connection (in memory): one lock
        else:
            read = _take(store._read_lock, timeout, interrupted)
        if write is not None and read is not None:
            _account.stores.append((store, write == 0 and read == 0))
        elif (
            timeout > 0
            and not skip
            and not _pinned_elsewhere(store._write_lock if write is None else store._read_lock)
        ):
            return store
    return None


def _let_go(interrupted: list[BaseException]) -> None:
    """Release what the account holds, newest first, however often interrupted."""
    taken = _account.taken
    while taken:
        try:
            lock, before = taken[-1]
            while _depth(lock) > before:
                lock.release()
            taken.pop()
        except Exception as exc:  # not a signal handler's: never to be tried again
            interrupted.append(exc)
            taken.pop()
        except BaseException as exc:
            interrupted.append(exc)


def _before_fork() -> None:
    interrupted: list[BaseException] = []
    _account.taken, _account.stores = [], []
    stores = _snapshot()
    _pin(stores)
    deadline = time.monotonic() + MOST_WAIT
    while True:
        busy = _hold(stores, PATIENCE, interrupted)
        if busy is None and _take(_gate, PATIENCE, interrupted) is not None:
            break
        _let_go(interrupted)
        _account.stores = []
        if time.monotonic() >= deadline:
            _hold(stores, 0, interrupted)
            _take(_gate, 0, interrupted)
            break
        if busy is not None:
            # Its holder may be waiting for one taken before it (a projection reading
            # another log): taken first next time, it is free once that call ends.
            stores.remove(busy)
            stores.insert(0, busy)
    # Stores opened meanwhile, ready now. A store busy beyond `PATIENCE` is left, in use.
    _hold([store for store in _snapshot() if store not in stores], PATIENCE, interrupted, skip=True)
    if interrupted:
        raise interrupted[0]


def _after_fork_in_parent() -> None:
    interrupted: list[BaseException] = []
    _done(interrupted, _unpin)
    _let_go(interrupted)
    _account.stores = []
    if interrupted:
        raise interrupted[0]


def _after_fork_in_child() -> None:
    interrupted: list[BaseException] = []
    idle = {id(store): quiet for store, quiet in _account.stores}
    _let_go(interrupted)
    _account.stores = []
    _gate._at_fork_reinit()  # type: ignore[attr-defined]  # another thread's, if the fork went on without it
    _pinned.clear()
    # No other thread runs here: the registry can be read and replaced as it is.
    usable = [
        (store, held)
        for store, held in _registered()
        if _done(interrupted, store._left_behind, idle.get(id(store), False))
    ]
    for callback in _in_child:
        _done(interrupted, callback)
    _open.clear()
    for store, held in usable:
        register(store, held=held)
    if interrupted:
        raise interrupted[0]


def _done(interrupted: list[BaseException], step: Callable[..., Any], *args: Any) -> Any:
    """``step(*args)`` (idempotent), called again until no signal handler's exception
    cuts it short; None if it fails otherwise (kept in ``interrupted``)."""
    while True:
        try:
            return step(*args)
        except Exception as exc:
            interrupted.append(exc)
            return None
        except BaseException as exc:
            interrupted.append(exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
