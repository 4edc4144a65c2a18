"""A run's aggregate, `RunView`, and the pure fold that builds it from its events.

`evolve` never decides anything: a `StateProposed` event already holds the decision and
the bookkeeping after it, so folding an old log needs no policy at all. Re-checking the
decisions is `flowtrail.core.audit.verify`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import assert_never
from uuid import UUID

import msgspec
from msgspec import UNSET

from flowtrail.core.errors import CorruptLogError
from flowtrail.core.events import (
    Bookkeeping,
    Decision,
    Event,
    FlowRunCreated,
    FlowRunFacts,
    RetryDelay,
    RetryType,
    RunKind,
    RunRenamed,
    RunSettingsUpdated,
    StateProposed,
    TaskRunCreated,
    event_type,
)
from flowtrail.core.jsondata import JSONValue
from flowtrail.core.states import AwareDatetime, State, StateType

__all__ = ["EmpiricalPolicy", "RunView", "bookkeeping_of", "evolve", "flow_run_facts", "fold"]


class EmpiricalPolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A run's retry settings and pause bookkeeping (Prefect's ``empirical_policy``)."""

    retries: int | None = None
    retry_delay: RetryDelay | None = None
    retry_jitter_factor: float | None = None
    pause_keys: tuple[str, ...] = ()
    resuming: bool = False
    retry_type: RetryType | None = None


_NO_POLICY = EmpiricalPolicy()

# A view's default run time, and the one object a zero run time is folded into: msgspec
# leaves a field out of an encoding only where it holds the default object itself, and
# a decision's bookkeeping carries a zero of its own. Equal views then encode alike,
# however they were folded (a view kept as events were appended, one rebuilt).
_NO_RUN_TIME = timedelta(0)


class RunView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Everything known about one flow or task run, derived from its stream.

    ``version`` is the number of events folded (the stream's version). Task-only fields
    (``task_key``, ``dynamic_key``, ``flow_run_id``, ``flow_run_run_count``) are left at
    their defaults for flow runs, and flow-only ones for task runs.
    """

    id: UUID
    kind: RunKind
    name: str
    created_at: AwareDatetime
    flow_name: str | None = None
    flow_version: str | None = None
    task_key: str | None = None
    dynamic_key: str | None = None
    flow_run_id: UUID | None = None
    parameters: dict[str, JSONValue] = {}
    tags: tuple[str, ...] = ()
    parent_task_run_id: UUID | None = None
    #: A subflow's parent flow run: its parent task run's flow run.
    parent_flow_run_id: UUID | None = None
    deployment_id: UUID | None = None
    infrastructure_pid: str | None = None
    idempotency_key: str | None = None
    state: State | None = None
    run_count: int = 0
    flow_run_run_count: int = 0
    start_time: AwareDatetime | None = None
    end_time: AwareDatetime | None = None
    total_run_time: timedelta = _NO_RUN_TIME
    expected_start_time: AwareDatetime | None = None
    next_scheduled_start_time: AwareDatetime | None = None
    empirical_policy: EmpiricalPolicy = _NO_POLICY
    version: int = 0
    last_decision: Decision | None = None
    # Timestamps of the states written so far: Prefect keeps a flow run's state
    # timestamps unique, which needs them all (see core.bookkeeping).
    state_timestamps: tuple[datetime, ...] = ()

    @property
    def state_type(self) -> StateType | None:
        return None if self.state is None else self.state.type

    @property
    def state_name(self) -> str | None:
        return None if self.state is None else self.state.name

    def estimated_run_time(self, now: datetime) -> timedelta:
        """Run time so far, counting the current RUNNING stretch up to ``now``."""
        state = self.state
        if state is not None and state.is_running() and state.timestamp is not None:
            return self.total_run_time + (now - state.timestamp)
        return self.total_run_time


def bookkeeping_of(view: RunView) -> Bookkeeping:
    """The view's counters and times, as a decision records them."""
    policy = view.empirical_policy
    return Bookkeeping(
        run_count=view.run_count,
        flow_run_run_count=view.flow_run_run_count,
        start_time=view.start_time,
        end_time=view.end_time,
        total_run_time=view.total_run_time,
        expected_start_time=view.expected_start_time,
        next_scheduled_start_time=view.next_scheduled_start_time,
        pause_keys=policy.pause_keys,
        resuming=policy.resuming,
        retry_type=policy.retry_type,
    )


def flow_run_facts(flow_run: RunView) -> FlowRunFacts:
    """What a task proposal records of its enclosing flow run."""
    state = flow_run.state
    if state is None:
        return FlowRunFacts(flow_run_id=flow_run.id, version=flow_run.version, run_count=flow_run.run_count)
    return FlowRunFacts(
        flow_run_id=flow_run.id,
        version=flow_run.version,
        state_type=state.type,
        state_name=state.name,
        run_count=flow_run.run_count,
        pause_timeout=state.state_details.pause_timeout,
        pause_reschedule=state.state_details.pause_reschedule,
    )


def _created_flow(event: FlowRunCreated) -> RunView:
    return RunView(
        id=event.run_id,
        kind=RunKind.FLOW,
        name=event.name,
        created_at=event.created_at,
        flow_name=event.flow_name,
        flow_version=event.flow_version,
        parameters=event.parameters,
        tags=event.tags,
        parent_task_run_id=event.parent_task_run_id,
        parent_flow_run_id=event.parent_flow_run_id,
        deployment_id=event.deployment_id,
        infrastructure_pid=event.infrastructure_pid,
        idempotency_key=event.idempotency_key,
        empirical_policy=EmpiricalPolicy(retries=event.retries, retry_delay=event.retry_delay),
        version=1,
    )


def _created_task(event: TaskRunCreated) -> RunView:
    return RunView(
        id=event.run_id,
        kind=RunKind.TASK,
        name=event.name,
        created_at=event.created_at,
        task_key=event.task_key,
        dynamic_key=event.dynamic_key,
        flow_run_id=event.flow_run_id,
        tags=event.tags,
        idempotency_key=event.idempotency_key,
        empirical_policy=EmpiricalPolicy(
            retries=event.retries,
            retry_delay=event.retry_delay,
            retry_jitter_factor=event.retry_jitter_factor,
        ),
        version=1,
    )


def _decided(view: RunView, event: StateProposed) -> RunView:
    decision = event.decision
    books = decision.bookkeeping
    written = decision.state
    policy = view.empirical_policy
    if (
        books.pause_keys != policy.pause_keys
        or books.resuming != policy.resuming
        or books.retry_type != policy.retry_type
    ):
        policy = msgspec.structs.replace(
            policy, pause_keys=books.pause_keys, resuming=books.resuming, retry_type=books.retry_type
        )
    return msgspec.structs.replace(
        view,
        state=view.state if written is None else written,
        state_timestamps=view.state_timestamps
        if written is None or view.kind is RunKind.TASK or written.timestamp is None
        else (*view.state_timestamps, written.timestamp),
        run_count=books.run_count,
        flow_run_run_count=books.flow_run_run_count,
        start_time=books.start_time,
        end_time=books.end_time,
        total_run_time=books.total_run_time or _NO_RUN_TIME,  # a zero timedelta is false
        expected_start_time=books.expected_start_time,
        next_scheduled_start_time=books.next_scheduled_start_time,
        empirical_policy=policy,
        version=view.version + 1,
        last_decision=decision,
    )


def _settings_updated(view: RunView, event: RunSettingsUpdated) -> RunView:
    policy = view.empirical_policy
    if event.retries is not UNSET:
        policy = msgspec.structs.replace(policy, retries=event.retries)
    if event.retry_delay is not UNSET:
        policy = msgspec.structs.replace(policy, retry_delay=event.retry_delay)
    return msgspec.structs.replace(
        view,
        empirical_policy=policy,
        infrastructure_pid=view.infrastructure_pid
        if event.infrastructure_pid is UNSET
        else event.infrastructure_pid,
        flow_version=view.flow_version if event.flow_version is UNSET else event.flow_version,
        version=view.version + 1,
    )


def _existing(view: RunView | None, event: StateProposed | RunRenamed | RunSettingsUpdated) -> RunView:
    if view is None:
        raise CorruptLogError(f"{event_type(event)} for run {event.run_id} before the run was created")
    if view.id != event.run_id:
        raise CorruptLogError(f"{event_type(event)} for run {event.run_id} folded into run {view.id}")
    return view


def _new(view: RunView | None, event: FlowRunCreated | TaskRunCreated) -> None:
    if view is not None:
        raise CorruptLogError(f"run {event.run_id} is created a second time")


def evolve(view: RunView | None, event: Event) -> RunView:
    """The run after ``event``. Pure; an event out of order is a `CorruptLogError`."""
    match event:
        case StateProposed():
            return _decided(_existing(view, event), event)
        case FlowRunCreated():
            _new(view, event)
            return _created_flow(event)
        case TaskRunCreated():
            _new(view, event)
            return _created_task(event)
        case RunRenamed():
            current = _existing(view, event)
            return msgspec.structs.replace(current, name=event.name, version=current.version + 1)
        case RunSettingsUpdated():
            return _settings_updated(_existing(view, event), event)
        case _:
            assert_never(event)


def fold(events: Iterable[Event], view: RunView | None = None) -> RunView | None:
    """Fold a stream (or the rest of one, from ``view``) into its view."""
    for event in events:
        view = evolve(view, event)
    return view
