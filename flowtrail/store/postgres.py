"""The shared log: PostgreSQL through psycopg 3, an async store and a sync twin.

Many processes on many machines append to one log. They run the scripts every store
runs (`flowtrail.store.base`); what PostgreSQL changes is said where it happens:

- Every write transaction takes the log's advisory lock first
  (`flowtrail.store.postgres_schema`): positions are gap-free and commit-ordered, so a
  reader tailing the log by position never skips an event. The policy has decided
  before the transaction begins, so nothing is locked while a decision is made; only
  a proposal that already lost to other writers three times is decided holding it.
- ``lock_timeout`` bounds the wait for that lock (``?busy_timeout=`` seconds, as for
  SQLite), after which the append fails with `StoreBusyError`.
- A commit is durable when it returns (``synchronous_commit`` as the server has it,
  ``on`` by default).
- A connection found dead when a transaction or a lone read starts (the server
  restarted, a proxy dropped it while idle) is replaced, and the statement sent again:
  nothing of it had been done. A connection lost in the middle of a transaction fails
  the call with `StoreUnavailableError`, and the next call connects again. An append
  whose COMMIT was cut off may or may not have landed: retry it with its idempotency
  key, which returns the original result if it did.
- Statements are written with ``?`` like every backend's; they are turned into
  psycopg's ``%s`` once each, and psycopg prepares the ones that repeat.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar
from uuid import uuid4

import psycopg
from psycopg import pq

from flowtrail.core.effects import Begin, Commit, Effect, Execute, ExecuteMany, Fetch, Rollback, Script
from flowtrail.core.errors import InvalidInputError, InvalidUrlError, StoreUnavailableError
from flowtrail.core.projection import Dialect, Projection
from flowtrail.store.api import DEFAULT_MAX_EVENT_BYTES
from flowtrail.store.base import MAX_GROUP, AsyncLogStore, StoreOptions, SyncLogStore
from flowtrail.store.drivers import Translate, run_async
from flowtrail.store.postgres_schema import BEGIN, SQL, lock_statement, schema_definition, translate
from flowtrail.store.schema import schema_script
from flowtrail.store.scripts import LogSql
from flowtrail.store.urls import parse_url, shown_url, without_password

__all__ = ["PostgresStore", "SyncPostgresStore"]

T = TypeVar("T")

_OPEN = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


class _Options(StoreOptions):
    """What both PostgreSQL stores are opened with, checked once."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "flowtrail",
        busy_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        projections: Sequence[Projection] = (),
        create: bool = True,
    ) -> None:
        super().__init__(max_event_bytes=max_event_bytes, projections=projections, create=create)
        if busy_timeout <= 0 or connect_timeout <= 0:
            raise InvalidInputError("busy_timeout and connect_timeout must be positive")
        self.conninfo = conninfo
        self.schema = schema
        self.busy_timeout = float(busy_timeout)
        self.connect_timeout = float(connect_timeout)
        self.lock = lock_statement(schema)
        self.schema_definition = schema_definition(schema)
        # Run on every new connection: where the log's tables are, and how long to wait
        # for the write lock.
        self.setup = f'SET search_path TO "{schema}"; SET lock_timeout = {int(self.busy_timeout * 1000)}'

    @classmethod
    def from_url(cls, url: str, overrides: dict[str, Any]) -> _Options:
        """Options from a ``postgresql://`` URL; keyword arguments override its query."""
        parsed = parse_url(url)
        if parsed.backend != "postgresql":
            raise InvalidUrlError(f"{shown_url(url)!r} is not a PostgreSQL URL")
        settings: dict[str, Any] = {
            "schema": parsed.schema,
            "busy_timeout": parsed.busy_timeout,
            "max_event_bytes": parsed.max_event_bytes,
            **overrides,
        }
        return cls(parsed.target, **settings)


@functools.cache
def _placeholders(sql: str) -> str:
    """A statement with ``?`` placeholders, in psycopg's ``%s`` style."""
    return sql.replace("%", "%%").replace("?", "%s")


def _wrong_effect(effect: Effect) -> BaseException:
    return InvalidInputError(f"run() carries SQL effects; {type(effect).__name__} needs perform()")


def _usable(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None) -> bool:
    return connection is not None and not connection.closed and not connection.broken


class _Statement(NamedTuple):
    sql: str
    params: Sequence[Any] | None = None
    many: bool = False

    @property
    def text(self) -> str:
        return _placeholders(self.sql) if self.params else self.sql


class _Batch(NamedTuple):
    """Statements sent together (pipelined), the last one's rows returned if ``fetch``."""

    statements: list[_Statement]
    fetch: bool
    #: Nothing of it can have taken effect if the connection turns out dead: it may be
    #: sent again on a new one (a transaction's first batch without its COMMIT, a read).
    retryable: bool


class _Planner:
    """Which statements go to the server when, the same for both drivers.

    A transaction's statements are held back until one needs an answer: BEGIN and the
    write lock go with the append's lookup, and the writes go with COMMIT. A write
    transaction is then two round trips, and the lock is held for one of them and a
    commit, not for one round trip per statement. (A proposal decided holding the lock,
    `flowtrail.core.effects.Locked`, sends BEGIN and the lock with its first read, and
    holds it for each of its reads too.)
    """

    def __init__(self, begin: Sequence[_Statement]) -> None:
        self._begin = list(begin)
        self._queued: list[_Statement] = []
        self.in_transaction = False
        self._sent = False  # has this transaction reached the server yet?

    def next(self, effect: Effect) -> _Batch | None:
        match effect:
            case Begin():
                self._queued, self.in_transaction, self._sent = list(self._begin), True, False
                return None
            case Execute(sql, params):
                return self._write(_Statement(sql, params or None))
            case ExecuteMany(sql, rows):
                return self._write(_Statement(sql, rows, many=True))
            case Fetch(sql, params):
                return self._flush(_Statement(sql, params or None), fetch=True)
            case Commit():
                batch = self._flush(_Statement("COMMIT"), fetch=False)
                self.in_transaction = False
                return batch._replace(retryable=False)
        raise _wrong_effect(effect)

    def _write(self, statement: _Statement) -> _Batch | None:
        if self.in_transaction:
            self._queued.append(statement)
            return None
        return _Batch([statement], fetch=False, retryable=False)  # a lone write may have landed

    def _flush(self, last: _Statement, *, fetch: bool) -> _Batch:
        statements, self._queued = [*self._queued, last], []
        retryable = not (self.in_transaction and self._sent)
        self._sent = self.in_transaction
        return _Batch(statements, fetch=fetch, retryable=retryable)

    def reset(self) -> None:
        self._queued, self.in_transaction, self._sent = [], False, False


def _begin_statements(options: _Options) -> list[_Statement]:
    return [_Statement(BEGIN), _Statement(options.lock)]


# --- sync ------------------------------------------------------------------------------------------


def _send(connection: psycopg.Connection[Any], batch: _Batch) -> Any:
    if len(batch.statements) == 1:
        return _one(connection, batch.statements[0], batch.fetch)
    with connection.pipeline():
        for statement in batch.statements[:-1]:
            _one(connection, statement, fetch=False)
        return _one(connection, batch.statements[-1], batch.fetch)


def _one(connection: psycopg.Connection[Any], statement: _Statement, fetch: bool) -> Any:
    if statement.many:
        with connection.cursor() as cursor:
            cursor.executemany(statement.text, statement.params or ())
        return None
    cursor = connection.execute(statement.text, statement.params)
    return cursor.fetchall() if fetch else None


#: In a forked child, the parent's connections (see `flowtrail.store.forks`), kept
#: referenced for the child's life: never closed there, which would end the parent's
#: session on the socket both share, nor collected, which warns that they were left
#: open (psycopg ends a connection only in the process that opened it).
_left: list[object] = []


def _keep(connection: object) -> None:
    if connection is not None:
        _left.append(connection)


class _Connection:
    """A psycopg connection carrying out SQL effects, connecting again after a loss."""

    def __init__(self, options: _Options) -> None:
        self._options = options
        self._connection: psycopg.Connection[Any] | None = None
        self._planner = _Planner(_begin_statements(options))
        self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        options = self._options
        try:
            connection = psycopg.Connection.connect(
                options.conninfo, autocommit=True, connect_timeout=max(1, round(options.connect_timeout))
            )
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL: {without_password(_first_line(exc), options.conninfo)}"
            ) from exc
        try:
            connection.execute(options.setup)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def execute(self, effect: Effect) -> Any:
        if isinstance(effect, Rollback):
            self.abandon()
            return None
        batch = self._planner.next(effect)
        if batch is None:
            return None
        connection = self._connection
        if _usable(connection):
            try:
                return _send(connection, batch)  # type: ignore[arg-type]
            except psycopg.OperationalError:
                if _usable(connection) or not batch.retryable:
                    raise  # the statement failed (a lock timeout), or work may be lost
                connection.close()  # type: ignore[union-attr]
        elif not batch.retryable:
            raise StoreUnavailableError("the connection to PostgreSQL was lost during a transaction")
        # Found dead (idle, restarted server): nothing of this batch was done; send it again.
        return _send(self._connect(), batch)

    def abandon(self) -> None:
        self._planner.reset()
        connection = self._connection
        if connection is None or connection.closed:
            return
        if connection.broken:
            connection.close()
            return
        if connection.info.transaction_status in _OPEN:
            try:
                connection.execute("ROLLBACK")
            except psycopg.Error:
                connection.close()  # the next call connects again

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def left_behind(self, idle: bool) -> None:
        _keep(self._connection)


class SyncPostgresStore(SyncLogStore):
    """The PostgreSQL log with plain calls. Safe to share between threads."""

    dialect: Dialect = "postgresql"
    sql: LogSql = SQL

    def __init__(self, options: _Options) -> None:
        writer = _Connection(options)
        try:
            reader = _Connection(options)
        except BaseException:
            writer.close()
            raise
        super().__init__(options, writer, reader, translate=translate)
        self.schema = options.schema
        try:
            self.stale_projections = self.run(
                schema_script(
                    options.schema_definition, options.projections, log_id=str(uuid4()), create=options.create
                ),
                write=True,
            )
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, url: str, **options: Any) -> SyncPostgresStore:
        """Open the log at a ``postgresql://`` URL, creating or migrating its schema."""
        return cls(_Options.from_url(url, options))


# --- async -----------------------------------------------------------------------------------------


async def _send_async(connection: psycopg.AsyncConnection[Any], batch: _Batch) -> Any:
    if len(batch.statements) == 1:
        return await _one_async(connection, batch.statements[0], batch.fetch)
    async with connection.pipeline():
        for statement in batch.statements[:-1]:
            await _one_async(connection, statement, fetch=False)
        return await _one_async(connection, batch.statements[-1], batch.fetch)


async def _one_async(connection: psycopg.AsyncConnection[Any], statement: _Statement, fetch: bool) -> Any:
    if statement.many:
        async with connection.cursor() as cursor:
            await cursor.executemany(statement.text, statement.params or ())
        return None
    cursor = await connection.execute(statement.text, statement.params)
    return await cursor.fetchall() if fetch else None


class _AsyncConnection:
    """`_Connection`, with psycopg's async connection."""

    def __init__(self, options: _Options) -> None:
        self._options = options
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._planner = _Planner(_begin_statements(options))

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        options = self._options
        try:
            connection = await psycopg.AsyncConnection.connect(
                options.conninfo, autocommit=True, connect_timeout=max(1, round(options.connect_timeout))
            )
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL: {without_password(_first_line(exc), options.conninfo)}"
            ) from exc
        try:
            await connection.execute(options.setup)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return connection

    async def run(self, script: Script[T], translate: Translate) -> T:
        return await run_async(script, self.execute, translate)

    async def execute(self, effect: Effect) -> Any:
        if isinstance(effect, Rollback):
            await self.abandon()
            return None
        batch = self._planner.next(effect)
        if batch is None:
            return None
        connection = self._connection
        if _usable(connection):
            try:
                return await _send_async(connection, batch)  # type: ignore[arg-type]
            except psycopg.OperationalError:
                if _usable(connection) or not batch.retryable:
                    raise
                await connection.close()  # type: ignore[union-attr]
        elif not batch.retryable:
            raise StoreUnavailableError("the connection to PostgreSQL was lost during a transaction")
        return await _send_async(await self.connect(), batch)

    async def abandon(self) -> None:
        self._planner.reset()
        connection = self._connection
        if connection is None or connection.closed:
            return
        if connection.broken:
            await connection.close()
            return
        if connection.info.transaction_status in _OPEN:
            try:
                await connection.execute("ROLLBACK")
            except psycopg.Error:
                await connection.close()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    def left_behind(self, idle: bool) -> None:
        _keep(self._connection)


class PostgresStore(AsyncLogStore):
    """The PostgreSQL log, async, with group commit. Open it with ``await PostgresStore.open(url)``."""

    dialect: Dialect = "postgresql"
    sql: LogSql = SQL
    schema: str

    @classmethod
    async def open(cls, url: str, *, max_group: int = MAX_GROUP, **options: Any) -> PostgresStore:
        """Open the log at a ``postgresql://`` URL, creating or migrating its schema."""
        opened = _Options.from_url(url, options)
        writer, reader = _AsyncConnection(opened), _AsyncConnection(opened)
        try:
            await writer.connect()
            await reader.connect()
        except BaseException:
            await writer.close()
            await reader.close()
            raise
        store = cls(opened, writer, reader, translate=translate, max_group=max_group)
        store.schema = opened.schema
        try:
            store.stale_projections = await store.run(
                schema_script(
                    opened.schema_definition, opened.projections, log_id=str(uuid4()), create=opened.create
                ),
                write=True,
            )
        except BaseException:
            await store.close()
            raise
        return store


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
