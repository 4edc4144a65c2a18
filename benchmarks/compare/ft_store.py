"""flowtrail's store, and the raw sqlite3 floor under it: one round, in flowtrail's venv.

    .venv/bin/python benchmarks/compare/ft_store.py prepare --work DIR --out FILE
    .venv/bin/python benchmarks/compare/ft_store.py round --work DIR --out FILE [--singles N ...]

``prepare`` copies bench_store.py's 100,000-event log (20,000 streams of a
FlowRunCreated and four RunRenamed, UUIDv7 run ids; built once in benchmarks/.data/)
into DIR, where ``rebuild()`` may write its views without touching the original.

A round measures, durability full unless said otherwise:
- single-event appends: bench_store.bench_single_append (store.append of one
  FlowRunCreated to a new stream at expected version 0, and the raw sqlite3 INSERT +
  COMMIT of the same row, synchronous=FULL), on a fresh log, median of 5 rounds;
- 5-event appends: store.append of a FlowRunCreated and four RunRenamed to a new stream,
  and raw sqlite3 inserting the same five rows in one transaction, likewise;
- the raw floor with 100 rows per transaction;
- over the 100,000 events: read_all + decode and the raw scan + msgspec decode
  (bench_store.bench_reads), read_all + decode + fold into run views in memory
  (``evolve``, what an eventsourcing replay into aggregates does), and
  ``SyncOrchestrator.rebuild()`` (the same, plus every view row and its indexes written
  back durably).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import answer

from flowtrail import SyncOrchestrator
from flowtrail.core import RunRenamed, chain_hash, encode_event, evolve
from flowtrail.core.chain import GENESIS
from flowtrail.engine.ids import new_run_id
from flowtrail.store import SyncSQLiteStore
from flowtrail.store.sqlite_schema import SQL
from flowtrail.testing import T0

BENCHMARKS = Path(__file__).resolve().parent.parent
REPLAY_EVENTS = 100_000
#: Append figures are the median of this many rounds on one fresh log, so the rounds that
#: grow its new WAL file (every commit then also extends the file, a dearer fsync; it can
#: take two rounds before the first checkpoint wraps it) are not the ones reported;
#: eventsourcing's side does the same.
APPEND_ROUNDS = 5


def _imports() -> Any:
    """bench_store.py and common.py live one folder up and import each other by name."""
    sys.path.insert(0, str(BENCHMARKS))
    import bench_store

    return bench_store


def prepare(work: Path) -> dict[str, Any]:
    bench_store = _imports()
    source = bench_store.big_log(REPLAY_EVENTS)
    target = work / "ft-replay.db"
    shutil.copyfile(source, target)
    raw = sqlite3.connect(target)
    events, size = raw.execute("SELECT count(*), avg(length(data)) FROM events").fetchone()
    raw.close()
    return {"replay_log": str(target), "events": events, "mean_event_bytes": size}


def _renames(run_id: Any) -> list[RunRenamed]:
    return [RunRenamed(run_id=run_id, name=f"n{i}", renamed_at=T0) for i in range(4)]


def five_event_appends(count: int, rounds: int) -> dict[str, float]:
    """Microseconds per append of five events, ours and the raw floor, on a fresh log:
    the median of ``rounds`` rounds alternating the two on the same file, as
    bench_store.bench_single_append does (the first round also grows the new WAL file)."""
    bench_store = _imports()
    path = bench_store.fresh("five.db")
    store = SyncSQLiteStore(path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA synchronous = FULL")
    ours, floor = [], []
    for _ in range(rounds):
        ids = [new_run_id() for _ in range(count)]
        start = time.perf_counter()
        for run_id in ids:
            store.append(str(run_id), [bench_store.event_for(run_id), *_renames(run_id)], 0)
        ours.append((time.perf_counter() - start) / count * 1e6)

        position = store.last_position()
        transactions = []
        for run_id in (new_run_id() for _ in range(count)):
            rows = []
            for version, event in enumerate([bench_store.event_for(run_id), *_renames(run_id)], 1):
                data = encode_event(event)
                position += 1
                kind = "flow_run_created" if version == 1 else "run_renamed"
                seal = chain_hash(GENESIS, str(run_id), version, position, kind, 1, 0, data)
                rows.append((position, str(run_id), version, kind, 1, 0, data, seal))
            transactions.append(rows)
        start = time.perf_counter()
        for rows in transactions:
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(SQL.insert_event, rows)
            raw.execute("COMMIT")
        floor.append((time.perf_counter() - start) / count * 1e6)
    raw.close()
    store.close()
    return {"append_us": statistics.median(ours), "raw_5_rows_per_tx_us": statistics.median(floor)}


def raw_batched(total: int, per_transaction: int = 100) -> float:
    """Raw sqlite3, synchronous=FULL: events/s inserting ``per_transaction`` rows per commit."""
    bench_store = _imports()

    path = bench_store.fresh("batched.db")
    SyncSQLiteStore(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA synchronous = FULL")
    rows = []
    for i in range(total):
        run_id = new_run_id()
        data = encode_event(bench_store.event_for(run_id))
        rows.append((i + 1, str(run_id), 1, "flow_run_created", 1, 0, data, b"\x00" * 32))
    start = time.perf_counter()
    for i in range(0, total, per_transaction):
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(SQL.insert_event, rows[i : i + per_transaction])
        raw.execute("COMMIT")
    elapsed = time.perf_counter() - start
    raw.close()
    return total / elapsed


def replay_in_memory(log: Path) -> float:
    """Events/s reading, decoding and folding every event into its run's view, in memory."""

    store = SyncSQLiteStore(log)
    views: dict[str, Any] = {}
    gc.collect()
    start = time.perf_counter()
    count = 0
    for record in store.read_all(1, batch=1000):
        views[record.stream_id] = evolve(views.get(record.stream_id), record.decode())
        count += 1
    elapsed = time.perf_counter() - start
    store.close()
    if count != REPLAY_EVENTS or len(views) != REPLAY_EVENTS // 5:
        raise RuntimeError(f"replayed {count:,} events into {len(views):,} runs")
    return count / elapsed


def rebuild(log: Path) -> float:
    with SyncOrchestrator.open(f"sqlite:///{log}", rebuild_stale=False) as orch:
        start = time.perf_counter()
        applied = orch.rebuild()
        elapsed = time.perf_counter() - start
    if applied != REPLAY_EVENTS:
        raise RuntimeError(f"rebuild applied {applied:,} events, not {REPLAY_EVENTS:,}")
    return applied / elapsed


def one_round(args: argparse.Namespace) -> dict[str, Any]:
    bench_store = _imports()
    single = bench_store.bench_single_append(rounds=APPEND_ROUNDS, per_round=args.singles)
    five = five_event_appends(args.fives, APPEND_ROUNDS)
    reads = bench_store.bench_reads(REPLAY_EVENTS, rounds=2, lookups=100)
    log = args.work / "ft-replay.db"
    return {
        "single_append_us": single["append_us"]["median"],
        "raw_single_insert_commit_us": single["raw_insert_commit_us"]["median"],
        "five_append_us": five["append_us"],
        "raw_5_rows_per_tx_us": five["raw_5_rows_per_tx_us"],
        "raw_100_per_tx_events_per_s": raw_batched(args.batched),
        "read_all_decode_events_per_s": reads["read_all_decode_events_per_s"]["median"],
        "raw_scan_decode_events_per_s": reads["raw_scan_decode_events_per_s"]["median"],
        "replay_in_memory_events_per_s": replay_in_memory(log),
        "rebuild_events_per_s": rebuild(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["prepare", "round"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--fives", type=int, default=150)
    parser.add_argument("--batched", type=int, default=10_000)
    args = parser.parse_args()
    # bench_store.fresh() makes its logs with mkdtemp: keep them inside the driver's
    # work directory, which it removes at the end.
    tempfile.tempdir = str(args.work)
    answer(args.out, prepare(args.work) if args.step == "prepare" else one_round(args))


if __name__ == "__main__":
    main()
