"""The sync and the async orchestrator write the same history for the same calls."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# The pure constructors leave the timestamp to the orchestrator's clock, which both share.
from flowtrail.core import states
from flowtrail.store import open_sync_store
from tests.conftest import open_databases
from tests.engine.conftest import Orch

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _script(orch: Orch) -> None:
    parent = orch.create_flow_run("parent", name="p", retries=1, tags=["t"], state=states.Pending())
    orch.propose_state(parent.id, states.Running())
    task = orch.create_task_run(parent.id, task_key="load", retries=2, retry_delay=[0, 1])
    orch.propose_state(task.id, states.Running())
    orch.propose_state(task.id, states.Failed(message="flaky"))
    orch.propose_state(task.id, states.Running())
    orch.propose_state(task.id, states.Completed(data={"type": "json", "value": [1, 2]}))
    tracker = orch.create_task_run(parent.id, task_key="child")
    child = orch.create_flow_run("child", name="c", parent_task_run_id=tracker.id, state=states.Pending())
    orch.propose_state(child.id, states.Running())
    orch.propose_state(child.id, states.Paused(pause_key="1"))
    orch.propose_state(child.id, states.Running())
    orch.propose_state(child.id, states.Completed())
    orch.propose_state(parent.id, states.Failed(message="boom"))
    orch.propose_state(parent.id, states.Running())
    orch.propose_state(parent.id, states.Pending())
    orch.set_flow_run_name(parent.id, "renamed")
    orch.update_flow_run(parent.id, retries=3)
    orch.propose_state(parent.id, states.Completed())


def _normalized_log(url: str) -> list[tuple[str, int, str, bytes]]:
    """The log with run ids replaced by the order they first appear in."""
    names: dict[bytes, bytes] = {}

    def stable(match: re.Match[bytes]) -> bytes:
        return names.setdefault(match.group(0), b"run-%d" % len(names))

    with open_sync_store(url) as store:
        return [
            (
                _UUID.sub(stable, r.stream_id.encode()).decode(),
                r.version,
                r.event_type,
                _UUID.sub(stable, r.data),
            )
            for r in store.read_all()
        ]


def test_sync_and_async_orchestrators_record_identical_histories(tmp_path: Path) -> None:
    logs = []
    for kind in ("sync", "async"):
        orch = Orch(kind, f"sqlite:///{tmp_path}/{kind}.db")
        try:
            _script(orch)
        finally:
            orch.close()
        logs.append(_normalized_log(f"sqlite:///{tmp_path}/{kind}.db"))
    assert logs[0] == logs[1]
    assert len(logs[0]) > 25


@pytest.mark.postgres
def test_sqlite_and_postgresql_record_identical_histories(tmp_path: Path) -> None:
    postgres = open_databases("postgresql", tmp_path)
    try:
        logs = []
        for kind, url in (("sync", f"sqlite:///{tmp_path}/lite.db"), ("async", postgres.url("parity"))):
            orch = Orch(kind, url)
            try:
                _script(orch)
            finally:
                orch.close()
            logs.append(_normalized_log(url))
        assert logs[0] == logs[1]
    finally:
        postgres.cleanup()
