"""Scripts for re-checking the log through the orchestrator."""

from __future__ import annotations

from uuid import UUID

from flowtrail.core.audit import Auditor, AuditReport, verify
from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Execute, Fetch, Row, Script
from flowtrail.core.events import RunKind
from flowtrail.core.projection import Dialect, Projection
from flowtrail.engine.checks import run_id_of
from flowtrail.engine.operations import Context
from flowtrail.projections.queries import read_flow_runs, task_runs_of
from flowtrail.projections.rebuild import transaction
from flowtrail.store.scripts import record_of

__all__ = ["export_records", "log_id", "prepare_catch_up", "related_streams", "verify_script"]

_BATCH = 5_000


def related_streams(context: Context, run_id: UUID) -> Script[list[UUID]]:
    """The run and the runs its decisions read or write: a task's flow run, a subflow's
    parent task run, and so on up."""
    seen: list[UUID] = []
    todo = [run_id]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        view = yield from context.load(current, fresh=True)
        if view.kind is RunKind.TASK and view.flow_run_id is not None:
            todo.append(view.flow_run_id)
        if view.parent_task_run_id is not None:
            todo.append(view.parent_task_run_id)
    return seen


def descendant_streams(run_id: UUID) -> Script[list[UUID]]:
    """A flow run's task runs, the subflow runs they started, theirs, and so on down."""
    found: list[UUID] = []
    todo = [run_id]
    while todo:
        for task in (yield from task_runs_of(todo.pop())):
            found.append(task.id)
            for child in (yield from read_flow_runs(parent_task_run_ids=[task.id], limit=None)):
                if child.id not in found:
                    found.append(child.id)
                    todo.append(child.id)
    return found


def export_records(context: Context, run_id: UUID | str) -> Script[list[RecordedEvent]]:
    """A run's events with those of every run above it (what its decisions read) and
    below it (its task runs and subflows), in position order: a selection that verifies
    on its own."""
    target = run_id_of(run_id)
    streams = yield from related_streams(context, target)
    view = yield from context.load(target, fresh=True)
    if view.kind is RunKind.FLOW:
        streams += [stream for stream in (yield from descendant_streams(target)) if stream not in streams]
    records: list[RecordedEvent] = []
    for stream in streams:
        records += yield from context.records_of(stream)
    records.sort(key=lambda record: record.position)
    return records


def log_id(context: Context) -> Script[str | None]:
    rows: list[Row] = yield Fetch(context.sql.log_id)
    return str(rows[0][0]) if rows else None


def verify_script(
    context: Context, run_id: UUID | str | None, *, anchor: tuple[int, bytes] | None = None
) -> Script[AuditReport]:
    """Verify the whole log, or one run with the runs related to it."""
    if run_id is not None:
        streams = yield from related_streams(context, run_id_of(run_id))
        records: list[RecordedEvent] = []
        for stream in streams:
            records += yield from context.records_of(stream)
        records.sort(key=lambda record: record.position)
        return verify(records, contiguous=False)
    auditor = Auditor(anchor=anchor)
    position = 1
    while True:
        rows: list[Row] = yield Fetch(context.sql.read_batch, (position, _BATCH))
        for row in rows:
            auditor.check(record_of(row))
        if len(rows) < _BATCH:
            return auditor.finish()
        position = rows[-1][0] + 1


def prepare_catch_up(projection: Projection, dialect: Dialect) -> Script[object]:
    """Create a catch-up projection's tables if they do not exist."""

    def body() -> Script[None]:
        for statement in projection.schema(dialect):
            yield Execute(statement)

    return transaction(body())
