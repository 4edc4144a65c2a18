"""A row of the run views that is not a view (a table edited by hand, a damaged page):
every read of it is a CorruptLogError naming the run, on every backend, and the
command line says so in one sentence."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from flowtrail import CorruptLogError, states
from tests.conftest import POSTGRES_DSN
from tests.engine.conftest import Orch, parent_with_subflow
from tests.engine.test_cli import assert_user_error, flowtrail


def _at_the_database(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` (``{table}`` for a table's name, ``?`` for a value) on the log at
    ``url``, as someone at the database could."""
    if url.startswith("sqlite"):
        with sqlite3.connect(urlsplit(url).path[1:]) as raw:
            raw.execute(sql.replace("{schema}.", ""), params)
        return
    import psycopg

    schema = parse_qs(urlsplit(url).query)["schema"][0]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as raw:  # type: ignore[arg-type]
        raw.execute(sql.replace("{schema}", f'"{schema}"').replace("?", "%s"), params)  # type: ignore[arg-type]


def _damage(url: str, table: str, run_id: object, view: object = b"\x00") -> None:
    """Overwrite one run's stored view with ``view``."""
    _at_the_database(url, f"UPDATE {{schema}}.{table} SET view = ? WHERE id = ?", (view, str(run_id)))


#: Each read, given (parent, its task run, the subflow), with the table whose row it reads
#: and the run that row is of.
READS: dict[str, tuple[str, Callable[[Orch, Any, Any, Any], object], int]] = {
    "read_flow_runs": ("flow_runs", lambda orch, parent, task, child: orch.read_flow_runs(), 2),
    "read_flow_run": ("flow_runs", lambda orch, parent, task, child: orch.read_flow_run(child.id), 2),
    "find_subflow_run": ("flow_runs", lambda orch, parent, task, child: orch.find_subflow_run(task.id), 2),
    "propose_state": (
        "flow_runs",
        lambda orch, parent, task, child: orch.propose_state(child.id, states.Running(), force=True),
        2,
    ),
    "read_task_run": ("task_runs", lambda orch, parent, task, child: orch.read_task_run(task.id), 1),
    "read_task_runs": ("task_runs", lambda orch, parent, task, child: orch.read_task_runs(parent.id), 1),
}


@pytest.mark.parametrize("read", READS)
def test_a_damaged_view_row_is_a_corrupt_log_error_naming_its_run(orch: Orch, read: str) -> None:
    table, call, which = READS[read]
    runs = parent_with_subflow(orch)
    damaged = runs[which]
    _damage(orch.url, table, damaged.id)
    orch.reopen()  # nothing cached: the row is read
    # The subflow lookup reads no child id with the view: it names the parent task run.
    named = f"the subflow run of task run {runs[1].id}" if read == "find_subflow_run" else f"run {damaged.id}"
    with pytest.raises(CorruptLogError, match=f"the stored view of {named} does not decode"):
        call(orch, *runs)


def test_a_view_row_holding_text_is_a_corrupt_log_error_naming_its_run(tmp_path: Path) -> None:
    """SQLite keeps whatever type a row is given; the view column of one edited by hand
    may hold text, which is no view either."""
    orch = Orch("sync", f"sqlite:///{tmp_path}/text.db")
    run = orch.create_flow_run("etl", state=states.Pending())
    _damage(orch.url, "flow_runs", run.id, "not a view")
    orch.reopen()
    with pytest.raises(CorruptLogError, match=f"the stored view of run {run.id} holds str"):
        orch.read_flow_runs()
    orch.close()


@pytest.mark.parametrize("command", [["runs"], ["history", "RUN"], ["export", "RUN"]])
def test_the_cli_names_a_damaged_view_row_in_one_sentence(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "damaged.db"
    orch = Orch("sync", f"sqlite:///{path}")
    run = orch.create_flow_run("etl", state=states.Pending())
    orch.close()
    _damage(f"sqlite:///{path}", "flow_runs", run.id)
    ran = flowtrail(*[str(run.id) if word == "RUN" else word for word in command], database=path)
    assert_user_error(ran, str(run.id), "flowtrail rebuild")


def test_a_table_of_the_log_dropped_by_hand_is_a_corrupt_log_error_on_every_backend(orch: Orch) -> None:
    """PostgreSQL's missing table was a CorruptLogError, SQLite's a plain StoreError."""
    orch.create_flow_run("etl", tags=["nightly"])
    _at_the_database(orch.url, "DROP TABLE {schema}.run_tags")
    orch.reopen()
    with pytest.raises(CorruptLogError, match="the log's tables are not as flowtrail made them"):
        orch.read_flow_runs(tags=["nightly"])
