"""The events written to ``tests/golden/events-v1.jsonl``: one of every kind, fields filled."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from msgspec import UNSET

from flowtrail.core import (
    Bookkeeping,
    Decision,
    Event,
    Facts,
    FlowRunCreated,
    FlowRunFacts,
    Proposal,
    RunRenamed,
    RunSettingsUpdated,
    SetStateStatus,
    StateDetails,
    StateProposed,
    StateType,
    TaskRunCreated,
)
from flowtrail.core import states as s
from flowtrail.testing import T0, at

FLOW = UUID("0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a01")
TASK = UUID("0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a02")
CHILD = UUID("0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a03")
DEPLOYMENT = UUID("0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a04")


def golden_events() -> list[Event]:
    retry = s.AwaitingRetry(scheduled_time=at(70), message="boom", data={"error": "x"}, timestamp=at(60))
    return [
        FlowRunCreated(
            run_id=FLOW,
            flow_name="etl",
            name="etl-mon",
            created_at=T0,
            flow_version="1.2",
            parameters={
                "day": "mon",
                "n": 3,
                "ratio": 0.5,
                "flags": [True, None],
                "nested": {"a": {"b": []}},
            },
            tags=("nightly", "team:data"),
            deployment_id=DEPLOYMENT,
            infrastructure_pid="4242",
            retries=2,
            retry_delay=10,
            idempotency_key="etl:mon",
        ),
        TaskRunCreated(
            run_id=TASK,
            flow_run_id=FLOW,
            task_key="load",
            dynamic_key="0",
            name="load-0",
            created_at=at(1),
            tags=("io",),
            retries=3,
            retry_delay=(1, 10, 100),
            retry_jitter_factor=0.5,
            idempotency_key="task:load:0",
        ),
        FlowRunCreated(
            run_id=CHILD, flow_name="child", name="child-1", created_at=at(2), parent_task_run_id=TASK
        ),
        StateProposed(
            run_id=FLOW,
            proposal=Proposal(state=s.Running(timestamp=at(10)), proposed_at=at(10)),
            facts=Facts(),
            decision=Decision(
                status=SetStateStatus.ACCEPT,
                policy="CoreFlowPolicy",
                policy_version=1,
                bookkeeping=Bookkeeping(run_count=1, start_time=at(10), expected_start_time=at(10)),
                state=s.Running(timestamp=at(10), state_details=StateDetails(flow_run_id=FLOW)),
            ),
        ),
        StateProposed(
            run_id=FLOW,
            proposal=Proposal(
                state=s.Failed(message="boom", data={"error": "x"}, timestamp=at(60)), proposed_at=at(60)
            ),
            facts=Facts(),
            decision=Decision(
                status=SetStateStatus.REJECT,
                policy="CoreFlowPolicy",
                policy_version=1,
                bookkeeping=Bookkeeping(
                    run_count=1,
                    start_time=at(10),
                    total_run_time=timedelta(seconds=50, microseconds=7),
                    expected_start_time=at(10),
                    next_scheduled_start_time=at(70),
                    retry_type="in_process",
                ),
                state=retry,
                rule="RetryFailedFlows",
                reason="Retrying",
            ),
        ),
        StateProposed(
            run_id=TASK,
            proposal=Proposal(state=s.Running(timestamp=at(11)), proposed_at=at(11), proposer="engine"),
            facts=Facts(
                flow_run=FlowRunFacts(
                    flow_run_id=FLOW,
                    version=2,
                    state_type=StateType.PAUSED,
                    state_name="Paused",
                    run_count=1,
                    pause_timeout=at(600),
                    pause_reschedule=False,
                ),
                random_draw=0.25,
            ),
            decision=Decision(
                status=SetStateStatus.REJECT,
                policy="CoreTaskPolicy",
                policy_version=1,
                bookkeeping=Bookkeeping(expected_start_time=at(11)),
                state=s.Paused(name="NotReady", pause_expiration_time=at(600), timestamp=at(11)),
                rule="PreventRunningTasksFromStoppedFlows",
                reason=f"The flow is paused, new tasks can execute after resuming flow run: {FLOW}.",
            ),
        ),
        StateProposed(
            run_id=FLOW,
            proposal=Proposal(state=s.Paused(timestamp=at(20)), proposed_at=at(20), force=False),
            facts=Facts(fresh_key="7d1a"),
            decision=Decision(
                status=SetStateStatus.WAIT,
                policy="CoreFlowPolicy",
                policy_version=1,
                bookkeeping=Bookkeeping(pause_keys=("1", "7d1a"), resuming=True),
                rule="WaitForScheduledTime",
                reason="Scheduled time is in the future",
                delay_seconds=300,
            ),
        ),
        RunRenamed(run_id=FLOW, name="etl-monday", renamed_at=at(30)),
        RunSettingsUpdated(
            run_id=FLOW, updated_at=at(31), retries=5, retry_delay=UNSET, infrastructure_pid=None
        ),
    ]
