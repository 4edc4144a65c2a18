"""A page of flow runs is read off an index, in each sort and under a state type, state
name or flow filter in the default order, and the rows updated to serve those indexes
stay whole.

Among a million runs, a page that sorts every matching run takes seconds; one read off
an index in the order asked for takes about a millisecond (`benchmarks/bench_orchestrator.py`
measures both). The plans are asked of the database itself: SQLite plans the same
way whatever the number of rows (it keeps no statistics here), and PostgreSQL is told
to avoid sorting wherever an index can give the order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flowtrail import SyncOrchestrator
from flowtrail.core import states as pure
from flowtrail.core.effects import Fetch
from flowtrail.projections.queries import FlowRunSort, read_flow_runs
from flowtrail.store.postgres import _placeholders
from flowtrail.testing import T0
from tests.conftest import Databases, open_databases
from tests.engine.conftest import Clock

#: The filters whose first page in the default order (newest first) an index gives. A
#: parent task run's subflows are few, and are sorted; tags are not indexed in that order.
INDEXED_FILTERS: list[dict[str, Any]] = [
    {"state_types": ["FAILED"]},
    {"state_names": ["TimedOut"]},
    {"flow_names": ["etl"]},
]


@pytest.fixture
def sqlite_databases(tmp_path: Path) -> Databases:
    """Logs in SQLite alone."""
    return open_databases("sqlite", tmp_path)


def query_of(databases: Databases, matched: int, **arguments: Any) -> tuple[str, list[object]]:
    """The statement `read_flow_runs` runs for a page with these arguments, and its
    parameters, where a probe of how many runs its filters match finds ``matched``."""
    dialect = "sqlite" if databases.backend == "sqlite" else "postgresql"
    script = read_flow_runs(dialect=dialect, **arguments)
    effect = next(script)
    while isinstance(effect, Fetch) and effect.sql.startswith("SELECT count(*)"):
        effect = script.send([(min(matched, effect.params[-1]),)])
    assert isinstance(effect, Fetch)
    return effect.sql, list(effect.params)


def a_log(databases: Databases) -> str:
    """The URL of a log holding one run, whose tables a plan is asked of."""
    url = databases.url("log")
    with SyncOrchestrator.open(url) as orch:
        orch.create_flow_run("etl", state=pure.Pending())
    return url


def plan_of(databases: Databases, matched: int = 1, **arguments: Any) -> list[str]:
    """The steps of SQLite's plan for a page."""
    sql, params = query_of(databases, matched, **arguments)
    url = a_log(databases)
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        return [str(row[3]) for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def full_sorts(databases: Databases, matched: int = 1, **arguments: Any) -> list[str]:
    """The steps of the query's plan that sort every row matched (none when an index
    gives the order; sorting only the runs that tie on it is not one)."""
    if databases.backend == "sqlite":
        steps = plan_of(databases, matched, **arguments)
        return [step for step in steps if "TEMP B-TREE FOR ORDER BY" in step]
    sql, params = query_of(databases, matched, **arguments)
    url = a_log(databases)
    import psycopg

    from tests.conftest import POSTGRES_DSN

    assert POSTGRES_DSN is not None
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        connection.execute("SET enable_sort = off")
        ((plan,),) = connection.execute(f"EXPLAIN (FORMAT JSON) {_placeholders(sql)}", params).fetchall()
    text = plan if isinstance(plan, str) else json.dumps(plan)
    return [node for node in _node_types(json.loads(text)) if node == "Sort"]


def _node_types(plan: object) -> Iterator[str]:
    if isinstance(plan, dict):
        if "Node Type" in plan:
            yield str(plan["Node Type"])
        for value in plan.values():
            yield from _node_types(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from _node_types(value)


#: The sorts PostgreSQL reads off an index: an index there costs every state change.
POSTGRES_INDEXED_SORTS = [
    FlowRunSort.ID_DESC,
    FlowRunSort.START_TIME_DESC,
    FlowRunSort.END_TIME_DESC,
    FlowRunSort.EXPECTED_START_TIME_ASC,
]


@pytest.fixture
def postgres_databases(tmp_path: Path) -> Iterator[Databases]:
    opened = open_databases("postgresql", tmp_path)
    yield opened
    opened.cleanup()


@pytest.mark.parametrize("sort", list(FlowRunSort))
def test_each_sort_reads_its_first_page_off_an_index_in_sqlite(
    sqlite_databases: Databases, sort: FlowRunSort
) -> None:
    assert full_sorts(sqlite_databases, sort=sort, limit=200) == []


@pytest.mark.postgres
@pytest.mark.parametrize("sort", POSTGRES_INDEXED_SORTS)
def test_newest_latest_started_latest_ended_and_soonest_expected_first_read_off_an_index_in_postgresql(
    postgres_databases: Databases, sort: FlowRunSort
) -> None:
    assert full_sorts(postgres_databases, sort=sort, limit=200) == []


@pytest.mark.parametrize("filters", INDEXED_FILTERS, ids=lambda filters: next(iter(filters)))
def test_a_state_type_state_name_or_flow_filter_reads_its_first_page_in_the_default_order_off_an_index(
    databases: Databases, filters: dict[str, Any]
) -> None:
    assert full_sorts(databases, limit=200, **filters) == []


def test_a_run_taken_through_every_indexed_column_keeps_its_row_as_its_events_give(
    databases: Databases,
) -> None:
    """An update names only the indexed columns its fold changed: each step here
    changes a different one (the state's type or name, the expected and next start
    times, the start and end times, the name), and the stored row must still hold every
    one of them."""
    clock = Clock()
    with SyncOrchestrator.open(databases.url("log"), clock=clock) as orch:
        run = orch.create_flow_run("etl", name="first")
        steps = [
            lambda: orch.propose_state(run.id, pure.Scheduled(scheduled_time=T0 + timedelta(minutes=5))),
            lambda: orch.propose_state(run.id, pure.Scheduled(scheduled_time=T0 + timedelta(minutes=9))),
            lambda: orch.propose_state(run.id, pure.Pending()),
            lambda: orch.set_flow_run_name(run.id, "second"),
            lambda: orch.propose_state(run.id, pure.Running()),
            lambda: orch.propose_state(run.id, pure.Running(name="Retrying")),
            lambda: orch.propose_state(run.id, pure.Completed()),
        ]
        for step in steps:
            clock.advance(1)
            step()
            assert orch.verify(run.id).ok
        assert [view.id for view in orch.read_flow_runs(sort=FlowRunSort.END_TIME_DESC, limit=1)] == [run.id]


#: Filters that many runs may pass, each alone.
COMMON_FILTERS: list[dict[str, Any]] = [
    {"state_types": ["COMPLETED"]},
    {"state_names": ["Completed"]},
    {"flow_names": ["etl"]},
    {"tags": ["nightly"]},
    {"state_types": ["COMPLETED", "FAILED"]},
]


@pytest.mark.parametrize("sort", list(FlowRunSort))
@pytest.mark.parametrize("filters", COMMON_FILTERS, ids=lambda filters: "-".join(map(str, filters.values())))
def test_a_filter_most_runs_pass_is_read_in_the_sorts_order_in_sqlite(
    sqlite_databases: Databases, sort: FlowRunSort, filters: dict[str, Any]
) -> None:
    assert full_sorts(sqlite_databases, matched=10**6, sort=sort, limit=200, **filters) == []


@pytest.mark.parametrize("filters", COMMON_FILTERS, ids=lambda filters: "-".join(map(str, filters.values())))
def test_a_filter_few_runs_pass_is_read_off_its_own_index_in_sqlite(
    sqlite_databases: Databases, filters: dict[str, Any]
) -> None:
    steps = plan_of(sqlite_databases, matched=3, sort=FlowRunSort.START_TIME_DESC, limit=200, **filters)
    assert any(step.startswith("SEARCH") for step in steps), steps
    assert not any(step.startswith("SCAN flow_runs") for step in steps), steps


#: Tags alone, and with another filter, that many runs may pass.
TAG_FILTERS: list[dict[str, Any]] = [
    {"tags": ["nightly"]},
    {"tags": ["nightly", "hourly"]},
    {"tags": ["nightly"], "state_types": ["COMPLETED"]},
]


@pytest.mark.parametrize("sort", list(FlowRunSort))
@pytest.mark.parametrize("filters", TAG_FILTERS, ids=lambda filters: "-".join(map(str, filters.values())))
def test_a_tag_most_runs_carry_is_looked_up_run_by_run_rather_than_its_runs_listed_first_in_sqlite(
    sqlite_databases: Databases, sort: FlowRunSort, filters: dict[str, Any]
) -> None:
    """Listing every run that carries a tag took 38 ms for 1 run in 7 of 1M before the
    first row of the page was read, in every sort; a lookup of each run read takes
    microseconds, and a page stops after a few hundred."""
    steps = plan_of(sqlite_databases, matched=10**6, sort=sort, limit=200, **filters)
    assert not [step for step in steps if "LIST SUBQUERY" in step or "TEMP B-TREE FOR ORDER BY" in step], (
        steps
    )
    assert any("run_tags USING PRIMARY KEY (tag=? AND run_id=?)" in step for step in steps), steps


def probes_of(**arguments: Any) -> list[Fetch]:
    """The counts `read_flow_runs` asks for before it reads a page, each answered as
    many as it counts to (every run passes)."""
    script = read_flow_runs(**arguments)
    probes = []
    effect = next(script)
    while isinstance(effect, Fetch) and effect.sql.startswith("SELECT count(*)"):
        probes.append(effect)
        effect = script.send([(effect.params[-1],)])
    return probes


@pytest.mark.parametrize("tags", [["nightly"], ["nightly", "hourly"]])
@pytest.mark.parametrize("sort", [FlowRunSort.ID_DESC, FlowRunSort.NAME_ASC])
def test_tags_alone_are_counted_on_the_tags_table_without_listing_their_runs_through_flow_runs(
    sqlite_databases: Databases, tags: list[str], sort: FlowRunSort
) -> None:
    import sqlite3

    url = a_log(sqlite_databases)
    probes = probes_of(tags=tags, sort=sort, limit=200)
    assert probes
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        for probe in probes:
            steps = [
                str(row[3]) for row in connection.execute(f"EXPLAIN QUERY PLAN {probe.sql}", probe.params)
            ]
            assert not [step for step in steps if "flow_runs" in step or "LIST SUBQUERY" in step], steps


@pytest.mark.parametrize("tags", [["common", "rare"], ["rare", "common"]])
def test_runs_carrying_several_tags_are_listed_from_the_rarest_whatever_their_order(tags: list[str]) -> None:
    """Listed from a tag on every run, a rare combination went through all of them,
    twice (to count, then for the page): 90 ms among 150,000 runs, 0.1 ms the other way
    round."""
    script = read_flow_runs(tags=tags, limit=200)
    effect = next(script)
    while effect.sql.startswith("SELECT count(*)"):
        tag, cap = effect.params
        effect = script.send([(3 if tag == "rare" else cap,)])
    assert effect.params[:2] == ["rare", "common"]
    assert "run_id = tagged.run_id" in effect.sql  # the others looked up run by run


def test_a_page_is_the_same_read_in_the_sorts_order_or_off_a_filters_index(
    sqlite_databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two ways of reading a page under a filter differ in speed only: every sort,
    every filter, a page and an offset, read both ways, give the same runs."""
    from flowtrail.projections import queries

    clock = Clock()
    with SyncOrchestrator.open(sqlite_databases.url("log"), clock=clock) as orch:
        for index in range(24):
            clock.advance(index % 5)
            run = orch.create_flow_run(
                ("etl", "report")[index % 2],
                name=f"run-{index % 7}",
                tags=[("nightly",), ("hourly",), ("nightly", "hourly")][index % 3],
            )
            if index % 4:
                orch.propose_state(run.id, pure.Scheduled(scheduled_time=T0 + timedelta(minutes=index % 6)))
            if index % 4 > 1:
                orch.propose_state(run.id, pure.Pending())
                orch.propose_state(run.id, pure.Running())
            if index % 4 > 2:
                orch.propose_state(run.id, (pure.Completed(), pure.Failed())[index % 3 == 0])
        for filters in [*COMMON_FILTERS, *TAG_FILTERS, {"state_types": ["SCHEDULED"], "flow_names": ["etl"]}]:
            for sort in FlowRunSort:
                pages = []
                for dense in (1, 10**9):
                    monkeypatch.setattr(queries, "_DENSE", dense)
                    pages.append(
                        [
                            [
                                run.id
                                for run in orch.read_flow_runs(sort=sort, limit=5, offset=offset, **filters)
                            ]
                            for offset in (0, 3)
                        ]
                    )
                assert pages[0] == pages[1], (filters, sort)
                assert pages[0][0] or not orch.read_flow_runs(limit=None, **filters)
