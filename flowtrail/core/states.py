"""Prefect's state model: `StateType`, `StateDetails`, `State` and the named constructors.

Names, fields and defaults follow Prefect 3 so that code written against Prefect reads
the same here. One difference is structural: this module reads no clock. A constructor
called without ``timestamp`` leaves it unset, and the orchestrator stamps it with the
proposal's recorded time. (The public ``flowtrail.states`` module stamps the current
time at construction, as Prefect's client does; the orchestrator dates every proposed
state at its own time all the same, as Prefect's server does.)
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

import msgspec

from flowtrail.core.errors import InvalidStateError
from flowtrail.core.jsondata import JSONValue, check_json

__all__ = [
    "AwaitingConcurrencySlot",
    "AwaitingRetry",
    "AwareDatetime",
    "Cancelled",
    "Cancelling",
    "Completed",
    "Crashed",
    "Failed",
    "InfrastructurePending",
    "Late",
    "NotReady",
    "Paused",
    "Pending",
    "Retrying",
    "Running",
    "Scheduled",
    "State",
    "StateDetails",
    "StateType",
    "Submitting",
    "Suspended",
    "TERMINAL_STATES",
    "TimedOut",
    "aware",
    "default_name",
    "parse_uuid",
]


class StateType(enum.StrEnum):
    """The nine state types, in Prefect's declaration order."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"


#: The final state types. PAUSED and CANCELLING are not final.
TERMINAL_STATES: frozenset[StateType] = frozenset(
    {StateType.COMPLETED, StateType.CANCELLED, StateType.FAILED, StateType.CRASHED}
)

#: A timezone-aware datetime; decoding refuses a naive one.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

_DEFAULT_NAMES = {t: " ".join(part.capitalize() for part in t.value.split("_")) for t in StateType}


def default_name(state_type: StateType) -> str:
    """Prefect's default state name: the type in title case ("Running", "Cancelling")."""
    return _DEFAULT_NAMES[state_type]


def aware(value: datetime, field: str) -> datetime:
    """`value` in UTC; a naive datetime is refused rather than guessed at."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidStateError(f"{field} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


# gc=False: immutable data cannot form reference cycles, and a replay holds millions of these.
class StateDetails(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Details attached to a state, with Prefect's field names."""

    flow_run_id: UUID | None = None
    task_run_id: UUID | None = None
    child_flow_run_id: UUID | None = None
    scheduled_time: AwareDatetime | None = None
    cache_key: str | None = None
    cache_expiration: AwareDatetime | None = None
    pause_timeout: AwareDatetime | None = None
    pause_reschedule: bool = False
    pause_key: str | None = None
    retriable: bool | None = None
    transition_id: UUID | None = None

    def __post_init__(self) -> None:
        # Runs on every construction, decode and replace: the common case (no times,
        # or times already in UTC) costs three attribute reads.
        for field, value in (
            ("scheduled_time", self.scheduled_time),
            ("cache_expiration", self.cache_expiration),
            ("pause_timeout", self.pause_timeout),
        ):
            if value is None or (type(value) is datetime and value.tzinfo is UTC):
                continue
            if not isinstance(value, datetime):
                raise InvalidStateError(f"state_details.{field} must be a datetime, got {value!r}")
            msgspec.structs.force_setattr(self, field, aware(value, f"state_details.{field}"))


_NO_DETAILS = StateDetails()


class State(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One state of a run. Frozen: every change is a new value.

    ``data`` is JSON (see `flowtrail.core.jsondata`); results that cannot be recorded
    are represented by a marker ``{"type": "unpersisted", ...}`` as in Prefect.
    """

    type: StateType
    name: str | None = None
    timestamp: AwareDatetime | None = None
    message: str | None = None
    data: JSONValue = None
    state_details: StateDetails = _NO_DETAILS

    def __post_init__(self) -> None:
        kind: object = self.type
        if type(kind) is not StateType:
            try:
                kind = StateType(str(kind))
            except ValueError:
                raise InvalidStateError(
                    f"unknown state type {kind!r}; expected one of {', '.join(StateType)}"
                ) from None
            msgspec.structs.force_setattr(self, "type", kind)
        if self.name is None:
            msgspec.structs.force_setattr(self, "name", _DEFAULT_NAMES[kind])
        elif type(self.name) is not str:
            raise InvalidStateError(f"state name must be a string, got {self.name!r}")
        stamp = self.timestamp
        if stamp is not None and not (type(stamp) is datetime and stamp.tzinfo is UTC):
            if not isinstance(stamp, datetime):
                raise InvalidStateError(f"timestamp must be a datetime, got {stamp!r}")
            msgspec.structs.force_setattr(self, "timestamp", aware(stamp, "timestamp"))
        if self.data is not None:
            check_json(self.data)
        if type(self.state_details) is not StateDetails:
            raise InvalidStateError(f"state_details must be a StateDetails, got {self.state_details!r}")

    # -- predicates (Prefect's names) --------------------------------------------------

    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        return self.type in TERMINAL_STATES

    def __str__(self) -> str:
        label = self.name if self.name == default_name(self.type) else f"{self.name} ({self.type.value})"
        return f"{label}: {self.message}" if self.message else str(label)


def check_types(state: State) -> State:
    """``state``, with every field of the type decoding would give it (ids given as text
    made UUIDs), or InvalidStateError. A constructor checks times and the type, not the
    rest (decoding does, so every construction would pay twice): a state from outside
    is checked here before it is written, or its event could never be read back."""
    if state.message is not None and type(state.message) is not str:
        raise InvalidStateError(f"state message must be a string, got {state.message!r}")
    details = state.state_details
    if details is _NO_DETAILS:
        return state
    ids: dict[str, UUID] = {}
    for field in ("flow_run_id", "task_run_id", "child_flow_run_id", "transition_id"):
        value = getattr(details, field)
        if value is not None and type(value) is not UUID:
            ids[field] = _uuid(value, field)
    for field in ("cache_key", "pause_key"):
        value = getattr(details, field)
        if value is not None and type(value) is not str:
            raise InvalidStateError(f"state_details.{field} must be a string, got {value!r}")
    if type(details.pause_reschedule) is not bool:
        raise InvalidStateError(
            f"state_details.pause_reschedule must be True or False, got {details.pause_reschedule!r}"
        )
    if details.retriable is not None and type(details.retriable) is not bool:
        raise InvalidStateError(
            f"state_details.retriable must be True, False or None, got {details.retriable!r}"
        )
    if not ids:
        return state
    return msgspec.structs.replace(state, state_details=msgspec.structs.replace(details, **ids))


def parse_uuid(value: object) -> UUID | None:
    """A UUID given as one (a subclass of it made plain) or as its text; None for
    anything else."""
    if type(value) is UUID:
        return value
    if isinstance(value, UUID):
        return UUID(int=value.int)
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            return None
    return None


def _uuid(value: object, field: str) -> UUID:
    """A run or transition id given as a UUID, or as its text."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise InvalidStateError(f"state_details.{field} must be a UUID, got {value!r}")
    return parsed


# --- constructors ---------------------------------------------------------------------------
# Same names and keywords as prefect.states. All keyword-only; each also takes name=,
# message=, timestamp=, data= and state_details=.


def _make(
    state_type: StateType,
    default: str | None,
    name: str | None,
    message: str | None,
    timestamp: datetime | None,
    data: JSONValue,
    state_details: StateDetails | None,
    **details: object,
) -> State:
    base = state_details if state_details is not None else _NO_DETAILS
    if details:
        base = msgspec.structs.replace(base, **details)
    return State(
        type=state_type,
        name=name if name is not None else default,
        timestamp=timestamp,
        message=message,
        data=data,
        state_details=base,
    )


def Scheduled(
    *,
    scheduled_time: datetime | None = None,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """SCHEDULED; ``scheduled_time`` defaults to the state's own timestamp (Prefect: now)."""
    if scheduled_time is None and state_details is not None:
        scheduled_time = state_details.scheduled_time
    if scheduled_time is None:
        scheduled_time = timestamp
    return _make(
        StateType.SCHEDULED,
        None,
        name,
        message,
        timestamp,
        data,
        state_details,
        scheduled_time=scheduled_time,
    )


def Late(
    *,
    scheduled_time: datetime | None = None,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """SCHEDULED named "Late", as written by the late-runs marker."""
    return Scheduled(
        scheduled_time=scheduled_time,
        name=name or "Late",
        message=message,
        timestamp=timestamp,
        data=data,
        state_details=state_details,
    )


def AwaitingRetry(
    *,
    scheduled_time: datetime | None = None,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """SCHEDULED named "AwaitingRetry": a retry waiting for its delay to pass."""
    return Scheduled(
        scheduled_time=scheduled_time,
        name=name or "AwaitingRetry",
        message=message,
        timestamp=timestamp,
        data=data,
        state_details=state_details,
    )


def AwaitingConcurrencySlot(
    *,
    scheduled_time: datetime | None = None,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """SCHEDULED named "AwaitingConcurrencySlot"."""
    return Scheduled(
        scheduled_time=scheduled_time,
        name=name or "AwaitingConcurrencySlot",
        message=message,
        timestamp=timestamp,
        data=data,
        state_details=state_details,
    )


def Pending(
    *,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """PENDING: the default initial state of a run created through the API."""
    return _make(StateType.PENDING, None, name, message, timestamp, data, state_details)


def NotReady(
    *,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """PENDING named "NotReady": an upstream dependency did not complete."""
    return _make(StateType.PENDING, "NotReady", name, message, timestamp, data, state_details)


def Submitting(
    *,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """PENDING named "Submitting", as set by workers."""
    return _make(StateType.PENDING, "Submitting", name, message, timestamp, data, state_details)


def InfrastructurePending(
    *,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """PENDING named "InfrastructurePending"."""
    return _make(StateType.PENDING, "InfrastructurePending", name, message, timestamp, data, state_details)


def Running(
    *,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """RUNNING."""
    return _make(StateType.RUNNING, None, name, message, timestamp, data, state_details)


def Retrying(
    *,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """RUNNING named "Retrying"."""
    return _make(StateType.RUNNING, "Retrying", name, message, timestamp, data, state_details)


def Completed(
    *,
    data: JSONValue = None,
    message: str | None = None,
    name: str | None = None,
    timestamp: datetime | None = None,
    state_details: StateDetails | None = None,
) -> State:
    """COMPLETED, optionally carrying the run's result as ``data``."""
    return _make(StateType.COMPLETED, None, name, message, timestamp, data, state_details)


def Failed(
    *,
    message: str | None = None,
    data: JSONValue = None,
    name: str | None = None,
    timestamp: datetime | None = None,
    state_details: StateDetails | None = None,
) -> State:
    """FAILED."""
    return _make(StateType.FAILED, None, name, message, timestamp, data, state_details)


def TimedOut(
    *,
    message: str | None = None,
    data: JSONValue = None,
    name: str | None = None,
    timestamp: datetime | None = None,
    state_details: StateDetails | None = None,
) -> State:
    """FAILED named "TimedOut"."""
    return _make(StateType.FAILED, "TimedOut", name, message, timestamp, data, state_details)


def Crashed(
    *,
    message: str | None = None,
    data: JSONValue = None,
    name: str | None = None,
    timestamp: datetime | None = None,
    state_details: StateDetails | None = None,
) -> State:
    """CRASHED: the run's process or infrastructure failed under it."""
    return _make(StateType.CRASHED, None, name, message, timestamp, data, state_details)


def Cancelling(
    *,
    message: str | None = None,
    data: JSONValue = None,
    name: str | None = None,
    timestamp: datetime | None = None,
    state_details: StateDetails | None = None,
) -> State:
    """CANCELLING: cancellation requested, not yet done."""
    return _make(StateType.CANCELLING, None, name, message, timestamp, data, state_details)


def Cancelled(
    *,
    message: str | None = None,
    data: JSONValue = None,
    name: str | None = None,
    timestamp: datetime | None = None,
    state_details: StateDetails | None = None,
) -> State:
    """CANCELLED."""
    return _make(StateType.CANCELLED, None, name, message, timestamp, data, state_details)


def Paused(
    *,
    timeout_seconds: float | None = None,
    pause_expiration_time: datetime | None = None,
    reschedule: bool = False,
    pause_key: str | None = None,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """PAUSED. ``reschedule=False`` is a blocking pause; ``True`` a suspension.

    ``timeout_seconds`` counts from the state's timestamp, so it needs one here; the
    public constructor always stamps it.
    """
    if timeout_seconds is not None and pause_expiration_time is not None:
        raise InvalidStateError("give either timeout_seconds or pause_expiration_time, not both")
    pause_timeout = pause_expiration_time
    if timeout_seconds is not None:
        if timestamp is None:
            raise InvalidStateError("Paused(timeout_seconds=...) needs a timestamp to count from")
        try:
            pause_timeout = timestamp + timedelta(seconds=timeout_seconds)
        except (OverflowError, TypeError, ValueError):
            raise InvalidStateError(
                f"Paused(timeout_seconds={timeout_seconds!r}) is not a number of seconds a date can be moved by"
            ) from None
    if pause_timeout is None and state_details is not None:
        pause_timeout = state_details.pause_timeout
    return _make(
        StateType.PAUSED,
        None,
        name,
        message,
        timestamp,
        data,
        state_details,
        pause_timeout=pause_timeout,
        pause_reschedule=reschedule,
        pause_key=pause_key
        if pause_key is not None
        else (state_details.pause_key if state_details else None),
    )


def Suspended(
    *,
    timeout_seconds: float | None = None,
    pause_expiration_time: datetime | None = None,
    pause_key: str | None = None,
    name: str | None = None,
    message: str | None = None,
    timestamp: datetime | None = None,
    data: JSONValue = None,
    state_details: StateDetails | None = None,
) -> State:
    """PAUSED named "Suspended" with ``pause_reschedule=True``: the process may exit."""
    return Paused(
        timeout_seconds=timeout_seconds,
        pause_expiration_time=pause_expiration_time,
        reschedule=True,
        pause_key=pause_key,
        name=name or "Suspended",
        message=message,
        timestamp=timestamp,
        data=data,
        state_details=state_details,
    )
