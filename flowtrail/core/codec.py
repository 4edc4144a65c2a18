"""Events to bytes and back: msgspec JSON, with upcasting of old schema versions.

Bytes are compact JSON so that a log stays readable with nothing but ``sqlite3``. The
store keeps each event's type and schema version beside its bytes; decoding picks the
decoder by type, and an event written under an older schema version is first turned
into the current shape by the pure functions in `UPCASTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from flowtrail.core.errors import (
    InvalidDataError,
    MalformedEventError,
    UnknownEventTypeError,
    UnsupportedSchemaVersionError,
)
from flowtrail.core.events import EVENT_TYPES, Event, event_type

__all__ = [
    "UPCASTERS",
    "Upcaster",
    "decode_event",
    "encode_event",
    "encode_json",
    "schema_version",
]

#: Turns the JSON object of an event at version N into the object at version N + 1.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: (event type, from version) -> upcaster. Empty while every event is at version 1;
#: a schema change adds its upcaster here and bumps the class's SCHEMA_VERSION.
UPCASTERS: Mapping[tuple[str, int], Upcaster] = {}

_encoder = msgspec.json.Encoder()
_decoders = {tag: msgspec.json.Decoder(cls) for tag, cls in EVENT_TYPES.items()}
_untyped = msgspec.json.Decoder()


def schema_version(event_type_name: str) -> int:
    """The current schema version of an event type."""
    try:
        return EVENT_TYPES[event_type_name].SCHEMA_VERSION
    except KeyError:
        raise UnknownEventTypeError(
            f"unknown event type {event_type_name!r}", event_type=event_type_name
        ) from None


def encode_event(event: Event) -> bytes:
    """The event's bytes. Data was checked when the event's states were built."""
    try:
        return _encoder.encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidDataError(f"{event_type(event)} cannot be encoded: {exc}") from exc


def encode_json(value: object) -> bytes:
    """Any msgspec-encodable value as JSON bytes (used for views and exports)."""
    return _encoder.encode(value)


def decode_event(
    data: bytes,
    event_type_name: str,
    version: int,
    *,
    position: int | None = None,
    upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS,
) -> Event:
    """Decode one stored event; every way this can fail is a `CodecError`."""
    decoder = _decoders.get(event_type_name)
    if decoder is None:
        raise UnknownEventTypeError(
            f"unknown event type {event_type_name!r}", event_type=event_type_name, position=position
        )
    current = EVENT_TYPES[event_type_name].SCHEMA_VERSION
    if type(version) is not int:  # a row edited by hand: compared, it would be a TypeError
        raise UnsupportedSchemaVersionError(
            f"{event_type_name} has schema version {version!r}, which is not a whole number",
            event_type=event_type_name,
            position=position,
        )
    if version > current:
        raise UnsupportedSchemaVersionError(
            f"{event_type_name} has schema version {version}; this flowtrail reads up to {current}",
            event_type=event_type_name,
            position=position,
        )
    try:
        if version == current:
            event: Event = decoder.decode(data)
        else:
            event = _upcast(data, event_type_name, version, current, upcasters)
    except msgspec.DecodeError as exc:
        raise MalformedEventError(
            f"{event_type_name} bytes do not decode: {exc}", event_type=event_type_name, position=position
        ) from exc
    except (InvalidDataError, ValueError, TypeError) as exc:
        # A struct's own checks (naive times, unknown state types) fail this way.
        raise MalformedEventError(
            f"{event_type_name} holds an invalid value: {exc}", event_type=event_type_name, position=position
        ) from exc
    return event


def _upcast(
    data: bytes, name: str, version: int, current: int, upcasters: Mapping[tuple[str, int], Upcaster]
) -> Event:
    if version < 1:
        raise UnsupportedSchemaVersionError(f"{name} has schema version {version}", event_type=name)
    obj = _untyped.decode(data)
    if not isinstance(obj, dict):
        raise msgspec.DecodeError(f"expected a JSON object, got {type(obj).__name__}")
    for step in range(version, current):
        upcaster = upcasters.get((name, step))
        if upcaster is None:
            raise UnsupportedSchemaVersionError(
                f"no upcaster for {name} from schema version {step}", event_type=name
            )
        obj = upcaster(obj)
    event: Event = msgspec.convert(obj, EVENT_TYPES[name])
    return event
