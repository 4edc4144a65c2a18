"""The pure core's cost per proposal: decide, evolve, and the event's encode/decode.

    .venv/bin/python benchmarks/bench_core.py

Target: decide + evolve + encode <= 10 us per proposal on the reference machine.
Three proposals are measured, from a typical flow run's life: Pending -> Running
(accepted), Running -> Failed with retries left (rejected into AwaitingRetry, the
longest path through the rules), and a task's Running inside a running flow.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from common import emit  # benchmarks/ is on sys.path when a benchmark runs as a script

from flowtrail.core import (
    Facts,
    Proposal,
    RunView,
    StateProposed,
    decide,
    decode_event,
    encode_event,
    evolve,
)
from flowtrail.core import states as s
from flowtrail.testing import MemoryLog, at

ROUNDS = 7
LOOPS = 20_000


def per_call_us(fn: Callable[[], object], loops: int = LOOPS) -> tuple[float, float, float]:
    """Median, min and max microseconds per call over ROUNDS rounds."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(samples), min(samples), max(samples)


def cases() -> dict[str, tuple[RunView, Proposal, Facts]]:
    log = MemoryLog()
    flow = log.create_flow_run("bench", retries=2, retry_delay=0)
    log.propose(flow.id, s.Pending(), at=at(0))
    pending = log.view(flow.id)
    log.propose(flow.id, s.Running(), at=at(1))
    running = log.view(flow.id)
    task = log.create_task_run(flow.id, "t")
    task_view = log.view(task.id)
    start = Proposal(state=s.Running(timestamp=at(2)), proposed_at=at(2))
    fail = Proposal(state=s.Failed(message="boom", timestamp=at(3)), proposed_at=at(3))
    task_start = Proposal(state=s.Running(timestamp=at(4)), proposed_at=at(4))
    return {
        "flow Pending->Running (accept)": (pending, start, Facts()),
        "flow Running->Failed (retry)": (running, fail, Facts()),
        "task Pending->Running in a flow": (task_view, task_start, log.facts_for(task_view, task_start)),
    }


def main() -> None:
    rows = []
    totals = []
    for label, (view, proposal, facts) in cases().items():
        decision = decide(view, proposal, facts)
        event = StateProposed(run_id=view.id, proposal=proposal, facts=facts, decision=decision)
        data = encode_event(event)
        d = per_call_us(lambda v=view, p=proposal, f=facts: decide(v, p, f))
        e = per_call_us(lambda v=view, ev=event: evolve(v, ev))
        enc = per_call_us(lambda ev=event: encode_event(ev))
        dec = per_call_us(lambda b=data: decode_event(b, "state_proposed", 1))
        total = d[0] + e[0] + enc[0]
        totals.append(total)
        rows.append((label, d, e, enc, dec, total, len(data)))
    print(
        f"{'proposal':34} {'decide':>8} {'evolve':>8} {'encode':>8} {'decode':>8} {'d+e+enc':>9} {'bytes':>6}"
    )
    for label, d, e, enc, dec, total, size in rows:
        print(f"{label:34} {d[0]:8.2f} {e[0]:8.2f} {enc[0]:8.2f} {dec[0]:8.2f} {total:9.2f} {size:6d}")
    print("(microseconds per call, median of 7 rounds; min-max in benchmarks/results/core.json)")
    worst = max(totals)
    emit(
        "core",
        {
            "decide_evolve_encode_us_worst": round(worst, 2),
            "cases": {
                label: {
                    "decide_us": d,
                    "evolve_us": e,
                    "encode_us": enc,
                    "decode_us": dec,
                    "total_us": round(total, 2),
                    "event_bytes": size,
                }
                for label, d, e, enc, dec, total, size in rows
            },
        },
    )
    print(f"worst decide + evolve + encode: {worst:.2f} us per proposal (target <= 10 us)")


if __name__ == "__main__":
    main()
