"""Values quoted in error messages."""

from __future__ import annotations

__all__ = ["shown"]


def shown(value: object) -> str:
    """``value``'s repr, cut short if long: a name of a megabyte is not repeated whole."""
    text = repr(value)
    if len(text) <= 80:
        return text
    return f"{text[:60]}... ({len(value) if isinstance(value, str) else len(text)} characters)"
