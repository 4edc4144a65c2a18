"""Scripts for re-checking the log through the orchestrator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import msgspec

from flowtrail.core.audit import Auditor, AuditReport, Problem
from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Fetch, Row, Script
from flowtrail.core.errors import (
    CodecError,
    CorruptLogError,
    InvalidInputError,
    RunNotFoundError,
    ViewsOutOfDateError,
)
from flowtrail.core.events import FlowRunCreated, RunKind, TaskRunCreated
from flowtrail.core.fold import RunView
from flowtrail.core.projection import Dialect, Projection
from flowtrail.engine.checks import run_id_of, shown
from flowtrail.engine.operations import Context
from flowtrail.projections.catchup import prepare
from flowtrail.projections.queries import read_flow_runs, task_runs_of
from flowtrail.projections.rebuild import transaction
from flowtrail.projections.runs import RunViews, stored_view_differences
from flowtrail.store.schema import projection_is_current
from flowtrail.store.scripts import MAX_POSITION, read_rows_script, record_of, stream_rows_script

__all__ = ["export_records", "log_id", "prepare_catch_up", "related_streams", "verify_script"]

_BATCH = 5_000


def related_streams(context: Context, run_id: UUID) -> Script[list[UUID]]:
    """The run and the runs its decisions read or write: a task's flow run, a subflow's
    parent task run, and so on up."""

    def above(run: UUID) -> Script[list[UUID] | None]:
        view = yield from context.load(run, fresh=True)
        return [
            *([view.flow_run_id] if view.kind is RunKind.TASK and view.flow_run_id is not None else []),
            *([view.parent_task_run_id] if view.parent_task_run_id is not None else []),
        ]

    return (yield from _upwards(run_id, above))


#: A run's creation: the first event of its stream.
_CREATION = (
    "SELECT position, stream_id, version, event_type, schema_version, recorded_at, data, hash "
    "FROM events WHERE stream_id = ? AND version = 1"
)


def related_in_log(run_id: UUID) -> Script[list[UUID]]:
    """`related_streams` as the runs' creations in the log give them, for a check of one
    run: neither a damaged view nor a damaged event may stop it, since naming damage is
    what it is for. A creation that cannot be read ends the walk there; the audit of the
    streams found names it."""

    def above(run: UUID) -> Script[list[UUID] | None]:
        try:
            rows: list[Row] = yield Fetch(_CREATION, (str(run),))
            creation = record_of(rows[0]).decode() if rows else None
        except (CodecError, CorruptLogError):
            return []
        if not rows:
            return None
        if isinstance(creation, TaskRunCreated) and creation.flow_run_id is not None:
            return [creation.flow_run_id]
        if isinstance(creation, FlowRunCreated) and creation.parent_task_run_id is not None:
            return [creation.parent_task_run_id]
        return []

    return (yield from _upwards(run_id, above))


def _upwards(run_id: UUID, above: Callable[[UUID], Script[list[UUID] | None]]) -> Script[list[UUID]]:
    """``run_id`` and the runs above it, as ``above`` gives each run's (None: no such
    run, passed over, but for the one asked for: RunNotFoundError)."""
    seen: list[UUID] = []
    todo = [run_id]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        found = yield from above(current)
        if found is None:
            if current == run_id:
                raise RunNotFoundError(run_id)
            continue
        seen.append(current)
        todo += found
    return seen


def descendant_streams(run_id: UUID) -> Script[list[UUID]]:
    """A flow run's task runs, the subflow runs they started, theirs, and so on down:
    from the run views or, where they are not whole, from the runs' creations."""
    try:
        return (yield from _descendants_in_views(run_id))
    except ViewsOutOfDateError:
        return (yield from _descendants_in_log(run_id))


#: Creations of runs, read a batch at a time from a position on (the primary key).
_CREATIONS = (
    "SELECT position, stream_id, version, event_type, schema_version, recorded_at, data, hash "
    "FROM events WHERE position > ? AND version = 1 AND event_type IN (?, ?) ORDER BY position LIMIT ?"
)
_CREATION_TAGS = (FlowRunCreated.__struct_config__.tag, TaskRunCreated.__struct_config__.tag)


def runs_below(parents: set[UUID]) -> Script[list[FlowRunCreated | TaskRunCreated]]:
    """The creations of the runs right below these (a flow run's task runs, a task run's
    subflow runs), read from the log a batch at a time: one scan of it, in bounded
    memory, for when the run views are not whole."""
    found: list[FlowRunCreated | TaskRunCreated] = []
    after = 0
    while True:
        rows: list[Row] = yield Fetch(_CREATIONS, (after, *_CREATION_TAGS, _BATCH))
        for row in rows:
            event = record_of(row).decode()
            if (isinstance(event, TaskRunCreated) and event.flow_run_id in parents) or (
                isinstance(event, FlowRunCreated) and event.parent_task_run_id in parents
            ):
                found.append(event)
        if len(rows) < _BATCH:
            return found
        after = int(rows[-1][0])


def subflow_in_log(context: Context, parent_task_run_id: UUID) -> Script[RunView | None]:
    """`find_subflow_run` answered from the log: the most recent of the task run's
    children, each folded from its events (expected start time, else creation time,
    then id, as the views' query sorts them)."""
    below = yield from runs_below({parent_task_run_id})
    children = [event.run_id for event in below if isinstance(event, FlowRunCreated)]
    best: RunView | None = None
    for child in children:
        view = yield from context.folded(child)
        if view is not None and (best is None or _recency(view) > _recency(best)):
            best = view
    return best


def _recency(view: RunView) -> tuple[datetime, str]:
    return (view.expected_start_time or view.created_at, str(view.id))


def _descendants_in_log(run_id: UUID) -> Script[list[UUID]]:
    """`descendant_streams` from the log: one scan for each level of task runs, and one
    for each level of subflow runs."""
    found: list[UUID] = []
    level = {run_id}
    while level:
        tasks = [event.run_id for event in (yield from runs_below(level))]
        children = [event.run_id for event in (yield from runs_below(set(tasks)))] if tasks else []
        found += tasks
        fresh = [child for child in children if child not in found]
        found += fresh
        level = set(fresh)
    return found


def _descendants_in_views(run_id: UUID) -> Script[list[UUID]]:
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
    below = yield from (descendant_streams(target) if view.kind is RunKind.FLOW else subflows_below(target))
    streams += [stream for stream in below if stream not in streams]
    return (yield from _records_of(context, streams))


def subflows_below(task_run_id: UUID) -> Script[list[UUID]]:
    """A task run's subflow runs, each with its task runs and subflows and so on down."""
    try:
        children = [
            run.id for run in (yield from read_flow_runs(parent_task_run_ids=[task_run_id], limit=None))
        ]
    except ViewsOutOfDateError:
        below = yield from runs_below({task_run_id})
        children = [event.run_id for event in below if isinstance(event, FlowRunCreated)]
    found: list[UUID] = []
    for child in children:
        for stream in [child, *(yield from descendant_streams(child))]:
            if stream not in found:
                found.append(stream)
    return found


def _records_of(
    context: Context, streams: list[UUID], as_read: Callable[[Row], RecordedEvent] = record_of
) -> Script[list[RecordedEvent]]:
    """The streams' events up to the log's end when the reading began, in position order.

    The streams are read one after another; an append between two reads (a subflow's
    state and its copy on the parent task run, say) would be half in the selection.
    Cutting at the position read first keeps whole appends only."""
    rows: list[Row] = yield Fetch(context.sql.last_position)
    head = int(rows[0][0] or 0)
    records: list[RecordedEvent] = []
    for stream in streams:
        rows = yield from stream_rows_script(context.sql, str(stream), 1)
        records += [record for record in map(as_read, rows) if record.position <= head]
    records.sort(key=lambda record: record.position)
    return records


def _as_found(row: Row) -> RecordedEvent:
    """The row as a recorded event, even where a column holds a value of the wrong type
    (a table edited by hand): the auditor names such a row as a problem of the log,
    as it does any other damage, where reading it for use is an error."""
    try:
        return record_of(row)
    except CorruptLogError:
        return RecordedEvent(*row)


def log_id(context: Context) -> Script[str | None]:
    rows: list[Row] = yield Fetch(context.sql.log_id)
    return str(rows[0][0]) if rows else None


def check_anchor(anchor: object) -> tuple[int, bytes] | None:
    """An anchor as verify takes it: (position, digest), the digest as bytes or as the
    hexadecimal text an `AuditReport` gives; anything else is an InvalidInputError
    (taken as given, it would read as a changed log)."""
    if anchor is None:
        return None
    position, digest = anchor if isinstance(anchor, tuple) and len(anchor) == 2 else (None, None)
    if isinstance(digest, str):
        try:
            digest = bytes.fromhex(digest)
        except ValueError:
            digest = None
    if (
        type(position) is not int
        or not 0 <= position < 2**63
        or not isinstance(digest, bytes)
        or len(digest) != 32
    ):
        raise InvalidInputError(
            "an anchor is a (position, digest) pair: a whole number and the 32-byte log digest "
            f"(bytes, or its 64 hexadecimal digits) of an earlier verify, not {shown(anchor)}"
        )
    return position, digest


def verify_script(
    context: Context, run_id: UUID | str | None, *, anchor: tuple[int, bytes | str] | None = None
) -> Script[AuditReport]:
    """Verify the whole log, or one run with the runs related to it; a check of the whole
    log also compares the stored views (while current) with the runs' folds."""
    anchor = check_anchor(anchor)
    if run_id is not None and anchor is not None:
        raise InvalidInputError("an anchor is checked against the whole log: verify without a run id")
    if run_id is not None:
        streams = yield from related_in_log(run_id_of(run_id))
        auditor = Auditor(contiguous=False)
        for record in (yield from _records_of(context, streams, _as_found)):
            auditor.check(record)
        ids = [str(stream) for stream in streams]
    else:
        auditor, ids = Auditor(anchor=anchor), None
        # From the lowest position held: a row added before position 1 is read too.
        ((lowest,),) = yield Fetch("SELECT min(position) FROM events")
        position = lowest if type(lowest) is int and lowest < 1 else 1
        while True:
            rows = yield from read_rows_script(context.sql, position, _BATCH)
            for row in rows:
                auditor.check(_as_found(row))
            if len(rows) < _BATCH or rows[-1][0] > MAX_POSITION:  # past it, nothing can be asked for
                break
            position = rows[-1][0] + 1
    return (yield from _with_view_problems(context, auditor, ids))


def _with_view_problems(context: Context, auditor: Auditor, ids: list[str] | None) -> Script[AuditReport]:
    """The audit's report, with the stored views (while current) that are not what
    their runs' events fold to: every run's, or those of ``ids``."""
    report = auditor.finish()
    views: list[Problem] = []
    if (yield from projection_is_current(_VIEWS)):
        for stream_id, what in (yield from stored_view_differences(auditor.views(), ids=ids)):
            if "no such run" in what and (
                yield from _appended_since(context, stream_id, report.last_position)
            ):
                continue  # created after the events were read
            views.append(
                Problem(
                    kind="view",
                    message=f"the stored view of run {stream_id} is not what its events fold to: {what} "
                    "(a rebuild writes the views again)",
                    stream_id=stream_id,
                )
            )
            if len(views) >= _MAX_VIEW_PROBLEMS:
                break
    if views and not (yield from projection_is_current(_VIEWS)):
        views = []  # a rebuild began meanwhile: the rows read were being replaced
    if not views:
        return report
    return msgspec.structs.replace(report, problems=(*report.problems, *views))


#: View problems reported at most (the first few say what a rebuild would fix).
_MAX_VIEW_PROBLEMS = 100
_VIEWS = RunViews()


def _appended_since(context: Context, stream_id: str, position: int) -> Script[bool]:
    rows: list[Row] = yield Fetch("SELECT min(position) FROM events WHERE stream_id = ?", (stream_id,))
    first = rows[0][0] if rows else None
    return isinstance(first, int) and first > position


def prepare_catch_up(projection: Projection, dialect: Dialect, *, afresh: bool = False) -> Script[object]:
    """Create a catch-up projection's tables if they do not exist (replacing those of
    another version of it, or with ``afresh`` its own), in one write transaction."""
    return transaction(prepare(projection, dialect, afresh=afresh))
