"""flowtrail: the event-sourced state-transition core of a workflow engine.

Every proposed state of a run is appended to a hash-chained log with the decision taken
on it; a pure policy (Prefect's rules) decides; every read view is a projection over
the log::

    from flowtrail import SyncOrchestrator, states

    with SyncOrchestrator.open("sqlite:///runs.db") as orch:
        run = orch.create_flow_run("etl", state=states.Pending())
        orch.propose_state(run.id, states.Running())

Every error flowtrail raises is a `FlowtrailError`, importable from here; the tree is
drawn in `flowtrail.core.errors`.
"""

from flowtrail import states
from flowtrail.core.audit import AuditReport
from flowtrail.core.errors import (
    AbortedError,
    CancelledRunError,
    CodecError,
    ConcurrencyConflictError,
    ContentionError,
    CorruptLogError,
    FlowFailedError,
    FlowRunError,
    FlowTimeoutError,
    FlowtrailError,
    InvalidDataError,
    InvalidIdError,
    InvalidInputError,
    InvalidStateError,
    InvalidUrlError,
    InvalidVersionError,
    LogNotFoundError,
    MalformedEventError,
    OrchestrationError,
    ParameterValidationError,
    PayloadTooLargeError,
    PolicyNotFoundError,
    ProjectionReplacedError,
    RebuildReplacedError,
    ResultNotAvailableError,
    RunAlreadyExistsError,
    RunNotFoundError,
    SchemaVersionError,
    StoreAccessError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
    UnfinishedRunError,
    UnknownEventTypeError,
    UnsupportedFilesystemError,
    UnsupportedSchemaVersionError,
    ViewsOutOfDateError,
)
from flowtrail.core.events import SetStateStatus
from flowtrail.core.fold import RunView
from flowtrail.core.states import State, StateDetails, StateType
from flowtrail.engine.context import tags
from flowtrail.engine.flows import Flow, flow
from flowtrail.engine.orchestrator import Orchestrator, SyncOrchestrator
from flowtrail.engine.results import OrchestrationResult
from flowtrail.projections.queries import FlowRunSort

__all__ = [
    "AbortedError",
    "AuditReport",
    "CancelledRunError",
    "CodecError",
    "ConcurrencyConflictError",
    "ContentionError",
    "CorruptLogError",
    "Flow",
    "FlowFailedError",
    "FlowRunError",
    "FlowRunSort",
    "FlowTimeoutError",
    "FlowtrailError",
    "InvalidDataError",
    "InvalidIdError",
    "InvalidInputError",
    "InvalidStateError",
    "InvalidUrlError",
    "InvalidVersionError",
    "LogNotFoundError",
    "MalformedEventError",
    "OrchestrationError",
    "OrchestrationResult",
    "Orchestrator",
    "ParameterValidationError",
    "PayloadTooLargeError",
    "PolicyNotFoundError",
    "ProjectionReplacedError",
    "RebuildReplacedError",
    "ResultNotAvailableError",
    "RunAlreadyExistsError",
    "RunNotFoundError",
    "RunView",
    "SchemaVersionError",
    "SetStateStatus",
    "State",
    "StateDetails",
    "StateType",
    "StoreAccessError",
    "StoreBusyError",
    "StoreError",
    "StoreUnavailableError",
    "SyncOrchestrator",
    "UnfinishedRunError",
    "UnknownEventTypeError",
    "UnsupportedFilesystemError",
    "UnsupportedSchemaVersionError",
    "ViewsOutOfDateError",
    "flow",
    "states",
    "tags",
]
