"""flowtrail: the event-sourced state-transition core of a workflow engine.

Every proposed state of a run is appended to a hash-chained log with the decision taken
on it; a pure policy (Prefect's rules) decides; every read view is a projection over
the log::

    from flowtrail import SyncOrchestrator, states

    with SyncOrchestrator.open("sqlite:///runs.db") as orch:
        run = orch.create_flow_run("etl", state=states.Pending())
        orch.propose_state(run.id, states.Running())
"""

from flowtrail import states
from flowtrail.core.audit import AuditReport
from flowtrail.core.errors import FlowtrailError
from flowtrail.core.events import SetStateStatus
from flowtrail.core.fold import RunView
from flowtrail.core.states import State, StateDetails, StateType
from flowtrail.engine.context import tags
from flowtrail.engine.flows import Flow, flow
from flowtrail.engine.orchestrator import Orchestrator, SyncOrchestrator
from flowtrail.engine.results import OrchestrationResult
from flowtrail.projections.queries import FlowRunSort

__all__ = [
    "AuditReport",
    "Flow",
    "FlowRunSort",
    "FlowtrailError",
    "OrchestrationResult",
    "Orchestrator",
    "RunView",
    "SetStateStatus",
    "State",
    "StateDetails",
    "StateType",
    "SyncOrchestrator",
    "flow",
    "states",
    "tags",
]
