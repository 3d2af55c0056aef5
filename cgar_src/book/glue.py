"""Gluing many values into the book's text at once (myst-nb's ``glue``), so a chapter's results section is one call.

Book: every chapter whose text cites numbers (``{glue:text}`name```). The values are glued silently
(``display=False``); a float is rounded to ``digits`` decimals, as the text shows it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["glue_many"]


def glue_many(values: Mapping[str, Any], *, prefix: str = "", digits: int | None = None) -> dict[str, Any]:
    """Glue every ``name: value`` of ``values`` under ``prefix + name`` without displaying it.

    ``digits`` rounds floats (not ints or bools) before gluing. Returns the glued mapping (names with the prefix),
    so a chapter can also save it with its results. A name that is not a non-empty string raises ValueError."""
    from myst_nb import glue  # the book's tooling; imported only when a chapter glues

    if not isinstance(values, Mapping):
        raise ValueError(f"values must be a mapping of names to values, got {type(values).__name__}")
    if digits is not None and (isinstance(digits, bool) or not isinstance(digits, int) or digits < 0):
        raise ValueError(f"digits must be an integer >= 0 or None, got {digits!r}")
    glued = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"every name must be a non-empty string, got {name!r}")
        if digits is not None and isinstance(value, float):
            value = round(value, digits)
        glue(prefix + name, value, display=False)
        glued[prefix + name] = value
    return glued
