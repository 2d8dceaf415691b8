"""Crash-safe files: atomic writes, checksums, loaders that refuse pickled code, and
:class:`Store`, the one way a search reaches its storage (local, shared filesystem or bucket).

A search runs for hours; a file half-written when the process dies must never be read back as if
it were whole. Every local write goes to a temporary file in the same directory and is renamed
into place (atomic on POSIX), an object store replaces objects whole, and weights are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

# Read once: os.umask can only be queried by setting it, which is not thread-safe.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line user-facing error quotes of a library's multi-line one."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


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


def state_bytes(state: Any) -> bytes:
    """``state`` (tensors and plain containers of them) serialised by ``torch.save``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def state_from_bytes(data: bytes, where: str, sha256: str | None = None) -> Any:
    """Load bytes written by :func:`state_bytes`, safely; ``where`` names them in errors.

    With ``sha256`` the bytes must match it. Only tensors and plain containers are accepted
    (``weights_only=True``): a checkpoint carrying pickled code is refused, not executed.
    """
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise CorruptFileError(f"{where} fails its checksum (truncated or modified)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CorruptFileError(
            f"{where} cannot be loaded safely: it holds pickled objects beyond tensors, which "
            f"weights-only loading refuses ({first_line(err)})"
        ) from None
    except Exception as err:  # RuntimeError (not a zip archive), EOFError, ...
        raise CorruptFileError(
            f"{where} cannot be loaded safely: damaged or not a torch file ({first_line(err)})"
        ) from None


def save_state(path: str | os.PathLike, state: Any) -> str:
    """Atomically save tensors (and plain containers of them); return the file's SHA-256."""
    data = state_bytes(state)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_state(path: str | os.PathLike, sha256: str | None = None) -> Any:
    """Load a file written by :func:`save_state`, safely (see :func:`state_from_bytes`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing") from None
    return state_from_bytes(data, str(path), sha256)


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` names storage by URI (``s3://``, ``gs://``, ...) rather than a path."""
    return "://" in str(location)


def read_location(location: str | os.PathLike) -> bytes:
    """The bytes of one file named by a path (``~`` expanded here) or a storage URI."""
    if not is_uri(location):
        path = Path(location).expanduser()
        return Store(path.parent).read_bytes(path.name)
    parent, _, name = str(location).rpartition("/")
    return Store(parent).read_bytes(name)


class Store:
    """A directory in any storage Ray Tune accepts for ``storage_path``: a local or shared
    filesystem path, ``s3://``, ``gs://``, ``abfs://``, ... (through ``pyarrow.fs``, Ray's own).

    Every file a search writes and reads outside Tune's own goes through one of these, so the
    search, its report and its re-evaluation work the same on a laptop disk, an NFS mount and
    a bucket. Paths inside the store are relative, ``/``-separated. Writes are atomic: a local
    file is written beside its destination and renamed into place, an object store's PUT
    replaces an object whole. A ``~`` is expanded by the process that opens the store, i.e. on
    the node that uses it.
    """

    def __init__(self, location: str | os.PathLike) -> None:
        import pyarrow.fs as pafs  # Ray's storage layer; imported only where storage is used

        text = str(location)
        if not is_uri(text):
            text = str(Path(text).expanduser().resolve())
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as err:  # pyarrow: ArrowInvalid for an unknown scheme
            raise ValueError(f"storage location '{location}' is not usable: {err}") from None
        self.location = text.rstrip("/")
        self.root = self.root.rstrip("/")

    @classmethod
    def of(cls, where: Store | str | os.PathLike) -> Store:
        """``where`` itself if it is a store, else a store opened on it."""
        return where if isinstance(where, Store) else cls(where)

    @property
    def is_local(self) -> bool:
        """Whether the store is a directory of this machine's filesystem (maybe a shared one)."""
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, rel: str) -> Store:
        """The store of the sub-directory ``rel``."""
        sub = object.__new__(Store)
        sub.fs, sub.root = self.fs, self._path(rel)
        sub.location = f"{self.location}/{rel.strip('/')}"
        return sub

    def uri(self, rel: str = "") -> str:
        """Where ``rel`` is, as a user would type it (a path or a URI)."""
        return f"{self.location}/{rel.strip('/')}" if rel else self.location

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel.strip('/')}" if rel else self.root

    def _type(self, rel: str) -> Any:
        return self.fs.get_file_info(self._path(rel)).type

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self._type(rel) == pafs.FileType.File

    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        return self._type(rel) != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of ``rel``; FileNotFoundError (naming it) when it is absent."""
        if not self.is_file(rel):
            raise FileNotFoundError(f"{self.uri(rel)} does not exist")
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data`` atomically (readers see the old or the whole new file)."""
        if self.is_local:
            atomic_write_bytes(self._path(rel), data)  # fsync + rename, see there
            return
        with self.fs.open_output_stream(self._path(rel)) as f:
            f.write(data)

    def read_json(self, rel: str) -> Any:
        """JSON from ``rel``; a truncated or garbled file is a :class:`CorruptFileError`."""
        try:
            return json.loads(self.read_bytes(rel))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(f"{self.uri(rel)} is not valid JSON ({err})") from None

    def write_json(self, rel: str, obj: Any) -> None:
        """Atomically write ``obj`` as indented JSON."""
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def save_state(self, rel: str, state: Any) -> str:
        """Write tensors (see :func:`state_bytes`) to ``rel``; return their SHA-256."""
        data = state_bytes(state)
        self.write_bytes(rel, data)
        return sha256_bytes(data)

    def load_state(self, rel: str, sha256: str | None = None) -> Any:
        """Tensors from ``rel``, checked against ``sha256`` and loaded weights-only."""
        try:
            data = self.read_bytes(rel)
        except FileNotFoundError:
            raise CorruptFileError(f"{self.uri(rel)} is missing") from None
        return state_from_bytes(data, self.uri(rel), sha256)

    def files(self, rel: str = "", name: str | None = None) -> list[str]:
        """Every file under ``rel`` (recursively), relative to the store, sorted; with ``name``
        only the files of that name."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._path(rel), allow_not_found=True, recursive=True)
        prefix = self.root.lstrip("/") + "/" if self.root.strip("/") else ""
        found = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or (name and info.base_name != name):
                continue
            path = info.path.lstrip("/")
            found.append(path[len(prefix) :] if path.startswith(prefix) else path)
        return sorted(found)

    def delete(self, rel: str) -> None:
        """Remove the file ``rel`` if it exists."""
        if self.is_file(rel):
            self.fs.delete_file(self._path(rel))
