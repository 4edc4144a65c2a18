"""Events to bytes and back, the golden file, and every way bytes can be wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given

from flowtrail.core import (
    EVENT_TYPES,
    MalformedEventError,
    RunRenamed,
    UnknownEventTypeError,
    UnsupportedSchemaVersionError,
    decode_event,
    encode_event,
    event_type,
)
from flowtrail.core.codec import schema_version
from tests.core.golden_events import golden_events
from tests.strategies import events

GOLDEN = Path(__file__).parent.parent / "golden" / "events-v1.jsonl"


def _golden_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]


def test_the_golden_file_is_current_with_the_builders() -> None:
    """Regenerate with FLOWTRAIL_WRITE_GOLDEN=1 only when adding a new schema version's file."""
    lines = [
        json.dumps(
            {
                "type": event_type(e),
                "schema_version": schema_version(event_type(e)),
                "data": encode_event(e).decode(),
            },
            sort_keys=True,
        )
        for e in golden_events()
    ]
    if os.environ.get("FLOWTRAIL_WRITE_GOLDEN"):
        GOLDEN.write_text("\n".join(lines) + "\n")
    assert GOLDEN.exists()


@pytest.mark.parametrize("line", _golden_lines() if GOLDEN.exists() else [], ids=lambda line: line["type"])
def test_every_golden_event_still_decodes_to_the_same_bytes(line: dict[str, Any]) -> None:
    """Events recorded by earlier versions must decode forever (upcast if needed)."""
    data = line["data"].encode()
    event = decode_event(data, line["type"], line["schema_version"])
    if line["schema_version"] == schema_version(line["type"]):
        assert encode_event(event) == data


def test_the_golden_file_covers_every_event_type() -> None:
    assert {line["type"] for line in _golden_lines()} == set(EVENT_TYPES)


@given(events())
def test_encoding_then_decoding_gives_the_same_event(event: Any) -> None:
    data = encode_event(event)
    assert decode_event(data, event_type(event), schema_version(event_type(event))) == event


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe",
        b"{",
        b"[]",
        b"null",
        b'{"type": "run_renamed"}',
        b'{"type": "run_renamed", "run_id": "not-a-uuid", "name": "x", "renamed_at": "2026-01-01T00:00:00Z"}',
        b'{"type": "run_renamed", "run_id": "0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a01", "name": 5, '
        b'"renamed_at": "2026-01-01T00:00:00Z"}',
        b'{"type": "run_renamed", "run_id": "0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a01", "name": "x", '
        b'"renamed_at": "2026-01-01T00:00:00"}',
    ],
)
def test_bytes_that_are_not_the_event_are_a_typed_error(data: bytes) -> None:
    with pytest.raises(MalformedEventError):
        decode_event(data, "run_renamed", 1)


def test_a_state_of_an_unknown_type_inside_an_event_is_a_typed_error() -> None:
    good = next(e for e in golden_events() if event_type(e) == "state_proposed")
    data = encode_event(good).replace(b'"RUNNING"', b'"SPRINTING"')
    with pytest.raises(MalformedEventError, match="SPRINTING"):
        decode_event(data, "state_proposed", 1)


def test_a_naive_time_inside_a_state_is_a_typed_error() -> None:
    good = next(e for e in golden_events() if event_type(e) == "state_proposed")
    data = encode_event(good).replace(b'00:00:10Z"', b'00:00:10"', 1)
    with pytest.raises(MalformedEventError):
        decode_event(data, "state_proposed", 1)


def test_an_unknown_event_type_is_a_typed_error() -> None:
    with pytest.raises(UnknownEventTypeError):
        decode_event(b"{}", "run_teleported", 1)


def test_an_event_from_a_newer_flowtrail_is_a_typed_error() -> None:
    with pytest.raises(UnsupportedSchemaVersionError, match="reads up to 1"):
        decode_event(b"{}", "run_renamed", 2)


@pytest.mark.parametrize("version", ["1", None, 1.0])
def test_a_schema_version_that_is_not_a_whole_number_is_a_typed_error(version: Any) -> None:
    """A row edited by hand may hold anything there; it is not compared as a number."""
    with pytest.raises(UnsupportedSchemaVersionError, match="not a whole number"):
        decode_event(b"{}", "run_renamed", version, position=7)


def test_an_old_schema_version_is_upcast_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema change bumps SCHEMA_VERSION and registers an upcaster from the old shape."""
    monkeypatch.setattr(RunRenamed, "SCHEMA_VERSION", 2)

    def rename_field(obj: dict[str, Any]) -> dict[str, Any]:
        obj = dict(obj)
        obj["name"] = obj.pop("new_name")
        return obj

    old = b'{"type":"run_renamed","run_id":"0b6f4a52-7a51-4f32-9c35-2a8c4b8f1a01","new_name":"x",' + (
        b'"renamed_at":"2026-01-01T00:00:00Z"}'
    )
    event = decode_event(old, "run_renamed", 1, upcasters={("run_renamed", 1): rename_field})
    assert isinstance(event, RunRenamed)
    assert event.name == "x"


def test_an_old_schema_version_without_an_upcaster_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunRenamed, "SCHEMA_VERSION", 2)
    with pytest.raises(UnsupportedSchemaVersionError, match="no upcaster"):
        decode_event(b"{}", "run_renamed", 1)


def test_encoded_events_are_compact_json() -> None:
    for event in golden_events():
        data = encode_event(event)
        assert msgspec.json.decode(data)["type"] == event_type(event)
        assert b"\n" not in data
        assert data == msgspec.json.encode(msgspec.json.decode(data))  # no whitespace to spare
