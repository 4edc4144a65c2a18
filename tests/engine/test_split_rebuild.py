"""A rebuild split by run over helper processes gives what a rebuild in one process gives."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowtrail import Orchestrator, SyncOrchestrator, states
from flowtrail.core import InvalidInputError, MalformedEventError, fold
from flowtrail.core.chain import to_micros
from flowtrail.core.effects import Join, OnWriter
from flowtrail.engine.maintenance import rebuild_script
from flowtrail.engine.replay import (
    MOST_WORKERS,
    OWN_WEIGHT,
    ReplayOutcome,
    ReplayTask,
    SplitReplay,
    _helper_environment,
    partition_bounds,
    partition_offsets,
    split_replay,
)
from flowtrail.store.sqlite_schema import SQL
from tests.engine.conftest import Orch
from tests.engine.test_processes import ROOT, _start

TABLES = ("flow_runs", "task_runs", "run_tags")


def in_partition(stream_id: str, low: str | None, high: str | None) -> bool:
    """Whether a stream falls in the partition [low, high), as `SQL.read_partition`
    decides it (SQLite compares text byte by byte in UTF-8, which orders as Python
    orders code points)."""
    return (low is None or stream_id >= low) and (high is None or stream_id < high)


def _rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the run views' tables, byte for byte, in a fixed order."""
    with sqlite3.connect(path) as raw:
        return {table: sorted(raw.execute(f"SELECT * FROM {table}").fetchall()) for table in TABLES}


def _busy_log(orch: Orch, runs: int = 120) -> None:
    """Runs of every kind of event: states, retries, renames, settings, tasks, subflows, tags."""
    for index in range(runs):
        run = orch.create_flow_run("etl", tags=[f"t{index % 3}"], retries=1, state=states.Pending())
        orch.propose_state(run.id, states.Running())
        if index % 4 == 0:
            orch.set_flow_run_name(run.id, f"renamed-{index}")
            orch.update_flow_run(run.id, retries=3)
        task = orch.create_task_run(run.id, task_key="step", state=states.Running())
        orch.propose_state(task.id, states.Completed())
        if index % 5 == 0:
            child = orch.create_flow_run("child", parent_task_run_id=task.id, state=states.Pending())
            orch.propose_state(child.id, states.Running())
        orch.propose_state(run.id, states.Failed() if index % 3 == 0 else states.Completed())


@pytest.fixture(params=["sync", "async"])
def file_orch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Orch]:
    opened = Orch(request.param, f"sqlite:///{tmp_path}/split.db")
    yield opened
    opened.close()


def test_a_split_rebuild_writes_the_rows_a_rebuild_in_one_process_writes(
    file_orch: Orch, tmp_path: Path
) -> None:
    _busy_log(file_orch)
    file_orch.rebuild(workers=1)
    alone = _rows(tmp_path / "split.db")
    applied = file_orch.rebuild(workers=3)
    assert applied == file_orch.last_position()
    assert _rows(tmp_path / "split.db") == alone
    assert file_orch.verify().ok


def _remove_creations(path: Path, run_ids: list[str]) -> int:
    """Remove the runs' creations from the log (damage only verify should find); the
    events of theirs left."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("DROP TRIGGER events_are_never_deleted")
        marks = ", ".join("?" * len(run_ids))
        connection.execute(f"DELETE FROM events WHERE version = 1 AND stream_id IN ({marks})", run_ids)
        (left,) = connection.execute(
            f"SELECT count(*) FROM events WHERE stream_id IN ({marks})", run_ids
        ).fetchone()
        connection.commit()
    finally:
        connection.close()
    return int(left)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_rebuild_counts_the_events_of_runs_whose_creation_is_gone(
    file_orch: Orch, tmp_path: Path, workers: int
) -> None:
    _busy_log(file_orch, runs=20)
    runs = file_orch.read_flow_runs(flow_names=["etl"], sort="ID_DESC", limit=None)
    damaged = [str(runs[0].id), str(runs[-1].id)]  # the newest and the oldest: both partitions
    left = _remove_creations(tmp_path / "split.db", damaged)
    assert left > 0
    applied = file_orch.rebuild(workers=workers)
    assert file_orch.orphaned_events == left
    assert applied + left == file_orch.last_position() - 2
    assert len(file_orch.read_flow_runs(flow_names=["etl"], limit=None)) == 18
    file_orch.rebuild(workers=1)
    assert file_orch.orphaned_events == left  # each rebuild counts its own


def test_a_split_rebuild_reports_progress_up_to_every_event(file_orch: Orch) -> None:
    _busy_log(file_orch, runs=20)
    seen: list[tuple[int, int]] = []
    applied = file_orch.rebuild(workers=2, batch=50, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (applied, applied)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_split_rebuild_leaves_no_files_behind(file_orch: Orch, tmp_path: Path) -> None:
    _busy_log(file_orch, runs=10)
    before = sorted(p.name for p in tmp_path.iterdir())
    file_orch.rebuild(workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@given(
    stream_ids=st.lists(
        st.uuids().map(str) | st.text(max_size=4) | st.from_regex(r"\A[0-9a-fA-F-]{0,6}\Z"), max_size=40
    ),
    partitions=st.integers(min_value=1, max_value=9),
    noise=st.lists(st.none() | st.integers() | st.binary(max_size=3), max_size=2),
)
def test_every_stream_falls_in_exactly_one_partition_in_sql_and_in_python(
    stream_ids: list[str], partitions: int, noise: list[object]
) -> None:
    raw = sqlite3.connect(":memory:")
    raw.execute(
        "CREATE TABLE events (position INTEGER PRIMARY KEY, stream_id TEXT, version, "
        "event_type, schema_version, recorded_at, data, hash, UNIQUE (stream_id, version))"
    )
    raw.executemany(
        "INSERT INTO events (stream_id, version) VALUES (?, ?)",
        [(stream_id, index) for index, stream_id in enumerate(stream_ids)],
    )
    cuts: list[object] = []
    for offset in partition_offsets(partitions, len(stream_ids)):
        cuts.extend(row[0] for row in raw.execute(SQL.partition_cut, (offset,)))
    found: list[str] = []
    for low, high in partition_bounds([*noise, *cuts, *noise]):
        rows = raw.execute(SQL.read_partition, (0, len(stream_ids), low, high, len(stream_ids) + 1))
        for _, stream_id, *_ in rows:
            assert in_partition(stream_id, low, high)
            found.append(stream_id)
    assert sorted(found) == sorted(stream_ids)


def test_the_rebuilding_process_takes_a_smaller_share_of_events_than_each_helper() -> None:
    for partitions in (2, 3, 4):
        cuts = [0, *partition_offsets(partitions, 10_000), 10_000]
        shares = [high - low for low, high in itertools.pairwise(cuts)]
        assert all(shares[0] < share for share in shares[1:])


def _bounds_of_a_split_rebuild(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[tuple[str | None, str | None], list[tuple[str | None, str | None]]]:
    """The rebuilding process's partition and its helpers', as a rebuild in two chose them."""
    handed: list[tuple[str | None, str | None]] = []
    start = SplitReplay.start

    def watched(self: SplitReplay, bounds: Any, *args: Any) -> Any:
        handed.extend(bounds)
        return start(self, bounds, *args)

    monkeypatch.setattr(SplitReplay, "start", watched)
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        orch.rebuild(workers=2)
    assert handed, "the rebuild did not split"
    return (None, handed[0][0]), handed  # the rebuilding process's ends where the first helper's starts


def test_a_split_rebuild_leaves_the_runs_created_last_to_its_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run ids are made in time order: a helper's rows are then copied in as one block."""
    path = tmp_path / "ranges.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        created = [str(orch.create_flow_run("etl", state=states.Pending()).id) for _ in range(40)]
    own, (helper,) = _bounds_of_a_split_rebuild(path, monkeypatch)
    helped = [in_partition(run_id, *helper) for run_id in created]
    assert helped == sorted(helped)  # False for the runs created first, True for the last
    assert 0 < helped.count(True) < len(created)
    assert not any(in_partition(run_id, *own) and in_partition(run_id, *helper) for run_id in created)


def test_a_split_rebuild_cuts_the_log_where_the_rebuilding_process_gets_its_share_of_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shares.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        _busy_log(orch, runs=40)
    own, (helper,) = _bounds_of_a_split_rebuild(path, monkeypatch)
    with sqlite3.connect(path) as raw:
        streams = [stream for (stream,) in raw.execute("SELECT stream_id FROM events")]
    share = sum(in_partition(stream, *own) for stream in streams) / len(streams)
    wanted = OWN_WEIGHT / (OWN_WEIGHT + 1)
    assert abs(share - wanted) < 0.05  # a run's events stay together: the cut falls between runs
    assert sum(in_partition(stream, *helper) for stream in streams) == len(streams) - round(
        share * len(streams)
    )


def test_a_split_rebuild_starts_its_helpers_before_it_drops_the_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping a large view table takes seconds, which the helpers spend replaying."""
    path = tmp_path / "early.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        _busy_log(orch, runs=10)
    rows_at_start: list[int] = []
    start = SplitReplay.start

    def watched(self: SplitReplay, *args: Any) -> Any:
        with sqlite3.connect(path) as raw:
            rows_at_start.append(raw.execute("SELECT count(*) FROM flow_runs").fetchone()[0])
        return start(self, *args)

    monkeypatch.setattr(SplitReplay, "start", watched)
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        orch.rebuild(workers=2)
    assert rows_at_start == [12]  # ten runs and their two subflows, not yet dropped


def test_events_appended_between_the_helpers_start_and_the_drop_reach_the_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helpers replay the log as it was when they started; the catch-up, the rest."""
    path = tmp_path / "between.db"
    url = f"sqlite:///{path}"
    with SyncOrchestrator.open(url) as orch:
        _busy_log(orch, runs=10)
        late = orch.create_flow_run("etl", state=states.Pending())
    start = SplitReplay.start

    def appending(self: SplitReplay, *args: Any) -> Any:
        helpers = start(self, *args)
        with SyncOrchestrator.open(url) as other:
            other.propose_state(late.id, states.Running())
            other.set_flow_run_name(late.id, "late")
        return helpers

    monkeypatch.setattr(SplitReplay, "start", appending)
    with SyncOrchestrator.open(url) as orch:
        applied = orch.rebuild(workers=2)
        view = orch.read_flow_run(late.id)
        assert applied == orch.last_position()
        assert fold(r.decode() for r in orch.store.read_stream(str(late.id))) == view
    assert (view.name, view.state_type) == ("late", states.StateType.RUNNING)


def test_a_rebuild_asked_for_no_workers_is_a_typed_error(file_orch: Orch) -> None:
    with pytest.raises(InvalidInputError, match="workers"):
        file_orch.rebuild(workers=0)


@pytest.mark.parametrize("workers", [MOST_WORKERS + 1, 1_000, True, 2.0, "2"])
def test_a_rebuild_asked_for_more_workers_than_it_may_start_changes_nothing(
    file_orch: Orch, workers: object
) -> None:
    run = file_orch.create_flow_run("etl")
    with pytest.raises(InvalidInputError, match=f"workers is a whole number from 1 to {MOST_WORKERS}"):
        file_orch.rebuild(workers=workers)
    assert file_orch.read_flow_runs() == [file_orch.read_flow_run(run.id)]


@pytest.mark.parametrize(
    ("option", "value"),
    [("batch", 0), ("batch", -1), ("batch", 2.5), ("batch", True), ("cache_size", 0), ("cache_size", "9")],
)
def test_a_rebuild_asked_to_read_or_keep_no_events_is_a_typed_error_that_changes_nothing(
    file_orch: Orch, option: str, value: object
) -> None:
    """A batch of 0 never read the short chunk that ends a replay: the rebuild spun for ever."""
    run = file_orch.create_flow_run("etl")
    with pytest.raises(InvalidInputError, match=f"{option} is a whole number from 1"):
        file_orch.rebuild(**{option: value})
    assert file_orch.read_flow_runs() == [file_orch.read_flow_run(run.id)]


def _spoil_event(path: Path) -> int:
    """Overwrite the bytes of a run's first event whose stream a helper (not the rebuilding
    process) replays, on the file itself; its position."""
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TRIGGER events_are_never_updated")
        rows = raw.execute("SELECT position, stream_id FROM events ORDER BY position").fetchall()
        position: int = next(position for position, stream in rows if _replayed_by_a_helper(path, stream))
        raw.execute("UPDATE events SET data = ? WHERE position = ?", (b"{not json", position))
    return position


def test_an_event_a_helper_cannot_decode_fails_the_rebuild_with_its_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "spoiled.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for _ in range(20):
            orch.create_flow_run("etl", state=states.Pending())
    position = _spoil_event(path)
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        with pytest.raises(MalformedEventError) as caught:
            orch.rebuild(workers=2)
        assert caught.value.position == position
    assert _is_stale(path)
    assert sorted(p.name for p in tmp_path.iterdir() if "rebuild" in p.name) == []


def test_a_write_after_a_helper_failed_is_kept_and_the_log_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "spoiled.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for _ in range(20):
            orch.create_flow_run("etl", state=states.Pending())
    _spoil_event(path)
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        with pytest.raises(MalformedEventError):
            orch.rebuild(workers=2)
        # The failed helper, closing, took itself for the log's last connection and
        # removed its write-ahead log: this commit went to a file no longer there.
        after = orch.create_flow_run("after")
    with sqlite3.connect(path) as raw:
        assert raw.execute(
            "SELECT count(*) FROM events WHERE stream_id = ?", (str(after.id),)
        ).fetchone() == (1,)
    raw.close()


def _is_stale(path: Path) -> bool:
    with sqlite3.connect(path) as raw:
        (marked,) = raw.execute("SELECT value FROM flowtrail_meta WHERE key = 'projection:runs'").fetchone()
    return str(marked).endswith(":stale")


def test_a_helper_whose_rebuild_is_gone_stops_and_removes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "orphan.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        orch.create_flow_run("etl", state=states.Pending())
    folder = tmp_path / ".orphan.db-rebuild-x"
    folder.mkdir()
    task = ReplayTask(
        database=str(path),
        out=str(folder / "partition-1.db"),
        low=None,
        high=None,
        head=2,
        batch=10,
        cache_size=10,
        parent=-1,  # no process's parent: as if the rebuild that started it had died
    )
    done = subprocess.run(
        [sys.executable, "-m", "flowtrail.engine.replay_helper", msgspec.json.encode(task).decode()],
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert "gone" in msgspec.json.decode(done.stdout, type=ReplayOutcome).message
    assert not folder.exists()


def test_views_rebuilt_split_while_another_process_appends_equal_the_fold(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/online.db"
    _start("churn", url, "300").communicate(timeout=120)
    with SyncOrchestrator.open(url) as orch:
        appender = _start("churn", url, "150")
        rebuilds = 0
        while appender.poll() is None:
            orch.rebuild(workers=2, batch=40, cache_size=25)
            rebuilds += 1
        appender.communicate()
        assert appender.returncode == 0
        assert rebuilds >= 1
        orch.rebuild(workers=2, batch=40, cache_size=25)  # one more, with nothing racing it
        runs = orch.read_flow_runs(limit=None)
        assert len(runs) == 450
        for view in runs:
            assert fold(r.decode() for r in orch.store.read_stream(str(view.id))) == view, view.id


_KILLED_REBUILD = """
import sys
from flowtrail import SyncOrchestrator
with SyncOrchestrator.open(sys.argv[1]) as orch:
    print("rebuilding", flush=True)
    orch.rebuild(workers=2, batch=20)
"""


def test_a_split_rebuild_killed_midway_is_made_whole_by_the_next_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/killed.db"
    _start("churn", url, "1000").communicate(timeout=120)
    with SyncOrchestrator.open(url) as orch:
        expected = orch.read_flow_runs(limit=None)
    rebuilding = subprocess.Popen(
        [sys.executable, "-c", _KILLED_REBUILD, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert rebuilding.stdout is not None
    assert rebuilding.stdout.readline() == "rebuilding\n"
    deadline = time.monotonic() + 60
    path = tmp_path / "killed.db"
    # Helpers started and the views dropped: the replay is under way.
    while not (list(tmp_path.glob(".killed.db-rebuild-*")) and _is_stale(path)):
        assert time.monotonic() < deadline
        assert rebuilding.poll() is None
        time.sleep(0.001)
    rebuilding.send_signal(signal.SIGKILL)
    rebuilding.wait()
    rebuilding.stdout.close()
    with SyncOrchestrator.open(url) as orch:  # stale views are rebuilt on open
        assert orch.read_flow_runs(limit=None) == expected
    # Whatever the helpers had written when the rebuild died is gone by now.
    assert list(tmp_path.glob(".killed.db-rebuild-*")) == []


def test_helpers_are_started_able_to_import_the_flowtrail_that_started_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flowtrail

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/somewhere/else", ""]))
    paths = _helper_environment()["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(Path(flowtrail.__file__).resolve().parents[1]), "/somewhere/else"]


def test_a_cancelled_async_split_rebuild_stops_its_helpers_and_removes_their_files(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cancelled.db"
    _start("churn", url, "1000").communicate(timeout=120)

    async def cancel_midway() -> None:
        orch = await Orchestrator.open(url)
        rebuilding = asyncio.create_task(orch.rebuild(workers=2, batch=10))
        while not list(tmp_path.glob(".cancelled.db-rebuild-*")):
            await asyncio.sleep(0.001)
        rebuilding.cancel()
        try:
            await rebuilding
        except asyncio.CancelledError as cancelled:
            kept = cancelled  # its traceback held on to, as a logger might
            assert list(tmp_path.glob(".cancelled.db-rebuild-*")) == []
        else:
            raise AssertionError("the rebuild ended before it was cancelled")
        assert kept.__traceback__ is not None
        await orch.close()

    asyncio.run(cancel_midway())
    with SyncOrchestrator.open(url) as orch:  # the views were left stale: rebuilt on open
        assert len(orch.read_flow_runs(limit=None)) == 1000


def _replayed_by_a_helper(path: Path, run_id: object) -> bool:
    """Whether a rebuild of this file split in two leaves this run to its helper."""
    with sqlite3.connect(path) as raw:
        (head,) = raw.execute("SELECT max(position) FROM events").fetchone()
        cuts = [
            row[0]
            for offset in partition_offsets(2, head)
            for row in raw.execute(SQL.partition_cut, (offset,))
        ]
    (own_low, own_high), *_ = partition_bounds(cuts)
    return not in_partition(str(run_id), own_low, own_high)


def test_appends_carrying_their_views_around_a_helpers_copy_leave_every_column_right(tmp_path: Path) -> None:
    """An append that brings its run's view along skips rewriting the expected start
    time when the view keeps it; a rebuild writing an older row under it must not leave
    that column behind the view (it sorts and filters by it)."""
    path = tmp_path / "columns.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for _ in range(5):
            orch.create_flow_run("etl", state=states.Pending())
        run = orch.create_flow_run("etl")  # no state yet: no expected start time
        while not _replayed_by_a_helper(path, run.id):
            run = orch.create_flow_run("etl")
        store = orch.store
        split = split_replay(store, 2)
        script = rebuild_script(store, orch._views, progress=None, batch=100, cache_size=100, split=split)
        joined = copied = False
        reply: object = None
        while True:
            try:
                effect = script.send(reply)
            except StopIteration:
                break
            if isinstance(effect, OnWriter) and copied:
                orch.set_flow_run_name(run.id, "renamed")  # between the copy and the catch-up
                copied = False
            reply = store._perform_effect(effect)
            if isinstance(effect, Join):
                orch.propose_state(run.id, states.Pending())  # its first state sets the start time
                joined = True
            elif isinstance(effect, OnWriter) and joined:
                joined, copied = False, True
        view = orch.read_flow_run(run.id)
    assert view.expected_start_time is not None
    with sqlite3.connect(path) as raw:
        stored = raw.execute(
            "SELECT expected_start_time FROM flow_runs WHERE id = ?", (str(run.id),)
        ).fetchone()
    assert stored == (to_micros(view.expected_start_time),)


def test_a_rebuild_removes_the_helper_folders_of_rebuilds_that_died(tmp_path: Path) -> None:
    path = tmp_path / "swept.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        orch.create_flow_run("etl", state=states.Pending())
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = tmp_path / f".swept.db-rebuild-{ended.pid}-abc"
    live = tmp_path / f".swept.db-rebuild-{os.getpid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "partition-1.db").write_bytes(b"views")
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        orch.rebuild(workers=1)
    assert (dead.exists(), live.exists()) == (False, True)


def test_helpers_ignore_a_folder_named_flowtrail_where_the_program_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shadowed.db"
    with SyncOrchestrator.open(f"sqlite:///{path}") as orch:
        for _ in range(10):
            orch.create_flow_run("etl", state=states.Pending())
        impostor = tmp_path / "work" / "flowtrail"
        impostor.mkdir(parents=True)
        (impostor / "__init__.py").write_text("raise ImportError('not this one')\n")
        monkeypatch.chdir(impostor.parent)
        assert orch.rebuild(workers=2) == 20
