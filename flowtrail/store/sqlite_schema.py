"""SQLite's side of the log: its statements, its schema and migrations, the checks made
on a file before it is opened, and the translation of sqlite3's errors.

How a schema is created, versioned and migrated is shared by every backend
(`flowtrail.store.schema`); `MIGRATIONS` are SQLite's steps, which add and never
rewrite: recorded events are never touched.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flowtrail.core.effects import Script
from flowtrail.core.errors import (
    CorruptLogError,
    LogNotFoundError,
    StoreAccessError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
    UnsupportedFilesystemError,
)
from flowtrail.core.projection import Projection
from flowtrail.store import forks
from flowtrail.store.schema import (
    SCHEMA_VERSION,
    PortableLogSql,
    SchemaDefinition,
    holds_a_log,
    mark_current_script,
    mark_stale_script,
)
from flowtrail.store.schema import schema_check_script as shared_schema_check_script
from flowtrail.store.schema import schema_script as shared_schema_script
from flowtrail.store.sqlite_forks import closing, opened, track, untrack

__all__ = [
    "MIGRATIONS",
    "NETWORK_FILESYSTEMS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SQL",
    "SqliteLogSql",
    "check_file",
    "check_filesystem",
    "connect_options",
    "ensure_directory",
    "filesystem_type",
    "is_memory",
    "mark_current_script",
    "mark_stale_script",
    "schema_script",
    "translate",
]

_SCHEMA_V1 = (
    "CREATE TABLE flowtrail_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # position is the rowid: assigned max+1 by the one writer, so gap-free and in commit order.
    """CREATE TABLE events (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL,
        data BLOB NOT NULL,
        hash BLOB NOT NULL,
        UNIQUE (stream_id, version)
    )""",
    """CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY, first_position INTEGER NOT NULL, last_position INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE checkpoints (
        name TEXT PRIMARY KEY, version INTEGER NOT NULL, position INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # The log is append-only: the database itself refuses to change or remove an event.
    """CREATE TRIGGER events_are_never_updated BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'flowtrail events are never updated'); END""",
    """CREATE TRIGGER events_are_never_deleted BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'flowtrail events are never deleted'); END""",
)

#: Statements taking the schema from version N to N + 1. They may add tables, columns
#: and indexes; they never rewrite events.
MIGRATIONS: dict[int, Sequence[str]] = {}

#: File systems on which SQLite's locks cannot be trusted (see sqlite.org/faq.html#q5).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "glusterfs",
        "ceph",
        "lustre",
        "gpfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "davfs",
        "fuse.davfs2",
    }
)


#: Each connection's page cache, in KiB.
CACHE_KIB = 16_000

#: The same while a rebuild runs: its reads scan the log once, and its writes land
#: mostly at the end of tables without secondary indexes. A rebuild of 2M events peaked
#: at 61 MB of RSS with this against 88-97 MB with the usual cache, no slower.
REBUILD_CACHE_KIB = 4_000


class SqliteLogSql(PortableLogSql):
    """The log's statements in SQLite's dialect."""

    # The last row's recording time beside the last position: SQLite reads a bare column
    # of an aggregate max() from the row holding the max, with the same one index probe.
    position_lookup = "SELECT 'p', NULL, max(position), recorded_at, NULL FROM events"
    lean_cache = f"PRAGMA cache_size = -{REBUILD_CACHE_KIB}"
    # Every column as the bytes it holds: a row edited by hand to hold text that is not
    # UTF-8 can then be read, and its damage named, where `read_batch` cannot read it.
    _as_bytes = (
        "SELECT position, CAST(stream_id AS BLOB), version, CAST(event_type AS BLOB), schema_version, "
        "recorded_at, CAST(data AS BLOB), CAST(hash AS BLOB) FROM events "
    )
    read_batch_as_bytes = _as_bytes + "WHERE position >= ? ORDER BY position LIMIT ?"
    read_stream_as_bytes = _as_bytes + "WHERE stream_id = ? AND version >= ? ORDER BY version"
    usual_cache = f"PRAGMA cache_size = -{CACHE_KIB}"

    #: The events after one position and up to another whose stream id falls in a range
    #: [low, high) (a bound that is NULL leaves that end open), in log order, at most a
    #: number of them. Parameters: after, up to, low, high, limit. The rows are those
    #: of `read_batch`.
    read_partition = (
        "SELECT position, stream_id, version, event_type, schema_version, recorded_at, data, hash "
        "FROM events WHERE position > ?1 AND position <= ?2 "
        "AND (?3 IS NULL OR stream_id >= ?3) AND (?4 IS NULL OR stream_id < ?4) ORDER BY position LIMIT ?5"
    )

    #: The stream of the event at an offset of the log in stream-id order (no row if the
    #: log is shorter), read off the (stream_id, version) index. Parameter: the offset.
    partition_cut = "SELECT stream_id FROM events ORDER BY stream_id LIMIT 1 OFFSET ?"

    def heads_lookup(self, streams: int) -> str:
        # With a single max(), SQLite takes the bare column (hash) from the row holding the max.
        return (
            "SELECT 'h', stream_id, max(version), NULL, hash FROM events "
            f"WHERE stream_id IN ({', '.join('?' * streams)}) GROUP BY stream_id"
        )


SQL = SqliteLogSql()

SCHEMA = SchemaDefinition(
    dialect="sqlite",
    create=_SCHEMA_V1,
    list_tables="SELECT name FROM sqlite_master WHERE type = 'table'",
    own_tables=frozenset({"sqlite_sequence", "sqlite_stat1"}),
    migrations=MIGRATIONS,
)


def schema_check_script(projections: Sequence[Projection]) -> Script[list[str]]:
    """The read-only open's check (see `flowtrail.store.schema.schema_check_script`)."""
    return shared_schema_check_script(SCHEMA, projections)


def schema_script(
    projections: Sequence[Projection],
    *,
    log_id: str,
    migrations: Mapping[int, Sequence[str]] | None = None,
    create: bool = True,
) -> Script[list[str]]:
    """Create or migrate the schema; returns the names of projections needing a rebuild."""
    definition = SCHEMA if migrations is None else SCHEMA._replace(migrations=migrations)
    return shared_schema_script(definition, projections, log_id=log_id, create=create)


# --- the file, before SQLite opens it ------------------------------------------------------


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (Linux), or None if unknown."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = str(path.resolve())
    best, best_type = "", None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = fields[fields.index("-") + 1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def check_filesystem(path: Path, mountinfo: str | None = None) -> None:
    """Refuse a database on a network file system, where SQLite's locking is unreliable."""
    fs_type = filesystem_type(path.parent, mountinfo)
    if fs_type is not None and (fs_type in NETWORK_FILESYSTEMS or fs_type.startswith("fuse.sshfs")):
        raise UnsupportedFilesystemError(
            f"{path} is on a {fs_type} file system, where SQLite cannot lock the file safely; "
            "keep the database on a local disk, or use PostgreSQL to share a log between machines"
        )


_MAGIC = b"SQLite format 3\x00"


def held_by_this_process(path: Path) -> bool:
    """Whether a descriptor of this process is open on the file at ``path`` (SQLite's,
    most likely). Where this cannot be told, say so: the caller then leaves the file alone.

    Closing any descriptor of a file drops every POSIX lock the process holds on it, its
    SQLite connections' included; another process closing its connection to the log then
    takes itself for the last one and deletes the WAL that those connections still write
    to. SQLite's own connections in one process share their descriptors' locks safely;
    a plain ``open()`` and ``close()`` of the file does not.
    """
    if os.name == "nt":  # Windows' locks belong to the handle that took them
        return False
    try:
        wanted = path.stat()
    except OSError:
        return False
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            descriptors = os.listdir(folder)
        except OSError:
            continue
        for name in descriptors:
            try:
                seen = os.fstat(int(name))
            except (OSError, ValueError):
                continue
            if seen.st_ino == wanted.st_ino and seen.st_dev == wanted.st_dev:
                return True
        return False
    return True


def check_file(path: Path) -> None:
    """Refuse a file that is not a SQLite database, or one cut short (a cheap header check).

    A file this process already holds open is not read again here (see
    ``held_by_this_process``): it was checked when first opened, and SQLite reports damage
    found since."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0 or held_by_this_process(path):
        return
    # Another process's last connection may close at any moment, checkpoint its WAL into
    # the file (which grows it, and its header's page count) and delete the WAL: a size
    # read before that, set against a header read after, took a sound file for a cut one
    # (14 processes opening a new log at once, 1 run in 26). A cut is believed only when
    # the header, then the size, read twice a moment apart, say it both times.
    for attempt in range(2):
        if attempt:
            time.sleep(0.05)
        header, size = _header_then_size(path)
        expected = _pages_counted(path, header)
        if expected is None or size >= expected:
            return
    raise CorruptLogError(f"{path} is truncated: {size} bytes, where its header counts {expected}")


def _header_then_size(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as file:
        header = file.read(100)
        size = os.fstat(file.fileno()).st_size
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise CorruptLogError(f"{path} is not a SQLite database (its header is not SQLite's)")
    return header, size


def _pages_counted(path: Path, header: bytes) -> int | None:
    """The bytes the header says the file holds; None where it cannot tell: the count is
    not kept current (an old writer), or a WAL holds frames, mid-checkpoint perhaps,
    which SQLite recovers from."""
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter, pages, valid_for = header[24:28], int.from_bytes(header[28:32], "big"), header[92:96]
    if change_counter != valid_for or not pages or _wal_holds_frames(path):
        return None
    return page_size * pages


def _wal_holds_frames(path: Path) -> bool:
    # One stat: the last connection of another process may delete the WAL at any
    # moment (between an exists() and a stat(), a child opening the log failed so).
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except FileNotFoundError:
        return False


def check_contents(path: Path, *, create: bool) -> None:
    """Refuse a SQLite file holding another program's tables before anything is written
    to it, and, where no log may be created (``create=False``), one holding no log.

    Opening a file to write sets its journal mode, which another program's database, or
    an empty file, must never get from a command that only reads. This look is
    read-only; a file it cannot read that way (locked, its WAL out of reach) is left to
    the checks made once it is open.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        if not create:
            raise LogNotFoundError(f"there is no flowtrail log in {path}: the file is empty")
        return
    with forks.changing():  # a fork waits for it (see `sqlite_forks`)
        tracked = track(path)
        try:
            probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            opened(tracked, probe)
            try:
                tables = {str(row[0]) for row in probe.execute(SCHEMA.list_tables)}
            finally:
                with closing(tracked):
                    probe.close()
        except sqlite3.Error:
            return
        finally:
            untrack(tracked)
    holds_a_log(tables, SCHEMA, create=create, where=f"in {path}")


# --- sqlite3's errors, in flowtrail's words -------------------------------------------------------

_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED"}
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT"}
_UNAVAILABLE = {"SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_PROTOCOL"}


def translate(exc: Exception) -> BaseException:
    """The one place sqlite3's errors become flowtrail's; others pass through unchanged."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    base = "_".join(
        (getattr(exc, "sqlite_errorname", "") or "").split("_")[:2]
    )  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY
    text = str(exc)
    if base in _BUSY or "database is locked" in text:
        return StoreBusyError(f"the database stayed locked by another writer past the busy timeout ({text})")
    if "Could not decode" in text:
        return CorruptLogError(f"the database file is damaged: {text}", undecodable=True)
    if base in _CORRUPT or "malformed" in text or "not a database" in text:
        return CorruptLogError(f"the database file is damaged: {text}")
    if base in _UNAVAILABLE:
        return StoreUnavailableError(f"the database cannot be used right now: {text}")
    if text.startswith(("no such table", "no such column")):  # as PostgreSQL's are named
        return CorruptLogError(f"the log's tables are not as flowtrail made them: {text}")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"the database refused a write: {text}")
    return StoreError(f"SQLite: {text}")


def connect_options(durability: str, busy_timeout: float) -> list[str]:
    """Statements run on every new connection."""
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}",
        f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}",
        "PRAGMA foreign_keys = OFF",
        # temp_store stays on disk: in memory, dropping or indexing a large table
        # (a rebuild) took RSS from 30 MB to over 200 MB.
        f"PRAGMA cache_size = -{CACHE_KIB}",
        # Some builds (Debian's among them) zero every freed page by default, so dropping
        # the run views in a rebuild wrote their whole size again (7.6 of 8 s for 1.1M
        # runs). Nothing here is secret beyond the log, which is never deleted; FAST still
        # zeroes freed space in the pages a change writes anyway.
        "PRAGMA secure_delete = FAST",
    ]


def is_memory(path: str) -> bool:
    return path in (":memory:", "") or path.startswith("file::memory:")


def ensure_directory(path: Path) -> None:
    os.makedirs(path.parent, exist_ok=True)


def check_readable(path: Path) -> bool:
    """Check a log to be opened read-only; whether SQLite must read it as immutable.

    In a folder this process may not write, SQLite cannot make the WAL's shared memory,
    so it reads the file alone (``immutable``), which is right only while no write-ahead
    file holds commits not yet in it: such a log is refused.
    """
    if not os.access(path, os.R_OK):
        raise StoreAccessError(f"{path} cannot be read by this process (its permissions)")
    if os.access(path.parent, os.W_OK | os.X_OK):
        return False
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreAccessError(
            f"{path} has commits in {wal.name} that SQLite reads only by writing beside it, and its folder "
            "cannot be written: copy the log with its -wal file into a folder this process can write"
        )
    return True


def check_access(path: Path) -> None:
    """Refuse, naming what, a file or folder this process may not write: SQLite opens a
    log to write it, and keeps its write-ahead log and shared memory beside it, even
    for reading (a failure there said only "unable to open database file")."""
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreAccessError(
            f"the folder {folder} cannot be written by this process: SQLite writes a log through "
            "write-ahead files beside it (copy the log somewhere writable to change it; "
            "sqlite:///...?mode=ro reads it where it is)"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreAccessError(f"{path} cannot be read and written by this process (its permissions)")
