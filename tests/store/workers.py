"""Worker processes for the store's crash and contention tests.

DB is a SQLite file or a postgresql:// URL.

python -m tests.store.workers crash DB sync|async SEED
    Append batches forever; after each append returns, print
    "ack FIRST LAST TAG COUNT" (the append is then durable). Killed by the test.
python -m tests.store.workers contend DB STREAM WINS
    Append to one stream with expected versions until WINS appends won; print
    "win VERSION" or "lose EXPECTED CURRENT" per attempt, then "busy N".
python -m tests.store.workers distinct DB COUNT
    Create COUNT new streams; print "at POSITION" per append, then "busy N".
python -m tests.store.workers hold DB SECONDS
    Take the write lock, print "held", keep it SECONDS, release, exit.
python -m tests.store.workers delayed DB SEED COUNT MAX_DELAY [FIRST_DELAY]
    Append COUNT new streams, each transaction waiting a random 0..MAX_DELAY seconds
    (FIRST_DELAY for the first) between its writes and its COMMIT; print "at POSITION".
python -m tests.store.workers idle DB SECONDS
    Open a transaction that reads (and, on PostgreSQL, takes a transaction id), print
    "open", keep it open SECONDS.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import time
from typing import Any, TypeVar
from uuid import UUID, uuid4

import psycopg

from flowtrail.core import ConcurrencyConflictError, Event, StoreBusyError
from flowtrail.core.effects import Commit, Script
from flowtrail.store import AsyncLogStore, StreamWrite, SyncLogStore, parse_url
from flowtrail.store.api import prepare_append
from flowtrail.store.postgres import PostgresStore, SyncPostgresStore
from flowtrail.store.postgres_schema import begin_statement
from flowtrail.store.scripts import append_script
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from tests.store.builders import created, renamed

T = TypeVar("T")


def _batch(rng: random.Random, run_id: UUID, new: bool) -> tuple[str, list[Event]]:
    count = rng.randint(1, 8)
    tag = uuid4().hex[:12]
    events: list[Event] = [created(run_id, name=f"{tag}:0/{count}")] if new else []
    events += [renamed(run_id, f"{tag}:{i}/{count}") for i in range(len(events), count)]
    return tag, events


def _ack(first: int, last: int, tag: str, count: int) -> None:
    sys.stdout.write(f"ack {first} {last} {tag} {count}\n")
    sys.stdout.flush()


def open_sync(target: str, **options: Any) -> SyncLogStore:
    """The sync store at ``target``: a SQLite file, or a PostgreSQL URL."""
    if target.startswith("postgresql"):
        return SyncPostgresStore.open(target, **options)
    return SyncSQLiteStore(target, **options)


async def open_async(target: str, **options: Any) -> AsyncLogStore:
    if target.startswith("postgresql"):
        return await PostgresStore.open(target, **options)
    return await SQLiteStore.open_path(target, **options)


def crash_sync(path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = open_sync(path)
    versions: dict[UUID, int] = {}
    while True:
        new = not versions or rng.random() < 0.4
        run_id = uuid4() if new else rng.choice(list(versions))
        tag, events = _batch(rng, run_id, new)
        result = store.append(str(run_id), events, versions.get(run_id, 0))
        versions[run_id] = result.versions[str(run_id)]
        _ack(result.first_position, result.last_position, tag, len(events))


async def crash_async(path: str, seed: int) -> None:
    store = await open_async(path)

    async def writer(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        versions: dict[UUID, int] = {}
        while True:
            new = not versions or rng.random() < 0.4
            run_id = uuid4() if new else rng.choice(list(versions))
            tag, events = _batch(rng, run_id, new)
            result = await store.append(str(run_id), events, versions.get(run_id, 0))
            versions[run_id] = result.versions[str(run_id)]
            _ack(result.first_position, result.last_position, tag, len(events))

    await asyncio.gather(*(writer(i) for i in range(16)))


def contend(path: str, stream: str, wins: int) -> None:
    store = open_sync(path, busy_timeout=30)
    run_id = UUID(stream)
    won = busy = 0
    while won < wins:
        expected = store.stream_version(stream)
        try:
            store.append(stream, [renamed(run_id, f"w{won}")], expected)
        except ConcurrencyConflictError as conflict:
            print(f"lose {expected} {conflict.current_version}")
            continue
        except StoreBusyError:
            busy += 1
            continue
        won += 1
        print(f"win {expected + 1}")
    print(f"busy {busy}", flush=True)


def distinct(path: str, count: int) -> None:
    store = open_sync(path, busy_timeout=30)
    busy = 0
    done = 0
    while done < count:
        run_id = uuid4()
        try:
            result = store.append(str(run_id), [created(run_id)], 0)
        except StoreBusyError:
            busy += 1
            continue
        done += 1
        print(f"at {result.first_position}")
    print(f"busy {busy}", flush=True)


def hold(path: str, seconds: float) -> None:
    if path.startswith("postgresql"):
        url = parse_url(path)
        with psycopg.connect(url.target, autocommit=True) as connection:
            connection.execute(begin_statement(url.schema))
            print("held", flush=True)
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        return
    lite = sqlite3.connect(path, isolation_level=None)
    lite.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(seconds)
    lite.execute("ROLLBACK")


def _commit_later(script: Script[T], seconds: float) -> Script[T]:
    """``script``, pausing ``seconds`` before it commits (its writes done, its locks held)."""
    reply: Any = None
    failure: BaseException | None = None
    while True:
        try:
            effect = script.send(reply) if failure is None else script.throw(failure)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        if isinstance(effect, Commit):
            time.sleep(seconds)
        failure = None
        try:
            reply = yield effect
        except BaseException as exc:
            reply, failure = None, exc


def delayed(path: str, seed: int, count: int, max_delay: float, first_delay: float | None) -> None:
    rng = random.Random(seed)
    store = open_sync(path, busy_timeout=120)
    for index in range(count):
        run_id = uuid4()
        prepared = prepare_append([StreamWrite(str(run_id), [created(run_id)], 0)])
        delay = first_delay if index == 0 and first_delay is not None else rng.uniform(0, max_delay)
        (result,) = store.run(_commit_later(append_script([prepared], store.sql), delay), write=True)
        assert not isinstance(result, Exception), result
        print(f"at {result.first_position}", flush=True)
    store.close()


def idle(path: str, seconds: float) -> None:
    if path.startswith("postgresql"):
        with psycopg.connect(parse_url(path).target, autocommit=True) as connection:
            connection.execute("BEGIN; SELECT txid_current()")
            print("open", flush=True)
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        return
    lite = sqlite3.connect(path, isolation_level=None)
    lite.execute("BEGIN")
    lite.execute("SELECT count(*) FROM events").fetchall()
    print("open", flush=True)
    time.sleep(seconds)
    lite.execute("ROLLBACK")


def main(argv: list[str]) -> None:
    command, path, *rest = argv
    if command == "crash":
        mode, seed = rest
        if mode == "sync":
            crash_sync(path, int(seed))
        else:
            asyncio.run(crash_async(path, int(seed)))
    elif command == "contend":
        contend(path, rest[0], int(rest[1]))
    elif command == "distinct":
        distinct(path, int(rest[0]))
    elif command == "hold":
        hold(path, float(rest[0]))
    elif command == "delayed":
        first = float(rest[3]) if len(rest) > 3 else None
        delayed(path, int(rest[0]), int(rest[1]), float(rest[2]), first)
    elif command == "idle":
        idle(path, float(rest[0]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
