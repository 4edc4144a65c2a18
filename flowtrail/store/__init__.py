"""The log: append-only, hash-chained, shared safely between threads and processes.

Open one from a URL: ``await open_store("sqlite:///runs.db")`` (async) or
``open_sync_store(...)``. Both stores have the same methods (`Store`, `SyncStore`).
"""

from typing import Any

from flowtrail.core.errors import InvalidUrlError
from flowtrail.store.api import (
    DEFAULT_MAX_EVENT_BYTES,
    AppendResult,
    Store,
    StreamWrite,
    SyncStore,
)
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore
from flowtrail.store.urls import StoreUrl, parse_url

__all__ = [
    "AppendResult",
    "DEFAULT_MAX_EVENT_BYTES",
    "SQLiteStore",
    "Store",
    "StoreUrl",
    "StreamWrite",
    "SyncSQLiteStore",
    "SyncStore",
    "open_store",
    "open_sync_store",
    "parse_url",
]


async def open_store(url: str, **options: Any) -> SQLiteStore:
    """Open the async log at ``url``; keyword options override the URL's."""
    backend = parse_url(url).backend
    if backend == "sqlite":
        return await SQLiteStore.open(url, **options)
    raise InvalidUrlError(f"no async store for {backend} URLs in this version")


def open_sync_store(url: str, **options: Any) -> SyncSQLiteStore:
    """Open the sync log at ``url``; keyword options override the URL's."""
    backend = parse_url(url).backend
    if backend == "sqlite":
        return SyncSQLiteStore.open(url, **options)
    raise InvalidUrlError(f"no sync store for {backend} URLs in this version")
