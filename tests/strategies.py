"""Hypothesis strategies for flowtrail's values."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from hypothesis import strategies as st

from flowtrail.core import (
    Bookkeeping,
    Decision,
    EmpiricalPolicy,
    Event,
    Facts,
    FlowRunCreated,
    FlowRunFacts,
    Proposal,
    RunKind,
    RunRenamed,
    RunSettingsUpdated,
    RunView,
    SetStateStatus,
    State,
    StateDetails,
    StateProposed,
    StateType,
    TaskRunCreated,
)
from flowtrail.testing import T0

#: Names a proposal may carry: defaults, Prefect's named states, and some others.
STATE_NAMES = [
    None,
    "Late",
    "AwaitingRetry",
    "Resuming",
    "NotReady",
    "Submitting",
    "Retrying",
    "TimedOut",
    "Suspended",
    "Cached",
    "Pending",
]

moments = st.integers(min_value=0, max_value=10_000_000_000).map(lambda us: T0 + timedelta(microseconds=us))
optional_moments = st.none() | moments
uuids = st.uuids()
short_text = st.text(max_size=12)
_TRANSITION_IDS = [UUID(int=1), UUID(int=2)]
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(short_text, children, max_size=3),
    max_leaves=8,
)
result_data = st.sampled_from(
    [None, {"type": "json", "value": 1}, {"type": "unpersisted", "python_type": "object"}, "text", {}]
)


@st.composite
def state_details(draw: st.DrawFn) -> StateDetails:
    return StateDetails(
        scheduled_time=draw(optional_moments),
        pause_timeout=draw(optional_moments),
        pause_reschedule=draw(st.booleans()),
        pause_key=draw(st.none() | st.sampled_from(["1", "2", "k"])),
        retriable=draw(st.none() | st.booleans()),
        transition_id=draw(st.none() | st.sampled_from(_TRANSITION_IDS)),
        cache_key=draw(st.none() | st.sampled_from(["key", "k" * 2001])),
    )


@st.composite
def states(draw: st.DrawFn, *, timestamped: bool = True) -> State:
    return State(
        type=draw(st.sampled_from(list(StateType))),
        name=draw(st.sampled_from(STATE_NAMES)),
        timestamp=draw(moments) if timestamped else draw(optional_moments),
        message=draw(st.none() | short_text),
        data=draw(result_data),
        state_details=draw(state_details()),
    )


def bookkeeping() -> st.SearchStrategy[Bookkeeping]:
    return st.builds(
        Bookkeeping,
        run_count=st.integers(0, 10),
        flow_run_run_count=st.integers(0, 10),
        start_time=optional_moments,
        end_time=optional_moments,
        total_run_time=st.integers(0, 10**9).map(lambda us: timedelta(microseconds=us)),
        expected_start_time=optional_moments,
        next_scheduled_start_time=optional_moments,
        pause_keys=st.lists(st.sampled_from(["1", "2", "k"]), unique=True).map(tuple),
        resuming=st.booleans(),
        retry_type=st.sampled_from([None, "in_process", "reschedule"]),
    )


@st.composite
def run_views(draw: st.DrawFn) -> RunView:
    """A flow or task run part-way through its life: any state (or none), any counters
    and times, a pause being resumed or not, earlier states' timestamps."""
    kind = draw(st.sampled_from(list(RunKind)))
    state = draw(st.none() | states())
    earlier = draw(st.lists(moments, max_size=3))
    if state is not None and state.timestamp is not None and draw(st.booleans()):
        earlier.append(state.timestamp)  # a state written at the same moment as before
    return RunView(
        id=draw(uuids),
        kind=kind,
        name="run",
        created_at=T0,
        flow_run_id=draw(st.none() | uuids) if kind is RunKind.TASK else None,
        parent_task_run_id=draw(st.none() | uuids) if kind is RunKind.FLOW else None,
        state=state,
        run_count=draw(st.integers(0, 5)),
        start_time=draw(optional_moments),
        end_time=draw(optional_moments),
        total_run_time=timedelta(seconds=draw(st.integers(0, 1000))),
        expected_start_time=draw(optional_moments),
        next_scheduled_start_time=draw(optional_moments),
        empirical_policy=EmpiricalPolicy(
            retries=draw(st.none() | st.integers(0, 3)),
            pause_keys=draw(st.lists(st.sampled_from(["1", "2"]), unique=True).map(tuple)),
            resuming=draw(st.booleans()),
        ),
        version=draw(st.integers(0, 20)),
        state_timestamps=tuple(earlier),
    )


def decisions() -> st.SearchStrategy[Decision]:
    return st.builds(
        Decision,
        status=st.sampled_from(list(SetStateStatus)),
        policy=st.sampled_from(["CoreFlowPolicy", "MinimalTaskPolicy"]),
        policy_version=st.just(1),
        bookkeeping=bookkeeping(),
        state=st.none() | states(),
        rule=st.none() | short_text,
        reason=st.none() | short_text,
        delay_seconds=st.none() | st.integers(0, 10_000),
    )


def events() -> st.SearchStrategy[Event]:
    retry_delays = st.none() | st.integers(0, 100) | st.lists(st.integers(0, 100), max_size=4).map(tuple)
    created_flow = st.builds(
        FlowRunCreated,
        run_id=uuids,
        flow_name=short_text,
        name=short_text,
        created_at=moments,
        parameters=st.dictionaries(short_text, json_values, max_size=3),
        tags=st.lists(short_text, max_size=3).map(tuple),
        parent_task_run_id=st.none() | uuids,
        retries=st.none() | st.integers(0, 5),
        retry_delay=retry_delays,
    )
    created_task = st.builds(
        TaskRunCreated,
        run_id=uuids,
        task_key=short_text,
        dynamic_key=short_text,
        name=short_text,
        created_at=moments,
        flow_run_id=st.none() | uuids,
        retries=st.none() | st.integers(0, 5),
        retry_delay=retry_delays,
        retry_jitter_factor=st.none() | st.floats(0, 2),
    )
    facts = st.builds(
        Facts,
        flow_run=st.none()
        | st.builds(
            FlowRunFacts,
            flow_run_id=uuids,
            version=st.integers(0, 50),
            state_type=st.none() | st.sampled_from(list(StateType)),
        ),
        fresh_key=st.none() | short_text,
        random_draw=st.none() | st.floats(0, 0.999),
    )
    proposed = st.builds(
        StateProposed,
        run_id=uuids,
        proposal=st.builds(
            Proposal, state=states(), proposed_at=moments, force=st.booleans(), proposer=short_text
        ),
        facts=facts,
        decision=decisions(),
    )
    renamed = st.builds(RunRenamed, run_id=uuids, name=short_text, renamed_at=moments)
    updated = st.builds(
        RunSettingsUpdated, run_id=uuids, updated_at=moments, retries=st.none() | st.integers(0, 9)
    )
    return st.one_of(created_flow, created_task, proposed, renamed, updated)
