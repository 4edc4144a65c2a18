"""Shared test configuration: Hypothesis profiles (``make test`` and ``make soak``), and
the databases a test can run against (`databases`: SQLite, and PostgreSQL when
``FLOWTRAIL_TEST_POSTGRES_DSN`` names a server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, settings

SOAK = bool(os.environ.get("FLOWTRAIL_SOAK"))

settings.register_profile(
    "test", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.register_profile(
    "soak", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("soak" if SOAK else "test")

POSTGRES_DSN = os.environ.get("FLOWTRAIL_TEST_POSTGRES_DSN")
NO_POSTGRES = (
    "FLOWTRAIL_TEST_POSTGRES_DSN is not set: no PostgreSQL server to test against "
    "(.ci/run sets it to postgresql://postgres@127.0.0.1:5432/test)"
)


def postgres_url(schema: str, **query: object) -> str:
    """The test server's URL for a log in ``schema``."""
    assert POSTGRES_DSN is not None
    parts = urlsplit(POSTGRES_DSN)
    options = "&".join(
        [*filter(None, [parts.query]), f"schema={schema}", *(f"{k}={v}" for k, v in query.items())]
    )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, options, ""))


def drop_schemas(schemas: list[str]) -> None:
    import psycopg

    assert POSTGRES_DSN is not None
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for schema in schemas:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Databases:
    """Logs for one test on one backend: ``url(name)`` is a fresh one per name (a file
    in the test's directory, or a schema on the test server, dropped afterwards)."""

    def __init__(self, backend: str, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self.prefix = f"t{uuid4().hex[:10]}"
        self.schemas: list[str] = []

    def url(self, name: str = "log", **query: object) -> str:
        if self.backend == "sqlite":
            options = "&".join(f"{k}={v}" for k, v in query.items())
            return f"sqlite:///{self.directory}/{name}.db" + (f"?{options}" if options else "")
        schema = f"{self.prefix}_{name}".lower()
        if schema not in self.schemas:
            self.schemas.append(schema)
        return postgres_url(schema, **query)

    def cleanup(self) -> None:
        if self.schemas:
            drop_schemas(self.schemas)


BACKENDS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]


def open_databases(backend: str, directory: Path) -> Databases:
    if backend == "postgresql" and not POSTGRES_DSN:
        pytest.skip(NO_POSTGRES)
    return Databases(backend, directory)


@pytest.fixture(params=BACKENDS)
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    """Fresh logs on each backend."""
    opened = open_databases(request.param, tmp_path)
    yield opened
    opened.cleanup()
