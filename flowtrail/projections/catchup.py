"""Catch-up projections: tail the log from a checkpoint kept beside their rows.

Each step is one write transaction: read the checkpoint, read the events after it,
apply them, move the checkpoint. Rows and checkpoint commit together, so after a crash
the projection resumes exactly where its last committed step ended: no event is applied
twice, none is skipped.

`DecisionStats` is the built-in one: how many proposals each policy rule answered, and
how.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Begin, Commit, Execute, ExecuteMany, Fetch, Rollback, Row, Script
from flowtrail.core.errors import ProjectionReplacedError
from flowtrail.core.events import Event, StateProposed
from flowtrail.core.projection import Dialect, Projection

__all__ = ["DecisionStats", "catch_up_step", "checkpoint_of", "prepare"]

_CHECKPOINT = "SELECT position FROM checkpoints WHERE name = ? AND version = ?"
_MOVE = (
    "INSERT INTO checkpoints (name, version, position) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET version = excluded.version, position = excluded.position"
)


def prepare(projection: Projection, dialect: Dialect, *, afresh: bool = False) -> Script[None]:
    """Make the projection's tables, in the caller's write transaction. Where a
    checkpoint of another version of it is kept, its rows were made by that version:
    its tables are dropped first and the checkpoint becomes this version's, at the
    start, so that this version applies every event once, as a rebuild of it would.
    ``afresh``: the same for a checkpoint of this version (a rebuild)."""
    rows: list[Row] = yield Fetch("SELECT version FROM checkpoints WHERE name = ?", (projection.name,))
    if afresh:
        rows = [(None,)]  # as if another version's: dropped, then started again
    if rows and rows[0][0] != projection.version:
        for table in projection.tables:
            yield Execute(f"DROP TABLE IF EXISTS {table}")
    for statement in projection.schema(dialect):
        yield Execute(statement)
    if not rows or rows[0][0] != projection.version:
        # This version's checkpoint, at the start, from now on: a step of another
        # version that made its tables ready before this one finds it, and stops
        # rather than applying into these tables (`catch_up_step`).
        yield Execute(_MOVE, (projection.name, projection.version, 0))


def checkpoint_of(projection: Projection) -> Script[int]:
    """The last position the projection has applied (0 before its first step)."""
    rows: list[Row] = yield Fetch(_CHECKPOINT, (projection.name, projection.version))
    return int(rows[0][0]) if rows else 0


def _resumed_from(projection: Projection, resumed: bool) -> Script[int]:
    # Never start again from the first event over another version's rows: two versions
    # caught up at once (a rolling deploy) would each undo the other's checkpoint, step
    # after step, for ever. The version that prepared last keeps the tables.
    rows: list[Row] = yield Fetch(
        "SELECT version, position FROM checkpoints WHERE name = ?", (projection.name,)
    )
    if rows and rows[0][0] == projection.version:
        return int(rows[0][1])
    if rows or resumed:
        taker = f"version {rows[0][0]}" if rows else "another version"
        raise ProjectionReplacedError(
            f"projection {projection.name!r} (version {projection.version}) was replaced by {taker} "
            "of it while catching up: it stops here"
        )
    return 0


def catch_up_step(
    projection: Projection,
    read_batch: str,
    record_of: Callable[[Row], RecordedEvent],
    batch: int = 1_000,
    *,
    resumed: bool = False,
) -> Script[int]:
    """Apply the next ``batch`` events after the checkpoint; returns how many.

    ``resumed``: an earlier step of this catch-up moved the checkpoint, so it must be
    there still. A `ProjectionReplacedError` when another version of the projection
    has taken its tables over since (its checkpoint is there instead, or none is).
    """
    yield Begin()
    try:
        position = yield from _resumed_from(projection, resumed)
        rows: list[Row] = yield Fetch(read_batch, (position + 1, batch))
        if rows:
            records = [record_of(row) for row in rows]
            yield from projection.apply(records, [r.decode() for r in records])
            yield Execute(_MOVE, (projection.name, projection.version, records[-1].position))
    except GeneratorExit:
        raise  # closed unfinished (its caller stopped): the store ends the transaction itself
    except BaseException:
        yield Rollback()
        raise
    yield Commit()
    return len(rows)


class DecisionStats:
    """Counts of decisions by policy, deciding rule and status."""

    name = "decision_stats"
    version = 1
    tables = ("decision_stats",)

    def schema(self, dialect: Dialect) -> Sequence[str]:
        count = "INTEGER" if dialect == "sqlite" else "BIGINT"
        return [
            f"""CREATE TABLE IF NOT EXISTS decision_stats (
                policy TEXT NOT NULL, rule TEXT NOT NULL, status TEXT NOT NULL, count {count} NOT NULL,
                PRIMARY KEY (policy, rule, status))"""
        ]

    def apply(
        self,
        records: Sequence[RecordedEvent],
        events: Sequence[Event],
        known: Mapping[str, object] | None = None,
    ) -> Script[None]:
        counts = Counter(
            (e.decision.policy, e.decision.rule or "", e.decision.status.value)
            for e in events
            if isinstance(e, StateProposed)
        )
        if counts:
            yield ExecuteMany(
                "INSERT INTO decision_stats (policy, rule, status, count) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (policy, rule, status) DO UPDATE SET count = decision_stats.count + excluded.count",
                [(*key, n) for key, n in counts.items()],
            )
