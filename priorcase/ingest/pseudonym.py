"""Salted, keyed pseudonyms for patient identifiers."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from priorcase.errors import SaltMismatchError, StorageError
from priorcase.index.location import LibraryLocation, uri_digest

SALT_ENV = "PRIORCASE_SALT"
KEY_FILE_ENV = "PRIORCASE_KEY_FILE"
SALT_FILE = "salt.key"
FINGERPRINT_TEXT = b"priorcase salt fingerprint v1"


class Pseudonymizer:
    """Map a patient identifier to a stable pseudonym ``anon-<16 hex>``.

    The pseudonym is HMAC-SHA256 keyed with a *secret* salt. Patient IDs come from a small,
    guessable space (hospital number formats), so an unsalted or public-salt hash could be
    reversed by hashing a list of candidate IDs; keeping the salt secret prevents that while
    still giving the same pseudonym for the same patient within one index.
    """

    def __init__(self, salt: bytes) -> None:
        if not salt:
            raise ValueError("pseudonym salt must not be empty")
        self._salt = bytes(salt)

    def __call__(self, value: str | None) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        if not text:
            return None
        digest = hmac.new(self._salt, text.encode("utf-8"), hashlib.sha256).hexdigest()
        return "anon-" + digest[:16]

    def __repr__(self) -> str:  # never reveal the salt in logs
        return "Pseudonymizer(<secret salt>)"

    def fingerprint(self) -> str:
        """A public check value of the salt (HMAC of a fixed text): two libraries or runs
        with the same fingerprint use the same salt; the salt cannot be recovered from it."""
        return hmac.new(self._salt, FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def for_index(cls, db_dir: Path | LibraryLocation) -> Pseudonymizer:
        """The library's salt: ``$PRIORCASE_SALT``, else the key file ``$PRIORCASE_KEY_FILE``,
        else ``db_dir/salt.key`` (a library on object storage: a local file, see
        :func:`key_file`); a missing key file is created with a random secret, except for a
        remote library that already has a salt (its key must be brought, not made up).

        ``$PRIORCASE_SALT`` and an existing key file that disagree are refused, as is any salt
        whose fingerprint differs from the one in the library's manifest (checked by ingest),
        because one patient would then get two pseudonyms.
        """
        env = os.environ.get(SALT_ENV)
        key_path = key_file(db_dir)
        if env:
            salt = env.encode("utf-8")
            if key_path.is_file():
                stored = key_path.read_bytes()
                if stored and not hmac.compare_digest(stored, salt):
                    raise SaltMismatchError(
                        f"${SALT_ENV} differs from the salt in {key_path}: one patient would "
                        f"get two pseudonyms; unset ${SALT_ENV} or point ${KEY_FILE_ENV} elsewhere"
                    )
            return cls(salt)
        location = LibraryLocation.parse(db_dir)
        if location.is_remote and not key_path.is_file():
            from priorcase.index.manifest import Manifest

            manifest = Manifest.load(location)
            if manifest is not None and manifest.salt_fingerprint is not None:
                raise SaltMismatchError(
                    f"no salt key for {location} at {key_path}: the key is never kept on object "
                    f"storage; copy the library's key there, or set ${KEY_FILE_ENV} or ${SALT_ENV}"
                )
        return cls(_read_or_create(key_path))


def key_file(db_dir: Path | LibraryLocation) -> Path:
    """Where the salt lives: ``$PRIORCASE_KEY_FILE``, else ``db_dir/salt.key``; for a library
    on object storage never beside it, but in ``$XDG_CONFIG_HOME/priorcase/keys/<digest of
    the URI>.key`` (default ``~/.config``), a local file each deployment supplies."""
    env = os.environ.get(KEY_FILE_ENV)
    if env:
        return Path(env).expanduser()
    location = LibraryLocation.parse(db_dir)
    if location.is_remote:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.join("~", ".config")
        return Path(config).expanduser() / "priorcase" / "keys" / f"{uri_digest(str(location))}.key"
    return location.path / SALT_FILE


def _read_or_create(key_path: Path) -> bytes:
    """The key file's bytes, creating it atomically when absent.

    The new salt is written and synced to a private temporary file, then hard-linked to the
    key path: the link either appears with the full key or fails because another process
    won, so no reader ever sees an empty or partial key.
    """
    for _ in range(2):
        try:
            salt = key_path.read_bytes()
        except FileNotFoundError:
            pass
        else:
            if not salt:
                raise SaltMismatchError(f"{key_path} is empty; delete it to generate a new salt")
            return salt
        tmp = None
        try:
            key_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=key_path.parent, prefix=".salt-", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, key_path)
            except FileExistsError:
                continue  # another process created it first: read theirs
        except OSError as err:
            reason = err.strerror or err
            raise StorageError(f"{key_path}: cannot create the salt key: {reason}") from err
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
    return key_path.read_bytes()
