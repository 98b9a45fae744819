"""Search results as a fixed-width text table, for the CLI and the demo."""

from __future__ import annotations

from collections.abc import Sequence

from priorcase.records import SearchHit


def format_hits(hits: Sequence[SearchHit], percentiles: Sequence[float | None] = ()) -> str:
    """A fixed-width table of search results for the terminal (score with its percentile in
    the library's own nearest-neighbour distribution, when given)."""
    if not hits:
        return "no matching cases"
    rows = [("#", "id", "score (pct)", "kind", "labels")]
    pcts = list(percentiles) or [None] * len(hits)
    for rank, (hit, pct) in enumerate(zip(hits, pcts, strict=True), start=1):
        labels = ", ".join(f"{k}={v}" for k, v in hit.labels.items() if v is not None)
        score = f"{hit.score:.4f}" + ("" if pct is None else f" ({pct:.0f})")
        rows.append((str(rank), hit.id, score, hit.kind, labels))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )
