"""Where a library lives: a local folder or an object-storage prefix (``s3://``, ``gs://``,
``az://``), and the few file operations the files kept beside the table need.

LanceDB opens the table itself (:meth:`LibraryLocation.connect`, with ``storage_options``);
the manifest, saved heads, aligners, index caches and evaluated figures go through
:class:`LibraryFile`. A remote library keeps a local copy of each derived file in a cache
folder (names carry content digests, so a cached copy is never stale). Credentials are read
from the standard AWS variables at use and are never part of a repr, message or file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from priorcase.errors import StorageError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")
CACHE_ENV = "PRIORCASE_CACHE_DIR"
# storage_options keys LanceDB (object_store) takes, from the standard AWS variables
_AWS_OPTIONS = (
    ("AWS_ENDPOINT_URL", "aws_endpoint"),
    ("AWS_REGION", "aws_region"),
    ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    ("AWS_SESSION_TOKEN", "aws_session_token"),
    ("AWS_ALLOW_HTTP", "allow_http"),
)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class LibraryLocation:
    """A library's folder or object-storage prefix; ``str()`` is the location as given."""

    uri: str
    cache: Path | None = None  # local copies of a remote library's derived files

    @classmethod
    def parse(cls, where: str | Path | LibraryLocation) -> LibraryLocation:
        if isinstance(where, LibraryLocation):
            return where
        text = str(where)
        if _scheme(text) in REMOTE_SCHEMES:
            return cls(text.rstrip("/"))
        return cls(str(Path(text)))

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"LibraryLocation({self.uri!r})"

    @property
    def is_remote(self) -> bool:
        return _scheme(self.uri) in REMOTE_SCHEMES

    @property
    def path(self) -> Path:
        """The folder of a local library."""
        if self.is_remote:
            raise ValueError(f"{self.uri} is on object storage, not a local folder")
        return Path(self.uri)

    @property
    def cache_dir(self) -> Path:
        """Local copies of derived files: the folder itself for a local library, else
        ``$PRIORCASE_CACHE_DIR`` (default ``~/.cache/priorcase``) / a digest of the URI."""
        if not self.is_remote:
            return self.path
        if self.cache is not None:
            return self.cache
        root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "priorcase")
        return Path(root).expanduser() / uri_digest(self.uri)

    def child(self, name: str) -> LibraryLocation:
        """The sub-folder ``name`` (its cached copies under this location's cache)."""
        if not self.is_remote:
            return LibraryLocation(str(self.path / name))
        return LibraryLocation(f"{self.uri}/{name}", self.cache_dir / name)

    def file(self, *parts: str) -> LibraryFile:
        return LibraryFile(self, "/".join(parts))

    def prepare(self) -> None:
        """Create a local folder (object storage has no folders to create)."""
        if not self.is_remote:
            self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ LanceDB
    def storage_options(self) -> dict[str, str]:
        """LanceDB's ``storage_options`` from the standard AWS variables (S3 only; GCS and
        Azure read their own variables). Built at each use, never stored."""
        if _scheme(self.uri) != "s3":
            return {}
        options = {key: os.environ[env] for env, key in _AWS_OPTIONS if os.environ.get(env)}
        if "aws_region" not in options and os.environ.get("AWS_DEFAULT_REGION"):
            options["aws_region"] = os.environ["AWS_DEFAULT_REGION"]
        return options

    def connect(self):
        """The LanceDB connection; a remote one that fails is one StorageError line."""
        import lancedb

        if not self.is_remote:
            return lancedb.connect(str(self.path))
        try:
            return lancedb.connect(self.uri, storage_options=self.storage_options())
        except (ValueError, OSError, RuntimeError) as err:
            raise StorageError(f"{self.uri}: cannot open: {short_reason(err)}") from err

    # ------------------------------------------------------------------ object storage
    def filesystem(self):
        """(pyarrow filesystem, base path inside it) of a remote location."""
        from pyarrow import fs

        if _scheme(self.uri) != "s3":
            return fs.FileSystem.from_uri(self.uri)
        options = self.storage_options()
        kwargs: dict = {"region": options.get("aws_region", "us-east-1")}
        if "aws_access_key_id" in options:
            kwargs["access_key"] = options["aws_access_key_id"]
            kwargs["secret_key"] = options.get("aws_secret_access_key", "")
            kwargs["session_token"] = options.get("aws_session_token")
        endpoint = options.get("aws_endpoint")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs["endpoint_override"] = host.rstrip("/") if host else scheme
            kwargs["scheme"] = scheme if host else "https"
            if kwargs["scheme"] == "http" and options.get("allow_http", "").lower() != "true":
                raise StorageError(
                    f"{self.uri}: the endpoint {endpoint} is plain http; set AWS_ALLOW_HTTP=true "
                    "to allow it"
                )
        return fs.S3FileSystem(**kwargs), self.uri.split("://", 1)[1]

    def remove(self, folders: tuple[str, ...], patterns: tuple[str, ...]) -> None:
        """Delete whole sub-folders and top-level files matching glob patterns, here and in
        the local cache (erasure: nothing derived from deleted rows survives)."""
        if self.is_remote:
            fs, base = self.filesystem()
            for name in folders:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_dir(f"{base}/{name}")
            for name in self.file("").listing():
                if any(fnmatch.fnmatch(name, p) for p in patterns):
                    self.file(name).delete()
        root = self.cache_dir
        for name in folders:
            shutil.rmtree(root / name, ignore_errors=True)
        if root.is_dir():
            for pattern in patterns:
                for path in root.glob(pattern):
                    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class LibraryFile:
    """One file beside the table, by its name relative to the library (``a/b.json``).

    ``local`` is the file itself in a local library, else its copy in the cache folder.
    """

    location: LibraryLocation
    rel: str

    @property
    def local(self) -> Path:
        return self.location.cache_dir / self.rel

    @property
    def name(self) -> str:
        return PurePosixPath(self.rel).name

    def _key(self) -> tuple:
        fs, base = self.location.filesystem()
        return fs, f"{base}/{self.rel}".rstrip("/")

    def __str__(self) -> str:
        return f"{self.location}/{self.rel}"

    def read_bytes(self) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        if not self.location.is_remote:
            try:
                return self.local.read_bytes()
            except FileNotFoundError:
                return None
        fs, key = self._key()
        try:
            with fs.open_input_stream(key) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, data: bytes, mode: int | None = None) -> None:
        """Replace the file whole: atomically renamed locally; one PUT on object storage
        (readers see the old object or the new one)."""
        from priorcase.index.artifacts import atomic_write

        if not self.location.is_remote:

            def write(tmp: Path) -> None:
                tmp.write_bytes(data)
                if mode is not None:
                    os.chmod(tmp, mode)

            atomic_write(self.local, write)
            return
        fs, key = self._key()
        with fs.open_output_stream(key) as stream:
            stream.write(data)

    def fetch(self) -> bool:
        """Make ``local`` hold the file; False when it exists nowhere. A remote file is
        downloaded once into the cache (its name is keyed by content, so a copy stays valid)."""
        if self.local.exists() or not self.location.is_remote:
            return self.local.exists()
        data = self.read_bytes()
        if data is None:
            return False
        from priorcase.index.artifacts import atomic_write

        atomic_write(self.local, lambda tmp: tmp.write_bytes(data))
        return True

    def save(self, write: Callable[[Path], None]) -> None:
        """Write ``local`` atomically through ``write(tmp)``, then upload it when remote."""
        from priorcase.index.artifacts import atomic_write

        atomic_write(self.local, write)
        self.upload()

    def upload(self) -> None:
        """Copy ``local`` to object storage (nothing to do for a local library)."""
        if self.location.is_remote:
            self.write_bytes(self.local.read_bytes())

    def delete(self) -> None:
        self.local.unlink(missing_ok=True)
        if self.location.is_remote:
            fs, key = self._key()
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(key)

    def listing(self) -> list[str]:
        """Names of the files in this (folder) name."""
        if not self.location.is_remote:
            folder = self.local
            if not folder.is_dir():
                return []
            return sorted(p.name for p in folder.iterdir() if p.is_file())
        from pyarrow import fs as pafs

        fs, key = self._key()
        infos = fs.get_file_info(pafs.FileSelector(key, allow_not_found=True))
        return sorted(PurePosixPath(i.path).name for i in infos if i.type == pafs.FileType.File)

    def siblings(self) -> Iterator[LibraryFile]:
        """The other files in this file's folder."""
        folder = str(PurePosixPath(self.rel).parent)
        folder = "" if folder == "." else folder
        for name in LibraryFile(self.location, folder).listing():
            if name != self.name:
                yield LibraryFile(self.location, f"{folder}/{name}" if folder else name)


def uri_digest(uri: str) -> str:
    """A short digest naming per-library local folders (cache, default key file)."""
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def redact(text: str) -> str:
    """``text`` with every credential value from the environment replaced by ``***``."""
    for env in ("AWS_ACCESS_KEY_ID", *SECRET_ENV):
        value = os.environ.get(env)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def short_reason(err: BaseException) -> str:
    """One line for an object-storage failure: the S3 error code and message when the
    server sent one, else the error's first line (credentials redacted, at most 200 chars)."""
    text = str(err)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    if code:
        message = re.search(r"<Message>([^<]+)</Message>", text)
        return f"{code.group(1)}: {message.group(1)}" if message else code.group(1)
    lines = text.strip().splitlines()
    return redact(lines[0][:200] if lines else type(err).__name__)


def _scheme(text: str) -> str:
    return text.split("://", 1)[0].lower() if "://" in text else ""
