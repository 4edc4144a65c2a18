"""Group commit: appends arriving together share one transaction, each checked alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any
from uuid import UUID

import aiosqlite
import pytest

from flowtrail.core import ConcurrencyConflictError, StoreBusyError
from flowtrail.core.effects import Begin, Commit, Effect, Fetch, Script
from flowtrail.store.sqlite import SQLiteStore, _AsyncConnection
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


def test_a_group_costs_a_handful_of_awaited_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiosqlite costs tens of microseconds per awaited call: a group must not pay per event."""
    calls: list[str] = []
    original = _AsyncConnection.execute

    async def counted(connection: _AsyncConnection, effect: Effect) -> Any:
        calls.append(type(effect).__name__)
        return await original(connection, effect)

    async def scenario() -> None:
        store = await SQLiteStore.open_path(tmp_path / "calls.db")
        monkeypatch.setattr(_AsyncConnection, "execute", counted)
        streams = [new_stream(3) for _ in range(64)]
        await asyncio.gather(*(store.append(s, e, 0, idempotency_key=s) for s, e in streams))
        assert store.commit_groups == 1
        await store.close()

    asyncio.run(scenario())
    assert len(calls) <= 8, calls


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


def test_begin_goes_to_the_database_together_with_the_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two calls in flight at once: one hand-off to aiosqlite's thread, not two."""
    in_flight, most = 0, 0
    sent: list[str] = []

    def watched(method: Any) -> Any:
        async def call(connection: aiosqlite.Connection, sql: str, *args: Any) -> Any:
            nonlocal in_flight, most
            sent.append(sql.split(maxsplit=1)[0])
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await method(connection, sql, *args)
            finally:
                in_flight -= 1

        return call

    async def scenario() -> None:
        store = await SQLiteStore.open_path(tmp_path / "begin.db")
        monkeypatch.setattr(aiosqlite.Connection, "execute", watched(aiosqlite.Connection.execute))
        monkeypatch.setattr(
            aiosqlite.Connection, "execute_fetchall", watched(aiosqlite.Connection.execute_fetchall)
        )
        stream, events = new_stream(1)
        await store.append(stream, events, 0)
        await store.close()

    asyncio.run(scenario())
    assert sent[:2] == ["BEGIN", "SELECT"]
    assert most == 2


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
    """A write (a rebuild under a timeout, say) cancelled between a queued BEGIN and its
    answer must not leave the writer inside a transaction: every later append would fail."""

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
