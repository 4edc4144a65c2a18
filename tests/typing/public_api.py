"""A typed use of the public API, read by mypy (not run): a change that breaks the
types users write against fails ``make typecheck``."""

from __future__ import annotations

from datetime import UTC, datetime

from flowtrail import SetStateStatus, State, StateDetails, StateType, states
from flowtrail.core import Facts, Proposal, RunView, decide, evolve, verify
from flowtrail.testing import MemoryLog, at


def construct() -> list[State]:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        states.Scheduled(scheduled_time=when),
        states.AwaitingRetry(scheduled_time=when, message="again"),
        states.Completed(data={"rows": 3}, message="done"),
        states.Failed(message="boom"),
        states.Paused(timeout_seconds=30, pause_key="1"),
        State(type=StateType.RUNNING, name="Retrying", state_details=StateDetails(retriable=True)),
    ]


def decide_one(view: RunView) -> SetStateStatus:
    proposal = Proposal(state=states.Running(), proposed_at=at(1))
    decision = decide(view, proposal, Facts())
    return decision.status


def fold_a_log() -> bool:
    log = MemoryLog()
    run = log.create_flow_run("typed")
    log.propose(run.id, states.Running(), at=at(1))
    view: RunView = evolve(None, log.events_of(run.id)[0])
    return verify(log.records).ok and view.name == "typed"


def orchestrate(url: str) -> int:
    from flowtrail import SetStateStatus, SyncOrchestrator

    with SyncOrchestrator.open(url) as orch:
        run = orch.create_flow_run("etl", parameters={"n": 1}, tags=["nightly"], retries=2, retry_delay=0)
        task = orch.create_task_run(run.id, task_key="load", dynamic_key="0", retries=0, retry_delay=0)
        result = orch.propose_state(run.id, states.Running(), force=False)
        if result.status is SetStateStatus.WAIT:
            return result.details.delay_seconds or 0
        orch.propose_state(task.id, states.Running())
        view = orch.read_flow_run(run.id)
        child = orch.find_subflow_run(task.id)
        report = orch.verify()
        return view.run_count + (0 if child is None else 1) + report.events_checked


def export_and_check(url: str, path: str) -> bool:
    from flowtrail import SyncOrchestrator
    from flowtrail.engine import verify_export

    with SyncOrchestrator.open(url) as orch, open(path, "w", encoding="utf-8") as out:
        orch.export(out)
    with open(path, encoding="utf-8") as lines:
        return verify_export(lines).ok


async def orchestrate_async(url: str) -> list[State]:
    from flowtrail import Orchestrator

    async with Orchestrator.open(url) as orch:
        run = await orch.create_flow_run("etl", state=states.Pending())
        await orch.propose_state(run.id, states.Running())
        return await orch.read_states(run.id)


def use_flows() -> int:
    from flowtrail import flow, tags

    @flow
    def bare(day: str) -> int:
        return len(day)

    @flow(retries=1, retry_delay_seconds=0, timeout_seconds=5, flow_run_name="etl-{day}", log_prints=True)
    def configured(day: str) -> int:
        return len(day)

    with tags("nightly"):
        value: int = bare("mon") + configured(day="tue")
    final = configured(day="wed", return_state=True)
    return value if final.is_completed() else 0
