"""What the orchestrator hands back: decision results and history entries."""

from __future__ import annotations

from datetime import datetime

import msgspec

from flowtrail.core.events import Event, SetStateStatus
from flowtrail.core.fold import RunView
from flowtrail.core.states import State

__all__ = ["HistoryEntry", "OrchestrationDetails", "OrchestrationResult"]


class OrchestrationDetails(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Why the policy answered as it did (Prefect's response details, in one shape)."""

    policy: str
    policy_version: int
    rule: str | None = None
    reason: str | None = None
    delay_seconds: int | None = None


class OrchestrationResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The answer to a proposal.

    ``state`` is the run's state after the decision: the state written (ACCEPT, or
    REJECT with a state), else the current one (None for a run with no state yet).
    ``run`` is the run's view after the decision; ``position`` where it was recorded.
    """

    status: SetStateStatus
    state: State | None
    details: OrchestrationDetails
    run: RunView
    position: int


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One recorded event of a run, where and when it was recorded."""

    position: int
    version: int
    recorded_at: datetime
    event_type: str
    event: Event
