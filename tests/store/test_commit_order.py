"""A reader tailing the log by position never skips an event.

16 writer processes append, each transaction pausing a random while between its
writes and its COMMIT (one of them for two seconds), while another connection keeps a
transaction open throughout. A subscriber reads on from the last position it has seen,
never looking back. If positions could commit out of order (a sequence: 11 commits
before 10), it would move past 10 and lose it. It must see every committed event
exactly once, in position order, with no gap.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Databases
from tests.store.conftest import target
from tests.store.workers import open_sync

ROOT = Path(__file__).parent.parent.parent
WRITERS = 16
APPENDS = 20


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.workers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_tailing_reader_sees_every_committed_event_once_and_in_order(databases: Databases) -> None:
    db = target(databases, "order")
    open_sync(db).close()
    idle = _worker("idle", db, "60")
    assert idle.stdout is not None
    assert idle.stdout.readline().strip() == "open"
    writers = [
        _worker("delayed", db, str(seed), str(APPENDS), "0.02", *(["2.0"] if seed == 0 else []))
        for seed in range(WRITERS)
    ]
    seen: list[int] = []
    with open_sync(db) as reader:
        while True:
            running = any(writer.poll() is None for writer in writers)
            seen.extend(record.position for record in reader.read_all(seen[-1] + 1 if seen else 1, batch=50))
            if not running:
                break
            time.sleep(0.002)
        acknowledged = []
        for writer in writers:
            out, err = writer.communicate(timeout=120)
            assert writer.returncode == 0, err
            acknowledged += [int(line.split()[1]) for line in out.splitlines()]
        last = reader.last_position()
    idle.kill()
    idle.communicate()
    assert len(acknowledged) == WRITERS * APPENDS
    assert last == WRITERS * APPENDS
    assert seen == list(range(1, last + 1)), "every event once, in order, none skipped"
    assert set(acknowledged) <= set(seen)
