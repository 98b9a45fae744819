"""Salted, keyed pseudonyms for patient identifiers."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SALT_ENV = "PRIORCASE_SALT"
SALT_FILE = "salt.key"


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

    @classmethod
    def for_index(cls, db_dir: Path) -> Pseudonymizer:
        """Salt from ``$PRIORCASE_SALT`` if set, else a random secret in ``db_dir/salt.key``.

        The key file is created once with mode 0600 and reused, so pseudonyms stay stable
        across ingest runs into the same index.
        """
        env = os.environ.get(SALT_ENV)
        if env:
            return cls(env.encode("utf-8"))
        db_dir = Path(db_dir)
        db_dir.mkdir(parents=True, exist_ok=True)
        key_path = db_dir / SALT_FILE
        try:
            # O_EXCL: two concurrent ingests must not each write a different salt.
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            salt = key_path.read_bytes()
            if not salt:
                raise ValueError(f"{key_path} is empty; delete it to generate a new salt") from None
            return cls(salt)
        salt = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(salt)
        os.chmod(key_path, 0o600)  # umask cannot widen it, but be explicit
        return cls(salt)
