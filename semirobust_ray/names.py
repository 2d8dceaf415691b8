"""The closest valid name for a misspelt one, worded the same in every one-line error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(
    value: object, valid: Iterable[str], *, prefix: str = "", cutoff: float = 0.6
) -> str:
    """``" (did you mean 'X'?)"`` with X the closest of ``valid`` to ``value`` (``prefix``
    put before it, e.g. ``timm:``), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=cutoff)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def unknown_keys(keys: Iterable[object], valid: Iterable[str]) -> str:
    """``'a' (did you mean 'b'?), 'c'``: the unknown ``keys``, each with its closest valid key."""
    valid = list(valid)
    return ", ".join(f"'{key}'{did_you_mean(key, valid)}" for key in keys)
