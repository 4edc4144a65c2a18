"""Long operations, written once as scripts: rebuild, catch-up, time travel.

They read the log between write transactions (`Fetch` on the reader), and run each
write transaction on the writer (`OnWriter`), so the write lock is held a chunk at a
time and appends go on in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flowtrail.core.effects import Fetch, OnWriter, Row, Script
from flowtrail.core.projection import Dialect, Projection
from flowtrail.engine.audit import prepare_catch_up
from flowtrail.engine.snapshot import RunSnapshot
from flowtrail.projections.catchup import catch_up_step
from flowtrail.projections.rebuild import RunViewsRebuild
from flowtrail.projections.runs import RunViews
from flowtrail.store.scripts import LogSql, record_of

__all__ = ["Backend", "catch_up_script", "rebuild_script", "snapshot_script"]

#: Called with (events done, events in all) as a long operation goes.
Progress = Callable[[int, int], None]


class Backend(Protocol):
    """What a store says of itself to the operations that maintain its views."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def sql(self) -> LogSql: ...

    def mark_stale(self, projection: Projection) -> Script[None]: ...

    def mark_current(self, projection: Projection) -> Script[None]: ...


def rebuild_script(
    backend: Backend, views: RunViews, *, progress: Progress | None, batch: int, cache_size: int
) -> Script[int]:
    """Drop the run views, replay the log into them a chunk at a time, mark them current."""
    rebuild = RunViewsRebuild(views, cache_size=cache_size)
    yield OnWriter(rebuild.reset(backend.dialect, backend.mark_stale(views)))
    (total,) = (yield Fetch(backend.sql.last_position))[0]
    position = 1
    while True:
        rows: list[Row] = yield Fetch(backend.sql.read_batch, (position, batch))
        if rows:
            yield OnWriter(rebuild.feed([record_of(row) for row in rows]))
            position = rows[-1][0] + 1
            if progress is not None:
                progress(rebuild.position, max(total or 0, rebuild.position))
        if len(rows) < batch:
            break
    yield OnWriter(rebuild.finish(backend.sql.read_batch, record_of, backend.mark_current(views)))
    if progress is not None:
        progress(rebuild.position, rebuild.position)
    return rebuild.applied


def catch_up_script(backend: Backend, projection: Projection, *, batch: int) -> Script[int]:
    """Bring a catch-up projection to the end of the log, a step (transaction) at a time."""
    yield OnWriter(prepare_catch_up(projection, backend.dialect))
    applied = 0
    while done := (yield OnWriter(catch_up_step(projection, backend.sql.read_batch, record_of, batch))):
        applied += done
    return applied


def snapshot_script(sql: LogSql, position: int, *, batch: int) -> Script[RunSnapshot]:
    """The run views folded from the log up to ``position`` (in memory)."""
    snapshot = RunSnapshot(position)
    start = 1
    while start <= position:
        rows: list[Row] = yield Fetch(sql.read_batch, (start, min(batch, position - start + 1)))
        snapshot.feed([record_of(row) for row in rows])
        if not rows or len(rows) < batch:
            break
        start = rows[-1][0] + 1
    snapshot.complete()
    return snapshot
