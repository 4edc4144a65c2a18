"""Exports: self-describing JSON lines that verify with no database, and catch edits."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from uuid import UUID

import msgspec
import pytest

from flowtrail import states
from flowtrail.core.errors import CorruptLogError
from flowtrail.engine import read_export, verify_export
from tests.engine.conftest import Orch, parent_with_subflow

#: A log id, as a log's header names it.
_LOG = "01a21031-0000-7000-8000-00000000c0de"


def small_log(orch: Orch) -> dict[str, UUID]:
    parent, tracker, child = parent_with_subflow(orch)
    orch.propose_state(parent.id, states.Completed())
    other = orch.create_flow_run("unrelated", state=states.Pending())
    return {"parent": parent.id, "tracker": tracker.id, "child": child.id, "other": other.id}


def exported(orch: Orch, run_id: UUID | None = None) -> list[str]:
    out = io.StringIO()
    orch.export(out, run_id)
    return out.getvalue().splitlines()


def test_an_export_of_the_whole_log_verifies(orch: Orch) -> None:
    small_log(orch)
    report = verify_export(exported(orch))
    assert report.ok
    assert report.events_checked == orch.last_position()


def test_the_export_returns_how_many_events_it_wrote(orch: Orch) -> None:
    small_log(orch)
    assert orch.export(io.StringIO()) == orch.last_position()


def test_an_export_of_a_run_holds_its_task_runs_and_subflows_but_not_unrelated_runs(orch: Orch) -> None:
    runs = small_log(orch)
    header, events, _ = read_export(exported(orch, runs["parent"]))
    streams = {record.stream_id for record in events}
    assert header["scope"] == f"run:{runs['parent']}"
    assert streams == {str(runs["parent"]), str(runs["tracker"]), str(runs["child"])}


def test_an_export_of_a_subflow_holds_the_runs_above_it_and_verifies(orch: Orch) -> None:
    runs = small_log(orch)
    lines = exported(orch, runs["child"])
    _, events, _ = read_export(lines)
    assert {record.stream_id for record in events} == {str(runs[k]) for k in ("parent", "tracker", "child")}
    assert verify_export(lines).ok


def test_an_export_of_a_task_run_holds_its_flow_run_above_and_its_subflow_below_and_verifies(
    orch: Orch,
) -> None:
    runs = small_log(orch)
    lines = exported(orch, runs["tracker"])
    _, events, _ = read_export(lines)
    assert {record.stream_id for record in events} == {str(runs[k]) for k in ("parent", "tracker", "child")}
    assert verify_export(lines).ok


def test_a_line_after_the_end_line_is_a_problem_of_the_export(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    report = verify_export([*lines, lines[1]])
    assert [(p.kind, p.message.split(":")[0]) for p in report.problems] == [
        ("anchor", f"line {len(lines) + 1} of the export comes after its end line")
    ]


def test_an_export_cut_short_in_its_end_line_is_one_problem_and_no_extra_event(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    report = verify_export([*lines[:-1], lines[-1][:-40]])
    assert report.events_checked == len(lines) - 2  # the header and the end line are not events
    assert [(p.kind, p.message.split(":")[0]) for p in report.problems] == [
        ("anchor", f"line {len(lines)} of the export is an end line that is not JSON")
    ]
    assert report.problems[0].message.endswith("the export was cut short or its end line changed")


def test_reading_an_export_cut_short_in_its_end_line_is_an_error(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    _, events, _ = read_export([*lines[:-1], lines[-1][:-40]])
    with pytest.raises(CorruptLogError, match="is an end line that is not JSON"):
        list(events)


def test_reading_an_export_with_a_line_after_its_end_line_is_an_error(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    _, events, _ = read_export([*lines, lines[1]])
    with pytest.raises(CorruptLogError, match="after its end line"):
        list(events)


def test_a_damaged_event_line_keeps_its_place_when_its_position_is_legible(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    event = json.loads(lines[3]) | {"version": 2.0}
    report = verify_export([*lines[:3], json.dumps(event), *lines[4:]])
    assert (report.problems[0].kind, report.problems[0].position) == ("line", 3)
    assert "missing" not in " ".join(p.message for p in report.problems)


def test_bytes_that_are_not_utf8_are_exported_as_hexadecimal_and_read_back_exactly() -> None:
    from flowtrail.engine.exports import ExportWriter
    from tests.core.test_audit import sample_log

    records = sample_log().records
    damaged = [msgspec.structs.replace(records[0], data=b"\xff\x00\xff"), *records[1:]]
    out = io.StringIO()
    writer = ExportWriter(out, log_id=None, scope="all")
    writer.write_all(damaged)
    writer.finish()
    _, events, _ = read_export(out.getvalue().splitlines())
    assert list(events) == damaged


def test_a_copied_event_before_the_end_line_is_caught(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    report = verify_export([*lines[:-1], lines[-2], lines[-1]])
    assert not report.ok
    assert {problem.kind for problem in report.problems} >= {"anchor", "position"}


def test_an_edited_end_line_is_caught(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    end = json.loads(lines[-1])
    end["end"]["events"] -= 1
    report = verify_export([*lines[:-1], json.dumps(end)])
    assert [problem.kind for problem in report.problems] == ["anchor"]


def test_an_export_of_a_later_format_version_is_refused(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    header = json.loads(lines[0]) | {"version": 2}
    with pytest.raises(CorruptLogError, match="format version 2"):
        verify_export([json.dumps(header), *lines[1:]])


def test_an_empty_file_is_not_an_export() -> None:
    with pytest.raises(CorruptLogError, match="empty"):
        verify_export([])


def test_sync_and_async_exports_of_one_log_are_identical(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    writer = Orch("sync", url)
    small_log(writer)
    sync_lines = exported(writer)
    writer.close()
    reader = Orch("async", url)
    try:
        assert exported(reader) == sync_lines
    finally:
        reader.close()


def test_a_whole_export_ends_with_the_log_digest_a_verify_of_the_log_reports(orch: Orch) -> None:
    small_log(orch)
    end = json.loads(exported(orch)[-1])["end"]
    assert end["log_digest"] == orch.verify().log_digest


def test_an_export_of_one_run_carries_no_log_digest(orch: Orch) -> None:
    runs = small_log(orch)
    assert "log_digest" not in json.loads(exported(orch, runs["other"])[-1])["end"]


def test_an_export_rewritten_with_its_chains_and_last_hash_recomputed_is_caught_by_its_digest() -> None:
    """A forger who recomputes every chain and the end line's last hash, but not the digest."""
    from flowtrail.engine.exports import ExportWriter
    from tests.core.test_audit import _forged_result, sample_log

    records = sample_log().records
    forged = io.StringIO()
    writer = ExportWriter(forged, log_id=_LOG, scope="all")
    writer.write_all(_forged_result(records))
    writer.finish()
    lines = forged.getvalue().splitlines()
    end = json.loads(lines[-1])
    end["end"]["log_digest"] = verify_export(io.StringIO(_whole(records))).log_digest  # the honest one
    lines[-1] = json.dumps(end)
    report = verify_export(lines)
    assert [p.kind for p in report.problems] == ["anchor"]
    assert "log digest" in report.problems[0].message


def _whole(records: list) -> str:  # type: ignore[type-arg]
    from flowtrail.engine.exports import ExportWriter

    out = io.StringIO()
    writer = ExportWriter(out, log_id=_LOG, scope="all")
    writer.write_all(records)
    writer.finish()
    return out.getvalue()


def _changed(line: str, change: str) -> str:
    """``line`` with ``change`` (JSON members, comma-terminated) put first in its object."""
    return "{" + change + " " + line[1:]


def _first_problem(lines: list[str]) -> str:
    report = verify_export(lines)
    assert report.first_problem is not None, "the export verified"
    return report.first_problem.message


@pytest.mark.parametrize("field", ["data", "position", "hash", "stream_id"])
def test_an_event_line_spelling_a_field_twice_is_a_problem(orch: Orch, field: str) -> None:
    """JSON keeps the last of the two, so a check would pass over the first."""
    small_log(orch)
    lines = exported(orch)
    lines[5] = _changed(lines[5], f'"{field}": "forged",')
    assert (
        _first_problem(lines) == f'line 6 of the export is not an event: it holds the field "{field}" twice'
    )


def test_an_event_line_holding_a_field_no_event_has_is_a_problem(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[5] = _changed(lines[5], '"decision": "COMPLETED",')
    assert _first_problem(lines) == (
        'line 6 of the export is not an event: it holds the field "decision", which no event has'
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ('"scope": "all",', 'the header holds the field "scope" twice'),
        ('"signed_by": "me",', 'the header holds the field "signed_by", which no export\'s header has'),
    ],
)
def test_a_header_spelling_a_field_twice_or_one_no_header_has_is_a_problem(
    orch: Orch, change: str, problem: str
) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[0] = _changed(lines[0], change)
    assert _first_problem(lines) == problem


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('{"end": {', '{"end": {"events": 1, ', 'an end line holding the field "events" twice'),
        ('{"end": {', '{"signed_by": "me", "end": {', 'an end line holding the field "signed_by", which'),
        ('{"end": {', '{"end": {"signed_by": "me", ', 'an end line holding the field "signed_by", which'),
    ],
)
def test_an_end_line_spelling_a_field_twice_or_one_no_end_line_has_is_a_problem(
    orch: Orch, old: str, new: str, problem: str
) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[-1] = lines[-1].replace(old, new)
    (only,) = verify_export(lines).problems
    assert only.message.startswith(f"line {len(lines)} of the export is {problem}")
    with pytest.raises(CorruptLogError, match=problem):
        list(read_export(lines)[1])


@pytest.mark.parametrize("field", ["stream_id", "event_type", "hash"])
def test_an_event_text_utf8_cannot_hold_is_a_problem_naming_its_line_and_field(
    orch: Orch, field: str
) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[5] = lines[5].replace(f'"{field}": "', f'"{field}": "\\ud800', 1)
    assert (
        _first_problem(lines)
        == f"line 6 of the export is not an event: its {field} is not text UTF-8 can hold"
    )


def test_a_header_policy_utf8_cannot_hold_is_a_problem_a_report_can_print(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[0] = lines[0].replace('"policies": [', '"policies": ["X\\ud800@1", ')
    report = verify_export(lines)
    assert [p.message for p in report.problems] == [
        'the header names the policy "X\\ud800@1", which is not text UTF-8 can hold'
    ]
    msgspec.json.encode(report)


@pytest.mark.parametrize("version", ["1.0", "true"])
def test_an_export_whose_format_version_is_not_the_integer_1_is_refused(orch: Orch, version: str) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[0] = lines[0].replace('"version": 1', f'"version": {version}')
    with pytest.raises(CorruptLogError, match=f"format version {version} is not one"):
        verify_export(lines)


@pytest.mark.parametrize("spelling", [str.upper, lambda digits: digits[:2] + " " + digits[2:]])
def test_an_event_hash_not_spelled_as_the_exporter_writes_it_is_a_problem(
    orch: Orch, spelling: Callable[[str], str]
) -> None:
    small_log(orch)
    lines = exported(orch)
    event = json.loads(lines[5])
    event["hash"] = spelling(event["hash"])
    lines[5] = json.dumps(event)
    assert _first_problem(lines) == (
        "line 6 of the export is not an event: its hash is not lowercase hexadecimal digits in pairs"
    )


@pytest.mark.parametrize("key", ["last_hash", "log_digest"])
def test_an_end_line_hash_not_spelled_as_the_exporter_writes_it_is_the_one_problem(
    orch: Orch, key: str
) -> None:
    """The end line's hashes follow the events' rule, and an upper-case one is not also
    reported as a hash that differs."""
    small_log(orch)
    lines = exported(orch)
    end = json.loads(lines[-1])
    end["end"][key] = end["end"][key].upper()
    lines[-1] = json.dumps(end)
    assert [p.message for p in verify_export(lines).problems] == [
        f"the end line's {key} is not lowercase hexadecimal digits in pairs, as an export writes it"
    ]


def test_an_export_starting_with_a_byte_order_mark_is_a_problem_named_in_plain_words(orch: Orch) -> None:
    """An editor that adds the mark leaves the export recognisable: the rest is checked."""
    small_log(orch)
    lines = [line.encode() for line in exported(orch)]
    report = verify_export([b"\xef\xbb\xbf" + lines[0], *lines[1:]])
    assert [p.message for p in report.problems] == [
        "the export starts with a byte-order mark, which flowtrail never writes: it was saved again since"
    ]
    assert report.events_checked == orch.last_position()


def test_a_byte_order_mark_starting_an_event_line_is_a_problem_named_in_plain_words(orch: Orch) -> None:
    small_log(orch)
    lines = exported(orch)
    lines[5] = "\ufeff" + lines[5]
    assert _first_problem(lines) == (
        "line 6 of the export starts with a byte-order mark, which no line of an export does"
    )


def test_an_unchanged_export_of_a_log_with_an_unreadable_event_reports_what_the_log_check_does() -> None:
    """The exporter seals every event into the log digest, the unreadable one too."""
    from flowtrail.core import verify
    from tests.core.test_audit import sample_log

    records = sample_log().records
    records[6] = msgspec.structs.replace(records[6], recorded_at="abc")  # type: ignore[arg-type]
    exported_lines = _whole(records).splitlines()
    of_log, of_export = verify(records), verify_export(exported_lines)
    assert len(of_export.problems) == len(of_log.problems)
    assert of_export.log_digest == of_log.log_digest == json.loads(exported_lines[-1])["end"]["log_digest"]
