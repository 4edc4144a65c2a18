"""What may be recorded as data: JSON, checked when a value is built.

msgspec would encode a NaN as ``null`` and a tuple as an array, so a value could change
on its way through the log without anyone noticing. Checking up front keeps the rule
simple: what is recorded is exactly what decodes again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flowtrail.core.errors import InvalidDataError

__all__ = ["JSONValue", "check_json", "describe_type"]

#: A JSON value: None, bool, int, finite float, str, list of JSON values, or a dict
#: with string keys and JSON values. Spelled ``object`` because the type system (and
#: msgspec) cannot spell the recursion; `check_json` is the real definition.
JSONValue = object

_MAX_DEPTH = 64


def describe_type(value: object) -> str:
    """The dotted name of a value's type, as recorded for unpersisted results."""
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def check_json(value: object, *, path: str = "data") -> None:
    """Raise `InvalidDataError` unless `value` is JSON that decodes back to itself."""
    _check(value, path, 0)


#: The whole numbers stored: those of a signed or unsigned 64-bit integer (msgspec's range).
_SMALLEST_INT = -(2**63)
_LARGEST_INT = 2**64 - 1


def _check(value: object, path: str, depth: int) -> None:
    # Ordered by how common each kind is in run data; bool is an int, so it passes early.
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if not value.isascii():
            _check_text(value, path)
        return
    if isinstance(value, int):
        if not _SMALLEST_INT <= value <= _LARGEST_INT:
            raise InvalidDataError(f"{path} is {value}: JSON numbers here are 64-bit integers", path=path)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidDataError(f"{path} is {value!r}: JSON has no non-finite numbers", path=path)
        return
    if depth >= _MAX_DEPTH:
        raise InvalidDataError(f"{path} nests deeper than {_MAX_DEPTH} levels", path=path)
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidDataError(
                    f"{path} has a key of type {describe_type(key)}; JSON keys are strings", path=path
                )
            if not key.isascii():
                _check_text(key, f"a key of {path}")
            _check(item, f"{path}[{key!r}]", depth + 1)
        return
    hint = " (use a list)" if isinstance(value, tuple | set | frozenset) else ""
    hint = " (use a dict with string keys)" if isinstance(value, Mapping) else hint
    raise InvalidDataError(f"{path} is a {describe_type(value)}, which is not JSON{hint}", path=path)


def _check_text(text: str, path: str) -> None:
    # A lone surrogate (a file name os.listdir could not decode, say) has no UTF-8 form.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidDataError(
            f"{path} holds {text[exc.start : exc.end]!r}, which is not text JSON can hold (a lone surrogate)",
            path=path,
        ) from None
