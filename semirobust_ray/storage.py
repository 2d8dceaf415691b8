"""Crash-safe files: atomic writes, checksums, and loaders that refuse pickled code.

A search runs for hours; a file half-written when the process dies must never be read back as if
it were whole. Every write goes to a temporary file in the same directory and is renamed into
place (atomic on POSIX), and weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# Read once: os.umask can only be queried by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CorruptFileError(RuntimeError):
    """A stored file is truncated, fails its checksum, or holds something other than weights."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would, so
        # collaborators and a TensorBoard or web server under another account can read results.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a truncated or garbled file into :class:`CorruptFileError`."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err})") from None


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def save_state(path: str | os.PathLike, state: Any) -> str:
    """Atomically save tensors (and plain containers of them); return the file's SHA-256."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_state(path: str | os.PathLike, sha256: str | None = None) -> Any:
    """Load a file written by :func:`save_state`, safely.

    With ``sha256`` the bytes must match it. Only tensors and plain containers are accepted
    (``weights_only=True``): a checkpoint carrying pickled code is refused, not executed.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise CorruptFileError(f"{path} fails its checksum (truncated or modified)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptFileError(f"{path} cannot be loaded safely: {first}") from None
