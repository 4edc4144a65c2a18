"""Prefect-compatible state constructors: ``from flowtrail import states``.

Same names and keywords as ``prefect.states``. As in Prefect, a state made here is
timestamped when it is made (UTC, microseconds kept), and a Scheduled state without a
``scheduled_time`` is scheduled for that moment. The pure constructors in
`flowtrail.core.states` leave the timestamp to the orchestrator instead. Either way, a
proposed state is written dated when the orchestrator takes it, as Prefect's server
dates a state when it arrives: a state built early, or re-proposed after a wait, is
never written before the state it follows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ParamSpec

from flowtrail.core import states as _pure
from flowtrail.core.states import State, StateDetails, StateType

__all__ = [
    "AwaitingConcurrencySlot",
    "AwaitingRetry",
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
    "TimedOut",
]

P = ParamSpec("P")


def _stamped(make: Callable[P, State]) -> Callable[P, State]:
    @functools.wraps(make)
    def stamped(*args: P.args, **kwargs: P.kwargs) -> State:
        if kwargs.get("timestamp") is None:
            kwargs["timestamp"] = datetime.now(UTC)
        return make(*args, **kwargs)

    return stamped


Scheduled = _stamped(_pure.Scheduled)
Late = _stamped(_pure.Late)
AwaitingRetry = _stamped(_pure.AwaitingRetry)
AwaitingConcurrencySlot = _stamped(_pure.AwaitingConcurrencySlot)
Pending = _stamped(_pure.Pending)
NotReady = _stamped(_pure.NotReady)
Submitting = _stamped(_pure.Submitting)
InfrastructurePending = _stamped(_pure.InfrastructurePending)
Running = _stamped(_pure.Running)
Retrying = _stamped(_pure.Retrying)
Completed = _stamped(_pure.Completed)
Failed = _stamped(_pure.Failed)
TimedOut = _stamped(_pure.TimedOut)
Crashed = _stamped(_pure.Crashed)
Cancelling = _stamped(_pure.Cancelling)
Cancelled = _stamped(_pure.Cancelled)
Paused = _stamped(_pure.Paused)
Suspended = _stamped(_pure.Suspended)
