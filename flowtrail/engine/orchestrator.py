"""`Orchestrator` (async) and `SyncOrchestrator`: the API other engines import.

Both run the same scripts (`flowtrail.engine.operations`, `flowtrail.engine.audit`):
every method is a line that hands a script to the store. `SyncOrchestrator` lives in
`flowtrail.engine.sync_orchestrator`, what both share in `flowtrail.engine.orchestrator_base`;
both are imported from here. Open one from a URL::

    with SyncOrchestrator.open("sqlite:///runs.db") as orch: ...
    async with Orchestrator.open("sqlite:///runs.db") as orch: ...

Opening a log whose run views are stale (a crash during a rebuild, an older view
format) rebuilds them first, unless ``rebuild_stale=False``, the log is opened
read-only, or another process is rebuilding them (it wrote within `REBUILD_ALIVE_FOR`). Whenever the views are not whole (stale, or being rebuilt here or by another
process), one run's view is folded from its events, and queries over many runs raise
`ViewsOutOfDateError` until a rebuild completes. A rebuild at open stopped by an event
that does not decode leaves them so (with a warning): the log still opens, for `verify`
to name the damage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Mapping
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
from flowtrail.engine.context import entered, flows_under_way
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
from flowtrail.engine.sync_orchestrator import SyncOrchestrator
from flowtrail.projections.queries import (
    FlowRunSort,
    read_flow_runs,
    subflow_run,
    task_runs_of,
)
from flowtrail.projections.rebuild import last_seen
from flowtrail.store import open_store
from flowtrail.store.api import check_position
from flowtrail.store.base import AsyncLogStore

__all__ = ["Orchestrator", "Progress", "SyncOrchestrator"]


class Orchestrator(OrchestratorBase):
    """flowtrail's API, async. Every method has a sync twin on `SyncOrchestrator`.

    Runs: `create_flow_run`, `create_task_run` (idempotent on the flow run, task key
    and dynamic key), `propose_state` (decide and record; every proposal is recorded,
    rejected, waited and aborted ones too), `set_flow_run_name`, `update_flow_run`.
    Views: `read_flow_run`, `read_task_run`, `read_flow_runs`, `read_task_runs`,
    `find_subflow_run` (the most recent child), `read_states`, `read_history`.
    Audit and operations: `verify`, `rebuild`, `as_of`, `export`, `catch_up`.
    """

    def __init__(
        self,
        store: AsyncLogStore,
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
    ) -> _Opening:
        """Open the log at ``url``: ``async with Orchestrator.open(url) as orch`` or ``await``."""
        return _Opening(cls, url, clock, rebuild_stale, proposer, max_attempts, options)

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Self:
        """Flows called in the block write through this orchestrator."""
        if self.url is not None:
            block = entered(self.url, asynchronous=self)
            block.__enter__()
            self._entered.append(block)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._entered:
                self._entered.pop().__exit__(kind, error, tb)
            # A flow called in the block may outlive the call (a subflow gathered with
            # others that failed, a task nobody awaited): cancelled, it records its end
            # before the log closes.
            await flows_under_way(self).ended()
        finally:
            await self.close()

    # -- runs ---------------------------------------------------------------------------------

    async def create_flow_run(
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
        """Create a flow run; ``state`` is set with force. The same idempotency key
        returns the run it first created and creates nothing."""
        return await self.store.perform(
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

    async def create_task_run(
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
        """Create a task run in a flow run; asking again for the same (flow run, task
        key, dynamic key) returns the task run first created."""
        return await self.store.perform(
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

    async def propose_state(
        self, run_id: UUID | str, state: State, force: bool = False, *, idempotency_key: str | None = None
    ) -> OrchestrationResult:
        """Decide ``state`` for the run with Prefect's rules and record it, whatever the
        answer. A WAIT answer is returned, never slept through."""
        return await self.store.perform(
            self._context.propose(run_id, state, force=force, idempotency_key=idempotency_key)
        )

    async def propose_in_turn(self, run_id: UUID | str, states: Iterable[State]) -> list[OrchestrationResult]:
        """Propose ``states`` one after another, recorded in one append, each decided on
        the answer before; it goes on after an ACCEPT into a state that is not final or a
        REJECT into a Scheduled state (a retry), and stops at any other answer. The
        results of those decided."""
        return await self.store.perform(self._context.propose_in_turn(run_id, states))

    async def set_flow_run_name(self, run_id: UUID | str, name: str) -> RunView:
        return await self.store.perform(self._context.set_name(run_id, name))

    async def update_flow_run(
        self,
        run_id: UUID | str,
        *,
        retries: Any = UNSET,
        retry_delay: Any = UNSET,
        infrastructure_pid: Any = UNSET,
        flow_version: Any = UNSET,
    ) -> RunView:
        """Change a flow run's settings; arguments left out are left as they are."""
        return await self.store.perform(
            self._context.update_flow_run(
                run_id,
                retries=retries,
                retry_delay=retry_delay,
                infrastructure_pid=infrastructure_pid,
                flow_version=flow_version,
            )
        )

    # -- views ---------------------------------------------------------------------------------

    async def read_flow_run(self, run_id: UUID | str) -> RunView:
        return found(await self.store.perform(self._view(run_id, RunKind.FLOW)), run_id)

    async def read_task_run(self, run_id: UUID | str) -> RunView:
        return found(await self.store.perform(self._view(run_id, RunKind.TASK)), run_id)

    async def read_flow_runs(
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
        """Flow runs matching every filter given (any of the values of each; all tags)."""
        return await self.store.perform(
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

    async def read_task_runs(self, flow_run_id: UUID | str) -> list[RunView]:
        return await self.store.perform(task_runs_of(run_id_of(flow_run_id)))

    async def find_subflow_run(self, parent_task_run_id: UUID | str) -> RunView | None:
        """The most recent flow run started by this parent task run, or None."""
        return await self.store.perform(subflow_run(run_id_of(parent_task_run_id)))

    async def _subflow_in_log(self, parent_task_run_id: UUID) -> RunView | None:
        """`find_subflow_run` answered from the log (the engine's, while views are not whole)."""
        return await self.store.perform(subflow_in_log(self._context, parent_task_run_id))

    async def read_states(self, run_id: UUID | str) -> list[State]:
        """The run's states in the order they were written."""
        return await self.store.perform(self._context.read_states(run_id))

    async def read_history(self, run_id: UUID | str) -> list[HistoryEntry]:
        """Every recorded event of the run, proposals and their decisions included."""
        return await self.store.perform(self._context.read_history(run_id))

    # -- audit and operations -----------------------------------------------------------------

    async def verify(
        self, run_id: UUID | str | None = None, *, anchor: tuple[int, bytes | str] | None = None
    ) -> AuditReport:
        """Re-check the log (or one run and the runs its decisions read): chains,
        positions, every decision re-decided, facts, subflow mirrors; for the whole log,
        also the stored views (while current) against the runs' folds, and ``anchor``,
        a log digest (or an event's hash) kept elsewhere, against the log."""
        with collector_paused():
            return await self.store.perform(verify_script(self._context, run_id, anchor=anchor))

    async def rebuild(
        self,
        progress: Progress | None = None,
        *,
        projection: Projection | None = None,
        batch: int = CHUNK,
        cache_size: int = 4_000,
        workers: int | None = None,
    ) -> int:
        """Drop the run views and rebuild them from the log; returns the events applied.
        ``progress(done, total)`` is called as it goes.

        ``projection``: rebuild that catch-up projection instead (one `catch_up` keeps):
        its tables are emptied and every event applied again, ``batch`` at a time, each
        step one transaction with its checkpoint, as `catch_up` does from the start.

        Appends may go on meanwhile (this process's and others'); one run's reads fold
        its events where its view is not written yet, and queries over many runs raise
        `ViewsOutOfDateError` until the rebuild ends. ``batch`` events are
        read and folded at a time, outside any transaction, and the views they change
        written a few thousand per write transaction; ``cache_size`` views are kept in
        memory (in all).
        A SQLite file's log is replayed by ``workers`` processes, split by run: by
        default one per processor (at most four) once the log holds 100,000 events;
        ``workers=1`` keeps it all in this process. Other stores replay in this process.
        """
        check_rebuild(batch, cache_size, progress)
        if projection is not None:
            check_catch_up(projection, batch)
            return await self.store.perform(
                catch_up_script(self.store, projection, batch=batch, afresh=True, progress=progress)
            )
        split = split_replay(self.store, workers)
        with collector_paused():
            script = rebuild_script(
                self.store, self._views, progress=progress, batch=batch, cache_size=cache_size, split=split
            )
            try:
                counts = await self.store.perform(script)
            finally:
                script.close()  # cancelled: stop its helpers now, not when collected
        return self._rebuilt(counts)

    async def as_of(self, position: int) -> RunSnapshot:
        """The run views as they were when the log ended at ``position``. A position
        inside a transaction (a subflow's state and its copy; appends committed in one
        group) gives them at the transaction's end, as no reader ever saw them between:
        the snapshot's ``position`` says where."""
        at = check_position(position)
        with collector_paused():
            return await self.store.perform(snapshot_script(self.store.sql, at, batch=CHUNK))

    async def export(self, out: IO[str], run_id: UUID | str | None = None) -> int:
        """Write the log, or one run with the runs above and below it, to ``out`` as an
        export that `flowtrail.engine.exports.verify_export` checks with no database;
        returns the events written."""
        with collector_paused():
            chosen = (
                None if run_id is None else await self.store.perform(export_records(self._context, run_id))
            )
            writer = ExportWriter(out, log_id=await self.log_id(), scope=scope(run_id))
            if chosen is None:
                async for record in self.store.read_all(batch=CHUNK):
                    writer.write(record)
            else:
                writer.write_all(chosen)
            return writer.finish()

    async def catch_up(self, projection: Projection, *, batch: int = 1_000) -> int:
        """Bring a catch-up projection up to the end of the log; returns events applied."""
        check_catch_up(projection, batch)
        return await self.store.perform(catch_up_script(self.store, projection, batch=batch))

    async def last_position(self) -> int:
        return await self.store.last_position()

    async def log_id(self) -> str | None:
        """The log's identity, given when it was created (it names the log in exports)."""
        return await self.store.perform(log_id(self._context))


class _Opening:
    """``Orchestrator.open(url)``: awaitable, and usable directly with ``async with``."""

    def __init__(
        self,
        cls: type[Orchestrator],
        url: str,
        clock: Clock | None,
        rebuild_stale: bool,
        proposer: str,
        max_attempts: int,
        options: dict[str, Any],
    ) -> None:
        self._args = (cls, url, clock, rebuild_stale, proposer, max_attempts, options)
        self._opened: Orchestrator | None = None

    async def _open(self) -> Orchestrator:
        cls, url, clock, rebuild_stale, proposer, max_attempts, options = self._args
        checked_proposer(proposer)
        checked_max_attempts(max_attempts)
        refuse_projections(options)
        store = await open_store(url, projections=[cls._views], **options)
        orchestrator = cls(store, clock=clock, proposer=proposer, max_attempts=max_attempts)
        orchestrator.url = url
        try:
            stale = rebuild_stale and bool(store.stale_projections) and not store.read_only
            if stale and nobody_rebuilding(await store.perform(last_seen(cls._views))):
                with contextlib.suppress(RebuildReplacedError):  # a later one took over
                    await orchestrator.rebuild()
        except BaseException as exc:
            if not not_rebuilt(exc):
                await orchestrator.close()
                raise
        return orchestrator

    def __await__(self) -> Generator[Any, None, Orchestrator]:
        return self._open().__await__()

    async def __aenter__(self) -> Orchestrator:
        self._opened = await self._open()
        return await self._opened.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._opened is not None:
            await self._opened.__aexit__(kind, error, tb)
