"""A proposal decided holding the log's write lock (after it lost to other writers), where
the transaction it ran in fails or its caller gives up: nothing of it may outlive it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flowtrail import SetStateStatus, StateType, states
from flowtrail.core import StoreBusyError
from flowtrail.engine import operations
from flowtrail.store.urls import parse_url
from tests.conftest import POSTGRES_DSN, Databases, open_databases
from tests.engine.conftest import Orch

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["sync", "async"])
def orch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Orch]:
    """An orchestrator on PostgreSQL that waits half a second at most for a lock."""
    databases: Databases = open_databases("postgresql", tmp_path)
    opened = Orch(request.param, databases.url("locked", busy_timeout=0.5))
    yield opened
    opened.close()
    databases.cleanup()


def _holding_the_row_of(orch: Orch, run_id: object) -> psycopg.Connection[object]:
    """Another session holding a run's views row: a write to it waits, then times out."""
    assert POSTGRES_DSN is not None
    holder: psycopg.Connection[object] = psycopg.connect(POSTGRES_DSN)
    schema = parse_url(orch.url).schema
    holder.execute(f'SELECT 1 FROM "{schema}".flow_runs WHERE id = %s FOR UPDATE', (str(run_id),))
    return holder


def test_a_locked_proposal_whose_transaction_fails_leaves_later_decisions_to_the_log(
    orch: Orch, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = orch.create_flow_run("etl", state=states.Running())
    task = orch.create_task_run(flow.id, task_key="load", state=states.Pending())
    monkeypatch.setattr(operations, "OPTIMISTIC_ATTEMPTS", 0)  # as if it had lost three times
    holder = _holding_the_row_of(orch, flow.id)
    with pytest.raises(StoreBusyError):
        orch.propose_state(flow.id, states.Cancelling())
    holder.close()
    monkeypatch.setattr(operations, "OPTIMISTIC_ATTEMPTS", 3)
    assert orch.read_flow_run(flow.id).state.type is StateType.RUNNING
    # Decided on the flow run as the log has it (Running), not as the failed write left it.
    (started,) = orch.propose_in_turn(task.id, [states.Running()])
    assert started.status is SetStateStatus.ACCEPT
    assert orch.verify().ok


def test_a_caller_giving_up_during_a_locked_proposal_leaves_the_run_as_it_was(
    orch: Orch, monkeypatch: pytest.MonkeyPatch
) -> None:
    if orch.runner is None:
        pytest.skip("only an async caller can give up in the middle of a call")
    run = orch.create_flow_run("etl", state=states.Running())
    monkeypatch.setattr(operations, "OPTIMISTIC_ATTEMPTS", 0)
    holder = _holding_the_row_of(orch, run.id)

    async def give_up() -> None:
        await asyncio.wait_for(orch.api.propose_state(run.id, states.Completed()), 0.2)

    with pytest.raises(asyncio.TimeoutError):
        orch.runner.run(give_up())
    holder.close()
    gc.collect()  # the abandoned attempt is closed quietly (no "ignored GeneratorExit")
    assert orch.read_flow_run(run.id).state.type is StateType.RUNNING
    assert orch.propose_state(run.id, states.Completed()).run.version == 3
