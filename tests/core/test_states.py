"""The state model: names, defaults, predicates and bad input (PREFECT_SEMANTICS §1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from flowtrail import states
from flowtrail.core import InvalidDataError, InvalidStateError, State, StateDetails, StateType
from flowtrail.core import states as pure

DEFAULT_NAMES = {
    StateType.SCHEDULED: "Scheduled",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CANCELLED: "Cancelled",
    StateType.CRASHED: "Crashed",
    StateType.PAUSED: "Paused",
    StateType.CANCELLING: "Cancelling",
}

NAMED = [
    (states.Late, StateType.SCHEDULED, "Late"),
    (states.AwaitingRetry, StateType.SCHEDULED, "AwaitingRetry"),
    (states.AwaitingConcurrencySlot, StateType.SCHEDULED, "AwaitingConcurrencySlot"),
    (states.NotReady, StateType.PENDING, "NotReady"),
    (states.Submitting, StateType.PENDING, "Submitting"),
    (states.InfrastructurePending, StateType.PENDING, "InfrastructurePending"),
    (states.Retrying, StateType.RUNNING, "Retrying"),
    (states.TimedOut, StateType.FAILED, "TimedOut"),
    (states.Suspended, StateType.PAUSED, "Suspended"),
]


def test_state_types_are_declared_in_prefects_order() -> None:
    assert [t.value for t in StateType] == [
        "SCHEDULED",
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "CRASHED",
        "PAUSED",
        "CANCELLING",
    ]


@pytest.mark.parametrize(("state_type", "name"), DEFAULT_NAMES.items())
def test_a_state_without_a_name_takes_its_types_title(state_type: StateType, name: str) -> None:
    assert State(type=state_type).name == name


@pytest.mark.parametrize(("make", "state_type", "name"), NAMED)
def test_named_constructors_give_prefects_type_and_name(
    make: object, state_type: StateType, name: str
) -> None:
    assert callable(make)
    state = make()
    assert (state.type, state.name) == (state_type, name)


def test_every_constructor_takes_name_message_and_timestamp() -> None:
    moment = datetime(2026, 5, 1, tzinfo=UTC)
    state = states.Completed(name="Cached", message="from cache", timestamp=moment, data={"type": "json"})
    assert (state.name, state.message, state.timestamp, state.data) == (
        "Cached",
        "from cache",
        moment,
        {"type": "json"},
    )


def test_public_constructors_stamp_the_current_time() -> None:
    before = datetime.now(UTC)
    state = states.Running()
    assert state.timestamp is not None
    assert before <= state.timestamp <= datetime.now(UTC)


def test_pure_constructors_leave_the_timestamp_to_the_orchestrator() -> None:
    assert pure.Running().timestamp is None


def test_a_scheduled_state_defaults_its_scheduled_time_to_its_timestamp() -> None:
    state = states.Scheduled()
    assert state.state_details.scheduled_time == state.timestamp


def test_a_pause_timeout_counts_from_the_states_timestamp() -> None:
    moment = datetime(2026, 5, 1, tzinfo=UTC)
    state = states.Paused(timeout_seconds=30, timestamp=moment, pause_key="1")
    details = state.state_details
    assert (details.pause_timeout, details.pause_reschedule, details.pause_key) == (
        moment + timedelta(seconds=30),
        False,
        "1",
    )


def test_suspended_is_a_rescheduling_pause() -> None:
    assert states.Suspended().state_details.pause_reschedule is True


def test_a_pause_takes_a_timeout_or_an_expiration_not_both() -> None:
    with pytest.raises(InvalidStateError):
        states.Paused(timeout_seconds=1, pause_expiration_time=datetime.now(UTC))


@pytest.mark.parametrize(
    ("state_type", "final"),
    [
        (t, t in {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})
        for t in StateType
    ],
)
def test_only_completed_failed_cancelled_and_crashed_are_final(state_type: StateType, final: bool) -> None:
    assert State(type=state_type).is_final() is final


@pytest.mark.parametrize("state_type", list(StateType))
def test_exactly_one_type_predicate_holds(state_type: StateType) -> None:
    state = State(type=state_type)
    predicates = [
        state.is_scheduled(),
        state.is_pending(),
        state.is_running(),
        state.is_completed(),
        state.is_failed(),
        state.is_cancelled(),
        state.is_crashed(),
        state.is_paused(),
        state.is_cancelling(),
    ]
    assert predicates.count(True) == 1


def test_an_unknown_state_type_is_a_typed_error() -> None:
    with pytest.raises(InvalidStateError, match="unknown state type 'DONE'"):
        State(type="DONE")  # type: ignore[arg-type]


def test_a_state_type_given_as_its_value_is_accepted() -> None:
    assert State(type="RUNNING").type is StateType.RUNNING  # type: ignore[arg-type]


def test_a_naive_timestamp_is_a_typed_error() -> None:
    with pytest.raises(InvalidStateError, match="timezone-aware"):
        State(type=StateType.RUNNING, timestamp=datetime(2026, 1, 1))


def test_a_naive_detail_time_is_a_typed_error() -> None:
    with pytest.raises(InvalidStateError, match="scheduled_time"):
        StateDetails(scheduled_time=datetime(2026, 1, 1))


def test_an_aware_time_in_another_zone_is_kept_as_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    state = State(type=StateType.RUNNING, timestamp=datetime(2026, 1, 1, 9, tzinfo=tokyo))
    assert state.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert state.timestamp is not None
    assert state.timestamp.tzinfo is UTC


@pytest.mark.parametrize(
    "data",
    [
        {1, 2},
        (1, 2),
        float("nan"),
        float("inf"),
        {"a": object()},
        {1: "int key"},
        b"bytes",
        [[float("-inf")]],
    ],
)
def test_data_that_is_not_json_is_a_typed_error(data: object) -> None:
    with pytest.raises(InvalidDataError):
        states.Completed(data=data)


def test_deeply_nested_data_is_a_typed_error() -> None:
    data: object = 0
    for _ in range(100):
        data = [data]
    with pytest.raises(InvalidDataError, match="deeper"):
        states.Completed(data=data)


def test_state_details_keep_prefects_field_names() -> None:
    assert set(StateDetails.__struct_fields__) >= {
        "flow_run_id",
        "task_run_id",
        "child_flow_run_id",
        "scheduled_time",
        "cache_key",
        "cache_expiration",
        "pause_timeout",
        "pause_reschedule",
        "pause_key",
        "retriable",
        "transition_id",
    }


def test_states_are_frozen_values() -> None:
    state = State(type=StateType.RUNNING, state_details=StateDetails(flow_run_id=UUID(int=1)))
    with pytest.raises(AttributeError):
        state.name = "x"  # type: ignore[misc]
    assert state == State(type=StateType.RUNNING, state_details=StateDetails(flow_run_id=UUID(int=1)))
