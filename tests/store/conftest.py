"""One facade over every store (backend x driver), so one suite tests them all.

The async stores are driven through an `asyncio.Runner` owned by the facade; the
facade's methods have the sync store's names and return plain values (``read_all``
returns a list), so a conformance test reads the same whatever it runs against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from flowtrail.core import RecordedEvent
from flowtrail.store.postgres import PostgresStore, SyncPostgresStore
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from tests.conftest import Databases, open_databases


class Log:
    """A store under test, with plain calls whatever its driver."""

    def __init__(self, kind: str, path: Path | str, **options: Any) -> None:
        """``path``: the SQLite file, or the PostgreSQL URL."""
        self.kind = kind
        self.path = path
        self.options = options
        self.runner: asyncio.Runner | None = None
        self.store: Any = None
        self.open()

    def open(self) -> None:
        postgres = self.kind.startswith("postgresql")
        if self.kind.endswith("-sync"):
            self.store = (
                SyncPostgresStore.open(str(self.path), **self.options)
                if postgres
                else SyncSQLiteStore(self.path, **self.options)
            )
        else:
            self.runner = asyncio.Runner()
            opening = (
                PostgresStore.open(str(self.path), **self.options)
                if postgres
                else SQLiteStore.open_path(self.path, **self.options)
            )
            self.store = self.runner.run(opening)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.store, name)(*args, **kwargs)
        return result if self.runner is None else self.runner.run(result)

    def append(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("append", *args, **kwargs)

    def append_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("append_many", *args, **kwargs)

    def read_stream(self, *args: Any, **kwargs: Any) -> list[RecordedEvent]:
        result: list[RecordedEvent] = self._call("read_stream", *args, **kwargs)
        return result

    def read_all(self, *args: Any, **kwargs: Any) -> list[RecordedEvent]:
        if self.runner is None:
            return list(self.store.read_all(*args, **kwargs))

        async def collect() -> list[RecordedEvent]:
            return [record async for record in self.store.read_all(*args, **kwargs)]

        return self.runner.run(collect())

    def last_position(self) -> int:
        result: int = self._call("last_position")
        return result

    def stream_version(self, stream_id: str) -> int:
        result: int = self._call("stream_version", stream_id)
        return result

    def gather(self, calls: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """Run calls concurrently (async) or one after another (sync); results or errors."""
        if self.runner is None:
            out: list[Any] = []
            for name, args, kwargs in calls:
                try:
                    out.append(getattr(self.store, name)(*args, **kwargs))
                except Exception as exc:
                    out.append(exc)
            return out

        async def together() -> list[Any]:
            return list(
                await asyncio.gather(
                    *(getattr(self.store, name)(*args, **kwargs) for name, args, kwargs in calls),
                    return_exceptions=True,
                )
            )

        return self.runner.run(together())

    def close(self) -> None:
        if self.store is None:
            return
        self._call("close")
        self.store = None
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    def reopen(self) -> None:
        self.close()
        self.open()


STORE_KINDS = [
    pytest.param("sqlite-sync"),
    pytest.param("sqlite-async"),
    pytest.param("postgresql-sync", marks=pytest.mark.postgres),
    pytest.param("postgresql-async", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORE_KINDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    backend = request.param.split("-")[0]
    databases = open_databases(backend, tmp_path)
    target = tmp_path / "log.db" if backend == "sqlite" else databases.url("log")
    opened = Log(request.param, target)
    yield opened
    opened.close()
    databases.cleanup()


def target(databases: Databases, name: str) -> str:
    """Where a store test's log lives: a SQLite file, or a PostgreSQL URL."""
    if databases.backend == "sqlite":
        return str(databases.directory / f"{name}.db")
    return databases.url(name)
