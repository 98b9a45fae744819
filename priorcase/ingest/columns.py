"""Column names from CSVs: validated before anything is stored; identifier columns dropped."""

from __future__ import annotations

import re
from collections.abc import Iterable

from priorcase.errors import LabelsError
from priorcase.index.store import field_name

# A labels CSV with more columns than this is refused: every column becomes a table field,
# and queries and `info` slow down with each one (10,000 columns made `info` run for minutes).
MAX_COLUMNS = 256

# Columns that identify a person are never stored. A name matches when one of its words
# (split at non-letters and camelCase) or all its words run together is listed here.
IDENTIFIER_WORDS = frozenset(
    {
        "name", "names", "surname", "firstname", "lastname", "givenname", "fullname",
        "patientname", "birth", "birthdate", "dateofbirth", "birthday", "dob",
        "mrn", "medicalrecordnumber", "recordnumber", "accession", "accessionnumber",
        "ssn", "socialsecuritynumber", "nhs", "nhsnumber", "insurance", "phone",
        "telephone", "email", "address", "street", "postcode", "zipcode", "initials",
    }
)  # fmt: skip

_FORBIDDEN = re.compile(r"[.`\"'\[\]\x00-\x1f\x7f]")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def is_identifier(name: str, extra: Iterable[str] = ()) -> bool:
    """True when ``name`` is a listed identifier column or one of ``extra`` (any case)."""
    if name.casefold() in {e.strip().casefold() for e in extra}:
        return True
    words = [w.casefold() for w in _WORD_SPLIT.split(name) if w]
    if not words:
        return False
    return "".join(words) in IDENTIFIER_WORDS or any(w in IDENTIFIER_WORDS for w in words)


def check_names(names: list[str], source: object, reserved: Iterable[str] = ()) -> None:
    """Raise :class:`LabelsError` for a name that cannot be a table field.

    Refused: empty names, dots, quotes and control characters (LanceDB reads ``a.b`` as a
    nested field), names starting with ``_`` (LanceDB's own ``_rowid``, ``_distance``),
    names equal after case folding or after the ``label_`` prefix that fixed names get,
    and more than :data:`MAX_COLUMNS` columns.
    """
    if len(names) > MAX_COLUMNS:
        raise LabelsError(
            f"{source}: {len(names)} columns; at most {MAX_COLUMNS} label columns are supported"
        )
    seen: dict[str, str] = {}
    for name in reserved:
        seen[field_name(name).casefold()] = name
    for name in names:
        if not name:
            raise LabelsError(
                f"{source}: a column has an empty name (trailing comma in the header?)"
            )
        if _FORBIDDEN.search(name):
            raise LabelsError(
                f"{source}: column {name!r}: dots, quotes, brackets and control characters "
                "are not allowed in column names"
            )
        if name.startswith("_"):
            raise LabelsError(f"{source}: column {name!r}: names starting with '_' are reserved")
        folded = field_name(name).casefold()
        if folded in seen:
            other = seen[folded]
            raise LabelsError(
                f"{source}: columns {other!r} and {name!r} would both be stored as "
                f"{field_name(name)!r}; rename one"
            )
        seen[folded] = name
