"""The engine: the Orchestrator API (async and sync) over the log and its views."""

from flowtrail.engine.ids import new_run_id
from flowtrail.engine.orchestrator import Orchestrator, Progress, SyncOrchestrator
from flowtrail.engine.results import HistoryEntry, OrchestrationDetails, OrchestrationResult
from flowtrail.engine.snapshot import RunSnapshot

__all__ = [
    "HistoryEntry",
    "OrchestrationDetails",
    "OrchestrationResult",
    "Orchestrator",
    "Progress",
    "RunSnapshot",
    "SyncOrchestrator",
    "new_run_id",
]
