"""Plain words for label codes: a ``vocabulary.json`` (column -> code -> words) that lives with
the collection, beside its labels CSV, and is copied into the library at ingest.

MIAS ships one in the package (``priorcase/datasets/mias_vocabulary.json``), recorded by
``priorcase demo``. Unknown codes are shown as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from priorcase.index.location import LibraryLocation

VOCABULARY_FILE = "vocabulary.json"
MIAS_VOCABULARY = Path(__file__).resolve().parents[1] / "datasets" / "mias_vocabulary.json"

Vocabulary = dict[str, dict[str, str]]


def read_vocabulary(path: str | Path) -> Vocabulary:
    """A vocabulary file: a JSON object of column -> {code: words}; anything else is refused."""
    return _parse(json.loads(Path(path).read_text()), path)


def _parse(data: object, path: object) -> Vocabulary:
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and all(isinstance(w, str) for w in v.values()) for v in data.values()
    ):
        raise ValueError(f"{path}: a vocabulary maps column -> code -> words")
    return {str(c): {str(k): w for k, w in v.items()} for c, v in data.items()}


def record_vocabulary(db_dir: str | Path | LibraryLocation, source: str | Path | None) -> bool:
    """Copy the vocabulary ``source`` (or the one beside a labels CSV) into the library."""
    if source is None:
        return False
    source = Path(source)
    if source.suffix.lower() == ".csv":
        source = source.with_name(VOCABULARY_FILE)
    if not source.is_file():
        return False
    text = json.dumps(read_vocabulary(source), indent=1, sort_keys=True)
    LibraryLocation.parse(db_dir).file(VOCABULARY_FILE).write_bytes(text.encode())
    return True


def load_vocabulary(db_dir: str | Path | LibraryLocation) -> Vocabulary:
    """The library's vocabulary ({} when it has none, or an unreadable one)."""
    file = LibraryLocation.parse(db_dir).file(VOCABULARY_FILE)
    try:
        data = file.read_bytes()  # not cached: the file keeps its name when re-recorded
        return _parse(json.loads(data), file) if data is not None else {}
    except (OSError, ValueError):
        return {}


def expand(vocabulary: Vocabulary, column: str, value: str | None) -> str:
    """``D`` -> ``dense-glandular (D)``; a value without an entry is returned as it is."""
    if value in (None, ""):
        return ""
    words = vocabulary.get(column, {}).get(str(value))
    return f"{words} ({value})" if words and words.lower() != str(value).lower() else str(value)
