"""The facts a run's history is made of: one closed, tagged union of frozen structs.

Events are past-tense nouns. Each type carries a schema version (``SCHEMA_VERSION``)
that the store records beside the bytes, so that a later flowtrail can upcast an old
event before decoding it (see `flowtrail.core.codec`).

A `StateProposed` event holds everything needed to re-check its decision without the
rest of the world: the proposal as made, the outside facts the policy read, and the
decision with the run's bookkeeping after it.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import ClassVar, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from flowtrail.core.jsondata import JSONValue
from flowtrail.core.states import AwareDatetime, State, StateType

__all__ = [
    "Bookkeeping",
    "Decision",
    "EVENT_TYPES",
    "Event",
    "Facts",
    "FlowRunCreated",
    "FlowRunFacts",
    "Proposal",
    "RetryDelay",
    "RetryType",
    "RunKind",
    "RunRenamed",
    "RunSettingsUpdated",
    "SetStateStatus",
    "StateProposed",
    "TaskRunCreated",
    "event_type",
]

#: Seconds between retries: one number, or (tasks) one number per attempt.
RetryDelay = int | float | tuple[int | float, ...]
RetryType = Literal["in_process", "reschedule"]


class RunKind(enum.StrEnum):
    FLOW = "flow"
    TASK = "task"


class SetStateStatus(enum.StrEnum):
    """The policy's answer to a proposal, as in Prefect."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    WAIT = "WAIT"
    ABORT = "ABORT"


class _Struct(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Frozen, keyword-built, compact; untracked by the cyclic garbage collector, since
    values made of immutable data cannot form cycles (a log replay holds millions)."""


class Proposal(_Struct, frozen=True):
    """A request to move a run to ``state``, as it was made.

    ``proposed_at`` is the orchestrator's clock when it decided: the policy's "now".
    """

    state: State
    proposed_at: AwareDatetime
    force: bool = False
    proposer: str = "client"


class FlowRunFacts(_Struct, frozen=True):
    """What a task proposal read of its enclosing flow run, at ``version``."""

    flow_run_id: UUID
    version: int
    state_type: StateType | None = None
    state_name: str | None = None
    run_count: int = 0
    pause_timeout: AwareDatetime | None = None
    pause_reschedule: bool = False


class Facts(_Struct, frozen=True):
    """Outside inputs a decision read, recorded so the decision can be re-made.

    ``fresh_key`` stands in for Prefect's ``uuid4()`` when a pause has no key;
    ``random_draw`` (uniform in [0, 1)) for the randomness of retry jitter.
    """

    flow_run: FlowRunFacts | None = None
    fresh_key: str | None = None
    random_draw: float | None = None


class Bookkeeping(_Struct, frozen=True):
    """A run's counters and times after a decision (Prefect's global transforms)."""

    run_count: int = 0
    flow_run_run_count: int = 0
    start_time: AwareDatetime | None = None
    end_time: AwareDatetime | None = None
    total_run_time: timedelta = timedelta(0)
    expected_start_time: AwareDatetime | None = None
    next_scheduled_start_time: AwareDatetime | None = None
    pause_keys: tuple[str, ...] = ()
    resuming: bool = False
    retry_type: RetryType | None = None


class Decision(_Struct, frozen=True):
    """What the policy decided and why.

    ``state`` is the state written (ACCEPT, or REJECT with a state); ``None`` when
    nothing was written (REJECT without a state, WAIT, ABORT), in which case the run
    keeps its current state. ``rule`` names the rule that decided, ``None`` when the
    proposal passed every rule.
    """

    status: SetStateStatus
    policy: str
    policy_version: int
    bookkeeping: Bookkeeping
    state: State | None = None
    rule: str | None = None
    reason: str | None = None
    delay_seconds: int | None = None


# --- the events ---------------------------------------------------------------------------


class FlowRunCreated(_Struct, frozen=True, tag="flow_run_created"):
    """A flow run came into being, with the settings its rules read."""

    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: UUID
    flow_name: str
    name: str
    created_at: AwareDatetime
    flow_version: str | None = None
    parameters: dict[str, JSONValue] = {}
    tags: tuple[str, ...] = ()
    parent_task_run_id: UUID | None = None
    deployment_id: UUID | None = None
    infrastructure_pid: str | None = None
    retries: int | None = None
    retry_delay: RetryDelay | None = None
    idempotency_key: str | None = None
    #: The flow run of the parent task run, for a subflow (recorded since this field
    #: came; a subflow created before has none).
    parent_flow_run_id: UUID | None = None


class TaskRunCreated(_Struct, frozen=True, tag="task_run_created"):
    """A task run came into being inside ``flow_run_id`` (or on its own)."""

    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: UUID
    task_key: str
    dynamic_key: str
    name: str
    created_at: AwareDatetime
    flow_run_id: UUID | None = None
    tags: tuple[str, ...] = ()
    retries: int | None = None
    retry_delay: RetryDelay | None = None
    retry_jitter_factor: float | None = None
    idempotency_key: str | None = None


class StateProposed(_Struct, frozen=True, tag="state_proposed"):
    """A proposal, the facts it was decided on, and the decision."""

    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: UUID
    proposal: Proposal
    facts: Facts
    decision: Decision


class RunRenamed(_Struct, frozen=True, tag="run_renamed"):
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: UUID
    name: str
    renamed_at: AwareDatetime


class RunSettingsUpdated(_Struct, frozen=True, tag="run_settings_updated"):
    """Settings changed after creation; a field left UNSET was not changed."""

    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: UUID
    updated_at: AwareDatetime
    retries: int | UnsetType | None = UNSET
    retry_delay: RetryDelay | UnsetType | None = UNSET
    infrastructure_pid: str | UnsetType | None = UNSET
    flow_version: str | UnsetType | None = UNSET


Event = FlowRunCreated | TaskRunCreated | StateProposed | RunRenamed | RunSettingsUpdated

#: Every event class by its tag, the name stored beside its bytes.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (FlowRunCreated, TaskRunCreated, StateProposed, RunRenamed, RunSettingsUpdated)
}


def event_type(event: Event) -> str:
    """The tag an event is stored under, e.g. ``"state_proposed"``."""
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
