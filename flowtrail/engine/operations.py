"""The orchestrator's operations, each written once as a script.

A script reads views (`Fetch`) and appends (`Append`); `Orchestrator` runs it through
the async store (appends share group commits), `SyncOrchestrator` through the sync one.

Proposing is: read the run's view, gather the outside facts the policy needs (the
enclosing flow run, for a task), decide (pure), and append the decision at the view's
version, with the facts' stream expected at the version read. If anything moved in
between, the append is refused as a conflict and the proposal is decided again on the
new view; after a few conflicts, holding the log's write lock from the first read, so
that it cannot lose again (`Context._landed`).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar
from uuid import UUID

from msgspec import UNSET

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Append, Fetch, Locked, Row, Script, StreamWrite
from flowtrail.core.errors import (
    ConcurrencyConflictError,
    ContentionError,
    InvalidInputError,
    RunAlreadyExistsError,
    RunNotFoundError,
)
from flowtrail.core.events import (
    Decision,
    Event,
    Facts,
    FlowRunCreated,
    Proposal,
    RunKind,
    RunRenamed,
    RunSettingsUpdated,
    SetStateStatus,
    StateProposed,
    TaskRunCreated,
)
from flowtrail.core.fold import RunView, evolve, flow_run_facts
from flowtrail.core.policies import decide, mirror_proposal
from flowtrail.core.rules import arrived
from flowtrail.core.states import State, StateType
from flowtrail.engine.cache import ViewCache
from flowtrail.engine.checks import (
    check_name,
    check_parameters,
    check_retries,
    check_retry_delay,
    check_state,
    check_tags,
    run_id_of,
)
from flowtrail.engine.ids import new_run_id
from flowtrail.engine.keys import loose_task_run_key, stored_key, task_run_key
from flowtrail.engine.names import random_run_name
from flowtrail.engine.results import HistoryEntry, OrchestrationDetails, OrchestrationResult
from flowtrail.projections.queries import stored_view
from flowtrail.store.api import AppendResult
from flowtrail.store.scripts import LogSql, read_stream_script, record_of

__all__ = ["OPTIMISTIC_ATTEMPTS", "Context"]

T = TypeVar("T")

Clock = Callable[[], datetime]

#: Attempts at a write made without holding the log's write lock; later ones hold it.
OPTIMISTIC_ATTEMPTS = 3


class Landed(NamedTuple, Generic[T]):
    """What an attempt at a write returns once its append is made: its result, and
    the views it wrote, to cache once the append is committed."""

    result: T
    written: Sequence[RunView] = ()


@dataclass
class _Turn:
    """Proposals decided one after another for one append: each stream's events and its
    version before them, the streams only read, the views before and after, and where
    each of the run's decisions stands among its events."""

    events: dict[str, list[Event]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    expect: dict[str, int] = field(default_factory=dict)
    before: dict[str, object] = field(default_factory=dict)
    after: dict[str, RunView] = field(default_factory=dict)
    decided: list[tuple[RunView, int]] = field(default_factory=list)

    def add(
        self,
        writes: Sequence[StreamWrite],
        views: Sequence[RunView],
        expect: Mapping[str, int],
        known: Mapping[str, object],
    ) -> None:
        for write in writes:
            self.events.setdefault(write.stream_id, []).extend(write.events)
            self.versions.setdefault(write.stream_id, write.expected_version or 0)
        for view in views:
            self.after[str(view.id)] = view
        for stream_id, version in expect.items():
            self.expect.setdefault(stream_id, version)
        for stream_id, hint in known.items():
            self.before.setdefault(stream_id, hint)
        if views:
            self.decided.append((views[0], len(self.events[str(views[0].id)]) - 1))

    def writes(self) -> list[StreamWrite]:
        return [StreamWrite(stream, events, self.versions[stream]) for stream, events in self.events.items()]


def _of_kind(view: RunView, kind: RunKind) -> RunView:
    """The view, if its run is of ``kind``; else RunNotFoundError saying what it is."""
    if view.kind is not kind:
        raise RunNotFoundError(view.id, wanted=f"{kind.value} run", found=f"{view.kind.value} run")
    return view


def _text_or_number(value: object, what: str) -> str:
    if isinstance(value, str):
        return str(value)  # a str subclass (an enum) as str() spells it, as it always was
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidInputError(f"{what} is a string or a whole number, not {value!r}")


def _accepted(decision: Decision) -> bool:
    return decision.status is SetStateStatus.ACCEPT


def _retrying(decision: Decision) -> bool:
    """Whether a caller proposes the next state at once: after an ACCEPT into a state
    that is not final, or a REJECT into a Scheduled one (a retry)."""
    reached = decision.state  # None where the answer wrote no state
    if reached is None or reached.is_final():
        return False
    return decision.status is SetStateStatus.ACCEPT or (
        decision.status is SetStateStatus.REJECT and reached.is_scheduled()
    )


@dataclass
class Context:
    """What every operation needs: the log's statements, the clock, the cache."""

    sql: LogSql
    clock: Clock
    cache: ViewCache = field(default_factory=ViewCache)
    max_attempts: int = 25
    proposer: str = "client"
    # -- reading -----------------------------------------------------------------------------

    def load(self, run_id: UUID, *, fresh: bool = False, from_log: bool = False) -> Script[RunView]:
        """The run's view: from the cache unless ``fresh``, else from the run views;
        folded from its events if ``from_log`` (a retry after a conflict: a rebuild by
        another process may hold its row behind the log for a while)."""
        if not fresh and not from_log:
            cached = self.cache.get(run_id)
            if cached is not None:
                return cached
        view = yield from (self.folded(run_id) if from_log else self.view_of(run_id))
        if view is None:
            raise RunNotFoundError(run_id)
        self.cache.put(view)
        return view

    def view_of(self, run_id: UUID, kind: RunKind | None = None) -> Script[RunView | None]:
        """The run's view (of ``kind``, if given): its stored row, or where the views are
        not whole (being rebuilt, here or by another process; stale) or hold no row for
        it, folded from its events. None for no such run; RunNotFoundError saying what
        it is for a run of another kind."""
        view, whole = yield from stored_view(run_id, kind)
        if view is None or not whole:
            view = yield from self.folded(run_id)
        return view if view is None or kind is None else _of_kind(view, kind)

    def folded(self, run_id: UUID) -> Script[RunView | None]:
        """The run's view folded from its events; None for no such run."""
        view = None
        for record in (yield from self.records_of(run_id)):
            view = evolve(view, record.decode())
        return view

    def load_kind(self, run_id: UUID, kind: RunKind) -> Script[RunView]:
        return _of_kind((yield from self.load(run_id, fresh=True)), kind)

    def records_of(self, run_id: UUID, from_version: int = 1) -> Script[list[RecordedEvent]]:
        return (yield from read_stream_script(self.sql, str(run_id), from_version))

    def record_at(self, position: int) -> Script[RecordedEvent]:
        rows: list[Row] = yield Fetch(self.sql.read_batch, (position, 1))
        return record_of(rows[0])

    # -- writing -----------------------------------------------------------------------------

    def _landed(self, run_id: UUID, attempt: Callable[[bool], Script[Landed[T]]]) -> Script[T]:
        """What ``attempt(fresh)`` returns once its append lands; the views it wrote are
        cached then.

        The first attempts decide on what they read and append at the versions read;
        where another writer moved a stream on meanwhile, the append is refused as a
        conflict and the next attempt (``fresh``) reads again. After `OPTIMISTIC_ATTEMPTS`
        conflicts, every attempt holds the log's write lock from its first read
        (`Locked`): no other writer can move a stream before it appends, so many writers
        on one run each land in turn instead of giving up. ContentionError after
        ``max_attempts``.
        """
        for number in range(self.max_attempts):
            locked = number >= OPTIMISTIC_ATTEMPTS
            script = attempt(number > 0 or locked)
            try:
                landed: Landed[T] = (yield Locked(script)) if locked else (yield from script)
            except ConcurrencyConflictError:
                continue
            # Not before: a locked attempt's append is only committed once `Locked`
            # returns, and a view cached from a transaction that then failed would stand
            # in for the log (a cached view is only ever replaced by a later version).
            for view in landed.written:
                self.cache.put(view)
            return landed.result
        raise ContentionError(run_id, self.max_attempts)

    # -- proposing ---------------------------------------------------------------------------

    def propose(
        self, run_id: object, state: object, *, force: bool = False, idempotency_key: str | None = None
    ) -> Script[OrchestrationResult]:
        """Propose ``state`` for the run; see the module's docstring."""
        target = run_id_of(run_id)
        proposed = check_state(state)
        if type(force) is not bool:
            raise InvalidInputError(f"force is True or False, not {force!r}")
        key = (
            None
            if idempotency_key is None
            else stored_key("propose", str(target), check_name(idempotency_key, "an idempotency key"))
        )

        def attempt(fresh: bool) -> Script[Landed[OrchestrationResult]]:
            view = yield from self.load(target, from_log=fresh)
            now = self.clock()
            proposal = Proposal(
                state=arrived(proposed, now), proposed_at=now, force=force, proposer=self.proposer
            )
            writes, expect, views, before = yield from self._decided(view, proposal, fresh=fresh)
            result: AppendResult = yield Append(writes, key, expect, before)
            if result.replayed:
                return Landed((yield from self._replayed_proposal(result)))
            return Landed(_result_of(views[0], result.first_position), views)

        return (yield from self._landed(target, attempt))

    def propose_in_turn(self, run_id: object, proposed: Iterable[State]) -> Script[list[OrchestrationResult]]:
        """Propose ``proposed`` one after another and record them in one append.

        Each is decided on the run as the answers before it left it, and the next is
        proposed only where a caller would propose it at once: after an ACCEPT into a
        state that is not final, or a REJECT into a Scheduled state (a retry: the engine
        proposes Running next, and the policy answers WAIT while the retry is not due).
        It stops at any other answer, and at a final state. The results of the
        proposals decided, in order.
        """
        target = run_id_of(run_id)
        if isinstance(proposed, State | str | bytes) or not isinstance(proposed, Iterable):
            raise InvalidInputError(f"propose_in_turn takes a list of states, not {proposed!r}")
        wanted = [check_state(s) for s in proposed]
        if not wanted:
            raise InvalidInputError("propose_in_turn needs at least one state")

        def attempt(fresh: bool) -> Script[Landed[list[OrchestrationResult]]]:
            view = yield from self.load(target, from_log=fresh)
            turn = _Turn()
            yield from self._in_turn(
                view, [(s, False) for s in wanted], turn, fresh=fresh, going_on=_retrying
            )
            result: AppendResult = yield Append(turn.writes(), None, turn.expect, turn.before)
            results = [_result_of(view, result.first_position + offset) for view, offset in turn.decided]
            return Landed(results, list(turn.after.values()))

        return (yield from self._landed(target, attempt))

    def _in_turn(
        self,
        view: RunView,
        proposals: Sequence[tuple[State, bool]],
        turn: _Turn,
        *,
        fresh: bool,
        going_on: Callable[[Decision], bool],
    ) -> Script[RunView]:
        """Decide ``proposals`` (state, force) one after another on ``view`` into ``turn``,
        each with its subflow mirror; after an unforced one, go on only if ``going_on``
        says so. ``fresh``: re-read what the decisions read (after a conflict), once.
        The run's view after the last one decided."""
        if fresh:
            # Read from the log what the decisions read (a rebuild elsewhere may hold the
            # rows behind it); the cache then hands the decisions these views.
            for read in (view.parent_task_run_id, view.flow_run_id):
                if read is not None:
                    yield from self.load(read, from_log=True)
        for state, force in proposals:
            now = self.clock()
            proposal = Proposal(
                state=arrived(state, now), proposed_at=now, force=force, proposer=self.proposer
            )
            parent = None if view.parent_task_run_id is None else turn.after.get(str(view.parent_task_run_id))
            writes, expect, views, known = yield from self._decided(
                view, proposal, fresh=False, parent=parent
            )
            turn.add(writes, views, expect, known)
            view = views[0]
            decision = view.last_decision
            assert decision is not None
            if not force and not going_on(decision):
                break
        return view

    def _facts(
        self, view: RunView, proposal: Proposal, *, fresh: bool
    ) -> Script[tuple[Facts, dict[str, int]]]:
        flow = None
        expect: dict[str, int] = {}
        if view.kind is RunKind.TASK and view.flow_run_id is not None and not proposal.force:
            enclosing = yield from self.load(view.flow_run_id, from_log=fresh)
            flow = flow_run_facts(enclosing)
            # The decision read the flow run at this version: it must still be there at commit.
            expect[str(enclosing.id)] = enclosing.version
        state = proposal.state
        fresh_key = None
        if state.type is StateType.PAUSED and state.state_details.pause_key is None:
            fresh_key = uuid.uuid4().hex
        draw = None
        if view.empirical_policy.retry_jitter_factor and state.type is StateType.FAILED:
            draw = random.random()
        return Facts(flow_run=flow, fresh_key=fresh_key, random_draw=draw), expect

    def _decided(
        self, view: RunView, proposal: Proposal, *, fresh: bool, parent: RunView | None = None
    ) -> Script[tuple[list[StreamWrite], dict[str, int], list[RunView], dict[str, object]]]:
        """The writes for one decided proposal (and its subflow mirror), the views after,
        and the views before (handed to the inline projection so it need not read them).
        ``parent``: the parent task run's view where the caller already holds a newer one
        than the store's (an earlier mirror in the same append)."""
        facts, expect = yield from self._facts(view, proposal, fresh=fresh)
        decision = decide(view, proposal, facts)
        event = StateProposed(run_id=view.id, proposal=proposal, facts=facts, decision=decision)
        stream = str(view.id)
        writes = [StreamWrite(stream, [event], view.version)]
        views = [evolve(view, event)]
        before: dict[str, object] = {stream: view}
        mirror = mirror_proposal(view, decision, proposal)
        if mirror is not None and view.parent_task_run_id is not None:
            if parent is None or parent.id != view.parent_task_run_id:
                parent = yield from self.load(view.parent_task_run_id, from_log=fresh)
            copied = StateProposed(
                run_id=parent.id, proposal=mirror, facts=Facts(), decision=decide(parent, mirror, Facts())
            )
            writes.append(StreamWrite(str(parent.id), [copied], parent.version))
            views.append(evolve(parent, copied))
            before[str(parent.id)] = parent
        return writes, expect, views, before

    def _replayed_proposal(self, result: AppendResult) -> Script[OrchestrationResult]:
        """The result of the proposal an idempotency key already recorded, as it was
        answered: the run's view folded from its events up to that proposal's."""
        record = yield from self.record_at(result.first_position)
        event = record.decode()
        assert isinstance(event, StateProposed)
        view = None
        for earlier in (yield from self.records_of(event.run_id)):
            if earlier.version > record.version:
                break
            view = evolve(view, earlier.decode())
        assert view is not None
        decision = event.decision
        state = decision.state if decision.state is not None else view.state
        return OrchestrationResult(
            status=decision.status,
            state=state,
            details=_details(decision),
            run=view,
            position=record.position,
        )

    # -- creating ---------------------------------------------------------------------------

    def create_flow_run(
        self,
        flow_name: object,
        *,
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        retries: object = None,
        retry_delay: object = None,
        parent_task_run_id: object = None,
        deployment_id: object = None,
        infrastructure_pid: object = None,
        name: object = None,
        state: object = None,
        idempotency_key: str | None = None,
        flow_version: str | None = None,
        run_id: object = None,
        then: Iterable[State] | None = None,
    ) -> Script[RunView]:
        """Create a flow run (and set ``state`` on it, forced); idempotent on the key.

        ``then``: states to propose right after, decided in turn and appended with the
        creation, stopping at the first answer that is not ACCEPT (the engine creates a
        run and starts it in one append this way).
        """
        parent = None if parent_task_run_id is None else run_id_of(parent_task_run_id, "parent task run id")
        parent_flow_run = None
        if parent is not None:
            parent_flow_run = (yield from self.load_kind(parent, RunKind.TASK)).flow_run_id
        now = self.clock()
        created = FlowRunCreated(
            run_id=new_run_id() if run_id is None else run_id_of(run_id),
            flow_name=check_name(flow_name, "flow_name"),
            name=random_run_name() if name is None else check_name(name, "name"),
            created_at=now,
            flow_version=None if flow_version is None else check_name(flow_version, "flow_version"),
            parameters=check_parameters(parameters),
            tags=check_tags(tags),
            parent_task_run_id=parent,
            parent_flow_run_id=parent_flow_run,
            deployment_id=None if deployment_id is None else run_id_of(deployment_id, "deployment id"),
            infrastructure_pid=None
            if infrastructure_pid is None
            else check_name(_text_or_number(infrastructure_pid, "infrastructure_pid"), "pid"),
            retries=check_retries(retries),
            retry_delay=check_retry_delay(retry_delay, many=False),
            idempotency_key=idempotency_key,
        )
        initial = None if state is None else check_state(state)
        following = [check_state(s) for s in then or ()]
        if following and initial is None:
            raise InvalidInputError("then= needs an initial state")
        key = (
            None
            if idempotency_key is None
            else stored_key("flow-run", check_name(idempotency_key, "an idempotency key"))
        )
        return (yield from self._create(created, initial, key, following))

    def create_task_run(
        self,
        flow_run_id: object,
        *,
        task_key: object,
        dynamic_key: object = "0",
        name: object = None,
        retries: object = None,
        retry_delay: object = None,
        retry_jitter_factor: float | None = None,
        tags: Iterable[str] | None = None,
        state: object = None,
        idempotency_key: str | None = None,
    ) -> Script[RunView]:
        """Create a task run; one per (flow run, task key, dynamic key), however often asked."""
        flow_run = None if flow_run_id is None else run_id_of(flow_run_id, "flow run id")
        key_of_task = check_name(task_key, "task_key")
        dynamic = check_name(_text_or_number(dynamic_key, "dynamic_key"), "dynamic_key")
        given_key = None if idempotency_key is None else check_name(idempotency_key, "an idempotency key")
        if flow_run is not None:
            yield from self.load_kind(flow_run, RunKind.FLOW)
        jitter = retry_jitter_factor
        if jitter is not None and (type(jitter) not in (int, float) or not 0 <= jitter < 1e6):
            raise InvalidInputError(f"retry_jitter_factor is a number from 0, not {jitter!r}")
        created = TaskRunCreated(
            run_id=new_run_id(),
            task_key=key_of_task,
            dynamic_key=dynamic,
            name=f"{key_of_task}-{dynamic}" if name is None else check_name(name, "name"),
            created_at=self.clock(),
            flow_run_id=flow_run,
            tags=check_tags(tags),
            retries=check_retries(retries),
            retry_delay=check_retry_delay(retry_delay, many=True),
            retry_jitter_factor=jitter,
            idempotency_key=given_key,
        )
        if flow_run is not None:
            key: str | None = task_run_key(flow_run, key_of_task, dynamic)
        else:
            key = None if given_key is None else loose_task_run_key(given_key)
        initial = None if state is None else check_state(state)
        return (yield from self._create(created, initial, key))

    def _create(
        self,
        created: FlowRunCreated | TaskRunCreated,
        state: State | None,
        key: str | None,
        then: Sequence[State] = (),
    ) -> Script[RunView]:
        """Append the creation, ``state`` (forced) and the ``then`` states (proposed in
        turn, up to the first answer that is not ACCEPT) in one append."""
        proposals = ([(state, True)] if state is not None else []) + [(s, False) for s in then]

        def attempt(fresh: bool) -> Script[Landed[RunView]]:
            turn = _Turn()
            turn.add([StreamWrite(str(created.run_id), [created], 0)], [], {}, {})
            view = yield from self._in_turn(
                evolve(None, created), proposals, turn, fresh=fresh, going_on=_accepted
            )
            try:
                result: AppendResult = yield Append(turn.writes(), key)
            except ConcurrencyConflictError as conflict:
                if conflict.stream_id == str(created.run_id):
                    raise RunAlreadyExistsError(created.run_id) from conflict
                raise  # the subflow's parent task run moved on: decide its copies again
            if result.replayed:
                original = yield from self.record_at(result.first_position)
                return Landed((yield from self.load(original.decode().run_id, fresh=True)))
            return Landed(view, [*turn.after.values(), view])  # the run's also when no state was proposed

        return (yield from self._landed(created.run_id, attempt))

    # -- changing settings --------------------------------------------------------------------

    def _amend(
        self, run_id: UUID, make: Callable[[datetime], Event], kind: RunKind | None
    ) -> Script[RunView]:
        def attempt(fresh: bool) -> Script[Landed[RunView]]:
            view = yield from self.load(run_id, from_log=fresh)
            if kind is not None:
                _of_kind(view, kind)
            event = make(self.clock())
            yield Append([StreamWrite(str(run_id), [event], view.version)], known={str(run_id): view})
            after = evolve(view, event)
            return Landed(after, [after])

        return (yield from self._landed(run_id, attempt))

    def set_name(self, run_id: object, name: object) -> Script[RunView]:
        """Rename a flow run (Prefect's set_flow_run_name; a task run id is an error)."""
        target, new = run_id_of(run_id), check_name(name, "name")
        return (
            yield from self._amend(
                target, lambda at: RunRenamed(run_id=target, name=new, renamed_at=at), RunKind.FLOW
            )
        )

    def update_flow_run(
        self,
        run_id: object,
        *,
        retries: object = UNSET,
        retry_delay: object = UNSET,
        infrastructure_pid: object = UNSET,
        flow_version: object = UNSET,
    ) -> Script[RunView]:
        target = run_id_of(run_id)
        changes: dict[str, object] = {}
        if retries is not UNSET:
            changes["retries"] = check_retries(retries)
        if retry_delay is not UNSET:
            changes["retry_delay"] = check_retry_delay(retry_delay, many=False)
        if infrastructure_pid is not UNSET:
            changes["infrastructure_pid"] = (
                None
                if infrastructure_pid is None
                else check_name(_text_or_number(infrastructure_pid, "infrastructure_pid"), "pid")
            )
        if flow_version is not UNSET:
            changes["flow_version"] = (
                None if flow_version is None else check_name(flow_version, "flow_version")
            )

        if not changes:  # nothing to record: the run as it is
            return (yield from self.load_kind(target, RunKind.FLOW))

        def make(at: datetime) -> Event:
            return RunSettingsUpdated(run_id=target, updated_at=at, **changes)  # type: ignore[arg-type]

        return (yield from self._amend(target, make, RunKind.FLOW))

    # -- history -----------------------------------------------------------------------------

    def read_states(self, run_id: object) -> Script[list[State]]:
        target = run_id_of(run_id)
        yield from self.load(target, fresh=True)
        records = yield from self.records_of(target)
        states = []
        for record in records:
            event = record.decode()
            if isinstance(event, StateProposed) and event.decision.state is not None:
                states.append(event.decision.state)
        return states

    def read_history(self, run_id: object) -> Script[list[HistoryEntry]]:
        target = run_id_of(run_id)
        yield from self.load(target, fresh=True)
        records = yield from self.records_of(target)
        return [
            HistoryEntry(
                position=r.position,
                version=r.version,
                recorded_at=r.recorded_time,
                event_type=r.event_type,
                event=r.decode(),
            )
            for r in records
        ]


def _details(decision: Any) -> OrchestrationDetails:
    return OrchestrationDetails(
        policy=decision.policy,
        policy_version=decision.policy_version,
        rule=decision.rule,
        reason=decision.reason,
        delay_seconds=decision.delay_seconds,
    )


def _result_of(view: RunView, position: int) -> OrchestrationResult:
    decision = view.last_decision
    assert decision is not None
    return OrchestrationResult(
        status=decision.status, state=view.state, details=_details(decision), run=view, position=position
    )
