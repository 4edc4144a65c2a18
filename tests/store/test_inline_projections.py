"""Inline projections run inside the append's transaction: they see exactly what commits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from uuid import UUID

import pytest

from flowtrail.core import ConcurrencyConflictError, Event, RecordedEvent
from flowtrail.core.effects import ExecuteMany, Fetch, Script
from flowtrail.core.projection import Dialect
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from flowtrail.store.sqlite_schema import mark_current_script
from tests.conftest import open_databases
from tests.store.builders import new_stream, renamed
from tests.store.conftest import Log


class CountingProjection:
    """Counts events per stream in a table of its own."""

    name = "counts"
    version = 1
    tables = ("event_counts",)

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on

    def schema(self, dialect: Dialect) -> Sequence[str]:
        return ["CREATE TABLE IF NOT EXISTS event_counts (stream_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"]

    def apply(
        self,
        records: Sequence[RecordedEvent],
        events: Sequence[Event],
        known: Mapping[str, object] | None = None,
    ) -> Script[None]:
        assert [r.decode() for r in records] == list(events)
        if self.fail_on is not None and any(getattr(e, "name", None) == self.fail_on for e in events):
            raise RuntimeError("projection failed")
        yield ExecuteMany(
            "INSERT INTO event_counts (stream_id, n) VALUES (?, 1) "
            "ON CONFLICT (stream_id) DO UPDATE SET n = event_counts.n + 1",
            [(r.stream_id,) for r in records],
        )


def _counts(store: SyncSQLiteStore) -> dict[str, int]:
    def read() -> Script[dict[str, int]]:
        return dict((yield Fetch("SELECT stream_id, n FROM event_counts")))

    return store.run(read())


def test_an_inline_projection_sees_every_committed_event(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "p.db", projections=[CountingProjection()]) as store:
        stream, events = new_stream(3)
        store.append(stream, events, 0)
        store.append(stream, [renamed(UUID(stream))], 3)
        assert _counts(store) == {stream: 4}


def test_an_inline_projection_writes_nothing_for_a_conflict(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "p.db", projections=[CountingProjection()]) as store:
        stream, events = new_stream(1)
        store.append(stream, events, 0)
        with pytest.raises(ConcurrencyConflictError):
            store.append(stream, [renamed(UUID(stream))], 0)
        assert _counts(store) == {stream: 1}


def test_a_failing_projection_rolls_the_append_back(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "p.db", projections=[CountingProjection(fail_on="poison")]) as store:
        stream, events = new_stream(1)
        store.append(stream, events, 0)
        with pytest.raises(RuntimeError):
            store.append(stream, [renamed(UUID(stream), "poison")], 1)
        assert store.stream_version(stream) == 1
        assert _counts(store) == {stream: 1}


def test_inline_projections_run_within_group_commits(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        store = await SQLiteStore.open_path(tmp_path / "g.db", projections=[CountingProjection()])
        streams = [new_stream(2) for _ in range(32)]
        await asyncio.gather(*(store.append(s, e, 0) for s, e in streams))
        groups = store.commit_groups
        await store.close()
        return groups, len(streams)

    groups, count = asyncio.run(scenario())
    assert groups <= 2
    with SyncSQLiteStore(tmp_path / "g.db", projections=[CountingProjection()]) as store:
        counts = _counts(store)
        assert len(counts) == count
        assert set(counts.values()) == {2}


def test_a_projection_added_to_an_existing_log_is_reported_stale(tmp_path: Path) -> None:
    db = tmp_path / "late.db"
    with SyncSQLiteStore(db) as store:
        stream, events = new_stream(2)
        store.append(stream, events, 0)
    with SyncSQLiteStore(db, projections=[CountingProjection()]) as store:
        assert store.stale_projections == ["counts"]
    with SyncSQLiteStore(db, projections=[CountingProjection()]) as store:
        assert store.stale_projections == ["counts"], "stale until rebuilt, however often it is opened"
        store.run(mark_current_script(CountingProjection()), write=True)
    with SyncSQLiteStore(db, projections=[CountingProjection()]) as store:
        assert store.stale_projections == []


def test_a_projection_on_a_new_log_is_current(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "new.db", projections=[CountingProjection()]) as store:
        assert store.stale_projections == []


class _IndexedCountingProjection(CountingProjection):
    """The same projection at the same version, declaring one more index."""

    def schema(self, dialect: Dialect) -> Sequence[str]:
        return [*super().schema(dialect), "CREATE INDEX IF NOT EXISTS event_counts_n ON event_counts (n)"]


def test_an_index_a_projection_declares_without_a_new_version_is_made_at_the_next_open(
    tmp_path: Path,
) -> None:
    with SyncSQLiteStore(tmp_path / "p.db", projections=[CountingProjection()]) as store:
        store.append(*new_stream(1), 0)
    with SyncSQLiteStore(tmp_path / "p.db", projections=[_IndexedCountingProjection()]) as store:

        def indexes() -> Script[list[str]]:
            rows = yield Fetch(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event_counts'"
            )
            return [str(row[0]) for row in rows]

        assert "event_counts_n" in store.run(indexes())
        assert store.stale_projections == []


@pytest.mark.parametrize(
    "kind", ["sqlite-async", pytest.param("postgresql-async", marks=pytest.mark.postgres)]
)
def test_an_append_refused_in_a_group_commit_fails_alone(kind: str, tmp_path: Path) -> None:
    """Appends arriving together share a transaction, which one refused row undoes
    whole (PostgreSQL aborts it): the others are tried again one by one and land, as
    they would have had they come alone."""
    backend = kind.partition("-")[0]
    databases = open_databases(backend, tmp_path)
    where = tmp_path / "group.db" if backend == "sqlite" else databases.url("group")
    log = Log(kind, where, projections=[CountingProjection(fail_on="poison")])
    try:
        streams = [new_stream(1) for _ in range(6)]
        for stream, events in streams:
            log.append(stream, events, 0)
        results = log.gather(
            [
                ("append", (stream, [renamed(UUID(stream), "poison" if i == 2 else f"n{i}")], 1), {})
                for i, (stream, _) in enumerate(streams)
            ]
        )
        assert [type(r).__name__ for r in results] == ["AppendResult"] * 2 + ["RuntimeError"] + [
            "AppendResult"
        ] * 3
        assert [log.stream_version(stream) for stream, _ in streams] == [2, 2, 1, 2, 2, 2]
    finally:
        log.close()
        databases.cleanup()
