"""A sync flow and the same flow written async record the same histories."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from flowtrail import Orchestrator, SyncOrchestrator, flow


def _histories(orch: Any, runs: list[Any]) -> list[tuple[str, list[str]]]:
    return sorted((run.flow_name, [s.name for s in orch.read_states(run.id)]) for run in runs)


def test_sync_and_async_flows_record_the_same_histories(tmp_path: Path) -> None:
    attempts: dict[str, int] = {"sync": 0, "async": 0}

    @flow(name="child")
    def child_sync(x: int) -> int:
        return x + 1

    @flow(name="child")
    async def child_async(x: int) -> int:
        return x + 1

    @flow(name="parent", retries=1)
    def parent_sync() -> int:
        attempts["sync"] += 1
        total = child_sync(1) + child_sync(2)
        if attempts["sync"] == 1:
            raise RuntimeError("once")
        return total

    @flow(name="parent", retries=1)
    async def parent_async() -> int:
        attempts["async"] += 1
        total = await child_async(1) + await child_async(2)
        if attempts["async"] == 1:
            raise RuntimeError("once")
        return total

    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/sync.db") as orch:
        assert parent_sync() == 5
        sync_histories = _histories(orch, orch.read_flow_runs(limit=None))

    async def run_async() -> list[tuple[str, list[str]]]:
        async with Orchestrator.open(f"sqlite:///{tmp_path}/async.db") as orch:
            assert await parent_async() == 5
            runs = await orch.read_flow_runs(limit=None)
            return sorted([(run.flow_name, [s.name for s in await orch.read_states(run.id)]) for run in runs])

    assert asyncio.run(run_async()) == sync_histories
    assert ("parent", ["Pending", "Running", "AwaitingRetry", "Running", "Completed"]) in sync_histories
