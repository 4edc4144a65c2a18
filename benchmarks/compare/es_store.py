"""eventsourcing 9.5.6's side of the store comparison: one round, in benchmarks/.venvs/eventsourcing.

    benchmarks/.venvs/eventsourcing/bin/python benchmarks/compare/es_store.py prepare --work DIR --out FILE
    benchmarks/.venvs/eventsourcing/bin/python benchmarks/compare/es_store.py round --work DIR --out FILE

Its defaults on SQLite: PERSISTENCE_MODULE=eventsourcing.sqlite, SQLITE_DBNAME a file
(which it puts in WAL mode; it leaves ``synchronous`` at SQLite's default, reported
below), the JSON transcoder, no cipher, no compressor, no snapshots. The events mirror
flowtrail's: a FlowRun aggregate created with a flow name, a name, a time and tags, and
renamed with a name and a time. Aggregate ids are UUIDv7, as flowtrail's run ids are.

- single-event append: ``app.save(FlowRun(...))`` of a new aggregate (one event),
  creating the aggregate included as flowtrail's side includes building its event;
- 5-event append: a new aggregate renamed four times, saved once (one transaction);
  each the median of five rounds on one fresh database;
- replay of 100,000 events (20,000 aggregates of five): the application recorder's
  ``select_notifications`` in sections of 1,000 (as flowtrail's read_all batches),
  each turned back into its domain event by the application's mapper ("read +
  decode"), and then each event applied to its aggregate with ``mutate``, the
  aggregates kept in memory ("replay into aggregates", what its repository does for
  one aggregate).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from timing import answer, uuid7

REPLAY_AGGREGATES = 20_000
#: As on flowtrail's side: the median of five rounds on one fresh database, so the
#: rounds that grow the new WAL file are not the ones reported.
APPEND_ROUNDS = 5
SECTION = 1000
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ES_SETTINGS = (
    "PERSISTENCE_MODULE",
    "SQLITE_",
    "COMPRESSOR_",
    "CIPHER_",
    "TRANSCODER_",
    "MAPPER_",
    "IS_SNAPSHOTTING",
    "AGGREGATE_CACHE",
    "DEEPCOPY_FROM_AGGREGATE_CACHE",
    "RUNS_",
)


class FlowRun(Aggregate):
    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid7()

    @event("Created")
    def __init__(self, flow_name: str, name: str, created_at: datetime, tags: list[str]) -> None:
        self.flow_name = flow_name
        self.name = name
        self.created_at = created_at
        self.tags = tags

    @event("Renamed")
    def rename(self, name: str, renamed_at: datetime) -> None:
        self.name = name


class Runs(Application):
    pass


def open_app(path: Path) -> Runs:
    return Runs(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})


def new_run() -> FlowRun:
    return FlowRun(flow_name="bench", name="bench-run", created_at=T0, tags=["a"])


def pragmas(app: Runs) -> dict[str, Any]:
    with app.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("PRAGMA synchronous")
        synchronous = cursor.fetchone()[0]
        cursor.execute("PRAGMA journal_mode")
        journal = cursor.fetchone()[0]
    return {
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[synchronous],
        "journal_mode": journal,
    }


def fresh(work: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="es-bench-", dir=work)) / name


def single_appends(work: Path, count: int) -> float:
    app = open_app(fresh(work, "single.db"))
    samples = []
    for _ in range(APPEND_ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            app.save(new_run())
        samples.append((time.perf_counter() - start) / count * 1e6)
    app.close()
    return statistics.median(samples)


def five_appends(work: Path, count: int) -> float:
    app = open_app(fresh(work, "five.db"))
    samples = []
    for _ in range(APPEND_ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            run = new_run()
            for i in range(4):
                run.rename(f"n{i}", T0)
            app.save(run)
        samples.append((time.perf_counter() - start) / count * 1e6)
    app.close()
    return statistics.median(samples)


def prepare(work: Path) -> dict[str, Any]:
    path = work / "es-replay.db"
    app = open_app(path)
    batch = []
    for index in range(REPLAY_AGGREGATES):
        run = new_run()
        for i in range(4):
            run.rename(f"n{i}", T0)
        batch.append(run)
        if len(batch) == 400 or index == REPLAY_AGGREGATES - 1:
            app.save(*batch)
            batch = []
    with app.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT count(*), avg(length(state)) FROM stored_events")
        events, size = cursor.fetchone()
    settings = pragmas(app)
    app.close()
    return {"replay_log": str(path), "events": events, "mean_event_bytes": size, **settings}


def read_decode(app: Runs) -> float:
    recorder, mapper = app.recorder, app.mapper
    gc.collect()
    start = time.perf_counter()
    count, position = 0, 1
    while True:
        section = recorder.select_notifications(position, SECTION)
        for notification in section:
            mapper.to_domain_event(notification)
        count += len(section)
        if len(section) < SECTION:
            break
        position = section[-1].id + 1
    elapsed = time.perf_counter() - start
    if count != REPLAY_AGGREGATES * 5:
        raise RuntimeError(f"read {count:,} events")
    return count / elapsed


def replay(app: Runs) -> float:
    recorder, mapper = app.recorder, app.mapper
    aggregates: dict[UUID, Any] = {}
    gc.collect()
    start = time.perf_counter()
    count, position = 0, 1
    while True:
        section = recorder.select_notifications(position, SECTION)
        for notification in section:
            domain_event = mapper.to_domain_event(notification)
            key = domain_event.originator_id
            aggregates[key] = domain_event.mutate(aggregates.get(key))
        count += len(section)
        if len(section) < SECTION:
            break
        position = section[-1].id + 1
    elapsed = time.perf_counter() - start
    if count != REPLAY_AGGREGATES * 5 or len(aggregates) != REPLAY_AGGREGATES:
        raise RuntimeError(f"replayed {count:,} events into {len(aggregates):,} aggregates")
    return count / elapsed


def one_round(args: argparse.Namespace) -> dict[str, Any]:
    single = single_appends(args.work, args.singles)
    five = five_appends(args.work, args.fives)
    app = open_app(args.work / "es-replay.db")
    settings = pragmas(app)
    decoded = read_decode(app)
    replayed = replay(app)
    app.close()
    return {
        "version": importlib.metadata.version("eventsourcing"),
        "single_append_us": single,
        "five_append_us": five,
        "read_decode_events_per_s": decoded,
        "replay_events_per_s": replayed,
        **settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["prepare", "round"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--fives", type=int, default=150)
    args = parser.parse_args()
    # An Application reads its settings from os.environ as well as from its env argument:
    # drop any a developer's shell may carry, so the anchor runs with its defaults.
    for name in list(os.environ):
        if name.startswith(ES_SETTINGS):
            del os.environ[name]
    answer(args.out, prepare(args.work) if args.step == "prepare" else one_round(args))


if __name__ == "__main__":
    main()
