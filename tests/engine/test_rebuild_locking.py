"""A rebuild holds the write lock only while it writes rows, so appends go on meanwhile."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from flowtrail import SyncOrchestrator, states
from flowtrail.core.effects import Begin, Commit, Effect, ExecuteMany
from flowtrail.projections.rebuild import RunViewsRebuild
from flowtrail.store.drivers import run_sync
from flowtrail.store.scripts import record_of
from flowtrail.store.sqlite import _Connection
from flowtrail.store.sqlite_schema import SQL, translate


def _log(path: Path, runs: int) -> int:
    """Runs created, then each moved on: the second half of the log is of runs created
    in the first. The position where the second half starts."""
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        created = [orch.create_flow_run("etl", tags=["nightly"], state=states.Pending()) for _ in range(runs)]
        half = orch.last_position() + 1
        for run in created:
            orch.propose_state(run.id, states.Running())
    return half


class _Watched:
    """Carries out a rebuild's effects on a real connection, noting what the rebuild had
    folded whenever it took the write lock, and what it ran inside the lock."""

    def __init__(self, connection: sqlite3.Connection, rebuild: RunViewsRebuild) -> None:
        self._connection = _Connection(connection)
        self._rebuild = rebuild
        self.folded_at_begin: list[int] = []
        self.locked: list[type[Effect]] = []
        self._inside = False
        self._baseline = 0

    def forget(self) -> None:
        """Watch afresh from here (events folded counted from now on)."""
        self.folded_at_begin.clear()
        self.locked.clear()
        self._baseline = self._rebuild.applied

    def execute(self, effect: Effect) -> Any:
        if isinstance(effect, Begin):
            self.folded_at_begin.append(self._rebuild.applied - self._baseline)
            self._inside = True
        if self._inside:
            self.locked.append(type(effect))
        if isinstance(effect, Commit):
            self._inside = False
        return self._connection.execute(effect)


def _second_chunk_fed(path: Path, flush_every: int) -> tuple[_Watched, int]:
    """Feed the log's first half, then watch the second half fed: a chunk whose runs'
    views were written and left the cache, so they are read back first."""
    half = _log(path, runs=30)
    connection = sqlite3.connect(path, isolation_level=None)
    rebuild = RunViewsRebuild(cache_size=5, flush_every=flush_every)
    watched = _Watched(connection, rebuild)
    run_sync(rebuild.reset("sqlite", iter(()), SQL.last_position), watched.execute, translate)
    first = connection.execute(SQL.read_batch, (1, half - 1)).fetchall()
    run_sync(rebuild.feed([record_of(row) for row in first]), watched.execute, translate)
    run_sync(rebuild.flush(), watched.execute, translate)
    watched.forget()
    applied = rebuild.applied
    second = connection.execute(SQL.read_batch, (half, 10_000)).fetchall()
    run_sync(rebuild.feed([record_of(row) for row in second]), watched.execute, translate)
    connection.close()
    return watched, rebuild.applied - applied


def test_a_rebuild_folds_a_whole_chunk_before_it_takes_the_write_lock(tmp_path: Path) -> None:
    watched, events = _second_chunk_fed(tmp_path / "log.db", flush_every=10)
    assert events == 30
    assert watched.folded_at_begin == [events]


def test_a_rebuild_reads_back_views_before_it_takes_the_write_lock_and_only_writes_in_it(
    tmp_path: Path,
) -> None:
    watched, _ = _second_chunk_fed(tmp_path / "log.db", flush_every=10)
    first, *inside, last = watched.locked
    assert (first, set(inside), last) == (Begin, {ExecuteMany}, Commit)


def test_a_rebuild_takes_no_write_lock_for_a_chunk_of_fewer_changed_runs_than_it_writes_at_once(
    tmp_path: Path,
) -> None:
    watched, _ = _second_chunk_fed(tmp_path / "log.db", flush_every=1_000)
    assert watched.locked == []
