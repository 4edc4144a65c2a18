"""flowtrail's side of the flow scenarios: one round, in flowtrail's venv.

    .venv/bin/python benchmarks/compare/ft_flows.py --db PATH --out FILE --counts JSON

Durable (durability full, the default), one log for every round of a comparison,
opened with ``with SyncOrchestrator.open(url):`` around the calls so the flows write
there. The engine's log lines are filtered out, as in bench_engine.py.

(b) has no @task to call: inside the flow, each of the 100 task runs is created
through the orchestrator Pending and proposed Running then Completed, the three
states Prefect records for a task run (its task engine's create, begin and finish).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import structlog
from timing import answer, timed

from flowtrail import SyncOrchestrator, flow, states
from flowtrail.engine import current_flow_run

TASKS = 100


@flow
def trivial() -> int:
    return 1


def noop(i: int) -> int:
    return i


@flow
def hundred_tasks() -> int:
    context = current_flow_run()
    assert context is not None
    orch, run_id = context.orchestrator, context.run.id
    total = 0
    for i in range(TASKS):
        task = orch.create_task_run(run_id, task_key="noop", dynamic_key=str(i), state=states.Pending())
        orch.propose_state(task.id, states.Running())
        total += noop(i)
        orch.propose_state(task.id, states.Completed())
    return total


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


def grow_wal(db: Path) -> int:
    """Run trivial flows, untimed, until the log's WAL file stops growing; the runs made.

    A new process starts with a new WAL file (SQLite removes it when the last connection
    closes), and until the automatic checkpoint first wraps it, every commit also grows
    the file, which makes its fsync dearer (about 2 ms a run at first, against 0.9 ms).
    A long-lived process (as Prefect's server is through every round) pays that once;
    so does each flowtrail round, before its clock starts.
    """
    wal = Path(f"{db}-wal")
    previous, runs = -1, 0
    while runs < 2000:
        for _ in range(20):
            trivial()
        runs += 20
        size = wal.stat().st_size if wal.exists() else 0
        if size == previous:
            break
        previous = size
    return runs


def recorded_states(orch: SyncOrchestrator, flow_run_id: Any) -> int:
    """States recorded for a flow run, its task runs and their subflows, recursively."""
    count = len(orch.read_states(flow_run_id))
    for task in orch.read_task_runs(flow_run_id):
        count += len(orch.read_states(task.id))
        sub = orch.find_subflow_run(task.id)
        if sub is not None:
            count += recorded_states(orch, sub.id)
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--counts", required=True, help='{"trivial": 200, ...}: calls per scenario')
    args = parser.parse_args()
    counts: dict[str, int] = json.loads(args.counts)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    results: dict[str, dict[str, float]] = {}
    with SyncOrchestrator.open(f"sqlite:///{args.db}") as orch:
        warm_up_runs = grow_wal(args.db)
        for name, (function, units) in SCENARIOS.items():
            call = lambda function=function: function(return_state=True)  # noqa: E731
            call()  # warm up: imports, statement caches, the flow's parameter model
            per_call, state = timed(call, counts[name])
            run_id = state.state_details.flow_run_id
            results[name] = {
                "per_call_ms": per_call,
                "per_unit_ms": per_call / units,
                "units_per_call": units,
                "states_per_call": recorded_states(orch, run_id),
                "final_state": state.name,
            }
    answer(args.out, {"side": "flowtrail", "warm_up_runs": warm_up_runs, "scenarios": results})


if __name__ == "__main__":
    main()
