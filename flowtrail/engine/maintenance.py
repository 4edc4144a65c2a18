"""Long operations, written once as scripts: rebuild, catch-up, time travel.

They read the log between write transactions (`Fetch` on the reader), and run each
write transaction on the writer (`OnWriter`), so the write lock is held a chunk at a
time and appends go on in between.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple, Protocol

from flowtrail.core.effects import Fetch, Join, OnWriter, Row, Script
from flowtrail.core.errors import InvalidVersionError
from flowtrail.core.projection import Dialect, Projection
from flowtrail.engine.audit import prepare_catch_up
from flowtrail.engine.replay import SplitReplay, copy_rows, partition_bounds, partition_offsets
from flowtrail.engine.snapshot import RunSnapshot
from flowtrail.projections.catchup import catch_up_step
from flowtrail.projections.rebuild import RunViewsRebuild, executed
from flowtrail.projections.runs import RunViews
from flowtrail.store.scripts import LogSql, record_of

__all__ = ["Backend", "RebuildCounts", "catch_up_script", "rebuild_script", "snapshot_script"]

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


class RebuildCounts(NamedTuple):
    """What a rebuild went through."""

    #: Events folded into the views.
    applied: int
    #: Events of runs whose creation is not in the log (a damaged log: `verify` names
    #: the damage): no view holds them.
    orphaned: int


def rebuild_script(
    backend: Backend,
    views: RunViews,
    *,
    progress: Progress | None,
    batch: int,
    cache_size: int,
    split: SplitReplay | None = None,
) -> Script[RebuildCounts]:
    """Drop the run views, replay the log into them a chunk at a time, mark them current.

    With ``split``, the events up to the log's end when its helpers start (just before
    the drop) are replayed in partitions of runs, one here and the others in helper
    processes (`flowtrail.engine.replay`); the catch-up replays the rest.
    Where the dialect has them (`LogSql.lean_cache`), both connections keep a smaller
    page cache meanwhile, and get their usual one back at the end, failed or not.
    """
    sql = backend.sql
    yield from _set_cache(sql.lean_cache)
    try:
        counts = yield from _rebuild(backend, views, progress, batch, cache_size, split)
    except GeneratorExit:
        raise  # closed midway (its task cancelled): it can run nothing more
    except BaseException:
        with contextlib.suppress(Exception):  # the rebuild's own error is the one to see
            yield from _set_cache(sql.usual_cache)
        raise
    yield from _set_cache(sql.usual_cache)
    return counts


def signs_of_life() -> str:
    """What a rebuild writes with each of its writes: when, on which host, which process."""
    return f"{time.time()!r} {socket.gethostname()} {os.getpid()}"


def running_elsewhere(signs: str | None, *, within: float) -> bool:
    """Whether the rebuild that left these signs still runs: it wrote ``within`` seconds
    of now (by either host's clock) and, on this host, its process is still there."""
    try:
        when, host, pid = (signs or "").split(" ")
        ago, process = time.time() - float(when), int(pid)
    except ValueError:
        return False
    if not -within <= ago <= within:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(process, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return process != os.getpid()


def _set_cache(statement: str | None) -> Script[None]:
    """Run a page-cache statement on the writer, then on the reader."""
    if statement is not None:
        yield OnWriter(executed(statement))
        yield Fetch(statement)


def _rebuild(
    backend: Backend,
    views: RunViews,
    progress: Progress | None,
    batch: int,
    cache_size: int,
    split: SplitReplay | None,
) -> Script[RebuildCounts]:
    rebuild = RunViewsRebuild(views, cache_size=cache_size, token=uuid.uuid4().hex, signs=signs_of_life)
    reset = rebuild.reset(backend.dialect, backend.mark_stale(views), backend.sql.last_position)
    head, partitions = 0, 1
    if split is not None:
        # Helpers start before the drop, on the log as it is then: dropping tables of a
        # million rows frees every page of them, a second or two the helpers spend
        # replaying. Events appended meanwhile are the catch-up's, like those after it.
        rows: list[Row] = yield Fetch(backend.sql.last_position)
        head = int(rows[0][0] or 0)
        partitions = split.partitions(head)
    if split is not None and partitions > 1:
        # Each process keeps its share of the cache: together they hold no more.
        rebuild.cache_size = max(1, cache_size // partitions)
        yield from _replay_split(rebuild, views, split, head, partitions, reset, progress, batch)
    else:
        total = yield OnWriter(reset)
        yield from _replay(
            rebuild, backend.sql.read_batch, lambda after: (after + 1, batch), batch, progress, total
        )
    for build in rebuild.index_builds():
        yield OnWriter(build)
    yield OnWriter(rebuild.finish(backend.sql.read_batch, record_of, backend.mark_current(views)))
    if progress is not None:
        progress(rebuild.position, rebuild.position)
    return RebuildCounts(rebuild.applied, rebuild.orphaned)


def _replay(
    rebuild: RunViewsRebuild,
    sql: str,
    params: Callable[[int], tuple[object, ...]],
    batch: int,
    progress: Progress | None,
    total: int,
) -> Script[None]:
    """Feed the rows ``sql`` gives, a chunk (``params`` of the last position fed) at a
    time, until a chunk comes back short."""
    after = 0
    while True:
        rows: list[Row] = yield Fetch(sql, params(after))
        if rows:
            yield OnWriter(rebuild.feed([record_of(row) for row in rows]))
            after = rows[-1][0]
            if progress is not None:
                progress(after, max(total, after))
        if len(rows) < batch:
            break


def _replay_split(
    rebuild: RunViewsRebuild,
    views: RunViews,
    split: SplitReplay,
    head: int,
    partitions: int,
    reset: Script[object],
    progress: Progress | None,
    batch: int,
) -> Script[None]:
    """Start helpers on the events up to ``head``, then drop the views (``reset``),
    replay the first partition here while the helpers replay the others, and copy
    their rows in."""
    cuts: list[object] = []
    for offset in partition_offsets(partitions, head):
        rows: list[Row] = yield Fetch(split.partition_cut, (offset,))
        cuts.extend(row[0] for row in rows)
    (low, high), *others = partition_bounds(cuts)
    helpers = split.start(others, head, batch, rebuild.cache_size)
    try:
        yield OnWriter(reset)
        own = (head, low, high, batch)
        yield from _replay(rebuild, split.read_partition, lambda after: (after, *own), batch, progress, head)
        done: list[tuple[str, int, int]] = yield Join(helpers)
        for file, applied, orphaned in done:
            yield OnWriter(copy_rows(views.tables, file, rebuild.guarded))
            rebuild.applied += applied
            rebuild.orphaned += orphaned
    finally:
        helpers.close()
    # Everything up to the head is in; the rest is the catch-up's (finish).
    rebuild.position = head


def catch_up_script(
    backend: Backend,
    projection: Projection,
    *,
    batch: int,
    afresh: bool = False,
    progress: Progress | None = None,
) -> Script[int]:
    """Bring a catch-up projection to the end of the log, a step (transaction) at a time;
    ``afresh``, from the first event on emptied tables (a rebuild of it)."""
    yield OnWriter(prepare_catch_up(projection, backend.dialect, afresh=afresh))
    total = 0
    if progress is not None:
        rows: list[Row] = yield Fetch(backend.sql.last_position)
        total = int(rows[0][0] or 0)
        progress(0, total)
    applied = 0
    while done := (
        yield OnWriter(
            catch_up_step(projection, backend.sql.read_batch, record_of, batch, resumed=applied > 0)
        )
    ):
        applied += done
        if progress is not None:
            progress(applied, max(total, applied))
    return applied


def snapshot_script(sql: LogSql, position: int, *, batch: int) -> Script[RunSnapshot]:
    """The run views folded from the log up to ``position`` (in memory); a position
    past the log's end is an InvalidVersionError (no views were ever so)."""
    end: list[Row] = yield Fetch(sql.last_position)
    last = int(end[0][0] or 0)
    if position > last:
        raise InvalidVersionError(f"position {position} is past the end of the log, which ends at {last}")
    snapshot = RunSnapshot(position)
    start, recorded_at = 1, None
    while start <= position:
        rows: list[Row] = yield Fetch(sql.read_batch, (start, min(batch, position - start + 1)))
        snapshot.feed([record_of(row) for row in rows])
        if rows:
            recorded_at = rows[-1][5]
        if not rows or len(rows) < batch:
            break
        start = rows[-1][0] + 1
    # A position inside a transaction (an append of several events, a subflow's state
    # and its parent task run's copy, say, or appends committed together) goes on to
    # the transaction's end: no reader ever saw the views in between. A transaction's
    # events are recorded at one time (read while it holds the log's write lock), so
    # the events after the position recorded at its time end where a commit did.
    while recorded_at is not None and snapshot.position < last:
        rows = yield Fetch(sql.read_batch, (snapshot.position + 1, batch))
        same = list(itertools.takewhile(lambda row: row[5] == recorded_at, rows))
        snapshot.feed([record_of(row) for row in same])
        if same:
            snapshot.position = same[-1][0]
        if len(same) < len(rows) or not rows:
            break
    snapshot.complete()
    return snapshot
