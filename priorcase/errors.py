"""Exceptions that carry a one-line, user-facing message."""

from __future__ import annotations

from pathlib import Path


class PriorcaseError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class ImageReadError(PriorcaseError):
    """A file could not be read as an image; names the file and the problem."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class EncoderSpecError(PriorcaseError):
    """An encoder spec string could not be resolved to a model."""


class EncoderMismatchError(PriorcaseError):
    """An index built with one encoder was used with another."""


class QueryError(PriorcaseError):
    """A search or filter request is invalid (bad SQL predicate, unknown id...)."""


class LabelsError(PriorcaseError):
    """A labels or findings CSV is malformed."""


class SaltMismatchError(PriorcaseError):
    """The pseudonym salt differs from the one the library was built with."""


class StorageError(PriorcaseError):
    """The library could not be written (disk full, read-only, file size limit...)."""
