"""The flow-run engine end to end, durable (synchronous=FULL).

    .venv/bin/python benchmarks/bench_engine.py

1. A trivial sync flow (create, Pending, Running, Completed): per run (target <= 1 ms).
2. A flow calling 100 trivial subflows: per subflow.
3. A flow failing with retries=2 (retry delay 0): per run.
The engine's logs are filtered out (the failing flow logs each failure); a flow run
records the same states whether its logs are printed or not.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from common import emit

from flowtrail import SyncOrchestrator, flow


@flow
def trivial() -> int:
    return 1


@flow
def leaf(i: int) -> int:
    return i


@flow
def hundred_subflows() -> int:
    return sum(leaf(i) for i in range(100))


@flow(retries=2)
def always_fails() -> None:
    raise RuntimeError("boom")


def _failing() -> None:
    with contextlib.suppress(RuntimeError):
        always_fails()


def per_call_ms(call: Callable[[], object], count: int, rounds: int = 5) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            call()
        samples.append((time.perf_counter() - start) / count * 1e3)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    directory = Path(tempfile.mkdtemp(prefix="flowtrail-bench-"))
    with SyncOrchestrator.open(f"sqlite:///{directory}/engine.db") as orch:
        trivial()  # warm up: imports, statement caches
        simple = per_call_ms(trivial, 200)
        nested = per_call_ms(hundred_subflows, 2, rounds=3)
        failing = per_call_ms(_failing, 50)
        states_trivial = len(orch.read_states(orch.read_flow_runs(flow_names=["trivial"], limit=1)[0].id))
        states_failing = len(
            orch.read_states(orch.read_flow_runs(flow_names=["always-fails"], limit=1)[0].id)
        )
    per_subflow = {k: v / 100 for k, v in nested.items()}
    print(
        f"trivial sync flow, durable: {simple['median']:.2f} ms per run ({states_trivial} states) (target <= 1 ms)"
    )
    print(
        f"flow with 100 subflows: {nested['median']:.0f} ms per parent, {per_subflow['median']:.2f} ms per subflow"
    )
    print(f"failing flow, retries=2: {failing['median']:.2f} ms per run ({states_failing} states)")
    emit(
        "engine",
        {
            "trivial_ms": simple,
            "trivial_states": states_trivial,
            "hundred_subflows_ms": nested,
            "per_subflow_ms": per_subflow,
            "failing_retries_ms": failing,
            "failing_states": states_failing,
        },
    )


if __name__ == "__main__":
    main()
