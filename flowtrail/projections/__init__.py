"""Read views over the log: the run views (inline), catch-up projections, rebuilds."""

from flowtrail.projections.catchup import DecisionStats, catch_up_step, checkpoint_of
from flowtrail.projections.queries import (
    FlowRunSort,
    flow_run_view,
    read_flow_runs,
    subflow_run,
    task_run_view,
    task_runs_of,
)
from flowtrail.projections.rebuild import RunViewsRebuild, transaction
from flowtrail.projections.runs import RunViews, decode_view, encode_view

__all__ = [
    "DecisionStats",
    "FlowRunSort",
    "RunViews",
    "RunViewsRebuild",
    "catch_up_step",
    "checkpoint_of",
    "decode_view",
    "encode_view",
    "flow_run_view",
    "read_flow_runs",
    "subflow_run",
    "task_run_view",
    "task_runs_of",
    "transaction",
]
