"""How a run's view is stored: compact, and readable whatever flowtrail wrote it."""

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
