"""Derived files (FAISS indexes, text aligners, classifier heads): keyed by content, written
atomically, validated on load and built once under an in-process and a cross-process lock.

A file's name carries a digest of everything it was built from (the vectors, labels, encoder
weights and parameters), never a table version: LanceDB restarts versions when a table is
recreated at the same path, so a version can name two different tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, TypeVar

import numpy as np
from filelock import FileLock

from priorcase.index.location import LibraryFile, LibraryLocation

T = TypeVar("T")

_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def content_digest(*parts: Any) -> str:
    """SHA-256 of arrays (dtype, shape and bytes), strings, bytes and JSON-like values."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            if part.dtype == object:
                digest.update("\x1f".join(map(str, part.tolist())).encode())
            else:
                arr = np.ascontiguousarray(part)
                digest.update(f"{arr.dtype.str}{arr.shape}".encode())
                digest.update(memoryview(arr).cast("B"))
        elif isinstance(part, bytes):
            digest.update(part)
        else:
            digest.update(repr(part).encode())
        digest.update(b"\x1e")  # separator: ("ab", "c") and ("a", "bc") differ
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock in this process (threads) and across processes (``path.lock``)."""
    key = str(path.resolve())
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    path.parent.mkdir(parents=True, exist_ok=True)
    with thread_lock, FileLock(str(path) + ".lock"):
        yield


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` into a private temp file, fsync, then rename over ``path``.

    Readers see the old file or the whole new one, never a part: a full disk or a crash
    leaves at most a stray temp file (removed here when we can), never a truncated ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_or_build(
    file: Path | LibraryFile,
    load: Callable[[Path], T],
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    notify: Callable[[str], None] = print,
    stale: Callable[[PurePath], bool] | None = None,
) -> T:
    """The artefact at ``file``, built (once, under the lock) when absent or unreadable.

    A file that fails to load (0 bytes, truncated, corrupt) is rebuilt with a one-line
    notice. A build that cannot be written (full disk) is still returned, so the caller's
    request succeeds; the next use tries the write again. ``stale`` picks older files of the
    same artefact (other digests) to delete once the new one is written. A file of a library
    on object storage is loaded from its local cached copy (downloaded once) and uploaded
    when built; the lock then covers this machine only (see docs/DEPLOY.md).
    """
    if isinstance(file, Path):
        file = LibraryLocation.parse(file.parent).file(file.name)
    path = file.local
    with locked(path):
        if file.fetch():
            try:
                return load(path)
            except Exception as err:  # torch/joblib/faiss raise many types for a bad file
                notify(f"{path.name} is unusable ({_first_line(err)}); rebuilding it")
        built = build()
        try:
            file.save(lambda tmp: save(built, tmp))
        except OSError as err:
            notify(f"could not save {path.name} ({_first_line(err)}); it will be rebuilt next time")
            return built
        if stale is not None:
            for old in file.siblings():
                if stale(PurePosixPath(old.name)):
                    old.delete()
        return built


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


class BoundedCache(OrderedDict):
    """A least-recently-used dict of at most ``maxsize`` entries, safe across threads."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.lock = threading.RLock()
        self._making: dict[Any, threading.Lock] = {}

    def get_or_make(self, key: Any, make: Callable[[], T]) -> T:
        """The cached value for ``key``, made once on a miss; callers of that key wait for it,
        callers of other keys do not (a long fit in one thread blocks no cached answer)."""
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self.lock:
                if key in self:
                    self.move_to_end(key)
                    return self[key]
            value = make()
            with self.lock:
                self[key] = value
                self._making.pop(key, None)
                while len(self) > self.maxsize:
                    self.popitem(last=False)
            return value
