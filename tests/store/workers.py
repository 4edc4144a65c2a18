"""Worker processes for the store's crash and contention tests.

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
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import time
from uuid import UUID, uuid4

from flowtrail.core import ConcurrencyConflictError, Event, StoreBusyError
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from tests.store.builders import created, renamed


def _batch(rng: random.Random, run_id: UUID, new: bool) -> tuple[str, list[Event]]:
    count = rng.randint(1, 8)
    tag = uuid4().hex[:12]
    events: list[Event] = [created(run_id, name=f"{tag}:0/{count}")] if new else []
    events += [renamed(run_id, f"{tag}:{i}/{count}") for i in range(len(events), count)]
    return tag, events


def _ack(first: int, last: int, tag: str, count: int) -> None:
    sys.stdout.write(f"ack {first} {last} {tag} {count}\n")
    sys.stdout.flush()


def crash_sync(path: str, seed: int) -> None:
    rng = random.Random(seed)
    store = SyncSQLiteStore(path)
    versions: dict[UUID, int] = {}
    while True:
        new = not versions or rng.random() < 0.4
        run_id = uuid4() if new else rng.choice(list(versions))
        tag, events = _batch(rng, run_id, new)
        result = store.append(str(run_id), events, versions.get(run_id, 0))
        versions[run_id] = result.versions[str(run_id)]
        _ack(result.first_position, result.last_position, tag, len(events))


async def crash_async(path: str, seed: int) -> None:
    store = await SQLiteStore.open_path(path)

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
    store = SyncSQLiteStore(path, busy_timeout=30)
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
    store = SyncSQLiteStore(path, busy_timeout=30)
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
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(seconds)
    connection.execute("ROLLBACK")


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
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
