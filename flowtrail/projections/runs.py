"""The built-in run views: flow runs, task runs and their tags, one row per run.

Each row holds the columns the queries filter and sort on, and the whole `RunView`
(msgpack: it is a cache of the fold, not a record, so it need not be readable).

Applying is *version-guarded*: an event changes a view only if it is the view's next
version (or a creation, for a run not seen yet), so applying an event twice, or before
its predecessor, changes nothing. A rebuild relies on it (`flowtrail.projections.rebuild`):
when it reloads a row that a concurrent append moved ahead, it skips the events already
in it, and writes the row again whole (see `RunViews.apply` on what an append that
brings its view along leaves unwritten). Inline, the guard is a second line of
defence: an append racing a rebuild may land on a row the rebuild later overwrites,
but the rebuild replays that event itself before it ends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter

import msgspec

from flowtrail.core.chain import RecordedEvent, to_micros
from flowtrail.core.effects import ExecuteMany, Fetch, Row, Script
from flowtrail.core.errors import CorruptLogError
from flowtrail.core.events import Event, FlowRunCreated, RunKind, TaskRunCreated
from flowtrail.core.fold import RunView, evolve
from flowtrail.core.projection import Dialect

__all__ = [
    "RunViews",
    "decode_view",
    "encode_view",
    "fold_into",
    "load_views",
    "stored_view_differences",
    "view_in_row",
    "write_views",
]

# The run ids and other UUIDs in a view take 16 bytes each, not 36 characters: a ninth
# of an average row less to write in every append and rebuild, and a faster decode. A
# view written with text ids decodes all the same (msgspec reads a UUID from either).
_encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
_decoder = msgspec.msgpack.Decoder(RunView)

#: Bound variables per IN list.
_CHUNK = 500


def encode_view(view: RunView) -> bytes:
    return _encoder.encode(view)


def decode_view(data: bytes) -> RunView:
    return _decoder.decode(data)


def view_in_row(data: object, run_id: object, *, whose: str | None = None) -> RunView:
    """The view a row of the run views holds, as its query read it (bytes, or a
    driver's view of them); ``whose`` names the run where its id was not read.

    A row that holds anything else (a table edited by hand, a damaged page) is a
    `CorruptLogError` naming the run, not the decoder's own error: the views are a
    cache of the log's fold, so a rebuild writes them whole again.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            return _decoder.decode(data)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            what = f"does not decode ({exc})"
    else:
        what = f"holds {type(data).__name__} where the views keep bytes"
    raise CorruptLogError(
        f"the stored view of {whose or f'run {run_id}'} {what}: the run views are damaged; rebuild them from "
        "the log (rebuild(), `flowtrail rebuild`)"
    )


def _micros(moment: object) -> int | None:
    return None if moment is None else to_micros(moment)  # type: ignore[arg-type]


_FLOW_INSERT = (
    "INSERT INTO flow_runs (id, name, flow_name, state_type, state_name, parent_task_run_id, "
    "expected_start_time, next_scheduled_start_time, start_time, end_time, created_at, version, view) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
)
#: The columns an update of a flow-run row may change, each with how its value is read
#: off a view; those an index holds are named in an update only where they changed.
_FLOW_SET: tuple[tuple[str, Callable[[RunView], object] | None], ...] = (
    ("name", attrgetter("name")),
    ("state_type", lambda view: None if view.state is None else view.state.type),
    ("state_name", lambda view: None if view.state is None else view.state.name),
    ("expected_start_time", attrgetter("expected_start_time")),
    ("next_scheduled_start_time", attrgetter("next_scheduled_start_time")),
    ("start_time", attrgetter("start_time")),
    ("end_time", attrgetter("end_time")),
    ("version", None),
    ("view", None),
)
_INDEXED = tuple((column, read) for column, read in _FLOW_SET if read is not None)
_EVERY_COLUMN = (True,) * len(_INDEXED)


@functools.cache
def _flow_upsert(changed: tuple[bool, ...]) -> str:
    """The upsert of a flow-run row, naming in its update the indexed columns flagged
    ``changed`` (in `_INDEXED`'s order) and every other column.

    SQLite rewrites the entries of every index holding a column named in SET, changed or
    not: a state change names the state and one time, not the seven indexed columns, and
    keeps the other indexes' pages out of the commit."""
    flags = dict(zip((column for column, _ in _INDEXED), changed, strict=True))
    return _FLOW_INSERT + ", ".join(
        f"{column} = excluded.{column}" for column, _ in _FLOW_SET if flags.get(column, True)
    )


def _changes(view: RunView, stored: RunView | None) -> tuple[bool, ...]:
    """Which of the indexed columns of a flow run's row differ between ``view`` and the
    view its row holds now (every one, where that is not known)."""
    if stored is None:
        return _EVERY_COLUMN
    return tuple([read(view) != read(stored) for _, read in _INDEXED])


_TASK_UPSERT = (
    "INSERT INTO task_runs (id, flow_run_id, task_key, dynamic_key, name, state_type, state_name, "
    "expected_start_time, created_at, version, view) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, state_type = excluded.state_type, "
    "state_name = excluded.state_name, expected_start_time = excluded.expected_start_time, "
    "version = excluded.version, view = excluded.view"
)
_TAG_INSERT = "INSERT INTO run_tags (tag, run_id) VALUES (?, ?) ON CONFLICT DO NOTHING"


def _flow_row(run_id: str, view: RunView, data: bytes) -> tuple[object, ...]:
    state = view.state
    return (
        run_id,
        view.name,
        view.flow_name,
        None if state is None else state.type.value,
        None if state is None else state.name,
        None if view.parent_task_run_id is None else str(view.parent_task_run_id),
        _micros(view.expected_start_time),
        _micros(view.next_scheduled_start_time),
        _micros(view.start_time),
        _micros(view.end_time),
        to_micros(view.created_at),
        view.version,
        data,
    )


def _task_row(run_id: str, view: RunView, data: bytes) -> tuple[object, ...]:
    state = view.state
    return (
        run_id,
        None if view.flow_run_id is None else str(view.flow_run_id),
        view.task_key,
        view.dynamic_key,
        view.name,
        None if state is None else state.type.value,
        None if state is None else state.name,
        _micros(view.expected_start_time),
        to_micros(view.created_at),
        view.version,
        data,
    )


def load_views(ids: Sequence[str]) -> Script[dict[str, RunView]]:
    """The stored views of these runs (flow or task), by id."""
    found: dict[str, RunView] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows: list[Row] = yield Fetch(
            f"SELECT id, view FROM flow_runs WHERE id IN ({marks}) "
            f"UNION ALL SELECT id, view FROM task_runs WHERE id IN ({marks})",
            [*chunk, *chunk],
        )
        for run_id, data in rows:
            found[run_id] = view_in_row(data, run_id)
    return found


def fold_into(
    views: dict[str, RunView], records: Sequence[RecordedEvent], events: Sequence[Event]
) -> tuple[list[str], list[tuple[str, RunView]]]:
    """Apply each event whose turn it is; returns the runs changed and the flow runs
    created (id, view as created)."""
    changed: dict[str, None] = {}
    created: list[tuple[str, RunView]] = []
    for record, event in zip(records, events, strict=True):
        view = views.get(record.stream_id)
        if view is None:
            if not isinstance(event, FlowRunCreated | TaskRunCreated):
                continue  # its run's earlier events have not been applied yet
        elif record.version != view.version + 1:
            continue  # already applied, or out of turn
        view = evolve(view, event)
        views[record.stream_id] = view
        changed[record.stream_id] = None
        if isinstance(event, FlowRunCreated):
            created.append((record.stream_id, view))
    return list(changed), created


def write_views(
    views: Iterable[tuple[str, RunView]],
    created: Iterable[tuple[str, RunView]] = (),
    stored: Mapping[str, RunView] | None = None,
) -> Script[None]:
    """Upsert the rows of these views (and the tags of newly created flow runs), each
    given with its run's id as the log spells it (the stream id: no UUID formatting).

    ``stored`` holds, by run id, views known to be what their runs' rows hold now: those
    rows are updated without naming the indexed columns whose values stay (see
    `_flow_upsert`). Every other row is written whole.
    """
    flows: dict[tuple[bool, ...], list[tuple[object, ...]]] = {}
    tasks: list[tuple[object, ...]] = []
    before = stored or {}
    for run_id, view in views:
        data = encode_view(view)
        if view.kind is RunKind.FLOW:
            changed = _changes(view, before.get(run_id))
            flows.setdefault(changed, []).append(_flow_row(run_id, view, data))
        else:
            tasks.append(_task_row(run_id, view, data))
    for changed, rows in flows.items():
        yield ExecuteMany(_flow_upsert(changed), rows)
    if tasks:
        yield ExecuteMany(_TASK_UPSERT, tasks)
    tags = [(tag, run_id) for run_id, view in created for tag in view.tags]
    if tags:
        yield ExecuteMany(_TAG_INSERT, tags)


_FLOW_COLUMNS = (
    "id, name, flow_name, state_type, state_name, parent_task_run_id, expected_start_time, "
    "next_scheduled_start_time, start_time, end_time, created_at, version, view"
)
_TASK_COLUMNS = "id, flow_run_id, task_key, dynamic_key, name, state_type, state_name, expected_start_time, created_at, version, view"
_FLOW_FIELDS = _FLOW_COLUMNS.split(", ")
_TASK_FIELDS = _TASK_COLUMNS.split(", ")
#: Rows read a page at a time.
_PAGE = 2_000


def stored_view_differences(
    folded: Mapping[str, RunView], *, ids: Sequence[str] | None = None
) -> Script[list[tuple[str, str]]]:
    """How the stored views differ from ``folded``, each run's view as its events fold
    it: (run id, what differs), runs in id order; every run's, or only those of ``ids``.
    Compares every column of each row, the view in it and the flow runs' tags. A row at
    a later version than its fold is a run appended to since the events were read, and
    is passed over if the log now holds that many events of the run."""
    differences: list[tuple[str, str]] = []
    seen: set[str] = set()
    ahead: list[tuple[str, int]] = []
    for table, columns, fields, row_of in (
        ("flow_runs", _FLOW_COLUMNS, _FLOW_FIELDS, _flow_row),
        ("task_runs", _TASK_COLUMNS, _TASK_FIELDS, _task_row),
    ):
        after = ""
        while True:
            if ids is None:
                rows: list[Row] = yield Fetch(
                    f"SELECT {columns} FROM {table} WHERE id > ? ORDER BY id LIMIT ?", (after, _PAGE)
                )
            else:  # a few runs (one run's check): all at once
                marks = ", ".join("?" * len(ids))
                rows = yield Fetch(f"SELECT {columns} FROM {table} WHERE id IN ({marks}) ORDER BY id", ids)
            for row in rows:
                run_id = str(row[0])
                seen.add(run_id)
                view = folded.get(run_id)
                if view is None:
                    differences.append((run_id, f"{table} holds a row for it, but the log has no such run"))
                    continue
                stored_version = row[-2]
                if isinstance(stored_version, int) and stored_version > view.version:
                    ahead.append((run_id, stored_version))
                    continue
                what = _row_difference(fields, row, row_of(run_id, view, b""), view)
                if what is not None:
                    differences.append((run_id, what))
            if ids is not None or len(rows) < _PAGE:
                break
            after = str(rows[-1][0])
    for run_id, stored_version in ahead:
        ((logged,),) = yield Fetch("SELECT max(version) FROM events WHERE stream_id = ?", (run_id,))
        if not isinstance(logged, int):  # none, or a damaged row's (the audit names it)
            logged = 0
        if stored_version > logged:
            differences.append(
                (
                    run_id,
                    f"its view row is at version {stored_version}, but the log holds {logged} of its events",
                )
            )
    differences += [
        (run_id, "the log holds it, but no view row does") for run_id in sorted(set(folded) - seen)
    ]
    if ids is None:
        tags: list[Row] = yield Fetch("SELECT tag, run_id FROM run_tags")
    else:
        tags = yield Fetch(
            f"SELECT tag, run_id FROM run_tags WHERE run_id IN ({', '.join('?' * len(ids))})", ids
        )
    stored_tags = {(str(tag), str(run_id)) for tag, run_id in tags}
    folded_tags = {
        (tag, run_id) for run_id, view in folded.items() if view.kind is RunKind.FLOW for tag in view.tags
    }
    for tag, run_id in sorted(stored_tags - folded_tags):
        if run_id in folded:
            differences.append((run_id, f"run_tags gives it the tag {tag!r}, which its events do not"))
        else:
            differences.append((run_id, f"run_tags gives it the tag {tag!r}, but the log has no such run"))
    for tag, run_id in sorted(folded_tags - stored_tags):
        differences.append((run_id, f"its events give it the tag {tag!r}, which run_tags lacks"))
    return differences


def _row_difference(
    fields: Sequence[str], row: Row, expected: tuple[object, ...], view: RunView
) -> str | None:
    """How a stored row differs from the row of ``view`` (``expected``, its view blob
    left out), or None: the first column, else the first field of the view in it."""
    for name, have, want in zip(fields[:-1], row[:-1], expected[:-1], strict=True):
        if have != want:
            return f"its row's {name} is {have!r}, where its events give {want!r}"
    data = bytes(row[-1])
    if data == encode_view(view):
        return None  # as written (a view from before 16-byte ids is decoded below)
    try:
        stored = decode_view(data)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError):
        return "its row's view does not decode"
    if stored == view:
        return None
    field = next(
        (f.name for f in msgspec.structs.fields(RunView) if getattr(stored, f.name) != getattr(view, f.name)),
        "view",
    )
    return f"its stored view's {field} is not what its events give"


class RunViews:
    """The flow-run and task-run views, kept inline with the log."""

    name = "runs"
    version = 1
    tables = ("flow_runs", "task_runs", "run_tags")

    def schema(self, dialect: Dialect) -> Sequence[str]:
        # flow_runs_by_state and flow_runs_by_flow ordered a state's or a flow's runs by
        # expected start time, and a page of them in the default order (newest first)
        # sorted them all: their successors order them by id.
        return [
            *self.table_schema(dialect),
            "DROP INDEX IF EXISTS flow_runs_by_state",
            "DROP INDEX IF EXISTS flow_runs_by_flow",
            *self.index_schema(dialect),
        ]

    def table_schema(self, dialect: Dialect) -> Sequence[str]:
        blob = "BLOB" if dialect == "sqlite" else "BYTEA"
        big = "INTEGER" if dialect == "sqlite" else "BIGINT"
        return [
            f"""CREATE TABLE IF NOT EXISTS flow_runs (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, flow_name TEXT NOT NULL,
                state_type TEXT, state_name TEXT, parent_task_run_id TEXT,
                expected_start_time {big}, next_scheduled_start_time {big},
                start_time {big}, end_time {big}, created_at {big} NOT NULL,
                version {big} NOT NULL, view {blob} NOT NULL)""",
            f"""CREATE TABLE IF NOT EXISTS task_runs (
                id TEXT PRIMARY KEY, flow_run_id TEXT, task_key TEXT NOT NULL, dynamic_key TEXT NOT NULL,
                name TEXT NOT NULL, state_type TEXT, state_name TEXT, expected_start_time {big},
                created_at {big} NOT NULL, version {big} NOT NULL, view {blob} NOT NULL)""",
            "CREATE TABLE IF NOT EXISTS run_tags (tag TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (tag, run_id))"
            + (" WITHOUT ROWID" if dialect == "sqlite" else ""),
        ]

    def index_schema(self, dialect: Dialect) -> Sequence[str]:
        """The indexes the queries use; a rebuild creates them after loading the rows.

        In SQLite each sort of `read_flow_runs` reads its first page off an index, as
        does a state, state name or flow filter in the default order (newest first): a
        page of 200 among a million runs is read in about a millisecond, where sorting
        them took seconds (and finding a rare state name, a scan of every run). SQLite
        reads an index either way and puts NULLs where asked, and rewrites an index only
        where an update names its columns: one on the name or the next scheduled start,
        which few updates change, costs little.

        PostgreSQL needs an index in the order asked for, NULLs included, and an update
        that changes the state adds an entry to every index of the table: each costs
        about 3% of the proposals 64 concurrent runs make. It has those of the filters,
        and of the sorts an operator lists runs by most, latest started or ended first
        (and the expected start, soonest first); the others (by name, earliest started,
        latest expected, next scheduled) sort the runs matched, 0.1-0.2 s for 300,000.
        """
        start = "coalesce(start_time, expected_start_time)"
        shared = [
            "CREATE INDEX IF NOT EXISTS flow_runs_by_state_and_id ON flow_runs (state_type, id)",
            "CREATE INDEX IF NOT EXISTS flow_runs_by_state_name ON flow_runs (state_name, id)",
            "CREATE INDEX IF NOT EXISTS flow_runs_by_flow_and_id ON flow_runs (flow_name, id)",
            "CREATE INDEX IF NOT EXISTS flow_runs_by_expected_start ON flow_runs (expected_start_time)",
            "CREATE INDEX IF NOT EXISTS flow_runs_by_parent ON flow_runs (parent_task_run_id, expected_start_time) "
            "WHERE parent_task_run_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS task_runs_by_flow_run ON task_runs (flow_run_id)",
        ]
        if dialect == "sqlite":
            return [
                *shared,
                f"CREATE INDEX IF NOT EXISTS flow_runs_by_start ON flow_runs ({start}, id)",
                "CREATE INDEX IF NOT EXISTS flow_runs_by_end ON flow_runs (end_time, id)",
                "CREATE INDEX IF NOT EXISTS flow_runs_by_name ON flow_runs (name, id)",
                "CREATE INDEX IF NOT EXISTS flow_runs_by_next_start ON flow_runs (next_scheduled_start_time, id)",
            ]
        return [
            *shared,
            f"CREATE INDEX IF NOT EXISTS flow_runs_by_start_desc ON flow_runs ({start} DESC NULLS LAST, id DESC)",
            "CREATE INDEX IF NOT EXISTS flow_runs_by_end ON flow_runs (end_time DESC NULLS LAST, id DESC)",
        ]

    def apply(
        self,
        records: Sequence[RecordedEvent],
        events: Sequence[Event],
        known: Mapping[str, object] | None = None,
    ) -> Script[None]:
        """Fold the records into the stored views, in the caller's transaction.

        A view in ``known`` stands in for the stored row when its version is the run's
        version before these records: the appender vouches that it is the run's view at
        that version (the orchestrator hands the committed view it decided on). One at
        any other version is ignored and the row is read.
        """
        first: dict[str, int] = {}
        creations: set[str] = set()
        for record, event in zip(records, events, strict=True):
            first.setdefault(record.stream_id, record.version)
            if isinstance(event, FlowRunCreated | TaskRunCreated):
                creations.add(record.stream_id)
        views: dict[str, RunView] = {
            stream_id: hint
            for stream_id, hint in (known or {}).items()
            if isinstance(hint, RunView) and first.get(stream_id) == hint.version + 1
        }
        wanted = [stream_id for stream_id in first if stream_id not in creations and stream_id not in views]
        if wanted:
            views.update((yield from load_views(wanted)))
        # What the rows of these runs hold now: the columns a fold leaves as they are
        # need not be rewritten, nor their indexes.
        stored = dict(views)
        changed, created = fold_into(views, records, events)
        yield from write_views(((run_id, views[run_id]) for run_id in changed), created, stored)
