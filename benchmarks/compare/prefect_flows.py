"""Prefect 3.9.1's side of the flow scenarios: one round, in benchmarks/.venvs/prefect.

    benchmarks/.venvs/prefect/bin/python benchmarks/compare/prefect_flows.py \\
        --heartbeats default|off --out FILE --counts JSON

The driver (run.py) starts the local server and sets the environment: PREFECT_API_URL,
a temporary PREFECT_HOME and SQLite database, analytics and the UI off. Everything else
is Prefect's default, run logs included (printed and sent to the server).

Heartbeats: in 3.9.1 ``flows.heartbeat_frequency`` defaults to 180 seconds, so every
flow run starts a thread that emits a ``prefect.flow-run.heartbeat`` event at once and
then sleeps in one-second steps; when the run ends the engine joins that thread, which
notices the stop within a second. ``--heartbeats off`` sets the setting to None (its
documented "off"; an environment variable cannot express None) and changes nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect import __version__, flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
)
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings
from timing import answer, timed

TASKS = 100


@flow
def trivial() -> int:
    return 1


@task
def noop(i: int) -> int:
    return i


@flow
def hundred_tasks() -> int:
    return sum(noop(i) for i in range(TASKS))


@flow
def child() -> int:
    return 1


@flow
def parent() -> int:
    return child()


@flow(retries=2, retry_delay_seconds=0)
def always_fails() -> None:
    raise RuntimeError("boom")


# The 100-task flow runs last: Prefect's server records its 300 task-run states from
# events after the flow returns, work that would otherwise overlap the next scenario.
SCENARIOS = {
    "trivial": (trivial, 1),
    "subflow": (parent, 1),
    "failing_retries": (always_fails, 1),
    "hundred_tasks": (hundred_tasks, TASKS),
}


@contextlib.contextmanager
def heartbeats(mode: str) -> Iterator[None]:
    if mode == "off":
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    else:
        yield


def recorded_states(client: Any, flow_run_id: UUID) -> tuple[int, bool]:
    """States recorded for a flow run, its task runs and their subflows, recursively,
    and whether every run's last recorded state is final."""
    flow_states = client.read_flow_run_states(flow_run_id)
    count, final = len(flow_states), bool(flow_states) and flow_states[-1].is_final()
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    for task_run in tasks:
        task_states = client.read_task_run_states(task_run.id)
        count += len(task_states)
        final = final and bool(task_states) and task_states[-1].is_final()
    if tasks:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks])
            )
        )
        for sub in children:
            sub_count, sub_final = recorded_states(client, sub.id)
            count += sub_count
            final = final and sub_final
    return count, final


def settled_counts(run_ids: dict[str, UUID], timeout: float = 60.0) -> dict[str, tuple[int, bool]]:
    """Task-run states reach the database through events (the server's task-run
    recorder, flushing every 5 s by default): read until every run has a final last
    state and the counts have not moved for three reads in a row."""
    deadline = time.monotonic() + timeout
    history: list[dict[str, tuple[int, bool]]] = []
    with get_client(sync_client=True) as client:
        while True:
            counts = {name: recorded_states(client, run_id) for name, run_id in run_ids.items()}
            history.append(counts)
            stable = len(history) >= 3 and history[-1] == history[-2] == history[-3]
            if (stable and all(final for _, final in counts.values())) or time.monotonic() > deadline:
                return counts
            time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heartbeats", choices=["default", "off"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--counts", required=True, help='{"trivial": 20, ...}: calls per scenario')
    args = parser.parse_args()
    counts: dict[str, int] = json.loads(args.counts)
    results: dict[str, dict[str, Any]] = {}
    run_ids: dict[str, UUID] = {}
    with heartbeats(args.heartbeats):
        frequency = get_current_settings().flows.heartbeat_frequency
        for name, (function, units) in SCENARIOS.items():
            call = lambda function=function: function(return_state=True)  # noqa: E731
            call()  # warm up: the client, its connection, the flow's registration
            per_call, state = timed(call, counts[name])
            run_ids[name] = state.state_details.flow_run_id
            results[name] = {
                "per_call_ms": per_call,
                "per_unit_ms": per_call / units,
                "units_per_call": units,
                "final_state": state.name,
            }
    for name, (count, final) in settled_counts(run_ids).items():
        results[name]["states_per_call"] = count
        results[name]["states_settled"] = final
    answer(
        args.out,
        {
            "side": f"prefect-{args.heartbeats}",
            "version": __version__,
            "heartbeat_frequency": frequency,
            "scenarios": results,
        },
    )


if __name__ == "__main__":
    main()
