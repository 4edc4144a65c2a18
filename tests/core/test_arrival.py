"""A proposed state is recorded dated at its proposal's time, as Prefect's server
dates a state when it arrives; the in-memory log of `flowtrail.testing` records it so
too, so that its events and chains stay those of the real orchestrator."""

from __future__ import annotations

from datetime import timedelta

from flowtrail.core import states as pure
from flowtrail.core.rules import arrived
from flowtrail.core.states import State, StateType
from flowtrail.testing import T0, MemoryLog

LATER = T0 + timedelta(seconds=60)


def test_a_state_built_with_a_timestamp_is_dated_at_its_proposal() -> None:
    assert arrived(pure.Running(timestamp=T0), LATER).timestamp == LATER


def test_a_state_built_without_a_timestamp_is_dated_at_its_proposal() -> None:
    assert arrived(pure.Running(), LATER).timestamp == LATER


def test_a_scheduled_state_without_a_scheduled_time_stays_scheduled_for_its_own_timestamp() -> None:
    """As `State(type=SCHEDULED, timestamp=...)` was read before the proposal's time
    replaced its timestamp; `Scheduled(timestamp=...)` copies it into scheduled_time."""
    an_hour_on = T0 + timedelta(hours=1)
    for built in (
        State(type=StateType.SCHEDULED, timestamp=an_hour_on),
        pure.Scheduled(timestamp=an_hour_on),
    ):
        recorded = arrived(built, T0)
        assert (recorded.timestamp, recorded.state_details.scheduled_time) == (T0, an_hour_on)


def test_the_in_memory_log_dates_a_proposed_state_as_the_orchestrator_does() -> None:
    log = MemoryLog()
    run = log.create_flow_run()
    log.propose(run.id, pure.Pending(timestamp=T0), at=LATER)
    state = log.views[run.id].state
    assert state is not None
    assert state.timestamp == LATER
