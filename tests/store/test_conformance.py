"""The log's contract, run against every backend and driver (see conftest.Log)."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from flowtrail.core import (
    ConcurrencyConflictError,
    FlowtrailError,
    InvalidDataError,
    InvalidIdError,
    InvalidInputError,
    InvalidVersionError,
    PayloadTooLargeError,
    StoreError,
    verify,
)
from flowtrail.core.effects import Append, Effect, Execute, Fetch, Locked, Script
from flowtrail.store import scripts
from flowtrail.store.api import StreamWrite
from flowtrail.store.scripts import stream_version_script
from tests.store.builders import created, new_stream, renamed
from tests.store.conftest import Log

T = TypeVar("T")

# --- appending -----------------------------------------------------------------------------------


def test_an_append_assigns_versions_and_positions_in_order(log: Log) -> None:
    stream, events = new_stream(3)
    result = log.append(stream, events, 0)
    assert (result.first_position, result.last_position, result.versions) == (1, 3, {stream: 3})
    assert [(r.position, r.version) for r in log.read_stream(stream)] == [(1, 1), (2, 2), (3, 3)]


def test_events_read_back_are_the_events_appended(log: Log) -> None:
    stream, events = new_stream(4)
    log.append(stream, events, 0)
    assert [record.decode() for record in log.read_stream(stream)] == events


def test_a_stale_expected_version_is_a_conflict_carrying_the_current_version(log: Log) -> None:
    stream, events = new_stream(2)
    log.append(stream, events, 0)
    with pytest.raises(ConcurrencyConflictError) as caught:
        log.append(stream, [renamed(UUID(stream))], 1)
    assert (caught.value.stream_id, caught.value.expected_version, caught.value.current_version) == (
        stream,
        1,
        2,
    )


def test_a_conflict_writes_nothing(log: Log) -> None:
    stream, events = new_stream(2)
    log.append(stream, events, 0)
    with pytest.raises(ConcurrencyConflictError):
        log.append(stream, [renamed(UUID(stream))], 0)
    assert log.last_position() == 2
    assert log.stream_version(stream) == 2


def test_creating_an_existing_stream_is_a_conflict(log: Log) -> None:
    stream, events = new_stream(1)
    log.append(stream, events, 0)
    with pytest.raises(ConcurrencyConflictError):
        log.append(stream, events, 0)


def test_appending_with_no_expected_version_appends_at_the_end(log: Log) -> None:
    stream, events = new_stream(1)
    log.append(stream, events, 0)
    result = log.append(stream, [renamed(UUID(stream))], None)
    assert result.versions == {stream: 2}


def test_a_multi_stream_append_is_atomic(log: Log) -> None:
    first, first_events = new_stream(2)
    second, second_events = new_stream(1)
    log.append(second, second_events, 0)
    with pytest.raises(ConcurrencyConflictError):
        log.append_many(
            [StreamWrite(first, first_events, 0), StreamWrite(second, [renamed(UUID(second))], 0)]
        )
    assert log.last_position() == 1
    assert log.stream_version(first) == 0
    result = log.append_many(
        [StreamWrite(first, first_events, 0), StreamWrite(second, [renamed(UUID(second))], 1)]
    )
    assert result.versions == {first: 2, second: 2}
    assert (result.first_position, result.last_position) == (2, 4)


def test_an_expected_stream_that_moved_on_fails_the_append(log: Log) -> None:
    """``expect`` checks a stream that is read, not written (the facts of a decision)."""
    flow, flow_events = new_stream(1)
    task, task_events = new_stream(1)
    log.append(flow, flow_events, 0)
    log.append(flow, [renamed(UUID(flow))], 1)
    with pytest.raises(ConcurrencyConflictError) as caught:
        log.append_many([StreamWrite(task, task_events, 0)], expect={flow: 1})
    assert caught.value.stream_id == flow
    assert log.stream_version(task) == 0
    log.append_many([StreamWrite(task, task_events, 0)], expect={flow: 2})
    assert log.stream_version(task) == 1


class _StoppedClock:
    """Stands in for `time` in the store's scripts: the wall clock gives ``readings``."""

    def __init__(self, *readings: int) -> None:
        self._readings = list(readings)

    def time_ns(self) -> int:
        return self._readings.pop(0) * 1000 if len(self._readings) > 1 else self._readings[0] * 1000


def test_each_transaction_is_recorded_after_the_one_before_where_the_clock_stood_still_or_stepped_back(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scripts, "time", _StoppedClock(5_000, 5_000, 4_000, 9_000))
    times = []
    for _ in range(4):
        stream, events = new_stream(2)
        times.append(log.append(stream, events, 0).recorded_at)
    assert times == [5_000, 5_001, 5_002, 9_000]
    assert [r.recorded_at for r in log.read_all()] == [t for t in times for _ in range(2)]


# --- idempotency -----------------------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_original_result_and_writes_nothing(log: Log) -> None:
    stream, events = new_stream(2)
    first = log.append(stream, events, 0, idempotency_key="create-1")
    again = log.append(stream, events, 0, idempotency_key="create-1")
    assert again.replayed is True
    assert (again.first_position, again.last_position, again.versions) == (
        first.first_position,
        first.last_position,
        first.versions,
    )
    assert log.last_position() == 2


def test_an_idempotency_key_survives_reopening(log: Log) -> None:
    """Keys are durable: a unique index, not a time window."""
    stream, events = new_stream(1)
    log.append(stream, events, 0, idempotency_key="k")
    log.reopen()
    assert log.append(stream, events, 0, idempotency_key="k").replayed
    assert log.last_position() == 1


def test_an_idempotency_key_replays_even_a_different_append(log: Log) -> None:
    stream, events = new_stream(1)
    other, other_events = new_stream(1)
    log.append(stream, events, 0, idempotency_key="k")
    result = log.append(other, other_events, 0, idempotency_key="k")
    assert result.replayed
    assert result.versions == {stream: 1}
    assert log.stream_version(other) == 0


# --- reading ------------------------------------------------------------------------------------


def test_read_all_streams_every_event_in_position_order_in_batches(log: Log) -> None:
    for _ in range(7):
        stream, events = new_stream(3)
        log.append(stream, events, 0)
    records = log.read_all(1, batch=4)
    assert [r.position for r in records] == list(range(1, 22))
    assert [r.position for r in log.read_all(15, batch=4)] == list(range(15, 22))


def test_read_stream_from_a_version(log: Log) -> None:
    stream, events = new_stream(5)
    log.append(stream, events, 0)
    assert [r.version for r in log.read_stream(stream, 4)] == [4, 5]


def test_an_unknown_stream_reads_as_empty_at_version_zero(log: Log) -> None:
    assert log.read_stream(str(uuid4())) == []
    assert log.stream_version(str(uuid4())) == 0


def test_an_empty_log_is_at_position_zero(log: Log) -> None:
    assert log.last_position() == 0
    assert log.read_all() == []


def test_every_chain_verifies(log: Log) -> None:
    for count in (1, 3, 2):
        stream, events = new_stream(count)
        log.append(stream, events, 0)
    report = verify(log.read_all())
    assert report.ok, report.problems
    assert report.events_checked == 6


def test_positions_stay_gap_free_across_conflicts_and_replays(log: Log) -> None:
    stream, events = new_stream(1)
    log.append(stream, events, 0, idempotency_key="k")
    for _ in range(3):
        with pytest.raises(ConcurrencyConflictError):
            log.append(stream, [renamed(UUID(stream))], 0)
        log.append(stream, events, 0, idempotency_key="k")
    log.append(stream, [renamed(UUID(stream))], 1)
    assert [r.position for r in log.read_all()] == [1, 2]


# --- concurrent appends -------------------------------------------------------------------------------


def test_one_appends_conflict_does_not_fail_the_others(log: Log) -> None:
    streams = [new_stream(1) for _ in range(10)]
    log.append(streams[0][0], streams[0][1], 0)
    calls = [("append", (stream, events, 0), {}) for stream, events in streams]
    results = log.gather(calls)
    assert isinstance(results[0], ConcurrencyConflictError)
    assert all(not isinstance(r, Exception) for r in results[1:])
    assert log.last_position() == 10


def test_concurrent_appends_to_one_stream_have_exactly_one_winner_per_version(log: Log) -> None:
    stream, events = new_stream(1)
    log.append(stream, events, 0)
    results = log.gather([("append", (stream, [renamed(UUID(stream), str(i))], 1), {}) for i in range(8)])
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(
        isinstance(r, ConcurrencyConflictError) and r.current_version == 2
        for r in results
        if r not in winners
    )


def test_concurrent_appends_with_one_key_write_once(log: Log) -> None:
    stream, events = new_stream(1)
    results = log.gather([("append", (stream, events, 0), {"idempotency_key": "same"}) for _ in range(5)])
    assert all(not isinstance(r, Exception) for r in results)
    assert sum(not r.replayed for r in results) == 1
    assert log.last_position() == 1


# --- writing holding the lock ----------------------------------------------------------------------


def _locked(log: Log, script: Script[T]) -> T:
    result: T = log._call("perform", _one_effect(Locked(script)))
    return result


def _one_effect(effect: Effect) -> Script[Any]:
    return (yield effect)


def test_a_locked_script_reads_its_own_appends(log: Log) -> None:
    stream, events = new_stream(2)

    def script() -> Script[tuple[int, int]]:
        before = yield from stream_version_script(log.store.sql, stream)
        yield Append([StreamWrite(stream, events, 0)])
        return before, (yield from stream_version_script(log.store.sql, stream))

    assert _locked(log, script()) == (0, 2)
    assert log.stream_version(stream) == 2


def test_a_conflict_in_a_locked_script_is_thrown_into_it_and_it_goes_on(log: Log) -> None:
    stream, events = new_stream(1)
    log.append(stream, events, 0)

    def script() -> Script[int]:
        try:
            yield Append([StreamWrite(stream, [renamed(UUID(stream))], 0)])
        except ConcurrencyConflictError as conflict:
            version = conflict.current_version
        result = yield Append([StreamWrite(stream, [renamed(UUID(stream))], version)])
        return int(result.last_position)

    assert _locked(log, script()) == 2
    assert [r.version for r in log.read_stream(stream)] == [1, 2]


def test_a_locked_script_that_raises_after_appending_leaves_nothing_written(log: Log) -> None:
    stream, events = new_stream(2)

    def script() -> Script[None]:
        yield Append([StreamWrite(stream, events, 0)])
        raise RuntimeError("changed its mind")

    with pytest.raises(RuntimeError, match="changed its mind"):
        _locked(log, script())
    assert log.last_position() == 0
    log.append(stream, events, 0)  # and the write lock is free again
    assert log.last_position() == 2


def test_a_read_refused_in_a_locked_script_is_thrown_into_it(log: Log) -> None:
    def script() -> Script[str]:
        try:
            yield Fetch("SELECT * FROM no_such_table")
        except StoreError:
            return "refused"
        return "read"

    assert _locked(log, script()) == "refused"
    stream, events = new_stream(1)
    log.append(stream, events, 0)  # and the log goes on
    assert log.last_position() == 1


def test_a_locked_script_may_only_read_and_append(log: Log) -> None:
    def script() -> Script[None]:
        yield Execute("DELETE FROM events")

    with pytest.raises(StoreError, match="only reads and appends"):
        _locked(log, script())


# --- bad input ----------------------------------------------------------------------------------------

BAD_STREAM_IDS = ["", "x" * 257, "nul\x00byte", "tab\there", "\u202eevil", "\ud800", 5, None, b"bytes"]
BAD_VERSIONS = [-1, 2**60, 1.5, "1", True, None]


@pytest.mark.parametrize("stream_id", BAD_STREAM_IDS, ids=repr)
def test_a_bad_stream_id_is_a_typed_error_and_writes_nothing(log: Log, stream_id: object) -> None:
    with pytest.raises(InvalidIdError):
        log.append(stream_id, [created()], 0)
    assert log.last_position() == 0


@pytest.mark.parametrize("version", [v for v in BAD_VERSIONS if v is not None], ids=repr)
def test_a_bad_expected_version_is_a_typed_error_and_writes_nothing(log: Log, version: object) -> None:
    stream, events = new_stream(1)
    with pytest.raises(InvalidVersionError):
        log.append(stream, events, version)
    assert log.last_position() == 0


@pytest.mark.parametrize(
    "events_for",
    [
        lambda run_id: [],
        lambda run_id: [object()],
        lambda run_id: [created()],  # another run's event
        lambda run_id: [created(run_id, parameters={"x": float("nan")})],
        lambda run_id: [created(run_id, parameters={"x": float("inf")})],
        lambda run_id: [created(run_id, parameters={"x": {1, 2}})],
        lambda run_id: [created(run_id, name="\ud800")],
    ],
    ids=["no events", "not an event", "another run", "nan", "inf", "a set", "a lone surrogate"],
)
def test_a_bad_event_is_a_typed_error_and_writes_nothing(log: Log, events_for: object) -> None:
    run_id = uuid4()
    with pytest.raises(InvalidInputError):
        log.append(str(run_id), events_for(run_id), 0)  # type: ignore[operator]
    assert log.last_position() == 0


def test_an_oversized_event_is_a_typed_error_and_writes_nothing(log: Log) -> None:
    run_id = uuid4()
    with pytest.raises(PayloadTooLargeError) as caught:
        log.append(str(run_id), [created(run_id, parameters={"blob": "x" * (1024 * 1024)})], 0)
    assert caught.value.limit == 1024 * 1024
    assert log.last_position() == 0


@pytest.mark.parametrize("key", ["", "k" * 600, "nul\x00", 5], ids=repr)
def test_a_bad_idempotency_key_is_a_typed_error(log: Log, key: object) -> None:
    stream, events = new_stream(1)
    with pytest.raises(InvalidInputError):
        log.append(stream, events, 0, idempotency_key=key)
    assert log.last_position() == 0


def test_a_stream_named_twice_in_one_append_is_a_typed_error(log: Log) -> None:
    stream, events = new_stream(1)
    with pytest.raises(InvalidInputError):
        log.append_many([StreamWrite(stream, events, 0), StreamWrite(stream, [renamed(UUID(stream))], 1)])


HOSTILE = "'; DROP TABLE events; -- \" ` \\ % _ * ? [ ] \x7f \u00e9 \u4e2d \U0001f600 /* */ NULL"


def test_sql_metacharacters_are_data_stored_byte_for_byte(log: Log) -> None:
    """Every value is bound, never spliced into SQL: hostile strings are just strings."""
    run_id = uuid4()
    event = created(run_id, name=HOSTILE, parameters={HOSTILE: HOSTILE}, tags=(HOSTILE,))
    log.append(str(run_id), [event], 0, idempotency_key=HOSTILE.replace("\x7f", ""))
    (record,) = log.read_stream(str(run_id))
    assert record.decode() == event
    assert log.last_position() == 1


def test_a_hostile_stream_id_that_is_printable_is_just_an_id(log: Log) -> None:
    with pytest.raises(InvalidInputError):  # the run id inside does not match it...
        log.append("'; DROP TABLE events; --", [created()], 0)
    assert log.last_position() == 0  # ...and the table is still there


def test_every_bad_input_error_is_a_flowtrail_error(log: Log) -> None:
    with pytest.raises(FlowtrailError):
        log.append("", [], -1)
    with pytest.raises(InvalidDataError):
        log.append(str(run_id := uuid4()), [created(run_id, parameters={"f": float("nan")})], 0)


def test_a_closed_store_refuses_every_call_with_a_store_error_and_closes_again_quietly(log: Log) -> None:
    stream, events = new_stream(1)
    log.append(stream, events, 0)
    log._call("close")
    for call in (log.last_position, lambda: log.append(*new_stream(1), 0), lambda: log.read_stream(stream)):
        with pytest.raises(StoreError, match="this log is closed"):
            call()
    log._call("close")
