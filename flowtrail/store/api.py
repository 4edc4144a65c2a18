"""The log's interface: what an append is, what it returns, and the checks made on it
before anything is written.

Two protocols with the same method names: `Store` (async, the primary one) and
`SyncStore` (plain calls). Every backend and driver implements both from the same
scripts (`flowtrail.store.scripts`), so they behave identically.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

import msgspec

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.codec import encode_event
from flowtrail.core.effects import StreamWrite
from flowtrail.core.errors import InvalidIdError, InvalidInputError, InvalidVersionError, PayloadTooLargeError
from flowtrail.core.events import EVENT_TYPES, Event
from flowtrail.core.jsondata import check_json

__all__ = [
    "AppendResult",
    "DEFAULT_MAX_EVENT_BYTES",
    "MAX_VERSION",
    "PreparedAppend",
    "PreparedWrite",
    "Store",
    "StreamWrite",
    "SyncStore",
    "check_position",
    "check_stream_id",
    "prepare_append",
]

#: The largest encoded event accepted, unless the store is opened with another limit.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
#: Versions and positions stay within the integers every client language reads exactly.
MAX_VERSION = 2**53
_MAX_ID_LENGTH = 256
_MAX_KEY_LENGTH = 512
_MAX_EVENTS_PER_APPEND = 10_000


class AppendResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where an append landed: its global positions and each stream's new version.

    ``replayed`` is True when an idempotency key matched an earlier append: the result
    is that append's, and nothing was written.
    """

    first_position: int
    last_position: int
    versions: dict[str, int]
    recorded_at: int
    replayed: bool = False


class PreparedWrite(NamedTuple):
    stream_id: str
    expected_version: int | None
    events: tuple[Event, ...]
    #: (event type, schema version, bytes) per event.
    encoded: tuple[tuple[str, int, bytes], ...]


class PreparedAppend(NamedTuple):
    """An append checked and encoded, ready for a write transaction."""

    writes: tuple[PreparedWrite, ...]
    #: Streams that must be at a version without being written (facts read for a decision).
    expect: tuple[tuple[str, int], ...]
    idempotency_key: str | None
    #: What the appender holds of the streams written, handed to the inline projections.
    known: Mapping[str, object] | None = None

    @property
    def streams(self) -> set[str]:
        streams = {w.stream_id for w in self.writes}
        if self.expect:
            streams.update(stream for stream, _ in self.expect)
        return streams


def check_stream_id(stream_id: object) -> str:
    """A stream id: a non-empty printable string of at most 256 characters."""
    if not isinstance(stream_id, str):
        raise InvalidIdError(f"a stream id is a string, not {type(stream_id).__name__}")
    if not stream_id or len(stream_id) > _MAX_ID_LENGTH:
        raise InvalidIdError(f"a stream id has 1 to {_MAX_ID_LENGTH} characters, not {len(stream_id)}")
    if not stream_id.isprintable():
        raise InvalidIdError(f"stream id {stream_id!r} holds control or unprintable characters")
    if not stream_id.isascii():
        try:
            stream_id.encode()
        except UnicodeEncodeError:
            raise InvalidIdError(f"stream id {stream_id!r} is not valid Unicode") from None
    return stream_id


def check_version(version: object, what: str = "expected_version") -> int:
    if type(version) is not int:
        raise InvalidVersionError(f"{what} is a whole number, not {version!r}")
    if not 0 <= version <= MAX_VERSION:
        raise InvalidVersionError(f"{what} {version} is outside 0..{MAX_VERSION}")
    return version


def check_position(position: object, what: str = "position") -> int:
    """A global position to read from: a whole number from 0 (the log's start)."""
    return check_version(position, what)


def _check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInputError(
            f"an idempotency key is a printable string of 1 to {_MAX_KEY_LENGTH} characters"
        )
    try:
        key.encode()
    except UnicodeEncodeError:
        raise InvalidInputError("an idempotency key must be valid Unicode") from None
    return key


#: Each event class with the tag and schema version it is stored under.
_KINDS: dict[type, tuple[str, int]] = {cls: (tag, cls.SCHEMA_VERSION) for tag, cls in EVENT_TYPES.items()}


def _prepare_write(write: StreamWrite, max_event_bytes: int) -> PreparedWrite:
    stream_id = check_stream_id(write.stream_id)
    expected = None if write.expected_version is None else check_version(write.expected_version)
    events = tuple(write.events)
    if not events:
        raise InvalidInputError(f"an append to stream {stream_id!r} holds no events")
    if len(events) > _MAX_EVENTS_PER_APPEND:
        raise InvalidInputError(f"an append holds at most {_MAX_EVENTS_PER_APPEND} events per stream")
    encoded: list[tuple[str, int, bytes]] = []
    same_run: object = None  # a run id already found to name this stream
    for event in events:
        kind = _KINDS.get(type(event))
        if kind is None:
            raise InvalidInputError(f"{type(event).__name__} is not a flowtrail event")
        run_id = event.run_id
        if run_id is not same_run:
            if str(run_id) != stream_id:
                raise InvalidInputError(
                    f"an event of run {run_id} cannot be appended to stream {stream_id!r}"
                )
            same_run = run_id
        parameters = getattr(event, "parameters", None)
        if parameters:
            check_json(parameters, path="parameters")
        data = encode_event(event)
        if len(data) > max_event_bytes:
            raise PayloadTooLargeError(
                f"a {kind[0]} event of {len(data)} bytes is over the limit of {max_event_bytes} bytes",
                size=len(data),
                limit=max_event_bytes,
            )
        encoded.append((kind[0], kind[1], data))
    return PreparedWrite(stream_id, expected, events, tuple(encoded))


def prepare_append(
    writes: Sequence[StreamWrite],
    *,
    idempotency_key: str | None = None,
    expect: Mapping[str, int] | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    known: Mapping[str, object] | None = None,
) -> PreparedAppend:
    """Check and encode an append; every problem is a typed error, before any write."""
    given: object = writes  # callers without type checking sometimes pass one write
    if isinstance(given, StreamWrite):
        writes = [given]
    if not writes:
        raise InvalidInputError("an append writes to at least one stream")
    prepared = tuple(
        [_prepare_write(w if type(w) is StreamWrite else StreamWrite(*w), max_event_bytes) for w in writes]
    )
    if len(prepared) > 1 and len({w.stream_id for w in prepared}) != len(prepared):
        raise InvalidInputError("an append names each stream once")
    checks: tuple[tuple[str, int], ...] = ()
    if expect:
        checks = tuple(
            (check_stream_id(stream), check_version(version, f"the expected version of {stream!r}"))
            for stream, version in expect.items()
        )
        if {w.stream_id for w in prepared} & {stream for stream, _ in checks}:
            raise InvalidInputError("a stream written by an append cannot also be only expected")
    return PreparedAppend(prepared, checks, _check_key(idempotency_key), known)


class Store(Protocol):
    """The log, async."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int | None,
        idempotency_key: str | None = None,
    ) -> AppendResult: ...

    async def append_many(
        self,
        writes: Sequence[StreamWrite],
        *,
        idempotency_key: str | None = None,
        expect: Mapping[str, int] | None = None,
    ) -> AppendResult: ...

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]: ...

    def read_all(self, from_position: int = 1, batch: int = 1000) -> AsyncIterator[RecordedEvent]: ...

    async def last_position(self) -> int: ...

    async def stream_version(self, stream_id: str) -> int: ...

    async def close(self) -> None: ...


class SyncStore(Protocol):
    """The log, with plain calls; same methods as `Store`."""

    def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int | None,
        idempotency_key: str | None = None,
    ) -> AppendResult: ...

    def append_many(
        self,
        writes: Sequence[StreamWrite],
        *,
        idempotency_key: str | None = None,
        expect: Mapping[str, int] | None = None,
    ) -> AppendResult: ...

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]: ...

    def read_all(self, from_position: int = 1, batch: int = 1000) -> Iterator[RecordedEvent]: ...

    def last_position(self) -> int: ...

    def stream_version(self, stream_id: str) -> int: ...

    def close(self) -> None: ...
