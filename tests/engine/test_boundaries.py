"""What the Orchestrator takes at its edge: every value it cannot keep is a typed error
before anything is written, and keys name one run only."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from flowtrail import State, StateDetails, StateType, states
from flowtrail.core import (
    InvalidDataError,
    InvalidIdError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
)
from flowtrail.engine.keys import loose_task_run_key, stored_key, task_run_key
from tests.engine.conftest import Orch


def _refused(orch: Orch, error: type[Exception], call: Any, *args: Any, **kwargs: Any) -> None:
    before = orch.last_position()
    with pytest.raises(error):
        call(*args, **kwargs)
    assert orch.last_position() == before


# --- task runs are one per (flow run, task key, dynamic key) -------------------------------------


def test_task_keys_holding_colons_name_different_task_runs(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    one = orch.create_task_run(flow.id, task_key="a:b", dynamic_key="c")
    other = orch.create_task_run(flow.id, task_key="a", dynamic_key="b:c")
    assert one.id != other.id
    assert orch.create_task_run(flow.id, task_key="a:b", dynamic_key="c").id == one.id


def test_a_task_run_without_a_flow_run_never_stands_for_one_in_a_flow_run(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    loose = orch.create_task_run(None, task_key="zzz", idempotency_key=f"{flow.id}:q:0")
    inside = orch.create_task_run(flow.id, task_key="q", dynamic_key="0")
    assert inside.id != loose.id
    assert inside.flow_run_id == flow.id


def test_the_longest_task_key_and_dynamic_key_still_name_one_task_run(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    key = "k" * 512
    first = orch.create_task_run(flow.id, task_key=key, dynamic_key="d" * 512)
    assert orch.create_task_run(flow.id, task_key=key, dynamic_key="d" * 512).id == first.id


_RUN = uuid.UUID("01a21031-8d4e-7333-a7e9-aa6fc69fc4ad")


class _Key(str, enum.Enum):  # noqa: UP042 - a str mixin, spelled by f-strings unlike StrEnum
    DAILY = "daily"


@pytest.mark.parametrize(
    ("spelled", "before"),
    [
        (lambda: task_run_key(_RUN, "extract", "3"), f"task-run:{_RUN}:extract:3"),
        (lambda: stored_key("flow-run", f"{_RUN}:daily:2026-01-01"), f"flow-run:{_RUN}:daily:2026-01-01"),
        (lambda: stored_key("flow-run", _Key.DAILY), f"flow-run:{_Key.DAILY}"),
        (lambda: stored_key("propose", str(_RUN), "attempt:1"), f"propose:{_RUN}:attempt:1"),
        (lambda: loose_task_run_key("nightly:3"), "task-run:nightly:3"),
        (lambda: loose_task_run_key(f"{str(_RUN).upper()}:x:y"), f"task-run:{str(_RUN).upper()}:x:y"),
        (lambda: loose_task_run_key(f"{_RUN}:x:y:z"), f"task-run:{_RUN}:x:y:z"),
    ],
)
def test_keys_that_name_one_run_keep_the_spelling_logs_hold(spelled: Any, before: str) -> None:
    """Logs written before keep recognising their runs and proposals."""
    assert spelled() == before


def test_only_keys_that_could_name_two_runs_are_spelled_as_a_digest() -> None:
    assert task_run_key(_RUN, "a:b", "c").startswith("task-run#")
    assert loose_task_run_key(f"{_RUN}:q:0").startswith("task-run#")
    assert stored_key("flow-run", "k" * 600).startswith("flow-run#")


@pytest.mark.parametrize("dynamic_key", [None, True, 1.5, object()])
def test_a_dynamic_key_is_text_or_a_whole_number(orch: Orch, dynamic_key: object) -> None:
    flow = orch.create_flow_run("etl")
    _refused(orch, InvalidInputError, orch.create_task_run, flow.id, task_key="t", dynamic_key=dynamic_key)


def test_an_infrastructure_pid_is_text_or_a_whole_number(orch: Orch) -> None:
    _refused(orch, InvalidInputError, orch.create_flow_run, "etl", infrastructure_pid=[1])


# --- numbers a run could never use ---------------------------------------------------------------


@pytest.mark.parametrize("delay", [1e15, 1e300, 10**15])
def test_a_retry_delay_past_a_century_is_refused_at_creation(orch: Orch, delay: float) -> None:
    _refused(orch, InvalidInputError, orch.create_flow_run, "etl", retries=1, retry_delay=delay)


def test_a_task_runs_retry_delays_past_a_century_are_refused_at_creation(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    _refused(
        orch, InvalidInputError, orch.create_task_run, flow.id, task_key="t", retries=1, retry_delay=[10**15]
    )


def test_a_run_with_the_longest_retry_delay_can_still_fail_into_a_retry(orch: Orch) -> None:
    run = orch.create_flow_run("etl", retries=1, retry_delay=100 * 365 * 24 * 3600, state=states.Pending())
    orch.propose_state(run.id, states.Running())
    result = orch.propose_state(run.id, states.Failed())
    assert result.state is not None
    assert result.state.name == "AwaitingRetry"


def test_retries_beyond_a_million_are_refused(orch: Orch) -> None:
    _refused(orch, InvalidInputError, orch.create_flow_run, "etl", retries=10**30)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**70])
def test_parameters_hold_64_bit_whole_numbers_only(orch: Orch, value: int) -> None:
    _refused(orch, InvalidDataError, orch.create_flow_run, "etl", parameters={"a": value})


def test_a_pause_further_off_than_a_date_can_be_is_an_invalid_state() -> None:
    with pytest.raises(InvalidStateError):
        states.Paused(timeout_seconds=1e300, timestamp=datetime(2026, 1, 1, tzinfo=UTC))


# --- names: control characters no, any other character yes ------------------------------------


@pytest.mark.parametrize("name", ["👨\u200d👩\u200d👧", "night\u00a0ly", "東京\u3000夜"])
def test_names_and_tags_may_hold_any_character_but_a_control_character(orch: Orch, name: str) -> None:
    run = orch.create_flow_run(name, name=name, tags=[name])
    view = orch.read_flow_run(run.id)
    assert (view.flow_name, view.name, view.tags) == (name, name, (name,))
    assert [r.id for r in orch.read_flow_runs(tags=[name], flow_names=[name])] == [run.id]


def test_a_state_named_with_a_nul_character_is_refused_alike_on_every_backend(orch: Orch) -> None:
    """PostgreSQL's text columns cannot hold NUL: refused there by the database, the
    proposal was taken on SQLite, and in a group commit it failed every append with it."""
    run = orch.create_flow_run("etl", state=states.Pending())
    _refused(orch, InvalidStateError, orch.propose_state, run.id, states.Running(name="Run\x00"))
    _refused(orch, InvalidStateError, orch.create_flow_run, "etl", state=states.Pending(name="P\x00"))


def test_a_state_may_be_named_with_other_control_characters(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    assert orch.propose_state(run.id, states.Running(name="Run\x07")).state.name == "Run\x07"


def test_tags_are_a_list(orch: Orch) -> None:
    _refused(orch, InvalidInputError, orch.create_flow_run, "etl", tags=5)


def test_a_run_carries_at_most_a_thousand_tags(orch: Orch) -> None:
    _refused(orch, InvalidInputError, orch.create_flow_run, "etl", tags=[f"t{i}" for i in range(1001)])


# --- queries -----------------------------------------------------------------------------------


def test_runs_carrying_every_one_of_many_tags_are_found_in_one_query(orch: Orch) -> None:
    many = [f"t{i}" for i in range(300)]
    every = orch.create_flow_run("etl", tags=many)
    orch.create_flow_run("etl", tags=many[:-1])
    assert [r.id for r in orch.read_flow_runs(tags=many)] == [every.id]
    assert [r.id for r in orch.read_flow_runs(tags=[*many, many[0]])] == [every.id]


def test_parent_task_run_ids_match_in_any_spelling_of_a_uuid(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    task = orch.create_task_run(flow.id, task_key="sub")
    child = orch.create_flow_run("child", parent_task_run_id=task.id)
    for spelling in (task.id, str(task.id), str(task.id).upper(), task.id.hex):
        assert [r.id for r in orch.read_flow_runs(parent_task_run_ids=[spelling])] == [child.id]


@pytest.mark.parametrize(
    ("filters", "error"),
    [
        ({"parent_task_run_ids": ["zzz"]}, InvalidIdError),
        ({"parent_task_run_ids": 5}, InvalidInputError),
        ({"flow_names": [1]}, InvalidInputError),
        ({"tags": [None]}, InvalidInputError),
        ({"tags": ["a\x00"]}, InvalidInputError),
        ({"state_names": ["a\x00"]}, InvalidInputError),
        ({"offset": 2**63}, InvalidInputError),
    ],
)
def test_a_filter_the_log_cannot_hold_is_a_typed_error(
    orch: Orch, filters: dict[str, Any], error: type
) -> None:
    with pytest.raises(error):
        orch.read_flow_runs(**filters)


@pytest.mark.parametrize("position", [-1, "3", None, 2.5, True])
def test_as_of_takes_a_whole_number_from_zero(orch: Orch, position: object) -> None:
    with pytest.raises(InvalidInputError):
        orch.as_of(position)  # type: ignore[arg-type]


# --- runs of the wrong kind, and changes of nothing ----------------------------------------------


def test_renaming_a_task_run_as_a_flow_run_says_what_it_is(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    task = orch.create_task_run(flow.id, task_key="t")
    before = orch.last_position()
    with pytest.raises(RunNotFoundError, match=f"no flow run with id {task.id}: it is a task run"):
        orch.set_flow_run_name(task.id, "renamed")
    assert orch.last_position() == before


def test_a_flow_run_named_as_a_parent_task_run_says_what_it_is(orch: Orch) -> None:
    flow = orch.create_flow_run("etl")
    with pytest.raises(RunNotFoundError, match="it is a flow run"):
        orch.create_flow_run("child", parent_task_run_id=flow.id)


def test_updating_a_flow_run_with_no_change_records_nothing(orch: Orch) -> None:
    flow = orch.create_flow_run("etl", retries=1)
    before = orch.last_position()
    assert orch.update_flow_run(flow.id).id == flow.id
    assert orch.last_position() == before


def test_a_proposer_may_not_take_the_name_of_the_subflow_copies(tmp_path: Any) -> None:
    from flowtrail import SyncOrchestrator

    with pytest.raises(InvalidInputError, match="subflow-mirror"):
        SyncOrchestrator.open(f"sqlite:///{tmp_path}/x.db", proposer="subflow-mirror")


def test_an_orchestrator_opened_read_only_verifies_and_reads_but_records_nothing(tmp_path: Any) -> None:
    from flowtrail import SyncOrchestrator
    from flowtrail.core import StoreAccessError

    url = f"sqlite:///{tmp_path}/log.db"
    with SyncOrchestrator.open(url) as orch:
        run = orch.create_flow_run("etl", state=states.Pending())
    before = (tmp_path / "log.db").read_bytes()
    with SyncOrchestrator.open(f"{url}?mode=ro") as reader:
        assert reader.verify().ok
        assert reader.read_flow_run(run.id).state is not None
        with pytest.raises(StoreAccessError):
            reader.propose_state(run.id, states.Running())
        with pytest.raises(StoreAccessError):
            reader.rebuild()
    assert (tmp_path / "log.db").read_bytes() == before


# --- a state's fields are of the types its event decodes to ------------------------------------


def _details(**fields: Any) -> State:
    return State(type=StateType.RUNNING, state_details=StateDetails(**fields))


_MISTYPED: dict[str, Any] = {
    "message-int": lambda: states.Failed(message=5),
    "message-bytes": lambda: states.Failed(message=b"x"),
    "transition-id-text": lambda: _details(transition_id="nope"),
    "transition-id-int": lambda: _details(transition_id=5),
    "task-run-id-text": lambda: _details(task_run_id="not a uuid"),
    "pause-key-int": lambda: states.Paused(pause_key=5),
    "cache-key-int": lambda: _details(cache_key=5),
    "retriable-text": lambda: _details(retriable="yes"),
    "pause-reschedule-text": lambda: _details(pause_reschedule="yes"),
}


@pytest.mark.parametrize("make", list(_MISTYPED.values()), ids=list(_MISTYPED))
def test_a_state_with_a_field_of_the_wrong_type_is_refused_and_writes_nothing(orch: Orch, make: Any) -> None:
    """Its event would be written and never read back: every view and audit of the log
    would fail on it for good."""
    run = orch.create_flow_run("etl", state=states.Pending())
    _refused(orch, InvalidStateError, orch.propose_state, run.id, make())
    _refused(orch, InvalidStateError, orch.create_flow_run, "etl", state=make())


@pytest.mark.parametrize("name", ["", " ", "x" * 513])
def test_a_state_name_is_held_to_the_rules_of_run_names(orch: Orch, name: str) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    _refused(orch, InvalidInputError, orch.propose_state, run.id, states.Running(name=name))


def test_a_run_id_in_a_states_details_may_be_given_as_its_text(orch: Orch) -> None:
    run = orch.create_flow_run("etl", state=states.Pending())
    transition = uuid.uuid4()
    result = orch.propose_state(run.id, _details(transition_id=str(transition)))
    assert result.state.state_details.transition_id == transition
    assert orch.verify().ok
