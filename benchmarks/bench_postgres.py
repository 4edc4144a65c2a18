"""propose_state on PostgreSQL beside SQLite: latency and throughput by concurrency.

    FLOWTRAIL_BENCH_POSTGRES_DSN=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/bench_postgres.py [--seconds 4]

For 1, 8 and 64 concurrent runs, each a task of the async Orchestrator taking its run
through Running and Completed and starting the next: every proposal's latency (p50,
p99) and proposals per second, durable on both sides (SQLite synchronous=FULL,
PostgreSQL synchronous_commit=on), in one process. These are closed loops: each run
proposes again as soon as it is answered, which gives the most the store takes, with
the queue that builds up at that rate in every latency. Then 64 runs offered 5,500
proposals/s in all (an open loop: the latency at a given load), and 8 processes with 8
runs each against one log. Target (PostgreSQL, 64 concurrent runs over loopback):
p99 <= 5 ms and >= 5,000 proposals/s. Uses FLOWTRAIL_BENCH_POSTGRES_DSN, else
FLOWTRAIL_TEST_POSTGRES_DSN; without either only SQLite is measured.

Each in-process figure is measured ``--rounds`` times on a fresh log, the backends
alternating, and reported as the median round with the min-max of p99 beside it. The
disk is flushed (``sync``) before each round: the other benchmarks leave gigabytes of
dirty pages, and their write-back would otherwise land on whichever commit comes next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from common import emit

from flowtrail import Orchestrator, states

#: The open loop's offered load: a little over the target's 5,000/s, since a run's
#: last proposals fall outside the window and the measured rate comes out just under it.
OPEN_RATE = 5_500

DSN = os.environ.get("FLOWTRAIL_BENCH_POSTGRES_DSN") or os.environ.get("FLOWTRAIL_TEST_POSTGRES_DSN")


def postgres_url(schema: str) -> str:
    assert DSN is not None
    return f"{DSN}{'&' if '?' in DSN else '?'}schema={schema}"


def drop(schema: str) -> None:
    import psycopg

    assert DSN is not None
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def load(url: str, concurrency: int, seconds: float, rate: float | None = None) -> dict[str, float]:
    """``concurrency`` runs proposed concurrently for ``seconds``: latencies and rate.

    Without ``rate`` each run proposes again as soon as it is answered (a closed loop:
    the most the store takes). With ``rate``, proposals are offered at that many per
    second in all, spread over the runs (an open loop: the latency at that load).
    """
    latencies: list[float] = []
    async with Orchestrator.open(url) as orch:
        deadline = time.perf_counter() + seconds
        interval = None if rate is None else concurrency / rate

        async def one_run_after_another(index: int) -> None:
            slot = time.perf_counter() + (0 if interval is None else interval * index / concurrency)
            while time.perf_counter() < deadline:
                run = await orch.create_flow_run("bench", name="b", state=states.Pending())
                for state in (states.Running(), states.Completed()):
                    if interval is not None:
                        slot += interval
                        await asyncio.sleep(max(0.0, slot - time.perf_counter()))
                    start = time.perf_counter()
                    await orch.propose_state(run.id, state)
                    latencies.append(time.perf_counter() - start)

        # A short warm-up (connections, prepared statements), then the measured window.
        warm = time.perf_counter() + 0.5
        while time.perf_counter() < warm:
            run = await orch.create_flow_run("warm", name="w", state=states.Pending())
            await orch.propose_state(run.id, states.Running())
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(one_run_after_another(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "proposals": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


def worker(url: str, concurrency: int, seconds: float) -> None:
    print(json.dumps(asyncio.run(load(url, concurrency, seconds))), flush=True)


def processes(url: str, count: int, concurrency: int, seconds: float) -> dict[str, float]:
    """``count`` processes, each with ``concurrency`` runs, on one log."""
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, str(concurrency), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = [json.loads(child.communicate()[0]) for child in children]
    return {
        "proposals": sum(r["proposals"] for r in results),
        "per_second": sum(r["per_second"] for r in results),
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
    }


def measured(url_for: Callable[[str], str], label: str, rounds: int, **load_args: Any) -> dict[str, Any]:
    """``load`` over ``rounds`` fresh logs: the median round's figures, and every round's."""
    results = []
    for _ in range(rounds):
        name = f"bench_{uuid4().hex[:8]}_{label}"
        os.sync()
        try:
            results.append(asyncio.run(load(url_for(name), **load_args)))
        finally:
            if url_for is postgres_url:
                drop(name)
    middle = sorted(results, key=lambda r: r["p99_ms"])[len(results) // 2]
    p99s = [r["p99_ms"] for r in results]
    return {**middle, "p99_min_ms": min(p99s), "p99_max_ms": max(p99s), "rounds": results}


def show(backend: str, label: str, result: dict[str, Any]) -> None:
    spread = ""
    if "p99_min_ms" in result:
        spread = f" (p99 over rounds {result['p99_min_ms']:.2f}-{result['p99_max_ms']:.2f})"
    print(
        f"{backend:10} {label:16} {result['per_second']:8,.0f} proposals/s, "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms{spread}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), float(args.worker[2]))
        return
    figures: dict[str, object] = {}
    directory = tempfile.mkdtemp(prefix="flowtrail-bench-")
    backends: dict[str, Callable[[str], str]] = {"sqlite": lambda name: f"sqlite:///{directory}/{name}.db"}
    if DSN:
        backends["postgresql"] = postgres_url
    else:
        print("no PostgreSQL DSN: measuring SQLite only")
    loads: dict[str, dict[str, Any]] = {
        "1": {"concurrency": 1},
        "8": {"concurrency": 8},
        "64": {"concurrency": 64},
        "64_open": {"concurrency": 64, "rate": OPEN_RATE},
    }
    for key, shape in loads.items():
        label = f"64 at {OPEN_RATE:,}/s" if "rate" in shape else f"{shape['concurrency']} concurrent"
        for backend, url_for in backends.items():
            result = measured(url_for, key, args.rounds, seconds=args.seconds, **shape)
            figures[f"{backend}_{key}"] = result
            show(backend, label, result)
    for backend, url_for in backends.items():
        name = f"bench_{uuid4().hex[:8]}_procs"
        os.sync()
        try:
            result = processes(url_for(name), 8, 8, args.seconds)
        finally:
            if DSN and url_for is postgres_url:
                drop(name)
        figures[f"{backend}_8x8_processes"] = result
        show(backend, "8 processes x 8", result)
    emit("postgres", figures)


if __name__ == "__main__":
    main()
