"""Checks on what callers pass the orchestrator, made once at the boundary."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from flowtrail.core.errors import (
    InvalidDataError,
    InvalidIdError,
    InvalidInputError,
    InvalidStateError,
    RunNotFoundError,
)
from flowtrail.core.events import RetryDelay
from flowtrail.core.fold import RunView
from flowtrail.core.jsondata import check_json
from flowtrail.core.states import State, check_types, parse_uuid
from flowtrail.core.text import shown

__all__ = [
    "check_name",
    "check_parameters",
    "check_retries",
    "check_retry_delay",
    "check_state",
    "check_tags",
    "run_id_of",
    "shown",
]

_MAX_NAME = 512
_MAX_DELAYS = 50
_MAX_TAGS = 1_000
_MAX_RETRIES = 1_000_000
#: A hundred years: a retry scheduled further off than that is a mistake, and one past
#: year 9999 cannot be written down at all.
_MAX_DELAY = 100 * 365 * 24 * 3600
#: Unicode categories a name may not hold: control characters and lone surrogates.
#: (Other characters Python does not call printable, such as a no-break space or the
#: joiner inside an emoji, are fine; the CLI writes them out as escapes.)
_CONTROL = frozenset({"Cc", "Cs"})


def run_id_of(value: object, what: str = "run id") -> UUID:
    """A run id from a UUID or its string form."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise InvalidIdError(f"{what} {shown(value)} is not a UUID")
    return parsed


def check_name(value: object, what: str, *, control_characters: bool = False) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_NAME:
        raise InvalidInputError(
            f"{what} is a non-empty string of at most {_MAX_NAME} characters, not {shown(value)}"
        )
    if control_characters:
        return value
    if not value.isprintable() and any(unicodedata.category(c) in _CONTROL for c in value):
        raise InvalidInputError(f"{what} {shown(value)} holds control characters")
    return value


def check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise InvalidDataError(
            f"parameters are a mapping of names to JSON values, not {type(parameters).__name__}"
        )
    result = dict(parameters)
    check_json(result, path="parameters")
    return result


def check_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        raise InvalidInputError("tags are a list of strings, not one string")
    given: object = tags  # untyped callers pass anything
    if not isinstance(given, Iterable) or isinstance(given, bytes | Mapping):
        raise InvalidInputError(f"tags are a list of strings, not {shown(tags)}")
    unique = tuple(dict.fromkeys(check_name(tag, "a tag") for tag in tags))
    if len(unique) > _MAX_TAGS:
        raise InvalidInputError(f"a run carries at most {_MAX_TAGS} tags, not {len(unique)}")
    return unique


def check_retries(retries: object) -> int | None:
    if retries is None:
        return None
    if type(retries) is not int or not 0 <= retries <= _MAX_RETRIES:
        raise InvalidInputError(f"retries is a whole number from 0 to {_MAX_RETRIES}, not {shown(retries)}")
    return retries


def _delay(value: object) -> int | float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_DELAY
    ):
        raise InvalidInputError(
            f"a retry delay is a number of seconds from 0 to {_MAX_DELAY}, not {shown(value)}"
        )
    return value


def check_retry_delay(delay: object, *, many: bool) -> RetryDelay | None:
    if delay is None:
        return None
    if isinstance(delay, list | tuple):
        if not many:
            raise InvalidInputError("a flow run's retry delay is one number of seconds")
        if len(delay) > _MAX_DELAYS:
            raise InvalidInputError(f"at most {_MAX_DELAYS} retry delays")
        return tuple(_delay(d) for d in delay)
    return _delay(delay)


def check_state(state: object) -> State:
    if not isinstance(state, State):
        raise InvalidInputError(f"a proposed state is a flowtrail State, not {type(state).__name__}")
    if state.name is not None:
        # Control characters are kept: the CLI shows them escaped, as it shows a log's.
        # Not NUL: a text column cannot hold it on PostgreSQL, and the same proposal
        # must be refused (or taken) alike on both backends.
        check_name(state.name, "a state's name", control_characters=True)
        if "\x00" in state.name:
            raise InvalidStateError(f"a state's name {shown(state.name)} holds a NUL character")
    return check_types(state)


def found(view: RunView | None, run_id: object) -> RunView:
    """The view a lookup found, or RunNotFoundError naming the id asked for."""
    if view is None:
        raise RunNotFoundError(run_id)
    return view
