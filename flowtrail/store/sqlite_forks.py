"""This process's SQLite connections to files, followed across a fork.

SQLite keeps, per process, a record of the locks its connections hold on each file, and
a new connection to a file already recorded takes no lock of its own. A fork copies
that record but not the locks, which stay the parent's: a connection a child opens
beside a copy of the parent's holds none, so once the parent closes, another process
takes itself for the file's last user and deletes the write-ahead log the child still
writes to. Its appends were acknowledged and are gone.

So every connection flowtrail makes to a SQLite file is followed from before it is
opened until after it is closed (`track`). In a forked child the parent's are kept
(`flowtrail.store.forks`: no SQLite call in a fork handler); when the child first opens
a SQLite file itself (`release_inherited`), the copies that were idle at the fork are
closed, which drops the record, and a file that a copy which cannot be closed refers to
is refused. A copy cannot be closed when it may have been in use at the fork: an async
one (aiosqlite's thread is not in the child), one in a transaction (its rollback would
undo, in the WAL index both processes share, pages the parent wrote), one being opened
or closed by another thread. Closing happens at the child's first use of SQLite: had
another thread of the parent held one of SQLite's mutexes at the fork, that open would
wait on it anyway.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from flowtrail.core.errors import StoreError
from flowtrail.store import forks

__all__ = ["Tracked", "closing", "opened", "release_inherited", "track", "untrack"]


class Tracked:
    """One of this process's connections to a SQLite file, from before it is opened
    until it is closed."""

    __slots__ = ("closable", "closing", "connection", "file", "identity", "idle")

    def __init__(self, file: str) -> None:
        #: The file, its links resolved; and (device, inode) once it is open.
        self.file = file
        self.identity: tuple[int, int] | None = None
        #: The driver's connection (sqlite3 or aiosqlite) once open.
        self.connection: object = None
        #: A fork held its store, outside any call of the forking thread's (set in the child).
        self.idle = False
        self.closing = False
        #: In a child: the copy may be closed there.
        self.closable = False


_tracked: set[Tracked] = set()
_inherited: list[Tracked] = []


def track(path: str | Path) -> Tracked:
    """Follow a connection about to be opened to ``path``."""
    entry = Tracked(os.path.realpath(path))
    _tracked.add(entry)
    return entry


def opened(entry: Tracked, connection: object) -> None:
    entry.identity = _identity(entry.file)
    entry.connection = connection


def untrack(entry: Tracked) -> None:
    """The connection is closed (or was never opened)."""
    _tracked.discard(entry)


@contextlib.contextmanager
def closing(entry: Tracked | None) -> Iterator[None]:
    """The block closes the connection (None: one to memory): a child's copy of it is
    never closed there, and it is forgotten once closed."""
    if entry is not None:
        entry.closing = True
    yield
    if entry is not None:
        untrack(entry)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def _closable(entry: Tracked) -> bool:
    connection = entry.connection
    if not entry.idle or entry.closing or not isinstance(connection, sqlite3.Connection):
        return False
    try:
        # Reads a flag of the connection's: no SQLite mutex is taken.
        return not connection.in_transaction
    except sqlite3.ProgrammingError:  # closed
        return False


def _left_in_child() -> None:
    for entry in _tracked:
        entry.closable = _closable(entry)
        _inherited.append(entry)
    _tracked.clear()


forks.in_child(_left_in_child)


def release_inherited(path: str | Path) -> None:
    """In a forked child, before a SQLite file is opened (a no-op elsewhere): close the
    parent's idle connections, and refuse a file one that cannot be closed refers to."""
    if not _inherited:
        return
    for entry in [entry for entry in _inherited if entry.closable]:
        with contextlib.suppress(sqlite3.Error):
            entry.connection.close()  # type: ignore[attr-defined]
        _inherited.remove(entry)
    file, identity = os.path.realpath(path), _identity(str(path))
    if any(
        entry.file == file or (identity is not None and entry.identity == identity) for entry in _inherited
    ):
        raise StoreError(
            f"this process was forked while the process before it had the log at {path} in use in a "
            "way that cannot be undone here (asynchronously, in a transaction, or opening or closing "
            "it), and SQLite's locks on a file cannot be handed over a fork: open it in a process "
            "started with the 'spawn' method"
        )
