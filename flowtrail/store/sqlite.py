"""The embedded log: SQLite, with an async store (aiosqlite) and a sync twin (sqlite3).

Both run the same scripts with the same SQL; they differ only in the driver, and in
that the async store commits appends in groups. How SQLite is used, and why:

- WAL journal, so readers never block the writer or each other.
- Every write transaction is ``BEGIN IMMEDIATE``, taken on the process's one writer
  connection. A deferred transaction that reads and then writes fails at once with
  "database is locked" when another process wrote in between, ignoring the busy
  timeout; an immediate one waits for the lock up to ``busy_timeout`` and then raises
  `StoreBusyError`, never a raw sqlite3 error.
- ``synchronous=FULL`` by default: a commit is on disk before an append returns.
  ``durability="normal"`` (``?durability=normal``) trades the last transactions
  before a power loss for speed; a process crash still loses nothing.
- Group commit (async): appends that arrive while a transaction is being written wait
  for it and then share the next one: one transaction and one fsync for the group,
  each append still checked on its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from uuid import uuid4

import aiosqlite

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import (
    Append,
    Begin,
    Commit,
    Effect,
    Execute,
    ExecuteMany,
    Fetch,
    OnWriter,
    Rollback,
    Script,
)
from flowtrail.core.errors import FlowtrailError, InvalidInputError, InvalidUrlError
from flowtrail.core.events import Event
from flowtrail.core.projection import Dialect, Projection
from flowtrail.store.api import (
    DEFAULT_MAX_EVENT_BYTES,
    AppendResult,
    PreparedAppend,
    StreamWrite,
    check_position,
    check_stream_id,
    prepare_append,
)
from flowtrail.store.drivers import run_async, run_sync
from flowtrail.store.scripts import (
    LogSql,
    append_script,
    last_position_script,
    read_batch_script,
    read_stream_script,
    stream_version_script,
)
from flowtrail.store.sqlite_schema import (
    SQL,
    check_file,
    check_filesystem,
    connect_options,
    ensure_directory,
    is_memory,
    mark_current_script,
    mark_stale_script,
    schema_script,
    translate,
)
from flowtrail.store.urls import parse_url

__all__ = ["SQLiteStore", "SyncSQLiteStore"]

T = TypeVar("T")

#: The most appends one group commit takes; the rest wait for the next.
MAX_GROUP = 512


class _Options:
    """What both stores are opened with, checked once."""

    def __init__(
        self,
        path: str | Path,
        *,
        durability: str = "full",
        busy_timeout: float = 5.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        projections: Sequence[Projection] = (),
        allow_network_filesystem: bool = False,
    ) -> None:
        if durability not in ("full", "normal"):
            raise InvalidInputError(f"durability is 'full' or 'normal', not {durability!r}")
        if busy_timeout <= 0 or max_event_bytes <= 0:
            raise InvalidInputError("busy_timeout and max_event_bytes must be positive")
        self.path = str(path)
        self.memory = is_memory(self.path)
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.max_event_bytes = int(max_event_bytes)
        self.projections = tuple(projections)
        if not self.memory:
            file = Path(self.path)
            ensure_directory(file)
            if not allow_network_filesystem:
                check_filesystem(file)
            check_file(file)

    @classmethod
    def from_url(cls, url: str, overrides: dict[str, Any]) -> _Options:
        """Options from a ``sqlite:///`` URL; keyword arguments override its query."""
        parsed = parse_url(url)
        if parsed.backend != "sqlite":
            raise InvalidUrlError(f"{url!r} is not a SQLite URL")
        settings: dict[str, Any] = {
            "durability": parsed.durability,
            "busy_timeout": parsed.busy_timeout,
            "max_event_bytes": parsed.max_event_bytes,
            **overrides,
        }
        return cls(parsed.target, **settings)

    def prepare(
        self,
        writes: Sequence[StreamWrite],
        idempotency_key: str | None,
        expect: Mapping[str, int] | None,
        known: Mapping[str, object] | None = None,
    ) -> PreparedAppend:
        return prepare_append(
            writes,
            idempotency_key=idempotency_key,
            expect=expect,
            max_event_bytes=self.max_event_bytes,
            known=known,
        )


def _one(result: AppendResult | FlowtrailError) -> AppendResult:
    if isinstance(result, FlowtrailError):
        raise result
    return result


# --- sync ------------------------------------------------------------------------------------------


class _Backend:
    """What the outer layers need to know of SQLite's side: its dialect, its log
    statements, and how to mark a projection stale or current."""

    dialect: Dialect = "sqlite"
    sql: LogSql = SQL

    @staticmethod
    def mark_stale(projection: Projection) -> Script[None]:
        return mark_stale_script(projection)

    @staticmethod
    def mark_current(projection: Projection) -> Script[None]:
        return mark_current_script(projection)


def _not_performed(effect: Effect) -> BaseException:
    return InvalidInputError(
        f"perform() reads and appends; {type(effect).__name__} needs run(..., write=True)"
    )


class SyncSQLiteStore(_Backend):
    """The SQLite log with plain calls. Safe to share between threads."""

    def __init__(self, path: str | Path | _Options, **options: Any) -> None:
        self._options = path if isinstance(path, _Options) else _Options(path, **options)
        self._writer = self._connect()
        self._reader = self._writer if self._options.memory else self._connect()
        self._write_lock = threading.RLock()
        self._read_lock = self._write_lock if self._options.memory else threading.Lock()
        self._execute_write = self._executor(self._writer)
        self._execute_read = self._executor(self._reader)
        self.stale_projections: list[str] = self.run(
            schema_script(self._options.projections, log_id=str(uuid4())), write=True
        )

    @classmethod
    def open(cls, url: str, **options: Any) -> SyncSQLiteStore:
        """Open (creating if needed) the log at a ``sqlite:///`` URL."""
        return cls(_Options.from_url(url, options))

    def _connect(self) -> sqlite3.Connection:
        options = self._options
        try:
            connection = sqlite3.connect(
                options.path, isolation_level=None, check_same_thread=False, timeout=options.busy_timeout
            )
            if not options.memory:
                connection.execute("PRAGMA journal_mode = WAL")
            for statement in connect_options(options.durability, options.busy_timeout):
                connection.execute(statement)
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        return connection

    @staticmethod
    def _executor(connection: sqlite3.Connection) -> Callable[[Effect], Any]:
        def execute(effect: Effect) -> Any:
            match effect:
                case Fetch(sql, params):
                    return connection.execute(sql, params).fetchall()
                case ExecuteMany(sql, rows):
                    if len(rows) == 1:  # one row: execute() skips executemany's iterator set-up
                        connection.execute(sql, rows[0])
                    else:
                        connection.executemany(sql, rows)
                case Execute(sql, params):
                    connection.execute(sql, params)
                case Begin():
                    connection.execute("BEGIN IMMEDIATE")
                case Commit():
                    connection.execute("COMMIT")
                case Rollback():
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                case _:
                    raise InvalidInputError(
                        f"run() carries SQL effects; {type(effect).__name__} needs perform()"
                    )
            return None

        return execute

    def run(self, script: Script[T], *, write: bool = False) -> T:
        """Run a script on the writer (``write=True``) or the reader connection."""
        connection, execute = (
            (self._writer, self._execute_write) if write else (self._reader, self._execute_read)
        )
        with self._write_lock if write else self._read_lock:
            try:
                return run_sync(script, execute, translate)
            except BaseException:
                if connection.in_transaction:  # interrupted mid-transaction: leave nothing open
                    connection.execute("ROLLBACK")
                raise

    def perform(self, script: Script[T]) -> T:
        """Run a script of reads (`Fetch`, on the reader) and appends (`Append`)."""
        return run_sync(script, self._perform_effect, translate)

    def _perform_effect(self, effect: Effect) -> Any:
        match effect:
            case Append(writes, key, expect, known):
                return self.append_many(writes, idempotency_key=key, expect=expect, known=known)
            case Fetch(sql, params):
                with self._read_lock:
                    return self._reader.execute(sql, params).fetchall()
            case OnWriter(script):
                return self.run(script, write=True)
        raise _not_performed(effect)

    def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int | None,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append events to one stream at ``expected_version``; see `Store.append`."""
        return self.append_many(
            [StreamWrite(stream_id, events, expected_version)], idempotency_key=idempotency_key
        )

    def append_many(
        self,
        writes: Sequence[StreamWrite],
        *,
        idempotency_key: str | None = None,
        expect: Mapping[str, int] | None = None,
        known: Mapping[str, object] | None = None,
    ) -> AppendResult:
        """Append to several streams atomically; ``expect`` names streams only read,
        ``known`` is handed to the inline projections (see `Append`)."""
        prepared = self._options.prepare(writes, idempotency_key, expect, known)
        (result,) = self.run(append_script([prepared], SQL, self._options.projections), write=True)
        return _one(result)

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        return self.run(
            read_stream_script(SQL, check_stream_id(stream_id), check_position(from_version, "from_version"))
        )

    def read_all(self, from_position: int = 1, batch: int = 1000) -> Iterator[RecordedEvent]:
        """Every event from ``from_position`` on, in position order, ``batch`` rows at a time."""
        position = check_position(from_position, "from_position")
        size = max(1, check_position(batch, "batch"))
        while True:
            records = self.run(read_batch_script(SQL, position, size))
            yield from records
            if len(records) < size:
                return
            position = records[-1].position + 1

    def last_position(self) -> int:
        return self.run(last_position_script(SQL))

    def stream_version(self, stream_id: str) -> int:
        return self.run(stream_version_script(SQL, check_stream_id(stream_id)))

    def close(self) -> None:
        with self._write_lock:
            for connection in {id(self._reader): self._reader, id(self._writer): self._writer}.values():
                connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- async -----------------------------------------------------------------------------------------


class SQLiteStore(_Backend):
    """The SQLite log, async, with group commit. Open it with ``await SQLiteStore.open(...)``."""

    def __init__(
        self,
        options: _Options,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        *,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._options = options
        self._max_group = max_group
        self._writer = writer
        self._reader = reader
        self._pending: list[tuple[PreparedAppend, asyncio.Future[AppendResult]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = self._write_lock if options.memory else asyncio.Lock()
        self.stale_projections: list[str] = []
        #: Transactions committed for appends, and appends committed: their ratio is
        #: the size of the average group.
        self.commit_groups = 0
        self.appends_committed = 0

    @classmethod
    async def open(cls, url: str, *, max_group: int = MAX_GROUP, **options: Any) -> SQLiteStore:
        """Open (creating if needed) the log at a ``sqlite:///`` URL."""
        return await cls.open_path(_Options.from_url(url, options), max_group=max_group)

    @classmethod
    async def open_path(
        cls, options: _Options | str | Path, *, max_group: int = MAX_GROUP, **settings: Any
    ) -> SQLiteStore:
        """Open the log in a file (or ``":memory:"``) with explicit settings.

        ``max_group`` caps how many appends share a commit.
        """
        opened = options if isinstance(options, _Options) else _Options(options, **settings)
        writer = await cls._connect(opened)
        reader = writer if opened.memory else await cls._connect(opened)
        store = cls(opened, writer, reader, max_group=max_group)
        try:
            store.stale_projections = await store.run(
                schema_script(opened.projections, log_id=str(uuid4())), write=True
            )
        except BaseException:
            await store.close()
            raise
        return store

    @staticmethod
    async def _connect(options: _Options) -> aiosqlite.Connection:
        connection = None
        try:
            connection = await aiosqlite.connect(
                options.path, isolation_level=None, timeout=options.busy_timeout
            )
            if not options.memory:
                await connection.execute("PRAGMA journal_mode = WAL")
            for statement in connect_options(options.durability, options.busy_timeout):
                await connection.execute(statement)
        except sqlite3.Error as exc:
            if connection is not None:
                await connection.close()
            raise translate(exc) from exc
        return connection

    @staticmethod
    def _executor(connection: aiosqlite.Connection) -> Callable[[Effect], Awaitable[Any]]:
        async def execute(effect: Effect) -> Any:
            match effect:
                case Fetch(sql, params):
                    return await connection.execute_fetchall(sql, params)
                case ExecuteMany(sql, rows):
                    await connection.executemany(sql, rows)
                case Execute(sql, params):
                    await connection.execute(sql, params)
                case Begin():
                    await connection.execute("BEGIN IMMEDIATE")
                case Commit():
                    await connection.execute("COMMIT")
                case Rollback():
                    if connection.in_transaction:
                        await connection.execute("ROLLBACK")
                case _:
                    raise InvalidInputError(
                        f"run() carries SQL effects; {type(effect).__name__} needs perform()"
                    )
            return None

        return execute

    async def run(self, script: Script[T], *, write: bool = False) -> T:
        """Run a script on the writer (``write=True``) or the reader connection."""
        connection = self._writer if write else self._reader
        async with self._write_lock if write else self._read_lock:
            try:
                return await run_async(script, self._executor(connection), translate)
            except BaseException:
                if connection.in_transaction:
                    await asyncio.shield(connection.execute("ROLLBACK"))
                raise

    async def perform(self, script: Script[T]) -> T:
        """Run a script of reads (`Fetch`, on the reader) and appends (`Append`, grouped)."""
        return await run_async(script, self._perform_effect, translate)

    async def _perform_effect(self, effect: Effect) -> Any:
        match effect:
            case Append(writes, key, expect, known):
                return await self.append_many(writes, idempotency_key=key, expect=expect, known=known)
            case Fetch(sql, params):
                async with self._read_lock:
                    return await self._reader.execute_fetchall(sql, params)
            case OnWriter(script):
                return await self.run(script, write=True)
        raise _not_performed(effect)

    async def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int | None,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append events to one stream at ``expected_version``; see `Store.append`."""
        return await self.append_many(
            [StreamWrite(stream_id, events, expected_version)], idempotency_key=idempotency_key
        )

    async def append_many(
        self,
        writes: Sequence[StreamWrite],
        *,
        idempotency_key: str | None = None,
        expect: Mapping[str, int] | None = None,
        known: Mapping[str, object] | None = None,
    ) -> AppendResult:
        """Append to several streams atomically, sharing a commit with concurrent appends."""
        prepared = self._options.prepare(writes, idempotency_key, expect, known)
        done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((prepared, done))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups())
        return await done

    async def _commit_groups(self) -> None:
        group: list[tuple[PreparedAppend, asyncio.Future[AppendResult]]] = []
        try:
            await asyncio.sleep(0)  # let the appends arriving together join the first group
            while self._pending:
                group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
                try:
                    results = await self.run(
                        append_script([prepared for prepared, _ in group], SQL, self._options.projections),
                        write=True,
                    )
                    self.commit_groups += 1
                    self.appends_committed += len(group)
                except Exception as exc:
                    results = [exc] * len(group)  # type: ignore[list-item]
                for (_, done), result in zip(group, results, strict=True):
                    if not done.done():
                        if isinstance(result, BaseException):
                            done.set_exception(result)
                        else:
                            done.set_result(result)
                group = []
        except asyncio.CancelledError:
            # The loop is shutting down: nobody is left to commit for the waiting appends.
            for _, done in (*group, *self._pending):
                done.cancel()
            self._pending = []
            raise
        finally:
            self._committer = None

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        return await self.run(
            read_stream_script(SQL, check_stream_id(stream_id), check_position(from_version, "from_version"))
        )

    async def read_all(self, from_position: int = 1, batch: int = 1000) -> AsyncIterator[RecordedEvent]:
        """Every event from ``from_position`` on, in position order, ``batch`` rows at a time."""
        position = check_position(from_position, "from_position")
        size = max(1, check_position(batch, "batch"))
        while True:
            records = await self.run(read_batch_script(SQL, position, size))
            for record in records:
                yield record
            if len(records) < size:
                return
            position = records[-1].position + 1

    async def last_position(self) -> int:
        return await self.run(last_position_script(SQL))

    async def stream_version(self, stream_id: str) -> int:
        return await self.run(stream_version_script(SQL, check_stream_id(stream_id)))

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        for connection in {id(self._reader): self._reader, id(self._writer): self._writer}.values():
            await connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
