"""Tampering with a copy of a real database: every change is caught, at its position.

The tamperer here has the file and sqlite3: they drop the append-only triggers, then
flip bytes, delete, reorder, duplicate or truncate rows, or change a decision, and in
the hardest cases recompute every hash afterwards. Only the loss of the log's tail
needs an outside anchor to be noticed.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from flowtrail import CorruptLogError, SetStateStatus, SyncOrchestrator, states
from flowtrail.core import GENESIS, MalformedEventError, RecordedEvent, StateProposed, encode_event
from flowtrail.store.scripts import record_of
from flowtrail.store.sqlite_schema import SQL
from tests.engine.conftest import Clock

Tamper = Callable[[sqlite3.Connection], None]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with flows, tasks, a subflow, a retry and rejected proposals."""
    path = tmp_path_factory.mktemp("tamper") / "original.db"
    with SyncOrchestrator.open(f"sqlite:///{path}", clock=Clock()) as orch:
        parent = orch.create_flow_run("parent", retries=1, state=states.Pending())
        orch.propose_state(parent.id, states.Running())
        task = orch.create_task_run(parent.id, task_key="load", retries=1)
        orch.propose_state(task.id, states.Running())
        orch.propose_state(task.id, states.Failed())
        orch.propose_state(task.id, states.Running())
        orch.propose_state(task.id, states.Completed(data={"type": "json", "value": 1}))
        tracker = orch.create_task_run(parent.id, task_key="child")
        child = orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending())
        orch.propose_state(child.id, states.Running())
        orch.propose_state(child.id, states.Completed())
        orch.propose_state(parent.id, states.Failed(message="boom"))
        orch.propose_state(parent.id, states.Running())
        orch.propose_state(parent.id, states.Pending())
        orch.propose_state(parent.id, states.Completed())
        orch.propose_state(parent.id, states.Crashed())
        assert orch.verify().ok
        assert orch.last_position() == LOG_SIZE
    return path


def _records(path: Path) -> list[RecordedEvent]:
    connection = sqlite3.connect(path)
    try:
        return [record_of(row) for row in connection.execute(SQL.read_batch, (1, 10**9))]
    finally:
        connection.close()


#: Events in the original log (the fixture checks it): every one of them is tampered with.
LOG_SIZE = 21
POSITIONS = range(1, LOG_SIZE + 1)


@pytest.fixture(scope="module")
def events(original: Path) -> list[RecordedEvent]:
    return _records(original)


def _tampered(original: Path, tmp_path: Path, tamper: Tamper) -> Iterator[SyncOrchestrator]:
    copy = tmp_path / "copy.db"
    shutil.copy(original, copy)
    connection = sqlite3.connect(copy, isolation_level=None)
    connection.execute("DROP TRIGGER events_are_never_updated")
    connection.execute("DROP TRIGGER events_are_never_deleted")
    tamper(connection)
    connection.close()
    with SyncOrchestrator.open(f"sqlite:///{copy}") as orch:
        yield orch


def _first_bad(original: Path, tmp_path: Path, tamper: Tamper, **verify: object) -> tuple[int | None, str]:
    for orch in _tampered(original, tmp_path, tamper):
        report = orch.verify(**verify)  # type: ignore[arg-type]
        assert not report.ok, "the tampering went unnoticed"
        first = report.first_problem
        assert first is not None
        return first.position, first.kind
    raise AssertionError


def _reseal(connection: sqlite3.Connection) -> None:
    """Recompute every hash in position order: what a tamperer who knows the scheme does."""
    heads: dict[str, bytes] = {}
    for row in list(connection.execute(SQL.read_batch, (1, 10**9))):
        record = record_of(row)
        seal = record.expected_hash(heads.get(record.stream_id, GENESIS))
        heads[record.stream_id] = seal
        connection.execute("UPDATE events SET hash = ? WHERE position = ?", (seal, record.position))


@pytest.mark.parametrize("position", POSITIONS)
def test_a_flipped_byte_is_caught_at_its_position(original: Path, tmp_path: Path, position: int) -> None:
    def flip(connection: sqlite3.Connection) -> None:
        (data,) = connection.execute("SELECT data FROM events WHERE position = ?", (position,)).fetchone()
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x20
        connection.execute("UPDATE events SET data = ? WHERE position = ?", (bytes(changed), position))

    assert _first_bad(original, tmp_path, flip)[0] == position


@pytest.mark.parametrize("position", POSITIONS[:-1])
def test_a_deleted_row_is_caught_where_it_is_missing(original: Path, tmp_path: Path, position: int) -> None:
    def delete(connection: sqlite3.Connection) -> None:
        connection.execute("DELETE FROM events WHERE position = ?", (position,))

    assert _first_bad(original, tmp_path, delete) == (position + 1, "position")


@pytest.mark.parametrize("pair", [(2, 3), (5, 9), (10, 20), (1, LOG_SIZE)])
def test_reordered_rows_are_caught(original: Path, tmp_path: Path, pair: tuple[int, int]) -> None:
    low, high = pair

    def swap(connection: sqlite3.Connection) -> None:
        connection.execute("UPDATE events SET position = -1 WHERE position = ?", (low,))
        connection.execute("UPDATE events SET position = ? WHERE position = ?", (low, high))
        connection.execute("UPDATE events SET position = ? WHERE position = -1", (high,))

    assert _first_bad(original, tmp_path, swap)[0] == low


def _copied_to(position: int) -> Tamper:
    """A copy of the last event added at ``position``, outside the log's positions (at
    a version of its stream no other row holds)."""

    def copy(connection: sqlite3.Connection) -> None:
        connection.execute(
            "INSERT INTO events SELECT ?, stream_id, version + 1000, event_type, schema_version, recorded_at, data, hash "
            "FROM events WHERE position = ?",
            (position, LOG_SIZE),
        )

    return copy


@pytest.mark.parametrize("position", [0, -5, -(2**63)])
def test_a_row_added_before_position_one_is_caught_at_its_position(
    original: Path, tmp_path: Path, position: int
) -> None:
    assert _first_bad(original, tmp_path, _copied_to(position)) == (position, "position")


def test_a_row_added_at_the_largest_position_is_a_corrupt_log_error_and_the_log_still_opens_for_verify(
    original: Path, tmp_path: Path
) -> None:
    """No position after it fits a 64-bit integer: reading on from it cannot be asked for."""
    last = 2**63 - 1
    for orch in _tampered(original, tmp_path, _copied_to(last)):
        with pytest.raises(CorruptLogError, match=f"position {last} lies past") as caught:
            orch.rebuild()
        assert caught.value.position == last
    with SyncOrchestrator.open(f"sqlite:///{tmp_path / 'copy.db'}") as orch:
        report = orch.verify()
    assert report.first_problem is not None
    assert (report.first_problem.position, report.first_problem.kind) == (last, "position")


def _duplicating(events: list[RecordedEvent], position: int, *, reseal: bool) -> Tamper:
    """Append a copy of the event at ``position`` as its stream's next version; with
    ``reseal``, the chain is recomputed over the copy as a forger would."""
    record = events[position - 1]
    version = max(r.version for r in events if r.stream_id == record.stream_id) + 1

    def duplicate(connection: sqlite3.Connection) -> None:
        connection.execute(
            SQL.insert_event,
            (
                events[-1].position + 1,
                record.stream_id,
                version,
                record.event_type,
                record.schema_version,
                record.recorded_at,
                record.data,
                b"" if reseal else record.hash,
            ),
        )
        if reseal:
            _reseal(connection)

    return duplicate


@pytest.mark.parametrize("position", [1, 7, 20])
def test_a_duplicated_event_is_caught(
    original: Path, tmp_path: Path, position: int, events: list[RecordedEvent]
) -> None:
    duplicate = _duplicating(events, position, reseal=False)
    assert _first_bad(original, tmp_path, duplicate)[0] == events[-1].position + 1


@pytest.mark.parametrize("position", [1, 7, 20])
def test_a_duplicated_event_with_a_recomputed_chain_is_caught(
    original: Path, tmp_path: Path, position: int, events: list[RecordedEvent]
) -> None:
    duplicate = _duplicating(events, position, reseal=True)
    assert _first_bad(original, tmp_path, duplicate)[0] == events[-1].position + 1


def _decisions(events: list[RecordedEvent]) -> list[int]:
    return [r.position for r in events if r.event_type == "state_proposed" and r.position in POSITIONS]


def _changed_decision(position: int) -> Tamper:
    def change(connection: sqlite3.Connection) -> None:
        row = connection.execute(SQL.read_batch, (position, 1)).fetchone()
        event = record_of(row).decode()
        assert isinstance(event, StateProposed)
        decision = event.decision
        other = SetStateStatus.REJECT if decision.status is SetStateStatus.ACCEPT else SetStateStatus.ACCEPT
        forged = msgspec.structs.replace(event, decision=msgspec.structs.replace(decision, status=other))
        connection.execute("UPDATE events SET data = ? WHERE position = ?", (encode_event(forged), position))

    return change


def test_every_changed_decision_is_caught_at_its_position(
    original: Path, tmp_path: Path, events: list[RecordedEvent]
) -> None:
    for position in _decisions(events):
        (tmp_path / str(position)).mkdir()
        assert _first_bad(original, tmp_path / str(position), _changed_decision(position))[0] == position


def test_every_changed_decision_with_a_recomputed_chain_is_caught_by_re_deciding(
    original: Path, tmp_path: Path, events: list[RecordedEvent]
) -> None:
    for position in _decisions(events):
        change = _changed_decision(position)

        def resealed(connection: sqlite3.Connection, change: Tamper = change) -> None:
            change(connection)
            _reseal(connection)

        (tmp_path / str(position)).mkdir()
        assert _first_bad(original, tmp_path / str(position), resealed) == (position, "decision")


def test_a_cut_off_tail_needs_an_anchor_to_be_noticed(
    original: Path, tmp_path: Path, events: list[RecordedEvent]
) -> None:
    head = events[-1]

    def truncate(connection: sqlite3.Connection) -> None:
        connection.execute("DELETE FROM events WHERE position > ?", (head.position - 3,))

    for orch in _tampered(original, tmp_path, truncate):
        # The views still hold what the cut events did...
        assert {p.kind for p in orch.verify().problems} == {"view"}
        assert any("but the log holds" in p.message for p in orch.verify().problems)
        orch.rebuild()
        assert orch.verify().ok  # ...but rebuilt from it, a shorter log is a sound log...
        report = orch.verify(anchor=(head.position, head.hash))  # ...unless an anchor says how long it was
        assert report.first_problem is not None
        assert report.first_problem.kind == "anchor"


# --- the stored views, against the runs' folds ------------------------------------------------


def _view_problems(original: Path, tmp_path: Path, tamper: Tamper) -> list[tuple[str | None, str]]:
    for orch in _tampered(original, tmp_path, tamper):
        report = orch.verify()
        assert all(p.kind == "view" for p in report.problems), report.problems
        return [(p.stream_id, p.message) for p in report.problems]
    raise AssertionError


#: The reads of one run, of the log up to a position and of all of it that fold events.
FOLDING_READS: dict[str, Callable[[SyncOrchestrator, str], object]] = {
    "read_history": lambda orch, run_id: orch.read_history(run_id),
    "read_states": lambda orch, run_id: orch.read_states(run_id),
    "as_of": lambda orch, run_id: orch.as_of(LOG_SIZE),
    "rebuild": lambda orch, run_id: orch.rebuild(),
}


@pytest.mark.parametrize("read", FOLDING_READS)
def test_a_schema_version_edited_to_text_is_a_corrupt_log_error_at_its_position(
    original: Path, tmp_path: Path, read: str
) -> None:
    def tamper(connection: sqlite3.Connection) -> None:
        connection.execute("UPDATE events SET schema_version = 'v' WHERE position = 2")

    for orch in _tampered(original, tmp_path, tamper):
        (run_id,) = {record.stream_id for record in _records(original) if record.position == 2}
        with pytest.raises(
            CorruptLogError, match="position 2 holds str where the log keeps its schema version"
        ) as caught:
            FOLDING_READS[read](orch, run_id)
        assert caught.value.position == 2


def test_a_log_whose_rebuild_stopped_at_a_row_of_the_wrong_type_opens_for_verify(
    original: Path, tmp_path: Path
) -> None:
    """As after an event that does not decode: the views stay out of date, and verify
    names the damage."""

    def tamper(connection: sqlite3.Connection) -> None:
        connection.execute("UPDATE events SET schema_version = 'v' WHERE position = 2")

    for orch in _tampered(original, tmp_path, tamper):
        with pytest.raises(CorruptLogError):
            orch.rebuild()
    with SyncOrchestrator.open(f"sqlite:///{tmp_path / 'copy.db'}") as orch:
        first = orch.verify().first_problem
    assert first is not None
    assert (first.position, first.message) == (2, "the row at position 2 holds a value of the wrong type")


def test_verify_of_one_run_reports_its_event_that_does_not_decode_after_a_failed_rebuild(
    original: Path, tmp_path: Path
) -> None:
    """The views are out of date then, and the run's view can only be folded from its
    events, one of which does not decode: the check of the run reads no view."""

    def tamper(connection: sqlite3.Connection) -> None:
        connection.execute("UPDATE events SET data = X'FFFE' WHERE position = 2")

    for orch in _tampered(original, tmp_path, tamper):
        (run_id,) = {record.stream_id for record in _records(original) if record.position == 2}
        with pytest.raises(MalformedEventError):
            orch.rebuild()
        first = orch.verify(run_id).first_problem
        assert first is not None
        assert first.position == 2


def test_verify_of_one_run_whose_view_does_not_decode_names_the_view(original: Path, tmp_path: Path) -> None:
    """A check of one run compares the stored views of the runs it checks, as a check
    of the whole log compares every one: it reported such a run sound."""
    damaged: list[str] = []

    def tamper(connection: sqlite3.Connection) -> None:
        damaged.append(_a_flow_run(connection))
        connection.execute("UPDATE flow_runs SET view = X'00' WHERE id = ?", (damaged[0],))

    for orch in _tampered(original, tmp_path, tamper):
        for report in (orch.verify(damaged[0]), orch.verify()):
            assert [(p.kind, p.stream_id) for p in report.problems] == [("view", damaged[0])]


def test_verify_of_one_run_whose_state_column_was_edited_names_the_view(
    original: Path, tmp_path: Path
) -> None:
    edited: list[str] = []

    def tamper(connection: sqlite3.Connection) -> None:
        edited.append(_a_flow_run(connection))
        connection.execute("UPDATE flow_runs SET state_type = 'FAILED' WHERE id = ?", (edited[0],))

    for orch in _tampered(original, tmp_path, tamper):
        (problem,) = orch.verify(edited[0]).problems
        assert (problem.kind, problem.stream_id) == ("view", edited[0])
        assert "state_type is 'FAILED', where its events give 'COMPLETED'" in problem.message


def _a_flow_run(connection: sqlite3.Connection) -> str:
    return str(connection.execute("SELECT id FROM flow_runs WHERE flow_name = 'child'").fetchone()[0])


def test_a_view_row_whose_state_column_was_edited_is_named(original: Path, tmp_path: Path) -> None:
    edited: list[str] = []

    def tamper(connection: sqlite3.Connection) -> None:
        edited.append(_a_flow_run(connection))
        connection.execute("UPDATE flow_runs SET state_type = 'FAILED' WHERE id = ?", (edited[0],))

    problems = _view_problems(original, tmp_path, tamper)
    assert len(problems) == 1
    assert problems[0][0] == edited[0]
    assert "state_type is 'FAILED', where its events give 'COMPLETED'" in problems[0][1]


def test_a_view_row_whose_version_was_raised_past_its_log_is_named(original: Path, tmp_path: Path) -> None:
    edited: list[str] = []

    def tamper(connection: sqlite3.Connection) -> None:
        edited.append(_a_flow_run(connection))
        connection.execute("UPDATE flow_runs SET version = version + 5 WHERE id = ?", (edited[0],))

    problems = _view_problems(original, tmp_path, tamper)
    assert len(problems) == 1
    assert problems[0][0] == edited[0]
    assert "its view row is at version" in problems[0][1]
    assert "but the log holds" in problems[0][1]


def test_a_view_swapped_for_another_runs_is_named(original: Path, tmp_path: Path) -> None:
    def tamper(connection: sqlite3.Connection) -> None:
        child = _a_flow_run(connection)
        other = connection.execute("SELECT view FROM flow_runs WHERE flow_name = 'parent'").fetchone()[0]
        connection.execute("UPDATE flow_runs SET view = ? WHERE id = ?", (other, child))

    problems = _view_problems(original, tmp_path, tamper)
    assert len(problems) == 1
    assert "stored view's id is not what its events give" in problems[0][1]


def test_a_tag_added_by_hand_and_a_row_of_no_run_are_named(original: Path, tmp_path: Path) -> None:
    def tamper(connection: sqlite3.Connection) -> None:
        child = _a_flow_run(connection)
        connection.execute("INSERT INTO run_tags (tag, run_id) VALUES ('vip', ?)", (child,))
        row = connection.execute("SELECT * FROM task_runs LIMIT 1").fetchone()
        marks = ", ".join("?" * len(row))
        connection.execute(
            f"INSERT INTO task_runs VALUES ({marks})", ("ffffffff" + str(row[0])[8:], *row[1:])
        )

    messages = [message for _, message in _view_problems(original, tmp_path, tamper)]
    assert any("holds a row for it, but the log has no such run" in m for m in messages)
    assert any("run_tags gives it the tag 'vip'" in m for m in messages)


def test_views_marked_stale_are_not_compared(original: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    shutil.copy(original, copy)
    with sqlite3.connect(copy) as connection:
        connection.execute("UPDATE flow_runs SET state_type = 'FAILED'")
        connection.execute("UPDATE flowtrail_meta SET value = '1:stale' WHERE key = 'projection:runs'")
    connection.close()
    with SyncOrchestrator.open(f"sqlite:///{copy}", rebuild_stale=False) as orch:
        assert orch.verify().ok
        with sqlite3.connect(copy) as connection:
            connection.execute("UPDATE flowtrail_meta SET value = '1' WHERE key = 'projection:runs'")
        connection.close()
        assert {p.kind for p in orch.verify().problems} == {"view"}


def test_a_subflows_newest_state_removed_is_caught_by_verifying_that_run_alone(
    original: Path, tmp_path: Path
) -> None:
    """Its copy on the parent task run is still there: the evidence is in the selection;
    so is the subflow's view row, at a version its events no longer reach."""
    removed: list[str] = []

    def tamper(connection: sqlite3.Connection) -> None:
        child = _a_flow_run(connection)
        removed.append(child)
        last = connection.execute(
            "SELECT max(position) FROM events WHERE stream_id = ?", (child,)
        ).fetchone()[0]
        connection.execute("DELETE FROM events WHERE position = ?", (last,))

    for orch in _tampered(original, tmp_path, tamper):
        report = orch.verify(removed[0])
        assert [(p.kind, p.stream_id) for p in report.problems] == [
            ("mirror", report.problems[0].stream_id),
            ("view", removed[0]),
        ]
        assert f"copies a state of subflow run {removed[0]}" in report.problems[0].message


def test_a_parent_task_run_verified_alone_passes_with_its_subflows_copies(original: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{original}") as orch:
        tracker = next(r for r in orch.read_flow_runs(flow_names=["child"])).parent_task_run_id
        assert tracker is not None
        assert orch.verify(tracker).ok


# --- appends made while a check reads the log are no problems --------------------------------


def _after_fetch(orch: SyncOrchestrator, matches: Callable[[object], bool], then: Callable[[], None]) -> None:
    """Run ``then`` once, right after the first fetch ``matches``: an append by another
    process landing between two of the check's reads."""
    perform = orch.store._perform_effect
    done: list[bool] = []

    def wrapped(effect: object) -> object:
        result = perform(effect)  # type: ignore[arg-type]
        if not done and matches(effect):
            done.append(True)
            then()
        return result

    orch.store._perform_effect = wrapped  # type: ignore[method-assign]


def test_a_subflow_state_written_while_its_run_is_verified_alone_is_no_problem(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as other:
        parent = orch.create_flow_run("parent", state=states.Running())
        tracker = orch.create_task_run(parent.id, task_key="child")
        child = orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending())
        _after_fetch(
            orch,
            lambda e: isinstance(e, tuple) and e[0] == SQL.read_stream and e[1][0] == str(child.id),
            lambda: other.propose_state(child.id, states.Running()),
        )
        assert orch.verify(child.id).ok


def test_a_tagged_run_created_while_the_views_are_compared_is_no_problem(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with SyncOrchestrator.open(url) as orch, SyncOrchestrator.open(url) as other:
        orch.create_flow_run("etl", tags=["nightly"], state=states.Pending())
        _after_fetch(
            orch,
            lambda e: isinstance(e, tuple) and "FROM flow_runs WHERE id > ?" in str(e[0]),
            lambda: other.create_flow_run("etl", tags=["nightly"], state=states.Pending()),
        )
        assert orch.verify().ok
