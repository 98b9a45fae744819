"""Search results as a fixed-width text table, for the CLI and the demo."""

from __future__ import annotations

from collections.abc import Sequence

from priorcase.records import SearchHit


def format_hits(hits: Sequence[SearchHit]) -> str:
    """A fixed-width table of search results for the terminal."""
    if not hits:
        return "no matching cases"
    rows = [("#", "id", "score", "kind", "labels")]
    for rank, hit in enumerate(hits, start=1):
        labels = ", ".join(f"{k}={v}" for k, v in hit.labels.items() if v is not None)
        rows.append((str(rank), hit.id, f"{hit.score:.4f}", hit.kind, labels))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )
