"""Database URLs as messages show them: never a secret they carry."""

from __future__ import annotations

import pytest

from flowtrail.core import InvalidUrlError
from flowtrail.store.sqlite import SyncSQLiteStore
from flowtrail.store.urls import parse_url, shown_url, sqlite_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db?schema=x", "postgresql://u:***@h:5432/db?schema=x"),
        ("postgresql://u@h/db?schema=x&password=s3cret", "postgresql://u@h/db?schema=x&password=***"),
        (
            "postgresql://u@h/db?sslpassword=s3cret&sslmode=require",
            "postgresql://u@h/db?sslpassword=***&sslmode=require",
        ),
        ("postgresql://u@h/db?pass%77ord=s3cret", "postgresql://u@h/db?pass%77ord=***"),
        ("postgresql:///db?password=s3cret", "postgresql:///db?password=***"),
        (
            "postgresql://u:a@b@h/db?password=c&password=d",
            "postgresql://u:***@h/db?password=***&password=***",
        ),
    ],
)
def test_a_shown_url_hides_its_password_wherever_the_url_carries_it(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["sqlite:///runs.db?mode=ro", "sqlite:///:memory:", "postgresql://u@h/db?schema=x&options=-c%20a%3D1"],
)
def test_a_url_without_a_secret_is_shown_as_written(url: str) -> None:
    assert shown_url(url) == url


def test_a_url_that_cannot_be_read_is_not_shown_at_all() -> None:
    assert "s3cret" not in shown_url("postgresql://u:s3cret@[::1/db")


def test_a_postgresql_url_given_to_the_sqlite_store_is_refused_without_its_password() -> None:
    with pytest.raises(InvalidUrlError) as refused:
        SyncSQLiteStore.open("postgresql://u@h/db?password=s3cret")
    assert "s3cret" not in str(refused.value)
    assert "password=***" in str(refused.value)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:////tmp/runs#2.db", "holds a '#'"),
        ("sqlite:////tmp/runs.db#", "holds a '#'"),
        ("sqlite:////tmp/runs.db?mode=ro&mode=rw", "option 'mode' is given more than once"),
        ("postgresql://postgres@localhost/test?schema=a&schema=b", "option 'schema' is given more than once"),
        ("sqlite:////tmp/newdb/", "names a folder"),
        (" sqlite:////tmp/runs.db", "begins or ends with white space"),
        ("sqlite:////tmp/runs.db\n", "begins or ends with white space"),
    ],
)
def test_a_url_naming_no_single_file_or_giving_an_option_twice_is_refused(url: str, words: str) -> None:
    """Before, the first named /tmp/runs (the rest read as a fragment), the option given
    last won silently (mode=ro&mode=rw let a rebuild write), and a folder's path made a
    file of its name."""
    with pytest.raises(InvalidUrlError, match=words):
        parse_url(url)


def test_a_hash_in_a_file_name_is_written_percent_encoded() -> None:
    assert parse_url("sqlite:////tmp/runs%232.db").target == "/tmp/runs#2.db"


def test_a_file_name_that_is_not_utf8_has_no_url_and_says_so() -> None:
    with pytest.raises(InvalidUrlError, match="is not UTF-8 text"):
        sqlite_url("/tmp/\udcfe.db")


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://postgres:s3cr%zzetpw@127.0.0.1:5432/test", "s3cr%zzetpw"),
        ("postgresql://postgres:s3cr@etpw@127.0.0.1:5432/test", "etpw"),
    ],
)
def test_a_postgresql_url_libpq_cannot_read_is_refused_without_its_password(url: str, password: str) -> None:
    """libpq quotes what it cannot read: a password with a bad percent escape, or the
    part of one after a raw '@', read as the host."""
    from flowtrail import StoreUnavailableError
    from flowtrail.store.postgres import SyncPostgresStore

    with pytest.raises(StoreUnavailableError) as refused:
        SyncPostgresStore.open(url)
    assert password not in str(refused.value)
    assert "***" in str(refused.value)


def test_a_libpq_option_given_twice_goes_to_libpq_which_takes_the_last() -> None:
    """Only flowtrail's own options must be given once: a URL built by adding libpq
    options to a base one may repeat them, as libpq allows."""
    parsed = parse_url("postgresql://postgres@localhost/test?sslmode=disable&sslmode=prefer")
    assert parsed.target.endswith("?sslmode=disable&sslmode=prefer")


@pytest.mark.parametrize("option", ["password", "sslpassword"])
def test_a_password_given_as_a_query_option_is_kept_out_of_libpqs_error(option: str) -> None:
    from flowtrail import StoreUnavailableError
    from flowtrail.store.postgres import SyncPostgresStore

    with pytest.raises(StoreUnavailableError) as refused:
        SyncPostgresStore.open(f"postgresql://postgres@127.0.0.1:5432/test?{option}=se%ZZcret")
    assert "ZZcret" not in str(refused.value)
