"""The closest valid name for a misspelt one, worded the same in every one-line error."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

#: Config keys renamed since searches were first stored: old name -> current name. The old
#: name is still accepted (``config.current_names``) and read back from stored searches.
RENAMED_KEYS = {"seeds": "trials_per_depth"}


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


def current_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config dict (``search_meta.json``, ``results.json``) with every renamed key
    under its current name, so that readers of searches stored by earlier versions look up one
    name; where a dict holds both, the current name's value is kept."""
    out = dict(config)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out
