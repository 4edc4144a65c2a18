"""Runs in a given state, built through the real fold, for rule tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import msgspec

from flowtrail.core import Decision, RunView, State, StateType
from flowtrail.core import states as s
from flowtrail.testing import T0, MemoryLog, at

#: When the tests' proposals are made: after every initial state.
NOW = at(60)


def initial_state(state_type: StateType, *, when: datetime = T0) -> State:
    """A state of ``state_type`` as the base context of the tables has it."""
    if state_type is StateType.SCHEDULED:
        return s.Scheduled(scheduled_time=when, timestamp=when)  # scheduled in the past
    if state_type is StateType.PAUSED:
        return s.Paused(timestamp=when)  # a blocking pause without timeout
    return State(type=state_type, timestamp=when)


def flow_in(
    state: State | None, log: MemoryLog | None = None, **settings: object
) -> tuple[MemoryLog, RunView]:
    """A flow run whose current state is ``state`` (forced in from no state)."""
    log = log or MemoryLog()
    view = log.create_flow_run(**settings)  # type: ignore[arg-type]
    if state is not None:
        log.propose(view.id, state, at=state.timestamp or T0, force=True)
    return log, log.view(view.id)


def task_in(
    state: State | None,
    *,
    flow_state: State | None = None,
    flow_run_count: int = 1,
    log: MemoryLog | None = None,
    **settings: object,
) -> tuple[MemoryLog, RunView]:
    """A task run in ``state`` inside a flow run in ``flow_state`` (Running by default)."""
    log = log or MemoryLog()
    flow = log.create_flow_run("parent")
    state_of_flow = flow_state if flow_state is not None else s.Running(timestamp=T0)
    log.propose(flow.id, state_of_flow, at=T0, force=True)
    flow = log.view(flow.id)
    if flow.run_count != flow_run_count:
        log.views[flow.id] = msgspec.structs.replace(flow, run_count=flow_run_count)
    task = log.create_task_run(flow.id, **settings)  # type: ignore[arg-type]
    if state is not None:
        log.propose(task.id, state, at=state.timestamp or T0, force=True)
    return log, log.view(task.id)


def propose(log: MemoryLog, run_id: UUID, state: State, *, when: datetime = NOW, **kw: object) -> Decision:
    return log.propose(run_id, state, at=when, **kw)  # type: ignore[arg-type]


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)
