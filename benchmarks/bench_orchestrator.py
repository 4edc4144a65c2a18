"""The Orchestrator API's cost, measured against the raw SQLite floor in the same run.

    .venv/bin/python benchmarks/bench_orchestrator.py [--runs 1000000]

1. Sync propose_state, durability full, vs a raw sqlite3 INSERT + COMMIT (target <= 2x).
2. Async propose_state from 64 concurrent runs (target >= 20,000 proposals/s).
3. read_flow_run and find_subflow_run among N flow runs, sync (target <= 20 us each).
4. rebuild() of the same log (~2M events): events/s and peak RSS (the rebuilding process
   and its helpers together), in a fresh process (target >= 250,000 events/s, <= 150 MB);
   and the same rebuild kept in one process (workers=1), for the ratio. Then both again
   on a log of 2M events where runs live whole lives (created, Pending, Running,
   Completed, a thousand runs side by side): a run's row is written once per four events
   there, against once per two or so in the first log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit

from flowtrail import Orchestrator, SyncOrchestrator
from flowtrail.core import (
    Facts,
    FlowRunCreated,
    Proposal,
    StateProposed,
    TaskRunCreated,
    decide,
    evolve,
)
from flowtrail.core import states as pure
from flowtrail.core.policies import mirror_proposal
from flowtrail.engine.ids import new_run_id
from flowtrail.projections import RunViews
from flowtrail.projections.queries import FlowRunSort
from flowtrail.store import StreamWrite, SyncSQLiteStore
from flowtrail.store.sqlite_schema import SQL
from flowtrail.testing import at

DATA = Path(__file__).parent / ".data"


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


# --- 1. sync propose vs raw INSERT + COMMIT ---------------------------------------------------------


def bench_sync_propose(rounds: int = 7, per_round: int = 150) -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="flowtrail-bench-"))
    ours, floor = [], []
    with SyncOrchestrator.open(f"sqlite:///{directory}/orch.db") as orch:
        raw = sqlite3.connect(directory / "orch.db", isolation_level=None)
        raw.execute("PRAGMA synchronous = FULL")
        for _ in range(rounds):
            runs = [orch.create_flow_run("bench", name="b", state=pure.Pending()) for _ in range(per_round)]
            start = time.perf_counter()
            for run in runs:
                orch.propose_state(run.id, pure.Running())
                orch.propose_state(run.id, pure.Completed())
            ours.append((time.perf_counter() - start) / (2 * per_round) * 1e6)
            last = orch.last_position()
            rows = [
                (last + i + 1, str(new_run_id()), 1, "flow_run_created", 1, 0, b"x" * 700, b"h" * 32)
                for i in range(2 * per_round)
            ]
            start = time.perf_counter()
            for row in rows:
                raw.execute("BEGIN IMMEDIATE")
                raw.execute(SQL.insert_event, row)
                raw.execute("COMMIT")
            floor.append((time.perf_counter() - start) / len(rows) * 1e6)
            raw.execute("BEGIN IMMEDIATE")  # take the raw rows out again: they are not a log
            raw.execute("DROP TRIGGER IF EXISTS events_are_never_deleted")
            raw.execute("DELETE FROM events WHERE position > ?", (last,))
            raw.execute(
                "CREATE TRIGGER events_are_never_deleted BEFORE DELETE ON events "
                "BEGIN SELECT RAISE(ABORT, 'flowtrail events are never deleted'); END"
            )
            raw.execute("COMMIT")
        raw.close()
    ratio = statistics.median(ours) / statistics.median(floor)
    return {"propose_us": summary(ours), "raw_insert_commit_us": summary(floor), "ratio": round(ratio, 3)}


# --- 2. async proposals from 64 concurrent runs ----------------------------------------------------


async def _async_proposals(path: Path, runs: int, seconds: float) -> tuple[float, float]:
    async with Orchestrator.open(f"sqlite:///{path}") as orch:
        done = 0
        stop = time.perf_counter() + seconds

        async def one_run() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                run = await orch.create_flow_run("bench", name="b", state=pure.Pending())
                await orch.propose_state(run.id, pure.Running())
                await orch.propose_state(run.id, pure.Completed())
                done += 3  # the creation records a (forced) proposal too

        start = time.perf_counter()
        await asyncio.gather(*(one_run() for _ in range(runs)))
        elapsed = time.perf_counter() - start
        group = orch.store.appends_committed / max(orch.store.commit_groups, 1)
    return done / elapsed, group


def bench_async_propose(rounds: int = 3) -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="flowtrail-bench-"))
    rates, groups = [], []
    for _ in range(rounds):
        rate, group = asyncio.run(_async_proposals(directory / "async.db", 64, 3.0))
        rates.append(rate)
        groups.append(group)
    return {"proposals_per_s": summary(rates), "mean_group_size": round(statistics.median(groups), 1)}


# --- 3 and 4. a log of many runs: lookups and rebuild --------------------------------------------------


def _new_log(path: Path, what: str) -> SyncSQLiteStore | None:
    """A store on a log to build at ``path``; None if it was built before."""
    if path.exists():
        return None
    DATA.mkdir(exist_ok=True)
    print(f"building a log of {what} in {path} (once)...", flush=True)
    return SyncSQLiteStore(path, durability="normal", projections=[RunViews()])


def build_runs(runs: int) -> Path:
    """Flow runs created Pending; every tenth a subflow of a task of the run before it."""
    path = DATA / f"runs-{runs}.db"
    store = _new_log(path, f"{runs:,} flow runs")
    if store is None:
        return path
    previous = None
    batch: list[StreamWrite] = []
    for index in range(runs):
        when = at(index / 1000)
        parent_task = None
        if previous is not None and index % 10 == 0:
            parent_task = evolve(
                None,
                TaskRunCreated(
                    run_id=new_run_id(),
                    flow_run_id=previous,
                    task_key="child",
                    dynamic_key="0",
                    name="child-0",
                    created_at=when,
                ),
            )
            batch.append(StreamWrite(str(parent_task.id), [_created_event(parent_task)], 0))
        created = FlowRunCreated(
            run_id=new_run_id(),
            flow_name=f"flow-{index % 50}",
            name=f"run-{index}",
            created_at=when,
            parent_task_run_id=None if parent_task is None else parent_task.id,
            tags=(f"t{index % 7}",),
        )
        view = evolve(None, created)
        proposal = Proposal(state=pure.Pending(timestamp=when), proposed_at=when, force=True)
        decision = decide(view, proposal, Facts())
        proposed = StateProposed(run_id=view.id, proposal=proposal, facts=Facts(), decision=decision)
        batch.append(StreamWrite(str(view.id), [created, proposed], 0))
        if parent_task is not None:
            mirror = mirror_proposal(view, decision, proposal)
            assert mirror is not None
            copied = StateProposed(
                run_id=parent_task.id,
                proposal=mirror,
                facts=Facts(),
                decision=decide(parent_task, mirror, Facts()),
            )
            batch[-2] = StreamWrite(str(parent_task.id), [_created_event(parent_task), copied], 0)
        previous = view.id
        if len(batch) >= 1000:
            store.append_many(batch)
            batch = []
    if batch:
        store.append_many(batch)
    store.close()
    return path


def build_lifecycles(runs: int) -> Path:
    """Flow runs that live a whole life: created Pending, then Running, then Completed
    (four events a run), a thousand at a time, so that a run's events lie among
    the others' as they do when runs go on side by side."""
    path = DATA / f"lifecycles-{runs}.db"
    store = _new_log(path, f"{runs:,} flow-run lifecycles")
    if store is None:
        return path
    for wave in range(0, runs, 1000):
        creations = [
            FlowRunCreated(
                run_id=new_run_id(),
                flow_name=f"flow-{index % 50}",
                name=f"run-{index}",
                created_at=at(index / 1000),
                tags=(f"t{index % 7}",),
            )
            for index in range(wave, min(wave + 1000, runs))
        ]
        views = [evolve(None, created) for created in creations]
        for step, state in enumerate((pure.Pending, pure.Running, pure.Completed)):
            writes = []
            for number, view in enumerate(views):
                when = at((wave + number) / 1000 + step)
                proposal = Proposal(state=state(timestamp=when), proposed_at=when, force=step == 0)
                decision = decide(view, proposal, Facts())
                event = StateProposed(run_id=view.id, proposal=proposal, facts=Facts(), decision=decision)
                # A run's creation is appended with its first state.
                earlier = [creations[number]] if step == 0 else []
                writes.append(StreamWrite(str(view.id), [*earlier, event], view.version - len(earlier)))
                views[number] = evolve(view, event)
            store.append_many(writes)
    store.close()
    return path


def _created_event(view: object) -> TaskRunCreated:
    v = view  # a freshly created task view
    return TaskRunCreated(
        run_id=v.id,
        flow_run_id=v.flow_run_id,
        task_key=v.task_key,
        dynamic_key=v.dynamic_key,  # type: ignore[attr-defined]
        name=v.name,
        created_at=v.created_at,  # type: ignore[attr-defined]
    )


def warm(path: Path) -> None:
    """Read the file once, so that lookups measure the indexes, not a cold disk (other
    benchmarks' large logs may have pushed this one out of the page cache)."""
    with path.open("rb") as file:
        while file.read(16 * 1024 * 1024):
            pass


def bench_lookups(path: Path, rounds: int = 5, lookups: int = 3000) -> dict[str, object]:
    warm(path)
    raw = sqlite3.connect(path)
    flows = [row[0] for row in raw.execute("SELECT id FROM flow_runs WHERE rowid % 53 = 0")]
    parents = [
        row[0]
        for row in raw.execute(
            "SELECT parent_task_run_id FROM flow_runs WHERE parent_task_run_id IS NOT NULL"
        )
    ]
    count = raw.execute("SELECT count(*) FROM flow_runs").fetchone()[0]
    raw.close()
    reads, finds = [], []
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for _ in range(rounds):
            sample = random.sample(flows, lookups)
            start = time.perf_counter()
            for run_id in sample:
                orch.read_flow_run(run_id)
            reads.append((time.perf_counter() - start) / lookups * 1e6)
            sample = random.sample(parents, lookups)
            start = time.perf_counter()
            for parent in sample:
                orch.find_subflow_run(parent)
            finds.append((time.perf_counter() - start) / lookups * 1e6)
        pages = bench_pages(orch)
    return {
        "flow_runs": count,
        "read_flow_run_us": summary(reads),
        "find_subflow_run_us": summary(finds),
        "pages": pages,
    }


#: The pages `bench_pages` reads: each sort, and the indexed filters in the default order.
PAGES: dict[str, dict[str, object]] = {
    **{f"sort {sort}": {"sort": sort} for sort in FlowRunSort},
    "state_types PENDING": {"state_types": ["PENDING"]},
    "state_names Pending": {"state_names": ["Pending"]},
    "flow_names flow-3": {"flow_names": ["flow-3"]},
    "state_types PENDING, START_TIME_DESC": {"state_types": ["PENDING"], "sort": FlowRunSort.START_TIME_DESC},
    "flow_names flow-3, START_TIME_DESC": {"flow_names": ["flow-3"], "sort": FlowRunSort.START_TIME_DESC},
}
#: Pages under a tag that 1 run in 7 holds, in each sort: read in the sort's order, each
#: run's tag looked up.
TAG_PAGES: dict[str, dict[str, object]] = {
    f"tags t3, {sort}": {"tags": ["t3"], "sort": sort} for sort in FlowRunSort
}


def bench_pages(orch: SyncOrchestrator, rounds: int = 7) -> dict[str, object]:
    """read_flow_runs, a page of 200: the median of each page over ``rounds``, and the
    slowest of those (of `PAGES`, and apart of `TAG_PAGES`). The log's runs all wait
    Pending, so the state filter matches every one: read off an index in the order asked
    for, or sorted whole."""
    medians = {}
    for label, arguments in {**PAGES, **TAG_PAGES}.items():
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            page = orch.read_flow_runs(limit=200, **arguments)  # type: ignore[arg-type]
            samples.append((time.perf_counter() - start) * 1e3)
            assert len(page) == 200
        medians[label] = round(statistics.median(samples), 2)
    slowest = max(PAGES, key=medians.__getitem__)
    slowest_tag = max(TAG_PAGES, key=medians.__getitem__)
    return {
        "page_ms": medians,
        "slowest": slowest,
        "slowest_ms": medians[slowest],
        "slowest_tag": slowest_tag,
        "slowest_tag_ms": medians[slowest_tag],
    }


_REBUILD_CHILD = """
import json, os, resource, sys, time
from flowtrail import SyncOrchestrator
from flowtrail.engine.replay import split_replay
workers = None if sys.argv[2] == "auto" else int(sys.argv[2])
with SyncOrchestrator.open("sqlite:///" + sys.argv[1], durability="normal") as orch:
    split = split_replay(orch.store, workers)
    processes = 1 if split is None else split.partitions(orch.last_position())
    start = time.perf_counter()
    applied = orch.rebuild(workers=workers)
    elapsed = time.perf_counter() - start
peak = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
helper = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if processes > 1 else 0
print(json.dumps({
    "events": applied, "seconds": elapsed, "events_per_s": applied / elapsed, "processes": processes,
    "parent_peak_rss_mb": peak, "helper_peak_rss_mb": helper,
    # All processes at their peaks at once: an upper bound of what the rebuild holds.
    "peak_rss_mb": peak + (processes - 1) * helper,
}))
"""


def bench_rebuild(path: Path, workers: int | None = None) -> dict[str, object]:
    """rebuild() in a fresh process: by default split as it chooses, or over ``workers``."""
    out = subprocess.run(
        [sys.executable, "-c", _REBUILD_CHILD, str(path), "auto" if workers is None else str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--lifecycles", type=int, default=500_000)
    args = parser.parse_args()
    sync = bench_sync_propose()
    print(
        f"sync propose_state (full): {sync['propose_us']['median']:.0f} us vs raw INSERT+COMMIT "  # type: ignore[index]
        f"{sync['raw_insert_commit_us']['median']:.0f} us -> {sync['ratio']}x (target <= 2x)"  # type: ignore[index]
    )
    concurrent = bench_async_propose()
    print(
        f"async propose_state, 64 concurrent runs: {concurrent['proposals_per_s']['median']:,.0f} proposals/s "  # type: ignore[index]
        f"(mean group {concurrent['mean_group_size']}) (target >= 20,000/s)"
    )
    path = build_runs(args.runs)
    lookups = bench_lookups(path)
    print(
        f"among {lookups['flow_runs']:,} flow runs: read_flow_run {lookups['read_flow_run_us']['median']:.1f} us, "  # type: ignore[index]
        f"find_subflow_run {lookups['find_subflow_run_us']['median']:.1f} us (target <= 20 us each)"  # type: ignore[index]
    )
    pages = lookups["pages"]
    print(
        f"read_flow_runs, a page of 200 among them: slowest {pages['slowest_ms']} ms ({pages['slowest']}) "  # type: ignore[index]
        f"(target <= 10 ms); under a tag, slowest {pages['slowest_tag_ms']} ms ({pages['slowest_tag']})"  # type: ignore[index]
    )
    rebuild = bench_rebuilds(path, "1M runs that stay Pending (2.2 events a run)")
    lifecycles = bench_rebuilds(
        build_lifecycles(args.lifecycles), f"{args.lifecycles:,} whole lifecycles (4 events a run)"
    )
    beside = bench_rebuild_beside_a_writer(path)
    print(
        f"a process proposing every 2 ms through that rebuild of 1M runs: longest wait {beside['longest_ms']} ms, "
        f"p99 {beside['p99_ms']} ms, StoreBusyErrors {beside['busy_errors']} of {beside['calls']:,} calls"
    )
    emit(
        "orchestrator",
        {
            "sync_propose": sync,
            "async_propose": concurrent,
            "lookups": lookups,
            "rebuild": rebuild,
            "rebuild_lifecycles": lifecycles,
            "rebuild_beside_a_writer": beside,
        },
    )


_PROPOSER_CHILD = """
import json, os, sys, time
from flowtrail import SyncOrchestrator, StoreBusyError
from flowtrail.core import states
waits, busy = [], 0
with SyncOrchestrator.open("sqlite:///" + sys.argv[1], durability="normal") as orch:
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        start = time.perf_counter()
        try:
            run = orch.create_flow_run("beside-a-rebuild", state=states.Pending())
            orch.propose_state(run.id, states.Running())
        except StoreBusyError:
            busy += 1
        waits.append((time.perf_counter() - start) * 1e3)
        time.sleep(0.002)
waits.sort()
print(json.dumps({"calls": len(waits), "busy_errors": busy, "longest_ms": round(waits[-1], 1),
                  "p99_ms": round(waits[int(len(waits) * 0.99)], 1)}))
"""


def bench_rebuild_beside_a_writer(path: Path) -> dict[str, object]:
    """A second process creating and starting a run every 2 ms while rebuild() runs on a
    copy of the log: how long it waited at the longest, and how many StoreBusyErrors it
    met (after its busy timeout of 5 s)."""
    directory = Path(tempfile.mkdtemp(prefix="beside-", dir=DATA))
    copy, stop = directory / path.name, directory / "stop"
    try:
        shutil.copyfile(path, copy)
        proposer = subprocess.Popen(
            [sys.executable, "-c", _PROPOSER_CHILD, str(copy), str(stop)], stdout=subprocess.PIPE, text=True
        )
        assert proposer.stdout is not None
        assert proposer.stdout.readline().strip() == "ready"
        rebuild = bench_rebuild(copy)
        stop.touch()
        waits: dict[str, object] = json.loads(proposer.communicate()[0])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    waits["rebuild_events_per_s"] = rebuild["events_per_s"]
    return waits


def bench_rebuilds(path: Path, log: str) -> dict[str, object]:
    """The rebuild of one log as it splits itself, and kept in one process, in one run."""
    alone = bench_rebuild(path, workers=1)
    rebuild = bench_rebuild(path)
    rebuild["one_process_events_per_s"] = alone["events_per_s"]
    rebuild["one_process_peak_rss_mb"] = alone["peak_rss_mb"]
    rebuild["speedup"] = round(rebuild["events_per_s"] / alone["events_per_s"], 2)  # type: ignore[operator]
    print(
        f"rebuild of {rebuild['events']:,} events, {log}, over {rebuild['processes']} processes: "
        f"{rebuild['events_per_s']:,.0f} events/s, peak RSS {rebuild['peak_rss_mb']:.0f} MB in all "
        f"({rebuild['parent_peak_rss_mb']:.0f} MB + helpers of {rebuild['helper_peak_rss_mb']:.0f} MB) "
        f"(target >= 250,000/s, <= 150 MB); in one process {alone['events_per_s']:,.0f} events/s, "
        f"{alone['peak_rss_mb']:.0f} MB -> split {rebuild['speedup']}x"
    )
    return rebuild


if __name__ == "__main__":
    main()
