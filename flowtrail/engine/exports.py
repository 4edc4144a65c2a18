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

A check reads an export only as the exporter writes it: each kind of line holds its own
fields, each once (JSON keeps the last of a field spelt twice, which a check would
otherwise read past); text is text UTF-8 can hold; hashes are lowercase hexadecimal
digits; the file starts with no byte-order mark. Anything else is a problem of the
export, named with its line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import Counter
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
        yield line  # before the rest is dropped: a first line that never ends is refused at once
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := binary.readline(MAX_LINE + 1)) and not rest.endswith(b"\n"):
                pass


class _DamageError(Exception):
    """What is wrong with a line, as the end of a sentence ("is not JSON ...")."""

    def __init__(self, predicate: str, position: int | None = None) -> None:
        super().__init__(predicate)
        self.predicate = predicate
        self.position = position
        self.seal: bytes | None = None


def _begins_an_end_line(text: str | bytes) -> bool:
    """Whether a line begins as the exporter begins its end line."""
    if isinstance(text, bytes):
        return text[:64].lstrip().startswith(b'{"end"')
    return text[:64].lstrip().startswith('{"end"')


@dataclass(frozen=True)
class _Unreadable:
    """A line of a recognised export that is not the event or end line it should be."""

    message: str
    #: Where the line says it sits in the log, when it says so legibly.
    position: int | None = None
    #: The hash the line holds, when it holds one legibly.
    seal: bytes | None = None


#: The fields each kind of line holds, as `ExportWriter` writes them (an event holds
#: ``data`` or ``data_hex``). Any other field is one the exporter did not write, which a
#: check of the line would silently pass over: it is a problem.
_HEADER_FIELDS = frozenset({"format", "version", "log", "scope", "policies"})
_EVENT_FIELDS = frozenset(
    {
        "position",
        "stream_id",
        "version",
        "event_type",
        "schema_version",
        "recorded_at",
        "data",
        "data_hex",
        "hash",
    }
)
_END_FIELDS = frozenset({"events", "last_position", "last_hash", "log_digest"})

#: Hexadecimal digits as the exporter writes them (`bytes.hex`): lowercase, in pairs,
#: nothing between. One spelling, so that the end line's hashes (compared as text) and
#: the events' (read as bytes) follow one rule.
_HEX = re.compile(r"(?:[0-9a-f]{2})*")

_BOM = "\ufeff"


@dataclass(frozen=True)
class _Line:
    """A line's JSON object, and every key it (or an object in it) spells twice or more:
    JSON keeps the last, so the line says two things and a check would read only one."""

    fields: dict[str, Any]
    repeated: tuple[str, ...]


def _object(text: str | bytes) -> _Line:
    if len(text) > MAX_LINE:
        raise _DamageError(f"is longer than any event can be (over {MAX_LINE:,} bytes)")
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise _DamageError("is not UTF-8 text") from None
    if text.startswith(_BOM):  # the parser's own words for it name a codec
        raise _DamageError("starts with a byte-order mark, which no line of an export does")
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        fields = dict(items)
        if len(fields) < len(items):
            counts = Counter(key for key, _ in items)
            repeated.extend(key for key, count in counts.items() if count > 1)
        return fields

    try:
        value = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise _DamageError(f"is not JSON: {_where(exc)}") from None
    except ValueError:  # an integer of more digits than Python converts (4,300 by default)
        raise _DamageError("holds a number of more digits than any field of an export has") from None
    except RecursionError:
        raise _DamageError("nests values deeper than any line of an export does") from None
    if not isinstance(value, dict):
        raise _DamageError("is not a JSON object")
    return _Line(value, tuple(repeated))


def _holdable(text: str) -> bool:
    """Whether UTF-8 can hold ``text``: JSON can spell a lone surrogate ("\\ud800"),
    which no event's stored text holds and no report could print."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    if not _holdable(value):
        raise _DamageError(f"is not an event: its {key} is not text UTF-8 can hold")
    return value


def _field(item: dict[str, Any], key: str) -> Any:
    if key not in item:
        raise _DamageError(f"is not an event (no {key!r})")
    return item[key]


def _hex(item: dict[str, Any], key: str) -> bytes:
    if _HEX.fullmatch(text := _text(item, key)) is None:
        raise _DamageError(f"is not an event: its {key} is not lowercase hexadecimal digits in pairs")
    return bytes.fromhex(text)


def _bytes(item: dict[str, Any]) -> bytes:
    """The event's stored bytes: its ``data`` text, or ``data_hex`` where they are not UTF-8."""
    if "data_hex" in item:
        if "data" in item:
            raise _DamageError("is not an event: it has both data and data_hex")
        return _hex(item, "data_hex")
    return _text(item, "data").encode()


def _record(line: _Line) -> RecordedEvent:
    item, repeated = line.fields, line.repeated
    try:
        if repeated:
            raise _DamageError(f"is not an event: it holds the field {_shown(repeated[0])} twice")
        if unknown := sorted(item.keys() - _EVENT_FIELDS):
            raise _DamageError(
                f"is not an event: it holds the field {_shown(unknown[0])}, which no event has"
            )
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
        # What of the line is still legible keeps it in the log: its place, so that the
        # events after it are not missing, and its hash, so that the log digest is made
        # of the events the export's end line's was (an unchanged export of a damaged log
        # names the damage, and only it, as a check of the log does).
        position = item.get("position") if "position" not in repeated else None
        low, high = _RANGES["position"]
        if type(position) is int and low <= position <= high:
            exc.position = position
        if "hash" not in repeated:
            with contextlib.suppress(_DamageError):
                exc.seal = _hex(item, "hash")
        raise


class _Reading:
    """An export being read: its header (checked to be one), then its lines in turn."""

    def __init__(self, lines: Iterable[str] | Iterable[bytes]) -> None:
        self._numbered: Iterator[tuple[int, str | bytes]] = iter(enumerate(lines, start=1))
        try:
            _, first = next(self._numbered)
        except StopIteration:
            raise CorruptLogError("the export is empty") from None
        # A byte-order mark is what an editor adds on saving: the export is still
        # recognisable, and everything else in it is checked, but it is not the file
        # the exporter wrote (which never starts with one), so it is a problem.
        if isinstance(first, bytes):
            self.marked = first.startswith(_BOM.encode())
            first = first.removeprefix(_BOM.encode())
        else:
            self.marked = first.startswith(_BOM)
            first = first.removeprefix(_BOM)
        try:
            header = _object(first)
        except _DamageError as exc:
            raise CorruptLogError(f"this is not a flowtrail export: its first line {exc.predicate}") from None
        fields = header.fields
        if fields.get("format") != FORMAT:
            raise CorruptLogError("this is not a flowtrail export (its first line does not say so)")
        version = fields.get("version")
        if type(version) is not int or version != VERSION:  # 1.0 and true are not 1
            raise CorruptLogError(f"export format version {_shown(version)} is not one this flowtrail reads")
        self.header = fields
        #: Keys the header spells twice or more.
        self.header_repeated = header.repeated
        #: The end line's fields, once it is read.
        self.end: dict[str, Any] | None = None
        #: What is wrong with the end line, once it is read.
        self.end_damage: list[str] = []
        #: A line after the end line (the first one), once one is read.
        self.extended: _Unreadable | None = None
        #: Whether the end line was read, legible or not.
        self.ended = False

    def items(self) -> Iterator[RecordedEvent | _Unreadable]:
        """Each event line, read as an event or as what is wrong with it. Reading stops
        at a line after the end line (`extended`)."""
        for number, text in self._numbered:
            if not text.strip():
                continue
            if self.ended:
                self.extended = _Unreadable(
                    f"line {number} of the export comes after its end line: lines were added to it"
                )
                return
            try:
                line = _object(text)
                if "end" in line.fields:
                    self._read_end(number, line)
                    continue
                yield _record(line)
            except _DamageError as exc:
                if _begins_an_end_line(text):
                    # The end line as the exporter begins it, damaged: most often a file
                    # cut short in its last line. Not an event, and no anchor to check.
                    self.ended = True
                    self.end_damage.append(
                        f"line {number} of the export is an end line that {exc.predicate}: "
                        "the export was cut short or its end line changed"
                    )
                    continue
                yield _Unreadable(f"line {number} of the export {exc.predicate}", exc.position, exc.seal)

    def _read_end(self, number: int, line: _Line) -> None:
        self.ended = True
        end = line.fields["end"]
        self.end = end if isinstance(end, dict) else {}
        unknown = sorted(line.fields.keys() - {"end"}) + sorted(self.end.keys() - _END_FIELDS)
        if not isinstance(end, dict):
            self.end_damage.append(
                f'line {number} of the export is an end line whose "end" is not a JSON object'
            )
        elif line.repeated:
            self.end_damage.append(
                f"line {number} of the export is an end line holding the field {_shown(line.repeated[0])} twice"
            )
        elif unknown:
            self.end_damage.append(
                f"line {number} of the export is an end line holding the field {_shown(unknown[0])}, "
                "which no end line has"
            )


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
        if reading.end_damage:
            raise CorruptLogError(reading.end_damage[0])
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
            auditor.unreadable(item.message, position=item.position, kind="line", seal=item.seal)
        else:
            auditor.check(item)
        last, count = item, count + 1
    report = auditor.finish()
    problems = [
        *_header_problems(reading, auditor.policies_used()),
        *report.problems,
        *_end_problems(reading, whole, count, last, report.log_digest),
    ]
    log = reading.header.get("log")
    return msgspec.structs.replace(report, problems=tuple(problems), export_of=log if _is_uuid(log) else None)


_POLICY = re.compile(r"(.+)@([0-9]{1,9})")


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def _header_problems(reading: _Reading, used: frozenset[tuple[str, int]]) -> list[Problem]:
    """What the header claims that is malformed, or that its events contradict."""
    header = reading.header
    found: list[str] = []
    if reading.marked:
        found.append(
            "the export starts with a byte-order mark, which flowtrail never writes: it was saved again since"
        )
    if reading.header_repeated:
        found.append(f"the header holds the field {_shown(reading.header_repeated[0])} twice")
    if unknown := sorted(header.keys() - _HEADER_FIELDS):
        found.append(f"the header holds the field {_shown(unknown[0])}, which no export's header has")
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
        if not _holdable(text):
            found.append(f"the header names the policy {_shown(text)}, which is not text UTF-8 can hold")
            continue
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
    found += reading.end_damage
    end = reading.end
    if end is None:
        if not reading.ended:
            found.append("the export has no end line: it was cut short")
        return [Problem(kind="anchor", message=message) for message in found]
    malformed = [key for key in ("last_hash", "log_digest") if key in end and not _is_hex(end[key])]
    found += [
        f"the end line's {key} is not lowercase hexadecimal digits in pairs, as an export writes it"
        for key in malformed
    ]
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
        if "last_hash" not in malformed and end.get("last_hash") != seal:
            found.append(
                "the export's last event does not carry the hash its end line records: "
                "events were added or removed, or the last one was changed"
            )
    if whole and "log_digest" not in end:
        found.append(
            "the export of the whole log has no log digest on its end line: it was removed, "
            "and with it the check of every event against it"
        )
    elif whole and "log_digest" not in malformed and end["log_digest"] != digest:
        found.append(
            "the export's events are not those its end line's log digest was made of: "
            "an event was changed, removed, added or reordered"
        )
    elif not whole and "log_digest" in end:
        found.append(
            "the end line of an export of one run carries a log digest, which only a whole log's has"
        )
    return [Problem(kind="anchor", message=message) for message in found]
