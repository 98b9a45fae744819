"""Reading-room interaction timings in headless Chromium: open a case side by side, zoom,
export; and the disk cost of full-resolution previews.

    python benchmarks/bench_reading_room.py --films 24            # MIAS films (bundled encoder)
    python benchmarks/bench_reading_room.py --synthetic 10000     # bench_ui's 10k library

The synthetic library replicates 12 ingested films' vectors (see ``bench_ui.py``); each replica
gets its seed film's full-resolution preview, so the previews table holds 10k films.

Before the browser opens, the one-off costs are paid and reported, as ``serve`` pays them in
its warm-up thread: the text aligner, the classification heads (kNN, logistic, text prompts;
the logistic and text heads on a sample of at most about 3000 cases) and the kNN and logistic
heads' cross-validated figures (on a sample of about 3000). The text prompts' figures (30
aligner fits) are left to the UI's background thread, which runs at lower priority (nice +10)
during the timings, as it would for a user on first use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def library(args, tmp: Path):
    import priorcase

    if args.synthetic:
        from bench_ui import build_library

        pc, files, _ = build_library(tmp / "db", args.synthetic, 12)
        copy_previews(pc, sorted(f.stem for f in files), args.synthetic)
        return pc, files[0].stem
    root = Path("/work/shared/data/mias")
    files = sorted((root / "images").glob("*.png"))[: args.films]
    pc = priorcase.open(tmp / "db", encoder="bundled", device="cpu")
    pc.ingest(files, labels=root / "images.csv", findings=root / "findings.csv", workers=0,
              progress=False)  # fmt: skip
    return pc, files[0].stem


def copy_previews(pc, seeds: list[str], n_cases: int, batch: int = 250) -> None:
    """Give every replica ``syn{i}`` its seed film's preview (``bench_ui`` replicates seed
    ``i % len(seeds)``), so the 10k library costs the disk, and answers, of 10k real films."""
    from priorcase.index.previews import Preview, Previews

    previews = Previews(pc.store)
    films = [previews.get(s) for s in seeds]
    rows = []
    for i in range(n_cases - len(seeds)):
        film = films[i % len(films)]
        rows.append(Preview(f"syn{i:06d}", film.png, film.width, film.height))
        if len(rows) == batch:
            previews.put(rows)
            rows = []
    previews.put(rows)


def settled(page) -> None:
    """Wait until the search's follow-ups (classification panel, then map) have answered, so
    the timings are of the click alone (a click during them waits in Gradio's queue). Hidden
    tabs are not rendered: look at their tabs, then come back."""
    page.get_by_role("tab", name="Classification").click()
    page.locator("#classify-headline").get_by_text("Query").first.wait_for()
    page.locator(".pc-pending").first.wait_for(state="detached")
    page.get_by_role("tab", name="Library").click()
    page.locator("#library-map .pc-star").wait_for()
    page.get_by_role("tab", name="Search").click()
    page.locator(".pc-open").first.wait_for()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--films", type=int, default=24)
    parser.add_argument("--synthetic", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    from test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _launch

    from priorcase.index.previews import Previews
    from priorcase.library import KnnOptions
    from priorcase.ui.classify_panel import DEFAULT_METHODS, KNN_K

    print(f"load before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pc, case = library(args, Path(tmp))
        count, size = Previews(pc.store).stats()
        start = time.perf_counter()
        pc.joint_space()  # as ``serve`` warms up: timings below are of warm caches
        print(f"warm-up (text aligner): {time.perf_counter() - start:.0f} s", flush=True)
        column = "pathology"
        for method in DEFAULT_METHODS:
            start = time.perf_counter()
            _, data = pc.classifiers.fitted(method, column, knn=KnnOptions(k=KNN_K))
            print(f"warm-up ({method} head on {len(data.y)} cases): "
                  f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        start = time.perf_counter()
        try:
            figures = pc.classifiers.evaluate(column, ("knn", "logreg"))
        except Exception as err:  # too few patients to cross-validate: the panel says so
            figures = f"not computed ({err})"
        print(f"warm-up (cross-validated figures): {time.perf_counter() - start:.0f} s "
              f"{figures}", flush=True)  # fmt: skip
        demo, url = _launch(pc)
        timings: dict[str, list[float]] = {"open side by side": [], "zoom": [], "export": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(600_000)  # cold caches on 10k rows under load
            page.goto(url)
            page.locator("#case-id input").fill(case)
            page.locator("#id-search").click()
            page.locator("#status-box").get_by_text(f"Query: {case}").wait_for()
            settled(page)
            for r in range(args.repeats):
                n = 1 + r % 4
                start = time.perf_counter()
                page.locator(".pc-open").nth(n).click()
                page.locator(".pc-pane[data-side='case'] figcaption").get_by_text(
                    f"#{n + 1} "
                ).wait_for()
                page.wait_for_function(
                    "[...document.querySelectorAll('img.pc-img')].every(i => i.complete)"
                )
                timings["open side by side"].append(time.perf_counter() - start)
                page.locator(".pc-pane[data-side='query'] .pc-stage").hover()
                zoom = page.evaluate(
                    """() => new Promise(done => { const t = performance.now();
                    document.querySelector('.pc-stage').dispatchEvent(new WheelEvent('wheel',
                      {deltaY: -100, bubbles: true, cancelable: true, clientX: 200, clientY: 200}));
                    requestAnimationFrame(() => requestAnimationFrame(() =>
                      done(performance.now() - t))); })"""
                )
                timings["zoom"].append(zoom / 1000)
                page.locator("[data-act='reset']").click()
                start = time.perf_counter()
                page.locator("#export").click()
                page.locator("#export-files a").first.wait_for()
                timings["export"].append(time.perf_counter() - start)
                page.locator("#case-id input").fill(case)
                page.locator("#id-search").click()  # hides the export files again
                page.locator("#export-files a").first.wait_for(state="detached")
                settled(page)
            browser.close()
        demo.close()
        kind = f"synthetic {args.synthetic}" if args.synthetic else f"MIAS {args.films} films"
        print(f"load after: {os.getloadavg()}")
        print(f"library: {kind}, {pc.store.count('image')} cases")
        print(f"previews: {count} films, {size / max(count, 1) / 1024:.0f} KiB per film")
        for name, values in timings.items():
            print(f"{name}: median {statistics.median(values) * 1000:.0f} ms, "
                  f"max {max(values) * 1000:.0f} ms over {len(values)}")  # fmt: skip


if __name__ == "__main__":
    main()
