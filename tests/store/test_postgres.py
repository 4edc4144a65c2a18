"""What only PostgreSQL has: a server that can drop connections or restart, schemas that
isolate logs, and a database that itself refuses to change an event."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from flowtrail.core import CorruptLogError, InvalidUrlError, SchemaVersionError, StoreUnavailableError
from flowtrail.store import StreamWrite
from flowtrail.store.api import prepare_append
from flowtrail.store.postgres import PostgresStore, SyncPostgresStore
from flowtrail.store.postgres_schema import lock_key
from flowtrail.store.scripts import append_script
from flowtrail.store.urls import parse_url
from tests.conftest import POSTGRES_DSN, Databases, open_databases
from tests.store.builders import new_stream
from tests.store.workers import _commit_later

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(tmp_path: object) -> Iterator[Databases]:
    databases = open_databases("postgresql", tmp_path)  # type: ignore[arg-type]
    yield databases
    databases.cleanup()


def _terminate(application: str) -> int:
    """Drop every server connection of ``application``, as a network failure would."""
    assert POSTGRES_DSN is not None
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        ).fetchall()
    return len(rows)


def test_a_connection_lost_while_idle_is_replaced_unnoticed(pg: Databases) -> None:
    application = f"ft-{uuid4().hex[:8]}"
    with SyncPostgresStore.open(pg.url("idle", application_name=application)) as store:
        stream, events = new_stream(2)
        acknowledged = store.append(stream, events, 0)
        assert _terminate(application) == 2  # the writer's and the reader's
        assert store.read_stream(stream)[-1].position == acknowledged.last_position
        later = store.append(*new_stream(1), 0)
        assert later.first_position == acknowledged.last_position + 1


def test_the_async_store_replaces_a_connection_lost_while_idle(pg: Databases) -> None:
    application = f"ft-{uuid4().hex[:8]}"

    async def scenario() -> tuple[int, int]:
        store = await PostgresStore.open(pg.url("idle_async", application_name=application))
        try:
            await store.append(*new_stream(3), 0)
            _terminate(application)
            result = await store.append(*new_stream(1), 0)
            return result.first_position, await store.last_position()
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (4, 4)


def test_a_connection_lost_mid_transaction_is_a_typed_error_and_writes_nothing(pg: Databases) -> None:
    application = f"ft-{uuid4().hex[:8]}"
    with SyncPostgresStore.open(pg.url("cut", application_name=application)) as store:
        store.append(*new_stream(1), 0)
        stream, events = new_stream(3)
        prepared = prepare_append([StreamWrite(stream, events, 0)], idempotency_key="once")
        killer = threading.Timer(0.3, _terminate, (application,))
        killer.start()
        with pytest.raises(StoreUnavailableError):
            # The connection is dropped while the transaction waits to commit.
            store.run(_commit_later(append_script([prepared], store.sql), 2.0), write=True)
        killer.join()
        assert store.read_stream(stream) == []
        assert store.last_position() == 1
        retried = store.append(stream, events, 0, idempotency_key="once")
        assert (retried.first_position, retried.replayed) == (2, False)
        again = store.append(stream, events, 0, idempotency_key="once")
        assert (again.first_position, again.replayed) == (2, True)


def test_two_schemas_are_two_logs(pg: Databases) -> None:
    with SyncPostgresStore.open(pg.url("left")) as left, SyncPostgresStore.open(pg.url("right")) as right:
        left.append(*new_stream(3), 0)
        right.append(*new_stream(1), 0)
        assert (left.last_position(), right.last_position()) == (3, 1)


def test_libpq_parameters_in_a_url_reach_libpq_as_written() -> None:
    url = (
        "postgresql://u@h:5432/db?schema=runs&application_name=a%26b+c"
        "&options=-c%20statement_timeout%3D7000&busy_timeout=3"
    )
    parsed = parse_url(url)
    given = conninfo_to_dict(parsed.target)
    assert (given["application_name"], given["options"]) == ("a&b+c", "-c statement_timeout=7000")
    assert (parsed.schema, parsed.busy_timeout, "schema" in given) == ("runs", 3.0, False)


def test_a_schema_name_that_is_not_an_identifier_is_refused(pg: Databases) -> None:
    with pytest.raises(InvalidUrlError, match="plain identifier"):
        SyncPostgresStore.open(pg.url("x").replace("schema=", "schema=bad;drop%20table%20x--"))


def test_a_log_from_a_newer_flowtrail_is_refused(pg: Databases) -> None:
    url = pg.url("newer")
    SyncPostgresStore.open(url).close()
    assert POSTGRES_DSN is not None
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f"UPDATE {pg.schemas[-1]}.flowtrail_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="version 99"):
        SyncPostgresStore.open(url)


def test_a_schema_of_another_application_is_refused_untouched(pg: Databases) -> None:
    url = pg.url("other_app")
    assert POSTGRES_DSN is not None
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {pg.schemas[-1]}")
        admin.execute(f"CREATE TABLE {pg.schemas[-1]}.customers (id int)")
    with pytest.raises(CorruptLogError, match="not a flowtrail database"):
        SyncPostgresStore.open(url)


def test_an_unreachable_server_is_one_typed_error() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="cannot connect to PostgreSQL"):
        SyncPostgresStore.open("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {schema}.events SET event_type = 'x'",
        "DELETE FROM {schema}.events",
        "TRUNCATE {schema}.events",
    ],
)
def test_the_database_refuses_to_change_an_event(pg: Databases, statement: str) -> None:
    url = pg.url("append_only")
    with SyncPostgresStore.open(url) as store:
        store.append(*new_stream(2), 0)
    assert POSTGRES_DSN is not None
    with (
        psycopg.connect(POSTGRES_DSN, autocommit=True) as admin,
        pytest.raises(psycopg.errors.RaiseException, match="never updated or deleted"),
    ):
        admin.execute(statement.format(schema=pg.schemas[-1]))
    with SyncPostgresStore.open(url) as store:
        assert store.last_position() == 2


def _cluster(action: str) -> list[str] | None:
    """The command that stops or starts the local test server, where this machine allows it."""
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0 or not os.path.isdir("/etc/postgresql"):
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action] if versions else None


@pytest.mark.slow
def test_a_server_restart_loses_no_acknowledged_event_and_the_store_carries_on(pg: Databases) -> None:
    stop, start = _cluster("stop"), _cluster("start")
    if stop is None or start is None:
        pytest.skip("stopping the server needs pg_ctlcluster and root on this machine")
    with SyncPostgresStore.open(pg.url("restart")) as store:
        acknowledged = [store.append(*new_stream(2), 0) for _ in range(20)]
        subprocess.run(stop, check=True, capture_output=True, timeout=120)
        try:
            with pytest.raises(StoreUnavailableError):
                store.append(*new_stream(1), 0)
            with pytest.raises(StoreUnavailableError):
                store.last_position()
        finally:
            subprocess.run(start, check=True, capture_output=True, timeout=120)
        assert store.last_position() == acknowledged[-1].last_position
        assert store.append(*new_stream(1), 0).first_position == acknowledged[-1].last_position + 1


def test_an_append_reads_what_committed_while_it_waited_for_the_lock_under_repeatable_read(
    pg: Databases,
) -> None:
    """A server (or role, or URL) whose default is REPEATABLE READ must not make an
    append read the last position as it was before its wait for the write lock."""
    url = pg.url("rr")
    schema = parse_url(url).schema
    repeatable = pg.url("rr", options="-c%20default_transaction_isolation%3Drepeatable%5C%20read")
    with SyncPostgresStore.open(url) as store, SyncPostgresStore.open(repeatable) as waiting:
        stream, events = new_stream(1)
        store.append(stream, events, 0)
        assert POSTGRES_DSN is not None
        with psycopg.connect(POSTGRES_DSN) as holder:
            holder.execute(f'SET search_path TO "{schema}"')
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
            # Another writer's event, committed while the append below waits for the lock.
            holder.execute(
                "INSERT INTO events SELECT 2, 'another stream', version, event_type, schema_version, "
                "recorded_at, data, hash FROM events WHERE position = 1"
            )
            outcome: list[object] = []
            appending = threading.Thread(
                target=lambda: outcome.append(waiting.append(*new_stream(1), 0).first_position)
            )
            appending.start()
            time.sleep(0.5)
            holder.commit()
        appending.join(timeout=30)
    assert outcome == [3]
