"""Rules and helpers shared by the flow and task policies."""

from __future__ import annotations

import math
from datetime import datetime

import msgspec

from flowtrail.core.events import RetryDelay
from flowtrail.core.rules import Rule, Transition, Verdict, modify, wait
from flowtrail.core.states import StateType

__all__ = ["CopyScheduledTime", "WaitForScheduledTime", "retry_delay_for", "seconds_until"]

_S = StateType


def seconds_until(when: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` to ``when``, rounded as Prefect rounds them."""
    delay = when - now
    return math.floor(delay.total_seconds()) + round(delay.microseconds / 1e6)


def retry_delay_for(delay: RetryDelay | None, run_count: int) -> float:
    """The delay before the retry after attempt ``run_count`` (lists: one per attempt)."""
    if isinstance(delay, tuple | list):
        if not delay:
            return 0.0
        return float(delay[min(max(run_count - 1, 0), len(delay) - 1)])
    return float(delay or 0)


# --- CopyScheduledTime ------------------------------------------------------------------------


def _copy_scheduled_time(t: Transition) -> Verdict | None:
    if t.initial is None or t.proposed.state_details.scheduled_time is not None:
        return None
    details = msgspec.structs.replace(
        t.proposed.state_details, scheduled_time=t.initial.state_details.scheduled_time
    )
    return modify(msgspec.structs.replace(t.proposed, state_details=details))


CopyScheduledTime = Rule(
    "CopyScheduledTime",
    frozenset({_S.SCHEDULED}),
    frozenset({_S.PENDING}),
    _copy_scheduled_time,
    "A Pending state keeps the scheduled time of the Scheduled state it follows.",
)


# --- WaitForScheduledTime ---------------------------------------------------------------------


def _wait_for_scheduled_time(t: Transition) -> Verdict | None:
    if t.initial is None:
        return None
    scheduled = t.initial.state_details.scheduled_time
    if scheduled is None:
        return None
    delay = seconds_until(scheduled, t.now)
    return wait(delay, "Scheduled time is in the future") if delay > 0 else None


WaitForScheduledTime = Rule(
    "WaitForScheduledTime",
    frozenset({_S.SCHEDULED, _S.PENDING}),
    frozenset({_S.RUNNING}),
    _wait_for_scheduled_time,
    "A run cannot start before its scheduled time: wait the seconds left.",
)
