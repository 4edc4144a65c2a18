"""Database URLs: the one documented way to say where a log lives.

- ``sqlite:///runs.db`` (relative), ``sqlite:////var/lib/runs.db`` (absolute),
  ``sqlite:///~/runs.db``, ``sqlite:///:memory:``; the path is percent-decoded, so a
  path holding ``#``, ``?`` or ``%`` is written with them encoded (``sqlite:///a%23b.db``
  is the file ``a#b.db``; `sqlite_url` writes one); options as query parameters:
  ``?durability=normal`` (default ``full``), ``?busy_timeout=5`` (seconds),
  ``?max_event_bytes=1048576``, ``?mode=ro`` (read only: an auditor's copy).
- ``postgresql://user@host:5432/db`` (or ``postgres://``), with ``?schema=name``
  (default ``flowtrail``) and libpq's own parameters.

A URL is checked once, here; anything wrong is an `InvalidUrlError` naming the part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, quote, unquote, unquote_plus, urlsplit, urlunsplit

from flowtrail.core.errors import InvalidUrlError
from flowtrail.core.text import shown

__all__ = ["StoreUrl", "parse_url", "shown_url", "sqlite_url", "without_password"]

_SQLITE_OPTIONS = {"durability", "busy_timeout", "max_event_bytes", "mode"}
_FLOWTRAIL_PG_OPTIONS = {"schema", "max_event_bytes", "busy_timeout"}
#: libpq's parameters that hold a secret: a URL may carry them in its query as well as
#: the password before its host.
_SECRET_PARAMETERS = {"password", "sslpassword"}


@dataclass(frozen=True)
class StoreUrl:
    """A parsed database URL."""

    backend: str
    #: SQLite: the file path (or ":memory:"); PostgreSQL: the libpq connection string.
    target: str
    durability: str = "full"
    busy_timeout: float = 5.0
    max_event_bytes: int = 1024 * 1024
    schema: str = "flowtrail"
    extra: dict[str, str] = field(default_factory=dict)
    #: SQLite ``?mode=ro``: read the log, never write it (see `SyncSQLiteStore`).
    read_only: bool = False


#: The longest busy_timeout a URL may ask for, in seconds (PostgreSQL's lock_timeout
#: holds at most about 24 days in milliseconds).
_MAX_BUSY_TIMEOUT = 86_400.0


def _number(options: dict[str, str], name: str, default: float, *, whole: bool = False) -> float:
    if name not in options:
        return default
    try:
        value = int(options[name]) if whole else float(options[name])
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise InvalidUrlError(f"{name}={shown(options[name])} is not {kind}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidUrlError(f"{name} must be a positive, finite number, not {options[name]}")
    if name == "busy_timeout" and value > _MAX_BUSY_TIMEOUT:
        raise InvalidUrlError(
            f"busy_timeout is at most {_MAX_BUSY_TIMEOUT:.0f} seconds (a day), not {options[name]}"
        )
    return value


def sqlite_url(path: str | Path) -> str:
    """The URL of the SQLite file at ``path``, whatever characters its name holds (a
    leading ``~`` is the file's own, encoded, not a home folder)."""
    try:
        quoted = quote(str(path), safe="/:")
    except UnicodeEncodeError:  # bytes of a name that is not UTF-8, as os.fsdecode keeps them
        raise InvalidUrlError(
            f"the file name {shown(str(path))} is not UTF-8 text, which a database URL spells: rename it"
        ) from None
    return f"sqlite:///{'%7E' + quoted[1:] if quoted.startswith('~') else quoted}"


def shown_url(url: str) -> str:
    """The URL as a message or a log line may show it: its password, and every libpq
    parameter holding a secret in its query, replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # no telling the password from the rest
        return "(a database URL that cannot be read)"
    # Edited in place, not put together again: urlunsplit would drop the empty host of
    # sqlite:///path and of a PostgreSQL URL through a local socket.
    shown = url
    userinfo, at, _ = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if at and colon:
        shown = shown.replace(f"{userinfo}@", f"{user}:***@", 1)
    query = "&".join(map(_shown_parameter, parts.query.split("&")))
    if query != parts.query:  # the query starts at the first "?", where urlsplit found it
        before, _, after = shown.partition("?")
        shown = f"{before}?{query}{after[len(parts.query) :]}"
    return shown


def without_password(text: str, url: str) -> str:
    """``text`` (a driver's error about ``url``) with the URL's password replaced by
    ``***``, as written and percent-decoded, and each piece of it between '@'s (libpq
    reads a password holding a raw '@' as ending there, and names the rest as the host)."""
    try:
        userinfo = urlsplit(url).netloc.rpartition("@")[0]
    except ValueError:
        return text
    password = userinfo.partition(":")[2]
    secrets = {password, unquote(password), *password.split("@")}
    for part in urlsplit(url).query.split("&"):  # ?password=..., ?sslpassword=...
        name, _, value = part.partition("=")
        if unquote_plus(name) in _SECRET_PARAMETERS:
            secrets |= {value, unquote_plus(value)}
    for secret in sorted((secret for secret in secrets if len(secret) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _shown_parameter(part: str) -> str:
    name = part.partition("=")[0]
    return f"{name}=***" if unquote_plus(name) in _SECRET_PARAMETERS else part


def parse_url(url: str) -> StoreUrl:
    """Parse and check a database URL."""
    given: object = url  # also reached from untyped callers (the CLI, the environment)
    if not isinstance(given, str) or not url.strip():
        raise InvalidUrlError("a database URL is a non-empty string, e.g. sqlite:///runs.db")
    if url != url.strip():  # a space before the scheme read as part of it, or one after as the file's
        raise InvalidUrlError(f"the database URL {shown(url)} begins or ends with white space")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - checks the port's digits and range
    except ValueError as exc:  # a bracket left open, a port out of range
        raise InvalidUrlError(f"the database URL cannot be read: {exc}") from None
    scheme = parts.scheme.lower()
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = dict(pairs)
    # flowtrail's own options, once each (libpq's may repeat: the last one wins there).
    ours = _SQLITE_OPTIONS | _FLOWTRAIL_PG_OPTIONS
    twice = [name for name in options if name in ours and sum(key == name for key, _ in pairs) > 1]
    if twice:
        raise InvalidUrlError(f"the URL option {shown(twice[0])} is given more than once: give it once")
    if scheme == "sqlite":
        return _sqlite(url, parts, options)
    if scheme in ("postgresql", "postgres"):
        return _postgresql(parts, options)
    raise InvalidUrlError(
        f"unsupported database URL scheme {shown(parts.scheme or '(none)')}: use sqlite:///path.db or postgresql://..."
    )


def _sqlite(url: str, parts: SplitResult, options: dict[str, str]) -> StoreUrl:
    unknown = set(options) - _SQLITE_OPTIONS
    if unknown:
        raise InvalidUrlError(f"unknown SQLite URL option(s): {', '.join(sorted(unknown))}")
    if parts.netloc or not url[len("sqlite:") :].startswith("///"):
        # sqlite:/tmp/x.db would otherwise open tmp/x.db under the working folder.
        raise InvalidUrlError(
            f"a SQLite URL has three slashes before its path: sqlite:///{parts.netloc}{parts.path}"
        )
    raw = _sqlite_path(url, parts)
    durability = options.get("durability", "full")
    if durability not in ("full", "normal"):
        raise InvalidUrlError(f"durability is 'full' or 'normal', not {shown(durability)}")
    mode = options.get("mode", "rw")
    if mode not in ("ro", "rw"):
        raise InvalidUrlError(f"mode is 'ro' (read only) or 'rw', not {shown(mode)}")
    # Only a ~ written as it is names a home folder: %7E is a file name's own.
    home = parts.path.startswith("/~")
    try:
        target = str(Path(raw).expanduser()) if home else raw
    except RuntimeError:  # ~name of a user this machine does not know
        raise InvalidUrlError(f"the home folder in {shown(raw)} is not known on this machine") from None
    return StoreUrl(
        backend="sqlite",
        target=target,
        durability=durability,
        busy_timeout=_number(options, "busy_timeout", 5.0),
        max_event_bytes=int(_number(options, "max_event_bytes", 1024 * 1024, whole=True)),
        read_only=mode == "ro",
    )


def _sqlite_path(url: str, parts: SplitResult) -> str:
    """The file a SQLite URL names, percent-decoded as any URL's path is: a file name
    holding "#" or "?" would otherwise have no spelling (read as a fragment, or as
    options)."""
    try:
        raw = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidUrlError(
            f"the path of {shown(url)} is percent-encoded bytes that are not UTF-8 text"
        ) from None
    if parts.fragment or url.endswith("#"):
        raise InvalidUrlError(
            f"{shown_url(url)} holds a '#', which ends a URL's path: a file name's own '#' is written %23"
        )
    if not raw:
        raise InvalidUrlError("a SQLite URL names a file: sqlite:///runs.db, or sqlite:///:memory:")
    if raw.endswith("/"):
        raise InvalidUrlError(
            f"the path of {shown_url(url)} ends with '/', which names a folder: a SQLite URL names a file"
        )
    if "\x00" in raw:
        raise InvalidUrlError(f"the path of {shown(url)} holds a NUL character, which no file name can")
    return raw


def _postgresql(parts: SplitResult, options: dict[str, str]) -> StoreUrl:
    mine = {k: v for k, v in options.items() if k in _FLOWTRAIL_PG_OPTIONS}
    # libpq's own parameters go on as they were written: decoded and joined again,
    # a value holding an encoded & = or space (options=-c%20statement_timeout%3D5s)
    # would no longer read as one.
    libpq = [
        part
        for part in parts.query.split("&")
        if part and unquote_plus(part.partition("=")[0]) not in _FLOWTRAIL_PG_OPTIONS
    ]
    schema = mine.get("schema", "flowtrail")
    plain = schema.isascii() and schema.replace("_", "").isalnum() and schema[:1].isalpha()
    if not plain or len(schema) > 63:
        raise InvalidUrlError(
            f"schema {shown(schema)} must be a plain identifier (letters, digits, underscores)"
        )
    query = "&".join(libpq)
    target = urlunsplit(("postgresql", parts.netloc, parts.path, query, ""))
    return StoreUrl(
        backend="postgresql",
        target=target,
        schema=schema.lower(),
        busy_timeout=_number(mine, "busy_timeout", 5.0),
        max_event_bytes=int(_number(mine, "max_event_bytes", 1024 * 1024, whole=True)),
    )
