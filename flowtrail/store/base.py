"""The store every backend shares: scripts run on a writer and a reader connection,
appends checked and (on the async side) committed in groups, reads, closing.

A backend supplies a connection wrapper that carries out SQL effects (`Connection`,
`AsyncConnection`), its statements (`LogSql`), its dialect and the one function that
names its driver's errors in flowtrail's words. Everything else is here, once.

Group commit (async): appends that arrive while a transaction is being written wait
for it and then share the next one: one transaction and one durable commit for the
group, each append still checked on its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from flowtrail.core.chain import RecordedEvent
from flowtrail.core.effects import Append, Effect, Fetch, Join, Locked, OnWriter, Script
from flowtrail.core.errors import (
    FlowtrailError,
    InvalidInputError,
    StoreAccessError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from flowtrail.core.events import Event
from flowtrail.core.projection import Dialect, Projection
from flowtrail.store import forks
from flowtrail.store.api import (
    DEFAULT_MAX_EVENT_BYTES,
    AppendResult,
    PreparedAppend,
    StreamWrite,
    check_position,
    check_stream_id,
    prepare_append,
)
from flowtrail.store.drivers import ToItsEnd, Translate, run_async, run_sync
from flowtrail.store.schema import mark_current_script, mark_stale_script
from flowtrail.store.scripts import (
    LogSql,
    append_script,
    last_position_script,
    locked_script,
    read_batch_script,
    read_stream_script,
    stream_version_script,
)

__all__ = ["MAX_GROUP", "AsyncConnection", "AsyncLogStore", "Connection", "StoreOptions", "SyncLogStore"]

T = TypeVar("T")

#: The most appends one group commit takes; the rest wait for the next.
MAX_GROUP = 512


class Connection(Protocol):
    """A backend's connection, carrying out SQL effects (Begin, Execute, Fetch, ...)."""

    def execute(self, effect: Effect) -> Any: ...

    def abandon(self) -> None:
        """End the transaction a failed script left open, if any (never raises)."""
        ...

    def close(self) -> None: ...

    def left_behind(self, idle: bool) -> None:
        """In a process forked from the one that opened it, from the fork handler: let go
        of this process's copy of the parent's connection, without a call into the driver
        (see `flowtrail.store.forks`). ``idle``: no call or transaction of it was under
        way at the fork."""
        ...


class AsyncConnection(Protocol):
    """`Connection`, awaited."""

    async def run(self, script: Script[T], translate: Translate) -> T:
        """Run a whole script of SQL effects (`run_async` over `execute`, or better)."""
        ...

    async def execute(self, effect: Effect) -> Any: ...

    async def abandon(self) -> None: ...

    async def close(self) -> None: ...

    def left_behind(self, idle: bool) -> None:
        """See `Connection.left_behind` (called from a fork handler: not awaited)."""
        ...


class StoreOptions:
    """What every store is opened with, checked once."""

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        projections: Sequence[Projection] = (),
        create: bool = True,
    ) -> None:
        if max_event_bytes <= 0:
            raise InvalidInputError("max_event_bytes must be positive")
        self.max_event_bytes = int(max_event_bytes)
        self.projections = tuple(projections)
        #: Create the log if there is none (else `LogNotFoundError`).
        self.create = bool(create)
        #: Read the log only: every write is a `StoreAccessError` (SQLite's ``mode=ro``).
        self.read_only = False

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


def _not_performed(effect: Effect) -> BaseException:
    return InvalidInputError(
        f"perform() reads and appends; {type(effect).__name__} needs run(..., write=True)"
    )


class _Backend:
    """What the outer layers read of a store: its dialect and statements, and how to
    mark a projection stale or current."""

    dialect: Dialect
    sql: LogSql
    stale_projections: list[str]
    #: True in a forked child for a store its parent opened: every call is refused.
    forked: bool = False

    _options: StoreOptions

    @property
    def read_only(self) -> bool:
        """Whether the log was opened to be read only (``mode=ro``)."""
        return self._options.read_only

    def _locked(self, script: Script[T]) -> Script[T]:
        """``script`` run in one write transaction (`Locked`), its appends as `Append`'s."""
        return locked_script(script, self._options.prepare, self.sql, self._options.projections)

    @staticmethod
    def mark_stale(projection: Projection) -> Script[None]:
        return mark_stale_script(projection)

    @staticmethod
    def mark_current(projection: Projection) -> Script[None]:
        return mark_current_script(projection)


_CLOSED = "this log is closed: open it again to use it"


def _writable(options: StoreOptions) -> None:
    if options.read_only:
        raise StoreAccessError(
            "this log is open read-only (mode=ro): it can be read and verified, not written"
        )


# --- sync ------------------------------------------------------------------------------------------


class SyncLogStore(_Backend):
    """The log with plain calls. Safe to share between threads.

    ``reader`` may be None: the writer then serves reads too (one connection).
    """

    def __init__(
        self,
        options: StoreOptions,
        writer: Connection,
        reader: Connection | None,
        *,
        translate: Translate,
    ) -> None:
        self._options = options
        self._writer = writer
        self._reader = writer if reader is None else reader
        self._translate = translate
        self._write_lock = threading.RLock()
        # Reentrant too: a thread forking while it holds one takes it again (`forks`).
        self._read_lock = self._write_lock if reader is None else threading.RLock()
        self.stale_projections = []
        forks.register(self, held=True)

    def run(self, script: Script[T], *, write: bool = False) -> T:
        """Run a script on the writer (``write=True``) or the reader connection."""
        if write:
            _writable(self._options)
        connection = self._writer if write else self._reader
        with self._write_lock if write else self._read_lock:
            try:
                return run_sync(script, connection.execute, self._translate)
            except BaseException:
                connection.abandon()  # interrupted mid-transaction: leave nothing open
                raise

    def perform(self, script: Script[T]) -> T:
        """Run a script of reads (`Fetch`, on the reader) and appends (`Append`)."""
        return run_sync(script, self._perform_effect, self._translate)

    def _perform_effect(self, effect: Effect) -> Any:
        match effect:
            case Append(writes, key, expect, known):
                return self.append_many(writes, idempotency_key=key, expect=expect, known=known)
            case Fetch():
                with self._read_lock:
                    return self._reader.execute(effect)
            case Locked(script):
                return self.run(self._locked(script), write=True)
            case OnWriter(script):
                return self.run(script, write=True)
            case Join(work):
                return work.join()
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
        (result,) = self.run(append_script([prepared], self.sql, self._options.projections), write=True)
        return _one(result)

    def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        return self.run(
            read_stream_script(
                self.sql, check_stream_id(stream_id), check_position(from_version, "from_version")
            )
        )

    def read_all(self, from_position: int = 1, batch: int = 1000) -> Iterator[RecordedEvent]:
        """Every event from ``from_position`` on, in position order, ``batch`` rows at a time."""
        position = check_position(from_position, "from_position")
        size = max(1, check_position(batch, "batch"))
        while True:
            records = self.run(read_batch_script(self.sql, position, size))
            yield from records
            if len(records) < size:
                return
            position = records[-1].position + 1

    def last_position(self) -> int:
        return self.run(last_position_script(self.sql))

    def stream_version(self, stream_id: str) -> int:
        return self.run(stream_version_script(self.sql, check_stream_id(stream_id)))

    def close(self) -> None:
        with self._write_lock:
            # Forgotten by forks once closed: until then a fork waits for this lock, so
            # that no child has a copy of a connection being closed.
            self._writer.close()
            if self._reader is not self._writer:
                self._reader.close()
            self._writer = self._reader = forks.Refusing(_CLOSED)
            forks.unregister(self)

    def _left_behind(self, idle: bool) -> bool:
        """In a forked child (see `flowtrail.store.forks`): refuse every call from now on
        (without waiting on a lock another thread of the parent held at the fork)."""
        self._writer.left_behind(idle)
        if self._reader is not self._writer:
            self._reader.left_behind(idle)
        self._writer = self._reader = forks.Refusing()
        self._write_lock = self._read_lock = threading.RLock()
        self.forked = True
        return False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- async -----------------------------------------------------------------------------------------


#: Held while an async store moves to another event loop (see `AsyncLogStore._here`).
_moving = threading.Lock()


class AsyncLogStore(_Backend):
    """The log, async, with group commit. ``reader`` may be None (see `SyncLogStore`)."""

    def __init__(
        self,
        options: StoreOptions,
        writer: AsyncConnection,
        reader: AsyncConnection | None,
        *,
        translate: Translate,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._options = options
        self._max_group = max_group
        self._writer = writer
        self._reader = writer if reader is None else reader
        self._translate = translate
        self._pending: list[tuple[PreparedAppend, asyncio.Future[AppendResult]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = self._write_lock if reader is None else asyncio.Lock()
        #: The event loop the store's locks and group commits belong to (see `_here`).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stale_projections = []
        forks.register(self, held=False)
        #: Transactions committed for appends, and appends committed: their ratio is
        #: the size of the average group.
        self.commit_groups = 0
        self.appends_committed = 0

    def _here(self) -> None:
        """Check that the store is used from one event loop at a time.

        Its locks and the futures of a group commit belong to one loop: a second loop
        running at the same time in another thread would have its callers told that
        writes which landed were cancelled. Once the first loop has stopped (one
        `asyncio.run` after another), the store moves to the loop now running."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        with _moving:
            previous = self._loop
            if previous is loop:
                return
            if previous is not None and previous.is_running() and not previous.is_closed():
                raise StoreError(
                    "this async log is in use by an event loop running in another thread: open the "
                    "log in each event loop that uses it (or share a SyncOrchestrator between threads)"
                )
            self._write_lock = asyncio.Lock()
            self._read_lock = self._write_lock if self._reader is self._writer else asyncio.Lock()
            self._pending, self._committer = [], None
            self._loop = loop

    async def run(self, script: Script[T], *, write: bool = False) -> T:
        """Run a script on the writer (``write=True``) or the reader connection."""
        self._here()
        return await self._run(script, write=write)

    async def _run(self, script: Script[T], *, write: bool) -> T:
        if write:
            _writable(self._options)
        connection = self._writer if write else self._reader
        async with self._write_lock if write else self._read_lock:
            try:
                return await connection.run(script, self._translate)
            except BaseException:
                await asyncio.shield(connection.abandon())
                raise

    async def perform(self, script: Script[T]) -> T:
        """Run a script of reads (`Fetch`, on the reader) and appends (`Append`, grouped)."""
        self._here()
        return await run_async(script, self._perform_effect, self._translate)

    async def _perform_effect(self, effect: Effect) -> Any:
        match effect:
            # `perform` checked the event loop: its effects need not again.
            case Append(writes, key, expect, known):
                return await self._grouped(writes, key, expect, known)
            case Fetch():
                async with self._read_lock:
                    return await self._reader.execute(effect)
            case Locked(script):
                return await self._run(self._locked(script), write=True)
            case OnWriter(script):
                return await self._run(script, write=True)
            case Join(work):
                return await asyncio.to_thread(work.join)
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
        self._here()
        return await self._grouped(writes, idempotency_key, expect, known)

    async def _grouped(
        self,
        writes: Sequence[StreamWrite],
        idempotency_key: str | None,
        expect: Mapping[str, int] | None,
        known: Mapping[str, object] | None,
    ) -> AppendResult:
        prepared = self._options.prepare(writes, idempotency_key, expect, known)
        done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((prepared, done))
        if self._committer is None:
            # Never cancelled: a loop shutting down (asyncio.run ending) waits for the
            # groups handed over to be committed and answered, rather than leave their
            # callers not knowing whether their appends landed.
            self._committer = ToItsEnd(self._commit_groups())
        return await done

    async def _commit_groups(self) -> None:
        group: list[tuple[PreparedAppend, asyncio.Future[AppendResult]]] = []
        try:
            await asyncio.sleep(0)  # let the appends arriving together join the first group
            while self._pending:
                group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
                results = await self._committed([prepared for prepared, _ in group])
                for (_, done), result in zip(group, results, strict=True):
                    if not done.done():
                        if isinstance(result, BaseException):
                            done.set_exception(result)
                        else:
                            done.set_result(result)
                group = []
        except asyncio.CancelledError:
            # What the commit awaited was cancelled (its connection closed under it):
            # nobody is left to commit for the waiting appends.
            for _, done in (*group, *self._pending):
                done.cancel()
            self._pending = []
            raise
        finally:
            self._committer = None

    async def _committed(self, group: list[PreparedAppend]) -> Sequence[AppendResult | BaseException]:
        """What each append of a group comes to, in one transaction. Where the
        transaction fails whole on what one append brought (a row its inline projection
        refused: PostgreSQL aborts the transaction there), each is tried again on its
        own, so that only that one fails, as if it had come alone. A busy or unreachable
        database fails them all: trying again one by one would only wait longer."""
        try:
            results = await self._run(append_script(group, self.sql, self._options.projections), write=True)
        except (StoreBusyError, StoreUnavailableError, StoreAccessError) as exc:
            return [exc] * len(group)
        except Exception as exc:
            if len(group) == 1:
                return [exc]
            return [(await self._committed([prepared]))[0] for prepared in group]
        self.commit_groups += 1
        self.appends_committed += len(group)
        return results

    async def read_stream(self, stream_id: str, from_version: int = 1) -> list[RecordedEvent]:
        return await self.run(
            read_stream_script(
                self.sql, check_stream_id(stream_id), check_position(from_version, "from_version")
            )
        )

    async def read_all(self, from_position: int = 1, batch: int = 1000) -> AsyncIterator[RecordedEvent]:
        """Every event from ``from_position`` on, in position order, ``batch`` rows at a time."""
        position = check_position(from_position, "from_position")
        size = max(1, check_position(batch, "batch"))
        while True:
            records = await self.run(read_batch_script(self.sql, position, size))
            for record in records:
                yield record
            if len(records) < size:
                return
            position = records[-1].position + 1

    async def last_position(self) -> int:
        return await self.run(last_position_script(self.sql))

    async def stream_version(self, stream_id: str) -> int:
        return await self.run(stream_version_script(self.sql, check_stream_id(stream_id)))

    async def close(self) -> None:
        forks.unregister(self)
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        writer, reader = self._writer, self._reader
        self._writer = self._reader = forks.AsyncRefusing(_CLOSED)
        await writer.close()
        if reader is not writer:
            await reader.close()

    def _left_behind(self, idle: bool) -> bool:
        """In a forked child (see `flowtrail.store.forks`): refuse every call from now on."""
        self._writer.left_behind(False)
        if self._reader is not self._writer:
            self._reader.left_behind(False)
        self._writer = self._reader = forks.AsyncRefusing()
        self._loop = None  # the parent's, which no thread here runs
        self.forked = True
        return False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
