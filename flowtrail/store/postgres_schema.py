"""PostgreSQL's side of the log: its statements, its schema, the write lock that orders
positions, and the translation of psycopg's errors.

Why positions are assigned under one lock
-----------------------------------------
A position is the last position plus one, read and written while holding a
transaction-scoped advisory lock taken by every write transaction (`lock_statement`).
Two things follow, both needed:

- **Gap-free.** A sequence would leave holes wherever a transaction rolls back, and an
  auditor could not tell a hole from a deleted event.
- **Commit order equals position order.** With a sequence, transaction A can take 10,
  transaction B 11, and B commit first: a reader tailing the log sees 11, moves its
  checkpoint past 10, and never sees A's event (the way a retry daemon once skipped a
  fraction of its retries). Under the lock, B cannot read the last position until A
  has committed and released it (PostgreSQL makes a commit visible before it releases
  the transaction's locks), so whatever a reader sees at position N, everything before
  N was committed first. That needs each statement to read what was committed before
it began (READ COMMITTED, which write transactions ask for whatever the server's
default): under REPEATABLE READ the lock statement itself would take the snapshot,
before its wait, and the last position read after the wait would be stale.

The alternative, fencing readers with ``pg_snapshot_xmin``, keeps writers concurrent
but puts the burden on every reader and still leaves gaps. The lock costs what it
costs SQLite: one writer at a time per log. It is held only for the write itself: the
policy decides before the transaction begins (except for a proposal that already lost
to other writers three times, decided again holding it), and a group commit makes one
transaction of many appends. An advisory lock (keyed by the schema's name) rather than a table
lock, because a table lock in EXCLUSIVE mode also waits on autovacuum.

Every log lives in its own schema (``?schema=name``, default ``flowtrail``), so tests
and tenants are isolated; the connection's ``search_path`` points at it, so the
statements are those of every backend.
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import errors as pg_errors

from flowtrail.core.errors import (
    CorruptLogError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from flowtrail.store.schema import PortableLogSql, SchemaDefinition

__all__ = [
    "BEGIN",
    "SQL",
    "PostgresLogSql",
    "begin_statement",
    "lock_key",
    "lock_statement",
    "schema_definition",
    "translate",
]


class PostgresLogSql(PortableLogSql):
    """The log's statements in PostgreSQL's dialect."""

    position_lookup = (
        "SELECT 'p', NULL, (SELECT max(position) FROM events), "
        "(SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1), NULL::bytea"
    )

    def heads_lookup(self, streams: int) -> str:
        # Each stream's head by its (stream_id, version) index: one row read per stream.
        return (
            "SELECT 'h', s.id, e.version, NULL, e.hash "
            f"FROM (VALUES {', '.join(['(?)'] * streams)}) AS s(id) CROSS JOIN LATERAL "
            "(SELECT version, hash FROM events WHERE stream_id = s.id ORDER BY version DESC LIMIT 1) AS e"
        )


SQL = PostgresLogSql()

# Identifiers compare byte for byte (COLLATE "C"), as in SQLite, whatever the database's locale.
_SCHEMA_V1 = (
    'CREATE TABLE flowtrail_meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL)',
    """CREATE TABLE events (
        position BIGINT PRIMARY KEY,
        stream_id TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        event_type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        recorded_at BIGINT NOT NULL,
        data BYTEA NOT NULL,
        hash BYTEA NOT NULL,
        UNIQUE (stream_id, version)
    )""",
    """CREATE TABLE idempotency_keys (
        key TEXT COLLATE "C" PRIMARY KEY, first_position BIGINT NOT NULL, last_position BIGINT NOT NULL
    )""",
    """CREATE TABLE checkpoints (
        name TEXT COLLATE "C" PRIMARY KEY, version BIGINT NOT NULL, position BIGINT NOT NULL
    )""",
    # The log is append-only: the database itself refuses to change or remove an event.
    """CREATE FUNCTION flowtrail_events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'flowtrail events are never updated or deleted (%)', TG_OP; END $$""",
    """CREATE TRIGGER events_are_never_updated BEFORE UPDATE ON events
       FOR EACH ROW EXECUTE FUNCTION flowtrail_events_are_append_only()""",
    """CREATE TRIGGER events_are_never_deleted BEFORE DELETE ON events
       FOR EACH ROW EXECUTE FUNCTION flowtrail_events_are_append_only()""",
    """CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
       FOR EACH STATEMENT EXECUTE FUNCTION flowtrail_events_are_append_only()""",
)


def schema_definition(schema: str) -> SchemaDefinition:
    """The schema of a log kept in the PostgreSQL schema ``schema``."""
    return SchemaDefinition(
        dialect="postgresql",
        create=_SCHEMA_V1,
        list_tables=(
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{schema}' AND table_type = 'BASE TABLE'"
        ),
        prepare=(f'CREATE SCHEMA IF NOT EXISTS "{schema}"',),
    )


def lock_key(schema: str) -> int:
    """The advisory lock of the log in ``schema``: a signed 64-bit number from its name."""
    digest = hashlib.sha256(f"flowtrail log {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_statement(schema: str) -> str:
    """Take the log's write lock, held until the transaction ends."""
    return f"SELECT pg_advisory_xact_lock({lock_key(schema)})"


#: How a write transaction begins: each statement reads what was committed before it
#: (see the module's docstring), whatever the server's or the role's default.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"


def begin_statement(schema: str) -> str:
    """Begin a write transaction holding the log's write lock (for a plain connection)."""
    return f"{BEGIN}; {lock_statement(schema)}"


# --- psycopg's errors, in flowtrail's words -------------------------------------------------------


def translate(exc: Exception) -> BaseException:
    """The one place psycopg's errors become flowtrail's; others pass through unchanged."""
    if not isinstance(exc, psycopg.Error):
        return exc
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, pg_errors.LockNotAvailable) or (
        isinstance(exc, pg_errors.QueryCanceled) and "lock timeout" in text
    ):
        return StoreBusyError(f"another writer held the log's write lock past the busy timeout ({text})")
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn | pg_errors.UndefinedFunction):
        return CorruptLogError(f"the log's tables are not as flowtrail made them: {text}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # Connection refused or lost, server shut down or restarting, too many clients.
        return StoreUnavailableError(f"PostgreSQL cannot be reached right now: {text}")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StoreError(f"PostgreSQL refused: {text}")
    if isinstance(exc, psycopg.IntegrityError):
        return StoreError(f"the database refused a write: {text}")
    return StoreError(f"PostgreSQL: {text}")
