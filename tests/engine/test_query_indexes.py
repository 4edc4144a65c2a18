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
from tests.conftest import BACKENDS, Databases, open_databases
from tests.engine.conftest import Clock

#: The filters whose first page in the default order (newest first) an index gives. A
#: parent task run's subflows are few, and are sorted; tags are not indexed in that order.
INDEXED_FILTERS: list[dict[str, Any]] = [
    {"state_types": ["FAILED"]},
    {"state_names": ["TimedOut"]},
    {"flow_names": ["etl"]},
]


@pytest.fixture(params=BACKENDS)
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    opened = open_databases(request.param, tmp_path)
    yield opened
    opened.cleanup()


def query_of(databases: Databases, **arguments: Any) -> tuple[str, list[object]]:
    """The statement `read_flow_runs` runs for these arguments, and its parameters."""
    dialect = "sqlite" if databases.backend == "sqlite" else "postgresql"
    effect = next(read_flow_runs(dialect=dialect, **arguments))
    assert isinstance(effect, Fetch)
    return effect.sql, list(effect.params)


def full_sorts(databases: Databases, **arguments: Any) -> list[str]:
    """The steps of the query's plan that sort every row matched (none when an index
    gives the order; sorting only the runs that tie on it is not one)."""
    sql, params = query_of(databases, **arguments)
    url = databases.url("log")
    with SyncOrchestrator.open(url) as orch:
        orch.create_flow_run("etl", state=pure.Pending())
    if databases.backend == "sqlite":
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            steps = [str(row[3]) for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        return [step for step in steps if "TEMP B-TREE FOR ORDER BY" in step]
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


@pytest.mark.parametrize("sort", list(FlowRunSort))
def test_each_sort_reads_its_first_page_off_an_index(databases: Databases, sort: FlowRunSort) -> None:
    assert full_sorts(databases, sort=sort, limit=200) == []


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
