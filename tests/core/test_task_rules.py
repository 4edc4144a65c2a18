"""CoreTaskPolicy's context-dependent cells (the footnotes of PREFECT_SEMANTICS §5.2)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from flowtrail.core import SetStateStatus as Status
from flowtrail.core import State, StateDetails, StateType
from flowtrail.core import states as s
from flowtrail.core.task_rules import clamped_poisson_interval
from flowtrail.testing import T0, MemoryLog
from tests.core.helpers import NOW, initial_state, later, propose, task_in

PERSISTED = {"type": "json", "value": [1, 2, 3]}


# --- the enclosing flow run ---------------------------------------------------------------------


def test_a_task_cannot_start_in_a_flow_run_with_no_state() -> None:
    log = MemoryLog()
    flow = log.create_flow_run()
    task = log.create_task_run(flow.id)
    decision = log.propose(task.id, s.Running(), at=NOW)
    assert (decision.status, decision.reason) == (
        Status.ABORT,
        "The enclosing flow must be running to begin task execution.",
    )


@pytest.mark.parametrize("source", [None, *StateType])
def test_a_task_of_a_completed_flow_cannot_start(source: StateType | None) -> None:
    """Measured in Prefect: the whole RUNNING column is ABORT for a COMPLETED flow."""
    log, task = task_in(
        None if source is None else initial_state(source), flow_state=s.Completed(timestamp=T0)
    )
    decision = propose(log, task.id, s.Running())
    assert (decision.status, decision.state) == (Status.ABORT, None)


@pytest.mark.parametrize("source", [None, StateType.PENDING, StateType.RUNNING, StateType.FAILED])
def test_a_task_of_a_paused_flow_is_paused_not_ready(source: StateType | None) -> None:
    timeout = T0 + timedelta(minutes=10)
    log, task = task_in(
        None if source is None else initial_state(source),
        flow_state=s.Paused(pause_expiration_time=timeout, timestamp=T0),
    )
    decision = propose(log, task.id, s.Running())
    assert decision.status is Status.REJECT
    written = decision.state
    assert written is not None
    assert (written.type, written.name, written.state_details.pause_timeout) == (
        StateType.PAUSED,
        "NotReady",
        timeout,
    )
    assert decision.reason is not None
    assert decision.reason.startswith("The flow is paused, new tasks can execute after resuming flow run: ")


def test_a_task_without_a_flow_run_needs_no_running_flow() -> None:
    log = MemoryLog()
    task = log.create_task_run(None)
    assert log.propose(task.id, s.Running(), at=NOW).status is Status.ACCEPT


def test_a_running_task_remembers_its_flow_runs_attempt() -> None:
    log, task = task_in(None, flow_run_count=3)
    propose(log, task.id, s.Running())
    assert log.view(task.id).flow_run_run_count == 3


# --- scheduled time and renames -----------------------------------------------------------------


def test_a_task_waits_for_its_scheduled_time() -> None:
    log, task = task_in(s.Scheduled(scheduled_time=later(12), timestamp=T0))
    decision = propose(log, task.id, s.Running())
    assert (decision.status, decision.delay_seconds) == (Status.WAIT, 12)


def test_a_pending_task_carrying_a_scheduled_time_waits_for_it() -> None:
    log, task = task_in(s.Pending(timestamp=T0, state_details=StateDetails(scheduled_time=later(7))))
    decision = propose(log, task.id, s.Running())
    assert (decision.status, decision.delay_seconds) == (Status.WAIT, 7)


def test_a_task_running_again_after_awaiting_retry_is_named_retrying() -> None:
    log, task = task_in(s.Running(timestamp=T0), retries=1)
    propose(log, task.id, s.Failed())
    decision = propose(log, task.id, s.Running(), when=later(1))
    assert decision.state is not None
    assert decision.state.name == "Retrying"


def test_a_task_running_twice_in_a_row_is_named_rerunning() -> None:
    log, task = task_in(s.Running(timestamp=T0))
    decision = propose(log, task.id, s.Running())
    assert decision.state is not None
    assert decision.state.name == "Rerunning"


# --- retries ----------------------------------------------------------------------------------------


def test_a_task_failure_with_retries_left_becomes_awaiting_retry() -> None:
    log, task = task_in(s.Running(timestamp=T0), retries=2, retry_delay=5)
    decision = propose(log, task.id, s.Failed(message="bad"))
    assert decision.status is Status.REJECT
    assert decision.state is not None
    assert decision.state.name == "AwaitingRetry"
    assert decision.state.state_details.scheduled_time == NOW + timedelta(seconds=5)


def test_a_failure_marked_not_retriable_is_accepted() -> None:
    log, task = task_in(s.Running(timestamp=T0), retries=2)
    decision = propose(log, task.id, s.Failed(state_details=StateDetails(retriable=False)))
    assert decision.status is Status.ACCEPT


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1), (2, 10), (3, 100), (4, 100)])
def test_a_list_of_retry_delays_gives_one_delay_per_attempt(attempt: int, delay: int) -> None:
    log, task = task_in(s.Running(timestamp=T0), retries=5, retry_delay=(1, 10, 100))
    for n in range(1, attempt):
        propose(log, task.id, s.Failed(), when=later(n * 1000))
        propose(log, task.id, s.Running(), when=later(n * 1000 + 500))
    when = later(attempt * 1000)
    decision = propose(log, task.id, s.Failed(), when=when)
    assert decision.state is not None
    assert decision.state.state_details.scheduled_time == when + timedelta(seconds=delay)


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.75, 0.999999])
def test_jitter_keeps_the_retry_delay_within_prefects_clamp(draw: float) -> None:
    jittered = clamped_poisson_interval(10.0, 0.5, draw)
    lower = math.log(2**1.5 / (2**1.5 - 1), 2)  # Prefect's lower clamp for an upper multiple of 1.5
    assert 10.0 * lower - 1e-9 <= jittered <= 10.0 * 1.5 + 1e-9


def test_a_jittered_retry_delay_is_decided_from_the_recorded_draw() -> None:
    log, task = task_in(s.Running(timestamp=T0), retries=1, retry_delay=10, retry_jitter_factor=0.5)
    decision = propose(log, task.id, s.Failed(), random_draw=0.25)
    assert decision.state is not None
    expected = NOW + timedelta(seconds=clamped_poisson_interval(10.0, 0.5, 0.25))
    assert decision.state.state_details.scheduled_time == expected


def test_force_skips_task_retries() -> None:
    log, task = task_in(s.Running(timestamp=T0), retries=3)
    decision = propose(log, task.id, s.Failed(), force=True)
    assert (decision.status, decision.policy) == (Status.ACCEPT, "MinimalTaskPolicy")


# --- leaving final states ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.FAILED]
)
def test_a_task_with_a_persisted_result_stays_completed(target: StateType) -> None:
    log, task = task_in(s.Completed(data=PERSISTED, timestamp=T0))
    decision = propose(log, task.id, State(type=target))
    assert (decision.status, decision.state, decision.reason) == (
        Status.REJECT,
        None,
        "This run is already completed.",
    )


@pytest.mark.parametrize("target", [StateType.CRASHED, StateType.PAUSED, StateType.CANCELLING])
def test_a_finished_task_cannot_crash_pause_or_cancel(target: StateType) -> None:
    log, task = task_in(s.Completed(data=PERSISTED, timestamp=T0))
    decision = propose(log, task.id, State(type=target))
    assert (decision.status, decision.reason) == (Status.ABORT, "Run is already COMPLETED.")


def test_non_dict_result_data_counts_as_persisted_for_tasks() -> None:
    """Prefect errors on truthy non-dict data here; flowtrail keeps the result instead."""
    log, task = task_in(s.Completed(data="result", timestamp=T0))
    assert propose(log, task.id, s.Running()).status is Status.REJECT


def test_leaving_a_final_state_resets_the_tasks_run_count() -> None:
    log, task = task_in(s.Running(timestamp=T0))
    propose(log, task.id, s.Running(), when=later(1))
    assert log.view(task.id).run_count == 2
    propose(log, task.id, s.Failed(), when=later(2))
    propose(log, task.id, s.Running(), when=later(3))
    assert log.view(task.id).run_count == 1


def test_a_rerun_in_the_same_flow_attempt_is_plain_running() -> None:
    log, task = task_in(s.Pending(timestamp=T0), flow_run_count=1)
    propose(log, task.id, s.Running())  # the tracker: flow_run_run_count is now 1
    propose(log, task.id, s.Completed(), when=later(1))
    decision = propose(log, task.id, s.Running(), when=later(2))
    assert decision.state is not None
    assert decision.state.name == "Running"


def test_a_task_without_a_flow_run_reruns_as_plain_running() -> None:
    log = MemoryLog()
    task = log.create_task_run(None)
    log.propose(task.id, s.Failed(), at=T0, force=True)
    decision = log.propose(task.id, s.Running(), at=NOW)
    assert decision.state is not None
    assert decision.state.name == "Running"


# --- tasks differ from flows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (StateType.PENDING, StateType.PENDING),
        (StateType.RUNNING, StateType.PENDING),
        (StateType.FAILED, StateType.SCHEDULED),
    ],
)
def test_tasks_have_no_pending_protection_or_reschedule_restriction(
    source: StateType, target: StateType
) -> None:
    log, task = task_in(initial_state(source))
    assert propose(log, task.id, State(type=target)).status is Status.ACCEPT


def test_an_overlong_cache_key_is_rejected_but_written() -> None:
    log, task = task_in(s.Running(timestamp=T0))
    proposed = s.Completed(state_details=StateDetails(cache_key="k" * 2001))
    decision = propose(log, task.id, proposed)
    assert decision.status is Status.REJECT
    assert decision.state is not None
    assert decision.state.type is StateType.COMPLETED
    assert log.view(task.id).state == decision.state
