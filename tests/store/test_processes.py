"""Several processes sharing one log (a SQLite file, a PostgreSQL schema): contention,
ordering and the busy timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import pytest

from flowtrail.core import StoreBusyError, verify
from tests.conftest import Databases
from tests.store.builders import created, new_stream
from tests.store.conftest import target
from tests.store.workers import open_sync

ROOT = Path(__file__).parent.parent.parent


def _workers(db: str, *commands: list[str]) -> list[list[str]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store.workers", command[0], db, *command[1:]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        outputs.append(out.splitlines())
    return outputs


def test_eight_processes_on_one_stream_get_exactly_one_winner_per_version(databases: Databases) -> None:
    db = target(databases, "contention")
    stream, events = new_stream(1)
    with open_sync(db) as store:
        store.append(stream, events, 0)
    outputs = _workers(db, *[["contend", stream, "500"]] * 8)
    wins = [int(line.split()[1]) for out in outputs for line in out if line.startswith("win")]
    losses = [tuple(map(int, line.split()[1:])) for out in outputs for line in out if line.startswith("lose")]
    busy = sum(int(line.split()[1]) for out in outputs for line in out if line.startswith("busy"))
    assert sorted(wins) == list(range(2, 4002)), "versions are contiguous, one winner each"
    assert all(current > expected for expected, current in losses), "a loser learns the newer version"
    assert busy == 0
    with open_sync(db) as store:
        assert [r.version for r in store.read_stream(stream)] == list(range(1, 4002))
        assert verify(store.read_all()).ok


def test_eight_processes_on_distinct_streams_see_gap_free_increasing_positions(databases: Databases) -> None:
    db = target(databases, "distinct")
    open_sync(db).close()
    outputs = _workers(db, *[["distinct", "500"]] * 8)
    positions = []
    for out in outputs:
        mine = [int(line.split()[1]) for line in out if line.startswith("at")]
        assert mine == sorted(mine), "each process sees its own appends in increasing positions"
        positions += mine
        assert int(out[-1].split()[1]) == 0, "no busy error within the timeout"
    assert sorted(positions) == list(range(1, 4001))
    with open_sync(db) as store:
        assert [r.position for r in store.read_all()] == list(range(1, 4001))


@contextmanager
def _lock_held(db: str, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the log's write lock for ``seconds``."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.store.workers", "hold", db, str(seconds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.communicate()


def test_a_lock_held_past_the_busy_timeout_is_a_typed_error_and_writes_nothing(databases: Databases) -> None:
    db = target(databases, "busy")
    with open_sync(db, busy_timeout=0.2) as store, _lock_held(db, 2.0):
        stream, events = new_stream(1)
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="busy timeout"):
            store.append(stream, events, 0)
        waited = time.monotonic() - started
        assert 0.15 <= waited < 1.5
        assert store.last_position() == 0


def test_a_lock_released_within_the_busy_timeout_is_waited_for(databases: Databases) -> None:
    db = target(databases, "wait")
    with open_sync(db, busy_timeout=10) as store, _lock_held(db, 0.3):
        run_id = uuid4()
        result = store.append(str(run_id), [created(run_id)], 0)
        assert result.last_position == 1
