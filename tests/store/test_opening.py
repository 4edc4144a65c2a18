"""Opening a log: created when missing, unless asked not to; the same on every backend."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

import psycopg
import pytest

from flowtrail import SyncOrchestrator
from flowtrail.core import LogNotFoundError
from flowtrail.store import open_sync_store
from flowtrail.store.postgres_schema import lock_key
from flowtrail.store.urls import parse_url
from tests.conftest import POSTGRES_DSN, Databases


def test_opening_creates_a_missing_log(databases: Databases) -> None:
    with open_sync_store(databases.url("fresh")) as store:
        assert store.last_position() == 0


def test_opening_without_create_refuses_a_missing_log_and_creates_nothing(databases: Databases) -> None:
    url = databases.url("absent")
    with pytest.raises(LogNotFoundError):
        open_sync_store(url, create=False)
    with pytest.raises(LogNotFoundError):
        open_sync_store(url, create=False)  # the first refusal left nothing behind
    if databases.backend == "sqlite":
        assert not (databases.directory / "absent.db").exists()


def test_opening_without_create_opens_an_existing_log(databases: Databases) -> None:
    url = databases.url("present")
    with SyncOrchestrator.open(url) as orch:
        orch.create_flow_run("etl")
    with SyncOrchestrator.open(url, create=False) as orch:
        assert len(orch.read_flow_runs()) == 1


def test_opening_a_current_log_waits_on_no_writer(databases: Databases) -> None:
    """A reader (`flowtrail runs`, a process starting) opens the log while a writer
    holds its write lock, and reads what was committed."""
    url = databases.url("busy", busy_timeout=0.2)
    with SyncOrchestrator.open(url) as orch:
        orch.create_flow_run("etl")
        with _write_lock_held(databases, url):
            started = time.monotonic()
            with SyncOrchestrator.open(url) as reader:
                assert len(reader.read_flow_runs()) == 1
            assert time.monotonic() - started < 0.2


@contextlib.contextmanager
def _write_lock_held(databases: Databases, url: str) -> Iterator[None]:
    """Another connection holding the log's write lock, in a transaction left open."""
    if databases.backend == "sqlite":
        holder = sqlite3.connect(databases.directory / "busy.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.close()
        return
    assert POSTGRES_DSN is not None
    schema = parse_url(url).schema
    with psycopg.connect(POSTGRES_DSN) as pg:
        pg.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        yield
