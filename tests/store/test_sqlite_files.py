"""SQLite done right: journal, durability, schema versions, foreign and damaged files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flowtrail.core import (
    CorruptLogError,
    InvalidInputError,
    InvalidUrlError,
    LogNotFoundError,
    SchemaVersionError,
    StoreAccessError,
    StoreError,
    UnsupportedFilesystemError,
    verify,
)
from flowtrail.core.effects import Begin, Commit, Execute, ExecuteMany, Fetch, Script
from flowtrail.store.drivers import run_sync
from flowtrail.store.sqlite import SQLiteStore, SyncSQLiteStore, _Connection, _Options
from flowtrail.store.sqlite_schema import check_filesystem, filesystem_type, schema_script, translate
from flowtrail.store.urls import parse_url, sqlite_url
from tests.store.builders import new_stream

MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:35 / /mnt/shared rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 22 0:36 / /mnt/shared/local rw,relatime shared:21 - ext4 /dev/vdb1 rw
42 22 0:37 / /mnt/smb rw,relatime shared:22 - cifs //host/share rw
43 22 0:38 / /mnt/sshfs rw,relatime shared:23 - fuse.sshfs user@host:/ rw
"""


def _filled(path: Path, streams: int = 20) -> None:
    with SyncSQLiteStore(path) as store:
        for _ in range(streams):
            stream, events = new_stream(3)
            store.append(stream, events, 0)


def _execute(sql: str) -> Script[None]:
    yield Execute(sql)


def _fetch(sql: str) -> Script[object]:
    """A script reading one value."""
    return (yield Fetch(sql))[0][0]


# --- journal and durability --------------------------------------------------------------------


def test_the_log_uses_a_write_ahead_log(tmp_path: Path) -> None:
    with SyncSQLiteStore(tmp_path / "wal.db") as store:
        assert store.run(_fetch("PRAGMA journal_mode")) == "wal"


@pytest.mark.parametrize(("durability", "level"), [("full", 2), ("normal", 1)])
def test_durability_sets_sqlites_synchronous_level(tmp_path: Path, durability: str, level: int) -> None:
    with SyncSQLiteStore(tmp_path / "d.db", durability=durability) as store:
        assert store.run(_fetch("PRAGMA synchronous"), write=True) == level


def test_durability_comes_from_the_url(tmp_path: Path) -> None:
    with SyncSQLiteStore.open(f"sqlite:///{tmp_path}/u.db?durability=normal") as store:
        assert store.run(_fetch("PRAGMA synchronous"), write=True) == 1


def test_dropping_a_large_table_does_not_write_its_pages_again(tmp_path: Path) -> None:
    # A rebuild drops the run views; builds that zero freed pages by default would
    # write their whole size into the write-ahead log once more.
    def fill() -> Script[None]:
        yield Begin()
        yield Execute("CREATE TABLE bulky (body BLOB)")
        yield ExecuteMany("INSERT INTO bulky VALUES (?)", [(os.urandom(2000),) for _ in range(2000)])
        yield Commit()

    with SyncSQLiteStore(tmp_path / "drop.db") as store:
        store.run(fill(), write=True)
        store.run(_fetch("PRAGMA wal_checkpoint(TRUNCATE)"), write=True)
        store.run(_execute("DROP TABLE bulky"), write=True)
        written = os.path.getsize(tmp_path / "drop.db-wal")
    assert written < 400_000  # the table held 4 MB


def test_an_in_memory_log_works_with_both_drivers() -> None:
    with SyncSQLiteStore.open("sqlite:///:memory:") as store:
        stream, events = new_stream(2)
        store.append(stream, events, 0)
        assert store.last_position() == 2

    async def scenario() -> int:
        store = await SQLiteStore.open("sqlite:///:memory:")
        stream, events = new_stream(2)
        await store.append(stream, events, 0)
        last = await store.last_position()
        await store.close()
        return last

    assert asyncio.run(scenario()) == 2


def _in_another_process(code: str) -> str:
    """Run ``code`` in a fresh interpreter; what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def _streams_seen_elsewhere(db: Path) -> int:
    return int(
        _in_another_process(
            f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
            "print(c.execute('SELECT count(DISTINCT stream_id) FROM events').fetchone()[0]); c.close()"
        )
    )


@pytest.mark.parametrize("second", ["sync", "async"])
def test_a_log_opened_twice_in_one_process_keeps_the_first_opens_locks(tmp_path: Path, second: str) -> None:
    """A second open of a file this process holds must not read it through a descriptor of
    its own: closing that descriptor drops every POSIX lock the process holds on the file,
    and another process closing its connection then takes itself for the last, checkpoints
    and deletes the WAL under the first open, whose next commits no one else sees."""
    db = tmp_path / "twice.db"
    with SyncSQLiteStore(db) as first:
        stream, events = new_stream(1)
        first.append(stream, events, 0)
        if second == "sync":
            SyncSQLiteStore(db).close()
        else:
            asyncio.run(_open_and_close_async(db))
        _in_another_process(
            f"import sqlite3; c = sqlite3.connect({str(db)!r}); c.execute('SELECT count(*) FROM sqlite_master').fetchall(); c.close()"
        )
        assert Path(f"{db}-wal").exists()
        stream, events = new_stream(1)
        first.append(stream, events, 0)
        assert _streams_seen_elsewhere(db) == 2


async def _open_and_close_async(db: Path) -> None:
    store = await SQLiteStore.open_path(db)
    await store.close()


# --- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("sqlite:///runs.db", "runs.db"),
        ("sqlite:////var/lib/runs.db", "/var/lib/runs.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///data/runs.db?busy_timeout=2.5", "data/runs.db"),
    ],
)
def test_sqlite_urls_name_a_file(url: str, target: str) -> None:
    assert parse_url(url).target == target


@pytest.mark.parametrize(
    "path",
    ["/tmp/we#ird dir/d.db", "/tmp/a?b/d%41.db", "runs:ä.db", ":memory:", "~x.db", "~/d.db", "/t/~x.db"],
)
def test_a_sqlite_url_written_for_a_path_names_that_path(path: str) -> None:
    assert parse_url(sqlite_url(path)).target == path


def test_a_sqlite_url_path_is_percent_decoded() -> None:
    assert parse_url("sqlite:///we%23ird%3Fdir/d.db").target == "we#ird?dir/d.db"


@pytest.mark.parametrize(
    ("url", "target"), [("sqlite:///%7Ex.db", "~x.db"), ("sqlite:///./~x.db", "./~x.db")]
)
def test_only_a_tilde_written_as_it_is_at_the_start_names_a_home_folder(url: str, target: str) -> None:
    assert parse_url(url).target == target


def test_a_home_relative_url_is_expanded() -> None:
    assert parse_url("sqlite:///~/runs.db").target == str(Path.home() / "runs.db")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "runs.db",
        "mysql://localhost/db",
        "sqlite://host/runs.db",
        "sqlite:/tmp/runs.db",
        "sqlite:///a%00b.db",
        "sqlite:runs.db",
        "sqlite:///",
        "sqlite:///runs.db?durability=sometimes",
        "sqlite:///runs.db?busy_timeout=-1",
        "sqlite:///runs.db?busy_timeout=nan",
        "sqlite:///runs.db?busy_timeout=inf",
        "sqlite:///runs.db?busy_timeout=1e300",
        "postgresql://h/db?busy_timeout=nan",
        "postgresql://h/db?busy_timeout=100000",
        "sqlite:///runs.db?max_event_bytes=1e99",
        "postgres://[::1",
        "postgresql://h:99999/db",
        "sqlite:///~no-such-user-here/runs.db",
        "sqlite:///runs.db?busy_timeout=soon",
        "sqlite:///runs.db?colour=blue",
        "postgresql://localhost/db?schema=bad;name",
    ],
)
def test_a_bad_url_is_a_typed_error(url: str) -> None:
    with pytest.raises(InvalidUrlError):
        parse_url(url)


# --- schema versions -------------------------------------------------------------------------------


def test_a_database_from_a_newer_flowtrail_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    _filled(db, 2)
    connection = sqlite3.connect(db)
    connection.execute("UPDATE flowtrail_meta SET value = '99' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()
    before = db.read_bytes()
    with pytest.raises(SchemaVersionError, match="version 99"):
        SyncSQLiteStore(db)
    assert db.read_bytes() == before


def test_an_older_schema_is_migrated_forward_without_touching_events(tmp_path: Path) -> None:
    db = tmp_path / "older.db"
    _filled(db, 3)
    connection = sqlite3.connect(db, isolation_level=None)
    connection.execute("UPDATE flowtrail_meta SET value = '0' WHERE key = 'schema_version'")
    events_before = connection.execute("SELECT * FROM events ORDER BY position").fetchall()
    connection.close()
    migrations = {0: ["CREATE TABLE added_by_migration (x INTEGER)"]}
    store_connection = _Connection.connect(_Options(db))
    run_sync(schema_script([], log_id="x", migrations=migrations), store_connection.execute, translate)
    store_connection.close()
    connection = sqlite3.connect(db, isolation_level=None)
    assert connection.execute("SELECT value FROM flowtrail_meta WHERE key = 'schema_version'").fetchone() == (
        "1",
    )
    assert connection.execute("SELECT count(*) FROM added_by_migration").fetchone() == (0,)
    assert connection.execute("SELECT * FROM events ORDER BY position").fetchall() == events_before
    connection.close()


def test_a_database_of_another_application_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.commit()
    connection.close()
    with pytest.raises(CorruptLogError, match="not a flowtrail database"):
        SyncSQLiteStore(db)
    connection = sqlite3.connect(db)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    connection.close()
    assert tables == {"users"}


def test_a_log_whose_meta_table_was_dropped_is_called_a_damaged_log_not_another_programs(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    _filled(db, 2)
    connection = sqlite3.connect(db)
    connection.execute("DROP TABLE flowtrail_meta")
    connection.commit()
    connection.close()
    with pytest.raises(CorruptLogError, match="holds a flowtrail log's tables but not its flowtrail_meta"):
        SyncSQLiteStore(db)


@pytest.mark.parametrize("create", [True, False])
def test_a_database_of_another_application_keeps_every_byte_and_its_journal_mode(
    tmp_path: Path, create: bool
) -> None:
    db = tmp_path / "other.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.execute("INSERT INTO users VALUES ('ann')")
    connection.commit()
    connection.close()
    before = db.read_bytes()
    with pytest.raises(CorruptLogError, match="not a flowtrail database"):
        SyncSQLiteStore(db, create=create)
    with pytest.raises(CorruptLogError, match="not a flowtrail database"):
        asyncio.run(SQLiteStore.open_path(db, create=create))
    assert db.read_bytes() == before  # the journal mode (header bytes 18-19) included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_an_empty_file_opened_only_to_read_is_left_empty(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    with pytest.raises(LogNotFoundError):
        SyncSQLiteStore(db, create=False)
    assert db.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


# --- damaged files ---------------------------------------------------------------------------------


def test_a_file_of_random_bytes_is_a_typed_error(tmp_path: Path) -> None:
    db = tmp_path / "random.db"
    db.write_bytes(os.urandom(8192))
    with pytest.raises(CorruptLogError, match="not a SQLite database"):
        SyncSQLiteStore(db)


def test_a_file_of_random_bytes_is_a_typed_error_for_the_async_store(tmp_path: Path) -> None:
    db = tmp_path / "random.db"
    db.write_bytes(os.urandom(8192))
    with pytest.raises(CorruptLogError):
        asyncio.run(SQLiteStore.open_path(db))


def test_a_truncated_file_is_a_typed_error(tmp_path: Path) -> None:
    db = tmp_path / "truncated.db"
    _filled(db, 200)
    size = db.stat().st_size
    with db.open("r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(CorruptLogError, match="truncated"):
        SyncSQLiteStore(db)


_WRITE_AND_LEAVE = """
import sys
from flowtrail.store.sqlite import SyncSQLiteStore
from tests.store.builders import new_stream
store = SyncSQLiteStore(sys.argv[1])
for _ in range(200):
    stream, events = new_stream(3)
    store.append(stream, events, 0)
store.close()  # the last connection: it checkpoints the WAL into the file and deletes it
"""


def test_a_log_another_process_checkpoints_while_it_is_opened_is_not_taken_for_a_truncated_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's size was read, then its header, and another process's last
    connection, closing in between, had grown both: a sound log reported truncated (14
    processes opening a new log at once, 1 run in 26). Here the other process writes
    and leaves at the worst moment, every time."""
    from flowtrail.store import sqlite_schema

    db = tmp_path / "shared.db"
    _filled(db, 1)
    real = sqlite_schema.held_by_this_process

    def another_process_leaves_meanwhile(path: Path) -> bool:
        subprocess.run(
            [sys.executable, "-c", _WRITE_AND_LEAVE, str(db)],
            check=True,
            cwd=Path(__file__).parents[2],
            timeout=60,
        )
        return real(path)

    monkeypatch.setattr(sqlite_schema, "held_by_this_process", another_process_leaves_meanwhile)
    sqlite_schema.check_file(db)


def test_a_sqlite_header_with_garbage_behind_it_is_a_typed_error(tmp_path: Path) -> None:
    db = tmp_path / "header-only.db"
    _filled(db, 50)
    data = bytearray(db.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)
    db.write_bytes(bytes(data))

    def open_and_read() -> None:
        with SyncSQLiteStore(db) as store:
            list(store.read_all())

    with pytest.raises(StoreError):
        open_and_read()


def test_damaged_pages_are_never_a_silent_read(tmp_path: Path) -> None:
    """Bytes changed inside the data pages: reading fails with a typed error, or verify names them."""
    db = tmp_path / "damaged.db"
    _filled(db, 100)
    data = bytearray(db.read_bytes())
    for offset in range(3 * 4096 + 200, len(data), 4096):
        data[offset : offset + 16] = b"\xde\xad\xbe\xef" * 4
    db.write_bytes(bytes(data))
    try:
        with SyncSQLiteStore(db) as store:
            records = list(store.read_all())
    except CorruptLogError:
        return
    assert not verify(records).ok


def test_an_empty_file_becomes_a_new_log(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    with SyncSQLiteStore(db) as store:
        assert store.last_position() == 0


# --- append-only, network file systems --------------------------------------------------------------


@pytest.mark.parametrize("statement", ["UPDATE events SET data = x'00'", "DELETE FROM events"])
def test_the_database_itself_refuses_to_change_or_remove_events(tmp_path: Path, statement: str) -> None:
    db = tmp_path / "append-only.db"
    _filled(db, 1)
    connection = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="never"):
        connection.execute(statement)
    connection.close()


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/mnt/shared/x.db", "nfs4"),
        ("/mnt/shared/local/x.db", "ext4"),
        ("/mnt/smb/a/b.db", "cifs"),
        ("/home/x.db", "ext4"),
    ],
)
def test_the_file_system_under_a_path_is_found(path: str, kind: str) -> None:
    assert filesystem_type(Path(path), MOUNTINFO) == kind


@pytest.mark.parametrize("path", ["/mnt/shared/runs.db", "/mnt/smb/runs.db", "/mnt/sshfs/runs.db"])
def test_a_database_on_a_network_file_system_is_refused(path: str) -> None:
    with pytest.raises(UnsupportedFilesystemError, match="local disk"):
        check_filesystem(Path(path), MOUNTINFO)


def test_a_database_on_a_local_disk_is_accepted() -> None:
    check_filesystem(Path("/mnt/shared/local/runs.db"), MOUNTINFO)


def test_the_log_has_an_identity(tmp_path: Path) -> None:
    db = tmp_path / "id.db"
    _filled(db, 1)
    with SyncSQLiteStore(db) as store:
        log_id = store.run(_fetch("SELECT value FROM flowtrail_meta WHERE key = 'log_id'"))
    assert isinstance(log_id, str)
    assert len(log_id) == 36


# --- read-only opens ------------------------------------------------------------------------------


def test_a_log_opened_read_only_is_read_and_refuses_every_write(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    _filled(db, 3)
    before = db.read_bytes()
    with SyncSQLiteStore.open(f"sqlite:///{db}?mode=ro") as store:
        assert store.read_only
        assert len(list(store.read_all())) == store.last_position() > 0
        stream, events = new_stream()
        with pytest.raises(StoreAccessError, match="read-only"):
            store.append(stream, events, 0)
    assert db.read_bytes() == before


def test_an_async_log_opened_read_only_refuses_an_append(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    _filled(db, 2)
    before = db.read_bytes()

    async def attempt() -> None:
        store = await SQLiteStore.open(f"sqlite:///{db}?mode=ro")
        try:
            assert await store.last_position() > 0
            stream, events = new_stream()
            with pytest.raises(StoreAccessError, match="read-only"):
                await store.append(stream, events, 0)
        finally:
            await store.close()

    asyncio.run(attempt())
    assert db.read_bytes() == before


def test_a_read_only_open_never_creates_a_log(tmp_path: Path) -> None:
    with pytest.raises(LogNotFoundError):
        SyncSQLiteStore.open(f"sqlite:///{tmp_path / 'absent.db'}?mode=ro")
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("url", ["sqlite:///:memory:?mode=ro", "sqlite:///runs.db?mode=rwc"])
def test_a_read_only_mode_that_cannot_hold_is_a_typed_error(url: str) -> None:
    with pytest.raises((InvalidInputError, InvalidUrlError)):
        SyncSQLiteStore.open(url)
