"""@flow and the flow-run engine: each behaviour with the state history Prefect records
(PREFECT_SEMANTICS §6.3), for sync flows and, where it differs in mechanics, async ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from flowtrail import Orchestrator, SetStateStatus, StateType, SyncOrchestrator, flow, states, tags
from flowtrail.core import (
    CancelledRunError,
    FlowTimeoutError,
    InvalidUrlError,
    ParameterValidationError,
    ResultNotAvailableError,
    StateProposed,
    UnfinishedRunError,
)
from flowtrail.core import states as pure
from flowtrail.engine import run_flow_run, termination
from tests.conftest import Databases


@pytest.fixture
def orch(databases: Databases) -> Iterator[SyncOrchestrator]:
    """The log the flows write to (an enclosing block), on each backend."""
    with SyncOrchestrator.open(databases.url("flows")) as opened:
        yield opened


def history(orch: SyncOrchestrator, run_id: Any) -> list[str]:
    return [s.name for s in orch.read_states(run_id)]  # type: ignore[misc]


def only_run(orch: SyncOrchestrator, flow_name: str) -> Any:
    (run,) = orch.read_flow_runs(flow_names=[flow_name])
    return run


# --- running and returning ------------------------------------------------------------------


def test_a_flow_call_records_pending_running_completed_and_returns_the_value(orch: SyncOrchestrator) -> None:
    @flow
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    run = only_run(orch, "add")
    assert history(orch, run.id) == ["Pending", "Running", "Completed"]
    assert run.state.data == {"type": "json", "value": 5}
    assert run.parameters == {"a": 2, "b": 3}
    assert (run.run_count, run.start_time is not None, run.end_time is not None) == (1, True, True)


def test_return_state_gives_the_final_state(orch: SyncOrchestrator) -> None:
    @flow
    def answer() -> int:
        return 42

    state = answer(return_state=True)
    assert (state.type, state.data) == (StateType.COMPLETED, {"type": "json", "value": 42})
    assert state.state_details.flow_run_id == only_run(orch, "answer").id


def test_a_value_that_is_not_json_stays_in_memory_and_is_marked_unrecorded(orch: SyncOrchestrator) -> None:
    class Report:
        pass

    report = Report()

    @flow
    def build() -> Report:
        return report

    assert build() is report
    data = only_run(orch, "build").state.data
    assert data["type"] == "unpersisted"
    assert data["python_type"].endswith("Report")


def test_a_large_result_is_not_recorded(orch: SyncOrchestrator) -> None:
    @flow
    def big() -> str:
        return "x" * 100_000

    assert len(big()) == 100_000
    assert only_run(orch, "big").state.data == {"type": "unpersisted", "python_type": "str"}


def test_a_flow_name_defaults_to_the_function_name_with_hyphens(orch: SyncOrchestrator) -> None:
    @flow
    def load_daily_sales() -> None:
        pass

    load_daily_sales()
    assert only_run(orch, "load-daily-sales").flow_name == "load-daily-sales"


def test_returning_a_failed_state_fails_the_run(orch: SyncOrchestrator) -> None:
    @flow
    def judged() -> Any:
        return states.Failed(message="bad data")

    state = judged(return_state=True)
    assert (state.type, state.message) == (StateType.FAILED, "bad data")


def test_a_flow_returning_a_completed_state_returns_its_data(orch: SyncOrchestrator) -> None:
    @flow
    def judged() -> Any:
        return states.Completed(message="by hand", data=7)

    assert judged() == 7
    run = only_run(orch, "judged")
    assert (run.state.message, run.state.data) == ("by hand", {"type": "json", "value": 7})


def _returning_its_subflows_state() -> Any:
    """A parent flow returning the final state of its subflow, which returned 5."""

    @flow
    def child() -> int:
        return 5

    @flow
    def parent() -> Any:
        return child(return_state=True)

    return parent


def test_a_flow_returning_its_subflows_final_state_returns_the_subflows_value(orch: SyncOrchestrator) -> None:
    assert _returning_its_subflows_state()() == 5


def test_a_flow_returning_its_subflows_state_gets_a_state_of_its_own_not_the_childs_details(
    orch: SyncOrchestrator,
) -> None:
    state = _returning_its_subflows_state()(return_state=True)
    run = only_run(orch, "parent")
    assert (state.type, state.message, state.data) == (
        StateType.COMPLETED,
        "All states completed.",
        {"type": "json", "value": 5},
    )
    assert (state.state_details.flow_run_id, state.state_details.task_run_id) == (run.id, None)


@pytest.mark.parametrize(
    ("returned", "reached"),
    [
        (states.Paused, "Paused"),
        (states.Scheduled, "Scheduled"),
        (lambda: [states.Completed(), states.Paused()], "Paused"),
    ],
)
def test_a_flow_returning_a_state_that_is_not_final_ends_the_call_in_it(
    orch: SyncOrchestrator, returned: Any, reached: str
) -> None:
    calls: list[int] = []

    @flow
    def pausing() -> Any:
        calls.append(1)
        return returned()

    assert pausing(return_state=True).name == reached
    assert calls == [1]
    assert history(orch, only_run(orch, "pausing").id) == ["Pending", "Running", reached]


def test_a_call_ending_with_the_run_paused_raises_that_it_is_unfinished(orch: SyncOrchestrator) -> None:
    @flow
    def waiting() -> Any:
        return states.Paused()

    with pytest.raises(UnfinishedRunError, match="is Paused, not finished"):
        waiting()


def test_a_flow_returning_cancelling_fires_its_cancellation_hooks_once(orch: SyncOrchestrator) -> None:
    fired: list[str] = []

    @flow(on_cancellation=[lambda f, r, s: fired.append(s.name)])
    def stopping() -> Any:
        return states.Cancelling()

    with pytest.raises(CancelledRunError):
        stopping()
    assert fired == ["Cancelling"]
    assert history(orch, only_run(orch, "stopping").id) == ["Pending", "Running", "Cancelling"]


def test_text_that_utf8_cannot_hold_is_escaped_in_a_failure_and_leaves_a_result_unrecorded(
    orch: SyncOrchestrator,
) -> None:
    name = os.fsdecode(b"report-\xff.csv")  # as os.listdir gives an undecodable file name

    @flow
    def failing(path: str) -> None:
        raise ValueError(path)

    @flow
    def returning() -> str:
        return name

    with pytest.raises(ValueError, match="report-"):
        failing(name)
    failed = only_run(orch, "failing")
    assert failed.state.message == "Flow run encountered an exception: ValueError: report-\\udcff.csv"
    assert failed.parameters == {"path": "'report-\\udcff.csv'"}
    assert returning() == name
    assert only_run(orch, "returning").state.data == {"type": "unpersisted", "python_type": "str"}


def test_a_parameter_nested_too_deep_for_repr_is_recorded_by_its_type(orch: SyncOrchestrator) -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]

    @flow(validate_parameters=False)
    def take(rows: Any) -> int:
        return 1

    assert take(deep) == 1
    assert only_run(orch, "take").parameters == {"rows": "<list>"}


# --- parameters -------------------------------------------------------------------------------


def test_parameters_are_validated_and_converted_from_the_signature(orch: SyncOrchestrator) -> None:
    seen: list[Any] = []

    @flow
    def typed(n: int, ratio: float = 0.5) -> None:
        seen.append((n, ratio))

    typed("7")  # type: ignore[arg-type]
    assert seen == [(7, 0.5)]


def test_parameters_named_like_pydantic_model_attributes_reach_the_function_as_passed(
    orch: SyncOrchestrator,
) -> None:
    seen: list[Any] = []

    @flow
    def names(
        model_config: dict, model_extra: int, _x: int, model_fields_set: str, __pydantic_fields__: int
    ) -> None:  # type: ignore[type-arg]
        seen.append((model_config, model_extra, _x, model_fields_set, __pydantic_fields__))

    names({"layers": 4}, "1", 2, "s", 3)  # type: ignore[arg-type]
    assert seen == [({"layers": 4}, 1, 2, "s", 3)]
    with pytest.raises(ParameterValidationError, match="model_extra"):
        names({}, "one", 2, "s", 3)  # type: ignore[arg-type]


def test_invalid_parameters_fail_the_run_from_pending_without_calling_the_function(
    orch: SyncOrchestrator,
) -> None:
    called: list[int] = []

    @flow(retries=3)
    def typed(n: int) -> None:
        called.append(n)

    with pytest.raises(ParameterValidationError):
        typed("seven")  # type: ignore[arg-type]
    run = only_run(orch, "typed")
    assert called == []
    assert history(orch, run.id) == ["Pending", "Failed"]
    assert run.state.message.startswith(
        "Validation of flow parameters failed with error: ParameterValidationError: "
    )
    assert run.start_time == run.end_time


def test_validation_can_be_turned_off(orch: SyncOrchestrator) -> None:
    seen: list[Any] = []

    @flow(validate_parameters=False)
    def untyped(n: int) -> None:
        seen.append(n)

    untyped("7")  # type: ignore[arg-type]
    assert seen == ["7"]


def test_a_call_that_does_not_fit_the_signature_is_a_typed_error(orch: SyncOrchestrator) -> None:
    @flow
    def one(a: int) -> None:
        pass

    with pytest.raises(ParameterValidationError):
        one(1, 2)  # type: ignore[call-arg]


def _first_and_rest(first: int, *rest: int) -> object:
    return first, rest


def _every_kind(a: int, /, b: int, c: int = 3, *rest: int, d: int, e: int = 5, **more: int) -> object:
    return a, b, c, rest, d, e, more


def _keywords_only(*, a: int, b: int = 2) -> object:
    return a, b


def _positional_only(a: int, b: int = 2, /) -> object:
    return a, b


#: (function, positional arguments, keyword arguments, what the function receives)
_CALLS = [
    pytest.param(_first_and_rest, (1, 2, 3), {}, (1, (2, 3)), id="extra-positionals-after-a-named-one"),
    pytest.param(_first_and_rest, (1,), {}, (1, ()), id="no-extra-positionals"),
    pytest.param(
        _every_kind,
        (1, 2, 30, 40, 50),
        {"d": 4, "f": 6},
        (1, 2, 30, (40, 50), 4, 5, {"f": 6}),
        id="every-kind-filled",
    ),
    pytest.param(_every_kind, (1,), {"b": 2, "d": 4}, (1, 2, 3, (), 4, 5, {}), id="every-kind-defaults"),
    pytest.param(_keywords_only, (), {"a": 1}, (1, 2), id="keywords-only"),
    pytest.param(_positional_only, (1,), {}, (1, 2), id="positional-only-with-a-default"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "received"), _CALLS)
def test_a_flow_receives_its_arguments_as_they_were_passed_whatever_the_kinds_of_its_parameters(
    orch: SyncOrchestrator, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], received: object
) -> None:
    assert flow(function, name="shape")(*args, **kwargs) == received
    assert only_run(orch, "shape").state.type is StateType.COMPLETED


@pytest.mark.parametrize(("function", "args", "kwargs", "received"), _CALLS)
def test_an_async_flow_receives_its_arguments_as_they_were_passed_whatever_the_kinds_of_its_parameters(
    orch: SyncOrchestrator, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], received: object
) -> None:
    @functools.wraps(function)
    async def twin(*args: Any, **kwargs: Any) -> object:
        return function(*args, **kwargs)

    assert asyncio.run(flow(twin, name="shape")(*args, **kwargs)) == received
    assert only_run(orch, "shape").state.type is StateType.COMPLETED


# --- failures and retries ------------------------------------------------------------------------


def test_a_failing_flow_raises_its_exception_and_records_failed(orch: SyncOrchestrator) -> None:
    @flow
    def broken() -> None:
        raise RuntimeError("flow boom")

    with pytest.raises(RuntimeError, match="flow boom"):
        broken()
    run = only_run(orch, "broken")
    assert history(orch, run.id) == ["Pending", "Running", "Failed"]
    assert run.state.message == "Flow run encountered an exception: RuntimeError: flow boom"


def test_a_failure_with_retries_left_runs_again_after_awaiting_retry(orch: SyncOrchestrator) -> None:
    """Measured in Prefect: Pending, Running, AwaitingRetry (with the message), Running, Completed."""
    attempts: list[int] = []

    @flow(retries=1)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("flow boom")
        return "ok"

    assert flaky() == "ok"
    run = only_run(orch, "flaky")
    assert history(orch, run.id) == ["Pending", "Running", "AwaitingRetry", "Running", "Completed"]
    assert orch.read_states(run.id)[2].message == "Flow run encountered an exception: RuntimeError: flow boom"
    assert run.run_count == 2


def test_a_retry_without_delay_records_the_failure_and_the_next_running_in_one_commit(
    orch: SyncOrchestrator,
) -> None:
    attempts: list[int] = []

    @flow(retries=1)
    def flaky_once() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt")

    flaky_once()
    run = only_run(orch, "flaky-once")
    proposals = [e for e in orch.read_history(run.id) if isinstance(e.event, StateProposed)]
    retry, again = proposals[2], proposals[3]
    assert (retry.event.decision.state.name, again.event.decision.state.name) == ("AwaitingRetry", "Running")
    assert (again.position, again.recorded_at) == (retry.position + 1, retry.recorded_at)


def test_the_engine_sleeps_through_the_retry_delay(orch: SyncOrchestrator) -> None:
    attempts: list[float] = []

    @flow(retries=1, retry_delay_seconds=1)
    def slow_retry() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("again")

    slow_retry()
    assert attempts[1] - attempts[0] >= 0.9
    run = only_run(orch, "slow-retry")
    waits = [
        e.event
        for e in orch.read_history(run.id)
        if isinstance(e.event, StateProposed) and e.event.decision.status is SetStateStatus.WAIT
    ]
    assert waits, "the early Running proposals are recorded as WAIT decisions"


@pytest.mark.parametrize(("seconds", "recorded"), [(None, 0), (0.7, 0), (1.7, 1)])
def test_a_flow_run_records_its_retry_delay_in_whole_seconds_cut_short_as_prefects_client_sends_it(
    orch: SyncOrchestrator, seconds: float | None, recorded: int
) -> None:
    @flow(name="delayed", retries=1, retry_delay_seconds=seconds)
    def delayed() -> None:
        pass

    delayed()
    assert only_run(orch, "delayed").empirical_policy.retry_delay == recorded


def test_a_flow_returning_a_list_of_states_one_failed_ends_failed_and_returns_the_list(
    orch: SyncOrchestrator,
) -> None:
    """Prefect's engine returns what the function returned whenever it is not a State,
    whatever the run's state; flowtrail raised FlowFailedError."""
    returned = [pure.Completed(), pure.Failed(message="one")]

    @flow(name="listing")
    def listing() -> list[Any]:
        return returned

    assert listing() == returned
    run = only_run(orch, "listing")
    assert (run.state.name, run.state.message) == ("Failed", "1/2 states failed.")


def test_retries_run_out_and_the_last_failure_stands(orch: SyncOrchestrator) -> None:
    @flow(retries=2)
    def hopeless() -> None:
        raise ValueError("never")

    with pytest.raises(ValueError, match="never"):
        hopeless()
    run = only_run(orch, "hopeless")
    assert history(orch, run.id) == [
        "Pending",
        "Running",
        "AwaitingRetry",
        "Running",
        "AwaitingRetry",
        "Running",
        "Failed",
    ]
    assert run.run_count == 3


# --- timeouts -------------------------------------------------------------------------------------


def test_a_sync_flow_past_its_timeout_is_interrupted_and_timed_out(orch: SyncOrchestrator) -> None:
    @flow(timeout_seconds=0.3)
    def sleepy() -> None:
        time.sleep(5)

    started = time.monotonic()
    with pytest.raises(FlowTimeoutError, match=r"exceeded timeout of 0.3 second\(s\)"):
        sleepy()
    assert time.monotonic() - started < 2
    run = only_run(orch, "sleepy")
    assert history(orch, run.id) == ["Pending", "Running", "TimedOut"]
    assert run.state.type is StateType.FAILED


def test_a_timed_out_flow_with_retries_left_is_retried(orch: SyncOrchestrator) -> None:
    attempts: list[int] = []

    @flow(timeout_seconds=0.3, retries=1)
    def sometimes_slow() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(5)
        return "fast"

    assert sometimes_slow() == "fast"
    assert history(orch, only_run(orch, "sometimes-slow").id) == [
        "Pending",
        "Running",
        "AwaitingRetry",
        "Running",
        "Completed",
    ]


def test_an_async_flow_past_its_timeout_is_timed_out(databases: Databases) -> None:
    from flowtrail import Orchestrator

    @flow(timeout_seconds=0.2)
    async def sleepy() -> None:
        await asyncio.sleep(5)

    async def scenario() -> list[str]:
        async with Orchestrator.open(databases.url("async")) as orch:
            with pytest.raises(FlowTimeoutError):
                await sleepy()
            (run,) = await orch.read_flow_runs()
            return [s.name for s in await orch.read_states(run.id)]

    assert asyncio.run(scenario()) == ["Pending", "Running", "TimedOut"]


def test_an_async_flow_cancelled_by_its_caller_crashes_cancelled_by_the_runtime(databases: Databases) -> None:
    from flowtrail import Orchestrator

    @flow
    async def sleepy() -> None:
        await asyncio.sleep(5)

    async def scenario() -> Any:
        async with Orchestrator.open(databases.url("cancelled")) as orch:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sleepy(), 0.2)
            (run,) = await orch.read_flow_runs()
            return run.state

    state = asyncio.run(scenario())
    assert (state.name, state.message) == ("Crashed", "Execution was cancelled by the runtime environment.")


def test_an_async_parents_timeout_fails_its_async_subflow_as_a_sync_parents_does(
    databases: Databases,
) -> None:
    from flowtrail import Orchestrator

    @flow
    async def child() -> None:
        await asyncio.sleep(5)

    @flow(timeout_seconds=0.3)
    async def parent() -> None:
        await child()

    async def scenario() -> tuple[Any, Any]:
        async with Orchestrator.open(databases.url("nested")) as orch:
            with pytest.raises(FlowTimeoutError):
                await parent()
            (parent_run,) = await orch.read_flow_runs(flow_names=["parent"])
            (child_run,) = await orch.read_flow_runs(flow_names=["child"])
            return parent_run.state, child_run.state

    parent_state, child_state = asyncio.run(scenario())
    assert parent_state.name == "TimedOut"
    assert (child_state.name, child_state.message) == (
        "TimedOut",
        "Interrupted by the timeout of an enclosing flow run.",
    )


def test_an_enclosing_timeout_stops_a_subflow_and_times_out_the_parent(orch: SyncOrchestrator) -> None:
    @flow
    def child() -> None:
        time.sleep(5)

    @flow(timeout_seconds=0.3)
    def parent() -> None:
        child()

    with pytest.raises(FlowTimeoutError):
        parent()
    assert history(orch, only_run(orch, "parent").id) == ["Pending", "Running", "TimedOut"]
    assert only_run(orch, "child").state.type is StateType.FAILED


@pytest.mark.parametrize("thread", ["main", "other"])
def test_a_timeout_passing_while_a_subflow_is_being_created_ends_the_subflow_too(
    orch: SyncOrchestrator, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    """Raised inside the call that created the subflow (Pending and Running, one
    commit), the timeout cut the call off before the engine knew the run: it stayed
    Running for ever. On another thread than the main one, a watcher raises it."""
    create = SyncOrchestrator.create_flow_run

    def slowly_created(self: SyncOrchestrator, flow_name: str, **kwargs: Any) -> Any:
        run = create(self, flow_name, **kwargs)
        if flow_name == "child":
            time.sleep(0.6)  # the parent's deadline passes inside the call
        return run

    monkeypatch.setattr(SyncOrchestrator, "create_flow_run", slowly_created)

    @flow
    def child() -> None:
        pass

    @flow(timeout_seconds=0.3)
    def parent() -> None:
        child()

    def call() -> None:
        if thread == "main":
            parent()
        else:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(contextvars.copy_context().run, parent).result()

    with pytest.raises(FlowTimeoutError):
        call()
    assert history(orch, only_run(orch, "parent").id) == ["Pending", "Running", "TimedOut"]
    assert only_run(orch, "child").state.type is StateType.FAILED


def test_a_timeout_coming_through_as_a_thread_goes_back_into_the_engine_leaves_later_timeouts_working(
    orch: SyncOrchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off the main thread the timeout may come through in the few bytecodes before the
    thread takes it back on its way into the engine (here made wider): it skipped the
    step into the engine, and the thread's later flows ran past their timeouts."""
    into = termination._ThreadHolding._into
    came_through: list[str] = []

    def slowly_into(holding: Any) -> None:
        try:
            time.sleep(0.002)  # stands for those bytecodes
        except BaseException as exc:
            came_through.append(type(exc).__name__)
            raise
        into(holding)

    monkeypatch.setattr(termination._ThreadHolding, "_into", slowly_into)

    @flow(name="leaf")
    def leaf() -> None:
        pass

    @flow(name="looping", timeout_seconds=0.05)
    def looping() -> None:
        while True:
            leaf()

    @flow(name="later", timeout_seconds=0.1)
    def later() -> None:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pass

    def in_the_thread() -> float:
        for _ in range(20):
            with pytest.raises(FlowTimeoutError):
                looping()
        monkeypatch.undo()
        started = time.monotonic()
        with pytest.raises(FlowTimeoutError):
            later()
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        took = pool.submit(contextvars.copy_context().run, in_the_thread).result()
    assert came_through, "the window was never hit"
    assert took < 2
    assert {run.state.name for run in orch.read_flow_runs(flow_names=["leaf"])} <= {"Completed", "TimedOut"}


def test_a_timeout_is_not_swallowed_by_the_functions_own_except_exception(orch: SyncOrchestrator) -> None:
    caught: list[str] = []

    @flow(timeout_seconds=0.3)
    def polling() -> str:
        for _ in range(10):
            try:
                time.sleep(0.2)
            except Exception as exc:
                caught.append(type(exc).__name__)
        return "done"

    with pytest.raises(FlowTimeoutError):
        polling()
    assert caught == []
    assert only_run(orch, "polling").state.name == "TimedOut"


def test_a_timeout_passing_in_a_subflows_hook_times_out_the_parent(orch: SyncOrchestrator) -> None:
    @flow(on_completion=[lambda f, r, s: time.sleep(2)])
    def child() -> None:
        pass

    @flow(timeout_seconds=0.3)
    def parent() -> None:
        child()
        time.sleep(2)

    with pytest.raises(FlowTimeoutError):
        parent()
    assert only_run(orch, "parent").state.name == "TimedOut"


def test_a_timeout_passing_while_a_subflow_waits_to_retry_fails_the_subflow(orch: SyncOrchestrator) -> None:
    @flow(retries=1, retry_delay_seconds=5)
    def child() -> None:
        raise RuntimeError("first attempt")

    @flow(timeout_seconds=0.5)
    def parent() -> None:
        child()

    with pytest.raises(FlowTimeoutError):
        parent()
    child_run = only_run(orch, "child")
    assert history(orch, child_run.id) == ["Pending", "Running", "AwaitingRetry", "TimedOut"]
    assert child_run.state.message == "Interrupted by the timeout of an enclosing flow run."
    (task,) = orch.read_task_runs(flow_run_id=only_run(orch, "parent").id)
    assert task.state.type is StateType.FAILED


# --- crashes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (KeyboardInterrupt(), "Execution was aborted by an interrupt signal."),
        (SystemExit(3), "Execution was aborted by Python system exit call."),
    ],
)
def test_a_base_exception_crashes_the_run_forced_and_is_raised_again(
    orch: SyncOrchestrator, raised: BaseException, message: str
) -> None:
    crashed: list[str] = []

    @flow(on_crashed=[lambda f, r, s: crashed.append(s.name)])
    def interrupted() -> None:
        raise raised

    with pytest.raises(type(raised)):
        interrupted()
    run = only_run(orch, "interrupted")
    assert history(orch, run.id) == ["Pending", "Running", "Crashed"]
    assert run.state.message == message
    assert run.last_decision.policy == "MinimalFlowPolicy"
    assert crashed == ["Crashed"]


def test_a_flow_leaves_ctrl_c_as_it_found_it(orch: SyncOrchestrator) -> None:
    seen: list[object] = []

    @flow
    def noted() -> None:
        seen.append(signal.getsignal(signal.SIGINT))

    noted()
    assert seen != [signal.default_int_handler]  # held back during the engine's calls
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_async_flow_leaves_ctrl_c_to_asyncio_run_as_it_found_it(databases: Databases) -> None:
    @flow
    async def noted() -> None:
        await asyncio.sleep(0)

    async def main() -> tuple[object, object]:
        before = signal.getsignal(signal.SIGINT)
        async with Orchestrator.open(databases.url("ctrl_c")):
            await noted()
        return before, signal.getsignal(signal.SIGINT)

    before, after = asyncio.run(main())
    assert before is not signal.default_int_handler  # asyncio.run's own
    assert after is before


def test_a_sync_flow_called_from_a_coroutine_leaves_asyncio_runs_ctrl_c_in_place(
    orch: SyncOrchestrator,
) -> None:
    @flow
    def noted() -> None:
        pass

    async def main() -> tuple[object, object]:
        before = signal.getsignal(signal.SIGINT)
        noted()
        return before, signal.getsignal(signal.SIGINT)

    before, after = asyncio.run(main())
    assert before is not signal.default_int_handler  # asyncio.run's own
    assert after is before


def test_a_child_forked_while_a_call_held_signals_back_holds_none(orch: SyncOrchestrator) -> None:
    """A thread forking while the main one was inside a call: the child's flows must
    take their signals, not hold them for ever."""
    termination._main.depth, termination._main.pending = 1, signal.SIGTERM
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports by its exit status
            os._exit(0 if (termination._main.depth, termination._main.pending) == (0, None) else 1)
    finally:
        termination._main.reset()
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


def test_a_child_forked_in_an_async_flow_gets_sigterms_default_action(databases: Databases) -> None:
    """It kept the loop's no-op handler and wake-up socket: SIGTERM reached the parent's
    loop instead, which cancelled the parent's flow, and the child lived on."""

    @flow
    async def forking() -> int:
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports by its exit status
            usual = (
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
                and signal.set_wakeup_fd(-1) == -1
                and signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            )
            os._exit(0 if usual else 1)
        return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])

    async def main() -> int:
        async with Orchestrator.open(databases.url("async_fork")):
            return await forking()

    assert asyncio.run(main()) == 0


def test_a_flow_leaves_a_ctrl_c_handler_of_the_callers_alone(orch: SyncOrchestrator) -> None:
    def own(signum: int, frame: object) -> None:
        pass

    seen: list[object] = []

    @flow
    def noted() -> None:
        seen.append(signal.getsignal(signal.SIGINT))

    signal.signal(signal.SIGINT, own)
    try:
        noted()
        assert seen == [own]
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --- hooks ------------------------------------------------------------------------------------------


def test_hooks_fire_for_the_states_prefect_chooses(orch: SyncOrchestrator) -> None:
    fired: list[tuple[str, str]] = []

    def hook(kind: str) -> Any:
        return lambda f, run, state: fired.append((kind, state.name))

    @flow(
        retries=1,
        on_running=[hook("running")],
        on_failure=[hook("failure")],
        on_completion=[hook("completion")],
    )
    def twice() -> None:
        if sum(kind == "running" for kind, _ in fired) == 1:
            raise RuntimeError("first")

    twice()
    assert fired == [("running", "Running"), ("running", "Running"), ("completion", "Completed")]

    @flow(on_failure=[hook("failure")])
    def fails() -> None:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        fails()
    assert fired[-1] == ("failure", "Failed")


def test_a_failing_hook_is_logged_and_never_raised(orch: SyncOrchestrator) -> None:
    def broken_hook(f: Any, run: Any, state: Any) -> None:
        raise RuntimeError("hook boom")

    @flow(on_completion=[broken_hook])
    def fine() -> int:
        return 1

    with capture_logs() as logs:
        assert fine() == 1
    assert any(
        entry["event"].startswith("a hook failed") and entry.get("hook") == "broken_hook" for entry in logs
    )


@pytest.mark.parametrize("caller", ["plain code", "async code"])
def test_async_hooks_of_a_sync_flow_are_awaited(orch: SyncOrchestrator, caller: str) -> None:
    fired: list[str] = []

    async def hook(f: Any, run: Any, state: Any) -> None:
        await asyncio.sleep(0)
        fired.append(state.name)

    @flow(on_completion=[hook])
    def fine() -> int:
        return 1

    async def from_async_code() -> int:
        return fine()  # an event loop runs here: the hook gets one of its own elsewhere

    assert (fine() if caller == "plain code" else asyncio.run(from_async_code())) == 1
    assert fired == ["Completed"]


def test_a_failing_hooks_log_line_names_the_run_of_the_hook(orch: SyncOrchestrator) -> None:
    def broken(f: Any, run: Any, state: Any) -> None:
        raise RuntimeError("hook bug")

    @flow(on_completion=[broken])
    def child() -> None:
        pass

    @flow
    def parent() -> None:
        child()

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        parent()
    (line,) = [entry for entry in logs if entry["event"] == "a hook failed; the run goes on"]
    assert (line["flow_name"], line["flow_run_id"]) == ("child", str(only_run(orch, "child").id))


# --- names, tags, logging -------------------------------------------------------------------------


def test_a_flow_run_name_template_is_applied_before_running(orch: SyncOrchestrator) -> None:
    @flow(flow_run_name="named-{a}")
    def named(a: int) -> None:
        pass

    named(1)
    run = only_run(orch, "named")
    assert run.name == "named-1"
    created = orch.read_history(run.id)[0].event
    assert created.name == "named-1"  # the run has its name from its creation, before Running


def test_an_adopted_run_is_renamed_before_running(orch: SyncOrchestrator) -> None:
    @flow(flow_run_name="day-{day}")
    def daily(day: str) -> None:
        pass

    run = orch.create_flow_run("daily", parameters={"day": "mon"}, state=pure.Pending())
    run_flow_run(daily, run.id)
    kinds = [e.event_type for e in orch.read_history(run.id)]
    assert kinds[:3] == ["flow_run_created", "state_proposed", "run_renamed"]
    assert orch.read_flow_run(run.id).name == "day-mon"


@pytest.mark.parametrize("validated", [True, False])
def test_an_adopted_run_naming_a_parameter_the_flow_does_not_take_fails(
    orch: SyncOrchestrator, validated: bool
) -> None:
    """A run made ahead, or by another version of the flow, may name parameters the
    function does not take: Prefect's SignatureMismatchError, where a KeyError escaped
    and the run stayed Scheduled."""

    @flow(validate_parameters=validated)
    def daily(day: str) -> None:
        pass

    run = orch.create_flow_run("daily", parameters={"day": "mon", "hour": 3}, state=pure.Scheduled())
    with pytest.raises(ParameterValidationError, match=r"expects parameters \['day'\]"):
        run_flow_run(daily, run.id)
    assert orch.read_flow_run(run.id).state.type is StateType.FAILED


def test_a_flow_run_name_can_come_from_a_callable(orch: SyncOrchestrator) -> None:
    @flow(flow_run_name=lambda: "from-callable")
    def named() -> None:
        pass

    named()
    assert only_run(orch, "named").name == "from-callable"


def test_tags_come_from_the_tags_context(orch: SyncOrchestrator) -> None:
    @flow
    def tagged() -> None:
        pass

    with tags("nightly"), tags("eu"):
        tagged()
    assert only_run(orch, "tagged").tags == ("nightly", "eu")


def test_logs_in_a_flow_carry_the_run_id_flow_and_run_names(orch: SyncOrchestrator) -> None:
    @flow(flow_run_name="logging-run")
    def logging_flow() -> None:
        structlog.get_logger("user").info("hello")

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        logging_flow()
    (hello,) = [entry for entry in logs if entry["event"] == "hello"]
    run = only_run(orch, "logging-flow")
    assert (hello["flow_run_id"], hello["flow_name"], hello["flow_run_name"]) == (
        str(run.id),
        "logging-flow",
        "logging-run",
    )


def test_log_prints_turns_print_into_log_lines(
    orch: SyncOrchestrator, capsys: pytest.CaptureFixture[str]
) -> None:
    @flow(log_prints=True)
    def chatty() -> None:
        print("from the flow")

    with capture_logs() as logs:
        chatty()
    assert any(entry["event"] == "from the flow" for entry in logs)
    assert "from the flow" not in capsys.readouterr().out
    print("after the flow")
    assert "after the flow" in capsys.readouterr().out


def test_log_prints_with_the_default_logger_writes_each_print_once_as_a_log_line(tmp_path: Path) -> None:
    """structlog's default logger prints its lines: that print must not be logged again
    (it took the logger's lock a second time, and the flow hung on its first print)."""
    script = (
        "from flowtrail import flow, SyncOrchestrator\n"
        "@flow(log_prints=True)\n"
        "def printer():\n"
        "    print('hello from the flow')\n"
        "    return 1\n"
        f"with SyncOrchestrator.open('sqlite:///{tmp_path / 'prints.db'}'):\n"
        "    print('result', printer())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if "hello from the flow" in line and "[info" in line] != []
    assert sum("hello from the flow" in line for line in lines) == 1
    assert done.stdout == "result 1\n"


def test_with_structlog_left_unconfigured_a_flow_prints_its_info_lines_and_no_debug_ones(
    tmp_path: Path,
) -> None:
    script = (
        "from flowtrail import flow, SyncOrchestrator\n"
        "@flow\n"
        "def quiet():\n"
        "    return 1\n"
        f"with SyncOrchestrator.open('sqlite:///{tmp_path / 'quiet.db'}'):\n"
        "    quiet()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    )
    assert "flow run finished" in done.stderr
    assert "[debug" not in done.stderr


def test_with_structlog_left_unconfigured_log_lines_go_to_stderr_leaving_stdout_to_the_program(
    tmp_path: Path,
) -> None:
    """``python etl.py > out.json`` must not find log lines in its output (Prefect's
    console logs go to standard error too)."""
    script = (
        "import json\n"
        "from flowtrail import flow, SyncOrchestrator\n"
        "@flow\n"
        "def etl():\n"
        "    return {'rows': 3}\n"
        f"with SyncOrchestrator.open('sqlite:///{tmp_path / 'etl.db'}'):\n"
        "    print(json.dumps(etl()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    )
    assert json.loads(done.stdout) == {"rows": 3}
    assert "flow run created" in done.stderr


def test_with_structlog_left_unconfigured_a_flow_runs_where_there_is_no_standard_error(
    tmp_path: Path,
) -> None:
    """pythonw, or a daemon started with its descriptor 2 closed: sys.stderr is None,
    and every flow call failed on the logger's ``isatty``."""
    script = (
        "from flowtrail import flow, SyncOrchestrator\n"
        "@flow\n"
        "def etl(x: int) -> int:\n"
        "    return x * 2\n"
        f"with SyncOrchestrator.open('sqlite:///{tmp_path / 'quiet.db'}'):\n"
        "    print(etl(21))\n"
    )
    without_stderr = (
        f"import os, sys; os.close(2); os.execv(sys.executable, [sys.executable, '-c', {script!r}])"
    )
    done = subprocess.run(
        [sys.executable, "-c", without_stderr], check=False, stdout=subprocess.PIPE, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "42\n")


def test_with_structlog_left_unconfigured_a_failing_hooks_traceback_shows_no_local_variables(
    tmp_path: Path,
) -> None:
    """structlog's default drew each frame with its local variables: about 180 lines
    for one failing hook, a whole run's view among them."""
    script = (
        "from flowtrail import flow, SyncOrchestrator\n"
        "secret_local = 'a local variable'\n"
        "def hook(flow, run, state):\n"
        "    inside = secret_local\n"
        "    raise ValueError('hook failed')\n"
        "@flow(on_completion=[hook])\n"
        "def done():\n"
        "    return 1\n"
        f"with SyncOrchestrator.open('sqlite:///{tmp_path / 'hook.db'}'):\n"
        "    done()\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    )
    assert "ValueError: hook failed" in ran.stderr
    assert "'a local variable'" not in ran.stderr
    assert len(ran.stderr.splitlines()) < 30


# --- subflows --------------------------------------------------------------------------------------


def test_a_subflow_run_names_the_flow_run_that_called_it(orch: SyncOrchestrator) -> None:
    @flow(name="child")
    def child() -> int:
        return 1

    @flow(name="parent")
    def parent() -> int:
        return child()

    parent()
    assert only_run(orch, "child").parent_flow_run_id == only_run(orch, "parent").id


def test_a_subflow_gets_a_parent_task_run_and_its_states_are_mirrored(orch: SyncOrchestrator) -> None:
    @flow
    def child(x: int) -> int:
        return x * 2

    @flow
    def parent() -> list[int]:
        return [child(1), child(2)]

    assert parent() == [2, 4]
    parent_run = only_run(orch, "parent")
    tasks = orch.read_task_runs(parent_run.id)
    assert [(t.dynamic_key, t.name) for t in tasks] == [("0", "child-0"), ("1", "child-1")]
    for task in tasks:
        child_run = orch.find_subflow_run(task.id)
        assert child_run is not None
        assert child_run.parent_task_run_id == task.id
        assert history(orch, child_run.id) == ["Pending", "Running", "Completed"]
        # The task run is created Pending, then takes a copy of every state of its child.
        assert history(orch, task.id) == ["Pending", "Pending", "Running", "Completed"]
        assert task.state.state_details.child_flow_run_id == child_run.id


def test_each_subflow_counts_its_own_calls_in_the_keys_and_names_of_its_parent_task_runs(
    orch: SyncOrchestrator,
) -> None:
    """Prefect keeps one count of dynamic keys per task key, not one for the flow run."""

    @flow
    def load() -> None:
        pass

    @flow
    def publish() -> None:
        pass

    @flow
    def parent() -> None:
        load()
        publish()
        load()

    parent()
    tasks = orch.read_task_runs(only_run(orch, "parent").id)
    assert [(t.dynamic_key, t.name) for t in tasks] == [("0", "load-0"), ("0", "publish-0"), ("1", "load-1")]


def test_a_retried_parent_calling_another_subflow_first_reuses_each_finished_child_for_its_own_call(
    orch: SyncOrchestrator,
) -> None:
    """The retry's extra call takes no key from the others: each call finds the child
    it made in the failed attempt, not the one made by the call before it."""

    @flow
    def double(x: int) -> int:
        return 2 * x

    @flow
    def notify() -> None:
        pass

    attempts: list[int] = []

    @flow(retries=1)
    def parent() -> tuple[int, int]:
        attempts.append(1)
        if len(attempts) > 1:
            notify()  # a branch only the retry takes
        made = double(1), double(2)
        if len(attempts) == 1:
            raise RuntimeError("after the children")
        return made

    assert parent() == (2, 4)
    assert len(orch.read_flow_runs(flow_names=["double"])) == 2, "both children are reused"


def _failing_once_after(child: Any, give: Any = lambda made: made) -> Any:
    """A flow with a retry that calls ``child``, fails its first attempt after it, and
    returns ``give`` of what the child gave."""
    attempts: list[int] = []

    @flow(retries=1)
    def parent() -> Any:
        attempts.append(1)
        made = child()
        if len(attempts) == 1:
            raise RuntimeError("after the child")
        return give(made)

    return parent


def test_a_retried_parent_reuses_its_finished_child(orch: SyncOrchestrator) -> None:
    child_calls: list[int] = []

    @flow
    def child() -> str:
        child_calls.append(1)
        return "made"

    parent = _failing_once_after(child)
    assert parent() == "made"
    assert child_calls == [1], "the finished child is reused, not run again"
    assert len(orch.read_flow_runs(flow_names=["child"])) == 1


def test_a_retried_parent_runs_again_a_finished_child_whose_result_was_not_recorded(
    orch: SyncOrchestrator,
) -> None:
    """Prefect re-runs a completed child with no persisted result when the parent reruns:
    a result flowtrail could not record (not JSON) has nothing to give back either."""

    class Opaque:
        pass

    child_calls: list[int] = []

    @flow
    def child() -> Opaque:
        child_calls.append(1)
        return Opaque()

    parent = _failing_once_after(child, give=lambda made: type(made).__name__)
    assert parent() == "Opaque"
    assert child_calls == [1, 1]
    assert len(orch.read_flow_runs(flow_names=["child"])) == 2


def test_the_log_line_of_a_reused_child_names_the_child(orch: SyncOrchestrator) -> None:
    @flow
    def child() -> str:
        return "made"

    with capture_logs() as logs:
        _failing_once_after(child)()
    (reused,) = [entry for entry in logs if entry["event"] == "reusing the finished subflow run"]
    (child_run,) = orch.read_flow_runs(flow_names=["child"])
    assert (reused["flow_run_id"], reused["flow_name"], reused["flow_run_name"]) == (
        str(child_run.id),
        "child",
        child_run.name,
    )


def test_a_retried_parent_whose_child_failed_runs_a_fresh_child(orch: SyncOrchestrator) -> None:
    child_calls: list[int] = []

    @flow
    def child() -> str:
        child_calls.append(1)
        if len(child_calls) == 1:
            raise RuntimeError("child failed")
        return "second time"

    @flow(retries=1)
    def parent() -> str:
        return child()

    assert parent() == "second time"
    assert len(orch.read_flow_runs(flow_names=["child"])) == 2


def test_an_async_subflow_in_an_async_parent(databases: Databases) -> None:
    from flowtrail import Orchestrator

    @flow
    async def child(x: int) -> int:
        return x + 1

    @flow
    async def parent() -> int:
        return await child(1) + await child(2)

    async def scenario() -> tuple[int, int]:
        async with Orchestrator.open(databases.url("a")) as orch:
            value = await parent()
            (run,) = await orch.read_flow_runs(flow_names=["parent"])
            return value, len(await orch.read_task_runs(run.id))

    assert asyncio.run(scenario()) == (5, 2)


def _cancelling_the_parent_after_the_second_subflows_creation(
    monkeypatch: pytest.MonkeyPatch, parent: dict[str, asyncio.Task[Any]]
) -> None:
    """The parent's task is cancelled just after the second subflow's creation has
    committed, before the call returns: where the call was cut off there, the script
    never knew the subflow it had written Running."""
    create = Orchestrator.create_flow_run
    created = iter(range(1, 100))

    async def created_then_cancelled(self: Orchestrator, flow_name: str, **kwargs: Any) -> Any:
        run = await create(self, flow_name, **kwargs)
        if flow_name == "side-child" and next(created) == 2:
            parent["task"].cancel()
            await asyncio.sleep(0.05)  # the cancellation reaches the subflows meanwhile
        return run

    monkeypatch.setattr(Orchestrator, "create_flow_run", created_then_cancelled)


@flow(name="side-child")
async def _side_child(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@flow(name="side-parent")
async def _side_parent() -> float:
    return sum(await asyncio.gather(_side_child(5), _side_child(5), _side_child(5)))


def _histories(url: str) -> list[list[str]]:
    with SyncOrchestrator.open(url) as orch:
        return sorted([s.name for s in orch.read_states(run.id)] for run in orch.read_flow_runs())


@pytest.mark.parametrize("where", ["block", "environment"])
def test_subflows_gathered_side_by_side_record_their_end_when_the_parent_is_cancelled_amid_a_creation(
    databases: Databases, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Each subflow runs in a task of its own, reached by the parent's cancellation in
    the middle of a call; and `asyncio.gather` returns at its first child ended, so the
    others must still find their log open to record their end."""
    url = databases.url("side")
    parent: dict[str, asyncio.Task[Any]] = {}
    _cancelling_the_parent_after_the_second_subflows_creation(monkeypatch, parent)

    async def call_the_parent() -> None:
        parent["task"] = asyncio.ensure_future(_side_parent())
        with pytest.raises(asyncio.CancelledError):
            await parent["task"]

    async def scenario() -> None:
        if where == "block":
            async with Orchestrator.open(url):
                await call_the_parent()
        else:
            monkeypatch.setenv("FLOWTRAIL_DATABASE_URL", url)
            await call_the_parent()

    asyncio.run(scenario())
    histories = _histories(url)  # the third subflow may be cancelled before it is created
    assert len(histories) >= 3
    assert histories == [["Pending", "Running", "Crashed"]] * len(histories)


def test_a_flow_left_running_as_its_block_ends_is_cancelled_and_records_its_end_first(
    databases: Databases,
) -> None:
    """A flow in a task nobody awaited (a poller, cancelled by its caller after the
    block) found its log closed and stayed Running; waiting for it instead would wait
    for ever. The block cancels it, as `asyncio.run` cancels the tasks left, and closes
    the log once it has recorded its end."""
    url = databases.url("left")

    @flow(name="poller")
    async def poller() -> None:
        while True:
            await asyncio.sleep(0.01)

    async def scenario() -> asyncio.Task[None]:
        async with Orchestrator.open(url):
            left = asyncio.ensure_future(poller())
            await asyncio.sleep(0.1)
        assert left.done()
        return left

    left = asyncio.run(scenario())
    assert left.cancelled()
    with SyncOrchestrator.open(url) as orch:
        (run,) = orch.read_flow_runs()
        assert (run.state.name, run.state.message) == (
            "Crashed",
            "Execution was cancelled by the runtime environment.",
        )


def test_a_subflow_outliving_its_parent_records_its_end_on_the_log_the_engine_opened(
    databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`asyncio.gather` raises its first child's failure at once; the other subflow
    goes on after its parent ended, and the log opened for the parent stays open for it."""
    url = databases.url("outlived")
    monkeypatch.setenv("FLOWTRAIL_DATABASE_URL", url)

    @flow(name="side-failing")
    async def failing() -> None:
        raise ValueError("at once")

    @flow(name="side-parent")
    async def parent() -> None:
        await asyncio.gather(failing(), _side_child(0.2))

    async def scenario() -> None:
        with pytest.raises(ValueError, match="at once"):
            await parent()
        await asyncio.sleep(0.5)  # the other subflow ends meanwhile

    asyncio.run(scenario())
    with SyncOrchestrator.open(url) as orch:
        (child,) = orch.read_flow_runs(flow_names=["side-child"])
        assert (child.state.name, orch.read_flow_runs(flow_names=["side-parent"])[0].state.name) == (
            "Completed",
            "Failed",
        )


# --- where it writes ----------------------------------------------------------------------------


def test_without_an_enclosing_block_flows_write_to_the_url_in_the_environment(
    databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = databases.url("env")
    monkeypatch.setenv("FLOWTRAIL_DATABASE_URL", url)

    @flow
    def env_flow() -> int:
        return 1

    env_flow()
    with SyncOrchestrator.open(url) as orch:
        assert len(orch.read_flow_runs(flow_names=["env-flow"])) == 1


def _in_a_thread(call: Any) -> Any:
    """``call()`` in a plain thread, which starts with a context of its own."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(call()))
    thread.start()
    thread.join()
    return outcome[0]


def test_a_flow_called_in_a_thread_of_its_own_writes_to_the_block_open_in_the_process(
    databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread does not inherit the context of the one that opened the block: its
    flows went to the log under the home directory without a word."""
    monkeypatch.delenv("FLOWTRAIL_DATABASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    @flow(name="in-thread")
    def sync_flow() -> int:
        return 1

    @flow(name="in-thread-async")
    async def async_flow() -> int:
        return 2

    with SyncOrchestrator.open(databases.url("threads")) as orch:
        assert _in_a_thread(sync_flow) == 1
        assert _in_a_thread(lambda: asyncio.run(async_flow())) == 2
        assert sorted(r.flow_name for r in orch.read_flow_runs()) == ["in-thread", "in-thread-async"]
    assert not (tmp_path / ".flowtrail").exists()


def test_a_flow_called_in_a_thread_while_two_logs_are_open_elsewhere_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    @flow(name="in-thread")
    def sync_flow() -> int:
        return 1

    def called() -> object:
        try:
            return sync_flow()
        except InvalidUrlError as exc:
            return exc

    with (
        SyncOrchestrator.open(f"sqlite:///{tmp_path}/one.db"),
        SyncOrchestrator.open(f"sqlite:///{tmp_path}/two.db"),
    ):
        refusal = _in_a_thread(called)
    assert isinstance(refusal, InvalidUrlError)
    assert "2 logs are open" in str(refusal)
    assert not (tmp_path / ".flowtrail").exists()


def test_without_any_setting_flows_write_under_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWTRAIL_DATABASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    @flow
    def home_flow() -> int:
        return 1

    home_flow()
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/.flowtrail/flowtrail.db") as orch:
        assert len(orch.read_flow_runs(flow_names=["home-flow"])) == 1


def test_an_async_flow_in_a_sync_block_writes_to_the_same_log(orch: SyncOrchestrator) -> None:
    @flow
    async def async_flow() -> int:
        return 7

    assert asyncio.run(async_flow()) == 7
    assert len(orch.read_flow_runs(flow_names=["async-flow"])) == 1


# --- adopting a run created ahead -----------------------------------------------------------------


def test_a_flow_can_run_as_an_existing_run_filling_its_retry_settings(orch: SyncOrchestrator) -> None:
    @flow(retries=1)
    def scheduled(day: str) -> str:
        return day.upper()

    run = orch.create_flow_run("scheduled", parameters={"day": "mon"}, state=pure.Pending())
    assert run_flow_run(scheduled, run.id) == "MON"
    after = orch.read_flow_run(run.id)
    assert (after.empirical_policy.retries, after.state.type) == (1, StateType.COMPLETED)


def test_a_run_scheduled_ahead_is_waited_for(orch: SyncOrchestrator) -> None:
    from datetime import UTC, datetime, timedelta

    @flow
    def later() -> None:
        pass

    when = datetime.now(UTC) + timedelta(seconds=1.2)
    run = orch.create_flow_run(
        "later", state=pure.Scheduled(scheduled_time=when, timestamp=datetime.now(UTC))
    )
    run_flow_run(later, run.id)
    assert orch.read_flow_run(run.id).start_time >= when - timedelta(milliseconds=600)


def test_a_run_being_cancelled_does_not_start(orch: SyncOrchestrator) -> None:
    @flow
    def cancelled() -> None:
        raise AssertionError("must not run")

    run = orch.create_flow_run("cancelled", state=pure.Cancelling())
    with pytest.raises(CancelledRunError):
        run_flow_run(cancelled, run.id)


def test_a_reused_child_without_a_recorded_result_says_so(orch: SyncOrchestrator) -> None:
    from flowtrail.engine.flow_engine import Outcome

    run = orch.create_flow_run("x", state=pure.Completed(data={"type": "unpersisted", "python_type": "X"}))
    with pytest.raises(ResultNotAvailableError):
        Outcome(state=run.state, run=run).result(False)
