"""What every backend's schema shares: the log's portable statements, the schema's
version and migrations, and the bookkeeping of projection tables.

A backend describes its own dialect in a `SchemaDefinition` (its DDL, how to list its
tables, its migrations); `schema_script` creates or migrates any of them the same way.
The schema has a version in the ``flowtrail_meta`` table: a database written by a newer
flowtrail is refused; an older one is migrated forward by statements that add and
never rewrite, so recorded events are never touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from flowtrail.core.effects import Begin, Commit, Execute, Fetch, Rollback, Script
from flowtrail.core.errors import CorruptLogError, LogNotFoundError, SchemaVersionError
from flowtrail.core.projection import Dialect, Projection

__all__ = [
    "SCHEMA_VERSION",
    "PortableLogSql",
    "SchemaDefinition",
    "mark_current_script",
    "holds_a_log",
    "mark_stale_script",
    "projection_is_current",
    "schema_check_script",
    "schema_script",
]

#: The schema version this flowtrail writes and reads.
SCHEMA_VERSION = 1

_SET_META = (
    "INSERT INTO flowtrail_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class PortableLogSql:
    """The log's statements that read the same in every dialect (``?`` placeholders).

    A dialect supplies the two parts of ``lookup`` that differ: the last position, and
    the head (version and hash) of each stream an append writes.
    """

    position_lookup: str

    #: See `LogSql.lean_cache`: none unless the dialect has them.
    lean_cache: str | None = None
    usual_cache: str | None = None

    def heads_lookup(self, streams: int) -> str:
        raise NotImplementedError

    def lookup(self, streams: int, keys: int) -> str:
        """The one query an append checks everything with (see `LogSql.lookup`)."""
        cached = self._lookups.get((streams, keys))
        if cached is None:
            parts = [self.position_lookup]
            if streams:
                parts.append(self.heads_lookup(streams))
            if keys:
                parts.append(
                    "SELECT 'k', key, first_position, last_position, NULL FROM idempotency_keys "
                    f"WHERE key IN ({', '.join('?' * keys)})"
                )
            cached = self._lookups[(streams, keys)] = " UNION ALL ".join(parts)
        return cached

    def __init__(self) -> None:
        self._lookups: dict[tuple[int, int], str] = {}

    last_position = "SELECT max(position) FROM events"
    insert_event = (
        "INSERT INTO events (position, stream_id, version, event_type, schema_version, recorded_at, data, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    insert_key = "INSERT INTO idempotency_keys (key, first_position, last_position) VALUES (?, ?, ?)"
    replayed = (
        "SELECT stream_id, max(version), min(recorded_at) FROM events "
        "WHERE position BETWEEN ? AND ? GROUP BY stream_id"
    )
    _columns = "position, stream_id, version, event_type, schema_version, recorded_at, data, hash"
    read_stream = f"SELECT {_columns} FROM events WHERE stream_id = ? AND version >= ? ORDER BY version"
    read_batch = f"SELECT {_columns} FROM events WHERE position >= ? ORDER BY position LIMIT ?"
    #: `read_batch` for rows the driver cannot read as text (a dialect whose text is
    #: always UTF-8 needs no other).
    read_batch_as_bytes = read_batch
    read_stream_as_bytes = read_stream
    stream_version = "SELECT max(version) FROM events WHERE stream_id = ?"
    log_id = "SELECT value FROM flowtrail_meta WHERE key = 'log_id'"


class SchemaDefinition(NamedTuple):
    """One dialect's schema."""

    dialect: Dialect
    #: Statements creating the log's tables at version 1 (``flowtrail_meta`` first).
    create: Sequence[str]
    #: A query listing the tables that exist where the log lives (one column: the name).
    list_tables: str
    #: Tables of the database itself, which do not make it "another program's".
    own_tables: frozenset[str] = frozenset()
    #: Statements taking the schema from version N to N + 1.
    migrations: Mapping[int, Sequence[str]] = {}
    #: Statements run before ``create`` (e.g. creating the namespace it lives in).
    prepare: Sequence[str] = ()


def schema_script(
    definition: SchemaDefinition, projections: Sequence[Projection], *, log_id: str, create: bool = True
) -> Script[list[str]]:
    """Create or migrate the schema in one write transaction; returns the names of the
    projections needing a rebuild. With ``create=False``, a missing log is an error.

    A log already at this version, its projections current, is only read: opening it
    then takes no write lock, and waits on no writer (a `flowtrail runs` while flows
    write, a process opening the log while another rebuilds it)."""
    try:
        stale: list[str] | None = yield from schema_check_script(definition, projections)
    except (LogNotFoundError, SchemaVersionError):
        stale = None  # to create, migrate, or refuse (newer) under the write lock
    if stale == [] and (yield from _tables_as_declared(definition.dialect, projections)):
        return stale
    yield Begin()
    try:
        written = yield from _schema_in_transaction(definition, projections, log_id, create)
    except GeneratorExit:
        raise  # closed unfinished (its caller stopped): the store ends the transaction itself
    except BaseException:
        yield Rollback()
        raise
    yield Commit()
    return written


def holds_a_log(tables: set[str], definition: SchemaDefinition, *, create: bool, where: str = "here") -> bool:
    """Given a database's tables: whether it holds a flowtrail log. One that holds none
    is refused unless a log may be created there: another program's tables are a
    `CorruptLogError`, and no tables where none may be created a `LogNotFoundError`."""
    if "flowtrail_meta" in tables:
        return True
    foreign = tables - definition.own_tables
    if "events" in foreign and "checkpoints" in foreign:
        raise CorruptLogError(
            "this database holds a flowtrail log's tables but not its flowtrail_meta table, which "
            "flowtrail never drops: the log is damaged; restore it from a copy"
        )
    if foreign:
        raise CorruptLogError(
            f"this is not a flowtrail database: it holds other tables ({', '.join(sorted(foreign)[:5])})"
        )
    if not create:
        raise LogNotFoundError(f"there is no flowtrail log {where} yet")
    return False


def _recorded_version() -> Script[int]:
    rows = yield Fetch("SELECT value FROM flowtrail_meta WHERE key = 'schema_version'")
    if not rows or not str(rows[0][0]).isdigit():
        raise CorruptLogError("the flowtrail_meta table holds no schema version")
    return int(rows[0][0])


def projection_is_current(projection: Projection) -> Script[bool]:
    """Whether ``projection``'s tables reflect the log (not marked stale, not dropped)."""
    rows = yield Fetch("SELECT value FROM flowtrail_meta WHERE key = ?", (f"projection:{projection.name}",))
    return bool(rows) and rows[0][0] == str(projection.version)


def schema_check_script(definition: SchemaDefinition, projections: Sequence[Projection]) -> Script[list[str]]:
    """What opening a log read-only checks, writing nothing: that it is a flowtrail log
    at this flowtrail's schema version; returns the projections not current."""
    holds_a_log({str(row[0]) for row in (yield Fetch(definition.list_tables))}, definition, create=False)
    version = yield from _recorded_version()
    if version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise SchemaVersionError(
            f"this database has schema version {version}, written by {newer} flowtrail; this one reads "
            f"version {SCHEMA_VERSION}"
            + ("" if version > SCHEMA_VERSION else ": open it once to write, to migrate it")
        )
    stale = []
    for projection in projections:
        if not (yield from projection_is_current(projection)):
            stale.append(projection.name)  # noqa: PERF401 - a script cannot yield inside a comprehension
    return stale


def _schema_in_transaction(
    definition: SchemaDefinition, projections: Sequence[Projection], log_id: str, create: bool
) -> Script[list[str]]:
    tables = {str(row[0]) for row in (yield Fetch(definition.list_tables))}
    if not holds_a_log(tables, definition, create=create):
        for statement in definition.prepare:
            yield Execute(statement)
        for statement in definition.create:
            yield Execute(statement)
        yield Execute(_SET_META, ("schema_version", "1"))
        yield Execute(_SET_META, ("log_id", log_id))
        version = 1
    else:
        version = yield from _recorded_version()
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"this database has schema version {version}, written by a newer flowtrail; "
            f"this one reads up to version {SCHEMA_VERSION}"
        )
    while version < SCHEMA_VERSION:
        for statement in definition.migrations.get(version, ()):
            yield Execute(statement)
        version += 1
        yield Execute(_SET_META, ("schema_version", str(version)))
    return (yield from _projection_tables(definition.dialect, projections))


def _declared(projection: Projection, dialect: Dialect) -> str:
    """A digest of the statements declaring a projection's tables and indexes."""
    return _digest(projection.schema(dialect))


def _digest(statements: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(statements).encode()).hexdigest()


def _tables_as_declared(dialect: Dialect, projections: Sequence[Projection]) -> Script[bool]:
    """Whether each projection's tables were last made from the statements it declares
    now: an index added to a projection without a new version is made at the next open."""
    for projection in projections:
        rows = yield Fetch("SELECT value FROM flowtrail_meta WHERE key = ?", (f"declared:{projection.name}",))
        if not rows or rows[0][0] != _declared(projection, dialect):
            return False
    return True


def _projection_tables(dialect: Dialect, projections: Sequence[Projection]) -> Script[list[str]]:
    """Create each projection's tables; (re)create them when its version changed.

    Tables (re)created on a log that already holds events are empty: the projection
    is marked stale (``"<version>:stale"``) until a rebuild marks it current.
    """
    stale = []
    events = bool((yield Fetch("SELECT position FROM events LIMIT 1")))
    for projection in projections:
        key = f"projection:{projection.name}"
        rows = yield Fetch("SELECT value FROM flowtrail_meta WHERE key = ?", (key,))
        recorded = rows[0][0] if rows else None
        current, marked_stale = str(projection.version), f"{projection.version}:stale"
        if recorded not in (current, marked_stale):
            for table in projection.tables:
                yield Execute(f'DROP TABLE IF EXISTS "{table}"')
            recorded = marked_stale if events else current
            yield Execute(_SET_META, (key, recorded))
        if recorded == marked_stale:
            stale.append(projection.name)
        statements = _schema_while(projection, dialect, stale=recorded == marked_stale)
        for statement in statements:
            yield Execute(statement)
        # What was made, not what is declared: tables alone (views stale) do not match,
        # and the first open once the views are current again makes any index missing
        # (one an older flowtrail's rebuild, finishing them, does not build).
        yield Execute(_SET_META, (f"declared:{projection.name}", _digest(statements)))
    return stale


def _schema_while(projection: Projection, dialect: Dialect, *, stale: bool) -> Sequence[str]:
    """A projection's statements; while it is stale, those of its tables alone where it
    tells them apart (``table_schema``). A rebuild, here or in another process, may be
    filling the tables: their indexes are built once the rows are in, and built here
    they held the write lock as long as the rows loaded so far took to index (10 s for
    745,000 runs), past every other writer's busy timeout and the rebuild's own."""
    table_schema = getattr(projection, "table_schema", None)
    if stale and table_schema is not None:
        return list(table_schema(dialect))
    return projection.schema(dialect)


def mark_stale_script(projection: Projection) -> Script[None]:
    """Record that ``projection``'s tables do not reflect the log (a rebuild has begun)."""
    yield Execute(_SET_META, (f"projection:{projection.name}", f"{projection.version}:stale"))


def mark_current_script(projection: Projection) -> Script[None]:
    """Record that ``projection``'s tables now reflect the whole log (after a rebuild)."""
    yield Execute(_SET_META, (f"projection:{projection.name}", str(projection.version)))
