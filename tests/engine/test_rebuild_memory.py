"""A rebuild of a SQLite file keeps its page caches small while it runs, and gives each
connection its usual cache back when it ends, however it ends."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrail import SyncOrchestrator, states
from flowtrail.core import MalformedEventError
from flowtrail.core.effects import Fetch, Row, Script
from flowtrail.store.sqlite_schema import CACHE_KIB, REBUILD_CACHE_KIB
from tests.engine.conftest import Orch


def _cache_size() -> Script[int]:
    rows: list[Row] = yield Fetch("PRAGMA cache_size")
    return int(rows[0][0])


def _sync_sizes(store: Any) -> tuple[int, int]:
    """The page cache of the writer and of the reader (negative: KiB)."""
    return store.run(_cache_size(), write=True), store.run(_cache_size())


async def _async_sizes(store: Any) -> tuple[int, int]:
    return await store.run(_cache_size(), write=True), await store.run(_cache_size())


def _sizes(orch: Orch) -> tuple[int, int]:
    if orch.runner is None:
        return _sync_sizes(orch.store)
    return orch.runner.run(_async_sizes(orch.store))


@pytest.fixture(params=["sync", "async"])
def file_orch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Orch]:
    opened = Orch(request.param, f"sqlite:///{tmp_path}/memory.db")
    for _ in range(30):
        run = opened.create_flow_run("etl", state=states.Pending())
        opened.propose_state(run.id, states.Running())
    yield opened
    opened.close()


def test_a_rebuild_scans_the_log_and_writes_the_views_with_a_lean_page_cache(tmp_path: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/lean.db") as orch:
        for _ in range(30):
            orch.create_flow_run("etl", state=states.Pending())
        seen: list[tuple[int, int]] = []

        def progress(done: int, total: int) -> None:
            seen.append(_sync_sizes(orch.store))

        orch.rebuild(progress, batch=10, workers=1)
    lean = (-REBUILD_CACHE_KIB, -REBUILD_CACHE_KIB)
    assert len(seen) > 2
    assert set(seen[:-1]) == {lean}  # the last call comes once the rebuild is over


def test_a_rebuild_gives_each_connection_its_usual_page_cache_back(file_orch: Orch) -> None:
    file_orch.rebuild(workers=1)
    assert _sizes(file_orch) == (-CACHE_KIB, -CACHE_KIB)


def test_a_failed_rebuild_gives_each_connection_its_usual_page_cache_back(
    file_orch: Orch, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "memory.db") as raw:
        raw.execute("DROP TRIGGER events_are_never_updated")
        raw.execute("UPDATE events SET data = ? WHERE position = 3", (b"{not json",))
    with pytest.raises(MalformedEventError):
        file_orch.rebuild(workers=1)
    assert _sizes(file_orch) == (-CACHE_KIB, -CACHE_KIB)


def test_an_async_rebuild_runs_its_scan_with_a_lean_page_cache(tmp_path: Path) -> None:
    orch = Orch("async", f"sqlite:///{tmp_path}/lean-async.db")
    try:
        for _ in range(200):
            orch.create_flow_run("etl", state=states.Pending())
        looks: list[asyncio.Task[tuple[int, int]]] = []

        def progress(done: int, total: int) -> None:
            if not looks:
                looks.append(asyncio.get_running_loop().create_task(_async_sizes(orch.store)))

        async def rebuild() -> tuple[int, int]:
            await orch.api.rebuild(progress, batch=10, workers=1)
            return await looks[0]

        assert orch.runner is not None
        assert orch.runner.run(rebuild()) == (-REBUILD_CACHE_KIB, -REBUILD_CACHE_KIB)
    finally:
        orch.close()
