"""A rebuild's replay split by run over helper processes, for SQLite files.

A run's views depend on its own stream alone, so the log can be replayed in partitions
of runs side by side: ranges of stream ids, cut where they hold the events in the
shares wanted (see `partition_offsets`). Run ids are made in time order, so each
partition's rows land together in the views' key order, and copying a helper's rows in
fills pages of their own instead of splitting pages all over the tables (3.0-3.4 s
against 5.9-6.1 s for 57% of 1M runs copied, when partitions took every nth run).
Each helper process replays the events of one partition, up to
the position the rebuild started from, into a file of its own (the run views' tables,
no journal: a helper that dies leaves nothing the log needs); the rebuilding process
replays one partition itself, straight into the database, then copies the helpers'
rows in and catches up on what was appended meanwhile (`flowtrail.projections.rebuild`).

A helper is ``python -m flowtrail.engine.replay_helper TASK`` with the same interpreter,
the task as JSON; it prints what it did (`ReplayOutcome`) as JSON and stops early if the
process that started it is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from flowtrail.core.effects import Execute, Fetch, Row, Script
from flowtrail.core.errors import (
    CodecError,
    CorruptLogError,
    FlowtrailError,
    InvalidInputError,
    MalformedEventError,
    StoreError,
    UnknownEventTypeError,
    UnsupportedSchemaVersionError,
)
from flowtrail.engine.bulk import collector_paused
from flowtrail.projections.rebuild import RunViewsRebuild, executed, transaction
from flowtrail.projections.runs import RunViews
from flowtrail.store.drivers import run_sync
from flowtrail.store.scripts import record_of
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore, _Connection
from flowtrail.store.sqlite_schema import SQL, translate

__all__ = [
    "ReplayOutcome",
    "ReplayTask",
    "SplitReplay",
    "main",
    "partition_bounds",
    "partition_offsets",
    "replay_partition",
    "split_replay",
]

#: Below this many events a rebuild replays in one process: starting helpers costs more.
SPLIT_FROM = 100_000

#: At most this many processes replay at once, however many processors there are.
MOST_PARTITIONS = 4
#: The most processes a rebuild may be asked for: each holds its share of the view
#: cache and a SQLite connection (about 50 MB), and past the processors they only take
#: turns (64 on 2 cores rebuilt a small log ten times slower than 2).
MOST_WORKERS = 32

#: Events a helper replays per transaction, at most.
HELPER_BATCH = 1_000

#: The rebuilding process's share of the events against a helper's. It replays straight
#: into the database, through its journal, about 1.4 times slower than a helper into a
#: file of its own (46 s against 32 s per 2.2M events on 2 cores; 29.5 s against 22 s
#: or less since chunks are decoded in slices), and then copies the helpers' rows in
#: while they stand idle: an equal share left the helper waiting on it.
OWN_WEIGHT = 0.75

_CODEC_ERRORS: dict[str, type[CodecError]] = {
    cls.__name__: cls for cls in (MalformedEventError, UnknownEventTypeError, UnsupportedSchemaVersionError)
}


class ReplayTask(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one helper replays, and where it writes."""

    database: str
    out: str
    #: The stream ids replayed: from ``low`` (None: the first) up to, not including,
    #: ``high`` (None: to the last).
    low: str | None
    high: str | None
    head: int
    batch: int
    cache_size: int
    parent: int


class ReplayOutcome(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a helper prints when it ends: events applied, or the error that stopped it."""

    applied: int = 0
    orphaned: int = 0
    error: str | None = None
    message: str = ""
    event_type: str | None = None
    position: int | None = None


def replay_partition(task: ReplayTask) -> tuple[int, int]:
    """Replay one partition of the log into ``task.out``; the events applied, and the
    events of runs whose creation is not in the log."""
    # Read-only: a connection that can write may, closing, take itself for the log's last
    # one and remove its write-ahead log from under the rebuilding process (seen when a
    # helper failed at once: the rebuilding process's later commits were lost).
    source = sqlite3.connect(
        f"{Path(task.database).resolve().as_uri()}?mode=ro", isolation_level=None, timeout=30.0, uri=True
    )
    out = sqlite3.connect(task.out, isolation_level=None)
    try:
        source.execute("PRAGMA query_only = ON")
        out.execute("PRAGMA journal_mode = OFF")
        out.execute("PRAGMA synchronous = OFF")
        views = RunViews()
        rebuild = RunViewsRebuild(views, cache_size=task.cache_size)
        writer = _Connection(out)
        run_sync(transaction(_create(views)), writer.execute, translate)
        after = 0
        while True:
            if os.getppid() != task.parent:
                raise _Orphaned("the rebuild that started this replay is gone")
            rows = source.execute(
                SQL.read_partition, (after, task.head, task.low, task.high, task.batch)
            ).fetchall()
            if rows:
                run_sync(rebuild.feed([record_of(row) for row in rows]), writer.execute, translate)
                after = rows[-1][0]
            if len(rows) < task.batch:
                break
        run_sync(transaction(rebuild.flush()), writer.execute, translate)
        return rebuild.applied, rebuild.orphaned
    finally:
        source.close()
        out.close()


class _Orphaned(StoreError):
    """The rebuilding process is gone: nobody will read this helper's file."""


def _create(views: RunViews) -> Script[None]:
    for statement in views.table_schema("sqlite"):
        yield Execute(statement)


def _outcome_of(exc: BaseException) -> ReplayOutcome:
    if isinstance(exc, CodecError):
        return ReplayOutcome(
            error=type(exc).__name__, message=str(exc), event_type=exc.event_type, position=exc.position
        )
    if isinstance(exc, CorruptLogError):
        return ReplayOutcome(error="CorruptLogError", message=str(exc), position=exc.position)
    return ReplayOutcome(error="StoreError", message=str(exc))


def _error_of(outcome: ReplayOutcome) -> FlowtrailError:
    """The typed error a helper reported, as the rebuild raises it."""
    codec = _CODEC_ERRORS.get(outcome.error or "")
    if codec is not None:
        return codec(outcome.message, event_type=outcome.event_type, position=outcome.position)
    if outcome.error == "CorruptLogError":
        return CorruptLogError(outcome.message, position=outcome.position)
    return StoreError(outcome.message)


def _helper_environment() -> dict[str, str]:
    """This process's environment, with flowtrail importable from where this one got it
    (a program that put it on ``sys.path`` itself would otherwise start helpers without)."""
    environment = dict(os.environ)
    home = str(Path(__file__).resolve().parents[2])
    paths = [home, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


class _Helpers:
    """The helper processes of one split replay (a `Joinable`)."""

    def __init__(self, tasks: Sequence[ReplayTask], directory: Path) -> None:
        self._tasks = tasks
        self._directory = directory
        self._joining = False
        environment = _helper_environment()
        self._processes = [
            subprocess.Popen(
                # -P: the working folder, which -m would put first on sys.path, may hold
                # anything, a folder named flowtrail among others.
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "flowtrail.engine.replay_helper",
                    msgspec.json.encode(task).decode(),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=environment,
            )
            for task in tasks
        ]

    def join(self) -> list[tuple[str, int, int]]:
        """Wait for every helper: (its file, events applied, events orphaned) each; a
        helper's error is raised."""
        self._joining = True
        done: list[tuple[str, int, int]] = []
        failure: FlowtrailError | None = None
        for task, process in zip(self._tasks, self._processes, strict=True):
            stdout, stderr = process.communicate()
            try:
                outcome = msgspec.json.decode(stdout.strip().splitlines()[-1], type=ReplayOutcome)
            except (IndexError, msgspec.DecodeError):
                last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                outcome = ReplayOutcome(
                    error="StoreError",
                    message=f"a rebuild helper ended with exit code {process.returncode}: {last[0]}",
                )
            if outcome.error is not None:
                failure = failure or _error_of(outcome)
            else:
                done.append((task.out, outcome.applied, outcome.orphaned))
        if failure is not None:
            raise failure
        return done

    def close(self) -> None:
        """Stop any helper still running and remove their files."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            # A cancelled async rebuild may still be in join() on a worker thread, reading
            # these pipes (to their end, now that the helper is dead): they are its to close.
            if not self._joining:
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        pipe.close()
        shutil.rmtree(self._directory, ignore_errors=True)


def _folder_prefix(database: Path) -> str:
    return f".{database.name}-rebuild-"


def _remove_abandoned(database: Path) -> None:
    """Remove the helper folders of rebuilds whose process is gone (killed after a
    helper had finished, so that no helper was left to notice)."""
    prefix = _folder_prefix(database)
    for folder in database.parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def partition_offsets(partitions: int, events: int) -> list[int]:
    """Where to cut a log of ``events`` events, in stream-id order, into ``partitions``
    partitions: the events before each cut. The first partition, the rebuilding
    process's, gets `OWN_WEIGHT` of a helper's share."""
    if partitions <= 1:
        return []
    own = OWN_WEIGHT / (OWN_WEIGHT + partitions - 1)
    helpers = partitions - 1
    return [round(events * (own + (1 - own) * index / helpers)) for index in range(helpers)]


def partition_bounds(cuts: Sequence[object]) -> list[tuple[str | None, str | None]]:
    """The partitions [low, high) between these cuts (stream ids in order), from the
    first stream to the last; the first is the rebuilding process's. A cut that is not
    text, or repeats the one before, is left out: its neighbours join, so every stream
    still falls in exactly one partition."""
    kept: list[str] = []
    for cut in cuts:
        if isinstance(cut, str) and (not kept or cut > kept[-1]):
            kept.append(cut)
    return list(zip([None, *kept], [*kept, None], strict=True))


class SplitReplay:
    """How a rebuild of one SQLite file splits its replay (see `split_replay`)."""

    #: The rebuilding process's own share: `read_partition`'s rows.
    read_partition = SQL.read_partition
    #: The stream at an offset of the log in stream-id order (see `partition_offsets`).
    partition_cut = SQL.partition_cut

    def __init__(self, database: Path, workers: int | None) -> None:
        self.database = database
        self.workers = workers

    def partitions(self, head: int) -> int:
        """How many processes replay a log of ``head`` events (1: this one alone)."""
        if self.workers is not None:
            return self.workers
        if head < SPLIT_FROM:
            return 1
        return max(1, min(os.cpu_count() or 1, MOST_PARTITIONS))

    def start(
        self, bounds: Sequence[tuple[str | None, str | None]], head: int, batch: int, cache_size: int
    ) -> _Helpers:
        """Start a helper for each of these partitions (stream-id bounds) of the events
        up to ``head``."""
        directory = Path(
            tempfile.mkdtemp(
                prefix=f"{_folder_prefix(self.database)}{os.getpid()}-", dir=self.database.parent
            )
        )
        tasks = [
            ReplayTask(
                database=str(self.database),
                out=str(directory / f"partition-{index}.db"),
                low=low,
                high=high,
                head=head,
                # Helpers commit cheaply (no journal): smaller chunks keep their memory down.
                batch=min(batch, HELPER_BATCH),
                cache_size=cache_size,
                parent=os.getpid(),
            )
            for index, (low, high) in enumerate(bounds, start=1)
        ]
        try:
            return _Helpers(tasks, directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise


#: Rows a transaction of `copy_rows` copies, at most.
COPY_CHUNK = 50_000


def copy_rows(
    tables: Sequence[str],
    file: str,
    guarded: Callable[[Script[None]], Script[None]] | None = None,
    chunk: int = COPY_CHUNK,
) -> Script[None]:
    """Copy a helper's rows of these tables into the database's, ``chunk`` rows (by
    rowid) a transaction, so that other writers wait for one chunk at a time: half of 1M
    runs' rows copied in one transaction held them for 3 s.

    A row may be there already: an append during the rebuild that brought its run's
    view along (see `RunViews.apply`) wrote it. The helper's row replaces it, as the
    rebuilding process's own rows replace such rows when written: the catch-up that
    ends the rebuild replays every event after the helper's last one, and writes again
    whole every row an append moved ahead of it meanwhile. ``guarded`` wraps each
    transaction's copy (`RunViewsRebuild.guarded`).
    """
    guard = guarded or (lambda copy: copy)
    yield Execute("ATTACH DATABASE ? AS replayed", (file,))
    try:
        for table in tables:
            rows: list[Row] = yield Fetch(
                "SELECT name FROM replayed.sqlite_master WHERE type = 'table' AND name = ? "
                "AND sql NOT LIKE '%WITHOUT ROWID%'",
                (table,),
            )
            copy = f'INSERT OR REPLACE INTO main."{table}" SELECT * FROM replayed."{table}"'
            if not rows:  # no rowids to cut it by (the tags): whole
                yield from transaction(guard(executed(copy)))
                continue
            ((low, high),) = yield Fetch(f'SELECT min(rowid), max(rowid) FROM replayed."{table}"')
            for first in range(int(low or 0), int(high or 0) + 1, chunk):
                yield from transaction(
                    guard(executed(f"{copy} WHERE rowid BETWEEN ? AND ?", (first, first + chunk - 1)))
                )
    except GeneratorExit:
        raise  # closed unfinished (its caller stopped): it can run nothing more
    except BaseException:
        yield Execute("DETACH DATABASE replayed")
        raise
    yield Execute("DETACH DATABASE replayed")


def split_replay(store: object, workers: int | None) -> SplitReplay | None:
    """How a rebuild of this store splits its replay; None if it cannot (not a SQLite
    file) or is asked not to (``workers=1``). Helper folders that rebuilds killed
    midway left beside the file are removed first."""
    if workers is not None and (type(workers) is not int or not 1 <= workers <= MOST_WORKERS):
        raise InvalidInputError(f"workers is a whole number from 1 to {MOST_WORKERS}, not {workers!r}")
    if not isinstance(store, SyncSQLiteStore | SQLiteStore) or store.path is None:
        return None
    _remove_abandoned(store.path)
    return None if workers == 1 else SplitReplay(store.path, workers)


def main(argv: Sequence[str]) -> int:
    try:
        task = msgspec.json.decode(argv[1], type=ReplayTask)
    except (IndexError, msgspec.DecodeError) as exc:
        print(f"usage: python -m flowtrail.engine.replay_helper TASK-JSON ({exc})", file=sys.stderr)
        return 2
    try:
        # As in the rebuilding process: the replay makes no cyclic garbage, and the
        # collector's passes took a sixth of a helper's time (36 s against 30 s).
        with collector_paused():
            applied, orphaned = replay_partition(task)
            outcome = ReplayOutcome(applied=applied, orphaned=orphaned)
    except _Orphaned as exc:
        # Clean up after the rebuild that cannot: the last helper out removes the folder.
        out = Path(task.out)
        out.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.parent.rmdir()
        outcome = _outcome_of(exc)
    except FlowtrailError as exc:
        outcome = _outcome_of(exc)
    except sqlite3.Error as exc:
        outcome = _outcome_of(translate(exc))
    print(msgspec.json.encode(outcome).decode(), flush=True)
    return 0 if outcome.error is None else 1
