"""Prefect's global bookkeeping (PREFECT_SEMANTICS §3.3), on the states actually written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowtrail.core import POLICIES, Policy, RunView, State, StateType
from flowtrail.core import states as s
from flowtrail.core.rules import ALL_STATES
from flowtrail.testing import T0, MemoryLog
from tests.core.helpers import NOW, flow_in, later, propose, task_in
from tests.strategies import run_views, states

_POLICIES = sorted(POLICIES.values(), key=lambda p: (p.name, p.version))


def test_the_first_running_state_sets_the_start_time_once() -> None:
    log, run = flow_in(s.Pending(timestamp=T0))
    propose(log, run.id, s.Running())
    propose(log, run.id, s.Running(), when=later(5))
    assert log.view(run.id).start_time == NOW


def test_a_run_that_ends_without_running_starts_and_ends_at_once() -> None:
    """Prefect's test_param_validation_failure_sets_start_and_end_time."""
    log, run = flow_in(s.Pending(timestamp=T0))
    propose(log, run.id, s.Failed())
    view = log.view(run.id)
    assert view.start_time == view.end_time == NOW


def test_leaving_a_final_state_clears_the_end_time_and_the_next_final_state_sets_it() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Failed())
    assert log.view(run.id).end_time == NOW
    propose(log, run.id, s.Running(), when=later(1))
    assert log.view(run.id).end_time is None
    propose(log, run.id, s.Completed(), when=later(2))
    assert log.view(run.id).end_time == later(2)


def test_a_final_state_after_a_final_state_keeps_the_first_end_time() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Failed())
    propose(log, run.id, s.Cancelled(), when=later(3))
    assert log.view(run.id).end_time == NOW


def test_only_time_spent_running_counts_as_run_time() -> None:
    log, run = flow_in(s.Pending(timestamp=T0))
    propose(log, run.id, s.Running(), when=later(0))
    propose(log, run.id, s.Paused(pause_key="1"), when=later(10))
    propose(log, run.id, s.Running(), when=later(100))
    propose(log, run.id, s.Completed(), when=later(103))
    assert log.view(run.id).total_run_time == timedelta(seconds=13)


def test_the_expected_start_time_is_the_first_states_scheduled_time_or_timestamp() -> None:
    log, scheduled = flow_in(s.Scheduled(scheduled_time=later(90), timestamp=T0))
    assert log.view(scheduled.id).expected_start_time == later(90)
    log, pending = flow_in(s.Pending(timestamp=T0))
    propose(log, pending.id, s.Running())
    assert log.view(pending.id).expected_start_time == T0


def test_the_next_scheduled_start_time_follows_scheduled_states() -> None:
    log, run = flow_in(s.Scheduled(scheduled_time=T0, timestamp=T0))
    assert log.view(run.id).next_scheduled_start_time == T0
    propose(log, run.id, s.Pending())
    assert log.view(run.id).next_scheduled_start_time is None


def test_a_scheduled_state_without_a_time_is_scheduled_for_its_timestamp() -> None:
    log, run = flow_in(None)
    decision = propose(log, run.id, s.Scheduled())
    assert decision.state is not None
    assert decision.state.state_details.scheduled_time == NOW


def test_a_flow_run_never_has_two_states_with_one_timestamp() -> None:
    log, run = flow_in(s.Pending(timestamp=NOW))
    decision = propose(log, run.id, s.Running(timestamp=NOW))
    assert decision.state is not None
    assert decision.state.timestamp == NOW + timedelta(microseconds=1)
    again = propose(log, run.id, s.Completed(timestamp=NOW))
    assert again.state is not None
    assert again.state.timestamp == NOW + timedelta(microseconds=2)


def test_written_states_name_their_run() -> None:
    log, task = task_in(s.Pending(timestamp=T0))
    decision = propose(log, task.id, s.Running())
    assert decision.state is not None
    details = decision.state.state_details
    assert (details.task_run_id, details.flow_run_id) == (task.id, task.flow_run_id)


def test_a_subflow_state_is_mirrored_onto_its_parent_task_run() -> None:
    """Prefect's UpdateSubflowParentTask: the parent task run takes a forced copy."""
    log = MemoryLog()
    parent = log.create_flow_run("parent")
    log.propose(parent.id, s.Running(), at=T0, force=True)
    tracker = log.create_task_run(parent.id, "child-flow")
    child = log.create_flow_run("child", parent_task_run_id=tracker.id)
    log.propose(child.id, s.Pending(), at=later(0))
    decision = log.propose(child.id, s.Running(), at=later(1))
    assert decision.state is not None
    assert decision.state.state_details.task_run_id == tracker.id
    task = log.view(tracker.id)
    assert task.state is not None
    assert (task.state.type, task.state.state_details.child_flow_run_id) == (StateType.RUNNING, child.id)
    assert task.run_count == 1
    assert task.last_decision is not None
    assert task.last_decision.policy == "MinimalTaskPolicy"


def test_a_subflow_proposal_that_writes_nothing_is_not_mirrored() -> None:
    log = MemoryLog()
    parent = log.create_flow_run("parent")
    tracker = log.create_task_run(parent.id, "child-flow")
    child = log.create_flow_run("child", parent_task_run_id=tracker.id)
    log.propose(child.id, s.Pending(), at=T0)
    before = len(log.records)
    log.propose(child.id, s.Pending(), at=later(1))  # aborted: a second Pending
    assert len(log.records) == before + 1
    assert log.view(tracker.id).state is not None


# --- where each transform can act ------------------------------------------------------------
# A policy calls a transform only where its ``leaving`` / ``entering`` say it can act; these
# check that it would have given back what it was given everywhere else.


@pytest.mark.parametrize("policy", _POLICIES, ids=lambda p: p.name)
@given(initial=st.none() | states(), state=states(), run=run_views())
def test_a_transform_a_policy_skips_would_have_changed_nothing(
    policy: Policy, initial: State | None, state: State, run: RunView
) -> None:
    source = None if initial is None else initial.type
    called = policy.transforms_for(source, state.type)
    for transform in policy.transforms:
        if transform not in called:
            after_state, after_run = transform.apply(initial, state, run)
            assert (after_state, after_run) == (state, run), transform.name


@pytest.mark.parametrize("policy", _POLICIES, ids=lambda p: p.name)
@given(initial=st.none() | states(), state=states(), run=run_views())
def test_no_transform_changes_the_type_of_the_state_it_writes(
    policy: Policy, initial: State | None, state: State, run: RunView
) -> None:
    for transform in policy.transforms:
        written, _ = transform.apply(initial, state, run)
        assert written.type is state.type, transform.name


@pytest.mark.parametrize("policy", _POLICIES, ids=lambda p: p.name)
def test_a_policy_calls_the_transforms_it_keeps_in_their_order(policy: Policy) -> None:
    for source in ALL_STATES:
        for written in StateType:
            called = policy.transforms_for(source, written)
            assert list(called) == [t for t in policy.transforms if t in called]


def test_a_run_leaving_running_for_a_retry_skips_the_transforms_of_running_and_final_states() -> None:
    flow = POLICIES[("CoreFlowPolicy", 1)]
    names = [t.name for t in flow.transforms_for(StateType.RUNNING, StateType.SCHEDULED)]
    assert names == [
        "EnsureFlowRunStateTimestampIsUnique",
        "IncrementRunTime",
        "SetExpectedStartTime",
        "SetNextScheduledStartTime",
        "UpdateStateDetails",
    ]
