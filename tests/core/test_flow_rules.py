"""CoreFlowPolicy's context-dependent cells (the footnotes of PREFECT_SEMANTICS §5.1)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import pytest

from flowtrail.core import SetStateStatus as Status
from flowtrail.core import State, StateDetails, StateType
from flowtrail.core import states as s
from flowtrail.testing import T0, MemoryLog, run_id_for
from tests.core.helpers import NOW, flow_in, initial_state, later, propose

DEPLOYMENT = run_id_for("deployment")
PERSISTED = {"type": "json", "value": 42}
UNPERSISTED = {"type": "unpersisted", "python_type": "object"}


# --- duplicate transitions ---------------------------------------------------------------


@pytest.mark.parametrize("target", list(StateType))
def test_a_proposal_repeating_the_current_transition_id_keeps_the_current_state(target: StateType) -> None:
    """The same non-null transition id on the current and proposed state is a retried request."""
    transition = UUID(int=7)
    log, run = flow_in(s.Running(timestamp=T0, state_details=StateDetails(transition_id=transition)))
    decision = propose(log, run.id, State(type=target, state_details=StateDetails(transition_id=transition)))
    assert decision.status is Status.REJECT
    assert decision.state is None
    assert decision.rule == "PreventDuplicateTransitions"
    assert decision.reason == "This run has already made this state transition."


def test_a_new_transition_id_is_accepted() -> None:
    """Different transition ids are different requests."""
    log, run = flow_in(s.Running(timestamp=T0, state_details=StateDetails(transition_id=UUID(int=1))))
    decision = propose(log, run.id, s.Completed(state_details=StateDetails(transition_id=UUID(int=2))))
    assert decision.status is Status.ACCEPT


# --- Late -----------------------------------------------------------------------------------


def test_a_scheduled_run_can_be_marked_late() -> None:
    log, run = flow_in(initial_state(StateType.SCHEDULED))
    decision = propose(log, run.id, s.Late())
    assert decision.status is Status.ACCEPT
    assert decision.state is not None
    assert decision.state.name == "Late"


def test_a_late_run_cannot_be_marked_late_again() -> None:
    log, run = flow_in(s.Late(scheduled_time=T0, timestamp=T0))
    decision = propose(log, run.id, s.Late())
    assert (decision.status, decision.state, decision.reason) == (
        Status.REJECT,
        None,
        "This flow run is already marked late.",
    )


@pytest.mark.parametrize("source", [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING])
def test_only_a_scheduled_run_can_be_marked_late(source: StateType) -> None:
    log, run = flow_in(initial_state(source))
    decision = propose(log, run.id, s.Late())
    assert decision.status is Status.REJECT
    assert decision.state is None


@pytest.mark.parametrize("source", [StateType.COMPLETED, StateType.FAILED])
def test_marking_a_finished_run_late_without_a_deployment_aborts(source: StateType) -> None:
    """The terminal-state rule fires first: rescheduling needs a deployment."""
    log, run = flow_in(initial_state(source))
    decision = propose(log, run.id, s.Late())
    assert decision.status is Status.ABORT
    assert decision.reason == "Cannot reschedule a run without an associated deployment."


# --- scheduled time ---------------------------------------------------------------------------


def test_running_before_the_scheduled_time_waits_the_seconds_left() -> None:
    """Measured in Prefect: W300 for a run scheduled five minutes ahead."""
    log, run = flow_in(s.Scheduled(scheduled_time=NOW + timedelta(minutes=5), timestamp=T0))
    decision = propose(log, run.id, s.Running())
    assert (decision.status, decision.delay_seconds, decision.reason) == (
        Status.WAIT,
        300,
        "Scheduled time is in the future",
    )


@pytest.mark.parametrize(
    ("ahead", "expected"), [(2.4, Status.WAIT), (0.4, Status.ACCEPT), (0.6, Status.WAIT), (-3, Status.ACCEPT)]
)
def test_the_wait_is_rounded_to_whole_seconds_as_prefect_rounds_it(ahead: float, expected: Status) -> None:
    log, run = flow_in(s.Scheduled(scheduled_time=NOW + timedelta(seconds=ahead), timestamp=T0))
    decision = propose(log, run.id, s.Running())
    assert decision.status is expected
    if expected is Status.WAIT:
        assert decision.delay_seconds == round(ahead)


def test_a_pending_state_keeps_the_scheduled_time_and_still_waits_for_it() -> None:
    """CopyScheduledTime carries the time onto Pending; WaitForScheduledTime reads it there."""
    log, run = flow_in(s.Scheduled(scheduled_time=later(30), timestamp=T0))
    pending = propose(log, run.id, s.Pending())
    assert pending.state is not None
    assert pending.state.state_details.scheduled_time == later(30)
    decision = propose(log, run.id, s.Running())
    assert (decision.status, decision.delay_seconds) == (Status.WAIT, 30)


def test_a_wait_records_no_state_and_leaves_run_count_alone() -> None:
    log, run = flow_in(s.Scheduled(scheduled_time=later(30), timestamp=T0))
    propose(log, run.id, s.Running())
    assert log.view(run.id).state == run.state
    assert log.view(run.id).run_count == 0


# --- cancelling ----------------------------------------------------------------------------


def test_cancelling_a_scheduled_run_with_a_process_is_accepted() -> None:
    log, run = flow_in(initial_state(StateType.SCHEDULED), infrastructure_pid="4242")
    assert propose(log, run.id, s.Cancelling()).status is Status.ACCEPT


def test_cancelling_a_resuming_run_cancels_it_even_with_a_process() -> None:
    log, run = flow_in(
        s.Scheduled(name="Resuming", scheduled_time=T0, timestamp=T0), infrastructure_pid="4242"
    )
    decision = propose(log, run.id, s.Cancelling())
    assert decision.status is Status.REJECT
    assert decision.state is not None
    assert decision.state.type is StateType.CANCELLED
    assert decision.reason == "Scheduled flow run has no infrastructure to terminate."


def test_cancelling_a_suspended_run_cancels_it() -> None:
    log, run = flow_in(s.Suspended(timestamp=T0), deployment_id=DEPLOYMENT)
    decision = propose(log, run.id, s.Cancelling())
    assert decision.state is not None
    assert decision.state.type is StateType.CANCELLED
    assert decision.reason == "Suspended flow run has no infrastructure to terminate."


def test_a_cancelling_run_rejects_pending_rather_than_aborting() -> None:
    """EnforceCancellingToCancelledTransition comes before PreventPendingTransitions."""
    log, run = flow_in(initial_state(StateType.CANCELLING))
    decision = propose(log, run.id, s.Pending())
    assert decision.rule == "EnforceCancellingToCancelledTransition"
    assert decision.status is Status.REJECT


# --- pending ---------------------------------------------------------------------------------


def test_named_pending_sub_states_may_follow_each_other() -> None:
    """Pending -> Submitting -> InfrastructurePending is allowed; back to Pending is not."""
    log, run = flow_in(s.Pending(timestamp=T0, state_details=StateDetails(scheduled_time=T0)))
    submitting = propose(log, run.id, s.Submitting())
    assert submitting.status is Status.ACCEPT
    assert submitting.state is not None
    assert submitting.state.state_details.scheduled_time == T0
    assert propose(log, run.id, s.InfrastructurePending(), when=later(1)).status is Status.ACCEPT
    back = propose(log, run.id, s.Pending(), when=later(2))
    assert back.status is Status.ABORT
    assert back.reason == "This run is in a PENDING state and cannot transition to a PENDING state."


def test_the_same_pending_sub_state_twice_aborts() -> None:
    log, run = flow_in(s.Submitting(timestamp=T0))
    assert propose(log, run.id, s.Submitting()).status is Status.ABORT


# --- retries -----------------------------------------------------------------------------------


def test_a_failure_with_retries_left_becomes_awaiting_retry_after_the_delay() -> None:
    log, run = flow_in(s.Running(timestamp=T0), retries=2, retry_delay=10)
    decision = propose(log, run.id, s.Failed(message="boom", data={"error": "x"}))
    assert decision.status is Status.REJECT
    assert decision.reason == "Retrying"
    written = decision.state
    assert written is not None
    assert (written.type, written.name, written.message, written.data) == (
        StateType.SCHEDULED,
        "AwaitingRetry",
        "boom",
        {"error": "x"},
    )
    assert written.state_details.scheduled_time == NOW + timedelta(seconds=10)
    assert decision.bookkeeping.retry_type == "in_process"


def test_a_failure_after_the_last_retry_is_accepted_and_clears_the_retry_type() -> None:
    log, run = flow_in(s.Running(timestamp=T0), retries=1)
    propose(log, run.id, s.Failed())
    propose(log, run.id, s.Running(), when=later(1))
    assert log.view(run.id).run_count == 2
    final = propose(log, run.id, s.Failed(), when=later(2))
    assert final.status is Status.ACCEPT
    assert final.bookkeeping.retry_type is None


def test_crashed_is_never_retried() -> None:
    log, run = flow_in(s.Running(timestamp=T0), retries=3)
    assert propose(log, run.id, s.Crashed()).status is Status.ACCEPT


def test_a_flow_retry_resets_pause_bookkeeping() -> None:
    # retries=2: resuming the blocking pause below counts a second attempt.
    log, run = flow_in(s.Running(timestamp=T0), retries=2)
    propose(log, run.id, s.Paused(pause_key="p1"))
    propose(log, run.id, s.Running(), when=later(1))
    assert log.view(run.id).empirical_policy.pause_keys == ("p1",)
    propose(log, run.id, s.Failed(), when=later(2))
    assert log.view(run.id).empirical_policy.pause_keys == ()


# --- pausing -----------------------------------------------------------------------------------


def test_a_pause_records_its_key_and_the_same_key_cannot_fire_twice() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    first = propose(log, run.id, s.Paused(pause_key="1"))
    assert first.status is Status.ACCEPT
    assert log.view(run.id).empirical_policy.pause_keys == ("1",)
    propose(log, run.id, s.Running(), when=later(1))
    again = propose(log, run.id, s.Paused(pause_key="1"), when=later(2))
    assert (again.status, again.state, again.reason) == (Status.REJECT, None, "This pause has already fired.")


def test_a_pause_without_a_key_records_the_key_drawn_for_it() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Paused(), fresh_key="drawn-1")
    assert log.view(run.id).empirical_policy.pause_keys == ("drawn-1",)


def test_a_run_that_is_not_running_cannot_pause() -> None:
    log, run = flow_in(initial_state(StateType.PENDING))
    decision = propose(log, run.id, s.Paused())
    assert decision.reason == "Cannot pause flows that are not currently running."


def test_a_subflow_cannot_suspend() -> None:
    log = MemoryLog()
    parent_task = log.create_task_run(None, "subflow-tracker")
    log, run = flow_in(
        s.Running(timestamp=T0), log, parent_task_run_id=parent_task.id, deployment_id=DEPLOYMENT
    )
    decision = propose(log, run.id, s.Suspended(pause_key="k"))
    assert (decision.status, decision.reason) == (Status.ABORT, "Cannot suspend subflows.")


def test_a_flow_without_a_deployment_cannot_suspend() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    decision = propose(log, run.id, s.Suspended(pause_key="k"))
    assert (decision.status, decision.reason) == (Status.ABORT, "Cannot suspend flows without a deployment.")


def test_a_deployed_flow_can_suspend() -> None:
    log, run = flow_in(s.Running(timestamp=T0), deployment_id=DEPLOYMENT)
    assert propose(log, run.id, s.Suspended(pause_key="k")).status is Status.ACCEPT


# --- resuming ----------------------------------------------------------------------------------


def test_resuming_a_blocking_pause_counts_a_new_attempt_and_marks_the_run_resuming() -> None:
    """Measured in Prefect: run_count 1 -> 2, resuming left True until the next Running or final state."""
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Paused(pause_key="1"))
    propose(log, run.id, s.Running(), when=later(1))
    view = log.view(run.id)
    assert view.run_count == 2
    assert view.empirical_policy.resuming is True
    propose(log, run.id, s.Completed(), when=later(2))
    assert log.view(run.id).empirical_policy.resuming is False


def test_resuming_a_suspension_through_scheduled_does_not_count_a_new_attempt() -> None:
    """Measured in Prefect: PAUSED -> Scheduled "Resuming" -> Pending -> Running keeps run_count 1."""
    log, run = flow_in(s.Running(timestamp=T0), deployment_id=DEPLOYMENT)
    propose(log, run.id, s.Suspended(pause_key="1"))
    propose(log, run.id, s.Scheduled(name="Resuming", scheduled_time=later(1)), when=later(1))
    propose(log, run.id, s.Pending(), when=later(2))
    running = propose(log, run.id, s.Running(), when=later(3))
    assert running.status is Status.ACCEPT
    assert log.view(run.id).run_count == 1


def test_leaving_a_blocking_pause_for_scheduled_resets_pause_bookkeeping() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Paused(pause_key="1"))
    propose(log, run.id, s.Scheduled(), when=later(1))
    policy = log.view(run.id).empirical_policy
    assert (policy.pause_keys, policy.resuming, policy.retry_type) == ((), False, "reschedule")


@pytest.mark.parametrize(
    "target", [StateType.SCHEDULED, StateType.RUNNING, StateType.COMPLETED, StateType.FAILED]
)
def test_a_suspended_run_without_a_deployment_cannot_leave_the_pause(target: StateType) -> None:
    log, run = flow_in(s.Suspended(timestamp=T0))
    decision = propose(log, run.id, State(type=target))
    assert (decision.status, decision.state) == (Status.REJECT, None)
    assert decision.reason is not None
    assert decision.reason.startswith("Cannot reschedule a ")


@pytest.mark.parametrize(
    "target", [StateType.SCHEDULED, StateType.RUNNING, StateType.COMPLETED, StateType.CRASHED]
)
def test_a_pause_past_its_timeout_fails_instead_of_resuming(target: StateType) -> None:
    log, run = flow_in(s.Paused(pause_expiration_time=T0 + timedelta(seconds=5), timestamp=T0))
    decision = propose(log, run.id, State(type=target))
    assert decision.status is Status.REJECT
    assert decision.state is not None
    assert decision.state.type is StateType.FAILED
    name = State(type=target).name
    assert name is not None
    assert decision.state.message == f"The flow was {name.lower()} and never resumed."
    assert decision.reason == "The flow run pause has timed out and can no longer resume."


def test_a_paused_run_can_be_cancelled_after_its_timeout() -> None:
    log, run = flow_in(s.Paused(pause_expiration_time=T0 + timedelta(seconds=5), timestamp=T0))
    assert propose(log, run.id, s.Cancelling()).status is Status.ACCEPT


# --- leaving final states ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
)
def test_a_deployed_finished_run_can_be_rescheduled(source: StateType) -> None:
    log, run = flow_in(initial_state(source), deployment_id=DEPLOYMENT)
    decision = propose(log, run.id, s.Scheduled())
    assert decision.status is Status.ACCEPT
    assert decision.bookkeeping.retry_type == "reschedule"


def test_a_completed_run_with_a_persisted_result_is_not_rescheduled() -> None:
    log, run = flow_in(s.Completed(data=PERSISTED, timestamp=T0), deployment_id=DEPLOYMENT)
    decision = propose(log, run.id, s.Scheduled())
    assert (decision.status, decision.reason) == (Status.REJECT, "Run is already COMPLETED.")


@pytest.mark.parametrize("target", [StateType.PENDING, StateType.RUNNING])
def test_a_completed_run_with_a_persisted_result_cannot_run_again(target: StateType) -> None:
    log, run = flow_in(s.Completed(data=PERSISTED, timestamp=T0))
    decision = propose(log, run.id, State(type=target))
    assert (decision.status, decision.state) == (Status.REJECT, None)


@pytest.mark.parametrize("data", [None, UNPERSISTED, "a string", [1, 2]])
def test_a_completed_run_without_a_persisted_result_can_run_again(data: object) -> None:
    """Only a dict that is not the unpersisted marker is a persisted result."""
    log, run = flow_in(s.Completed(data=data, timestamp=T0))
    assert propose(log, run.id, s.Running()).status is Status.ACCEPT


def test_a_persisted_result_cannot_be_overwritten_by_a_completed_state_without_one() -> None:
    log, run = flow_in(s.Completed(data=PERSISTED, timestamp=T0))
    decision = propose(log, run.id, s.Completed())
    assert (decision.status, decision.state) == (Status.REJECT, None)
    assert propose(log, run.id, s.Completed(data={"type": "json", "value": 1})).status is Status.ACCEPT


def test_leaving_a_final_state_keeps_run_count_and_resets_pauses() -> None:
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Paused(pause_key="1"))
    propose(log, run.id, s.Running(), when=later(1))
    propose(log, run.id, s.Failed(), when=later(2))
    before = log.view(run.id)
    propose(log, run.id, s.Running(), when=later(3))
    view = log.view(run.id)
    assert view.run_count == before.run_count + 1
    assert view.empirical_policy.pause_keys == ()


def test_a_rule_that_fizzles_leaves_no_effect_behind() -> None:
    """Cancelled -> Pending: the terminal rule's pause reset is undone when Pending aborts."""
    log, run = flow_in(s.Running(timestamp=T0))
    propose(log, run.id, s.Paused(pause_key="1"))
    propose(log, run.id, s.Cancelled(), when=later(1))
    decision = propose(log, run.id, s.Pending(), when=later(2))
    assert decision.status is Status.ABORT
    assert decision.bookkeeping.pause_keys == ("1",)


# --- force ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "proposed"),
    [
        (s.Scheduled(scheduled_time=T0 + timedelta(days=1), timestamp=T0), s.Running()),
        (s.Pending(timestamp=T0), s.Pending()),
        (s.Completed(timestamp=T0), s.Crashed()),
        (s.Pending(timestamp=T0), s.Paused()),
        (s.Cancelling(timestamp=T0), s.Running()),
        (s.Cancelling(timestamp=T0), s.Completed()),
    ],
)
def test_force_skips_the_core_rules(current: State, proposed: State) -> None:
    log, run = flow_in(current)
    decision = propose(log, run.id, proposed, force=True)
    assert decision.status is Status.ACCEPT
    assert decision.policy == "MinimalFlowPolicy"


def test_force_cannot_overwrite_a_persisted_result_with_none() -> None:
    log, run = flow_in(s.Completed(data=PERSISTED, timestamp=T0))
    decision = propose(log, run.id, s.Completed(), force=True)
    assert (decision.status, decision.state, decision.rule) == (Status.REJECT, None, "PreventResultDataLoss")


@pytest.mark.parametrize("current", [s.Scheduled(scheduled_time=T0, timestamp=T0), s.Suspended(timestamp=T0)])
def test_force_still_cancels_a_run_with_no_process_at_once(current: State) -> None:
    log, run = flow_in(current, deployment_id=DEPLOYMENT)
    decision = propose(log, run.id, s.Cancelling(), force=True)
    assert decision.state is not None
    assert decision.state.type is StateType.CANCELLED


def test_force_still_applies_the_bookkeeping() -> None:
    log, run = flow_in(None)
    propose(log, run.id, s.Running(), force=True)
    propose(log, run.id, s.Crashed(), force=True, when=later(5))
    view = log.view(run.id)
    assert (view.run_count, view.start_time, view.end_time) == (1, NOW, later(5))


def test_a_memory_log_propose_of_an_unknown_run_is_a_typed_error() -> None:
    from flowtrail.core import RunNotFoundError

    with pytest.raises(RunNotFoundError):
        MemoryLog().propose(run_id_for("nobody"), s.Running())


# --- the late-runs marker's policy -----------------------------------------------------------


def test_the_late_runs_policy_marks_a_scheduled_run_late_and_nothing_else() -> None:
    from flowtrail.core import MarkLateRunsPolicy, verify

    log, run = flow_in(initial_state(StateType.SCHEDULED))
    late = propose(log, run.id, s.Late(), policy=MarkLateRunsPolicy)
    assert (late.status, late.policy) == (Status.ACCEPT, "MarkLateRunsPolicy")
    again = propose(log, run.id, s.Late(), policy=MarkLateRunsPolicy, when=later(1))
    assert (again.status, again.reason) == (Status.REJECT, "This flow run is already marked late.")
    assert verify(log.records).ok


def test_a_decision_naming_an_unknown_policy_is_a_typed_error() -> None:
    from flowtrail.core import PolicyNotFoundError, policy_named

    with pytest.raises(PolicyNotFoundError, match="CoreFlowPolicy"):
        policy_named("CoreFlowPolicy", 99)
