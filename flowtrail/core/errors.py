"""Every error flowtrail raises, in one tree.

Errors are named in the library's words, never a driver's, and carry the context a
caller needs to act on them (run id, stream, position, event type)::

    FlowtrailError
    ├── InvalidInputError                 bad input from a caller; nothing was written
    │   ├── InvalidStateError             unknown state type, naive datetime, bad details
    │   ├── InvalidDataError              data that is not JSON (sets, objects, NaN, ...)
    │   ├── InvalidIdError                a run or stream id of the wrong shape
    │   ├── InvalidVersionError           a negative or absurd expected version
    │   ├── PayloadTooLargeError          an event over the store's size limit
    │   └── InvalidUrlError               a database URL flowtrail cannot open
    ├── CodecError                        stored or received bytes that are not an event
    │   ├── MalformedEventError           bytes that do not decode to the event's type
    │   ├── UnknownEventTypeError         an event type this version does not know
    │   └── UnsupportedSchemaVersionError an event written by a newer flowtrail
    ├── StoreError                        the log could not do what was asked
    │   ├── ConcurrencyConflictError      the stream moved on since it was read
    │   ├── StoreBusyError                another process held the write lock too long
    │   ├── StoreUnavailableError         the database cannot be reached right now
    │   ├── StoreAccessError              this process may not write the file or its folder
    │   ├── LogNotFoundError              no log where one was to be opened, not created
    │   ├── CorruptLogError               the file or the rows are not a sound log
    │   ├── SchemaVersionError            the database was written by a newer flowtrail
    │   ├── ProjectionReplacedError       another version of a catch-up projection took over
    │   ├── ViewsOutOfDateError           the run views are not whole, and a query needs them
    │   │   └── RebuildReplacedError      a later rebuild of the run views took this one over
    │   └── UnsupportedFilesystemError    a network file system SQLite cannot lock safely
    ├── OrchestrationError                a run-level request that cannot be served
    │   ├── RunNotFoundError              no run with that id
    │   ├── RunAlreadyExistsError         a run id used twice without an idempotency key
    │   ├── ContentionError               a proposal kept losing to concurrent writers
    │   ├── PolicyNotFoundError           a decision names a policy this version lacks
    │   └── AbortedError                  the policy aborted a proposal a flow run needed
    └── FlowRunError                      how a flow call ended, when not with a value
        ├── ParameterValidationError      the parameters do not fit the signature (also a ValueError)
        ├── FlowFailedError               the run ended Failed and its exception is not at hand
        ├── FlowTimeoutError              the run exceeded its timeout (also a TimeoutError)
        ├── CancelledRunError             the run ended Cancelled
        ├── UnfinishedRunError            the call ended with the run Paused or Scheduled
        └── ResultNotAvailableError       the run completed elsewhere and its result was not recorded

Every class can be caught through its parents; `InvalidInputError` is also a
`ValueError` so that code written for plain Python errors keeps working.
"""

from __future__ import annotations

__all__ = [
    "AbortedError",
    "CancelledRunError",
    "CodecError",
    "ConcurrencyConflictError",
    "ContentionError",
    "CorruptLogError",
    "FlowFailedError",
    "FlowRunError",
    "FlowTimeoutError",
    "FlowtrailError",
    "InvalidDataError",
    "InvalidIdError",
    "InvalidInputError",
    "InvalidStateError",
    "InvalidUrlError",
    "InvalidVersionError",
    "LogNotFoundError",
    "MalformedEventError",
    "OrchestrationError",
    "ParameterValidationError",
    "PayloadTooLargeError",
    "PolicyNotFoundError",
    "ProjectionReplacedError",
    "RebuildReplacedError",
    "ResultNotAvailableError",
    "RunAlreadyExistsError",
    "RunNotFoundError",
    "SchemaVersionError",
    "StoreAccessError",
    "StoreBusyError",
    "StoreError",
    "StoreUnavailableError",
    "UnfinishedRunError",
    "UnknownEventTypeError",
    "UnsupportedFilesystemError",
    "UnsupportedSchemaVersionError",
    "ViewsOutOfDateError",
]


class FlowtrailError(Exception):
    """The root of every error flowtrail raises on purpose."""


# --- bad input -------------------------------------------------------------------------


class InvalidInputError(FlowtrailError, ValueError):
    """A caller passed something flowtrail cannot accept; nothing was written."""


class InvalidStateError(InvalidInputError):
    """A state that is not one of flowtrail's: unknown type, naive time, bad details."""


class InvalidDataError(InvalidInputError):
    """Data that cannot be recorded as JSON: a set, an object, a non-finite float, ..."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class InvalidIdError(InvalidInputError):
    """An id of the wrong shape (empty, too long, control characters, not a UUID)."""


class InvalidVersionError(InvalidInputError):
    """An expected version that cannot exist (negative, or beyond any real stream)."""


class PayloadTooLargeError(InvalidInputError):
    """An encoded event larger than the store accepts."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class InvalidUrlError(InvalidInputError):
    """A database URL flowtrail does not know how to open."""


# --- bytes that are not events ------------------------------------------------------------


class CodecError(FlowtrailError):
    """Bytes that do not decode to a flowtrail event."""

    def __init__(self, message: str, *, event_type: str | None = None, position: int | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type
        self.position = position


class MalformedEventError(CodecError):
    """Bytes that are not valid JSON for the event type they claim to be."""


class UnknownEventTypeError(CodecError):
    """An event type this version of flowtrail does not know."""


class UnsupportedSchemaVersionError(CodecError):
    """An event written with a schema version newer than this flowtrail understands."""


# --- the log ------------------------------------------------------------------------------


class StoreError(FlowtrailError):
    """The log could not carry out the request."""


class ConcurrencyConflictError(StoreError):
    """The stream's version is not the one the caller expected; nothing was written."""

    def __init__(self, stream_id: str, expected_version: int, current_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {current_version}, not the expected {expected_version}"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.current_version = current_version


class StoreBusyError(StoreError):
    """Another process held the database's write lock for longer than the busy timeout."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached (connection lost, server restarting)."""


class StoreAccessError(StoreError):
    """This process may not write the database file, or the folder SQLite keeps its
    write-ahead log beside it in (file permissions, a read-only mount)."""


class ViewsOutOfDateError(StoreError):
    """The run views are not the log's fold (a rebuild that did not finish, an older
    view format) and are not rebuilt here: the log is open read-only, or was opened with
    ``rebuild_stale=False``. Queries over many runs need them; one run's reads fold its
    events instead."""


class RebuildReplacedError(ViewsOutOfDateError):
    """A rebuild of the run views began while this one ran, and replaces it: this one
    stops writing, and the views are whole once the other ends."""


class ProjectionReplacedError(StoreError):
    """A catch-up of another version of the projection began while this one ran, and
    replaced its tables and checkpoint: this one stops applying (it would otherwise
    start again from the first event, into the other version's tables)."""


class LogNotFoundError(StoreError):
    """No log where one was opened with ``create=False`` (a read-only look, a typo)."""


class CorruptLogError(StoreError):
    """The database file or its rows are not a sound flowtrail log."""

    def __init__(self, message: str, *, position: int | None = None, undecodable: bool = False) -> None:
        super().__init__(message)
        self.position = position
        #: A row holds text that is not UTF-8 (a table edited by hand), which the
        #: driver could not read as text: its bytes can still be read.
        self.undecodable = undecodable


class SchemaVersionError(StoreError):
    """The database was created by a newer flowtrail than this one."""


class UnsupportedFilesystemError(StoreError):
    """The database file is on a file system where SQLite's locking is not reliable."""


# --- runs ---------------------------------------------------------------------------------


class OrchestrationError(FlowtrailError):
    """A run-level request that cannot be served."""


class RunNotFoundError(OrchestrationError, LookupError):
    """No run has this id (or, with ``wanted``, no run of that kind: ``found`` says what
    the run with this id is)."""

    def __init__(self, run_id: object, *, wanted: str | None = None, found: str | None = None) -> None:
        if wanted is not None and found is not None:
            super().__init__(f"no {wanted} with id {run_id}: it is a {found}")
        else:
            super().__init__(f"no run with id {run_id}")
        self.run_id = run_id


class RunAlreadyExistsError(OrchestrationError):
    """A run was created with an id that is already taken."""

    def __init__(self, run_id: object) -> None:
        super().__init__(f"a run with id {run_id} already exists")
        self.run_id = run_id


class ContentionError(OrchestrationError):
    """A proposal lost to concurrent writers on every one of its attempts."""

    def __init__(self, run_id: object, attempts: int) -> None:
        super().__init__(f"run {run_id}: gave up after {attempts} attempts lost to concurrent writers")
        self.run_id = run_id
        self.attempts = attempts


class PolicyNotFoundError(OrchestrationError):
    """A recorded decision names a policy (or version) this flowtrail does not have."""

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"no policy {name!r} version {version} is registered")
        self.name = name
        self.version = version


class AbortedError(OrchestrationError):
    """The policy aborted a proposal a flow run needed (e.g. a second submission)."""

    def __init__(self, run_id: object, reason: str | None) -> None:
        super().__init__(f"run {run_id}: {reason or 'the proposal was aborted'}")
        self.run_id = run_id
        self.reason = reason


# --- how a flow call ended ---------------------------------------------------------------


class FlowRunError(FlowtrailError):
    """A flow call that ended without a value (its final state says how)."""


class ParameterValidationError(FlowRunError, InvalidInputError):
    """The parameters given to a flow do not fit its signature; the function never ran."""


class FlowFailedError(FlowRunError):
    """The flow run ended Failed, and the exception that failed it is not at hand."""


class FlowTimeoutError(FlowRunError, TimeoutError):
    """The flow run exceeded its ``timeout_seconds``."""


class CancelledRunError(FlowRunError):
    """The flow run ended Cancelled."""


class UnfinishedRunError(FlowRunError):
    """The call ended with the run in a state that is not final (it returned Paused or
    Scheduled, say): there is no result yet (Prefect's PausedRun and UnfinishedRun)."""


class ResultNotAvailableError(FlowRunError):
    """The run completed without a recorded result (it was not JSON, or too large)."""
