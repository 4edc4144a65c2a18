"""Group commit: appends arriving together share one transaction, each checked alone."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import aiosqlite
import pytest

from flowtrail.core import ConcurrencyConflictError, StoreBusyError, StoreError
from flowtrail.core.effects import Begin, Commit, Fetch, Script
from flowtrail.projections import RunViews
from flowtrail.store.sqlite import SQLiteStore
from tests.store.builders import new_stream, renamed


def test_sixty_four_concurrent_appends_share_a_few_transactions(tmp_path: Path) -> None:
    async def scenario() -> SQLiteStore:
        store = await SQLiteStore.open_path(tmp_path / "group.db")
        streams = [new_stream(2) for _ in range(64)]
        await asyncio.gather(*(store.append(stream, events, 0) for stream, events in streams))
        await store.close()
        return store

    store = asyncio.run(scenario())
    assert store.appends_committed == 64
    assert store.commit_groups <= 2


def test_a_group_commit_is_one_hand_off_to_the_database_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosqlite costs tens of microseconds per call handed to its thread: a group of 64
    appends with idempotency keys and inline views (BEGIN, lookup, inserts, view reads
    and writes, COMMIT) must be handed over once, not once per statement."""
    handed: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(connection: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # A script runs there in its caller's context: `Context.run(run_sync, ...)`.
        inner = args[0] if isinstance(getattr(fn, "__self__", None), contextvars.Context) else fn
        handed.append(getattr(inner, "__name__", repr(inner)))
        return await original(connection, fn, *args, **kwargs)

    async def scenario() -> None:
        store = await SQLiteStore.open_path(tmp_path / "calls.db", projections=[RunViews()])
        streams = [new_stream(3) for _ in range(64)]
        await asyncio.gather(*(store.append(s, e, 0, idempotency_key=s) for s, e in streams))
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        await asyncio.gather(
            *(store.append(s, [renamed(UUID(s))], 3, idempotency_key=f"{s}-2") for s, _ in streams)
        )
        monkeypatch.undo()
        assert store.commit_groups == 2
        await store.close()

    asyncio.run(scenario())
    assert handed == ["run_sync"]


def test_a_conflict_in_a_group_fails_only_its_own_append(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        store = await SQLiteStore.open_path(tmp_path / "conflict.db")
        taken, taken_events = new_stream(1)
        await store.append(taken, taken_events, 0)
        others = [new_stream(1) for _ in range(20)]
        appends = [store.append(taken, [renamed(UUID(taken))], 0)] + [
            store.append(s, e, 0) for s, e in others
        ]
        results = await asyncio.gather(*appends, return_exceptions=True)
        await store.close()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[0], ConcurrencyConflictError)
    assert not any(isinstance(r, BaseException) for r in results[1:])


def test_a_caller_that_stops_waiting_does_not_disturb_the_group(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, list[object]]:
        store = await SQLiteStore.open_path(tmp_path / "cancel.db")
        streams = [new_stream(1) for _ in range(10)]
        tasks = [asyncio.create_task(store.append(s, e, 0)) for s, e in streams]
        await asyncio.sleep(0)
        tasks[3].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        last = await store.last_position()
        await store.close()
        return last, results

    last, results = asyncio.run(scenario())
    assert sum(not isinstance(r, BaseException) for r in results) >= 9
    assert last in (9, 10)  # the cancelled append may already have been in the group


def test_a_failed_begin_fails_the_group_and_leaves_nothing_open(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"

    async def scenario() -> tuple[BaseException | None, int]:
        store = await SQLiteStore.open_path(path, busy_timeout=0.05)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        stream, events = new_stream(1)
        try:
            await store.append(stream, events, 0)
            failure = None
        except StoreBusyError as exc:
            failure = exc
        holder.execute("ROLLBACK")
        holder.close()
        await store.append(stream, events, 0)  # the writer is not left inside a transaction
        last = await store.last_position()
        await store.close()
        return failure, last

    failure, last = asyncio.run(scenario())
    assert isinstance(failure, StoreBusyError)
    assert last == 1


def _write_transaction() -> Script[None]:
    yield Begin()
    yield Fetch("SELECT max(position) FROM events")
    yield Commit()


@pytest.mark.parametrize("steps", range(8))
def test_a_write_cancelled_at_any_step_leaves_the_writer_usable(tmp_path: Path, steps: int) -> None:
    """A write (a rebuild under a timeout, say) cancelled at any point, before or while
    its transaction runs on the writer's thread, must not leave the writer inside a
    transaction: every later append would fail."""

    async def scenario() -> int:
        store = await SQLiteStore.open_path(tmp_path / "cancelled.db")
        write = asyncio.create_task(store.run(_write_transaction(), write=True))
        for _ in range(steps):
            await asyncio.sleep(0)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        stream, events = new_stream(2)
        await store.append(stream, events, 0)
        last = await store.last_position()
        await store.close()
        return last

    assert asyncio.run(scenario()) == 2


def test_an_async_store_serves_one_running_event_loop_at_a_time_and_moves_once_it_stops(
    tmp_path: Path,
) -> None:
    """Its locks and group commits belong to one loop: a second loop running at the same
    time in another thread is refused, where its callers were told that writes which
    landed had been cancelled. One asyncio.run after another is fine."""
    opening = asyncio.new_event_loop()
    store = opening.run_until_complete(SQLiteStore.open_path(tmp_path / "loops.db"))
    serving, done = threading.Event(), threading.Event()

    async def keep_serving() -> None:
        stream, events = new_stream(1)
        await store.append(stream, events, 0)
        serving.set()
        while not done.is_set():
            await asyncio.sleep(0.01)

    other = threading.Thread(target=lambda: asyncio.run(keep_serving()))
    other.start()
    try:
        assert serving.wait(30)
        with pytest.raises(StoreError, match="in use by an event loop running in another thread"):
            asyncio.run(store.append(*new_stream(1), 0))
    finally:
        done.set()
        other.join(30)
    assert asyncio.run(store.last_position()) == 1
    opening.run_until_complete(store.close())
    opening.close()


def test_a_group_being_committed_as_asyncio_run_ends_is_committed_not_cut_off(tmp_path: Path) -> None:
    """`asyncio.run` cancels every task left as it ends; the committer refuses, and the
    groups handed to it are committed and answered before the loop closes (cut off in
    its transaction, a group's appends were rolled back under callers that could be
    recording a run's end)."""
    path = tmp_path / "ending.db"
    answered: list[object] = []
    stores: list[SQLiteStore] = []

    async def scenario() -> None:
        store = await SQLiteStore.open_path(path)
        stores.append(store)

        async def append(stream: str, events: list[Any]) -> None:
            answered.append(await store.append(stream, events, 0))

        appending = [asyncio.ensure_future(append(s, e)) for s, e in [new_stream(2) for _ in range(32)]]
        assert not any(task.done() for task in appending)
        await asyncio.sleep(0)  # the appends join a group, and the committer starts
        # The loop ends here, with the group on its way to the database.

    asyncio.run(scenario())
    asyncio.run(stores[0].close())
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute("SELECT count(*) FROM events").fetchone()
    assert count == 64
