"""`SyncOrchestrator`: flowtrail's API with plain calls, the twin of `Orchestrator`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import IO, Any, Self
from uuid import UUID

from msgspec import UNSET

from flowtrail.core.audit import AuditReport
from flowtrail.core.errors import RebuildReplacedError
from flowtrail.core.events import RunKind
from flowtrail.core.fold import RunView
from flowtrail.core.projection import Projection
from flowtrail.core.states import State, StateType
from flowtrail.engine.arguments import (
    check_catch_up,
    check_rebuild,
    checked_max_attempts,
    checked_proposer,
    refuse_projections,
)
from flowtrail.engine.audit import export_records, log_id, subflow_in_log, verify_script
from flowtrail.engine.bulk import collector_paused
from flowtrail.engine.checks import found, run_id_of
from flowtrail.engine.context import entered
from flowtrail.engine.exports import ExportWriter
from flowtrail.engine.maintenance import (
    Progress,
    catch_up_script,
    rebuild_script,
    snapshot_script,
)
from flowtrail.engine.operations import Clock
from flowtrail.engine.orchestrator_base import (
    CHUNK,
    OrchestratorBase,
    nobody_rebuilding,
    not_rebuilt,
    scope,
)
from flowtrail.engine.replay import split_replay
from flowtrail.engine.results import HistoryEntry, OrchestrationResult
from flowtrail.engine.snapshot import RunSnapshot
from flowtrail.projections.queries import (
    FlowRunSort,
    read_flow_runs,
    subflow_run,
    task_runs_of,
)
from flowtrail.projections.rebuild import last_seen
from flowtrail.store import open_sync_store
from flowtrail.store.api import check_position
from flowtrail.store.base import SyncLogStore

__all__ = ["SyncOrchestrator"]


class SyncOrchestrator(OrchestratorBase):
    """flowtrail's API with plain calls; see `Orchestrator` for what each method does."""

    def __init__(
        self,
        store: SyncLogStore,
        *,
        clock: Clock | None = None,
        max_attempts: int = 25,
        proposer: str = "client",
    ) -> None:
        super().__init__(clock=clock, max_attempts=max_attempts, proposer=proposer, sql=store.sql)
        self.store = store

    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        rebuild_stale: bool = True,
        proposer: str = "client",
        max_attempts: int = 25,
        **options: Any,
    ) -> SyncOrchestrator:
        """Open the log at ``url`` (``sqlite:///path.db``, ``sqlite:///:memory:``)."""
        checked_proposer(proposer)
        checked_max_attempts(max_attempts)
        refuse_projections(options)
        store = open_sync_store(url, projections=[cls._views], **options)
        orchestrator = cls(store, clock=clock, proposer=proposer, max_attempts=max_attempts)
        orchestrator.url = url
        try:
            stale = rebuild_stale and bool(store.stale_projections) and not store.read_only
            if stale and nobody_rebuilding(store.perform(last_seen(cls._views))):
                with contextlib.suppress(RebuildReplacedError):  # a later one took over
                    orchestrator.rebuild()
        except BaseException as exc:
            if not not_rebuilt(exc):
                orchestrator.close()
                raise
        return orchestrator

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Self:
        """Flows called in the block write through this orchestrator."""
        if self.url is not None:
            block = entered(self.url, sync=self)
            block.__enter__()
            self._entered.append(block)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._entered:
                self._entered.pop().__exit__(kind, error, tb)
        finally:
            self.close()

    # -- runs ---------------------------------------------------------------------------------

    def create_flow_run(
        self,
        flow_name: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        retries: int | None = None,
        retry_delay: float | None = None,
        parent_task_run_id: UUID | str | None = None,
        deployment_id: UUID | str | None = None,
        infrastructure_pid: str | int | None = None,
        name: str | None = None,
        state: State | None = None,
        idempotency_key: str | None = None,
        flow_version: str | None = None,
        then: Iterable[State] | None = None,
    ) -> RunView:
        return self.store.perform(
            self._context.create_flow_run(
                flow_name,
                parameters=parameters,
                tags=tags,
                retries=retries,
                retry_delay=retry_delay,
                parent_task_run_id=parent_task_run_id,
                deployment_id=deployment_id,
                infrastructure_pid=infrastructure_pid,
                name=name,
                state=state,
                idempotency_key=idempotency_key,
                flow_version=flow_version,
                then=then,
            )
        )

    def create_task_run(
        self,
        flow_run_id: UUID | str | None,
        *,
        task_key: str,
        dynamic_key: str = "0",
        name: str | None = None,
        retries: int | None = None,
        retry_delay: float | list[float] | None = None,
        retry_jitter_factor: float | None = None,
        tags: Iterable[str] | None = None,
        state: State | None = None,
        idempotency_key: str | None = None,
    ) -> RunView:
        return self.store.perform(
            self._context.create_task_run(
                flow_run_id,
                task_key=task_key,
                dynamic_key=dynamic_key,
                name=name,
                retries=retries,
                retry_delay=retry_delay,
                retry_jitter_factor=retry_jitter_factor,
                tags=tags,
                state=state,
                idempotency_key=idempotency_key,
            )
        )

    def propose_state(
        self, run_id: UUID | str, state: State, force: bool = False, *, idempotency_key: str | None = None
    ) -> OrchestrationResult:
        return self.store.perform(
            self._context.propose(run_id, state, force=force, idempotency_key=idempotency_key)
        )

    def propose_in_turn(self, run_id: UUID | str, states: Iterable[State]) -> list[OrchestrationResult]:
        """Propose ``states`` one after another, recorded in one append, each decided on
        the answer before; it goes on after an ACCEPT into a state that is not final or a
        REJECT into a Scheduled state (a retry), and stops at any other answer. The
        results of those decided."""
        return self.store.perform(self._context.propose_in_turn(run_id, states))

    def set_flow_run_name(self, run_id: UUID | str, name: str) -> RunView:
        return self.store.perform(self._context.set_name(run_id, name))

    def update_flow_run(
        self,
        run_id: UUID | str,
        *,
        retries: Any = UNSET,
        retry_delay: Any = UNSET,
        infrastructure_pid: Any = UNSET,
        flow_version: Any = UNSET,
    ) -> RunView:
        return self.store.perform(
            self._context.update_flow_run(
                run_id,
                retries=retries,
                retry_delay=retry_delay,
                infrastructure_pid=infrastructure_pid,
                flow_version=flow_version,
            )
        )

    # -- views ---------------------------------------------------------------------------------

    def read_flow_run(self, run_id: UUID | str) -> RunView:
        return found(self.store.perform(self._view(run_id, RunKind.FLOW)), run_id)

    def read_task_run(self, run_id: UUID | str) -> RunView:
        return found(self.store.perform(self._view(run_id, RunKind.TASK)), run_id)

    def read_flow_runs(
        self,
        *,
        state_types: Iterable[StateType | str] | None = None,
        state_names: Iterable[str] | None = None,
        flow_names: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        parent_task_run_ids: Iterable[UUID] | None = None,
        sort: FlowRunSort | str = FlowRunSort.ID_DESC,
        limit: int | None = 200,
        offset: int = 0,
    ) -> list[RunView]:
        return self.store.perform(
            read_flow_runs(
                state_types=state_types,
                state_names=state_names,
                flow_names=flow_names,
                tags=tags,
                parent_task_run_ids=parent_task_run_ids,
                sort=sort,
                limit=limit,
                offset=offset,
                dialect=self.store.dialect,
            )
        )

    def read_task_runs(self, flow_run_id: UUID | str) -> list[RunView]:
        return self.store.perform(task_runs_of(run_id_of(flow_run_id)))

    def find_subflow_run(self, parent_task_run_id: UUID | str) -> RunView | None:
        return self.store.perform(subflow_run(run_id_of(parent_task_run_id)))

    def read_states(self, run_id: UUID | str) -> list[State]:
        return self.store.perform(self._context.read_states(run_id))

    def _subflow_in_log(self, parent_task_run_id: UUID) -> RunView | None:
        """`find_subflow_run` answered from the log (the engine's, while views are not whole)."""
        return self.store.perform(subflow_in_log(self._context, parent_task_run_id))

    def read_history(self, run_id: UUID | str) -> list[HistoryEntry]:
        return self.store.perform(self._context.read_history(run_id))

    # -- audit and operations -----------------------------------------------------------------

    def verify(
        self, run_id: UUID | str | None = None, *, anchor: tuple[int, bytes | str] | None = None
    ) -> AuditReport:
        with collector_paused():
            return self.store.perform(verify_script(self._context, run_id, anchor=anchor))

    def rebuild(
        self,
        progress: Progress | None = None,
        *,
        projection: Projection | None = None,
        batch: int = CHUNK,
        cache_size: int = 4_000,
        workers: int | None = None,
    ) -> int:
        check_rebuild(batch, cache_size, progress)
        if projection is not None:
            check_catch_up(projection, batch)
            return self.store.perform(
                catch_up_script(self.store, projection, batch=batch, afresh=True, progress=progress)
            )
        split = split_replay(self.store, workers)
        with collector_paused():
            script = rebuild_script(
                self.store, self._views, progress=progress, batch=batch, cache_size=cache_size, split=split
            )
            try:
                counts = self.store.perform(script)
            finally:
                script.close()  # interrupted: stop its helpers now, not when collected
        return self._rebuilt(counts)

    def as_of(self, position: int) -> RunSnapshot:
        at = check_position(position)
        with collector_paused():
            return self.store.perform(snapshot_script(self.store.sql, at, batch=CHUNK))

    def export(self, out: IO[str], run_id: UUID | str | None = None) -> int:
        with collector_paused():
            # One run's records are read before the header is written: an unknown run
            # writes nothing.
            chosen = None if run_id is None else self.store.perform(export_records(self._context, run_id))
            writer = ExportWriter(out, log_id=self.log_id(), scope=scope(run_id))
            writer.write_all(self.store.read_all(batch=CHUNK) if chosen is None else chosen)
            return writer.finish()

    def catch_up(self, projection: Projection, *, batch: int = 1_000) -> int:
        check_catch_up(projection, batch)
        return self.store.perform(catch_up_script(self.store, projection, batch=batch))

    def last_position(self) -> int:
        return self.store.last_position()

    def log_id(self) -> str | None:
        return self.store.perform(log_id(self._context))
