"""Labels and findings CSVs: one row per image, one row per lesion."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from priorcase.errors import LabelsError
from priorcase.ingest.columns import check_names, is_identifier
from priorcase.ingest.readers import file_id
from priorcase.records import Finding

ID_COLUMNS = ("image_id", "id")
FILE_COLUMN = "file"
PATIENT_COLUMN = "patient_id"


@dataclass
class LabelRow:
    """Labels of one image: its id, label fields, raw patient key and CSV line number."""

    image_id: str | None
    labels: dict[str, str | None]
    patient_key: str | None
    line: int


@dataclass
class LabelTable:
    """A labels CSV joined to files by ``file`` (relative to the CSV) or by id = file stem."""

    source: Path
    columns: list[str]
    by_path: dict[Path, LabelRow] = field(default_factory=dict)
    by_id: dict[str, LabelRow] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lookup(self, path: Path) -> LabelRow | None:
        return self.by_path.get(path.resolve()) or self.by_id.get(file_id(path))

    def unmatched(self, paths: list[Path]) -> list[str]:
        """One line per CSV row that names no file among ``paths``."""
        resolved = {p.resolve() for p in paths}
        stems = {file_id(p) for p in paths}
        lines = []
        for path, row in self.by_path.items():
            if path not in resolved:
                lines.append(f"{self.source} line {row.line}: file {path} is not among the images")
        for image_id, row in self.by_id.items():
            if row not in self.by_path.values() and image_id not in stems:
                lines.append(f"{self.source} line {row.line}: no image file for id {image_id!r}")
        return lines


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass
class _Csv:
    header: list[str]
    rows: list[tuple[int, dict[str, str | None]]]
    notes: list[str] = field(default_factory=list)


def _read_rows(path: Path, keep: set[str], identifiers: tuple[str, ...] = ()) -> _Csv:
    """Header and rows of a CSV; column names checked before anything is stored.

    A column with no name is dropped when all its cells are empty (a trailing comma), else
    refused; identifier columns (:func:`is_identifier`) are dropped unread, except those in
    ``keep`` (id, file, patient and group columns, which are pseudonymised).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            raw_header = next(reader, None)
            raw_rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LabelsError(f"{path}: cannot read CSV: {err}") from err
    if not raw_header or not any(h.strip() for h in raw_header):
        raise LabelsError(f"{path}: empty CSV (no header row)")
    header = [h.strip() for h in raw_header]
    notes: list[str] = []
    use: list[int] = []
    dropped: list[str] = []
    for n, name in enumerate(header):
        if not name:
            if any(n < len(row) and row[n].strip() for _, row in raw_rows):
                raise LabelsError(f"{path}: column {n + 1} has values but no name in the header")
            continue  # a trailing comma: nothing to keep
        if name not in keep and is_identifier(name, identifiers):
            dropped.append(name)
            continue
        use.append(n)
    names = [header[n] for n in use]
    for name in names:
        if names.count(name) > 1:
            raise LabelsError(f"{path}: column {name!r} appears twice in the header")
    check_names([n for n in names if n not in keep], path)
    if dropped:
        notes.append(f"{path}: identifier columns not stored: {', '.join(dropped)}")
    rows = [
        (line, {header[n]: _clean(row[n]) if n < len(row) else None for n in use})
        for line, row in raw_rows
        if any(cell.strip() for cell in row)
    ]
    return _Csv(names, rows, notes)


def read_labels(
    path: str | Path,
    group: str = PATIENT_COLUMN,
    identifiers: tuple[str, ...] = (),
    pseudonymize: Callable[[str | None], str | None] | None = None,
) -> LabelTable:
    """Parse a labels CSV; rows naming missing files or repeating an id become ``problems``.

    The ``group`` column (when not ``patient_id``) is stored as its salted pseudonym, so a
    record number used for grouping is never stored in clear.
    """
    path = Path(path)
    keep = {FILE_COLUMN, PATIENT_COLUMN, group, *ID_COLUMNS}
    parsed = _read_rows(path, keep, identifiers)
    header, rows = parsed.header, parsed.rows
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None and FILE_COLUMN not in header:
        raise LabelsError(f"{path}: needs a 'file', 'image_id' or 'id' column; has {header}")
    skip = {FILE_COLUMN, PATIENT_COLUMN, *ID_COLUMNS}
    table = LabelTable(source=path, columns=[c for c in header if c not in skip])
    table.notes = parsed.notes
    if group != PATIENT_COLUMN and group in header and pseudonymize is None:
        raise LabelsError(f"{path}: the group column {group!r} needs the library's salt")
    seen: dict[str, int] = {}
    for line, row in rows:
        image_id = row.get(id_column) if id_column else None
        file_value = row.get(FILE_COLUMN)
        key = image_id or file_value
        if key is None:
            table.problems.append(f"{path} line {line}: no id or file; row ignored")
            continue
        if key in seen:
            table.problems.append(
                f"{path} line {line}: duplicate id {key!r} (first on line {seen[key]}); row ignored"
            )
            continue
        seen[key] = line
        labels = {c: row.get(c) for c in table.columns}
        if group != PATIENT_COLUMN and group in labels and pseudonymize is not None:
            labels[group] = pseudonymize(labels[group])
        label_row = LabelRow(image_id, labels, row.get(PATIENT_COLUMN), line)
        if file_value:
            file_path = (path.parent / file_value).resolve()
            if not file_path.is_file():
                table.problems.append(f"{path} line {line}: file {file_value} does not exist")
                continue
            table.by_path[file_path] = label_row
        if image_id:
            table.by_id[image_id] = label_row
    return table


def read_findings(
    path: str | Path, identifiers: tuple[str, ...] = (), notes: list[str] | None = None
) -> dict[str, list[Finding]]:
    """Parse a findings CSV (image_id, x, y, radius, other columns as labels)."""
    path = Path(path)
    parsed = _read_rows(path, {*ID_COLUMNS, "x", "y", "radius"}, identifiers)
    header, rows = parsed.header, parsed.rows
    if notes is not None:
        notes += parsed.notes
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None:
        raise LabelsError(f"{path}: findings CSV needs an 'image_id' or 'id' column")
    geometry = {"x", "y", "radius"}
    label_columns = [c for c in header if c not in geometry and c != id_column]
    findings: dict[str, list[Finding]] = {}
    for line, row in rows:
        image_id = row.get(id_column)
        if image_id is None:
            raise LabelsError(f"{path} line {line}: empty {id_column}")
        try:
            x, y, radius = (
                int(float(row[c])) if row.get(c) else None for c in ("x", "y", "radius")
            )
        except ValueError as err:
            raise LabelsError(f"{path} line {line}: x, y and radius must be numbers") from err
        labels = {c: row.get(c) for c in label_columns}
        findings.setdefault(image_id, []).append(Finding(image_id, x, y, radius, labels))
    return findings
