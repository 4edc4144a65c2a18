"""Events for store tests: real flowtrail events, small and distinct."""

from __future__ import annotations

from uuid import UUID, uuid4

from flowtrail.core import Event, FlowRunCreated, RunRenamed
from flowtrail.testing import T0


def created(run_id: UUID | None = None, *, name: str = "run", **fields: object) -> FlowRunCreated:
    return FlowRunCreated(run_id=run_id or uuid4(), flow_name="flow", name=name, created_at=T0, **fields)  # type: ignore[arg-type]


def renamed(run_id: UUID, name: str = "renamed") -> RunRenamed:
    return RunRenamed(run_id=run_id, name=name, renamed_at=T0)


def new_stream(count: int = 1) -> tuple[str, list[Event]]:
    """A new stream's id and ``count`` events for it: a creation, then renames."""
    run_id = uuid4()
    events: list[Event] = [created(run_id)]
    events += [renamed(run_id, f"name-{i}") for i in range(1, count)]
    return str(run_id), events
