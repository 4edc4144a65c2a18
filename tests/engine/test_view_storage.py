"""How the run views are stored: compact, and readable whatever flowtrail wrote them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from flowtrail import RunView, SyncOrchestrator, states
from flowtrail.projections import decode_view, encode_view


def _subflow(orch: SyncOrchestrator) -> RunView:
    parent = orch.create_flow_run("parent", state=states.Running())
    task = orch.create_task_run(parent.id, task_key="step", state=states.Running())
    child = orch.create_flow_run("child", parent_task_run_id=task.id, state=states.Pending())
    return orch.propose_state(child.id, states.Running()).run


def test_a_stored_view_holds_its_uuids_as_16_bytes(tmp_path: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/compact.db") as orch:
        view = _subflow(orch)
    parent = view.parent_task_run_id
    assert parent is not None
    data = encode_view(view)
    assert view.id.bytes in data
    assert parent.bytes in data
    assert str(view.id).encode() not in data
    assert str(parent).encode() not in data
    assert decode_view(data) == view


def test_a_view_stored_with_text_ids_reads_as_the_same_run(tmp_path: Path) -> None:
    """Rows written before ids were stored as bytes need no rebuild."""
    path = tmp_path / "older.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        view = _subflow(orch)
        run_id = view.id
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE flow_runs SET view = ? WHERE id = ?", (msgspec.msgpack.encode(view), str(run_id)))
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        assert orch.read_flow_run(run_id) == view
        moved = orch.propose_state(run_id, states.Completed()).run
        assert orch.read_flow_run(run_id) == moved
        assert orch.verify().ok


def test_a_runs_tags_are_stored_once_in_sqlite(tmp_path: Path) -> None:
    """The tag table is its own key: no rowid table beside a copy of it in an index."""
    path = tmp_path / "tags.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        run = orch.create_flow_run("etl", tags=["nightly", "eu"])
    with sqlite3.connect(path) as raw:
        indexes = raw.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'run_tags' AND type = 'index'")
        assert indexes.fetchall() == []
        assert sorted(raw.execute("SELECT tag, run_id FROM run_tags")) == [
            ("eu", str(run.id)),
            ("nightly", str(run.id)),
        ]


def test_a_tag_table_made_with_rowids_before_still_answers_and_takes_tags(tmp_path: Path) -> None:
    path = tmp_path / "older-tags.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        first = orch.create_flow_run("etl", tags=["nightly"])
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE run_tags")
        raw.execute(
            "CREATE TABLE run_tags (tag TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (tag, run_id))"
        )
        raw.execute("INSERT INTO run_tags VALUES ('nightly', ?)", (str(first.id),))
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        second = orch.create_flow_run("etl", tags=["nightly"])
        assert {run.id for run in orch.read_flow_runs(tags=["nightly"])} == {first.id, second.id}
        assert orch.verify().ok
