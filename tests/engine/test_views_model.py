"""Incremental views == rebuilt views == views as of the head == each stream folded.

Two orchestrators share one file, so each one's cached views go stale behind the
other's writes and proposals conflict and are decided again: the concurrent proposers.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from uuid import UUID

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, precondition, rule

from flowtrail import State, StateType
from flowtrail.core import RunView, StateDetails, fold
from flowtrail.store.sqlite import SyncSQLiteStore
from tests.engine.conftest import Clock, Orch
from tests.strategies import STATE_NAMES

proposals = st.builds(
    State,
    type=st.sampled_from(list(StateType)),
    name=st.sampled_from(STATE_NAMES),
    message=st.none() | st.just("m"),
    data=st.sampled_from([None, {"type": "json", "value": 1}]),
    state_details=st.builds(
        StateDetails, pause_key=st.sampled_from([None, "1", "2"]), pause_reschedule=st.booleans()
    ),
)


class ViewsModel(RuleBasedStateMachine):
    flows = Bundle("flows")
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="flowtrail-model-"))
        url = f"sqlite:///{self.directory}/model.db"
        self.clock = Clock()
        self.writers = [Orch("sync", url, clock=self.clock), Orch("sync", url, clock=self.clock)]
        self.runs: list[UUID] = []

    @initialize(target=flows)
    def first_flow(self) -> UUID:
        return self._created(self.writers[0].create_flow_run("flow", name="first"))

    def _created(self, view: RunView) -> UUID:
        self.runs.append(view.id)
        return view.id

    @rule(
        target=flows, writer=st.integers(0, 1), retries=st.none() | st.integers(0, 2), pending=st.booleans()
    )
    def create_flow(self, writer: int, retries: int | None, pending: bool) -> UUID:
        state = State(type=StateType.PENDING) if pending else None
        return self._created(
            self.writers[writer].create_flow_run("flow", name="f", retries=retries, state=state)
        )

    @rule(
        target=tasks,
        writer=st.integers(0, 1),
        flow=flows,
        key=st.sampled_from(["a", "b"]),
        retries=st.none() | st.just(1),
    )
    def create_task(self, writer: int, flow: UUID, key: str, retries: int | None) -> UUID:
        view = self.writers[writer].create_task_run(flow, task_key=key, retries=retries)
        if view.id not in self.runs:
            self.runs.append(view.id)
        return view.id

    @rule(target=flows, writer=st.integers(0, 1), parent=tasks)
    def create_subflow(self, writer: int, parent: UUID) -> UUID:
        return self._created(
            self.writers[writer].create_flow_run(
                "child", name="c", parent_task_run_id=parent, state=State(type=StateType.PENDING)
            )
        )

    @rule(
        writer=st.integers(0, 1),
        run=flows | tasks,
        state=proposals,
        force=st.booleans(),
        seconds=st.sampled_from([0, 1, 400]),
    )
    def propose(self, writer: int, run: UUID, state: State, force: bool, seconds: float) -> None:
        self.clock.advance(seconds)
        self.writers[writer].propose_state(run, state, force)

    @rule(writer=st.integers(0, 1), run=flows)
    def start(self, writer: int, run: UUID) -> None:
        self.writers[writer].propose_state(run, State(type=StateType.RUNNING))

    @precondition(lambda self: len(self.runs) > 3)
    @rule(writer=st.integers(0, 1), run=flows)
    def rename(self, writer: int, run: UUID) -> None:
        self.writers[writer].set_flow_run_name(run, "renamed")

    def _views(self, orch: Orch) -> dict[UUID, RunView]:
        views = {}
        for run_id in self.runs:
            try:
                views[run_id] = orch.read_flow_run(run_id)
            except Exception:
                views[run_id] = orch.read_task_run(run_id)
        return views

    def _rows(self) -> list[tuple[object, ...]]:
        """Every run-view row, every column as stored, the view's bytes included: equal
        views encode alike, however they were folded (what `runs --json` prints of a
        view must not change with a rebuild)."""
        with closing(sqlite3.connect(self.directory / "model.db")) as db:
            views = [
                *db.execute("SELECT * FROM flow_runs ORDER BY id"),
                *db.execute("SELECT * FROM task_runs ORDER BY id"),
            ]
            return [*views, *db.execute("SELECT * FROM run_tags ORDER BY tag, run_id")]

    def teardown(self) -> None:
        try:
            orch = self.writers[0]
            incremental = self._views(orch)
            assert incremental == self._views(self.writers[1])
            with SyncSQLiteStore(self.directory / "model.db") as store:
                for run_id, view in incremental.items():
                    assert fold(r.decode() for r in store.read_stream(str(run_id))) == view
            with orch.as_of(orch.last_position()) as snapshot:
                for run_id, view in incremental.items():
                    past = (
                        snapshot.read_flow_run(run_id)
                        if view.kind.value == "flow"
                        else snapshot.read_task_run(run_id)
                    )
                    assert past == view
            report = orch.verify()
            assert report.ok, report.problems
            kept = self._rows()
            orch.rebuild()
            assert self._views(orch) == incremental
            assert self._rows() == kept  # the queried columns too, not only the views
            assert self._views(self.writers[1]) == incremental
        finally:
            for writer in self.writers:
                writer.close()
            shutil.rmtree(self.directory, ignore_errors=True)


TestViewsModel = ViewsModel.TestCase
TestViewsModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
