"""Exports: a log, or one run's part of it, as JSON lines that verify with no database.

    {"format": "flowtrail-export", "version": 1, "log": ..., "scope": ..., "policies": [...]}
    {"position": 1, "stream_id": ..., "version": 1, "event_type": ..., "schema_version": 1,
     "recorded_at": ..., "data": "<the event's stored JSON, as text>", "hash": "<hex>"}
    ...
    {"end": {"events": N, "last_position": P, "last_hash": "<hex>", "log_digest": "<hex>"}}

Each event keeps its stored bytes exactly (``data`` is text, not re-encoded JSON), so its
hash can be recomputed. The last line is an anchor: an export whose tail was cut off, or
which was extended, no longer matches it. An export of the whole log also ends with the
log digest (see `flowtrail.core.audit`), which changes with any event of any run.
(Anyone able to rewrite the whole file can rewrite the end line too: keep the digest
somewhere else to catch that.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from flowtrail.core.audit import Auditor, AuditReport, Problem
from flowtrail.core.chain import RecordedEvent
from flowtrail.core.errors import CorruptLogError
from flowtrail.core.policies import POLICIES

__all__ = ["FORMAT", "ExportWriter", "read_export", "verify_export"]

FORMAT = "flowtrail-export"
VERSION = 1
#: Longer lines are refused before they are parsed (stored events are far smaller).
MAX_LINE = 16 * 1024 * 1024


class ExportWriter:
    """Writes an export to a text file: the header now, then `write` each event (in
    position order), then `finish`."""

    def __init__(self, out: IO[str], *, log_id: str | None, scope: str) -> None:
        self._out = out
        self.count = 0
        self._last: RecordedEvent | None = None
        self._digest = hashlib.sha256() if scope == "all" else None
        header = {
            "format": FORMAT,
            "version": VERSION,
            "log": log_id,
            "scope": scope,
            "policies": sorted(f"{name}@{version}" for name, version in POLICIES),
        }
        out.write(json.dumps(header) + "\n")

    def write(self, record: RecordedEvent) -> None:
        line = {
            "position": record.position,
            "stream_id": record.stream_id,
            "version": record.version,
            "event_type": record.event_type,
            "schema_version": record.schema_version,
            "recorded_at": record.recorded_at,
            "data": record.data.decode(),
            "hash": record.hash.hex(),
        }
        self._out.write(json.dumps(line) + "\n")
        self.count += 1
        self._last = record
        if self._digest is not None:
            self._digest.update(record.hash)

    def write_all(self, records: Iterable[RecordedEvent]) -> None:
        for record in records:
            self.write(record)

    def finish(self) -> int:
        last = self._last
        end = {
            "events": self.count,
            "last_position": last.position if last else 0,
            "last_hash": last.hash.hex() if last else "",
        }
        if self._digest is not None:
            end["log_digest"] = self._digest.hexdigest()
        self._out.write(json.dumps({"end": end}) + "\n")
        return self.count


def _line(text: str, number: int) -> dict[str, Any]:
    if len(text) > MAX_LINE:
        raise CorruptLogError(f"line {number} of the export is longer than any event can be")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptLogError(f"line {number} of the export is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise CorruptLogError(f"line {number} of the export is not a JSON object")
    return value


#: The range of each number of an event, as its hash seals them (`chain_hash`).
_RANGES = {
    "position": (-(2**63), 2**63 - 1),
    "version": (-(2**63), 2**63 - 1),
    "recorded_at": (-(2**63), 2**63 - 1),
    "schema_version": (-(2**31), 2**31 - 1),
}


def _number(item: dict[str, Any], key: str) -> int:
    value = int(item[key])
    low, high = _RANGES[key]
    if not low <= value <= high:
        raise ValueError(f"{key} {value} is out of range")
    return value


def _record(item: dict[str, Any], number: int) -> RecordedEvent:
    try:
        return RecordedEvent(
            position=_number(item, "position"),
            stream_id=str(item["stream_id"]),
            version=_number(item, "version"),
            event_type=str(item["event_type"]),
            schema_version=_number(item, "schema_version"),
            recorded_at=_number(item, "recorded_at"),
            data=str(item["data"]).encode(),
            hash=bytes.fromhex(str(item["hash"])),
        )
    except KeyError as exc:
        raise CorruptLogError(f"line {number} of the export is not an event (no {exc.args[0]!r})") from None
    except (TypeError, ValueError) as exc:
        raise CorruptLogError(f"line {number} of the export is not an event ({exc})") from None


def read_export(lines: Iterable[str]) -> tuple[dict[str, Any], Iterator[RecordedEvent], dict[str, Any]]:
    """The export's header, its events (read lazily) and, once they are read, its end."""
    numbered = iter(enumerate(lines, start=1))
    try:
        number, first = next(numbered)
    except StopIteration:
        raise CorruptLogError("the export is empty") from None
    header = _line(first, number)
    if header.get("format") != FORMAT:
        raise CorruptLogError("this is not a flowtrail export (its first line does not say so)")
    if header.get("version") != VERSION:
        raise CorruptLogError(
            f"export format version {header.get('version')!r} is not one this flowtrail reads"
        )
    end: dict[str, Any] = {}

    def events() -> Iterator[RecordedEvent]:
        for number, text in numbered:
            if not text.strip():
                continue
            item = _line(text, number)
            if end:
                raise CorruptLogError(f"line {number} of the export comes after its end line")
            if "end" in item:
                if not isinstance(item["end"], dict):
                    raise CorruptLogError(f"line {number} of the export is a malformed end line")
                end.update(item["end"])
                continue
            yield _record(item, number)

    return header, events(), end


def verify_export(lines: Iterable[str]) -> AuditReport:
    """Verify an export with no database: chains, decisions, and its end anchor."""
    header, events, end = read_export(lines)
    auditor = Auditor(contiguous=header.get("scope") == "all")
    last: RecordedEvent | None = None
    count = 0
    for record in events:
        auditor.check(record)
        last, count = record, count + 1
    report = auditor.finish()
    problems = list(report.problems)
    if not end:
        problems.append(Problem(kind="anchor", message="the export has no end line: it was cut short"))
    elif end.get("events") != count or end.get("last_hash") != (last.hash.hex() if last else ""):
        problems.append(
            Problem(
                kind="anchor",
                message=f"the export holds {count} event(s) but its end line records "
                f"{end.get('events')} or another last hash: events were added or removed",
            )
        )
    elif "log_digest" in end and end["log_digest"] != report.log_digest:
        problems.append(
            Problem(
                kind="anchor",
                message="the export's events are not those its end line's log digest was made of: "
                "an event was changed, removed, added or reordered",
            )
        )
    problems.sort(key=lambda p: (p.position is None, p.position or 0))
    return AuditReport(
        events_checked=report.events_checked,
        streams_checked=report.streams_checked,
        problems=tuple(problems),
        last_position=report.last_position,
        truncated=report.truncated,
        log_digest=report.log_digest,
    )
