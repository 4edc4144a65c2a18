"""A process forked while it has logs open: the parent's connections stay the parent's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from flowtrail.core import StoreError
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from tests.store.builders import new_stream

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="this system has no fork()")


def _in_a_child(body: Callable[[], int]) -> int:
    """Fork; the child's exit status is what ``body`` returns (9: it raised, -14: it hung)."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        try:
            code = body()
        except BaseException:
            code = 9
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


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
