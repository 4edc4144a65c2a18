"""The flow-run engine: Prefect's FlowRunEngine behaviour, written once as a script.

The script decides what happens and in what order; it yields effects for everything
that touches the world, which a sync driver and an async driver carry out
(`flowtrail.engine.flow_drivers`):

- `Call`: an orchestrator method (create a run, propose a state, ...);
- `Sleep`: wait (a WAIT answer, a Pending run, a retry delay);
- `Invoke`: run the flow's function once, with its timeout, context and logging;
- `Hooks`: run the hooks chosen for the state the run reached.

A driver throws what an effect raised back into the script, BaseExceptions included,
so one place decides what a failure, a timeout, a crash or a cancellation records.
States are built without a timestamp: the orchestrator stamps each proposal when it is
made, so a state proposed again after a wait carries the time it was accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import msgspec

from flowtrail.core import states as pure
from flowtrail.core.errors import (
    AbortedError,
    CancelledRunError,
    FlowFailedError,
    FlowTimeoutError,
    FlowtrailError,
    ParameterValidationError,
    ResultNotAvailableError,
    UnfinishedRunError,
    ViewsOutOfDateError,
)
from flowtrail.core.events import SetStateStatus
from flowtrail.core.flow_rules import has_persisted_result
from flowtrail.core.fold import RunView
from flowtrail.core.states import State, StateDetails
from flowtrail.engine.context import FlowRunContext, current_tags, task_run_name
from flowtrail.engine.flows import (
    Flow,
    Hook,
    exception_data,
    exception_text,
    is_recorded_data,
    jsonable_parameters,
    result_data,
)
from flowtrail.engine.logs import get_logger
from flowtrail.engine.results import OrchestrationResult
from flowtrail.engine.timeouts import FlowTimeout

__all__ = [
    "Call",
    "EngineScript",
    "FlowRunScript",
    "Hooks",
    "Invoke",
    "Outcome",
    "Sleep",
    "TerminationSignal",
]

T = TypeVar("T")

#: Prefect's engine polls a Pending run this often (seconds).
PENDING_POLL = 0.2


class TerminationSignal(SystemExit):
    """The process was asked to stop (SIGTERM) while a flow ran: the run is cancelled.

    A SystemExit, so that when nothing else handles it the process ends with the
    conventional status (128 + the signal number).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal = signum


class Call(NamedTuple):
    """Call an orchestrator method; the result is its return value."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = {}


class Sleep(NamedTuple):
    seconds: float


class Invoke(NamedTuple):
    """Run the flow's function once with these (validated) parameters, as ``run``."""

    flow: Flow[Any, Any]
    parameters: Mapping[str, Any]
    run: RunView
    token: object


class Hooks(NamedTuple):
    hooks: Sequence[Hook]
    flow: Flow[Any, Any]
    run: RunView
    state: State


EngineEffect = Call | Sleep | Invoke | Hooks
EngineScript = Generator[EngineEffect, Any, T]

_MISSING: Any = object()


@dataclass
class Outcome:
    """How a flow call ended: its final state, and its value or exception at hand."""

    state: State
    run: RunView
    value: Any = _MISSING
    error: BaseException | None = None
    #: Whether ``value`` is what the function returned, and not a State.
    returned: bool = False

    def result(self, return_state: bool) -> Any:
        """What the call returns: the State, the value, or the exception raised."""
        state = self.state
        if return_state:
            return state
        if self.returned:
            # As Prefect's engine: what the function returned, unless a State, whatever
            # the run's state (a list of states, one failed, ends the run Failed).
            return self.value
        if state.is_completed():
            if self.value is not _MISSING:
                return self.value
            data = state.data
            if isinstance(data, dict) and data.get("type") == "json":
                return data.get("value")
            raise ResultNotAvailableError(
                f"flow run {self.run.id} completed, but its result was not recorded "
                f"({data.get('python_type', 'no data') if isinstance(data, dict) else 'no data'})"
            )
        if self.error is not None:
            raise self.error
        if state.is_cancelled() or state.is_cancelling():
            raise CancelledRunError(f"flow run {self.run.id} was cancelled: {state.message or state.name}")
        if not state.is_final():
            raise UnfinishedRunError(
                f"flow run {self.run.id} is {state.name}, not finished: it has no result yet"
            )
        raise FlowFailedError(
            f"flow run {self.run.id} ended {state.name}: {state.message or ''}".rstrip(": ")
        )


def crash_message(exc: BaseException) -> str:
    """Prefect's message for a run that crashed on ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return "Execution was aborted by an interrupt signal."
    if isinstance(exc, TerminationSignal):
        return "Execution was aborted by a termination signal."
    if isinstance(exc, SystemExit):
        return "Execution was aborted by Python system exit call."
    if isinstance(exc, asyncio.CancelledError):
        return "Execution was cancelled by the runtime environment."
    return (
        f"Execution was interrupted by an unexpected exception: {type(exc).__name__}: {exception_text(exc)}"
    )


def completion_state(value: object) -> State:
    """Prefect's return_value_to_state: a returned State (or states) decides the run's
    final state; any other value completes it, recorded when it is JSON."""
    if isinstance(value, State) and not _of_a_run(value):
        # Made by hand: the run's state as it is. The orchestrator stamps it when it is
        # proposed, like every state the engine sends; its data is recorded as a
        # returned value's is.
        data = value.data
        if data is not None and not is_recorded_data(data):
            data = result_data(data)
        return msgspec.structs.replace(value, timestamp=None, data=data)
    if isinstance(value, State):
        # Another run's state (a subflow's, say): a state of this run's own, of the
        # same kind, with the result it holds; never that run's ids and details.
        return msgspec.structs.replace(_aggregate([value]), data=value.data)
    if isinstance(value, list | tuple) and value and all(isinstance(v, State) for v in value):
        return _aggregate(list(value))
    return pure.Completed(data=result_data(value))


def _of_a_run(state: State) -> bool:
    details = state.state_details
    return details.flow_run_id is not None or details.task_run_id is not None


def _aggregate(states: list[State]) -> State:
    """Prefect's state for a run that returned ``states``: all completed, any
    cancelled, any paused, any failed, in that order."""
    total = len(states)
    if all(s.is_completed() for s in states):
        return pure.Completed(message="All states completed.")
    cancelled = sum(s.is_cancelled() for s in states)
    if cancelled:
        return pure.Cancelled(message=f"{cancelled}/{total} states cancelled.")
    paused = sum(s.is_paused() for s in states)
    if paused:
        return pure.Paused(message=f"{paused}/{total} states paused.")
    failed = sum(s.is_failed() or s.is_crashed() for s in states)
    if failed:
        return pure.Failed(message=f"{failed}/{total} states failed.")
    unfinished = sum(not s.is_final() for s in states)
    return pure.Failed(message=f"{unfinished}/{total} states are not final.")


@dataclass
class FlowRunScript:
    """One flow call, from the run's creation to its final state."""

    flow: Flow[Any, Any]
    parameters: dict[str, Any]
    parent: FlowRunContext | None = None
    adopt: RunView | None = None
    run: RunView | None = None
    state: State | None = None
    value: Any = _MISSING
    error: BaseException | None = None
    returned: bool = False
    log: Any = field(default_factory=lambda: get_logger("flowtrail.flow_runs"))

    def execute(self) -> EngineScript[Outcome]:
        """The whole flow call; see the module's docstring."""
        try:
            values, name, failure = self._prepare()
            if self.adopt is not None:
                yield from self._adopted(self.adopt)
                yield from self._start(name, failure)
            else:
                task, existing, reused = None, None, None
                if self.parent is not None:
                    task, existing, reused = yield from self._find_child(self.parent)
                if reused is not None:
                    return reused
                if existing is not None:
                    self._track(existing)
                    yield from self._start(name, failure)
                else:
                    yield from self._create_and_start(name, failure, task)
            if failure is None:
                while self.state is not None and self.state.is_running():
                    yield from self._attempt(values)
            return self._outcome()
        except TerminationSignal as signal:
            yield from self._cancel(signal)
            raise
        except GeneratorExit:
            raise
        except FlowtrailError:
            # The orchestrator refused (an ABORT, a busy store): nothing to record here
            # that the caller will not see.
            raise
        except FlowTimeout as exc:
            # An enclosing flow's time is up (this run's own is taken in `_attempt`),
            # wherever this run was: in its function, a hook, a retry's wait. It stops
            # with its parent, and is not left Running or AwaitingRetry for ever. Named
            # TimedOut as in Prefect, whose child takes the parent's timeout error as its
            # own; the message says whose time it was.
            if self.run is not None and not (self.state is not None and self.state.is_final()):
                yield from self._set(
                    pure.TimedOut(
                        message="Interrupted by the timeout of an enclosing flow run.",
                        data=exception_data(exc),
                    )
                )
            raise
        except BaseException as exc:
            if self.run is not None and not (self.state is not None and self.state.is_final()):
                yield from self._crash(exc)
            raise

    # -- the steps ------------------------------------------------------------------------

    def _prepare(self) -> tuple[dict[str, Any], str | None, State | None]:
        """Validate the parameters and resolve the run's name, before anything is written.

        A failure here is the state to propose from Pending: Failed, the function never
        called (Prefect: "Validation of flow parameters failed with error: ...").
        """
        flow = self.flow
        values = dict(self.parameters)
        if flow.should_validate_parameters:
            try:
                values = flow.validate(self.parameters)
            except ParameterValidationError as exc:
                self.error = exc
                message = (
                    "Validation of flow parameters failed with error: "
                    f"{type(exc).__name__}: {exception_text(exc)}"
                )
                return values, None, pure.Failed(message=message, data=exception_data(exc))
        try:
            name = flow.run_name(values)
        except Exception as exc:
            self.error = exc
            message = f"Could not resolve the flow run name: {type(exc).__name__}: {exception_text(exc)}"
            return values, None, pure.Failed(message=message, data=exception_data(exc))
        return values, name, None

    def _track(self, run: RunView) -> None:
        self.run, self.state = run, run.state
        self.log = self.log.bind(flow_run_id=str(run.id), flow_name=self.flow.name, flow_run_name=run.name)

    def _creation(self, **more: Any) -> dict[str, Any]:
        flow = self.flow
        return {
            "parameters": jsonable_parameters(self.parameters),
            "state": pure.Pending(),
            "tags": current_tags(),
            "retries": flow.retries,
            # Prefect's client sends int(flow.retry_delay_seconds or 0): whole seconds,
            # cut short (1.7 waits 1 s, 0.5 none).
            "retry_delay": int(flow.retry_delay_seconds or 0),
            "flow_version": flow.version,
            **more,
        }

    def _create_and_start(
        self, name: str | None, failure: State | None, task: RunView | None
    ) -> EngineScript[None]:
        """Create the run Pending and propose Running (or the failure) in one append."""
        more: dict[str, Any] = {"name": name, "then": [failure if failure is not None else pure.Running()]}
        if task is not None:
            more |= {
                "parent_task_run_id": task.id,
                "idempotency_key": f"subflow:{task.id}:{self._parent_attempt()}",
            }
        run: RunView = yield Call("create_flow_run", (self.flow.name,), self._creation(**more))
        self._track(run)
        self.log.info("flow run created")
        decision = run.last_decision
        reached = run.state
        assert decision is not None
        assert reached is not None
        yield Hooks(self.flow.hooks_for(reached), self.flow, run, reached)
        if failure is not None or reached.is_running():
            return
        if decision.status is SetStateStatus.ABORT:
            raise AbortedError(run.id, decision.reason)
        if decision.status is SetStateStatus.WAIT:
            yield Sleep(decision.delay_seconds or 0)
        yield from self._begin()

    def _parent_attempt(self) -> int:
        return 0 if self.parent is None else self.parent.run.run_count

    def _adopted(self, run: RunView) -> EngineScript[None]:
        """A run created ahead: fill its retry settings from the flow where it has none."""
        flow, policy = self.flow, run.empirical_policy
        if (policy.retries is None and flow.retries is not None) or (
            policy.retry_delay is None and flow.retry_delay_seconds is not None
        ):
            run = yield Call(
                "update_flow_run",
                (run.id,),
                {
                    "retries": flow.retries if policy.retries is None else policy.retries,
                    "retry_delay": flow.retry_delay_seconds
                    if policy.retry_delay is None
                    else policy.retry_delay,
                },
            )
        self._track(run)
        self.log.info("flow run adopted")

    def _start(self, name: str | None, failure: State | None) -> EngineScript[None]:
        """For a run that already exists: the failure, or the name and then Running."""
        assert self.run is not None
        if failure is not None:
            yield from self._set(failure)
            return
        if name is not None and name != self.run.name:
            self.run = yield Call("set_flow_run_name", (self.run.id, name))
            self.log = self.log.bind(flow_run_name=name)
        yield from self._begin()

    def _find_child(
        self, parent: FlowRunContext
    ) -> EngineScript[tuple[RunView, RunView | None, Outcome | None]]:
        """Prefect's create_flow_run and load_subflow_run, for a flow called in a flow.

        The parent's task run for this call is found or created by (parent run, task
        key, dynamic key), the dynamic key counting this flow's calls in the attempt, so
        a retried or restarted parent finds it again. Its child is
        then reused (final), re-attached (not final) or, when there is none, created by
        the caller, once (an idempotency key per task run and parent attempt).
        """
        flow = self.flow
        dynamic_key = parent.dynamic_key(flow.task_key)
        task: RunView = yield Call(
            "create_task_run",
            (parent.run.id,),
            {
                "task_key": flow.task_key,
                "dynamic_key": dynamic_key,
                "name": task_run_name(flow.name, dynamic_key),
                "state": pure.Pending(),
            },
        )
        rerunning = parent.run.run_count > 1
        task_state = task.state
        if task_state is not None and task_state.is_final() and rerunning and not task_state.is_completed():
            return task, None, None  # the child failed in an earlier attempt: a fresh one
        found = yield from self._subflow_of(task)
        found_state = None if found is None else found.state
        if found is None or found_state is None or task_state is None:
            return task, found, None
        stale = (
            rerunning
            and task_state.is_completed()
            and found_state.is_completed()
            and not has_persisted_result(found_state)
        )
        if stale:
            # Completed without a result to give back (none, or one not recorded): run it again.
            return task, None, None
        if task_state.is_final():
            self.log.info(
                "reusing the finished subflow run",
                flow_run_id=str(found.id),
                flow_name=found.flow_name,
                flow_run_name=found.name,
            )
            return task, None, Outcome(state=found_state, run=found)
        return task, found, None

    def _subflow_of(self, task: RunView) -> EngineScript[RunView | None]:
        """`find_subflow_run`; where the run views are not whole (another process is
        rebuilding them, say), the same answer read from the log: the child the task
        run's state names (a child's states are copied onto it, naming it), or else the
        task run's children found by their creations (one scan of the log)."""
        try:
            found: RunView | None = yield Call("find_subflow_run", (task.id,))
        except ViewsOutOfDateError:
            self.log.info("run views not whole: the subflow is looked up in the log")
            current: RunView = yield Call("read_task_run", (task.id,))
            named = None if current.state is None else current.state.state_details.child_flow_run_id
            if named is not None:
                found = yield Call("read_flow_run", (named,))
            else:
                found = yield Call("_subflow_in_log", (task.id,))
        return found

    def _begin(self) -> EngineScript[None]:
        """Running, waiting while the answer is Pending (or WAIT, inside `_set`)."""
        state = yield from self._set(pure.Running())
        while state.is_pending():
            yield Sleep(PENDING_POLL)
            state = yield from self._set(pure.Running())

    def _attempt(self, values: Mapping[str, Any]) -> EngineScript[None]:
        assert self.run is not None
        flow, token = self.flow, object()
        self.value, self.error, self.returned = _MISSING, None, False
        try:
            value = yield Invoke(flow, values, self.run, token)
        except FlowTimeout as exc:
            if exc.token is not token:
                raise  # an enclosing flow's: see `execute`
            seconds = exc.seconds
            self.error = FlowTimeoutError(f"Flow run exceeded timeout of {seconds:g} second(s)")
            self.log.error("flow run timed out", timeout_seconds=seconds)
            yield from self._end_attempt(
                pure.TimedOut(message=str(self.error), data=exception_data(self.error))
            )
        except Exception as exc:
            self.error = exc
            text = exception_text(exc)
            self.log.error("flow run failed", exception_type=type(exc).__name__, error=text)
            yield from self._end_attempt(
                pure.Failed(
                    message=f"Flow run encountered an exception: {type(exc).__name__}: {text}",
                    data=exception_data(exc),
                    state_details=StateDetails(retriable=False),
                )
            )
        else:
            # A returned State's data is the call's value (Prefect's state.result()); data
            # already recorded (a child's final state, say) is read as a reused run's is.
            if not isinstance(value, State):
                self.value, self.returned = value, True
            elif not is_recorded_data(value.data):
                self.value = value.data
            yield from self._end_attempt(completion_state(value))

    def _end_attempt(self, state: State) -> EngineScript[None]:
        """Propose an attempt's end and, in the same append, Running again if the answer
        is a retry (AwaitingRetry): the engine proposes it next in any case, and one
        commit instead of two is what a retry with no delay costs."""
        assert self.run is not None
        # Running goes along only after a final state (a retry answers it with
        # AwaitingRetry); a returned Paused, Scheduled or Cancelling state ends the call
        # there, as Prefect's engine runs the function only while the run is Running.
        proposed = (state, pure.Running()) if state.is_final() else (state,)
        results: list[OrchestrationResult] = yield Call("propose_in_turn", (self.run.id, proposed))
        reached = state
        for wanted, result in zip(proposed, results, strict=False):
            reached = yield from self._answered(wanted, result)
        if len(results) == 1:
            if results[0].status is SetStateStatus.WAIT:
                yield Sleep(results[0].details.delay_seconds or 0)
                yield from self._end_attempt(state)
            return
        # AwaitingRetry: the retry is not over until Running is accepted.
        self.value, self.error, self.returned = _MISSING, None, False
        if results[-1].status is SetStateStatus.WAIT or reached.is_pending():
            yield Sleep((results[-1].details.delay_seconds or 0) if reached.is_scheduled() else PENDING_POLL)
            yield from self._begin()

    def _set(self, state: State, *, force: bool = False) -> EngineScript[State]:
        """Propose ``state``; WAIT answers are slept through and proposed again."""
        assert self.run is not None
        while True:
            result: OrchestrationResult = yield Call("propose_state", (self.run.id, state), {"force": force})
            if result.status is not SetStateStatus.WAIT:
                break
            self._waiting(state, result)
            yield Sleep(result.details.delay_seconds or 0)
        return (yield from self._answered(state, result))

    def _waiting(self, state: State, result: OrchestrationResult) -> None:
        delay = result.details.delay_seconds or 0
        self.log.info("waiting before proposing again", state=state.name, delay_seconds=delay)

    def _answered(self, state: State, result: OrchestrationResult) -> EngineScript[State]:
        """Take in the answer to a proposal of ``state``: the run as it left it, the log
        line, the hooks of the state reached; an ABORT raises."""
        if result.status is SetStateStatus.WAIT:
            self._waiting(state, result)
            assert result.state is not None
            return result.state
        self.run, self.state = result.run, result.state
        if result.status is SetStateStatus.ABORT:
            self.log.warning("proposal aborted", state=state.name, reason=result.details.reason)
            raise AbortedError(self.run.id, result.details.reason)
        reached = result.state
        assert reached is not None
        if result.status is SetStateStatus.REJECT:
            self.log.info(
                "proposal rejected", proposed=state.name, state=reached.name, reason=result.details.reason
            )
        else:
            self.log.debug("state set", state=reached.name)
        yield Hooks(self.flow.hooks_for(reached), self.flow, self.run, reached)
        return reached

    def _crash(self, exc: BaseException) -> EngineScript[None]:
        self.log.error("flow run crashed", exception_type=type(exc).__name__)
        try:
            yield from self._set(
                pure.Crashed(message=crash_message(exc), data=exception_data(exc)), force=True
            )
        except FlowtrailError:
            self.log.exception("could not record the crash")

    def _cancel(self, signal: TerminationSignal) -> EngineScript[None]:
        if self.run is None or (self.state is not None and self.state.is_final()):
            return
        message = "Flow run was cancelled."
        self.log.warning("termination signal: cancelling the flow run", signal=signal.signal)
        try:
            yield from self._set(pure.Cancelling(message=message), force=True)
            yield from self._set(pure.Cancelled(message=message), force=True)
        except FlowtrailError:
            self.log.exception("could not record the cancellation")

    def _outcome(self) -> Outcome:
        assert self.run is not None
        assert self.state is not None
        self.log.info("flow run finished", state=self.state.name)
        return Outcome(
            state=self.state, run=self.run, value=self.value, error=self.error, returned=self.returned
        )
