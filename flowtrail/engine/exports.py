"""Exports: a log, or one run's part of it, as JSON lines that verify with no database.

    {"format": "flowtrail-export", "version": 1, "log": ..., "scope": ..., "policies": [...]}
    {"position": 1, "stream_id": ..., "version": 1, "event_type": ..., "schema_version": 1,
     "recorded_at": ..., "data": "<the event's stored JSON, as text>", "hash": "<hex>"}
    ...
    {"end": {"events": N, "last_position": P, "last_hash": "<hex>", "log_digest": "<hex>"}}

Each event keeps its stored bytes exactly (``data`` is text, not re-encoded JSON), so its
hash can be recomputed. Bytes that are not UTF-8 text (a damaged log's) are written as
``"data_hex"``, their hexadecimal digits, in place of ``"data"``: an auditor exports a
damaged log as it is, and the export's verification names the damage as the log's does. The last line is an anchor: an export whose tail was cut off, or
which was extended, no longer matches it. An export of the whole log also ends with the
log digest (see `flowtrail.core.audit`), which changes with any event of any run.
(Anyone able to rewrite the whole file can rewrite the end line too: keep the digest
somewhere else to catch that.)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from uuid import UUID

import msgspec

from flowtrail.core.audit import Auditor, AuditReport, Problem
from flowtrail.core.chain import RecordedEvent
from flowtrail.core.errors import CorruptLogError
from flowtrail.core.policies import POLICIES

__all__ = ["FORMAT", "MAX_LINE", "ExportWriter", "bounded_lines", "read_export", "verify_export"]

FORMAT = "flowtrail-export"
VERSION = 1
#: Longer lines are refused before they are parsed (stored events are far smaller).
MAX_LINE = 16 * 1024 * 1024


def _data(data: bytes) -> dict[str, str]:
    try:
        return {"data": data.decode()}
    except UnicodeDecodeError:
        return {"data_hex": data.hex()}


#: The fields of a row an export writes as they are (JSON text or numbers).
_ROW_FIELDS = ("position", "stream_id", "version", "event_type", "schema_version", "recorded_at")


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
        for field in _ROW_FIELDS:
            value = getattr(record, field)
            if isinstance(value, bytes | bytearray | memoryview):  # no JSON value carries it as it is
                raise CorruptLogError(
                    f"the event at position {record.position} holds bytes as its {field}, where the "
                    "log keeps text or a number: the log was changed by hand, and an export cannot "
                    "carry it; `flowtrail verify` names every damaged event"
                )
        line = {
            "position": record.position,
            "stream_id": record.stream_id,
            "version": record.version,
            "event_type": record.event_type,
            "schema_version": record.schema_version,
            "recorded_at": record.recorded_at,
            **_data(record.data),
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


def bounded_lines(binary: IO[bytes]) -> Iterator[bytes]:
    """The lines of a file opened in binary, none held longer than ``MAX_LINE + 1``
    bytes: a longer line is cut there (the rest of it read and dropped in pieces of
    that size), so that `verify_export` refuses it without holding it whole."""
    while line := binary.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := binary.readline(MAX_LINE + 1)) and not rest.endswith(b"\n"):
                pass
        yield line


class _DamageError(Exception):
    """What is wrong with a line, as the end of a sentence ("is not JSON ...")."""

    def __init__(self, predicate: str, position: int | None = None) -> None:
        super().__init__(predicate)
        self.predicate = predicate
        self.position = position


@dataclass(frozen=True)
class _Unreadable:
    """A line of a recognised export that is not the event or end line it should be."""

    message: str
    #: Where the line says it sits in the log, when it says so legibly.
    position: int | None = None


def _object(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_LINE:
        raise _DamageError(f"is longer than any event can be (over {MAX_LINE:,} bytes)")
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise _DamageError("is not UTF-8 text") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _DamageError(f"is not JSON: {_where(exc)}") from None
    except ValueError:  # an integer of more digits than Python converts (4,300 by default)
        raise _DamageError("holds a number of more digits than any field of an export has") from None
    except RecursionError:
        raise _DamageError("nests values deeper than any line of an export does") from None
    if not isinstance(value, dict):
        raise _DamageError("is not a JSON object")
    return value


def _where(exc: json.JSONDecodeError) -> str:
    """The parser's complaint as the end of a sentence (some of its messages end in "at")."""
    complaint = exc.msg[:1].lower() + exc.msg[1:]
    return (
        f"{complaint} column {exc.colno}"
        if complaint.endswith(" at")
        else f"{complaint} at column {exc.colno}"
    )


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: The range of each number of an event, as its hash seals them (`chain_hash`).
_RANGES = {
    "position": (-(2**63), 2**63 - 1),
    "version": (-(2**63), 2**63 - 1),
    "recorded_at": (-(2**63), 2**63 - 1),
    "schema_version": (-(2**31), 2**31 - 1),
}


def _number(item: dict[str, Any], key: str) -> int:
    """An exact JSON integer: 7.5, "7" or true are not coerced (the hash seals the number)."""
    value = _field(item, key)
    if type(value) is not int:
        raise _DamageError(f"is not an event: its {key} is {_shown(value)}, not a whole number")
    low, high = _RANGES[key]
    if not low <= value <= high:
        raise _DamageError(f"is not an event: its {key} {value} is out of the range a log holds")
    return value


def _text(item: dict[str, Any], key: str) -> str:
    value = _field(item, key)
    if not isinstance(value, str):
        raise _DamageError(f"is not an event: its {key} is {_shown(value)}, not a string")
    return value


def _field(item: dict[str, Any], key: str) -> Any:
    if key not in item:
        raise _DamageError(f"is not an event (no {key!r})")
    return item[key]


def _hex(item: dict[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(_text(item, key))
    except ValueError:
        raise _DamageError(f"is not an event: its {key} is not hexadecimal digits") from None


def _bytes(item: dict[str, Any]) -> bytes:
    """The event's stored bytes: its ``data`` text, or ``data_hex`` where they are not UTF-8."""
    if "data_hex" in item:
        if "data" in item:
            raise _DamageError("is not an event: it has both data and data_hex")
        return _hex(item, "data_hex")
    try:
        return _text(item, "data").encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON may spell but UTF-8 cannot
        raise _DamageError("is not an event: its data is not text UTF-8 can hold") from None


def _record(item: dict[str, Any]) -> RecordedEvent:
    position = item.get("position")
    try:
        return RecordedEvent(
            position=_number(item, "position"),
            stream_id=_text(item, "stream_id"),
            version=_number(item, "version"),
            event_type=_text(item, "event_type"),
            schema_version=_number(item, "schema_version"),
            recorded_at=_number(item, "recorded_at"),
            data=_bytes(item),
            hash=_hex(item, "hash"),
        )
    except _DamageError as exc:
        low, high = _RANGES["position"]
        if type(position) is int and low <= position <= high:
            exc.position = position  # the line keeps its place: the events after it are not missing
        raise


class _Reading:
    """An export being read: its header (checked to be one), then its lines in turn."""

    def __init__(self, lines: Iterable[str] | Iterable[bytes]) -> None:
        self._numbered: Iterator[tuple[int, str | bytes]] = iter(enumerate(lines, start=1))
        try:
            _, first = next(self._numbered)
        except StopIteration:
            raise CorruptLogError("the export is empty") from None
        try:
            header = _object(first)
        except _DamageError as exc:
            raise CorruptLogError(f"this is not a flowtrail export: its first line {exc.predicate}") from None
        if header.get("format") != FORMAT:
            raise CorruptLogError("this is not a flowtrail export (its first line does not say so)")
        if header.get("version") != VERSION:
            raise CorruptLogError(
                f"export format version {_shown(header.get('version'))} is not one this flowtrail reads"
            )
        self.header = header
        #: The end line's fields, once it is read.
        self.end: dict[str, Any] | None = None
        #: A line after the end line (the first one), once one is read.
        self.extended: _Unreadable | None = None

    def items(self) -> Iterator[RecordedEvent | _Unreadable]:
        """Each event line, read as an event or as what is wrong with it. Reading stops
        at a line after the end line (`extended`)."""
        for number, text in self._numbered:
            if not text.strip():
                continue
            if self.end is not None:
                self.extended = _Unreadable(
                    f"line {number} of the export comes after its end line: lines were added to it"
                )
                return
            try:
                item = _object(text)
                if "end" in item:
                    self.end = item["end"] if isinstance(item["end"], dict) else {}
                    if not isinstance(item["end"], dict):
                        raise _DamageError('is an end line whose "end" is not a JSON object')
                    continue
                yield _record(item)
            except _DamageError as exc:
                yield _Unreadable(f"line {number} of the export {exc.predicate}", exc.position)


def read_export(
    lines: Iterable[str] | Iterable[bytes],
) -> tuple[dict[str, Any], Iterator[RecordedEvent], dict[str, Any]]:
    """The export's header, its events (read lazily) and, once they are read, its end.
    A line that is not what it should be is a `CorruptLogError` (`verify_export`
    reports it as a problem instead)."""
    reading = _Reading(lines)
    end: dict[str, Any] = {}

    def events() -> Iterator[RecordedEvent]:
        for item in reading.items():
            if isinstance(item, _Unreadable):
                raise CorruptLogError(item.message, position=item.position)
            yield item
        if reading.extended is not None:
            raise CorruptLogError(reading.extended.message)
        end.update(reading.end or {})

    return reading.header, events(), end


def verify_export(lines: Iterable[str] | Iterable[bytes]) -> AuditReport:
    """Verify an export with no database: its header, chains, decisions, and its end anchor.

    A file that is not a flowtrail export (its first line does not say so) is a
    `CorruptLogError`; once it is one, whatever is wrong in it is a problem reported."""
    reading = _Reading(lines)
    whole = reading.header.get("scope") == "all"
    auditor = Auditor(contiguous=whole)
    last: RecordedEvent | _Unreadable | None = None
    count = 0
    for item in reading.items():
        if isinstance(item, _Unreadable):
            auditor.unreadable(item.message, position=item.position, kind="line")
        else:
            auditor.check(item)
        last, count = item, count + 1
    report = auditor.finish()
    problems = [
        *_header_problems(reading.header, auditor.policies_used()),
        *report.problems,
        *_end_problems(reading, whole, count, last, report.log_digest),
    ]
    log = reading.header.get("log")
    return msgspec.structs.replace(report, problems=tuple(problems), export_of=log if _is_uuid(log) else None)


_POLICY = re.compile(r"(.+)@([0-9]{1,9})")


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def _header_problems(header: dict[str, Any], used: frozenset[tuple[str, int]]) -> list[Problem]:
    """What the header claims that is malformed, or that its events contradict."""
    found: list[str] = []
    log, scope, policies = header.get("log"), header.get("scope"), header.get("policies")
    if log is not None and not _is_uuid(log):
        found.append(f"the header names the log {_shown(log)}, which is not a log id")
    if scope != "all" and not (isinstance(scope, str) and scope.startswith("run:") and _is_uuid(scope[4:])):
        found.append(f'the header\'s scope is {_shown(scope)}, neither "all" nor "run:" and a run id')
    if not isinstance(policies, list) or not all(isinstance(text, str) for text in policies):
        found.append("the header's policies are not a list of policy names")
        return [Problem(kind="header", message=message) for message in found]
    named: set[tuple[str, int]] = set()
    for text in policies:
        match = _POLICY.fullmatch(text)
        if match is None:
            found.append(f"the header names the policy {_shown(text)}, which is not a name@version")
            continue
        policy = (match[1], int(match[2]))
        named.add(policy)
        if policy not in POLICIES and policy not in used:
            found.append(
                f"the header names the policy {text}, which no event uses and this flowtrail does not know"
            )
    found += [
        f"events were decided by {name}@{version}, which the header's policies do not name"
        for name, version in sorted(used - named)
    ]
    return [Problem(kind="header", message=message) for message in found]


def _end_problems(
    reading: _Reading,
    whole: bool,
    count: int,
    last: RecordedEvent | _Unreadable | None,
    digest: str | None,
) -> list[Problem]:
    """The end line against the events read: how many, the last one's place and hash,
    and for a whole log its digest."""
    found: list[str] = []
    if reading.extended is not None:
        found.append(reading.extended.message)
    end = reading.end
    if end is None:
        found.append("the export has no end line: it was cut short")
        return [Problem(kind="anchor", message=message) for message in found]
    events = end.get("events")
    if type(events) is not int or events != count:
        found.append(
            f"the export holds {count} event(s) but its end line records {_shown(events)}: "
            "events were added or removed"
        )
    if not isinstance(last, _Unreadable):
        position, seal = (0, "") if last is None else (last.position, last.hash.hex())
        recorded = end.get("last_position")
        if type(recorded) is not int or recorded != position:
            found.append(
                f"the export's last event is at position {position}, but its end line records "
                f"{_shown(recorded)}: events were added or removed, or the end line was changed"
            )
        if end.get("last_hash") != seal:
            found.append(
                "the export's last event does not carry the hash its end line records: "
                "events were added or removed, or the last one was changed"
            )
    if whole and "log_digest" not in end:
        found.append(
            "the export of the whole log has no log digest on its end line: it was removed, "
            "and with it the check of every event against it"
        )
    elif whole and end["log_digest"] != digest:
        found.append(
            "the export's events are not those its end line's log digest was made of: "
            "an event was changed, removed, added or reordered"
        )
    elif not whole and "log_digest" in end:
        found.append(
            "the end line of an export of one run carries a log digest, which only a whole log's has"
        )
    return [Problem(kind="anchor", message=message) for message in found]
