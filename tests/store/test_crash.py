"""kill -9 of a writer, at random moments: no acknowledged append is ever lost.

Each round starts a writer process (tests/store/workers.py), waits for its first
acknowledged append, lets it run a random while and kills it with SIGKILL (often in
the middle of a transaction or an fsync). Then, on reopening the log: every append the
writer acknowledged is there, no append is there in part, SQLite's integrity check
passes (on SQLite) and every hash chain verifies. One log goes through all rounds, on
each backend.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flowtrail.core import Auditor, RunRenamed
from tests.conftest import Databases
from tests.store.conftest import target
from tests.store.workers import open_sync

ROOT = Path(__file__).parent.parent.parent


def _kill_at_random(db: str, mode: str, seed: int, rng: random.Random) -> list[tuple[int, int, str, int]]:
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.store.workers", "crash", db, mode, str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    first = writer.stdout.readline()
    if not first:
        raise AssertionError(
            f"the writer died before its first append: {writer.stderr.read() if writer.stderr else ''}"
        )
    # Sleep between 0 and 40 ms, or not at all: the kill lands anywhere in a transaction.
    if rng.random() < 0.8:
        import time

        time.sleep(rng.uniform(0, 0.04))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    rest = writer.stdout.read()
    writer.stdout.close()
    if writer.stderr is not None:
        writer.stderr.close()
    lines = (first + rest).split("\n")
    acks = []
    for line in lines[:-1]:  # the last piece may be a line cut off by the kill
        _, first_position, last_position, tag, count = line.split()
        acks.append((int(first_position), int(last_position), tag, int(count)))
    return acks


def _tag(record_name: str) -> tuple[str, int]:
    tag, _, fraction = record_name.partition(":")
    return tag, int(fraction.split("/")[1])


def _crash_rounds(databases: Databases, mode: str, rounds: int) -> None:
    db = target(databases, "crash")
    open_sync(db).close()
    rng = random.Random(rounds * 7 + len(mode))
    auditor = Auditor()
    checked = 0
    total_acks = 0
    for round_number in range(rounds):
        acks = _kill_at_random(db, mode, round_number, rng)
        total_acks += len(acks)
        with open_sync(db) as store:
            new = list(store.read_all(checked + 1))
        by_position = {record.position: record for record in new}
        for first, last, tag, count in acks:
            assert last - first + 1 == count
            for position in range(first, last + 1):
                record = by_position.get(position)
                assert record is not None, f"round {round_number}: acknowledged position {position} is lost"
                event = record.decode()
                assert _tag(event.name)[0] == tag  # type: ignore[union-attr]
        # No partial append: every tag is present with all its events.
        seen = Counter(_tag(r.decode().name) for r in new)  # type: ignore[union-attr]
        for (tag, count), present in seen.items():
            assert present == count, (
                f"round {round_number}: append {tag} is there in part ({present}/{count})"
            )
        for record in new:
            auditor.check(record)
        checked = new[-1].position if new else checked
        if databases.backend == "sqlite":
            connection = sqlite3.connect(db)
            try:
                assert connection.execute("PRAGMA quick_check").fetchone() == ("ok",)
            finally:
                connection.close()
    report = auditor.finish()
    assert report.ok, report.problems[:3]
    assert total_acks >= rounds
    assert RunRenamed  # the writer's renames are part of what was verified


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killed_writers_lose_no_acknowledged_append(databases: Databases, mode: str) -> None:
    """30 rounds per driver and backend in make test."""
    _crash_rounds(databases, mode, 30)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killed_writers_lose_no_acknowledged_append_soak(databases: Databases, mode: str) -> None:
    """500 rounds per driver and backend: make soak."""
    _crash_rounds(databases, mode, 500)
