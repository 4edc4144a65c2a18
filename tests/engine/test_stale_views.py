"""Run views that are out of date and not rebuilt (a log opened read-only, or with
``rebuild_stale=False``, after a rebuild cut short): one run's reads fold its events,
queries over many runs are a typed error, and nothing is written."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from flowtrail import Orchestrator, SyncOrchestrator, states
from flowtrail.core import RunNotFoundError, ViewsOutOfDateError
from flowtrail.projections.runs import RunViews
from tests.engine.conftest import parent_with_subflow
from tests.engine.test_cli import assert_user_error, flowtrail


class _Log:
    """A log of a few runs, one of them a subflow, whose views a rebuild left half done."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "log.db"
        self.url = f"sqlite:///{self.path}"
        with SyncOrchestrator.open(self.url) as orch:
            self.parent, self.task, self.child = parent_with_subflow(orch)  # type: ignore[arg-type]
            self.other = orch.create_flow_run("etl", tags=["nightly"], state=states.Pending())
            orch.propose_state(self.other.id, states.Running())
            self.views = {run.id: orch.read_flow_run(run.id) for run in orch.read_flow_runs(limit=None)}
            self.task_view = orch.read_task_run(self.task.id)
            self.history = orch.read_history(self.other.id)
        with sqlite3.connect(self.path) as connection:
            connection.execute("DELETE FROM flow_runs WHERE id = ?", (str(self.other.id),))
            connection.execute("DELETE FROM task_runs")
            connection.execute(
                "UPDATE flowtrail_meta SET value = ? WHERE key = ?",
                (f"{RunViews.version}:stale", f"projection:{RunViews.name}"),
            )
        connection.close()


@pytest.fixture
def log(tmp_path: Path) -> _Log:
    return _Log(tmp_path)


def test_a_read_only_log_with_views_out_of_date_reads_each_run_folded_from_its_events(log: _Log) -> None:
    before = log.path.read_bytes()
    with SyncOrchestrator.open(f"{log.url}?mode=ro") as reader:
        assert {run_id: reader.read_flow_run(run_id) for run_id in log.views} == log.views
        assert reader.read_task_run(log.task.id) == log.task_view
        assert reader.read_history(log.other.id) == log.history
    assert log.path.read_bytes() == before


def test_a_read_only_log_with_views_out_of_date_refuses_queries_over_many_runs(log: _Log) -> None:
    before = log.path.read_bytes()
    with SyncOrchestrator.open(f"{log.url}?mode=ro") as reader:
        for query in (
            lambda: reader.read_flow_runs(tags=["nightly"]),
            lambda: reader.read_task_runs(log.parent.id),
            lambda: reader.find_subflow_run(log.task.id),
        ):
            with pytest.raises(ViewsOutOfDateError, match="out of date"):
                query()
        assert reader.as_of(reader.last_position()).read_flow_runs(tags=["nightly"]) == [
            log.views[log.other.id]
        ]
    assert log.path.read_bytes() == before


def test_an_async_read_only_log_with_views_out_of_date_reads_as_the_sync_one(log: _Log) -> None:
    async def read() -> tuple[Any, ...]:
        async with Orchestrator.open(f"{log.url}?mode=ro") as reader:
            view = await reader.read_flow_run(log.other.id)
            with pytest.raises(ViewsOutOfDateError):
                await reader.find_subflow_run(log.task.id)
            return view, await reader.read_task_run(log.task.id)

    assert asyncio.run(read()) == (log.views[log.other.id], log.task_view)


def test_a_run_of_another_kind_is_not_found_while_views_are_out_of_date(log: _Log) -> None:
    with SyncOrchestrator.open(f"{log.url}?mode=ro") as reader, pytest.raises(RunNotFoundError):
        reader.read_flow_run(log.task.id)


def test_queries_work_again_once_another_process_rebuilt_the_views(log: _Log) -> None:
    with SyncOrchestrator.open(f"{log.url}?mode=ro") as reader:
        with pytest.raises(ViewsOutOfDateError):
            reader.find_subflow_run(log.task.id)
        with SyncOrchestrator.open(log.url):  # a writable open rebuilds them
            pass
        found = reader.find_subflow_run(log.task.id)
        assert found is not None
        assert found.id == log.child.id


def test_an_orchestrator_told_not_to_rebuild_proposes_on_folded_views_until_it_rebuilds(log: _Log) -> None:
    with SyncOrchestrator.open(log.url, rebuild_stale=False) as orch:
        result = orch.propose_state(log.other.id, states.Completed())
        assert result.status.value == "ACCEPT"
        with pytest.raises(ViewsOutOfDateError):
            orch.read_flow_runs()
        orch.rebuild()
        assert {run.id for run in orch.read_flow_runs(flow_names=["etl"], state_types=["COMPLETED"])} == {
            log.other.id
        }
        assert orch.verify().ok


def test_the_cli_lists_no_runs_from_views_out_of_date_but_shows_a_runs_history(log: _Log) -> None:
    read_only = f"{log.url}?mode=ro"
    assert_user_error(flowtrail("--database", read_only, "runs"), "out of date", "flowtrail rebuild")
    shown = flowtrail("--database", read_only, "history", str(log.other.id), "--json")
    assert shown.code == 0, shown.err
    assert len(shown.json()) == len(log.history)
