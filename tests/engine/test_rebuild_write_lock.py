"""A rebuild holds the write lock a bounded piece of work at a time: other writers (in
other processes, with a busy timeout of 5 s) go on proposing throughout.

Built in one transaction, the ten indexes of a million runs held the lock for about
7 s and a proposer gave up with StoreBusyError; a helper's half of the rows, copied in
one transaction, held it for about 3 s.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flowtrail import SyncOrchestrator
from flowtrail.core import states as pure
from flowtrail.core.effects import Execute, Script
from flowtrail.engine.replay import copy_rows
from flowtrail.projections import RunViews
from flowtrail.projections.rebuild import transaction
from flowtrail.store.drivers import run_sync
from flowtrail.store.schema import mark_current_script, mark_stale_script
from flowtrail.store.sqlite import _Connection
from flowtrail.store.sqlite_schema import translate
from tests.conftest import Databases


def transactions(statements: list[str]) -> list[list[str]]:
    """The statements a connection ran, a list per write transaction."""
    found: list[list[str]] = []
    current: list[str] | None = None
    for statement in statements:
        if statement.startswith("BEGIN"):
            current = []
        elif statement in ("COMMIT", "ROLLBACK"):
            if current is not None:
                found.append(current)
            current = None
        elif current is not None:
            current.append(statement)
    return found


def test_a_rebuild_builds_each_index_in_a_transaction_of_its_own(tmp_path: Path) -> None:
    with SyncOrchestrator.open(f"sqlite:///{tmp_path}/log.db") as orch:
        for _ in range(5):
            orch.create_flow_run("etl", state=pure.Pending())
        statements: list[str] = []
        orch.store._writer._connection.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        orch.rebuild(workers=1)
        indexes = [
            [statement for statement in transaction if statement.startswith("CREATE INDEX")]
            for transaction in transactions(statements)
        ]
        assert max(map(len, indexes)) == 1
        assert sum(map(len, indexes)) == len(RunViews().index_schema("sqlite"))
        assert orch.verify().ok


def test_a_helpers_rows_are_copied_a_chunk_at_a_time_and_every_one_arrives(tmp_path: Path) -> None:
    views = RunViews()
    helper = sqlite3.connect(tmp_path / "helper.db", isolation_level=None)
    for statement in views.table_schema("sqlite"):
        helper.execute(statement)
    helper.executemany(
        "INSERT INTO flow_runs (id, name, flow_name, created_at, version, view) VALUES (?, 'r', 'etl', 0, 1, x'00')",
        [(f"run-{index:02d}",) for index in range(25)],
    )
    helper.executemany(
        "INSERT INTO run_tags VALUES ('nightly', ?)", [(f"run-{index:02d}",) for index in range(25)]
    )
    helper.close()
    main = sqlite3.connect(tmp_path / "main.db", isolation_level=None)
    for statement in views.table_schema("sqlite"):
        main.execute(statement)
    statements: list[str] = []
    main.set_trace_callback(statements.append)
    run_sync(
        copy_rows(views.tables, str(tmp_path / "helper.db"), chunk=7), _Connection(main).execute, translate
    )
    copies = [
        transaction for transaction in transactions(statements) if any("flow_runs" in s for s in transaction)
    ]
    assert [len(transaction) for transaction in copies] == [1, 1, 1, 1]
    assert main.execute("SELECT count(*) FROM flow_runs").fetchone() == (25,)
    assert main.execute("SELECT count(*) FROM run_tags").fetchone() == (25,)
    assert main.execute("PRAGMA database_list").fetchall()[-1][1] == "main"  # detached


def _indexes_of_flow_runs(databases: Databases) -> set[str]:
    url = databases.url("log")
    if databases.backend == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            rows = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'flow_runs' AND sql IS NOT NULL"
            )
            return {str(row[0]) for row in rows}
    import psycopg

    from tests.conftest import POSTGRES_DSN

    assert POSTGRES_DSN is not None
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'flow_runs' "
            "AND indexname NOT LIKE '%%_pkey'",
            (schema,),
        )
        return {str(row[0]) for row in rows}


def test_opening_a_log_whose_views_are_being_rebuilt_builds_none_of_their_indexes(
    databases: Databases,
) -> None:
    """The rebuild fills tables without indexes and builds them at its end. An open
    meanwhile built them all on the rows loaded so far, holding the write lock for 10 s
    at 745,000 runs: other writers and the rebuild itself met their busy timeout."""
    url = databases.url("log")
    with SyncOrchestrator.open(url) as orch:
        for _ in range(3):
            orch.create_flow_run("etl", state=pure.Pending())
        assert _indexes_of_flow_runs(databases)
        views = RunViews()
        # Where another process's rebuild stands once it has begun: the views marked
        # stale, their tables made again without indexes.
        orch.store.run(
            transaction(
                _run_all(
                    [
                        *(f'DROP TABLE IF EXISTS "{table}"' for table in views.tables),
                        *views.table_schema(orch.store.dialect),
                    ],
                    mark_stale_script(views),
                )
            ),
            write=True,
        )
    assert _indexes_of_flow_runs(databases) == set()
    with SyncOrchestrator.open(url, rebuild_stale=False) as orch:
        assert orch.store.stale_projections == [views.name]
    assert _indexes_of_flow_runs(databases) == set()
    with SyncOrchestrator.open(url) as orch:  # the rebuild at open ends with them
        assert [run.flow_name for run in orch.read_flow_runs()] == ["etl"] * 3
    assert len(_indexes_of_flow_runs(databases)) >= 5


def _run_all(statements: list[str], then: Script[None]) -> Script[None]:
    for statement in statements:
        yield Execute(statement)
    yield from then


def test_the_first_open_once_the_views_are_current_makes_an_index_their_rebuild_did_not(
    databases: Databases,
) -> None:
    """An open while the views are stale makes their tables alone. A rebuild by an
    older flowtrail, declaring fewer indexes at the same view version, may then finish
    them: the next open makes what it lacks, instead of taking the digest recorded by
    the open in between for what the tables hold."""
    url = databases.url("log")
    views = RunViews()
    with SyncOrchestrator.open(url) as orch:
        orch.create_flow_run("etl", state=pure.Pending())
        dialect = orch.store.dialect
        drop = [f'DROP TABLE IF EXISTS "{table}"' for table in views.tables]
        orch.store.run(
            transaction(_run_all([*drop, *views.table_schema(dialect)], mark_stale_script(views))), write=True
        )
    with SyncOrchestrator.open(url, rebuild_stale=False) as orch:
        assert orch.store.stale_projections == [views.name]
        # The older rebuild ends: its rows and all indexes but one, the views current.
        older = [
            statement
            for statement in views.index_schema(dialect)
            if "flow_runs_by_state_name" not in statement
        ]
        orch.store.run(transaction(_run_all(older, mark_current_script(views))), write=True)
    assert "flow_runs_by_state_name" not in _indexes_of_flow_runs(databases)
    with SyncOrchestrator.open(url):
        pass
    assert "flow_runs_by_state_name" in _indexes_of_flow_runs(databases)
