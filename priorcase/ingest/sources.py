"""Source images on object storage (``s3://``, ``gs://``, ``az://``): list a prefix, hash and
read one object's bytes in memory.

Objects go through the library location's pyarrow filesystem
(:meth:`priorcase.index.location.LibraryLocation.filesystem`), so the same standard AWS
variables that open ``--db s3://`` open sources; nothing is staged on local disk (object keys,
like local folder names, can carry patient names). An :class:`ObjectFile` holds only its URI,
so it pickles to Ray workers, which build the filesystem from their own environment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from priorcase.errors import ImageReadError, StorageError
from priorcase.index.location import REMOTE_SCHEMES, LibraryLocation, redact, short_reason

# Objects are read whole into memory: refuse one far larger than any single-frame film.
MAX_OBJECT_BYTES = 1 << 30
_CHUNK = 8 << 20  # one ranged GET per chunk while hashing


def is_object_uri(source: str | Path) -> bool:
    """Whether ``source`` names object storage (``scheme://bucket/key``), not a local path."""
    text = source if isinstance(source, str) else ""
    return "://" in text and text.split("://", 1)[0].lower() in REMOTE_SCHEMES


def as_source(source: str | Path) -> str | Path:
    """A source as ingest takes it: an object URI unchanged, anything else a local path."""
    return source if is_object_uri(source) else Path(source)


@dataclass(frozen=True)
class ObjectFile:
    """One object, named by its URI; path-like enough for ids, labels and error lines
    (``name``, ``suffix``, ``stem``; ``str()`` is the URI without credentials)."""

    uri: str

    @property
    def _key(self) -> PurePosixPath:
        return PurePosixPath(self.uri.split("://", 1)[1])

    @property
    def name(self) -> str:
        return self._key.name

    @property
    def suffix(self) -> str:
        return self._key.suffix

    @property
    def stem(self) -> str:
        return self._key.stem

    def resolve(self) -> ObjectFile:
        """Itself: a URI is already absolute (as ``Path.resolve`` for local files)."""
        return self

    def __str__(self) -> str:
        return display(self.uri)

    def _open(self):
        try:
            fs, path = LibraryLocation(self.uri).filesystem()
            return fs, path, fs.get_file_info(path)
        except StorageError as err:
            raise ImageReadError(self, str(err).split(": ", 1)[-1]) from None
        except (OSError, ValueError) as err:
            raise ImageReadError(self, f"cannot read object: {short_reason(err)}") from None

    def _stream(self, size_check: bool = True):
        from pyarrow import fs as pafs

        fs, path, info = self._open()
        if info.type == pafs.FileType.NotFound:
            raise ImageReadError(self, "object not found")
        if info.type != pafs.FileType.File:
            raise ImageReadError(self, "is a prefix (folder), not an object")
        if size_check and info.size > MAX_OBJECT_BYTES:
            raise ImageReadError(
                self, f"object too large ({info.size} bytes, limit {MAX_OBJECT_BYTES}); not read"
            )
        return fs.open_input_stream(path)

    def read_bytes(self) -> bytes:
        """The object's bytes; any failure is an :class:`ImageReadError` naming it."""
        try:
            with self._stream() as stream:
                return stream.read()
        except ImageReadError:
            raise
        except OSError as err:
            raise ImageReadError(self, f"cannot read object: {short_reason(err)}") from None

    def sha256(self) -> str:
        """Hex SHA-256 of the object's bytes, streamed in 8 MiB chunks (the dedup key)."""
        digest = hashlib.sha256()
        try:
            with self._stream(size_check=False) as stream:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
        except ImageReadError:
            raise
        except OSError as err:
            raise ImageReadError(self, f"cannot read object: {short_reason(err)}") from None
        return digest.hexdigest()

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes (empty when the object cannot be read)."""
        try:
            with self._stream(size_check=False) as stream:
                return stream.read(size)
        except (ImageReadError, OSError):
            return b""


def list_objects(uri: str) -> list[tuple[tuple[str, ...], ObjectFile]] | None:
    """Every object under the prefix ``uri`` with its key parts relative to it, sorted;
    None when ``uri`` names one object (or nothing: it is then reported when read).
    A prefix that cannot be listed, or that ends in ``/`` and has no object under it, is an
    :class:`ImageReadError` naming it."""
    from pyarrow import fs as pafs

    prefix, uri = uri.endswith("/"), uri.rstrip("/")
    try:
        fs, base = LibraryLocation(uri).filesystem()
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound and prefix:
            raise ImageReadError(display(uri), "no such prefix: no object under it")
        if info.type != pafs.FileType.Directory:
            return None
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except StorageError as err:
        raise ImageReadError(display(uri), str(err).split(": ", 1)[-1]) from None
    except (OSError, ValueError) as err:
        raise ImageReadError(display(uri), f"cannot list: {short_reason(err)}") from None
    scheme = uri.split("://", 1)[0]
    base = base.rstrip("/")
    found = []
    for entry in infos:
        if entry.type != pafs.FileType.File:
            continue
        rel = tuple(PurePosixPath(entry.path[len(base) + 1 :]).parts)
        found.append((rel, ObjectFile(f"{scheme}://{entry.path}")))
    return sorted(found, key=lambda pair: pair[0])


def display(uri: str) -> str:
    """A URI for messages: no ``user:secret@`` part and no credential from the environment."""
    scheme, _, rest = uri.partition("://")
    bucket, slash, key = rest.partition("/")
    return redact(f"{scheme}://{bucket.rsplit('@', 1)[-1]}{slash}{key}")
