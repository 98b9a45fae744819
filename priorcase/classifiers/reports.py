"""Short radiology-style report sentences built from a case's label fields.

The sentences are the text side of (image, report) pairs for ``ContrastiveAligner`` and
the vocabulary behind class prompts, so one vocabulary serves both.
"""

from __future__ import annotations

from collections.abc import Mapping

# Column name -> code -> phrase. Codes are matched case-insensitively.
MIAS_VOCABULARY: dict[str, dict[str, str]] = {
    "tissue": {
        "F": "fatty breast",
        "G": "fatty-glandular breast",
        "D": "dense glandular breast",
    },
    "abnormality": {
        "CALC": "calcification",
        "CIRC": "circumscribed mass",
        "SPIC": "spiculated mass",
        "MISC": "ill-defined mass",
        "ARCH": "architectural distortion",
        "ASYM": "asymmetry",
        "NORM": "no abnormality",
    },
    "pathology": {
        "N": "normal",
        "NORMAL": "normal",
        "B": "benign",
        "BENIGN": "benign",
        "M": "malignant",
        "MALIGNANT": "malignant",
    },
    "laterality": {"L": "left", "LEFT": "left", "R": "right", "RIGHT": "right"},
}

# Other spellings of the vocabulary's columns (MIAS files and CSVs name them differently).
COLUMN_ALIASES: dict[str, str] = {
    "background_tissue": "tissue",
    "density": "tissue",
    "class": "abnormality",
    "abnormality_class": "abnormality",
    "severity": "pathology",
    "side": "laterality",
}


def canonical_column(column: str) -> str:
    """The vocabulary's name for ``column`` (lower-cased, aliases resolved)."""
    key = column.strip().lower()
    return COLUMN_ALIASES.get(key, key)


def describe(
    column: str | None, value: str, vocabulary: Mapping[str, Mapping[str, str]] | None = None
) -> str | None:
    """The vocabulary phrase for ``value`` in ``column``, or None when it has none."""
    vocab = MIAS_VOCABULARY if vocabulary is None else vocabulary
    if column is None:
        return None
    codes = vocab.get(column) or vocab.get(canonical_column(column)) or {}
    return codes.get(value) or codes.get(value.strip().upper())


def report_from_labels(
    labels: Mapping[str, str | None],
    vocabulary: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """One comma-separated sentence from a row's label fields, in the row's column order.

    Known codes become phrases ("D" in ``tissue`` -> "dense glandular breast"); unknown
    columns or values are spelled in as "column: value" so any dataset yields a report.
    Empty / missing values are skipped.

    >>> report_from_labels({"tissue": "D", "abnormality": "SPIC", "severity": "M"})
    'dense glandular breast, spiculated mass, malignant'
    """
    parts: list[str] = []
    for column, raw in labels.items():
        value = "" if raw is None else str(raw).strip()
        if not value or value.lower() == "nan":
            continue
        phrase = describe(column, value, vocabulary)
        part = phrase if phrase is not None else f"{column}: {value}"
        if part not in parts:  # "normal" from two columns says nothing twice
            parts.append(part)
    return ", ".join(parts)
