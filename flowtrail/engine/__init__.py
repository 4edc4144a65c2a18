"""The engine: the Orchestrator API (async and sync) over the log and its views."""

from flowtrail.engine.context import current_flow_run, tags
from flowtrail.engine.exports import read_export, verify_export
from flowtrail.engine.flow_drivers import run_flow_run, run_flow_run_async
from flowtrail.engine.flow_engine import TerminationSignal
from flowtrail.engine.flows import Flow, flow
from flowtrail.engine.ids import new_run_id
from flowtrail.engine.orchestrator import Orchestrator, Progress, SyncOrchestrator
from flowtrail.engine.results import HistoryEntry, OrchestrationDetails, OrchestrationResult
from flowtrail.engine.snapshot import RunSnapshot

__all__ = [
    "Flow",
    "HistoryEntry",
    "OrchestrationDetails",
    "OrchestrationResult",
    "Orchestrator",
    "Progress",
    "RunSnapshot",
    "SyncOrchestrator",
    "TerminationSignal",
    "current_flow_run",
    "flow",
    "new_run_id",
    "read_export",
    "run_flow_run",
    "run_flow_run_async",
    "tags",
    "verify_export",
]
