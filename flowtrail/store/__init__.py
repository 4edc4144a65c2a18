"""The log: append-only, hash-chained, shared safely between threads and processes.

Open one from a URL (``sqlite:///runs.db``, ``postgresql://host/db?schema=name``):
``await open_store(url)`` (async) or
``open_sync_store(...)``. Both stores have the same methods (`Store`, `SyncStore`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowtrail.core.errors import InvalidUrlError
from flowtrail.store.api import (
    DEFAULT_MAX_EVENT_BYTES,
    AppendResult,
    Store,
    StreamWrite,
    SyncStore,
)
from flowtrail.store.base import AsyncLogStore, SyncLogStore
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from flowtrail.store.urls import StoreUrl, parse_url

if TYPE_CHECKING:
    from flowtrail.store.postgres import PostgresStore, SyncPostgresStore

__all__ = [
    "AppendResult",
    "AsyncLogStore",
    "DEFAULT_MAX_EVENT_BYTES",
    "SQLiteStore",
    "Store",
    "StoreUrl",
    "StreamWrite",
    "SyncLogStore",
    "SyncSQLiteStore",
    "SyncStore",
    "open_store",
    "open_sync_store",
    "parse_url",
]


async def open_store(url: str, **options: Any) -> AsyncLogStore:
    """Open the async log at ``url``; keyword options override the URL's."""
    if parse_url(url).backend == "sqlite":
        return await SQLiteStore.open(url, **options)
    return await _postgres()[1].open(url, **options)


def open_sync_store(url: str, **options: Any) -> SyncLogStore:
    """Open the sync log at ``url``; keyword options override the URL's."""
    if parse_url(url).backend == "sqlite":
        return SyncSQLiteStore.open(url, **options)
    return _postgres()[0].open(url, **options)


def _postgres() -> tuple[type[SyncPostgresStore], type[PostgresStore]]:
    """The PostgreSQL stores, imported when first asked for (psycopg is an extra)."""
    try:
        from flowtrail.store.postgres import PostgresStore, SyncPostgresStore
    except ImportError as exc:
        raise InvalidUrlError(
            f"PostgreSQL URLs need psycopg, which is not installed ({exc}): "
            "pip install 'flowtrail[postgresql]'"
        ) from None
    return SyncPostgresStore, PostgresStore
