"""The log's cost against the raw SQLite floor, measured side by side in one run.

    .venv/bin/python benchmarks/bench_store.py [--events 1000000]

1. Sync single-event append, durability full, vs a raw sqlite3 INSERT + COMMIT of the
   same row into the same table (target: <= 1.3x).
2. Async appends from 64 concurrent tasks with group commit, durability full (target:
   >= 60,000 events/s), beside raw aiosqlite inserting 100 rows per transaction.
3. read_stream of a 5-event stream among N events (sync) vs a raw indexed SELECT
   (target: <= 2x); read_all scan + decode vs a raw scan + msgspec decode (target:
   >= 60% of its throughput).
Rounds alternate A and B; figures are medians, with min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiosqlite
import msgspec
from common import emit

from flowtrail.core import EVENT_TYPES, FlowRunCreated, RunRenamed, chain_hash, encode_event
from flowtrail.core.chain import GENESIS
from flowtrail.engine.ids import new_run_id
from flowtrail.store.api import StreamWrite
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from flowtrail.store.sqlite_schema import SQL
from flowtrail.testing import T0

DATA = Path(__file__).parent / ".data"


def fresh(name: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="flowtrail-bench-"))
    return directory / name


def event_for(run_id: object) -> FlowRunCreated:
    return FlowRunCreated(run_id=run_id, flow_name="bench", name="bench-run", created_at=T0, tags=("a",))  # type: ignore[arg-type]


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


# --- 1. sync single-event append vs raw INSERT + COMMIT --------------------------------------------


def bench_single_append(rounds: int = 7, per_round: int = 400) -> dict[str, object]:
    path = fresh("single.db")
    store = SyncSQLiteStore(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA synchronous = FULL")
    ours, floor = [], []
    for _ in range(rounds):
        ids = [new_run_id() for _ in range(per_round)]
        start = time.perf_counter()
        for run_id in ids:
            store.append(str(run_id), [event_for(run_id)], 0)
        ours.append((time.perf_counter() - start) / per_round * 1e6)

        rows = []
        position = store.last_position()
        for i, run_id in enumerate(new_run_id() for _ in range(per_round)):
            data = encode_event(event_for(run_id))
            seal = chain_hash(GENESIS, str(run_id), 1, position + i + 1, "flow_run_created", 1, 0, data)
            rows.append((position + i + 1, str(run_id), 1, "flow_run_created", 1, 0, data, seal))
        start = time.perf_counter()
        for row in rows:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute(SQL.insert_event, row)
            raw.execute("COMMIT")
        floor.append((time.perf_counter() - start) / per_round * 1e6)
    store.close()
    raw.close()
    ratio = statistics.median(ours) / statistics.median(floor)
    return {"append_us": summary(ours), "raw_insert_commit_us": summary(floor), "ratio": round(ratio, 3)}


# --- 2. async group commit vs raw aiosqlite 100 per transaction ---------------------------------------


async def _ours_async(path: Path, tasks: int, per_task: int, *, clustered: bool = False) -> float:
    store = await SQLiteStore.open_path(path)
    # The events are made before the clock starts, as the raw side's rows are: what is
    # timed is the appends (checking, encoding, hashing, committing), not the caller's work.
    # Their run ids (UUIDv7, time-ordered) are made in the order the appends will reach
    # the log, as runs created by concurrent callers get them, and as the raw side's
    # rows have them; ``clustered`` makes each task's ids together instead, so that
    # every group's rows land on as many index pages as there are tasks.
    if clustered:
        made = [[event_for(new_run_id()) for _ in range(per_task)] for _ in range(tasks)]
    else:
        rounds = [[event_for(new_run_id()) for _ in range(tasks)] for _ in range(per_task)]
        made = [[events[task] for events in rounds] for task in range(tasks)]

    async def writer(events: list[FlowRunCreated]) -> None:
        for event in events:
            await store.append(str(event.run_id), [event], 0)

    start = time.perf_counter()
    await asyncio.gather(*(writer(events) for events in made))
    elapsed = time.perf_counter() - start
    groups = store.appends_committed / max(store.commit_groups, 1)
    await store.close()
    _ours_async.group = groups  # type: ignore[attr-defined]
    return tasks * per_task / elapsed


async def _raw_async(path: Path, total: int, per_transaction: int = 100) -> float:
    connection = await aiosqlite.connect(path, isolation_level=None)
    await connection.execute("PRAGMA synchronous = FULL")
    last = (await connection.execute_fetchall(SQL.last_position))[0][0] or 0
    rows = []
    for i in range(total):
        run_id = new_run_id()
        data = encode_event(event_for(run_id))
        rows.append((last + i + 1, str(run_id), 1, "flow_run_created", 1, 0, data, b"\x00" * 32))
    start = time.perf_counter()
    for i in range(0, total, per_transaction):
        await connection.execute("BEGIN IMMEDIATE")
        await connection.executemany(SQL.insert_event, rows[i : i + per_transaction])
        await connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    await connection.close()
    return total / elapsed


def bench_async_groups(rounds: int = 5) -> dict[str, object]:
    path = fresh("async.db")
    SyncSQLiteStore(path).close()
    ours, clustered, floor, groups = [], [], [], []
    for _ in range(rounds):
        ours.append(asyncio.run(_ours_async(path, 64, 150)))
        groups.append(_ours_async.group)  # type: ignore[attr-defined]
        clustered.append(asyncio.run(_ours_async(path, 64, 150, clustered=True)))
        floor.append(asyncio.run(_raw_async(path, 10_000)))
    return {
        "events_per_s": summary(ours),
        "ids_clustered_per_task_events_per_s": summary(clustered),
        "raw_aiosqlite_100_per_tx_events_per_s": summary(floor),
        "ratio": round(statistics.median(ours) / statistics.median(floor), 3),
        "mean_group_size": round(statistics.median(groups), 1),
    }


# --- 3. reads among N events ------------------------------------------------------------------------


def big_log(events: int) -> Path:
    DATA.mkdir(exist_ok=True)
    path = DATA / f"reads-{events}.db"
    if path.exists():
        return path
    print(f"building a log of {events:,} events in {path} (once)...", flush=True)
    store = SyncSQLiteStore(path, durability="normal")
    streams = events // 5
    for start in range(0, streams, 400):
        writes = []
        for _ in range(min(400, streams - start)):
            run_id = new_run_id()
            evs = [event_for(run_id)] + [
                RunRenamed(run_id=run_id, name=f"n{i}", renamed_at=T0) for i in range(4)
            ]
            writes.append(StreamWrite(str(run_id), evs, 0))
        store.append_many(writes)
    store.close()
    return path


def bench_reads(events: int, rounds: int = 5, lookups: int = 2000) -> dict[str, object]:
    path = big_log(events)
    store = SyncSQLiteStore(path)
    raw = sqlite3.connect(path)
    last = store.last_position()
    streams = [
        row[0] for row in raw.execute("SELECT stream_id FROM events WHERE version = 1 AND position % 97 = 1")
    ]
    ours, floor = [], []
    for _ in range(rounds):
        sample = random.sample(streams, lookups)
        start = time.perf_counter()
        for stream in sample:
            store.read_stream(stream)
        ours.append((time.perf_counter() - start) / lookups * 1e6)
        start = time.perf_counter()
        for stream in sample:
            raw.execute(SQL.read_stream, (stream, 1)).fetchall()
        floor.append((time.perf_counter() - start) / lookups * 1e6)
    decoders = {tag: msgspec.json.Decoder(cls) for tag, cls in EVENT_TYPES.items()}
    scan_ours, scan_floor = [], []
    for _ in range(max(2, rounds // 2)):
        start = time.perf_counter()
        count = 0
        for record in store.read_all(1, batch=2000):
            record.decode()
            count += 1
        scan_ours.append(count / (time.perf_counter() - start))
        start = time.perf_counter()
        count = 0
        # The same rows and columns read_all returns, decoded straight with msgspec.
        cursor = raw.execute(SQL.read_batch.replace(" LIMIT ?", ""), (1,))
        while batch := cursor.fetchmany(2000):
            for row in batch:
                decoders[row[3]].decode(row[6])
                count += 1
        scan_floor.append(count / (time.perf_counter() - start))
    store.close()
    raw.close()
    return {
        "log_events": last,
        "read_stream_us": summary(ours),
        "raw_select_us": summary(floor),
        "read_stream_ratio": round(statistics.median(ours) / statistics.median(floor), 3),
        "read_all_decode_events_per_s": summary(scan_ours),
        "raw_scan_decode_events_per_s": summary(scan_floor),
        "read_all_share_of_raw": round(statistics.median(scan_ours) / statistics.median(scan_floor), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    single = bench_single_append()
    print(
        f"sync single-event append (full): {single['append_us']['median']:.0f} us "  # type: ignore[index]
        f"vs raw INSERT+COMMIT {single['raw_insert_commit_us']['median']:.0f} us "  # type: ignore[index]
        f"-> {single['ratio']}x (target <= 1.3x)"
    )
    grouped = bench_async_groups()
    print(
        f"async 64 tasks, group commit (full): {grouped['events_per_s']['median']:,.0f} events/s "  # type: ignore[index]
        f"(mean group {grouped['mean_group_size']}; each task's ids together: "
        f"{grouped['ids_clustered_per_task_events_per_s']['median']:,.0f}/s), raw aiosqlite 100/tx "  # type: ignore[index]
        f"{grouped['raw_aiosqlite_100_per_tx_events_per_s']['median']:,.0f}/s (target >= 60,000/s)"  # type: ignore[index]
    )
    reads = bench_reads(args.events)
    print(
        f"read_stream among {reads['log_events']:,}: {reads['read_stream_us']['median']:.1f} us "  # type: ignore[index]
        f"vs raw SELECT {reads['raw_select_us']['median']:.1f} us -> {reads['read_stream_ratio']}x (target <= 2x)"  # type: ignore[index]
    )
    print(
        f"read_all + decode: {reads['read_all_decode_events_per_s']['median']:,.0f}/s "  # type: ignore[index]
        f"vs raw scan + decode {reads['raw_scan_decode_events_per_s']['median']:,.0f}/s "  # type: ignore[index]
        f"-> {reads['read_all_share_of_raw']:.0%} (target >= 60%)"
    )
    emit(
        "store", {"single_append": single, "async_group_commit": grouped, "reads": reads, "pid": os.getpid()}
    )


if __name__ == "__main__":
    main()
