"""Re-checking a log: `verify` and the `Auditor` behind it.

Given recorded events in position order, the auditor checks, for each one:

- its position follows the previous one (a gap is a removed row, a repeat a copy);
- its version follows its stream's previous one, and its hash seals it to that one;
- its bytes decode, and it folds onto its run;
- a proposal was decided by a policy that may decide it (a forced proposal by a
  minimal policy), and deciding it again from the run as it was, with the recorded
  facts, gives exactly the recorded decision;
- the facts it recorded about its enclosing flow run were the flow run's at that point;
- a subflow state that was written is copied onto its parent task run, as that run's
  next event and in the same append.

It reports problems in position order, the first bad position first, each with a
sentence saying what disagrees. Memory grows with the number of runs, not events.

Each hash chains one run's events, so someone able to rewrite the database could
change a run's events and compute its chain again. What catches that is an anchor
kept elsewhere: the *log digest*, the SHA-256 of every event's hash in position order
up to a position, which a whole-log check reports (``AuditReport.log_digest``) and an
export ends with. ``verify(anchor=(position, digest))`` then fails if any event up to
that position was changed, removed, added or reordered since, or the log ends before
it. (An anchor may also be the hash of the event at the position, as before: that pins
the log's length and the chain of that event's run only.)
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable

import msgspec

from flowtrail.core.chain import GENESIS, RecordedEvent
from flowtrail.core.errors import CodecError, CorruptLogError, PolicyNotFoundError
from flowtrail.core.events import Decision, Event, Proposal, RunKind, StateProposed
from flowtrail.core.fold import RunView, evolve, flow_run_facts
from flowtrail.core.policies import (
    MIRROR_PROPOSER,
    MarkLateRunsPolicy,
    decide,
    default_policy,
    mirror_proposal,
    policy_named,
)

__all__ = ["AuditReport", "Auditor", "Problem", "verify"]


class Problem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One thing the log got wrong, where, and in words."""

    kind: str
    message: str
    position: int | None = None
    stream_id: str | None = None


class AuditReport(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The outcome of `verify`: ``ok`` when no problem was found."""

    events_checked: int
    streams_checked: int
    problems: tuple[Problem, ...]
    last_position: int
    truncated: bool = False
    #: The log digest (hex) at ``last_position``: the SHA-256 of every event's hash in
    #: position order, for a check of a whole log from its start (else None). Kept
    #: elsewhere, it is the anchor a later `verify` checks the log against.
    log_digest: str | None = None
    #: For an export: the id of the log its header says it was taken from. The header
    #: is not sealed, so this is what the export claims, not a proof of it.
    export_of: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


class _Stream:
    __slots__ = ("hash", "version", "view")

    def __init__(self) -> None:
        self.version = 0
        self.hash = GENESIS
        self.view: RunView | None = None


def _well_typed(recorded: RecordedEvent) -> bool:
    return (
        type(recorded.position) is int
        and type(recorded.stream_id) is str
        and type(recorded.version) is int
        and type(recorded.event_type) is str
        and type(recorded.schema_version) is int
        and type(recorded.recorded_at) is int
        and type(recorded.data) is bytes
        and type(recorded.hash) is bytes
    )


class Auditor:
    """Checks events one at a time (so a caller can report progress); see `verify`."""

    def __init__(
        self,
        *,
        first_position: int = 1,
        max_problems: int = 100,
        contiguous: bool = True,
        anchor: tuple[int, bytes] | None = None,
    ) -> None:
        # ``contiguous=False`` checks a selection of streams (one run's history), whose
        # positions only need to increase. ``anchor`` is a (position, hash) pair kept
        # outside the database: the log must reach that position with that hash, which
        # is the only way to notice events cut from the end of a log.
        self._contiguous = contiguous
        self._anchor = anchor
        self._anchor_seen: bytes | None = None
        self._anchor_digest: bytes | None = None
        # The log digest covers a whole log only: checked from its first position on.
        self._digest = hashlib.sha256() if contiguous and first_position == 1 else None
        if anchor is not None and anchor[0] == 0 and self._digest is not None:
            self._anchor_digest = self._digest.digest()  # the log before its first event
        self._expected_position = first_position
        self._last_position = first_position - 1
        self._max = max_problems
        self._streams: dict[str, _Stream] = {}
        self._problems: list[Problem] = []
        #: Every (policy, version) a recorded decision names, known here or not.
        self._policies: set[tuple[str, int]] = set()
        self._truncated = False
        self._checked = 0
        # Copies owed to parent task runs, by parent task stream: each written subflow
        # state must be the next event of its parent task run, recorded in the same
        # append (same recording time): (the copy's proposal, source position, recorded_at).
        self._mirrors: dict[str, deque[tuple[Proposal, int, int]]] = {}

    def _problem(
        self, kind: str, message: str, event: RecordedEvent | None, *, position: int | None = None
    ) -> None:
        """A problem at ``event`` (or, with no event to name, at ``position`` if known)."""
        if len(self._problems) >= self._max:
            self._truncated = True
            return
        self._problems.append(
            Problem(
                kind=kind,
                message=message,
                position=position if event is None else event.position,
                stream_id=None if event is None else event.stream_id,
            )
        )

    def check(self, recorded: RecordedEvent) -> None:
        """Check the next event of the log."""
        if not _well_typed(recorded):
            # A table rebuilt by hand can hold anything: name the row rather than fail on it.
            position = recorded.position
            self.unreadable(
                f"the row at position {position!r} holds a value of the wrong type",
                position=position if type(position) is int else None,
                seal=recorded.hash if type(recorded.hash) is bytes else None,
            )
            return
        self._checked += 1
        self._check_position(recorded)
        self._seal(recorded.position, recorded.hash)
        stream = self._streams.get(recorded.stream_id)
        if stream is None:
            stream = self._streams[recorded.stream_id] = _Stream()
        self._check_seal(recorded, stream)
        try:
            event = recorded.decode()
        except CodecError as exc:
            self._problem("decode", f"position {recorded.position} does not decode: {exc}", recorded)
            return
        if str(event.run_id) != recorded.stream_id:
            self._problem(
                "stream",
                f"position {recorded.position} is an event of run {event.run_id} stored in stream "
                f"{recorded.stream_id!r}",
                recorded,
            )
        self._check_mirror(recorded, event)
        before = stream.view
        try:
            stream.view = evolve(before, event)
        except CorruptLogError as exc:
            self._problem("fold", f"position {recorded.position}: {exc}", recorded)
            return
        if isinstance(event, StateProposed) and before is not None:
            self._check_decision(recorded, event, before)

    def unreadable(
        self, message: str, *, position: int | None = None, kind: str = "row", seal: bytes | None = None
    ) -> None:
        """The next event of the log could not be read as one (a row of the wrong
        types, a damaged line of an export): a problem. Where its position is known, it
        still takes its place in the log, so the events after it are not missing; where
        its hash (``seal``) is legible, it still counts in the log digest, as it does in
        the digest an export of the log ends with."""
        self._checked += 1
        self._problem(kind, message, None, position=position)
        if position is not None:
            self._last_position = max(self._last_position, position)
            self._expected_position = max(self._expected_position, position + 1)
        if seal is not None:
            self._seal(position, seal)

    def _seal(self, position: int | None, seal: bytes) -> None:
        """Fold the hash of the event at ``position`` into the log digest and the anchor."""
        if self._digest is not None:
            self._digest.update(seal)
        if self._anchor is not None and position == self._anchor[0]:
            self._anchor_seen = seal
            if self._digest is not None:
                self._anchor_digest = self._digest.digest()

    def policies_used(self) -> frozenset[tuple[str, int]]:
        """Every (policy name, version) the decisions checked so far were recorded as made by."""
        return frozenset(self._policies)

    def _check_position(self, recorded: RecordedEvent) -> None:
        position = recorded.position
        if position < 1:
            self._problem(
                "position",
                f"position {position} lies before position 1, where a log begins: a row was added",
                recorded,
            )
            return
        if position != self._expected_position:
            if position > self._expected_position and not self._contiguous:
                pass
            elif position > self._expected_position:
                missing = position - self._expected_position
                self._problem(
                    "position",
                    f"positions {self._expected_position}..{position - 1} are missing before position {position} "
                    f"({missing} event(s) removed)"
                    if missing > 1
                    else f"position {self._expected_position} is missing before position {position} "
                    "(an event was removed)",
                    recorded,
                )
            else:
                self._problem(
                    "position",
                    f"position {position} comes after position {self._last_position}: "
                    "the log is out of order or holds a copied event",
                    recorded,
                )
        self._last_position = max(self._last_position, position)
        self._expected_position = max(self._expected_position, position + 1)

    def _check_seal(self, recorded: RecordedEvent, stream: _Stream) -> None:
        if recorded.version != stream.version + 1:
            self._problem(
                "version",
                f"position {recorded.position} is version {recorded.version} of stream {recorded.stream_id!r}, "
                f"which was at version {stream.version}",
                recorded,
            )
        if recorded.hash != recorded.expected_hash(stream.hash):
            self._problem(
                "hash",
                f"the hash at position {recorded.position} does not seal its contents to the event before it "
                f"in stream {recorded.stream_id!r}: the event, or one before it, was altered",
                recorded,
            )
        stream.version = recorded.version
        stream.hash = recorded.hash

    def _check_mirror(self, recorded: RecordedEvent, event: Event) -> None:
        owed = self._mirrors.get(recorded.stream_id)
        if not owed:
            child = _mirrored_child(event)
            if child is not None and child in self._streams:
                # The subflow's events are checked here too, and none owes this copy.
                self._problem(
                    "mirror",
                    f"position {recorded.position} copies a state of subflow run {child} onto its parent "
                    "task run, but that run wrote no such state just before: the original was removed or changed",
                    recorded,
                )
            return
        proposal, source, recorded_at = owed.popleft()
        if not owed:
            del self._mirrors[recorded.stream_id]
        if (
            not isinstance(event, StateProposed)
            or event.proposal != proposal
            or recorded.recorded_at != recorded_at
        ):
            self._problem(
                "mirror",
                f"the subflow state written at position {source} is not copied onto its parent task run "
                f"at position {recorded.position}, the run's next event",
                recorded,
            )

    def _check_decision(self, recorded: RecordedEvent, event: StateProposed, before: RunView) -> None:
        recorded_decision = event.decision
        self._policies.add((recorded_decision.policy, recorded_decision.policy_version))
        try:
            policy = policy_named(recorded_decision.policy, recorded_decision.policy_version)
        except PolicyNotFoundError as exc:
            self._problem("policy", f"position {recorded.position}: {exc}", recorded)
            return
        allowed = {default_policy(before.kind, event.proposal.force).name}
        if before.kind is RunKind.FLOW and not event.proposal.force:
            allowed.add(MarkLateRunsPolicy.name)
        if policy.name not in allowed:
            self._problem(
                "policy",
                f"position {recorded.position} was decided by {policy.name}, which may not decide a "
                f"{'forced ' if event.proposal.force else ''}{before.kind.value} run proposal",
                recorded,
            )
            return
        if policy.name == "CoreTaskPolicy":
            self._check_facts(recorded, event, before)
        again = decide(before, event.proposal, event.facts, policy)
        if again != recorded_decision:
            self._problem(
                "decision",
                f"position {recorded.position}: {_difference(recorded_decision, again)}",
                recorded,
            )
        mirror = mirror_proposal(before, recorded_decision, event.proposal)
        if mirror is not None and before.parent_task_run_id is not None:
            owed = self._mirrors.setdefault(str(before.parent_task_run_id), deque())
            owed.append((mirror, recorded.position, recorded.recorded_at))

    def _check_facts(self, recorded: RecordedEvent, event: StateProposed, task: RunView) -> None:
        facts = event.facts.flow_run
        if task.flow_run_id is None:
            if facts is not None:
                self._problem(
                    "facts",
                    f"position {recorded.position} records a flow run for a task without one",
                    recorded,
                )
            return
        flow_stream = self._streams.get(str(task.flow_run_id))
        flow = None if flow_stream is None else flow_stream.view
        actual = None if flow is None else flow_run_facts(flow)
        if facts != actual:
            self._problem(
                "facts",
                f"position {recorded.position} was decided on flow run {task.flow_run_id} as {_facts_text(facts)}, "
                f"but at that point it was {_facts_text(actual)}",
                recorded,
            )

    def views(self) -> dict[str, RunView]:
        """Each run's view as its events checked so far fold it, by stream id."""
        return {
            stream_id: stream.view for stream_id, stream in self._streams.items() if stream.view is not None
        }

    def finish(self) -> AuditReport:
        """The report on everything checked so far."""
        if self._anchor is not None:
            self._check_anchor(*self._anchor)
        for owed in self._mirrors.values():
            for _, source, _ in owed:
                self._problem(
                    "mirror",
                    f"the subflow state written at position {source} is never copied onto its parent task run",
                    None,
                )
        self._mirrors.clear()
        return AuditReport(
            events_checked=self._checked,
            streams_checked=len(self._streams),
            problems=tuple(self._problems),
            last_position=self._last_position,
            truncated=self._truncated,
            log_digest=None if self._digest is None else self._digest.hexdigest(),
        )

    def _check_anchor(self, position: int, seal: bytes) -> None:
        if self._last_position < position:
            self._problem(
                "anchor",
                f"the log ends at position {self._last_position}, before the anchored position {position}: "
                "events were cut from its end",
                None,
            )
        elif seal not in (self._anchor_seen, self._anchor_digest):
            self._problem(
                "anchor",
                f"the log up to the anchored position {position} is not the one anchored: "
                "an event up to it was changed, removed, added or reordered since",
                None,
            )


def _mirrored_child(event: Event) -> str | None:
    """The subflow run whose state ``event`` copies onto its parent task run, if it is such a copy."""
    if not isinstance(event, StateProposed):
        return None
    proposal = event.proposal
    child = proposal.state.state_details.child_flow_run_id
    if proposal.proposer != MIRROR_PROPOSER or not proposal.force or child is None:
        return None
    return str(child)


def _facts_text(facts: object) -> str:
    if facts is None:
        return "absent"
    version = getattr(facts, "version", "?")
    state = getattr(facts, "state_type", None)
    return f"version {version} in state {state.value if state is not None else 'none'}"


def _difference(recorded: Decision, again: Decision) -> str:
    """The first field on which two decisions differ, in words."""
    if recorded.status != again.status:
        return (
            f"recorded {recorded.status.value} ({recorded.rule or 'no rule'}), but the policy decides "
            f"{again.status.value} ({again.rule or 'no rule'}: {again.reason or 'accepted'})"
        )
    name, mine, theirs = _first_difference("decision", recorded, again)
    if name == "decision":
        return "the decisions differ"
    name = name.removeprefix("decision.")
    return f"recorded {name} {_short(mine)}, but the policy gives {_short(theirs)}"


def _first_difference(name: str, mine: object, theirs: object) -> tuple[str, object, object]:
    """The innermost field (dotted name) where two values first differ, and its values:
    a long value shown cut short could otherwise hide what differs."""
    if type(mine) is type(theirs) and isinstance(mine, msgspec.Struct):
        for field in msgspec.structs.fields(mine):
            inner, other = getattr(mine, field.name), getattr(theirs, field.name)
            if inner != other:
                return _first_difference(f"{name}.{field.name}", inner, other)
    return name, mine, theirs


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def verify(
    events: Iterable[RecordedEvent],
    *,
    first_position: int = 1,
    max_problems: int = 100,
    contiguous: bool = True,
    anchor: tuple[int, bytes] | None = None,
) -> AuditReport:
    """Check a log (in position order); see the module's docstring.

    ``contiguous=False`` checks some streams of a log (their positions need only
    increase); the default checks a whole log from ``first_position``. ``anchor`` is a
    (position, hash) pair kept elsewhere that the log must still reach.
    """
    auditor = Auditor(
        first_position=first_position, max_problems=max_problems, contiguous=contiguous, anchor=anchor
    )
    for recorded in events:
        auditor.check(recorded)
    return auditor.finish()
