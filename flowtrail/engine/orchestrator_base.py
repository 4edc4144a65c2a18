"""What `Orchestrator` and `SyncOrchestrator` share: the context their scripts run in
(the log's statements, the clock, the view cache), what a rebuild leaves behind, and
what opening a log decides about views that are stale."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flowtrail.core.effects import Script
from flowtrail.core.errors import CodecError, CorruptLogError
from flowtrail.core.events import RunKind
from flowtrail.core.fold import RunView
from flowtrail.engine.arguments import (
    checked_clock,
    checked_max_attempts,
    checked_proposer,
)
from flowtrail.engine.cache import ViewCache
from flowtrail.engine.checks import run_id_of
from flowtrail.engine.logs import get_logger
from flowtrail.engine.maintenance import (
    RebuildCounts,
    running_elsewhere,
)
from flowtrail.engine.operations import Clock, Context
from flowtrail.projections.runs import RunViews

__all__ = [
    "CHUNK",
    "REBUILD_ALIVE_FOR",
    "OrchestratorBase",
    "nobody_rebuilding",
    "not_rebuilt",
    "scope",
    "utc_now",
]

CHUNK = 5_000


def utc_now() -> datetime:
    return datetime.now(UTC)


#: A rebuild in a process on another host that wrote this recently (seconds) is taken to
#: be running (on this host, its process is looked for): opening the log leaves the
#: views to it rather than replacing it with a rebuild of its own.
REBUILD_ALIVE_FOR = 60.0


def nobody_rebuilding(signs: str | None) -> bool:
    return not running_elsewhere(signs, within=REBUILD_ALIVE_FOR)


def not_rebuilt(exc: BaseException) -> bool:
    """Whether the stale views could not be rebuilt at open for an event that cannot be
    read: its bytes do not decode, or its row holds a value of the wrong type. The log
    opens all the same, its views out of date, so that `verify` can name the damage."""
    if not isinstance(exc, CodecError | CorruptLogError):
        return False  # a lost connection, an interrupt: opening fails
    if isinstance(exc, CorruptLogError) and exc.position is None:
        return False  # the file itself is damaged, not one event's row
    get_logger("flowtrail.views").warning(
        "the run views stay out of date: an event of the log cannot be read",
        position=exc.position,
        error=str(exc),
    )
    return True


def scope(run_id: UUID | str | None) -> str:
    return "all" if run_id is None else f"run:{run_id_of(run_id)}"


class OrchestratorBase:
    _views = RunViews()
    #: The URL the orchestrator was opened from (None when built around a store directly).
    url: str | None = None

    def __init__(self, *, clock: Clock | None, max_attempts: int, proposer: str, sql: Any) -> None:
        self._context = Context(
            sql=sql,
            clock=utc_now if clock is None else checked_clock(clock),
            max_attempts=checked_max_attempts(max_attempts),
            proposer=checked_proposer(proposer),
        )
        self._entered: list[AbstractContextManager[None]] = []

    #: Events the last `rebuild` found of runs whose creation is not in the log (a
    #: damaged log: `verify` names the damage); no view holds them.
    orphaned_events = 0

    def _reset_cache(self) -> None:
        self._context.cache = ViewCache()

    def _rebuilt(self, counts: RebuildCounts) -> int:
        self._reset_cache()
        self.orphaned_events = counts.orphaned
        if counts.orphaned:
            get_logger("flowtrail.views").warning(
                "events of runs whose creation is not in the log are in no view: verify names the damage",
                orphaned_events=counts.orphaned,
            )
        return counts.applied

    def _view(self, run_id: UUID | str, kind: RunKind) -> Script[RunView | None]:
        return self._context.view_of(run_id_of(run_id), kind)
