"""Server-side cost of the reading room's clicks on a synthetic library (no browser):
opening a case side by side (both panes encoded and inlined) and writing the export.

    python benchmarks/bench_viewer_server.py --cases 10000 [--repeats 5]

Every replica gets its seed film's full-resolution preview (see ``bench_reading_room.py``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_reading_room import copy_previews
from bench_ui import build_library


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from priorcase.index.previews import Previews
    from priorcase.ui.actions import Actions
    from priorcase.ui.export import write_summary
    from priorcase.ui.viewer import case_pane, query_pane, viewer_html

    with tempfile.TemporaryDirectory() as tmp:
        pc, files, _ = build_library(Path(tmp) / "db", args.cases, 12)
        start = time.perf_counter()
        copy_previews(pc, sorted(f.stem for f in files), args.cases)
        copied = time.perf_counter() - start
        count, size = Previews(pc.store).stats()
        actions = Actions(pc)
        query = actions.query_from_id(files[0].stem)
        hits = actions.search_vector(query, 10)
        opened, exported = [], []
        for r in range(args.repeats):
            start = time.perf_counter()
            page = viewer_html(query_pane(pc, query), case_pane(pc, hits[1 + r], 2 + r))
            opened.append(time.perf_counter() - start)
            start = time.perf_counter()
            write_summary(pc, query.name, query.view, hits, [None] * len(hits), None, {})
            exported.append(time.perf_counter() - start)
        print(f"library: {pc.store.count('image')} cases; previews {count} "
              f"({size / count / 1024:.0f} KiB per film, {size / 2**30:.2f} GiB, "
              f"written in {copied:.0f} s)")  # fmt: skip
        print(f"open side by side (server): median {statistics.median(opened) * 1000:.0f} ms, "
              f"first {opened[0] * 1000:.0f} ms; page {len(page) / 2**10:.0f} KiB")  # fmt: skip
        print(f"export (server): median {statistics.median(exported) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
