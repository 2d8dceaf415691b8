"""``package.module:attr`` references to a user's own code (a model factory, an attack class),
imported with the same one-line errors wherever they are named."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

from semirobust_ray.storage import first_line


def import_spec(spec: str, kind: str, used_by: str, error: type[Exception], guide: str) -> object:
    """The object ``spec`` (``package.module:attr``, ``attr`` may be dotted) names.

    A module that fails to import, or lacks the attribute, is one line of ``error`` naming the
    ``kind`` (``model``, ``attack``), the spec, why, and the ``guide`` to read; ``used_by`` says
    which processes must be able to import it ("builds the model", "runs the attack").
    """
    module_name, _, attr = spec.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or whatever the module raises on import
        raise error(
            f"{kind} '{spec}': cannot import module '{module_name}' ({type(err).__name__}: "
            f"{first_line(err)}); it must be importable in every process that {used_by} "
            f"({guide})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{kind} '{spec}': module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def module_fingerprint(spec: str) -> str | None:
    """A hash of the source file of the module ``spec`` names, for a cache key (editing the
    code makes the key change); None for a namespace or built-in module, with no file."""
    module = importlib.import_module(spec.partition(":")[0])
    source = getattr(module, "__file__", None)
    if source is None:
        return None
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
