"""Opening a log: created when missing, unless asked not to; the same on every backend."""

from __future__ import annotations

import pytest

from flowtrail import SyncOrchestrator
from flowtrail.core import LogNotFoundError
from flowtrail.store import open_sync_store
from tests.conftest import Databases


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
