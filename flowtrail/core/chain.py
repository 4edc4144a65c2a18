"""Recorded events and the per-stream SHA-256 hash chain that seals them.

Each event's hash covers the previous hash of its stream, where it sits (stream,
version, global position), what it is (type, schema version), when it was recorded and
its bytes. So changing, removing, duplicating or reordering a recorded event breaks
the chain at that event, and `flowtrail.core.audit` names it.

What a chain cannot show on its own: events cut from the *end* of the log leave a
shorter log whose chains are all intact. Detecting that needs an anchor kept outside
the database (the last position and hash, written down or exported elsewhere).
"""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta

import msgspec

from flowtrail.core.codec import decode_event
from flowtrail.core.errors import CorruptLogError
from flowtrail.core.events import Event

__all__ = ["GENESIS", "RecordedEvent", "chain_hash", "from_micros", "to_micros"]

#: The "previous hash" of a stream's first event.
GENESIS = bytes(32)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBERS = struct.Struct(">qqqi")


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch: how recording times are stored and hashed."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def chain_hash(
    previous: bytes,
    stream_id: str,
    version: int,
    position: int,
    event_type: str,
    schema_version: int,
    recorded_at: int,
    data: bytes,
) -> bytes:
    """SHA-256 over the previous hash and everything that makes the event what it is."""
    digest = hashlib.sha256(previous)
    stream = stream_id.encode()
    kind = event_type.encode()
    digest.update(len(stream).to_bytes(4, "big"))
    digest.update(stream)
    digest.update(len(kind).to_bytes(4, "big"))
    digest.update(kind)
    digest.update(_NUMBERS.pack(version, position, recorded_at, schema_version))
    digest.update(data)
    return digest.digest()


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the log holds it: its place, its seal and its bytes.

    Fields are in the order of a log row, so a row maps straight onto one.
    ``recorded_at`` is microseconds since the epoch (see `recorded_time`).
    """

    position: int
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    recorded_at: int
    data: bytes
    hash: bytes

    def decode(self) -> Event:
        """The event itself; a `CodecError` (naming this position) if it does not decode."""
        return decode_event(self.data, self.event_type, self.schema_version, position=self.position)

    @property
    def recorded_time(self) -> datetime:
        """When the event was recorded; a `CorruptLogError` naming the position where
        the row holds anything but a time (a table edited by hand)."""
        try:
            if type(self.recorded_at) is int:
                return from_micros(self.recorded_at)
        except OverflowError:
            pass
        shown = repr(self.recorded_at)
        raise CorruptLogError(
            f"the event at position {self.position} records the time it was recorded as "
            f"{shown if len(shown) <= 40 else shown[:37] + '...'}, which is not a time: the log was changed by hand "
            "(`flowtrail verify` names every damaged event)",
            position=self.position if type(self.position) is int else None,
        )

    def expected_hash(self, previous: bytes) -> bytes:
        """The hash this event must carry if ``previous`` is its stream's previous hash."""
        return chain_hash(
            previous,
            self.stream_id,
            self.version,
            self.position,
            self.event_type,
            self.schema_version,
            self.recorded_at,
            self.data,
        )
