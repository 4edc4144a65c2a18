"""Helpers for testing code built on flowtrail (and flowtrail itself).

`MemoryLog` is a whole orchestrator in memory, with no clock and no I/O: every call
names its time, so a test reads like a timeline and gives the same log every time. It
produces the same events, decisions and hash chains as the real orchestrator, which is
what makes it useful as a reference model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid5

from flowtrail.core.chain import GENESIS, RecordedEvent, chain_hash, to_micros
from flowtrail.core.codec import encode_event
from flowtrail.core.errors import RunNotFoundError
from flowtrail.core.events import (
    Decision,
    Event,
    Facts,
    FlowRunCreated,
    Proposal,
    RetryDelay,
    RunKind,
    RunRenamed,
    StateProposed,
    TaskRunCreated,
    event_type,
)
from flowtrail.core.fold import RunView, evolve, flow_run_facts
from flowtrail.core.jsondata import JSONValue
from flowtrail.core.policies import Policy, decide, mirror_proposal
from flowtrail.core.rules import arrived
from flowtrail.core.states import State, StateType

__all__ = [
    "MemoryLog",
    "T0",
    "at",
    "run_id_for",
]

#: A fixed moment tests count from.
T0 = datetime(2026, 1, 1, tzinfo=UTC)

_NAMESPACE = UUID("6f1c1f3e-6d0b-4f8e-9a57-3a1c2b7d9e10")


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def run_id_for(name: str) -> UUID:
    """A stable run id for a name, so tests can refer to runs by name."""
    return uuid5(_NAMESPACE, name)


class MemoryLog:
    """An in-memory log and orchestrator: create runs, propose states, read the log.

    Task proposals record the enclosing flow run's facts; a written subflow state is
    mirrored onto its parent task run in the same append, as the real orchestrator does.
    """

    def __init__(self) -> None:
        self.records: list[RecordedEvent] = []
        self.views: dict[UUID, RunView] = {}
        self._heads: dict[str, tuple[int, bytes]] = {}

    # -- writing ------------------------------------------------------------------------

    def append(self, events: Sequence[Event], *, at: datetime) -> list[RecordedEvent]:
        """Append events (of any runs) as one atomic write, folding them into the views."""
        recorded_at = to_micros(at)
        written = []
        for event in events:
            stream_id = str(event.run_id)
            version, previous = self._heads.get(stream_id, (0, GENESIS))
            data = encode_event(event)
            kind = event_type(event)
            schema = type(event).SCHEMA_VERSION
            position = len(self.records) + 1
            seal = chain_hash(previous, stream_id, version + 1, position, kind, schema, recorded_at, data)
            record = RecordedEvent(
                position=position,
                stream_id=stream_id,
                version=version + 1,
                event_type=kind,
                schema_version=schema,
                recorded_at=recorded_at,
                data=data,
                hash=seal,
            )
            self.records.append(record)
            self._heads[stream_id] = (version + 1, seal)
            self.views[event.run_id] = evolve(self.views.get(event.run_id), event)
            written.append(record)
        return written

    def create_flow_run(
        self,
        name: str = "run",
        *,
        at: datetime = T0,
        flow_name: str = "flow",
        run_id: UUID | None = None,
        retries: int | None = None,
        retry_delay: RetryDelay | None = None,
        parent_task_run_id: UUID | None = None,
        deployment_id: UUID | None = None,
        infrastructure_pid: str | None = None,
        tags: Iterable[str] = (),
        parameters: dict[str, JSONValue] | None = None,
    ) -> RunView:
        run_id = run_id or run_id_for(f"flow:{name}:{len(self.records)}")
        self.append(
            [
                FlowRunCreated(
                    run_id=run_id,
                    flow_name=flow_name,
                    name=name,
                    created_at=at,
                    parameters=parameters or {},
                    tags=tuple(tags),
                    parent_task_run_id=parent_task_run_id,
                    deployment_id=deployment_id,
                    infrastructure_pid=infrastructure_pid,
                    retries=retries,
                    retry_delay=retry_delay,
                )
            ],
            at=at,
        )
        return self.views[run_id]

    def create_task_run(
        self,
        flow_run_id: UUID | None,
        task_key: str = "task",
        *,
        dynamic_key: str = "0",
        at: datetime = T0,
        run_id: UUID | None = None,
        retries: int | None = None,
        retry_delay: RetryDelay | None = None,
        retry_jitter_factor: float | None = None,
        tags: Iterable[str] = (),
    ) -> RunView:
        run_id = run_id or run_id_for(f"task:{flow_run_id}:{task_key}:{dynamic_key}:{len(self.records)}")
        self.append(
            [
                TaskRunCreated(
                    run_id=run_id,
                    flow_run_id=flow_run_id,
                    task_key=task_key,
                    dynamic_key=dynamic_key,
                    name=f"{task_key}-{dynamic_key}",
                    created_at=at,
                    tags=tuple(tags),
                    retries=retries,
                    retry_delay=retry_delay,
                    retry_jitter_factor=retry_jitter_factor,
                )
            ],
            at=at,
        )
        return self.views[run_id]

    def rename(self, run_id: UUID, name: str, *, at: datetime = T0) -> RunView:
        self.append([RunRenamed(run_id=run_id, name=name, renamed_at=at)], at=at)
        return self.views[run_id]

    def facts_for(
        self,
        view: RunView,
        proposal: Proposal,
        *,
        fresh_key: str | None = None,
        random_draw: float | None = None,
    ) -> Facts:
        """The facts the orchestrator records for a proposal on ``view``."""
        flow = None
        if view.kind is RunKind.TASK and view.flow_run_id is not None and not proposal.force:
            enclosing = self.views.get(view.flow_run_id)
            flow = None if enclosing is None else flow_run_facts(enclosing)
        if proposal.state.type is not StateType.PAUSED or proposal.state.state_details.pause_key is not None:
            fresh_key = None
        return Facts(flow_run=flow, fresh_key=fresh_key, random_draw=random_draw)

    def propose(
        self,
        run_id: UUID,
        state: State,
        *,
        at: datetime = T0,
        force: bool = False,
        fresh_key: str | None = "pause-key",
        random_draw: float | None = None,
        policy: Policy | None = None,
    ) -> Decision:
        """Decide and record a proposal; returns the decision."""
        view = self.view(run_id)
        proposal = Proposal(state=arrived(state, at), proposed_at=at, force=force)
        facts = self.facts_for(view, proposal, fresh_key=fresh_key, random_draw=random_draw)
        decision = decide(view, proposal, facts, policy)
        events: list[Event] = [
            StateProposed(run_id=run_id, proposal=proposal, facts=facts, decision=decision)
        ]
        mirror = mirror_proposal(view, decision, proposal)
        if mirror is not None and view.parent_task_run_id is not None:
            parent = self.view(view.parent_task_run_id)
            mirror_facts = self.facts_for(parent, mirror)
            events.append(
                StateProposed(
                    run_id=parent.id,
                    proposal=mirror,
                    facts=mirror_facts,
                    decision=decide(parent, mirror, mirror_facts),
                )
            )
        self.append(events, at=at)
        return decision

    # -- reading ------------------------------------------------------------------------

    def view(self, run_id: UUID) -> RunView:
        try:
            return self.views[run_id]
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def events_of(self, run_id: UUID) -> list[Event]:
        stream = str(run_id)
        return [record.decode() for record in self.records if record.stream_id == stream]
