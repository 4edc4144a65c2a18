"""flowtrail: the event-sourced state-transition core of a workflow engine.

Every proposed state of a run is appended to a hash-chained log with the decision taken
on it; a pure policy (Prefect's rules) decides; every read view is a projection over
the log.
"""

from flowtrail import states
from flowtrail.core.errors import FlowtrailError
from flowtrail.core.events import SetStateStatus
from flowtrail.core.states import State, StateDetails, StateType

__all__ = ["FlowtrailError", "SetStateStatus", "State", "StateDetails", "StateType", "states"]
