"""Both transition tables of Prefect 3.9.1 (PREFECT_SEMANTICS §5), every cell.

Base context: no deployment, no infrastructure pid, no retries, no pause keys, no
transition ids, COMPLETED without persisted data, PAUSED a blocking pause without
timeout, scheduled times in the past, proposals with their default names; for tasks,
the flow run is RUNNING with run_count 1 and the task has flow_run_run_count 0.

Cells: ``A`` accept, ``X`` abort, ``R`` reject keeping the current state, ``R:TYPE``
reject writing a state of TYPE instead; ``A:Name`` accept, the written state named so.
"""

from __future__ import annotations

import pytest

from flowtrail.core import SetStateStatus, State, StateType
from tests.core.helpers import flow_in, initial_state, propose, task_in

_T = StateType
COLUMNS = [
    _T.SCHEDULED,
    _T.PENDING,
    _T.RUNNING,
    _T.COMPLETED,
    _T.FAILED,
    _T.CANCELLED,
    _T.CRASHED,
    _T.PAUSED,
    _T.CANCELLING,
]

FLOW_TABLE: dict[StateType | None, str] = {
    None: "A A A A A A A X A",
    _T.SCHEDULED: "A A A A A A A R R:CANCELLED",
    _T.PENDING: "A X A A A A A R A",
    _T.RUNNING: "A X A A A A A A A",
    _T.COMPLETED: "X A A A A A X X X",
    _T.FAILED: "X A A A A A X X X",
    _T.CANCELLED: "X X A A A A X X X",
    _T.CRASHED: "X A A A A A X X X",
    _T.PAUSED: "A R A A A A A R A",
    _T.CANCELLING: "R R R R R A R R R",
}

TASK_TABLE: dict[StateType | None, str] = {
    None: "A A A A A A A A A",
    _T.SCHEDULED: "A A A A A A A A A",
    _T.PENDING: "A A A A A A A A A",
    _T.RUNNING: "A A A:Rerunning A A A A A A",
    _T.COMPLETED: "A A A:Retrying A A A X X X",
    _T.FAILED: "A A A:Retrying A A A X X X",
    _T.CANCELLED: "A A A:Retrying A A A X X X",
    _T.CRASHED: "A A A:Retrying A A A X X X",
    _T.PAUSED: "A A A A A A A A A",
    _T.CANCELLING: "A A A A A A A A A",
}


def _cells(table: dict[StateType | None, str]) -> list[tuple[StateType | None, StateType, str]]:
    return [
        (source, target, cell)
        for source, row in table.items()
        for target, cell in zip(COLUMNS, row.split(), strict=True)
    ]


def _check(decision_status: SetStateStatus, written: State | None, target: StateType, cell: str) -> None:
    kind, _, detail = cell.partition(":")
    if kind == "A":
        assert decision_status is SetStateStatus.ACCEPT
        assert written is not None
        assert written.type is target
        assert written.name == (detail or State(type=target).name)
    elif kind == "X":
        assert decision_status is SetStateStatus.ABORT
        assert written is None
    elif kind == "R" and not detail:
        assert decision_status is SetStateStatus.REJECT
        assert written is None
    else:
        assert decision_status is SetStateStatus.REJECT
        assert written is not None
        assert written.type is StateType(detail)


@pytest.mark.parametrize(("source", "target", "cell"), _cells(FLOW_TABLE))
def test_flow_run_transition_matches_prefect(source: StateType | None, target: StateType, cell: str) -> None:
    """A flow-run proposal under CoreFlowPolicy gets Prefect's measured outcome."""
    log, run = flow_in(None if source is None else initial_state(source))
    decision = propose(log, run.id, State(type=target))
    _check(decision.status, decision.state, target, cell)


@pytest.mark.parametrize(("source", "target", "cell"), _cells(TASK_TABLE))
def test_task_run_transition_matches_prefect(source: StateType | None, target: StateType, cell: str) -> None:
    """A task-run proposal under CoreTaskPolicy gets Prefect's measured outcome."""
    log, run = task_in(None if source is None else initial_state(source))
    decision = propose(log, run.id, State(type=target))
    _check(decision.status, decision.state, target, cell)


@pytest.mark.parametrize(("source", "target", "cell"), _cells(FLOW_TABLE))
def test_a_flow_decision_that_writes_nothing_leaves_the_view_state_unchanged(
    source: StateType | None, target: StateType, cell: str
) -> None:
    """REJECT without a state, WAIT and ABORT keep the run's current state."""
    log, run = flow_in(None if source is None else initial_state(source))
    propose(log, run.id, State(type=target))
    after = log.view(run.id)
    if cell in ("X", "R"):
        assert after.state == run.state
    else:
        assert after.state is not None
        assert after.state != run.state
