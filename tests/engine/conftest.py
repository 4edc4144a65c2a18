"""Both orchestrators behind one facade, so each API test runs against sync and async."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flowtrail import Orchestrator, SyncOrchestrator, states
from flowtrail.testing import T0
from tests.conftest import open_databases


class Clock:
    """A clock tests move by hand: every reading is a microsecond after the last."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        #: Called at every reading, when set (a test's way into the middle of a call).
        self.on_reading: Callable[[], object] | None = None

    def __call__(self) -> datetime:
        if self.on_reading is not None:
            self.on_reading()
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Orch:
    """An orchestrator under test with plain calls, whichever kind it is."""

    def __init__(self, kind: str, url: str, clock: Clock | None = None, **options: Any) -> None:
        self.kind = kind
        self.url = url
        self.clock = clock or Clock()
        self.options = options
        self.runner: asyncio.Runner | None = None
        self.api: Any = None
        self.open()

    def open(self) -> None:
        if self.kind == "sync":
            self.api = SyncOrchestrator.open(self.url, clock=self.clock, **self.options)
        else:
            self.runner = asyncio.Runner()
            opening = Orchestrator.open(self.url, clock=self.clock, **self.options)

            async def opened() -> Orchestrator:
                return await opening

            self.api = self.runner.run(opened())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.api, name)
        if self.runner is None or not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return self.runner.run(result) if asyncio.iscoroutine(result) else result  # type: ignore[union-attr]

        return call

    def gather(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Run calls concurrently (async) or in turn (sync); results or errors."""
        if self.runner is None:
            out = []
            for name, args, kwargs in calls:
                try:
                    out.append(getattr(self.api, name)(*args, **kwargs))
                except Exception as exc:
                    out.append(exc)
            return out

        async def together() -> list[Any]:
            coros = [getattr(self.api, name)(*args, **kwargs) for name, args, kwargs in calls]
            return list(await asyncio.gather(*coros, return_exceptions=True))

        return self.runner.run(together())

    def close(self) -> None:
        if self.api is None:
            return
        result = self.api.close()
        if self.runner is not None:
            self.runner.run(result)
            self.runner.close()
            self.runner = None
        self.api = None

    def reopen(self) -> None:
        self.close()
        self.open()


def parent_with_subflow(orch: Orch) -> tuple[Any, Any, Any]:
    """A running parent flow run (one retry) whose task run started a completed subflow:
    (parent, the parent task run, the subflow)."""
    parent = orch.create_flow_run("parent", retries=1, state=states.Pending())
    orch.propose_state(parent.id, states.Running())
    tracker = orch.create_task_run(parent.id, task_key="child")
    child = orch.create_flow_run("child", parent_task_run_id=tracker.id, state=states.Pending())
    orch.propose_state(child.id, states.Running())
    orch.propose_state(child.id, states.Completed())
    return parent, tracker, child


ORCH_KINDS = [
    pytest.param(("sync", "sqlite"), id="sync"),
    pytest.param(("async", "sqlite"), id="async"),
    pytest.param(("sync", "postgresql"), id="postgresql-sync", marks=pytest.mark.postgres),
    pytest.param(("async", "postgresql"), id="postgresql-async", marks=pytest.mark.postgres),
]


@pytest.fixture(params=ORCH_KINDS)
def orch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Orch]:
    """An orchestrator of each kind (sync, async) on each backend."""
    kind, backend = request.param
    databases = open_databases(backend, tmp_path)
    opened = Orch(kind, databases.url("runs"))
    yield opened
    opened.close()
    databases.cleanup()
