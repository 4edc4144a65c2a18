"""`verify`: a sound log passes; every kind of tampering is named at its first position."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import msgspec
import pytest

from flowtrail.core import (
    GENESIS,
    Facts,
    FlowRunFacts,
    RecordedEvent,
    SetStateStatus,
    StateProposed,
    StateType,
    encode_event,
    verify,
)
from flowtrail.core import states as s
from flowtrail.testing import T0, MemoryLog, at

Records = list[RecordedEvent]


def sample_log() -> MemoryLog:
    """A parent flow with a task and a subflow, a retry and a rejected proposal."""
    log = MemoryLog()
    parent = log.create_flow_run("parent", retries=1)
    log.propose(parent.id, s.Pending(), at=at(1))
    log.propose(parent.id, s.Running(), at=at(2))
    task = log.create_task_run(parent.id, "load", at=at(3))
    log.propose(task.id, s.Running(), at=at(4))
    log.propose(task.id, s.Completed(), at=at(5))
    tracker = log.create_task_run(parent.id, "child", at=at(6))
    child = log.create_flow_run("child", parent_task_run_id=tracker.id, at=at(6))
    log.propose(child.id, s.Pending(), at=at(7))
    log.propose(child.id, s.Running(), at=at(8))
    log.propose(child.id, s.Completed(data={"type": "json", "value": 1}), at=at(9))
    log.propose(parent.id, s.Failed(message="boom"), at=at(10))  # retried: AwaitingRetry
    log.propose(parent.id, s.Running(), at=at(11))
    log.propose(parent.id, s.Completed(), at=at(12))
    log.propose(parent.id, s.Crashed(), at=at(13))  # aborted: already final; recorded all the same
    return log


def reseal(records: Records) -> Records:
    """What a tamperer who knows the hash function does after changing events."""
    heads: dict[str, bytes] = {}
    out = []
    for record in records:
        fixed = msgspec.structs.replace(
            record, hash=record.expected_hash(heads.get(record.stream_id, GENESIS))
        )
        heads[record.stream_id] = fixed.hash
        out.append(fixed)
    return out


def with_event(record: RecordedEvent, change: Callable[[StateProposed], StateProposed]) -> RecordedEvent:
    event = record.decode()
    assert isinstance(event, StateProposed)
    return msgspec.structs.replace(record, data=encode_event(change(event)))


def first_problem_position(records: Records, **kw: object) -> int | None:
    report = verify(records, **kw)  # type: ignore[arg-type]
    assert not report.ok
    first = report.first_problem
    assert first is not None
    return first.position


def test_a_sound_log_verifies() -> None:
    log = sample_log()
    report = verify(log.records)
    assert report.ok, report.problems
    assert (report.events_checked, report.last_position) == (len(log.records), len(log.records))


def test_a_flipped_byte_is_named_at_its_position() -> None:
    records = sample_log().records
    target = records[6]
    flipped = bytearray(target.data)
    flipped[40] ^= 0x01
    records[6] = msgspec.structs.replace(target, data=bytes(flipped))
    assert first_problem_position(records) == target.position


def test_a_row_holding_a_value_of_the_wrong_type_is_named_and_nothing_after_it_is_missing() -> None:
    records = sample_log().records
    target = records[6]
    records[6] = msgspec.structs.replace(target, recorded_at=float(target.recorded_at))
    report = verify(records)
    assert [(p.kind, p.position) for p in report.problems if p.kind in ("row", "position")] == [
        ("row", target.position)
    ]


def test_a_removed_event_is_named_at_the_gap() -> None:
    records = sample_log().records
    removed = records.pop(5)
    report = verify(records)
    assert report.first_problem is not None
    assert report.first_problem.kind == "position"
    assert report.first_problem.position == removed.position + 1


def test_swapped_events_are_named() -> None:
    records = sample_log().records
    a, b = records[4], records[5]
    records[4] = msgspec.structs.replace(b, position=a.position)
    records[5] = msgspec.structs.replace(a, position=b.position)
    assert first_problem_position(records) == a.position


def test_a_duplicated_event_is_named() -> None:
    records = sample_log().records
    records.insert(8, records[7])
    assert first_problem_position(records) == records[8].position


def _first_proposal(records: Records, wanted: Callable[[StateProposed], bool]) -> int:
    """The index of the first recorded proposal ``wanted`` picks."""
    return next(
        i
        for i, r in enumerate(records)
        if r.event_type == "state_proposed" and isinstance(e := r.decode(), StateProposed) and wanted(e)
    )


def test_a_decision_differing_deep_inside_a_long_field_names_that_inner_field() -> None:
    """The two values of a long field, each shown cut short, could read the same: the
    problem names the innermost field that differs, with its two values whole."""
    records = sample_log().records
    index = _first_proposal(
        records,
        lambda e: (
            e.decision.bookkeeping is not None and e.decision.bookkeeping.expected_start_time is not None
        ),
    )

    def later_start(event: StateProposed) -> StateProposed:
        bookkeeping = event.decision.bookkeeping
        assert bookkeeping is not None
        assert bookkeeping.expected_start_time is not None
        moved = msgspec.structs.replace(
            bookkeeping, expected_start_time=bookkeeping.expected_start_time + timedelta(microseconds=1)
        )
        return msgspec.structs.replace(
            event, decision=msgspec.structs.replace(event.decision, bookkeeping=moved)
        )

    records[index] = with_event(records[index], later_start)
    problem = verify(reseal(records)).first_problem
    assert problem is not None
    assert problem.position == records[index].position
    assert (
        f"position {problem.position}: recorded bookkeeping.expected_start_time datetime.datetime("
        in problem.message
    )
    assert "..." not in problem.message


def test_a_changed_decision_is_caught_even_with_a_recomputed_chain() -> None:
    """Re-deciding, not the hash, is what catches a forger who knows the hash function."""
    records = sample_log().records
    index = _first_proposal(records, lambda e: e.decision.status is SetStateStatus.ABORT)

    def accept(event: StateProposed) -> StateProposed:
        decision = msgspec.structs.replace(
            event.decision, status=SetStateStatus.ACCEPT, rule=None, reason=None, state=event.proposal.state
        )
        return msgspec.structs.replace(event, decision=decision)

    records[index] = with_event(records[index], accept)
    records = reseal(records)
    report = verify(records)
    assert report.first_problem is not None
    assert report.first_problem.kind == "decision"
    assert report.first_problem.position == records[index].position
    assert "recorded ACCEPT" in report.first_problem.message


def test_false_facts_about_the_enclosing_flow_are_caught() -> None:
    records = sample_log().records
    index = next(
        i
        for i, r in enumerate(records)
        if r.event_type == "state_proposed"
        and isinstance(e := r.decode(), StateProposed)
        and e.facts.flow_run is not None
    )

    def lie(event: StateProposed) -> StateProposed:
        assert event.facts.flow_run is not None
        facts = msgspec.structs.replace(event.facts.flow_run, state_type=StateType.PAUSED)
        return msgspec.structs.replace(event, facts=Facts(flow_run=facts))

    records[index] = with_event(records[index], lie)
    report = verify(reseal(records))
    kinds = {p.kind for p in report.problems}
    assert "facts" in kinds


def test_a_subflow_state_without_its_mirror_is_caught() -> None:
    """The parent task run's last copy removed (so no version gap gives it away)."""
    records = sample_log().records
    index = max(
        i
        for i, r in enumerate(records)
        if isinstance(e := r.decode(), StateProposed) and e.proposal.proposer == "subflow-mirror"
    )
    mirror = records.pop(index)
    renumbered = [
        msgspec.structs.replace(r, position=r.position - 1) if r.position > mirror.position else r
        for r in records
    ]
    report = verify(reseal(renumbered))
    assert [p.kind for p in report.problems] == ["mirror"]


def test_a_mirror_recorded_in_another_append_is_caught() -> None:
    records = sample_log().records
    index = next(
        i
        for i, r in enumerate(records)
        if isinstance(e := r.decode(), StateProposed) and e.proposal.proposer == "subflow-mirror"
    )
    records[index] = msgspec.structs.replace(records[index], recorded_at=records[index].recorded_at + 1)
    report = verify(reseal(records))
    assert report.first_problem is not None
    assert (report.first_problem.kind, report.first_problem.position) == ("mirror", records[index].position)


def test_an_event_moved_to_another_stream_is_caught() -> None:
    records = sample_log().records
    records[3] = msgspec.structs.replace(records[3], stream_id=records[0].stream_id)
    report = verify(reseal(records))
    assert not report.ok


def test_a_forced_proposal_decided_by_the_core_policy_is_caught() -> None:
    records = sample_log().records
    index = next(i for i, r in enumerate(records) if r.event_type == "state_proposed")

    def force(event: StateProposed) -> StateProposed:
        return msgspec.structs.replace(event, proposal=msgspec.structs.replace(event.proposal, force=True))

    records[index] = with_event(records[index], force)
    report = verify(reseal(records))
    assert report.first_problem is not None
    assert report.first_problem.kind == "policy"


def test_an_unknown_policy_version_is_named() -> None:
    records = sample_log().records
    index = next(i for i, r in enumerate(records) if r.event_type == "state_proposed")

    def future(event: StateProposed) -> StateProposed:
        return msgspec.structs.replace(
            event, decision=msgspec.structs.replace(event.decision, policy_version=99)
        )

    records[index] = with_event(records[index], future)
    report = verify(reseal(records))
    assert report.first_problem is not None
    assert (report.first_problem.kind, report.first_problem.position) == ("policy", records[index].position)


def test_undecodable_bytes_are_named_not_raised() -> None:
    records = sample_log().records
    records[2] = msgspec.structs.replace(records[2], data=b"\xff\x00")
    report = verify(reseal(records))
    assert report.first_problem is not None
    assert (report.first_problem.kind, report.first_problem.position) == ("decode", 3)


def test_a_cut_off_tail_passes_without_an_anchor() -> None:
    """What a hash chain cannot show alone: a shorter log is still a sound log."""
    records = sample_log().records
    assert verify(records[:-3]).ok


def test_a_cut_off_tail_is_caught_against_an_anchor() -> None:
    records = sample_log().records
    head = records[-1]
    assert verify(records, anchor=(head.position, head.hash)).ok
    report = verify(records[:-3], anchor=(head.position, head.hash))
    assert report.first_problem is not None
    assert report.first_problem.kind == "anchor"


def test_a_replaced_tail_is_caught_against_an_anchor() -> None:
    records = sample_log().records
    head = records[-1]
    records[-1] = msgspec.structs.replace(head, recorded_at=head.recorded_at + 1)
    report = verify(reseal(records), anchor=(head.position, head.hash))
    assert not report.ok


@pytest.mark.parametrize("problems", [1, 5])
def test_the_report_keeps_at_most_the_problems_asked_for(problems: int) -> None:
    records = [msgspec.structs.replace(r, hash=b"\x00" * 32) for r in sample_log().records]
    report = verify(records, max_problems=problems)
    assert len(report.problems) == problems
    assert report.truncated


def test_a_selection_of_streams_verifies_without_contiguous_positions() -> None:
    log = sample_log()
    parent = log.records[0].stream_id
    selection = [r for r in log.records if r.stream_id == parent]
    assert not verify(selection).ok
    assert verify(selection, contiguous=False).ok


def test_memory_log_facts_are_those_of_the_enclosing_flow() -> None:
    log = MemoryLog()
    flow = log.create_flow_run()
    log.propose(flow.id, s.Running(), at=T0)
    task = log.create_task_run(flow.id)
    log.propose(task.id, s.Running(), at=T0)
    event = log.events_of(task.id)[-1]
    assert isinstance(event, StateProposed)
    assert event.facts.flow_run == FlowRunFacts(
        flow_run_id=flow.id, version=2, state_type=StateType.RUNNING, state_name="Running", run_count=1
    )


def test_a_row_holding_a_value_of_the_wrong_type_is_named_not_raised() -> None:
    records = sample_log().records
    records[2] = msgspec.structs.replace(records[2], version="3")  # type: ignore[arg-type]
    report = verify(records)
    assert report.problems[0].kind == "row"
    assert "position 3" in report.problems[0].message


# --- the log digest: an anchor for every run at once -----------------------------------------


def _forged_result(records: Records) -> Records:
    """The first run's completed result changed, and every chain computed again: nothing a
    policy decides differs, so only an anchor kept elsewhere can show it."""
    index = next(
        i
        for i, r in enumerate(records)
        if r.event_type == "state_proposed"
        and (e := r.decode())
        and isinstance(e, StateProposed)
        and e.proposal.state.type is StateType.COMPLETED
    )

    def richer(event: StateProposed) -> StateProposed:
        state = msgspec.structs.replace(event.proposal.state, message="forged")
        written = (
            msgspec.structs.replace(event.decision.state, message="forged") if event.decision.state else None
        )
        return msgspec.structs.replace(
            event,
            proposal=msgspec.structs.replace(event.proposal, state=state),
            decision=msgspec.structs.replace(event.decision, state=written),
        )

    forged = list(records)
    forged[index] = with_event(forged[index], richer)
    return reseal(forged)


def test_a_whole_log_check_reports_the_digest_of_every_events_hash_in_order() -> None:
    records = sample_log().records
    report = verify(records)
    assert report.log_digest == hashlib.sha256(b"".join(r.hash for r in records)).hexdigest()


def test_a_row_holding_a_value_of_the_wrong_type_still_counts_in_the_log_digest() -> None:
    """An export of the log ends with the digest of every row's hash, this one's too."""
    records = sample_log().records
    records[6] = msgspec.structs.replace(records[6], recorded_at=float(records[6].recorded_at))
    report = verify(records)
    assert report.log_digest == hashlib.sha256(b"".join(r.hash for r in records)).hexdigest()


def test_a_check_of_some_runs_reports_no_log_digest() -> None:
    records = sample_log().records
    assert verify(records[2:], first_position=3).log_digest is None
    assert verify(records, contiguous=False).log_digest is None


def test_a_run_rewritten_with_its_chain_recomputed_passes_without_an_anchor() -> None:
    assert verify(_forged_result(sample_log().records)).ok


def test_the_log_digest_as_anchor_catches_a_run_rewritten_with_its_chain_recomputed() -> None:
    records = sample_log().records
    digest = bytes.fromhex(verify(records).log_digest or "")
    forged = _forged_result(records)
    report = verify(forged, anchor=(records[-1].position, digest))
    assert [p.kind for p in report.problems] == ["anchor"]
    assert "changed, removed, added or reordered" in report.problems[0].message


def test_the_log_digest_at_an_earlier_position_still_holds_after_more_events() -> None:
    records = sample_log().records
    digest = bytes.fromhex(verify(records[:5]).log_digest or "")
    assert verify(records, anchor=(5, digest)).ok


def test_the_log_digest_as_anchor_catches_events_cut_from_the_end() -> None:
    records = sample_log().records
    digest = bytes.fromhex(verify(records).log_digest or "")
    report = verify(records[:-1], anchor=(records[-1].position, digest))
    assert [p.kind for p in report.problems] == ["anchor"]
    assert "cut from its end" in report.problems[0].message


def test_the_digest_of_an_empty_log_anchors_position_zero() -> None:
    empty = verify([])
    assert empty.log_digest == hashlib.sha256(b"").hexdigest()
    anchor = (0, bytes.fromhex(empty.log_digest or ""))
    assert verify([], anchor=anchor).ok
    assert verify(sample_log().records, anchor=anchor).ok
