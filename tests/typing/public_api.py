"""A typed use of the public API, read by mypy (not run): a change that breaks the
types users write against fails ``make typecheck``."""

from __future__ import annotations

from datetime import UTC, datetime

from flowtrail import SetStateStatus, State, StateDetails, StateType, states
from flowtrail.core import Facts, Proposal, RunView, decide, evolve, verify
from flowtrail.testing import MemoryLog, at


def construct() -> list[State]:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        states.Scheduled(scheduled_time=when),
        states.AwaitingRetry(scheduled_time=when, message="again"),
        states.Completed(data={"rows": 3}, message="done"),
        states.Failed(message="boom"),
        states.Paused(timeout_seconds=30, pause_key="1"),
        State(type=StateType.RUNNING, name="Retrying", state_details=StateDetails(retriable=True)),
    ]


def decide_one(view: RunView) -> SetStateStatus:
    proposal = Proposal(state=states.Running(), proposed_at=at(1))
    decision = decide(view, proposal, Facts())
    return decision.status


def fold_a_log() -> bool:
    log = MemoryLog()
    run = log.create_flow_run("typed")
    log.propose(run.id, states.Running(), at=at(1))
    view: RunView = evolve(None, log.events_of(run.id)[0])
    return verify(log.records).ok and view.name == "typed"
