"""Does the cost stay flat as the log grows? Append, propose and rebuild at 10k, 1M and
10M events, and propose throughput by concurrency at each size.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000,1000000,10000000]

Each log is built once in benchmarks/.data/ (the orchestrator benchmark's shape: flow
runs created Pending, every tenth a subflow; about 2.2 events per run) and copied for
each measurement, so every run starts from the same size. On the copy, durable
(synchronous=FULL):

1. rebuild(): events/s and peak RSS, in a fresh process;
2. a single-event append (a new run's creation, with its inline view), sync;
3. propose_state (Running, then Completed), sync;
4. async propose_state from 1, 8 and 64 concurrent runs, proposals/s.

Target: append and propose at 10M within 1.5x of their cost at 10k.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_orchestrator import bench_rebuild, build_runs
from common import emit

from flowtrail import Orchestrator, SyncOrchestrator
from flowtrail.core import states as pure

EVENTS_PER_RUN = 2.2


def median_us(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def bench_writes(url: str, rounds: int = 5, per_round: int = 200) -> dict[str, object]:
    appends, proposals = [], []
    with SyncOrchestrator.open(url) as orch:
        orch.create_flow_run("warm", name="w", state=pure.Pending())
        for _ in range(rounds):
            start = time.perf_counter()
            runs = [orch.create_flow_run("scale", name="s") for _ in range(per_round)]
            appends.append((time.perf_counter() - start) / per_round * 1e6)
            for run in runs:
                orch.propose_state(run.id, pure.Pending())
            start = time.perf_counter()
            for run in runs:
                orch.propose_state(run.id, pure.Running())
                orch.propose_state(run.id, pure.Completed())
            proposals.append((time.perf_counter() - start) / (2 * per_round) * 1e6)
        events = orch.last_position()
    return {"log_events": events, "append_us": median_us(appends), "propose_us": median_us(proposals)}


async def _throughput(url: str, concurrency: int, seconds: float) -> float:
    async with Orchestrator.open(url) as orch:
        done = 0
        stop = time.perf_counter() + seconds

        async def one_run() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                run = await orch.create_flow_run("scale", name="s", state=pure.Pending())
                await orch.propose_state(run.id, pure.Running())
                await orch.propose_state(run.id, pure.Completed())
                done += 2

        start = time.perf_counter()
        await asyncio.gather(*(one_run() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def bench_concurrency(url: str, seconds: float = 3.0) -> dict[str, float]:
    return {str(n): asyncio.run(_throughput(url, n, seconds)) for n in (1, 8, 64)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    for events in (int(size) for size in args.sizes.split(",")):
        built = build_runs(max(1, round(events / EVENTS_PER_RUN)))
        work = Path(tempfile.mkdtemp(prefix="flowtrail-scale-", dir=built.parent)) / "log.db"
        try:
            shutil.copyfile(built, work)
            rebuild = bench_rebuild(work)
            url = f"sqlite:///{work}"
            writes = bench_writes(url)
            concurrency = bench_concurrency(url)
        finally:
            shutil.rmtree(work.parent)
        figures[str(events)] = {**writes, "proposals_per_s": concurrency, "rebuild": rebuild}
        print(
            f"{writes['log_events']:>11,} events: append {writes['append_us']['median']:.0f} us, "  # type: ignore[index]
            f"propose {writes['propose_us']['median']:.0f} us, "  # type: ignore[index]
            f"async proposals/s at 1/8/64 runs {concurrency['1']:,.0f}/{concurrency['8']:,.0f}/"
            f"{concurrency['64']:,.0f}, rebuild {rebuild['events_per_s']:,.0f} events/s "
            f"in {rebuild['seconds']:.1f} s, peak RSS {rebuild['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    sizes = list(figures)
    if len(sizes) > 1:
        first, last = figures[sizes[0]], figures[sizes[-1]]
        for what in ("append_us", "propose_us"):
            ratio = last[what]["median"] / first[what]["median"]  # type: ignore[index]
            figures[f"{what}_growth"] = round(ratio, 2)
            print(f"{what} at {sizes[-1]} / at {sizes[0]}: {ratio:.2f}x (target <= 1.5x)")
    emit("scale", figures)


if __name__ == "__main__":
    main()
