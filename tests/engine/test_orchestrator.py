"""The Orchestrator API of DESIGN §8, against the sync and the async orchestrator."""

from __future__ import annotations

import asyncio
import contextvars
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import msgspec
import pytest

from flowtrail import Orchestrator, SetStateStatus, StateType, SyncOrchestrator, states
from flowtrail.core import (
    ContentionError,
    FlowRunCreated,
    InvalidDataError,
    InvalidIdError,
    InvalidInputError,
    InvalidVersionError,
    ProjectionReplacedError,
    RunNotFoundError,
    StateProposed,
    StoreBusyError,
)
from flowtrail.core.effects import Begin, Commit, Execute, Fetch, Script
from flowtrail.engine import operations
from flowtrail.engine.audit import prepare_catch_up
from flowtrail.engine.ids import new_run_id
from flowtrail.engine.maintenance import catch_up_script
from flowtrail.engine.operations import OPTIMISTIC_ATTEMPTS
from flowtrail.projections import DecisionStats
from flowtrail.store import StreamWrite, scripts
from flowtrail.testing import T0
from tests.conftest import POSTGRES_DSN, Databases
from tests.engine.conftest import Orch, parent_with_subflow

Status = SetStateStatus


# --- creating runs -----------------------------------------------------------------------------


def test_a_flow_run_is_created_with_its_settings(orch: Orch) -> None:
    run = orch.create_flow_run(
        "etl",
        parameters={"n": 1},
        tags=["nightly", "team"],
        retries=2,
        retry_delay=5,
        name="etl-mon",
        infrastructure_pid=4242,
        flow_version="1.0",
    )
    view = orch.read_flow_run(run.id)
    assert (
        view.flow_name,
        view.name,
        view.parameters,
        view.tags,
        view.infrastructure_pid,
        view.flow_version,
    ) == (
        "etl",
        "etl-mon",
        {"n": 1},
        ("nightly", "team"),
        "4242",
        "1.0",
    )
    assert (view.empirical_policy.retries, view.empirical_policy.retry_delay) == (2, 5)
    assert view.state is None
    assert view.version == 1


def test_a_flow_run_without_a_name_gets_a_random_two_word_name(orch: Orch) -> None:
    name = orch.create_flow_run("etl").name
    assert len(name.split("-")) == 2


def test_a_flow_run_created_with_a_state_has_it_set_with_force(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Running())
    assert run.state is not None
    assert run.state.type is StateType.RUNNING
    assert run.run_count == 1
    assert run.last_decision is not None
    assert run.last_decision.policy == "MinimalFlowPolicy"


def test_the_same_idempotency_key_returns_the_first_run_and_creates_nothing(orch: Orch) -> None:
    first = orch.create_flow_run("etl", idempotency_key="etl-2026-01-01")
    again = orch.create_flow_run("etl", idempotency_key="etl-2026-01-01", parameters={"other": True})
    assert again.id == first.id
    assert len(orch.read_flow_runs()) == 1


def test_concurrent_creations_with_one_key_create_one_run(orch: Orch) -> None:
    results = orch.gather([("create_flow_run", ("etl",), {"idempotency_key": "once"}) for _ in range(6)])
    assert len({r.id for r in results}) == 1
    assert len(orch.read_flow_runs()) == 1


def test_a_task_run_is_created_once_per_flow_run_task_key_and_dynamic_key(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    first = orch.create_task_run(flow.id, task_key="load", dynamic_key="0", retries=3, retry_delay=[1, 10])
    again = orch.create_task_run(flow.id, task_key="load", dynamic_key="0")
    other = orch.create_task_run(flow.id, task_key="load", dynamic_key="1")
    assert again.id == first.id
    assert other.id != first.id
    view = orch.read_task_run(first.id)
    assert (view.flow_run_id, view.task_key, view.dynamic_key, view.name) == (flow.id, "load", "0", "load-0")
    assert view.empirical_policy.retry_delay == (1, 10)
    assert [t.id for t in orch.read_task_runs(flow.id)] == [first.id, other.id]


def test_a_task_run_of_an_unknown_flow_run_is_refused(orch: Orch) -> None:
    with pytest.raises(RunNotFoundError):
        orch.create_task_run(uuid4(), task_key="load")


def test_a_subflow_of_an_unknown_parent_task_run_is_refused(orch: Orch) -> None:
    with pytest.raises(RunNotFoundError):
        orch.create_flow_run("child", parent_task_run_id=uuid4())


def test_a_subflows_view_names_its_parent_flow_run(orch: Orch) -> None:
    parent, tracker, child = parent_with_subflow(orch)
    assert orch.read_flow_run(child.id).parent_flow_run_id == parent.id == tracker.flow_run_id
    assert orch.read_flow_run(parent.id).parent_flow_run_id is None
    orch.rebuild()
    assert orch.read_flow_run(child.id).parent_flow_run_id == parent.id


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"flow_name": ""}, InvalidInputError),
        ({"flow_name": "etl", "parameters": {"x": float("nan")}}, InvalidDataError),
        ({"flow_name": "etl", "parameters": {"x": {1, 2}}}, InvalidDataError),
        ({"flow_name": "etl", "tags": "nightly"}, InvalidInputError),
        ({"flow_name": "etl", "retries": -1}, InvalidInputError),
        ({"flow_name": "etl", "retry_delay": float("inf")}, InvalidInputError),
        ({"flow_name": "etl", "retry_delay": [1, 2]}, InvalidInputError),
        ({"flow_name": "etl", "parent_task_run_id": "not-a-uuid"}, InvalidIdError),
        ({"flow_name": "etl", "state": "RUNNING"}, InvalidInputError),
        ({"flow_name": "bad\x00name"}, InvalidInputError),
    ],
)
def test_bad_creation_arguments_are_typed_errors_that_write_nothing(
    orch: Orch, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        orch.create_flow_run(**kwargs)
    assert orch.last_position() == 0


@pytest.mark.parametrize("key", [5, b"key", "", "a\x00b"])
def test_a_task_runs_bad_idempotency_key_is_a_typed_error_that_writes_nothing(
    orch: Orch, key: object
) -> None:
    flow = orch.create_flow_run("etl", state=states.Running())
    written = orch.last_position()
    with pytest.raises(InvalidInputError, match="idempotency key"):
        orch.create_task_run(flow.id, task_key="load", idempotency_key=key)
    assert orch.last_position() == written


@pytest.mark.parametrize("proposer", [None, 5, "", "tab\there"])
def test_a_bad_proposer_is_refused_at_opening(tmp_path: Path, proposer: object) -> None:
    with pytest.raises(InvalidInputError, match="proposer"):
        SyncOrchestrator.open(f"sqlite:///{tmp_path}/p.db", proposer=proposer)  # type: ignore[arg-type]


@pytest.mark.parametrize("attempts", [0, -1, 2.5, True, "3", None])
def test_a_bad_max_attempts_is_refused_before_the_log_is_opened(tmp_path: Path, attempts: object) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    with pytest.raises(InvalidInputError, match="max_attempts"):
        SyncOrchestrator.open(url, max_attempts=attempts)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="max_attempts"):
        asyncio.run(Orchestrator.open(url, max_attempts=attempts).__aenter__())  # type: ignore[arg-type]
    assert not (tmp_path / "a.db").exists()


def test_a_clock_giving_a_naive_datetime_is_a_typed_error_that_writes_nothing(tmp_path: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/c.db", clock=datetime.now) as orch:
        with pytest.raises(InvalidInputError, match="time zone"):
            orch.create_flow_run("etl", state=states.Pending())
        assert orch.last_position() == 0


# --- proposing ---------------------------------------------------------------------------------


def test_propose_state_answers_with_status_state_and_details(orch: Orch) -> None:
    run = orch.create_flow_run("etl", retries=1, state=states.Pending())
    running = orch.propose_state(run.id, states.Running())
    assert (running.status, running.state.type, running.run.run_count) == (
        Status.ACCEPT,
        StateType.RUNNING,
        1,
    )
    retry = orch.propose_state(run.id, states.Failed(message="boom"))
    assert (retry.status, retry.state.name, retry.details.reason, retry.details.rule) == (
        Status.REJECT,
        "AwaitingRetry",
        "Retrying",
        "RetryFailedFlows",
    )


def test_a_wait_is_returned_with_its_delay_and_never_slept_through(orch: Orch) -> None:
    run = orch.create_flow_run(
        "etl", state=states.Scheduled(scheduled_time=orch.clock.now + timedelta(minutes=5))
    )
    result = orch.propose_state(run.id, states.Running())
    assert (result.status, result.details.delay_seconds) == (Status.WAIT, 300)
    assert result.state.type is StateType.SCHEDULED


def test_every_proposal_is_recorded_rejected_waited_and_aborted_ones_included(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    orch.propose_state(run.id, states.Pending())  # ABORT
    orch.propose_state(run.id, states.Paused())  # REJECT
    history = orch.read_history(run.id)
    decided = [entry.event for entry in history if isinstance(entry.event, StateProposed)]
    assert [e.decision.status for e in decided] == [Status.ACCEPT, Status.ABORT, Status.REJECT]
    assert isinstance(history[0].event, FlowRunCreated)
    assert [entry.version for entry in history] == [1, 2, 3, 4]


def test_read_states_lists_the_states_written_in_order(orch: Orch) -> None:
    run = orch.create_flow_run("etl", retries=1, state=states.Pending())
    for state in (states.Running(), states.Failed(), states.Running(), states.Completed()):
        orch.propose_state(run.id, state)
    assert [s.name for s in orch.read_states(run.id)] == [
        "Pending",
        "Running",
        "AwaitingRetry",
        "Running",
        "Completed",
    ]


def test_a_state_is_dated_when_it_is_proposed_not_when_it_was_built(orch: Orch) -> None:
    """As Prefect's server dates a state when it arrives: its StateCreate has no timestamp."""
    run = orch.create_flow_run("etl", state=states.Pending())
    built = states.Running(timestamp=orch.clock.now)
    orch.clock.advance(60)
    result = orch.propose_state(run.id, built)
    assert result.state.timestamp > built.timestamp + timedelta(seconds=59)
    assert result.run.start_time == result.state.timestamp


def test_a_running_state_re_proposed_after_a_retry_wait_is_dated_after_the_wait_which_is_not_run_time(
    orch: Orch,
) -> None:
    run = orch.create_flow_run("etl", retries=1, retry_delay=2, state=states.Pending())
    orch.propose_state(run.id, states.Running())
    orch.clock.advance(1)
    orch.propose_state(run.id, states.Failed(message="boom"))
    running = states.Running(timestamp=orch.clock.now)  # built once and re-proposed, as a client does
    assert orch.propose_state(run.id, running).status is Status.WAIT
    orch.clock.advance(2)
    assert orch.propose_state(run.id, running).status is Status.ACCEPT
    orch.clock.advance(1)
    done = orch.propose_state(run.id, states.Completed())
    stamps = [state.timestamp for state in orch.read_states(run.id)]
    assert stamps == sorted(stamps)
    assert timedelta(seconds=2) <= done.run.total_run_time < timedelta(seconds=2, milliseconds=1)


def test_a_final_state_dated_before_its_run_started_never_ends_the_run_before_it_started(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    orch.propose_state(run.id, states.Running())
    orch.clock.advance(1)
    done = orch.propose_state(run.id, states.Completed(timestamp=orch.clock.now - timedelta(hours=1)))
    assert done.run.start_time is not None
    assert done.run.end_time is not None
    assert done.run.end_time > done.run.start_time
    assert done.run.total_run_time > timedelta(0)


def test_a_repeated_proposal_idempotency_key_returns_the_first_answer(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    first = orch.propose_state(run.id, states.Running(), idempotency_key="start")
    again = orch.propose_state(run.id, states.Running(), idempotency_key="start")
    assert (again.status, again.state, again.position) == (first.status, first.state, first.position)
    assert orch.read_flow_run(run.id).version == 3


def test_a_repeated_proposal_key_returns_the_run_as_it_was_after_that_proposal_not_as_it_is_now(
    orch: Orch,
) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    first = orch.propose_state(run.id, states.Running(), idempotency_key="start")
    orch.propose_state(run.id, states.Completed())
    again = orch.propose_state(run.id, states.Running(), idempotency_key="start")
    assert again.run == first.run
    assert (again.run.version, again.state.type) == (3, StateType.RUNNING)


def test_a_repeated_key_of_a_proposal_that_wrote_no_state_returns_the_state_of_that_moment(
    orch: Orch,
) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    first = orch.propose_state(run.id, states.Pending(), idempotency_key="again")  # ABORT: no state written
    orch.propose_state(run.id, states.Running())
    again = orch.propose_state(run.id, states.Pending(), idempotency_key="again")
    assert (again.status, again.state, again.run) == (first.status, first.state, first.run)
    assert again.state is not None
    assert again.state.type is StateType.PENDING


def test_proposing_for_an_unknown_run_is_a_typed_error(orch: Orch) -> None:
    with pytest.raises(RunNotFoundError):
        orch.propose_state(uuid4(), states.Running())


def test_concurrent_proposals_each_decide_on_the_state_before_them(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    results = orch.gather([("propose_state", (run.id, states.Running()), {}) for _ in range(5)])
    assert all(r.status is Status.ACCEPT for r in results)
    assert sorted(r.run.version for r in results) == [3, 4, 5, 6, 7]
    assert orch.read_flow_run(run.id).run_count == 5


def test_a_proposal_that_loses_every_attempt_is_a_contention_error_that_records_nothing(
    orch: Orch,
) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    # Every attempt of three decides without the write lock (OPTIMISTIC_ATTEMPTS).
    losing = Orch(orch.kind, orch.url, max_attempts=OPTIMISTIC_ATTEMPTS)
    with SyncOrchestrator.open(orch.url) as rival:
        # Between each attempt's read and its append, another writer moves the run on.
        losing.clock.on_reading = lambda: rival.propose_state(run.id, states.Pending())
        with pytest.raises(ContentionError) as raised:
            losing.propose_state(run.id, states.Running())
        losing.close()
        assert (raised.value.run_id, raised.value.attempts) == (run.id, 3)
        history = orch.read_history(run.id)
    assert [entry.event.proposal.state.type for entry in history[2:]] == [StateType.PENDING] * 3
    assert orch.read_flow_run(run.id).version == 5
    assert orch.verify().ok


def _meddling(orch: Orch, run_id: object) -> tuple[SyncOrchestrator, list[str]]:
    """A rival writer that, at each reading of ``orch``'s clock (once per attempt), tries
    to move the run on, waiting at most 0.2 s for the write lock; and what it did."""
    rival = SyncOrchestrator.open(orch.url, busy_timeout=0.2)
    seen: list[str] = []

    def meddle() -> None:
        try:
            rival.propose_state(run_id, states.Pending())
            seen.append("moved")
        except StoreBusyError:
            seen.append("waited")

    orch.clock.on_reading = meddle
    return rival, seen


def test_a_proposal_that_keeps_losing_is_decided_holding_the_write_lock_and_lands(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    rival, seen = _meddling(orch, run.id)
    with rival:
        result = orch.propose_state(run.id, states.Running())
    orch.clock.on_reading = None
    assert seen == ["moved"] * OPTIMISTIC_ATTEMPTS + ["waited"]
    assert (result.status, result.state.type, result.run.version) == (Status.ACCEPT, StateType.RUNNING, 6)
    assert orch.read_flow_run(run.id) == result.run
    assert orch.verify().ok


def test_a_rename_that_keeps_losing_is_made_holding_the_write_lock(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    rival, seen = _meddling(orch, run.id)
    with rival:
        renamed = orch.set_flow_run_name(run.id, "renamed")
    orch.clock.on_reading = None
    assert seen == ["moved"] * OPTIMISTIC_ATTEMPTS + ["waited"]
    assert (renamed.name, renamed.version) == ("renamed", 6)
    assert orch.read_flow_run(run.id) == renamed


def test_a_locked_attempt_reads_the_clock_in_the_callers_context(
    orch: Orch, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    seen: list[str | None] = []
    orch.clock.on_reading = lambda: seen.append(_CALLER.get(None))
    monkeypatch.setattr(operations, "OPTIMISTIC_ATTEMPTS", 0)  # as if it had lost three times
    _CALLER.set("the caller")
    orch.propose_state(run.id, states.Running())
    orch.clock.on_reading = None
    assert seen == ["the caller"]


_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller")


def test_an_error_inside_a_locked_attempt_writes_nothing_and_frees_the_lock(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    rival, seen = _meddling(orch, run.id)

    def then_fail() -> None:
        if len(seen) == OPTIMISTIC_ATTEMPTS:
            raise RuntimeError("the clock broke")
        rival_meddle()

    rival_meddle = orch.clock.on_reading
    orch.clock.on_reading = then_fail
    with rival, pytest.raises(RuntimeError, match="the clock broke"):
        orch.propose_state(run.id, states.Running())
    orch.clock.on_reading = None
    assert orch.read_flow_run(run.id).version == 2 + OPTIMISTIC_ATTEMPTS
    # The lock was let go: the next proposal lands at once.
    assert orch.propose_state(run.id, states.Running()).status is Status.ACCEPT
    assert orch.verify().ok


def test_a_task_cannot_start_while_its_flow_run_is_not_running(orch: Orch) -> None:
    flow = orch.create_flow_run("etl", state=states.Pending())
    task = orch.create_task_run(flow.id, task_key="load")
    result = orch.propose_state(task.id, states.Running())
    assert (result.status, result.details.rule) == (Status.ABORT, "PreventRunningTasksFromStoppedFlows")
    orch.propose_state(flow.id, states.Running())
    assert orch.propose_state(task.id, states.Running()).status is Status.ACCEPT


def test_a_task_decision_records_its_flow_runs_facts(orch: Orch) -> None:
    flow = orch.create_flow_run("etl", state=states.Running())
    task = orch.create_task_run(flow.id, task_key="load")
    orch.propose_state(task.id, states.Running())
    event = orch.read_history(task.id)[-1].event
    assert isinstance(event, StateProposed)
    assert event.facts.flow_run is not None
    assert (event.facts.flow_run.flow_run_id, event.facts.flow_run.version) == (flow.id, 2)


def test_a_task_decided_on_a_flow_run_that_moved_on_is_decided_again(tmp_path: object) -> None:
    """Two orchestrators on one file: the task's facts must still hold when it commits."""
    url = f"sqlite:///{tmp_path}/two.db"
    first, second = Orch("sync", url), Orch("sync", url)
    try:
        flow = first.create_flow_run("etl", state=states.Running())
        task = first.create_task_run(flow.id, task_key="load")
        first.propose_state(task.id, states.Pending())  # first now caches the flow as Running
        second.propose_state(flow.id, states.Cancelling())
        result = first.propose_state(task.id, states.Running())
        assert result.status is Status.ABORT  # decided again on the cancelling flow
        assert first.verify().ok
    finally:
        first.close()
        second.close()


# --- subflows ----------------------------------------------------------------------------------


def test_a_subflow_state_is_mirrored_onto_its_parent_task_run_in_the_same_append(orch: Orch) -> None:
    parent = orch.create_flow_run("parent", state=states.Running())
    tracker = orch.create_task_run(parent.id, task_key="child")
    child = orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending())
    result = orch.propose_state(child.id, states.Running())
    task = orch.read_task_run(tracker.id)
    assert task.state is not None
    assert (task.state.type, task.state.state_details.child_flow_run_id) == (StateType.RUNNING, child.id)
    history = orch.read_history(tracker.id)
    assert history[-1].position == result.position + 1


def test_proposals_in_turn_go_on_after_a_retry_and_share_one_append(orch: Orch) -> None:
    run = orch.create_flow_run("etl", retries=1, state=states.Pending())
    orch.propose_state(run.id, states.Running())
    failed, running = orch.propose_in_turn(run.id, [states.Failed(message="boom"), states.Running()])
    assert (failed.status, failed.state.name) == (Status.REJECT, "AwaitingRetry")
    assert (running.status, running.state.type, running.run.run_count) == (
        Status.ACCEPT,
        StateType.RUNNING,
        2,
    )
    history = orch.read_history(run.id)
    assert (failed.position, running.position) == (history[-2].position, history[-1].position)
    assert history[-1].recorded_at == history[-2].recorded_at  # one commit
    assert orch.read_flow_run(run.id) == running.run


def test_proposals_in_turn_stop_at_a_final_state(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    orch.propose_state(run.id, states.Running())
    results = orch.propose_in_turn(run.id, [states.Failed(message="no retries"), states.Running()])
    assert [(r.status, r.state.type) for r in results] == [(Status.ACCEPT, StateType.FAILED)]
    assert len(orch.read_states(run.id)) == 3


def test_proposals_in_turn_stop_at_a_wait(orch: Orch) -> None:
    run = orch.create_flow_run("etl", retries=1, retry_delay=60, state=states.Pending())
    orch.propose_state(run.id, states.Running())
    failed, waited = orch.propose_in_turn(run.id, [states.Failed(), states.Running(), states.Completed()])
    assert (failed.state.name, waited.status, waited.details.delay_seconds) == (
        "AwaitingRetry",
        Status.WAIT,
        60,
    )
    assert orch.read_flow_run(run.id).state.name == "AwaitingRetry"


def test_proposals_in_turn_stop_at_an_answer_that_writes_no_state(orch: Orch) -> None:
    flow_run = orch.create_flow_run("etl", state=states.Pending())
    task = orch.create_task_run(flow_run.id, task_key="extract")
    results = orch.propose_in_turn(task.id, [states.Running(), states.Completed()])
    assert [(r.status, r.state) for r in results] == [(Status.ABORT, None)]
    assert orch.read_task_run(task.id).state is None
    assert len(orch.read_history(task.id)) == 2


def test_proposals_in_turn_take_a_list_of_states(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    with pytest.raises(InvalidInputError):
        orch.propose_in_turn(run.id, states.Running())
    with pytest.raises(InvalidInputError):
        orch.propose_in_turn(run.id, [])
    assert len(orch.read_history(run.id)) == 2


def test_proposals_in_turn_mirror_each_subflow_state_onto_the_parent_task_run(orch: Orch) -> None:
    parent = orch.create_flow_run("parent", state=states.Running())
    tracker = orch.create_task_run(parent.id, task_key="child")
    child = orch.create_flow_run("child", retries=1, parent_task_run_id=tracker.id, state=states.Pending())
    orch.propose_state(child.id, states.Running())
    orch.propose_in_turn(child.id, [states.Failed(), states.Running()])
    mirrored = [s.name for s in orch.read_states(tracker.id)]
    assert mirrored[-2:] == ["AwaitingRetry", "Running"]
    assert orch.verify().ok


def test_find_subflow_run_returns_the_most_recent_child(orch: Orch) -> None:
    parent = orch.create_flow_run("parent", state=states.Running())
    tracker = orch.create_task_run(parent.id, task_key="child")
    orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending())
    orch.clock.advance(60)
    later = orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending())
    found = orch.find_subflow_run(tracker.id)
    assert found is not None
    assert found.id == later.id
    assert orch.find_subflow_run(uuid4()) is None


def test_a_child_created_without_a_state_is_still_the_most_recent(orch: Orch) -> None:
    parent = orch.create_flow_run("parent", state=states.Running())
    tracker = orch.create_task_run(parent.id, task_key="child")
    orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending(timestamp=orch.clock()))
    orch.clock.advance(60)
    later = orch.create_flow_run("child", parent_task_run_id=tracker.id)
    found = orch.find_subflow_run(tracker.id)
    assert found is not None
    assert found.id == later.id
    with orch.as_of(orch.last_position()) as snapshot:
        seen = snapshot.find_subflow_run(tracker.id)
    assert seen is not None
    assert seen.id == later.id


# --- reading -----------------------------------------------------------------------------------


def test_read_flow_runs_filters_by_state_flow_tag_and_parent(orch: Orch) -> None:
    a = orch.create_flow_run("etl", tags=["nightly", "eu"], state=states.Running())
    b = orch.create_flow_run("etl", tags=["nightly"], state=states.Pending())
    c = orch.create_flow_run("report", tags=["eu"], state=states.Running())
    tracker = orch.create_task_run(a.id, task_key="sub")
    d = orch.create_flow_run("sub", parent_task_run_id=tracker.id)

    def ids(**filters: object) -> set[object]:
        return {v.id for v in orch.read_flow_runs(**filters)}

    assert ids(state_types=[StateType.RUNNING]) == {a.id, c.id}
    assert ids(flow_names=["etl"]) == {a.id, b.id}
    assert ids(tags=["nightly", "eu"]) == {a.id}
    assert ids(tags=["eu"]) == {a.id, c.id}
    assert ids(parent_task_run_ids=[tracker.id]) == {d.id}
    assert ids(flow_names=["etl"], state_types=["PENDING"]) == {b.id}
    assert ids(state_types=[]) == set()


def test_read_flow_runs_sorts_and_pages(orch: Orch) -> None:
    made = []
    for minutes in (30, 10, 20):
        when = orch.clock.now + timedelta(minutes=minutes)
        made.append(orch.create_flow_run("etl", state=states.Scheduled(scheduled_time=when)))
    by_start = orch.read_flow_runs(sort="EXPECTED_START_TIME_ASC")
    assert [v.id for v in by_start] == [made[1].id, made[2].id, made[0].id]
    assert [v.id for v in orch.read_flow_runs(sort="ID_DESC", limit=2)] == [made[2].id, made[1].id]
    assert [v.id for v in orch.read_flow_runs(sort="ID_DESC", limit=2, offset=2)] == [made[0].id]


def test_sorting_by_start_time_takes_the_expected_start_of_runs_not_yet_started(orch: Orch) -> None:
    """Prefect sorts START_TIME_* on coalesce(start_time, expected_start_time): scheduled
    runs fall among started ones by when they are due; runs with neither come last."""
    now = orch.clock.now
    due_yesterday = orch.create_flow_run(
        "etl", state=states.Scheduled(scheduled_time=now - timedelta(days=1))
    )
    started = orch.create_flow_run("etl", state=states.Running(timestamp=now))
    due_tomorrow = orch.create_flow_run("etl", state=states.Scheduled(scheduled_time=now + timedelta(days=1)))
    neither = orch.create_flow_run("etl")
    ascending = [v.id for v in orch.read_flow_runs(sort="START_TIME_ASC")]
    descending = [v.id for v in orch.read_flow_runs(sort="START_TIME_DESC")]
    assert ascending == [due_yesterday.id, started.id, due_tomorrow.id, neither.id]
    assert descending == [due_tomorrow.id, started.id, due_yesterday.id, neither.id]


def test_a_run_created_without_a_state_sorts_by_the_start_its_first_state_sets(orch: Orch) -> None:
    """Only a run's first state sets its expected start time; the states after it leave
    the stored column alone, and the first one must still write it."""
    soon = orch.clock.now + timedelta(minutes=10)
    unscheduled = orch.create_flow_run("etl")  # no expected start time yet: sorts last
    scheduled = orch.create_flow_run("etl", state=states.Scheduled(scheduled_time=soon))
    orch.propose_state(unscheduled.id, states.Scheduled(scheduled_time=soon - timedelta(minutes=5)))
    orch.propose_state(unscheduled.id, states.Pending())
    orch.propose_state(scheduled.id, states.Pending())
    order = [v.id for v in orch.read_flow_runs(sort="EXPECTED_START_TIME_ASC")]
    assert order == [unscheduled.id, scheduled.id]
    orch.rebuild()
    assert [v.id for v in orch.read_flow_runs(sort="EXPECTED_START_TIME_ASC")] == order


def _sorting_by_locale(url: str) -> None:
    """Give a PostgreSQL log's run names the collation of a database made with a
    language's locale, as most servers are (the test server's sort byte for byte)."""
    import psycopg

    schema = parse_qs(urlsplit(url).query)["schema"][0]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute(f'ALTER TABLE "{schema}".flow_runs ALTER COLUMN name TYPE text COLLATE "und-x-icu"')


def test_names_sort_byte_for_byte_on_every_backend_as_time_travel_sorts_them(orch: Orch) -> None:
    if orch.url.startswith("postgresql"):
        _sorting_by_locale(orch.url)
    for name in ["Beta", "alpha", "Zed", "_under"]:
        orch.create_flow_run("etl", name=name)
    expected = ["Beta", "Zed", "_under", "alpha"]
    assert [r.name for r in orch.read_flow_runs(sort="NAME_ASC")] == expected
    assert [r.name for r in orch.read_flow_runs(sort="NAME_DESC", limit=2)] == ["alpha", "_under"]
    assert [r.name for r in orch.as_of(orch.last_position()).read_flow_runs(sort="NAME_ASC")] == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"sort": "BY_MOOD"},
        {"limit": -1},
        {"offset": -3},
        {"state_types": ["DONE"]},
        {"flow_names": ["\ud800"]},
        {"tags": ["ok", "x\udcff"]},
    ],
)
def test_bad_query_arguments_are_typed_errors(orch: Orch, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        orch.read_flow_runs(**bad)


def test_a_query_without_a_limit_returns_every_matching_run_however_many(tmp_path: Path) -> None:
    created = [
        FlowRunCreated(run_id=new_run_id(), flow_name="etl", name=f"run-{i}", created_at=T0)
        for i in range(10_001)
    ]
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/many.db", durability="normal") as orch:
        orch.store.append_many([StreamWrite(str(c.run_id), [c], 0) for c in created])
        assert len(orch.read_flow_runs(limit=None)) == 10_001
        assert len(orch.read_flow_runs(limit=10_001)) == 10_001
        assert len(orch.read_flow_runs(limit=None, offset=2)) == 9_999


def test_a_limit_too_large_for_the_database_is_a_typed_error(orch: Orch) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        orch.read_flow_runs(limit=2**63)


def test_reading_an_unknown_run_is_a_typed_error(orch: Orch) -> None:
    with pytest.raises(RunNotFoundError):
        orch.read_flow_run(uuid4())
    task_id = orch.create_task_run(orch.create_flow_run("etl").id, task_key="t").id
    with pytest.raises(RunNotFoundError, match=f"no flow run with id {task_id}: it is a task run"):
        orch.read_flow_run(task_id)


def test_a_flow_run_can_be_renamed_and_its_settings_updated(orch: Orch) -> None:
    run = orch.create_flow_run("etl", retries=1)
    orch.set_flow_run_name(run.id, "etl-monday")
    orch.update_flow_run(run.id, retries=5, infrastructure_pid="99")
    view = orch.read_flow_run(run.id)
    assert (view.name, view.empirical_policy.retries, view.infrastructure_pid, view.version) == (
        "etl-monday",
        5,
        "99",
        3,
    )


# --- audit and operations ------------------------------------------------------------------------


def test_verify_passes_on_a_log_written_through_the_orchestrator(orch: Orch) -> None:
    parent, tracker, child = parent_with_subflow(orch)
    orch.propose_state(parent.id, states.Failed())
    report = orch.verify()
    assert report.ok, report.problems
    assert report.events_checked == orch.last_position()
    assert orch.verify(child.id).ok
    assert orch.verify(tracker.id).ok


def test_a_rebuilt_view_is_the_same_json_as_the_one_kept_as_events_were_appended(orch: Orch) -> None:
    """A run that never ran (Scheduled, then a WAIT) has a zero run time: it was left
    out of the kept view's JSON and spelled out in the rebuilt one's."""
    run = orch.create_flow_run("etl", state=states.Scheduled(scheduled_time=T0 + timedelta(days=400)))
    assert orch.propose_state(run.id, states.Running()).status is Status.WAIT
    kept = msgspec.json.encode(orch.read_flow_run(run.id))
    orch.rebuild()
    assert msgspec.json.encode(orch.read_flow_run(run.id)) == kept


def test_rebuild_gives_back_the_same_views(orch: Orch) -> None:
    run = orch.create_flow_run("etl", tags=["a"], state=states.Pending())
    orch.propose_state(run.id, states.Running())
    task = orch.create_task_run(run.id, task_key="t", state=states.Running())
    before = (orch.read_flow_run(run.id), orch.read_task_run(task.id), orch.read_flow_runs(tags=["a"]))
    progress: list[tuple[int, int]] = []
    applied = orch.rebuild(progress=lambda done, total: progress.append((done, total)))
    assert applied == orch.last_position()
    assert (
        orch.read_flow_run(run.id),
        orch.read_task_run(task.id),
        orch.read_flow_runs(tags=["a"]),
    ) == before
    assert progress[-1] == (applied, applied)


@pytest.mark.parametrize("projection", [None, DecisionStats()], ids=["views", "projection"])
def test_a_progress_that_is_not_a_function_is_a_typed_error_before_anything_is_dropped(
    orch: Orch, projection: object
) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    orch.catch_up(DecisionStats())
    with pytest.raises(InvalidInputError, match="progress is None or a function"):
        orch.rebuild(progress=5, projection=projection)
    assert [view.id for view in orch.read_flow_runs()] == [run.id]
    assert orch.catch_up(DecisionStats()) == 0


def test_as_of_shows_the_views_as_they_were_at_a_position(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    at_pending = orch.last_position()
    orch.propose_state(run.id, states.Running())
    orch.create_flow_run("later")
    with orch.as_of(at_pending) as snapshot:
        assert snapshot.read_flow_run(run.id).state.type is StateType.PENDING
        assert len(snapshot.read_flow_runs()) == 1
    with orch.as_of(orch.last_position()) as snapshot:
        assert snapshot.read_flow_run(run.id) == orch.read_flow_run(run.id)


def test_a_position_inside_one_append_shows_the_views_at_the_appends_end(orch: Orch) -> None:
    """A subflow's states and their copies on its parent task run commit together: no
    reader ever saw one without the other, and time travel shows none."""
    parent = orch.create_flow_run("parent", state=states.Pending(), then=[states.Running()])
    task = orch.create_task_run(parent.id, task_key="sub", state=states.Pending())
    before = orch.last_position()
    child = orch.create_flow_run(
        "child", parent_task_run_id=task.id, state=states.Pending(), then=[states.Running()]
    )
    end = orch.last_position()
    assert end - before > 2
    for position in range(before + 1, end + 1):
        with orch.as_of(position) as snapshot:
            assert snapshot.position == end
            assert snapshot.read_flow_run(child.id).state.type is StateType.RUNNING
            assert snapshot.read_task_run(task.id).state.type is StateType.RUNNING
    with orch.as_of(before) as snapshot, pytest.raises(RunNotFoundError):
        snapshot.read_flow_run(child.id)


def test_a_run_created_after_the_position_is_not_in_the_past_where_the_clock_stood_still(
    orch: Orch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events sharing a recording time are one transaction's: a clock that does not
    move (or steps back) between two commits must not join them."""
    monkeypatch.setattr(scripts, "time", _StandingClock())
    orch.create_flow_run("etl")
    position = orch.last_position()
    later = orch.create_flow_run("etl")
    with orch.as_of(position) as snapshot, pytest.raises(RunNotFoundError):
        snapshot.read_flow_run(later.id)


class _StandingClock:
    """Stands in for `time` in the store's scripts: a wall clock that never moves."""

    @staticmethod
    def time_ns() -> int:
        return 1_800_000_000 * 10**9


def test_a_run_created_after_the_position_is_not_in_the_past(orch: Orch) -> None:
    orch.create_flow_run("etl")
    position = orch.last_position()
    later = orch.create_flow_run("etl")
    with orch.as_of(position) as snapshot, pytest.raises(RunNotFoundError):
        snapshot.read_flow_run(later.id)


def test_views_as_of_a_position_past_the_end_of_the_log_are_a_typed_error(orch: Orch) -> None:
    """No views were ever as they would be there: the CLI refuses it too."""
    orch.create_flow_run("etl")
    with pytest.raises(InvalidVersionError, match="past the end of the log, which ends at 1"):
        orch.as_of(orch.last_position() + 1)


def test_views_survive_reopening(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Running())
    before = orch.read_flow_run(run.id)
    orch.reopen()
    assert orch.read_flow_run(run.id) == before


# --- creating and starting in one append -----------------------------------------------------------


def test_then_proposes_states_in_the_same_append_as_the_creation(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending(), then=[states.Running()])
    assert (run.state.type, run.run_count, run.version) == (StateType.RUNNING, 1, 3)
    positions = {entry.position for entry in orch.read_history(run.id)}
    assert positions == {1, 2, 3}
    assert orch.verify().ok


def test_then_stops_at_the_first_answer_that_is_not_accept(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending(), then=[states.Pending(), states.Running()])
    assert run.state.type is StateType.PENDING
    assert run.last_decision.status is Status.ABORT
    assert run.version == 3


def test_a_subflow_created_and_started_in_one_append_copies_each_state_to_its_parent_task(orch: Orch) -> None:
    parent = orch.create_flow_run("parent", state=states.Running())
    tracker = orch.create_task_run(parent.id, task_key="child")
    child = orch.create_flow_run(
        "child", parent_task_run_id=tracker.id, state=states.Pending(), then=[states.Running()]
    )
    assert [s.name for s in orch.read_states(tracker.id)] == ["Pending", "Running"]
    assert child.state.type is StateType.RUNNING
    assert orch.verify().ok


def test_then_without_an_initial_state_is_a_typed_error(orch: Orch) -> None:
    with pytest.raises(InvalidInputError):
        orch.create_flow_run("etl", then=[states.Running()])


def test_the_digest_of_a_verify_anchors_a_later_one_as_the_report_gives_it(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    report = orch.verify()
    orch.propose_state(run.id, states.Running())
    assert orch.verify(anchor=(report.last_position, report.log_digest)).ok
    assert orch.verify(anchor=(report.last_position, bytes.fromhex(report.log_digest))).ok


@pytest.mark.parametrize(
    "anchor",
    [(1.0, "00" * 32), (-1, "00" * 32), (True, "00" * 32), (1, b"x"), (1, "zz"), (2,), "2:" + "00" * 32],
)
def test_a_malformed_anchor_is_a_typed_error_not_a_changed_log(orch: Orch, anchor: object) -> None:
    orch.create_flow_run("etl", state=states.Pending())
    with pytest.raises(InvalidInputError, match="an anchor is a"):
        orch.verify(anchor=anchor)


@pytest.mark.parametrize(
    ("projection", "batch"), [(None, 1_000), ("runs", 1_000), (DecisionStats(), 0), (DecisionStats(), -1)]
)
def test_catching_up_something_that_is_not_a_projection_or_by_no_events_is_a_typed_error(
    orch: Orch, projection: object, batch: int
) -> None:
    orch.create_flow_run("etl")
    with pytest.raises(InvalidInputError, match=r"catch_up takes a Projection|batch is a whole number"):
        orch.catch_up(projection, batch=batch)
    assert orch.catch_up(DecisionStats()) == 1


class _Versioned(DecisionStats):
    """DecisionStats under another ``name`` and ``version``, whatever their type."""

    def __init__(self, version: object, name: object = "decision_stats") -> None:
        self.version = version  # type: ignore[misc]
        self.name = name  # type: ignore[misc]


@pytest.mark.parametrize(
    ("version", "name"),
    [
        (None, "decision_stats"),
        (1.5, "decision_stats"),
        ("1", "decision_stats"),
        (True, "decision_stats"),
        (2**70, "decision_stats"),
        (1, ""),
        (1, "decision\x00stats"),
        (1, "decision\ud800stats"),
    ],
)
def test_a_projection_whose_name_or_version_the_log_cannot_hold_is_refused_before_its_rows_are_touched(
    orch: Orch, version: object, name: object
) -> None:
    orch.create_flow_run("etl", state=states.Pending())
    assert orch.catch_up(DecisionStats()) == 2
    with pytest.raises(InvalidInputError, match="catch_up takes a Projection"):
        orch.catch_up(_Versioned(version, name))
    # The rows and the checkpoint of the projection as it was are still there.
    assert orch.catch_up(DecisionStats()) == 0
    assert _decision_count(orch) == 1


def _decision_count(orch: Orch) -> int:
    def read() -> Script[int]:
        rows = yield Fetch("SELECT sum(count) FROM decision_stats")
        return int(rows[0][0])

    result = orch.store.perform(read())
    return int(result if orch.runner is None else orch.runner.run(result))


class _DecisionStatsV2(DecisionStats):
    version = DecisionStats.version + 1


def test_a_catch_up_whose_projection_another_version_replaced_between_its_steps_stops(
    databases: Databases,
) -> None:
    """Each found the other's checkpoint gone and applied the log again from its start,
    into the other's tables, one batch after another: two versions caught up at once (a
    rolling deploy) never ended. The version that prepared last keeps the tables."""
    url = databases.url("replaced")
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as other:
        for _ in range(4):
            orch.create_flow_run("etl", state=states.Pending())
        old = catch_up_script(orch.store, DecisionStats(), batch=2)
        step = next(old)  # the tables made ready
        step = old.send(orch.store.run(step.script, write=True))  # the first step, applied
        step = old.send(orch.store.run(step.script, write=True))
        assert other.catch_up(_DecisionStatsV2()) == 8  # another version takes over here
        with pytest.raises(ProjectionReplacedError, match=r"decision_stats.*version 2"):
            orch.store.run(step.script, write=True)
        assert other.catch_up(_DecisionStatsV2()) == 0
        assert _decision_total(other) == 4  # each run's Pending, counted once


def test_a_catch_up_whose_projection_another_version_made_ready_before_its_first_step_stops(
    databases: Databases,
) -> None:
    """The other version had made its tables ready but not yet stepped: the first step
    of the older one must not apply into them and take the checkpoint over."""
    url = databases.url("replaced_early")
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as other:
        for _ in range(4):
            orch.create_flow_run("etl", state=states.Pending())
        old = catch_up_script(orch.store, DecisionStats(), batch=2)
        step = next(old)
        step = old.send(orch.store.run(step.script, write=True))  # the old version's tables made ready
        other.store.run(prepare_catch_up(_DecisionStatsV2(), other.store.dialect), write=True)
        with pytest.raises(ProjectionReplacedError, match=r"decision_stats.*version 2"):
            orch.store.run(step.script, write=True)
        assert other.catch_up(_DecisionStatsV2()) == 8
        assert _decision_total(other) == 4


def test_rebuilding_a_catch_up_projection_applies_every_event_again_on_emptied_tables(orch: Orch) -> None:
    for _ in range(3):
        run = orch.create_flow_run("etl", state=states.Pending())
        orch.propose_state(run.id, states.Running())
    orch.catch_up(DecisionStats())
    kept = orch.read_flow_runs()
    _done(orch, orch.store.run(_execute("UPDATE decision_stats SET count = count + 100"), write=True))
    progress: list[tuple[int, int]] = []
    applied = orch.rebuild(projection=DecisionStats(), batch=2, progress=lambda *p: progress.append(p))
    assert applied == orch.last_position() == 9
    assert _done(orch, orch.store.perform(_counted())) == 6  # each proposal once
    assert (progress[0], progress[-1]) == ((0, 9), (9, 9))
    assert orch.read_flow_runs() == kept  # the run views are left as they are
    assert orch.catch_up(DecisionStats()) == 0


def _done(orch: Orch, outcome: Any) -> Any:
    """What a store call gave, awaited on the async orchestrator's loop."""
    return outcome if orch.runner is None else orch.runner.run(outcome)


def _execute(statement: str) -> Script[None]:
    yield Begin()
    yield Execute(statement)
    yield Commit()


def _counted() -> Script[int]:
    rows = yield Fetch("SELECT sum(count) FROM decision_stats")
    return int(rows[0][0])


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_opening_with_projections_of_ones_own_is_a_typed_error(tmp_path: Path, kind: str) -> None:
    url = f"sqlite:///{tmp_path}/p.db"

    def opened() -> object:
        if kind == "sync":
            return SyncOrchestrator.open(url, projections=[DecisionStats()])
        return asyncio.run(Orchestrator.open(url, projections=[DecisionStats()]).__aenter__())

    with pytest.raises(InvalidInputError, match=r"catch_up\(projection\)"):
        opened()
    assert not (tmp_path / "p.db").exists()


def _decision_total(orch: SyncOrchestrator) -> int:
    def read() -> Script[int]:
        rows = yield Fetch("SELECT sum(count) FROM decision_stats")
        return int(rows[0][0])

    return orch.store.perform(read())


class _Owning(DecisionStats):
    """DecisionStats at another version, claiming to own ``tables``."""

    def __init__(self, tables: object, version: int = 2) -> None:
        self.tables = tables  # type: ignore[misc]
        self.version = version  # type: ignore[misc]


@pytest.mark.parametrize(
    "tables",
    [("events",), ("EVENTS",), ("checkpoints",), ("flow_runs",), ("x; DROP TABLE events",), "decision_stats"],
)
def test_a_projection_claiming_the_logs_own_tables_is_refused_before_anything_is_dropped(
    orch: Orch, tables: object
) -> None:
    orch.create_flow_run("etl", state=states.Pending())
    assert orch.catch_up(DecisionStats()) == 2
    with pytest.raises(InvalidInputError, match="projection 'decision_stats'"):
        orch.catch_up(_Owning(tables))
    assert orch.verify().ok
    assert len(orch.read_flow_runs()) == 1
