"""Run views that are not whole: out of date and not rebuilt (a log opened read-only,
or with ``rebuild_stale=False``, after a rebuild cut short), or being rebuilt by another
process. One run's reads and proposals fold its events, queries over many runs are a
typed error (a subflow call waits), and nothing is written."""

from __future__ import annotations

import asyncio
import io
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowtrail import Orchestrator, SyncOrchestrator, flow, states
from flowtrail.core import FlowRunCreated, RebuildReplacedError, RunNotFoundError, ViewsOutOfDateError
from flowtrail.engine.context import current_flow_run
from flowtrail.engine.ids import new_run_id
from flowtrail.projections.runs import RunViews
from flowtrail.store import StreamWrite
from flowtrail.testing import T0
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
            with pytest.raises(ViewsOutOfDateError, match="not whole"):
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


def test_an_export_of_a_flow_run_from_views_out_of_date_holds_its_task_runs_and_subflows(
    log: _Log, tmp_path: Path
) -> None:
    with SyncOrchestrator.open(f"{log.url}?mode=ro") as reader:
        exported = io.StringIO()
        reader.export(exported, log.parent.id)
    for run_id in (log.parent.id, log.task.id, log.child.id):
        assert str(run_id) in exported.getvalue()
    with SyncOrchestrator.open(log.url) as orch:  # views rebuilt on open
        again = io.StringIO()
        orch.export(again, log.parent.id)
    assert exported.getvalue() == again.getvalue()


def test_an_export_of_a_task_run_from_views_out_of_date_holds_its_subflow(log: _Log) -> None:
    with SyncOrchestrator.open(f"{log.url}?mode=ro") as reader:
        exported = io.StringIO()
        reader.export(exported, log.task.id)
    with SyncOrchestrator.open(log.url) as orch:  # views rebuilt on open
        again = io.StringIO()
        orch.export(again, log.task.id)
    assert str(log.child.id) in exported.getvalue()
    assert exported.getvalue() == again.getvalue()


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
    assert_user_error(flowtrail("--database", read_only, "runs"), "not whole", "flowtrail as-of")
    shown = flowtrail("--database", read_only, "history", str(log.other.id), "--json")
    assert shown.code == 0, shown.err
    assert len(shown.json()) == len(log.history)


# --- views being rebuilt by another process ------------------------------------------------------


def _raw(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with sqlite3.connect(path) as connection:
        for sql, params in statements:
            connection.execute(sql, params)
    connection.close()


def _mark(path: Path, value: str) -> None:
    _raw(path, ("UPDATE flowtrail_meta SET value = ? WHERE key = ?", (value, f"projection:{RunViews.name}")))


def _filled(url: str, runs: int) -> None:
    """A log of ``runs`` flow runs, each created and nothing more, written at once."""
    created = [
        FlowRunCreated(run_id=new_run_id(), flow_name="filler", name=f"f{i}", created_at=T0)
        for i in range(runs)
    ]
    with SyncOrchestrator.open(url, durability="normal") as orch:
        orch.store.append_many([StreamWrite(str(c.run_id), [c], 0) for c in created])


def _rebuilding(path: Path, batch: int) -> subprocess.Popen[str]:
    """A process rebuilding the log's views, once it has dropped them."""
    started = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from flowtrail import SyncOrchestrator\nwith SyncOrchestrator.open({f'sqlite:///{path}'!r}) as orch:\n"
            f"    orch.rebuild(workers=1, batch={batch})",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    with sqlite3.connect(path) as raw:
        while _mark_of(raw) == str(RunViews.version):
            assert started.poll() is None, started.communicate()[1]
            time.sleep(0.001)
    raw.close()
    return started


def _mark_of(raw: sqlite3.Connection) -> str:
    query = "SELECT value FROM flowtrail_meta WHERE key = ?"
    return str(raw.execute(query, (f"projection:{RunViews.name}",)).fetchone()[0])


def _run_with_its_row_behind(path: Path, orch: SyncOrchestrator) -> Any:
    """A flow run proposed Running whose row holds it still Pending, as a rebuild writing
    a fold made before that proposal leaves it until its catch-up."""
    run = orch.create_flow_run("etl", state=states.Pending())
    with sqlite3.connect(path) as raw:
        ((behind,),) = raw.execute("SELECT view FROM flow_runs WHERE id = ?", (str(run.id),)).fetchall()
    raw.close()
    orch.propose_state(run.id, states.Running())
    _raw(path, ("UPDATE flow_runs SET view = ?, version = 2 WHERE id = ?", (behind, str(run.id))))
    return run


def test_a_run_a_rebuild_elsewhere_has_not_reached_yet_is_read_and_proposed_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as elsewhere:
        run = elsewhere.create_flow_run("etl", state=states.Pending())
        view = elsewhere.read_flow_run(run.id)
        # As another process's rebuild leaves it midway: tables dropped, marked stale.
        _raw(tmp_path / "log.db", ("DELETE FROM flow_runs", ()))
        _mark(tmp_path / "log.db", f"{RunViews.version}:stale")
        assert orch.read_flow_run(run.id) == view
        assert orch.propose_state(run.id, states.Running()).status.value == "ACCEPT"
        assert [s.name for s in orch.read_states(run.id)] == ["Pending", "Running"]


def test_a_proposal_on_a_view_row_left_behind_its_log_is_decided_on_the_runs_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as elsewhere:
        run = _run_with_its_row_behind(tmp_path / "log.db", elsewhere)
        result = orch.propose_state(run.id, states.Completed())
        assert result.status.value == "ACCEPT"
        assert [s.name for s in orch.read_states(run.id)] == ["Pending", "Running", "Completed"]


def test_queries_over_many_runs_refuse_views_being_rebuilt_and_answer_once_they_are_whole(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch:
        parent, task, child = parent_with_subflow(orch)  # type: ignore[arg-type]
        _mark(tmp_path / "log.db", f"{RunViews.version}:stale")
        for query in (
            orch.read_flow_runs,
            lambda: orch.read_flow_runs(flow_names=["nothing-matches"]),
            lambda: orch.read_task_runs(parent.id),
            lambda: orch.find_subflow_run(task.id),
        ):
            with pytest.raises(ViewsOutOfDateError, match="a rebuild is under way"):
                query()
        _mark(tmp_path / "log.db", str(RunViews.version))
        found = orch.find_subflow_run(task.id)
        assert found is not None
        assert found.id == child.id
        assert orch.read_flow_runs(flow_names=["nothing-matches"]) == []


def test_a_retried_parent_reuses_its_finished_subflow_while_the_views_are_not_whole(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    attempts: list[int] = []

    @flow
    def child() -> int:
        return 1

    @flow(retries=1)
    def parent() -> int:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 2:
            _mark(path, f"{RunViews.version}:stale")  # as a rebuild elsewhere leaves them
        value = child()
        if len(attempts) == 1:
            raise RuntimeError("the first attempt fails after its subflow")
        return value

    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        assert parent() == 1
        _mark(path, str(RunViews.version))
        (only,) = orch.read_flow_runs(flow_names=["child"])
        assert [s.name for s in orch.read_states(only.id)] == ["Pending", "Running", "Completed"]


def test_a_subflow_call_while_the_views_are_not_whole_starts_its_first_child(tmp_path: Path) -> None:
    path = tmp_path / "log.db"

    @flow
    def child() -> int:
        return 2

    @flow
    def parent() -> int:
        _mark(path, f"{RunViews.version}:stale")
        return child()

    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        assert parent() == 2
        _mark(path, str(RunViews.version))
        assert len(orch.read_flow_runs(flow_names=["child"])) == 1


def test_a_run_whose_row_is_behind_its_log_while_a_rebuild_runs_reads_as_its_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as elsewhere:
        run = _run_with_its_row_behind(tmp_path / "log.db", elsewhere)
        _mark(tmp_path / "log.db", f"{RunViews.version}:stale")
        assert orch.read_flow_run(run.id).state_type is states.StateType.RUNNING
        assert elsewhere.read_flow_run(run.id).state_type is states.StateType.RUNNING


def test_proposals_in_turn_on_a_subflow_whose_parent_task_row_is_behind_are_decided_on_the_events(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as elsewhere:
        parent = elsewhere.create_flow_run("parent", state=states.Pending(), then=[states.Running()])
        task = elsewhere.create_task_run(parent.id, task_key="child")
        child = elsewhere.create_flow_run("child", parent_task_run_id=task.id, state=states.Pending())
        ((behind,),) = (
            sqlite3.connect(tmp_path / "log.db")
            .execute("SELECT view FROM task_runs WHERE id = ?", (str(task.id),))
            .fetchall()
        )
        elsewhere.propose_state(child.id, states.Running())
        # The parent task run's row as a rebuild elsewhere left it, one mirrored state behind.
        _raw(tmp_path / "log.db", ("UPDATE task_runs SET view = ?, version = version - 1", (behind,)))
        results = orch.propose_in_turn(child.id, [states.Completed()])
        assert [r.status.value for r in results] == ["ACCEPT"]
        assert [s.name for s in orch.read_states(task.id)][-1] == "Completed"


def test_proposals_and_reads_go_on_while_another_process_rebuilds_the_views(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    _filled(url, 60_000)
    with SyncOrchestrator.open(url) as orch:
        # Created last, so that the rebuild, which replays in log order, reaches them last.
        runs = [orch.create_flow_run("etl", state=states.Pending()) for _ in range(40)]
        rebuilding = _rebuilding(path, batch=50)
        for run in runs:
            assert orch.read_flow_run(run.id).id == run.id
            assert orch.propose_state(run.id, states.Running()).status.value == "ACCEPT"
        with sqlite3.connect(path) as raw:
            during = _mark_of(raw)
        raw.close()
        _, err = rebuilding.communicate(timeout=300)
        assert rebuilding.returncode == 0, err
        assert during.endswith(":stale"), "the rebuild ended before the proposals did: grow the log"
        assert {orch.read_flow_run(run.id).state_type for run in runs} == {states.StateType.RUNNING}
        assert orch.verify().ok


def test_a_rebuild_another_began_after_it_stops_writing_and_leaves_the_views_to_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as other:
        runs = [orch.create_flow_run("etl", state=states.Pending()) for _ in range(60)]
        replaced: list[int] = []

        def midway(done: int, total: int) -> None:
            if not replaced:
                replaced.append(done)
                other.rebuild(workers=1)  # begins, and ends, while the first one runs

        with pytest.raises(RebuildReplacedError, match="another rebuild"):
            orch.rebuild(workers=1, batch=10, progress=midway)
        assert replaced
        assert {run.id for run in orch.read_flow_runs(limit=None)} == {run.id for run in runs}
        assert orch.verify().ok


def test_opening_a_log_while_another_process_rebuilds_its_views_leaves_them_to_it(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    _filled(url, 40_000)
    first = _rebuilding(path, batch=100)
    # It finds them stale, and a rebuild alive.
    with SyncOrchestrator.open(url) as orch, pytest.raises(ViewsOutOfDateError):
        orch.read_flow_runs()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    with SyncOrchestrator.open(url) as orch:
        assert len(orch.read_flow_runs(limit=None)) == 40_000


def _a_process_gone() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


@pytest.mark.parametrize("where", ["this host, its process gone", "another host, silent for ten minutes"])
def test_opening_a_log_whose_rebuild_died_rebuilds_its_views(tmp_path: Path, where: str) -> None:
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    with SyncOrchestrator.open(url) as orch:
        runs = [orch.create_flow_run("etl") for _ in range(3)]
    signs = (
        f"{time.time()!r} {socket.gethostname()} {_a_process_gone()}"
        if where.startswith("this host")
        else f"{time.time() - 600!r} elsewhere 1"
    )
    _raw(
        path,
        ("DELETE FROM flow_runs", ()),
        ("INSERT INTO flowtrail_meta (key, value) VALUES ('rebuild:runs:seen', ?)", (signs,)),
    )
    _mark(path, f"{RunViews.version}:stale")
    with SyncOrchestrator.open(url) as orch:
        assert {run.id for run in orch.read_flow_runs()} == {run.id for run in runs}


def test_a_rebuild_that_ended_leaves_no_sign_that_would_hold_back_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    url = f"sqlite:///{path}"
    with SyncOrchestrator.open(url) as orch:
        runs = [orch.create_flow_run("etl") for _ in range(3)]
        orch.rebuild(workers=1)  # this process, still alive, rebuilt them last
        _raw(path, ("DELETE FROM flow_runs", ()))
        _mark(path, f"{RunViews.version}:stale")  # as an open of a newer view format leaves them
        with SyncOrchestrator.open(url) as reopened:
            assert {run.id for run in reopened.read_flow_runs()} == {run.id for run in runs}


def test_a_subflow_created_ahead_without_a_state_is_found_while_the_views_are_not_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.db"

    @flow
    def child() -> int:
        return 2

    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:

        @flow
        def parent() -> int:
            me = current_flow_run()
            assert me is not None
            task = orch.create_task_run(
                me.run.id, task_key=child.task_key, dynamic_key="0", state=states.Pending()
            )
            orch.create_flow_run("child", parent_task_run_id=task.id)  # created ahead, no state yet
            _mark(path, f"{RunViews.version}:stale")
            return child()

        assert parent() == 2
        _mark(path, str(RunViews.version))
        (only,) = orch.read_flow_runs(flow_names=["child"])
        assert only.state_type is states.StateType.COMPLETED


def test_the_subflow_read_from_the_log_is_the_one_the_views_give(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch:
        parent = orch.create_flow_run("parent", state=states.Pending(), then=[states.Running()])
        task = orch.create_task_run(parent.id, task_key="child")
        orch.create_flow_run("child", parent_task_run_id=task.id, state=states.Pending())
        orch.create_flow_run("child", parent_task_run_id=task.id)
        latest = orch.create_flow_run("child", parent_task_run_id=task.id, state=states.Scheduled())
        expected = orch.find_subflow_run(task.id)
        assert expected is not None
        assert orch._subflow_in_log(task.id) == expected
        assert expected.id == latest.id
        assert orch._subflow_in_log(parent.id) is None


def _damage_first_proposal(log: _Log) -> int:
    """Make the other run's proposal of Running undecodable: its position."""
    position = log.history[-1].position
    with sqlite3.connect(log.path) as connection:
        connection.execute("DROP TRIGGER events_are_never_updated")
        connection.execute("UPDATE events SET data = CAST('garbage' AS BLOB) WHERE position = ?", (position,))
    connection.close()
    return position


def test_a_log_whose_stale_views_do_not_rebuild_opens_with_them_out_of_date(log: _Log) -> None:
    """An event that does not decode stops the rebuild at open: the log opens all the
    same, so that verify can name the damage and the other runs can still be read."""
    position = _damage_first_proposal(log)
    with SyncOrchestrator.open(log.url) as orch:
        with pytest.raises(ViewsOutOfDateError):
            orch.read_flow_runs()
        assert orch.read_flow_run(log.parent.id) == log.views[log.parent.id]
        report = orch.verify()
    assert not report.ok
    assert report.problems[0].position == position


def test_an_async_log_whose_stale_views_do_not_rebuild_opens_with_them_out_of_date(log: _Log) -> None:
    position = _damage_first_proposal(log)

    async def scenario() -> int | None:
        async with Orchestrator.open(log.url) as orch:
            with pytest.raises(ViewsOutOfDateError):
                await orch.read_flow_runs()
            return (await orch.verify()).problems[0].position

    assert asyncio.run(scenario()) == position


def test_the_cli_names_the_event_that_stops_a_rebuild_and_verify_still_names_it(log: _Log) -> None:
    position = _damage_first_proposal(log)
    assert_user_error(
        flowtrail("rebuild", database=log.path), f"the event at position {position} does not decode"
    )
    ran = flowtrail("verify", database=log.path)
    assert ran.code == 1, ran.err
    assert f"position {position}" in ran.out
