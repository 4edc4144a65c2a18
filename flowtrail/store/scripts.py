"""The log's I/O logic, written once as scripts of effects (see `flowtrail.core.effects`).

`append_script` is the heart: one write transaction for a batch of appends (one append
for the sync driver; every append that arrived together for the async one). Each append
in the batch is checked on its own (idempotency key, expected versions) against the
streams as the appends before it in the batch left them, so one append's conflict never
fails another. Positions, versions and hashes are assigned in order, the rows go in
with one statement, then the inline projections run in the same transaction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from flowtrail.core.chain import GENESIS, RecordedEvent, chain_hash
from flowtrail.core.effects import Append, Begin, Commit, ExecuteMany, Fetch, Rollback, Row, Script
from flowtrail.core.errors import ConcurrencyConflictError, CorruptLogError, FlowtrailError, StoreError
from flowtrail.core.events import Event
from flowtrail.core.projection import Projection
from flowtrail.store.api import AppendResult, PreparedAppend, StreamWrite

__all__ = [
    "MAX_POSITION",
    "LogSql",
    "append_script",
    "last_position_script",
    "locked_script",
    "read_batch_script",
    "read_rows_script",
    "stream_rows_script",
    "read_stream_script",
    "record_of",
    "stream_version_script",
    "wall_clock_micros",
]

T = TypeVar("T")

#: Statements are run with at most this many values bound to an IN list.
_IN_CHUNK = 500


class LogSql(Protocol):
    """The statements a backend provides for the log's tables, with ``?`` placeholders."""

    def lookup(self, streams: int, keys: int) -> str:
        """Everything an append checks, in one query: a row ("p", None, last position,
        the last event's recording time, None), then ("h", stream, version, None, hash) for each of ``streams``
        streams that exists, then ("k", key, first position, last position, None) for
        each of ``keys`` idempotency keys that is taken. Parameters: the streams, then
        the keys. (Five columns, each of one type, so that every dialect can unite them.)"""
        ...

    @property
    def last_position(self) -> str: ...

    @property
    def insert_event(self) -> str: ...

    @property
    def insert_key(self) -> str: ...

    @property
    def replayed(self) -> str:
        """(stream_id, max version, recorded_at) of the events between two positions."""
        ...

    @property
    def read_stream(self) -> str: ...

    @property
    def read_batch(self) -> str: ...

    @property
    def read_batch_as_bytes(self) -> str:
        """`read_batch` with every text column read as its bytes."""
        ...

    @property
    def read_stream_as_bytes(self) -> str:
        """`read_stream` with every text column read as its bytes."""
        ...

    @property
    def stream_version(self) -> str: ...

    @property
    def log_id(self) -> str:
        """The log's identity, given when it was created (one row, one column)."""
        ...

    @property
    def lean_cache(self) -> str | None:
        """A statement shrinking a connection's page cache while a rebuild scans the
        log and loads the views (None: the dialect keeps no cache per connection)."""
        ...

    @property
    def usual_cache(self) -> str | None:
        """The statement giving a connection its usual page cache back."""
        ...


def wall_clock_micros() -> int:
    """The recording time of a write: microseconds since the epoch."""
    return time.time_ns() // 1000


#: The last position a log reaches: the one after it would not fit a 64-bit integer.
MAX_POSITION = 2**63 - 2


def record_of(row: Row) -> RecordedEvent:
    """A log row (position, stream, version, type, schema, recorded_at, data, hash)."""
    data, seal = row[6], row[7]
    if type(data) is not bytes or type(seal) is not bytes:  # some drivers hand out memoryviews
        data, seal = _as_bytes(data, row[0]), _as_bytes(seal, row[0])
    if type(row[0]) is int and row[0] > MAX_POSITION:
        raise CorruptLogError(
            f"the event at position {row[0]} lies past {MAX_POSITION}, the last position a log reaches "
            "(no position after it can be read or written): a row was added",
            position=row[0],
        )
    if type(row[4]) is not int:  # SQLite keeps text in an INTEGER column edited by hand
        raise CorruptLogError(
            f"the event at position {row[0]} holds {type(row[4]).__name__} where the log keeps "
            "its schema version, a whole number",
            position=row[0] if type(row[0]) is int else None,
        )
    return RecordedEvent(row[0], row[1], row[2], row[3], row[4], row[5], data, seal)


def _as_bytes(value: object, position: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):  # a file edited by hand may hold text: its bytes are what the hash seals
        return value.encode("utf-8", "surrogateescape")
    raise CorruptLogError(
        f"the event at position {position} holds {type(value).__name__} where the log keeps bytes",
        position=position if type(position) is int else None,
    )


def append_script(
    batch: Sequence[PreparedAppend],
    sql: LogSql,
    projections: Sequence[Projection] = (),
    clock: Callable[[], int] = wall_clock_micros,
) -> Script[list[AppendResult | FlowtrailError]]:
    """Append every request of ``batch`` in one transaction; a result (or error) each."""
    return (yield from _in_transaction(_append_in_transaction(batch, sql, projections, clock)))


#: Makes an append's request from a script's `Append` (checked and encoded).
_Prepare = Callable[
    [Sequence[StreamWrite], str | None, Mapping[str, int] | None, Mapping[str, object] | None], PreparedAppend
]


def locked_script(
    script: Script[T],
    prepare: _Prepare,
    sql: LogSql,
    projections: Sequence[Projection] = (),
    clock: Callable[[], int] = wall_clock_micros,
) -> Script[T]:
    """Run ``script`` (its `Fetch` and `Append` effects) in one write transaction: see
    `flowtrail.core.effects.Locked`. A read's error and an append refused (a conflict,
    a request the log does not take) are thrown into the script, as the store throws
    them outside the lock; whatever the script raises ends the transaction with nothing
    written."""
    return (yield from _in_transaction(_holding_the_lock(script, prepare, sql, projections, clock)))


def _in_transaction(body: Script[T]) -> Script[T]:
    """``body`` between BEGIN and COMMIT; rolled back if it raises or the COMMIT fails."""
    yield Begin()
    # GeneratorExit: the script was closed unfinished (its caller was cancelled). It can
    # yield nothing more, and the store ends the transaction itself (`abandon`).
    try:
        result = yield from body
    except GeneratorExit:
        raise
    except BaseException:
        yield Rollback()
        raise
    try:
        yield Commit()
    except GeneratorExit:
        raise
    except BaseException:
        # A failed COMMIT (busy, I/O) can leave the transaction open: end it.
        yield Rollback()
        raise
    return result


def _holding_the_lock(
    script: Script[T],
    prepare: _Prepare,
    sql: LogSql,
    projections: Sequence[Projection],
    clock: Callable[[], int],
) -> Script[T]:
    """Carry out ``script``'s reads and appends inside the transaction `locked_script` began."""
    reply: object = None
    refusal: Exception | None = None
    with contextlib.closing(script):
        while True:
            try:
                effect = script.send(reply) if refusal is None else script.throw(refusal)
            except StopIteration as stop:
                result: T = stop.value
                return result
            reply, refusal = None, None
            match effect:
                case Fetch():
                    try:
                        reply = yield effect
                    except Exception as exc:  # as the store's own reads throw it in
                        refusal = exc
                case Append(writes, key, expect, known):
                    try:
                        request = prepare(writes, key, expect, known)
                    except FlowtrailError as exc:
                        refusal = exc
                        continue
                    (outcome,) = yield from _append_in_transaction([request], sql, projections, clock)
                    if isinstance(outcome, FlowtrailError):
                        refusal = outcome
                    else:
                        reply = outcome
                case _:
                    raise StoreError(
                        f"a script holding the write lock only reads and appends, not {effect!r}"
                    )


def _append_in_transaction(
    batch: Sequence[PreparedAppend], sql: LogSql, projections: Sequence[Projection], clock: Callable[[], int]
) -> Script[list[AppendResult | FlowtrailError]]:
    position, last_recorded, heads, stored_keys = yield from _lookup(batch, sql)
    # Read once the lookup holds the log's write lock (PostgreSQL takes it with the
    # lookup), and after the last transaction's time even where the clock stepped back
    # or did not move: each transaction is recorded at one time, later than the one
    # before, so that the events sharing a time are one transaction's (`as_of`).
    recorded_at = max(clock(), last_recorded + 1)
    rows: list[tuple[object, ...]] = []
    key_rows: list[tuple[str, int, int]] = []
    events: list[Event] = []
    results: list[AppendResult | FlowtrailError] = []
    by_key: dict[str, AppendResult] = {}
    known: dict[str, object] = {}
    for request in batch:
        key = request.idempotency_key
        if key is not None and key in by_key:
            results.append(_replay(by_key[key]))
            continue
        if key is not None and key in stored_keys:
            first, last_of_key = stored_keys[key]
            replayed = yield from _replayed_result(sql, first, last_of_key)
            by_key[key] = replayed
            results.append(replayed)
            continue
        conflict = _conflict(request, heads)
        if conflict is not None:
            results.append(conflict)
            continue
        first = position + 1
        versions: dict[str, int] = {}
        for write in request.writes:
            version, previous = heads.get(write.stream_id, (0, GENESIS))
            for kind, schema, data in write.encoded:
                version += 1
                position += 1
                previous = chain_hash(
                    previous, write.stream_id, version, position, kind, schema, recorded_at, data
                )
                rows.append((position, write.stream_id, version, kind, schema, recorded_at, data, previous))
            events.extend(write.events)
            heads[write.stream_id] = (version, previous)
            versions[write.stream_id] = version
        result = AppendResult(
            first_position=first, last_position=position, versions=versions, recorded_at=recorded_at
        )
        results.append(result)
        if request.known:
            known.update(request.known)
        if key is not None:
            key_rows.append((key, first, position))
            by_key[key] = result
    if rows:
        yield ExecuteMany(sql.insert_event, rows)
        if key_rows:
            yield ExecuteMany(sql.insert_key, key_rows)
        if projections:
            records = [record_of(row) for row in rows]
            for projection in projections:
                yield from projection.apply(records, events, known)
    return results


def _replay(result: AppendResult) -> AppendResult:
    return AppendResult(
        first_position=result.first_position,
        last_position=result.last_position,
        versions=result.versions,
        recorded_at=result.recorded_at,
        replayed=True,
    )


def _conflict(request: PreparedAppend, heads: dict[str, tuple[int, bytes]]) -> FlowtrailError | None:
    for write in request.writes:
        current = heads.get(write.stream_id, (0, GENESIS))[0]
        if write.expected_version is not None and write.expected_version != current:
            return ConcurrencyConflictError(write.stream_id, write.expected_version, current)
    for stream, expected in request.expect:
        current = heads.get(stream, (0, GENESIS))[0]
        if expected != current:
            return ConcurrencyConflictError(stream, expected, current)
    return None


def _lookup(
    batch: Sequence[PreparedAppend], sql: LogSql
) -> Script[tuple[int, int, dict[str, tuple[int, bytes]], dict[str, tuple[int, int]]]]:
    """The last position and its recording time, the head of every stream the batch
    touches, and its stored keys."""
    streams = sorted(set().union(*(r.streams for r in batch)))
    keys = sorted({r.idempotency_key for r in batch if r.idempotency_key is not None})
    position = recorded = 0
    heads: dict[str, tuple[int, bytes]] = {}
    found: dict[str, tuple[int, int]] = {}
    # One query in the usual case; very large batches are looked up in chunks.
    chunks = max(1, -(-len(streams) // _IN_CHUNK), -(-len(keys) // _IN_CHUNK))
    for index in range(chunks):
        some_streams = streams[index * _IN_CHUNK : (index + 1) * _IN_CHUNK]
        some_keys = keys[index * _IN_CHUNK : (index + 1) * _IN_CHUNK]
        rows: list[Row] = yield Fetch(
            sql.lookup(len(some_streams), len(some_keys)), [*some_streams, *some_keys]
        )
        for kind, name, first, second, seal in rows:
            if kind == "p":
                # A recording time that is not a number (a row edited by hand) is for
                # verify to report; here it only cannot hold the next time back.
                position, recorded = int(first or 0), second if type(second) is int else 0
            elif kind == "h":
                heads[name] = (first, bytes(seal))
            else:
                found[name] = (first, second)
    return position, recorded, heads, found


def _replayed_result(sql: LogSql, first: int, last: int) -> Script[AppendResult]:
    rows: list[Row] = yield Fetch(sql.replayed, (first, last))
    return AppendResult(
        first_position=first,
        last_position=last,
        versions={stream: version for stream, version, _ in rows},
        recorded_at=min(recorded for _, _, recorded in rows) if rows else 0,
        replayed=True,
    )


def read_stream_script(sql: LogSql, stream_id: str, from_version: int) -> Script[list[RecordedEvent]]:
    return [record_of(row) for row in (yield from stream_rows_script(sql, stream_id, from_version))]


def stream_rows_script(sql: LogSql, stream_id: str, from_version: int) -> Script[list[Row]]:
    """The rows of `LogSql.read_stream`, read as `read_rows_script` reads a batch."""
    return (yield from _rows(sql.read_stream, sql.read_stream_as_bytes, (stream_id, from_version)))


def read_batch_script(sql: LogSql, from_position: int, limit: int) -> Script[list[RecordedEvent]]:
    return [record_of(row) for row in (yield from read_rows_script(sql, from_position, limit))]


def read_rows_script(sql: LogSql, from_position: int, limit: int) -> Script[list[Row]]:
    """The rows of `LogSql.read_batch`; where a row holds text that is not UTF-8 (a table
    edited by hand), the batch read again as bytes, with the text that decodes as text:
    the damage is then named where it is (a hash that does not match, a value of the
    wrong type), not a batch that cannot be read."""
    return (yield from _rows(sql.read_batch, sql.read_batch_as_bytes, (from_position, limit)))


def _rows(statement: str, as_bytes: str, params: tuple[object, ...]) -> Script[list[Row]]:
    try:
        rows: list[Row] = yield Fetch(statement, params)
    except CorruptLogError as exc:
        if not exc.undecodable:
            raise
        rows = [_text_where_it_decodes(row) for row in (yield Fetch(as_bytes, params))]
    return rows


def _text_where_it_decodes(row: Row) -> Row:
    def text(value: object) -> object:
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value
        return value

    return (row[0], text(row[1]), row[2], text(row[3]), *row[4:])


def last_position_script(sql: LogSql) -> Script[int]:
    (last,) = (yield Fetch(sql.last_position))[0]
    return int(last or 0)


def stream_version_script(sql: LogSql, stream_id: str) -> Script[int]:
    rows: list[Row] = yield Fetch(sql.stream_version, (stream_id,))
    return int(rows[0][0] or 0) if rows else 0
