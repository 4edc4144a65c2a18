"""Time travel: the run views as they were at a position of the log.

A snapshot folds the log up to the position into an in-memory SQLite database with the
same projection code and the same queries as the live views, so ``as_of(head)`` and
the live views can be compared row for row.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Self
from uuid import UUID

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.fold import RunView
from flowtrail.core.states import StateType
from flowtrail.engine.checks import found, run_id_of
from flowtrail.projections.queries import (
    FlowRunSort,
    flow_run_view,
    read_flow_runs,
    subflow_run,
    task_run_view,
    task_runs_of,
)
from flowtrail.projections.rebuild import RunViewsRebuild, transaction
from flowtrail.projections.runs import RunViews
from flowtrail.store.sqlite import SyncSQLiteStore

__all__ = ["RunSnapshot"]

_CHUNK = 5_000


class RunSnapshot:
    """Read-only run views as of ``position`` (queries as on the orchestrator)."""

    def __init__(self, position: int) -> None:
        self.position = position
        self._store = SyncSQLiteStore(":memory:", projections=[RunViews()])
        self._rebuild = RunViewsRebuild(cache_size=100_000, flush_every=20_000)

    @classmethod
    def build(cls, position: int, records: Iterable[RecordedEvent]) -> RunSnapshot:
        snapshot = cls(position)
        chunk: list[RecordedEvent] = []
        for record in records:
            if record.position > position:
                break
            chunk.append(record)
            if len(chunk) >= _CHUNK:
                snapshot.feed(chunk)
                chunk = []
        snapshot.feed(chunk)
        snapshot.complete()
        return snapshot

    def feed(self, records: list[RecordedEvent]) -> None:
        if records:
            self._store.run(self._rebuild.feed(records), write=True)

    def complete(self) -> None:
        self._store.run(transaction(self._rebuild.flush_all()), write=True)

    def read_flow_run(self, run_id: UUID | str) -> RunView:
        return found(self._store.perform(flow_run_view(run_id_of(run_id))), run_id)

    def read_task_run(self, run_id: UUID | str) -> RunView:
        return found(self._store.perform(task_run_view(run_id_of(run_id))), run_id)

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
        return self._store.perform(
            read_flow_runs(
                state_types=state_types,
                state_names=state_names,
                flow_names=flow_names,
                tags=tags,
                parent_task_run_ids=parent_task_run_ids,
                sort=sort,
                limit=limit,
                offset=offset,
            )
        )

    def find_subflow_run(self, parent_task_run_id: UUID | str) -> RunView | None:
        return self._store.perform(subflow_run(run_id_of(parent_task_run_id)))

    def read_task_runs(self, flow_run_id: UUID | str) -> list[RunView]:
        return self._store.perform(task_runs_of(run_id_of(flow_run_id)))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
