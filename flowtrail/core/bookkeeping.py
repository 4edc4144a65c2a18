"""Prefect's global policies: bookkeeping applied to every state that is written.

They run after the rules, in this order, on the state actually written (a rejected
proposal's replacement included), also for forced proposals. Prefect's
SetRunStateType/Name/Timestamp need no step here: the view's ``state`` is the written
state itself. UpdateSubflowParentTask is `flowtrail.core.policies.mirror_proposal`.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

from flowtrail.core.fold import RunView
from flowtrail.core.rules import TERMINAL, Transform
from flowtrail.core.states import State, StateType

__all__ = ["FLOW_TRANSFORMS", "TASK_TRANSFORMS"]

_replace = msgspec.structs.replace
_ONE_MICROSECOND = timedelta(microseconds=1)


def _unique_timestamp(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    stamp = state.timestamp
    if stamp is None or stamp not in run.state_timestamps:
        return state, run
    while stamp in run.state_timestamps:
        stamp += _ONE_MICROSECOND
    return _replace(state, timestamp=stamp), run


def _start_time(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    if state.type is StateType.RUNNING and run.start_time is None:
        return state, _replace(run, start_time=state.timestamp)
    return state, run


def _end_time(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    if initial is not None and initial.is_final() and not state.is_final():
        return state, _replace(run, end_time=None)
    if state.is_final() and run.end_time is None:
        start = run.start_time if run.start_time is not None else state.timestamp
        return state, _replace(run, start_time=start, end_time=state.timestamp)
    return state, run


def _run_time(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    if initial is None or initial.type is not StateType.RUNNING:
        return state, run
    if initial.timestamp is None or state.timestamp is None:
        return state, run
    return state, _replace(run, total_run_time=run.total_run_time + (state.timestamp - initial.timestamp))


def _expected_start_time(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    if run.expected_start_time is not None:
        return state, run
    expected = state.state_details.scheduled_time if state.is_scheduled() else state.timestamp
    return state, _replace(run, expected_start_time=expected)


def _next_scheduled_start_time(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    if state.is_scheduled():
        return state, _replace(run, next_scheduled_start_time=state.state_details.scheduled_time)
    if initial is not None and initial.is_scheduled():
        return state, _replace(run, next_scheduled_start_time=None)
    return state, run


def _flow_state_details(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    details = state.state_details
    task_run_id = run.parent_task_run_id if run.parent_task_run_id is not None else details.task_run_id
    if details.flow_run_id == run.id and details.task_run_id == task_run_id:
        return state, run
    return _replace(state, state_details=_replace(details, flow_run_id=run.id, task_run_id=task_run_id)), run


def _task_state_details(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    details = state.state_details
    if details.flow_run_id == run.flow_run_id and details.task_run_id == run.id:
        return state, run
    return _replace(
        state, state_details=_replace(details, flow_run_id=run.flow_run_id, task_run_id=run.id)
    ), run


def _flow_run_count(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    # A run resuming from a pause is the same attempt, not a new one.
    if state.is_running() and not run.empirical_policy.resuming:
        return state, _replace(run, run_count=run.run_count + 1)
    return state, run


def _remove_resuming_indicator(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    policy = run.empirical_policy
    if policy.resuming and (state.is_running() or state.is_final()):
        return state, _replace(run, empirical_policy=_replace(policy, resuming=False))
    return state, run


def _task_run_count(initial: State | None, state: State, run: RunView) -> tuple[State, RunView]:
    if state.is_running():
        return state, _replace(run, run_count=run.run_count + 1)
    return state, run


_NOTHING: frozenset[StateType | None] = frozenset()
_RUNNING: frozenset[StateType | None] = frozenset({StateType.RUNNING})
_SCHEDULED: frozenset[StateType | None] = frozenset({StateType.SCHEDULED})

_SET_START_TIME = Transform(
    "SetStartTime",
    _start_time,
    "The first Running state sets start_time.",
    leaving=_NOTHING,
    entering=_RUNNING,
)
_SET_END_TIME = Transform(
    "SetEndTime",
    _end_time,
    "The first final state sets end_time (and start_time if the run never ran); leaving a final state clears it.",
    leaving=TERMINAL,
    entering=TERMINAL,
)
_INCREMENT_RUN_TIME = Transform(
    "IncrementRunTime",
    _run_time,
    "Time spent Running is added to total_run_time when the run leaves Running.",
    leaving=_RUNNING,
)
_SET_EXPECTED_START_TIME = Transform(
    "SetExpectedStartTime",
    _expected_start_time,
    "The first state sets expected_start_time: its scheduled time if Scheduled, else its timestamp.",
)
_SET_NEXT_SCHEDULED_START_TIME = Transform(
    "SetNextScheduledStartTime",
    _next_scheduled_start_time,
    "A Scheduled state sets next_scheduled_start_time; leaving Scheduled clears it.",
    leaving=_SCHEDULED,
    entering=_SCHEDULED,
)

#: GlobalFlowPolicy, in Prefect's order.
FLOW_TRANSFORMS: tuple[Transform, ...] = (
    Transform(
        "EnsureFlowRunStateTimestampIsUnique",
        _unique_timestamp,
        "A state's timestamp is moved on by microseconds until no earlier state of the run has it.",
    ),
    _SET_START_TIME,
    _SET_END_TIME,
    _INCREMENT_RUN_TIME,
    _SET_EXPECTED_START_TIME,
    _SET_NEXT_SCHEDULED_START_TIME,
    Transform(
        "UpdateStateDetails",
        _flow_state_details,
        "The state records its flow run (and, for a subflow, its parent task run).",
    ),
    Transform(
        "IncrementFlowRunCount",
        _flow_run_count,
        "Each Running state counts an attempt, unless the run is resuming from a pause.",
        leaving=_NOTHING,
        entering=_RUNNING,
    ),
    Transform(
        "RemoveResumingIndicator",
        _remove_resuming_indicator,
        "A Running or final state ends a resume.",
        leaving=_NOTHING,
        entering=_RUNNING | TERMINAL,
    ),
)

#: GlobalTaskPolicy, in Prefect's order.
TASK_TRANSFORMS: tuple[Transform, ...] = (
    _SET_START_TIME,
    _SET_END_TIME,
    _INCREMENT_RUN_TIME,
    _SET_EXPECTED_START_TIME,
    _SET_NEXT_SCHEDULED_START_TIME,
    Transform("UpdateStateDetails", _task_state_details, "The state records its task run and flow run."),
    Transform(
        "IncrementTaskRunCount",
        _task_run_count,
        "Each Running state counts an attempt.",
        leaving=_NOTHING,
        entering=_RUNNING,
    ),
)
