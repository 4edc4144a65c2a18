"""Queries over the run views, as scripts of `Fetch` effects.

The semantics follow Prefect's API: filters are "any of" for state types, flow names
and parent task runs, "all of" for tags; sorts are Prefect's ``FlowRunSort`` values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from uuid import UUID

from flowtrail.core.effects import Fetch, Row, Script
from flowtrail.core.errors import InvalidIdError, InvalidInputError, ViewsOutOfDateError
from flowtrail.core.events import RunKind
from flowtrail.core.fold import RunView
from flowtrail.core.jsondata import check_json
from flowtrail.core.projection import Dialect
from flowtrail.core.states import StateType, parse_uuid
from flowtrail.core.text import shown
from flowtrail.projections.runs import RunViews, view_in_row

__all__ = [
    "FlowRunSort",
    "flow_run_view",
    "read_flow_runs",
    "stored_view",
    "subflow_run",
    "task_run_view",
    "task_runs_of",
]

#: The most rows the CLI shows at once (the API's ``limit`` has no such bound).
MAX_LIMIT = 10_000


class FlowRunSort(enum.StrEnum):
    """Prefect's FlowRunSort. NULLs sort last whichever the direction."""

    ID_DESC = "ID_DESC"
    START_TIME_ASC = "START_TIME_ASC"
    START_TIME_DESC = "START_TIME_DESC"
    EXPECTED_START_TIME_ASC = "EXPECTED_START_TIME_ASC"
    EXPECTED_START_TIME_DESC = "EXPECTED_START_TIME_DESC"
    NAME_ASC = "NAME_ASC"
    NAME_DESC = "NAME_DESC"
    NEXT_SCHEDULED_START_TIME_ASC = "NEXT_SCHEDULED_START_TIME_ASC"
    END_TIME_DESC = "END_TIME_DESC"


_ORDER = {
    FlowRunSort.ID_DESC: "id DESC",
    # A run not started yet sorts by when it is expected to start, as in Prefect.
    FlowRunSort.START_TIME_ASC: "coalesce(start_time, expected_start_time) ASC NULLS LAST, id ASC",
    FlowRunSort.START_TIME_DESC: "coalesce(start_time, expected_start_time) DESC NULLS LAST, id DESC",
    FlowRunSort.EXPECTED_START_TIME_ASC: "expected_start_time ASC NULLS LAST, id ASC",
    FlowRunSort.EXPECTED_START_TIME_DESC: "expected_start_time DESC NULLS LAST, id DESC",
    FlowRunSort.NAME_ASC: "name{bytewise} ASC, id ASC",
    FlowRunSort.NAME_DESC: "name{bytewise} DESC, id DESC",
    FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC: "next_scheduled_start_time ASC NULLS LAST, id ASC",
    FlowRunSort.END_TIME_DESC: "end_time DESC NULLS LAST, id DESC",
}


#: Names sort byte for byte, as SQLite sorts them (and as time travel, which folds into
#: SQLite, does), whatever the locale of a PostgreSQL database. (Run ids sort the same
#: under any locale: hex digits and dashes in the same places.)
_BYTEWISE = {"sqlite": "", "postgresql": ' COLLATE "C"'}


def _one(rows: list[Row], run_id: UUID) -> RunView | None:
    return view_in_row(rows[0][0], run_id) if rows else None


def flow_run_view(run_id: UUID) -> Script[RunView | None]:
    return _one((yield Fetch("SELECT view FROM flow_runs WHERE id = ?", (str(run_id),))), run_id)


def task_run_view(run_id: UUID) -> Script[RunView | None]:
    return _one((yield Fetch("SELECT view FROM task_runs WHERE id = ?", (str(run_id),))), run_id)


# A query over many runs reads the views' mark in the same statement as its rows, so
# that both are of one moment: while a rebuild (here or in another process) refills the
# tables, or after one that did not finish, they hold only some runs, and an answer
# missing runs (no subflow found, and a second one started) is worse than none.
_MARK = f"(SELECT value FROM flowtrail_meta WHERE key = 'projection:{RunViews.name}')"
#: Tries at a query that found no rows while rows came to match it straight after.
_TRIES = 10


def _current(mark: object) -> None:
    if mark != str(RunViews.version):
        raise ViewsOutOfDateError(
            "the run views of this log are not whole (a rebuild is under way or did not finish, or "
            "they are of an older format), and a query over many runs needs them: it works again "
            "once a rebuild completes (rebuild(), `flowtrail rebuild`, where the log can be written; "
            "a rebuild stopped by a damaged event leaves them so, and verify names the event). "
            "Meanwhile one run's reads fold its events, and as_of(position) (`flowtrail as-of "
            "POSITION runs`) gives every run's view folded from the log"
        )


def stored_view(run_id: UUID, kind: RunKind | None = None) -> Script[tuple[RunView | None, bool]]:
    """The run's stored view (a flow run's or a task run's, or either), and whether the
    views were whole when it was read (their mark, read in the same statement)."""
    key: tuple[str, ...] = (str(run_id),)
    if kind is RunKind.FLOW:
        sql, params = f"SELECT {_MARK}, (SELECT view FROM flow_runs WHERE id = ?)", key
    elif kind is RunKind.TASK:
        sql, params = f"SELECT {_MARK}, (SELECT view FROM task_runs WHERE id = ?)", key
    else:
        sql = (
            f"SELECT {_MARK}, coalesce((SELECT view FROM flow_runs WHERE id = ?), "
            "(SELECT view FROM task_runs WHERE id = ?))"
        )
        params = key * 2
    ((mark, data),) = yield Fetch(sql, params)
    return (None if data is None else view_in_row(data, run_id)), mark == str(RunViews.version)


def _over_views(source: str, tail: str, params: Sequence[object]) -> Script[list[RunView]]:
    """The views of ``SELECT id, view FROM <source> <tail>`` (``tail``: ORDER BY, LIMIT),
    with the mark read with them, or, where none came back, with whether any matches."""
    rows: list[Row] = []
    for _ in range(_TRIES):
        rows = yield Fetch(f"SELECT id, view, {_MARK} FROM {source} {tail}", params)
        if rows:
            _current(rows[0][2])
            break
        ((mark, any_row),) = yield Fetch(f"SELECT {_MARK}, EXISTS (SELECT 1 FROM {source} {tail})", params)
        _current(mark)
        if not any_row:
            break
    return [view_in_row(view, run_id) for run_id, view, _ in rows]


def subflow_run(parent_task_run_id: UUID) -> Script[RunView | None]:
    """The most recent flow run whose parent task run is this one.

    Prefect's ``load_subflow_run`` once sorted ascending (the earliest child) and later
    descending; a retried parent that created a fresh child must find that child, so
    the most recent (by expected start time, then by id) is the one returned. A child
    given no state yet has no expected start time: its creation time stands in for it.
    """
    ((mark, view),) = yield Fetch(
        f"SELECT {_MARK}, (SELECT view FROM flow_runs WHERE parent_task_run_id = ? "
        "ORDER BY coalesce(expected_start_time, created_at) DESC, id DESC LIMIT 1)",
        (str(parent_task_run_id),),
    )
    _current(mark)
    # The child's id is not read with it (a second subquery, on the hot path of every
    # subflow call): a damaged view is named by its parent task run.
    return (
        None
        if view is None
        else view_in_row(view, None, whose=f"the subflow run of task run {parent_task_run_id}")
    )


def task_runs_of(flow_run_id: UUID) -> Script[list[RunView]]:
    return (
        yield from _over_views(
            "task_runs WHERE flow_run_id = ?", "ORDER BY created_at, id", (str(flow_run_id),)
        )
    )


#: The most values one filter takes, and the largest offset (past it, no row is left).
MAX_FILTER_VALUES = 1_000
MAX_OFFSET = 2**62


def _values(name: str, given: Iterable[object] | None) -> list[object] | None:
    if given is None:
        return None
    if isinstance(given, str | bytes):
        raise InvalidInputError(f"{name} is a list of values, not a single string")
    if not isinstance(given, Iterable):
        raise InvalidInputError(f"{name} is a list of values, not {shown(given)}")
    values = list(given)
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidInputError(f"{name} holds at most {MAX_FILTER_VALUES} values, not {len(values)}")
    return values


def _texts(name: str, given: Iterable[object] | None) -> list[object] | None:
    """Strings to match; one holding NUL matches nothing in any dialect, and is refused."""
    values = _values(name, given)
    for value in values or ():
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInputError(f"{name} holds strings without NUL characters, not {shown(value)}")
        check_json(value, path=name)  # text no run can hold (a lone surrogate) is refused
    return values


def _run_ids(name: str, given: Iterable[object] | None) -> list[object] | None:
    """Run ids as the views spell them, from UUIDs or any string form of one."""
    values = _values(name, given)
    if values is None:
        return None
    spelled: list[object] = []
    for value in values:
        parsed = parse_uuid(value)
        if parsed is None:
            raise InvalidIdError(f"{name} holds {shown(value)}, which is not a UUID")
        spelled.append(str(parsed))
    return spelled


#: A filter that this many runs pass is read in the sort's order on SQLite (see
#: `_may_sort_every_match`).
_DENSE = 10_000


class _Condition(NamedTuple):
    """One filter of `read_flow_runs`: its SQL over a column (``{column}``), the values
    it binds, and whether a single value is read in the default order (newest first)
    off an index."""

    sql: str
    column: str
    params: list[object]
    in_id_order: bool
    #: Its SQL and values run by run, where ``sql`` would list every run passing it
    #: first (tags: a lookup of each run's tag on run_tags' key); None: ``sql`` itself.
    looked_up: tuple[str, list[object]] | None = None

    def spelled(self, *, indexed: bool = True) -> tuple[str, list[object]]:
        """Its SQL and values; with ``indexed=False``, tested run by run as the runs are
        read in another order: no index of flow_runs serves it (a unary +)."""
        if indexed:
            return self.sql.format(column=self.column), self.params
        if self.looked_up is not None:
            return self.looked_up
        return self.sql.format(column=f"+{self.column}"), self.params


def _any_of(column: str, values: list[object]) -> _Condition:
    """A column holding any of these values (none: no run)."""
    if not values:
        return _Condition("0 = 1", column, [], in_id_order=True)
    return _Condition(f"{{column}} IN ({', '.join('?' * len(values))})", column, values, len(values) == 1)


def _may_sort_every_match(conditions: Sequence[_Condition], sort: FlowRunSort) -> bool:
    """Whether SQLite, reading a page under these filters in this order, may read every
    run they match off a filter's index and sort them all.

    SQLite keeps no statistics here, so given a filter and a sort it reads the runs the
    filter's index gives and sorts them: a page of the runs most runs match (every
    Completed run, latest started first) sorted all of them, 2.3 s among 1M. A probe of
    at most `_DENSE` matches (`_few_match`) tells such a filter from a rare one, and a
    page under a common filter is read in the sort's order, its filters kept off every
    index: it stops after about ``limit * runs / _DENSE`` rows. A single state, state
    name or flow in the default order needs no probe: their indexes are in id order
    (and a parent task run starts few subflows). A tag does: SQLite lists every run
    carrying it before it reads the first (38 ms for 1 run in 7 of 1M).
    """
    if not conditions:
        return False
    return sort is not FlowRunSort.ID_DESC or not all(condition.in_id_order for condition in conditions)


#: A run's further tag, looked up on run_tags' key, the run taken from a list of another's.
_AND_TAGGED = " AND EXISTS (SELECT 1 FROM run_tags WHERE tag = ? AND run_id = tagged.run_id)"


def _tagged(tags: list[object], dialect: Dialect) -> _Condition:
    """Runs carrying every one of these tags: listed from the first tag's runs, or, on
    PostgreSQL, from one scan of all the tags asked for, counted per run (a run holds
    each tag once); run by run, each tag looked up on run_tags' key."""
    if len(tags) == 1 or dialect == "sqlite":
        listed = "SELECT tagged.run_id FROM run_tags AS tagged WHERE tagged.tag = ?"
        listed += _AND_TAGGED * (len(tags) - 1)
        params = tags
    else:
        listed = f"SELECT run_id FROM run_tags WHERE tag IN ({', '.join('?' * len(tags))}) "
        listed += "GROUP BY run_id HAVING count(*) = ?"
        params = [*tags, len(tags)]
    lookups = " AND ".join(
        ["EXISTS (SELECT 1 FROM run_tags WHERE tag = ? AND run_id = flow_runs.id)"] * len(tags)
    )
    return _Condition(f"{{column}} IN ({listed})", "id", params, False, (lookups, tags))


#: Runs carrying a tag, counted up to `_DENSE` on run_tags alone.
_CARRYING = "SELECT count(*) FROM (SELECT 1 FROM run_tags AS tagged WHERE tagged.tag = ? LIMIT ?)"


def _few_match(
    conditions: Sequence[_Condition], tags: Sequence[object], carrying: dict[object, int]
) -> Script[bool]:
    """Whether fewer than `_DENSE` runs pass every filter.

    Tags are counted on run_tags alone, each run's further tags looked up on its key:
    counted through flow_runs, every run carrying them is listed first (52 ms for a tag
    on 1 run in 7 of 1M, against 3 ms). Fewer than `_DENSE` runs carrying the first tag
    (the rarest, of several: ``carrying`` holds their counts) answer for every filter
    together; where the tags are the only filter, their count answers. Otherwise the
    runs passing every filter are counted."""
    if tags:
        if tags[0] in carrying:
            tagged = carrying[tags[0]]
        else:
            ((tagged,),) = yield Fetch(_CARRYING, [tags[0], _DENSE])
        if tagged < _DENSE:
            return True
        if len(conditions) == 1:
            if len(tags) > 1:
                ((tagged,),) = yield Fetch(
                    "SELECT count(*) FROM (SELECT 1 FROM run_tags AS tagged WHERE tagged.tag = ?"
                    f"{_AND_TAGGED * (len(tags) - 1)} LIMIT ?)",
                    [*tags, _DENSE],
                )
            return bool(tagged < _DENSE)
    spelled = [condition.spelled() for condition in conditions]
    ((matched,),) = yield Fetch(
        f"SELECT count(*) FROM (SELECT 1 FROM flow_runs WHERE {' AND '.join(sql for sql, _ in spelled)} LIMIT ?)",
        [*(param for _, params in spelled for param in params), _DENSE],
    )
    return bool(matched < _DENSE)


def read_flow_runs(
    *,
    state_types: Iterable[StateType | str] | None = None,
    state_names: Iterable[str] | None = None,
    flow_names: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    parent_task_run_ids: Iterable[UUID] | None = None,
    sort: FlowRunSort | str = FlowRunSort.ID_DESC,
    limit: int | None = 200,
    offset: int = 0,
    dialect: Dialect = "sqlite",
) -> Script[list[RunView]]:
    """Flow runs matching every filter given, sorted, a page at a time: at most
    ``limit`` of them (None: every one) after skipping ``offset``."""
    try:
        order = _ORDER[FlowRunSort(sort)].format(bytewise=_BYTEWISE[dialect])
    except ValueError:
        raise InvalidInputError(f"unknown sort {shown(sort)}; one of {', '.join(FlowRunSort)}") from None
    if limit is not None and (type(limit) is not int or not 0 <= limit <= MAX_OFFSET):
        raise InvalidInputError(f"limit is None or a whole number from 0 to {MAX_OFFSET}, not {shown(limit)}")
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInputError(f"offset is a whole number from 0 to {MAX_OFFSET}, not {shown(offset)}")
    conditions: list[_Condition] = []
    types = _values("state_types", state_types)
    if types is not None:
        try:
            types = [StateType(str(t)).value for t in types]
        except ValueError as exc:
            raise InvalidInputError(f"unknown state type in state_types: {exc}") from None
    for column, values in (
        ("state_type", types),
        ("state_name", _texts("state_names", state_names)),
        ("flow_name", _texts("flow_names", flow_names)),
        ("parent_task_run_id", _run_ids("parent_task_run_ids", parent_task_run_ids)),
    ):
        if values is not None:
            conditions.append(_any_of(column, values))
    wanted: list[object] = list(dict.fromkeys(_texts("tags", tags) or ()))
    carrying: dict[object, int] = {}
    if dialect == "sqlite" and len(wanted) > 1:
        # The rarest first: the runs carrying every tag are listed from its runs.
        for tag in wanted:
            ((carrying[tag],),) = yield Fetch(_CARRYING, [tag, _DENSE])
        wanted.sort(key=carrying.__getitem__)
    if wanted:
        conditions.append(_tagged(wanted, dialect))
    indexed = True
    if dialect == "sqlite" and limit is not None and _may_sort_every_match(conditions, FlowRunSort(sort)):
        indexed = yield from _few_match(conditions, wanted, carrying)
    spelled = [condition.spelled(indexed=indexed) for condition in conditions]
    source = "flow_runs"
    if spelled:
        source += " WHERE " + " AND ".join(sql for sql, _ in spelled)
    params = [param for _, values in spelled for param in values]
    params += [MAX_OFFSET if limit is None else limit, offset]
    return (yield from _over_views(source, f"ORDER BY {order} LIMIT ? OFFSET ?", params))
