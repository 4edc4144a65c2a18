"""A process forked while it has logs open: the parent's connections stay the parent's."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flowtrail.core import StoreError
from flowtrail.core.effects import Execute, Script
from flowtrail.core.projection import Dialect
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from tests.conftest import open_databases
from tests.store.builders import new_stream, renamed

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="this system has no fork()")


def _in_a_child(body: Callable[[], int]) -> int:
    """Fork; the child's exit status is what ``body`` returns (9: it raised, -14: it hung)."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        try:
            code = body()
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            code = 9
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _reaped(pid: int, within: float = 10.0) -> int | None:
    """A child's exit status, or None if it had not ended ``within`` seconds (then killed)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@contextlib.contextmanager
def _meanwhile(work: Callable[[], object]) -> Iterator[None]:
    """Run ``work`` over and over on another thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _refused(call: Callable[[], object]) -> int:
    try:
        call()
    except StoreError as exc:
        return 0 if "before the process forked" in str(exc) else 2
    return 1


def test_a_store_opened_before_a_fork_refuses_to_be_used_in_the_child(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "log.db") as store:
        assert _in_a_child(lambda: _refused(store.last_position)) == 0


def test_an_async_store_opened_before_a_fork_refuses_to_be_used_in_the_child(tmp_path: Path) -> None:
    async def scenario() -> int:
        store = await SQLiteStore.open_path(tmp_path / "log.db")
        try:

            def child() -> int:
                return _refused(lambda: asyncio.run(store.last_position()))

            return _in_a_child(child)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == 0


def test_an_in_memory_log_is_the_childs_own_copy_after_a_fork() -> None:
    with SyncSQLiteStore(":memory:") as store:
        stream, events = new_stream(1)
        store.append(stream, events, 0)

        def child() -> int:
            more_stream, more = new_stream(1)
            store.append(more_stream, more, 0)
            return 0 if store.last_position() == 2 else 1

        assert _in_a_child(child) == 0
        assert store.last_position() == 1


def test_the_parent_goes_on_using_its_store_after_a_fork(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "log.db") as store:
        assert _in_a_child(lambda: 0) == 0
        stream, events = new_stream(2)
        store.append(stream, events, 0)
        assert store.stream_version(stream) == 2


def test_a_child_opens_the_log_again_and_both_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with SyncSQLiteStore(path) as store:
        stream, events = new_stream(1)
        store.append(stream, events, 0)

        def child() -> int:
            with SyncSQLiteStore(path) as own:
                if own.stream_version(stream) != 1:
                    return 1
                theirs, more = new_stream(1)
                own.append(theirs, more, 0)
            return 0

        assert _in_a_child(child) == 0
        assert store.last_position() == 2
        assert Path(f"{path}-wal").exists(), "the child's close took itself for the log's last connection"


def test_a_child_that_opens_the_log_again_holds_it_after_the_parent_has_closed_it(tmp_path: Path) -> None:
    """SQLite's record of the parent's locks is copied by the fork, the locks are not: a
    connection the child opened beside that record took none, so once the parent closed,
    another process closing its connection took itself for the last and deleted the WAL
    the child still wrote to."""
    path = tmp_path / "log.db"
    store = SyncSQLiteStore(path)
    stream, events = new_stream(1)
    store.append(stream, events, 0)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> int:
        own = SyncSQLiteStore(path)
        os.write(ready_w, b"r")
        os.read(go_r, 1)
        theirs, more = new_stream(1)
        own.append(theirs, more, 0)
        return 0  # ends without closing, as a crash would

    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        try:
            os._exit(child())
        except BaseException:
            os._exit(9)
    os.read(ready_r, 1)
    store.close()
    code = f"import sqlite3; c = sqlite3.connect({str(path)!r}); c.execute('SELECT count(*) FROM events').fetchall(); c.close()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    os.write(go_w, b"g")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with SyncSQLiteStore(path) as again:
        assert again.last_position() == 2


def test_a_child_that_never_uses_a_log_is_not_held_up_by_another_threads_use_of_sqlite(
    tmp_path: Path,
) -> None:
    """A thread inside SQLite at the fork leaves one of SQLite's mutexes held in the child
    for good: the fork handlers make no call into SQLite, so a child that does not use it
    never waits on one."""

    def other_sqlite_work() -> None:
        connection = sqlite3.connect(":memory:")
        connection.execute("SELECT 1").fetchall()
        connection.close()

    hung = 0
    with SyncSQLiteStore(tmp_path / "log.db"), _meanwhile(other_sqlite_work):
        for _ in range(100):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            hung += _reaped(pid, within=5.0) is None
    assert hung == 0


class _Spilling:
    """A projection whose rows outgrow SQLite's page cache within the append's
    transaction (so pages reach the WAL before the commit), and that forks midway."""

    name, version, tables = "spilling", 1, ("spilled",)

    def schema(self, dialect: Dialect) -> Sequence[str]:
        return ["CREATE TABLE IF NOT EXISTS spilled (n INTEGER PRIMARY KEY, b BLOB)"]

    def apply(self, records: Sequence[Any], events: Sequence[Any], known: Any = None) -> Script[None]:
        yield Execute(
            "INSERT INTO spilled (b) SELECT randomblob(3000) FROM (WITH RECURSIVE c(x) AS "
            "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) SELECT x FROM c)"
        )
        pid = os.fork()  # say, a helper started from inside the projection
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        yield Execute("INSERT INTO spilled (b) VALUES (zeroblob(10))")


def test_a_fork_inside_a_write_transaction_leaves_the_log_whole(tmp_path: Path) -> None:
    """The child's copy of a connection in a transaction is never closed: its rollback
    would undo, in the WAL index both processes share, pages the parent has written."""
    path = tmp_path / "log.db"
    with SyncSQLiteStore(path, projections=[_Spilling()]) as store:
        stream, events = new_stream(1)
        store.append(stream, events, 0)
        assert store.last_position() == 1
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("SELECT count(*) FROM spilled").fetchone() == (20001,)
    finally:
        connection.close()


def test_two_threads_forking_at_once_leave_every_store_usable(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "a.db") as a, SyncSQLiteStore(tmp_path / "b.db") as b:

        def forks() -> None:
            for _ in range(100):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)

        with _meanwhile(b.last_position):
            forkers = [threading.Thread(target=forks) for _ in range(2)]
            for forker in forkers:
                forker.start()
            for forker in forkers:
                forker.join(60)
            assert not any(forker.is_alive() for forker in forkers)
        for store in (a, b):
            assert store._write_lock.acquire(timeout=5)
            store._write_lock.release()
            assert store._read_lock.acquire(timeout=5)
            store._read_lock.release()
        assert a.last_position() == b.last_position() == 0


def test_stores_opened_and_closed_while_a_process_forks_are_never_used_by_a_child(tmp_path: Path) -> None:
    held = SyncSQLiteStore(tmp_path / "log.db")
    used = 0
    try:
        with _meanwhile(lambda: SyncSQLiteStore(":memory:").close()):
            for _ in range(200):
                used += _in_a_child(lambda: _refused(held.last_position)) != 0
    finally:
        held.close()
    assert used == 0


def test_an_interrupt_while_a_fork_waits_for_a_store_still_holds_it_across_the_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython reports a fork handler's exception and forks on: the interrupt must not
    leave the store unheld (the child using the parent's connection) or its lock taken."""
    reported: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_type))
    with SyncSQLiteStore(tmp_path / "log.db") as store:
        busy = threading.Thread(target=lambda: _held_for(store, 1.0))
        busy.start()
        time.sleep(0.1)
        interrupt = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGINT))
        interrupt.start()
        pid = os.fork()
        if pid == 0:
            os._exit(_refused(store.last_position))
        assert _reaped(pid) == 0
        busy.join()
        interrupt.join()
        assert store.last_position() == 0
        assert store._write_lock.acquire(timeout=5)
        store._write_lock.release()
    assert reported == [KeyboardInterrupt]


def _held_for(store: SyncSQLiteStore, seconds: float) -> None:
    with store._write_lock:
        time.sleep(seconds)


def test_a_child_refuses_to_open_a_file_its_parent_had_open_asynchronously(tmp_path: Path) -> None:
    """aiosqlite's thread may have been inside SQLite at the fork, so the child cannot
    close its copy of that connection, nor take real locks on the file beside it."""
    path = tmp_path / "log.db"

    async def scenario() -> int:
        store = await SQLiteStore.open_path(path)
        try:

            def child() -> int:
                try:
                    SyncSQLiteStore(path)
                except StoreError as exc:
                    return 0 if "'spawn'" in str(exc) else 2
                return 1

            return _in_a_child(child)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == 0


def test_an_in_memory_log_is_held_across_each_fork_of_a_forked_child() -> None:
    with SyncSQLiteStore(":memory:") as store:

        def child() -> int:
            return _in_a_child(lambda: 0 if store.last_position() == 0 else 1)

        assert _in_a_child(child) == 0


@pytest.mark.postgres
def test_a_child_leaves_the_parents_postgresql_session_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither closed in the child (that would end the session both share) nor collected
    there (psycopg warns that it was left open)."""
    from flowtrail.store.postgres import SyncPostgresStore

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    databases = open_databases("postgresql", tmp_path)
    try:
        with SyncPostgresStore.open(databases.url()) as store:

            def child() -> int:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    gc.collect()
                return 3 if unraisable else _refused(store.last_position)

            assert _in_a_child(child) == 0
            stream, events = new_stream(1)
            store.append(stream, events, 0)
            assert store.last_position() == 1
    finally:
        databases.cleanup()


def test_a_fork_goes_on_while_a_call_on_one_log_waits_for_another(tmp_path: Path) -> None:
    """A projection on one log reading a second takes their locks in an order the fork
    cannot know: the fork lets go and tries again rather than wait on it for good."""
    with SyncSQLiteStore(tmp_path / "second.db") as second, SyncSQLiteStore(tmp_path / "first.db") as first:

        def read_across() -> None:
            with first._write_lock:
                second.last_position()

        started = time.monotonic()
        with _meanwhile(read_across):
            codes = [_in_a_child(lambda: _refused(first.last_position)) for _ in range(50)]
        assert codes == [0] * 50
        assert time.monotonic() - started < 30


def test_a_fork_from_inside_a_call_and_one_from_another_thread_each_leave_every_store_refused(
    tmp_path: Path,
) -> None:
    with SyncSQLiteStore(tmp_path / "a.db") as a, SyncSQLiteStore(tmp_path / "b.db") as b:
        codes: list[int] = []

        def child() -> int:
            return _refused(a.last_position) or _refused(b.last_position)

        def inside_a_call() -> None:
            for _ in range(30):
                with b._write_lock:
                    codes.append(_in_a_child(child))

        def outside() -> None:
            codes.extend(_in_a_child(child) for _ in range(30))

        threads = [threading.Thread(target=inside_a_call), threading.Thread(target=outside)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert codes == [0] * 60


_FORKING_PAIR = """
import os, sys, threading
from flowtrail.store import forks
from flowtrail.store.sqlite import SyncSQLiteStore
import concurrent.futures.thread  # after flowtrail, as a program's first thread pool would be

forks.MOST_WAIT = 600.0
a, b = SyncSQLiteStore(sys.argv[1] + "/a.db"), SyncSQLiteStore(sys.argv[1] + "/b.db")
codes = []

def fork() -> None:
    pid = os.fork()
    if pid == 0:
        try:
            a.last_position()
        except Exception as exc:
            os._exit(0 if "before the process forked" in str(exc) else 2)
        os._exit(1)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

def inside_a_call() -> None:
    for _ in range(20):
        with b._write_lock:
            fork()

def outside() -> None:
    for _ in range(20):
        fork()

threads = [threading.Thread(target=inside_a_call), threading.Thread(target=outside)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
sys.exit(0 if codes == [0] * 40 else 1)
"""


def test_a_fork_from_inside_a_call_is_not_held_up_by_another_threads_fork_and_a_thread_pool(
    tmp_path: Path,
) -> None:
    """`concurrent.futures` takes a lock of its own before each fork: were its handler run
    before flowtrail's, one thread would hold it waiting for a store while the thread in a
    call on that store waited for it (here, with `MOST_WAIT` raised, for ten minutes)."""
    subprocess.run([sys.executable, "-c", _FORKING_PAIR, str(tmp_path)], check=True, timeout=120)


def test_children_opening_a_log_the_parent_keeps_opening_and_closing_lose_no_append(tmp_path: Path) -> None:
    """A fork waits for a store being opened, so no child has a copy of a connection it
    cannot tell apart from one in use: each child opens the log, takes SQLite's locks on
    the file of its own, and the parent's closes never delete the WAL under it."""
    path = tmp_path / "log.db"
    SyncSQLiteStore(path).close()

    def child() -> int:
        own = SyncSQLiteStore(path)
        stream, events = new_stream(1)
        own.append(stream, events, 0)
        for version in range(1, 6):
            time.sleep(0.02)  # while the parent closes its connections
            own.append(stream, [renamed(UUID(stream), f"name-{version}")], version)
        return 0  # ends without closing, as a crash would

    with _meanwhile(lambda: SyncSQLiteStore(path).close()):
        codes = [_in_a_child(child) for _ in range(12)]
    assert codes == [0] * 12
    with SyncSQLiteStore(path) as store:
        assert store.last_position() == 12 * 6
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()


class _Interrupting:
    """A lock held twice, whose first release is cut short by an interrupt, before or
    after it lets go."""

    def __init__(self, *, after: bool) -> None:
        self.count, self.after, self.interrupts = 2, after, 1

    def _recursion_count(self) -> int:
        return self.count

    def release(self) -> None:
        if self.interrupts and not self.after:
            self.interrupts -= 1
            raise KeyboardInterrupt
        self.count -= 1
        if self.interrupts:
            self.interrupts -= 1
            raise KeyboardInterrupt


@pytest.mark.parametrize("after", [False, True], ids=["before-letting-go", "after-letting-go"])
def test_an_interrupt_while_a_fork_lets_go_of_a_lock_still_leaves_it_free(after: bool) -> None:
    from flowtrail.store import forks

    lock = _Interrupting(after=after)
    forks._account.taken = [(lock, 0)]
    interrupted: list[BaseException] = []
    forks._let_go(interrupted)
    assert lock._recursion_count() == 0
    assert forks._account.taken == []
    assert [type(exc) for exc in interrupted] == [KeyboardInterrupt]
