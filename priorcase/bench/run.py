"""``priorcase bench [--quick] [--json]``: every kNN path and ingest, measured in one run.

Libraries are synthetic 512-d vectors drawn from a mixture fitted to bundled-encoder
embeddings of MIAS (see :mod:`priorcase.bench.synthetic`); queries are fresh draws (held out).
Each backend is measured unfiltered and with 10% and 1% ``--where`` filters, against exact
answers (recall@10) and scikit-learn's brute-force ``NearestNeighbors`` (speed ratios).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from priorcase.bench.distributed import bench_distributed
from priorcase.bench.library import bucket_mask, where_for, write_library
from priorcase.bench.storage import bench_storage
from priorcase.bench.synthetic import EmbeddingModel, sample
from priorcase.index.faiss_budget import BudgetIndex, available_memory_mb, bitmap_selector
from priorcase.index.lance_ann import LanceAnn, filter_sql
from priorcase.index.vector_index import VectorIndex
from priorcase.retrieval.scaled import THRESHOLDS_PATH, Query, ScaledSearcher

K = 10
DIM = 512
SELECTIVITIES = (1.0, 0.1, 0.01)
BATCH = 64
SINGLE_QUERIES = 50
SINGLE_BUDGET_S = 3.0  # slow backends stop after this long (at least MIN_SINGLE queries)
MIN_SINGLE = 3
BATCH_BUDGET_S = 8.0
TARGET_P50_MS = 5.0
TARGET_OPEN_S = 2.0
ENCODER = {"spec": "synthetic-mias-bundled", "weights_sha256": "-", "dim": 512, "preprocess": {}}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    import lancedb
    import sklearn

    load = os.getloadavg()
    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "ram_available_mb": round(available_memory_mb()),
        "gpu": "none" if faiss.get_num_gpus() == 0 else f"{faiss.get_num_gpus()} (FAISS)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": [round(v, 2) for v in load],
        "versions": {
            "faiss": faiss.__version__,
            "lancedb": lancedb.__version__,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }


def timed_single(search, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 in ms of one query at a time (time-boxed for slow backends)."""
    times = []
    start = time.perf_counter()
    for q in queries[:SINGLE_QUERIES]:
        t0 = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t0)
        if len(times) >= MIN_SINGLE and time.perf_counter() - start > SINGLE_BUDGET_S:
            break
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def recall(found: list[list], truth: list[list]) -> float:
    return float(
        np.mean(
            [
                len(set(f[:K]) & set(t[:K])) / max(1, len(t[:K]))
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


def entry(backend: str, n: int, dim: int, sel: float, **kw) -> dict:
    out = {
        "backend": backend,
        "n": n,
        "dim": dim,
        "filter_selectivity": sel,
        "build_s": None,
        "memory_mb": None,
        "open_s": None,
        "p50_ms": None,
        "p99_ms": None,
        "batch64_qps": None,
        "recall_at_10": None,
        "speedup_vs_brute": None,
    }
    out.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in kw.items()})
    return out


def measure(backend, n, dim, sel, search_ids, queries, truth, **kw) -> dict:
    """p50/p99 single, batch-of-64 throughput and recall@10 of ``search_ids(batch) -> ids``."""
    p50, p99 = timed_single(search_ids, queries)
    # a backend that needs more than BATCH_BUDGET_S for 64 queries is measured on fewer
    size = BATCH if p50 * BATCH / 1e3 < BATCH_BUDGET_S else max(8, int(BATCH_BUDGET_S * 1e3 / p50))
    batch = queries[:size]
    t0 = time.perf_counter()
    found = search_ids(batch)
    qps = len(batch) / (time.perf_counter() - t0)
    return entry(
        backend,
        n,
        dim,
        sel,
        p50_ms=p50,
        p99_ms=p99,
        batch64_qps=qps,
        recall_at_10=recall(found, truth[: len(batch)]),
        **kw,
    )


def positions_to_lists(positions: np.ndarray) -> list[list[int]]:
    return [[int(p) for p in row if p >= 0] for row in positions]


def bench_size(n: int, model: EmbeddingModel, root: Path, results: list, derived: dict) -> dict:
    """Every non-``auto`` backend at one size; returns what the ``auto`` pass needs."""
    dim = DIM
    log(f"n={n}: sampling")
    exact = VectorIndex(sample(model, n, seed=n, dim=dim), "exact")
    x = exact.vectors  # one copy of the library in memory
    queries = sample(model, 200, seed=n + 1, dim=dim)
    db = root / f"lib-{n}"
    log(f"n={n}: writing the library")
    store, buckets = write_library(db, x, ENCODER)
    masks = {s: bucket_mask(buckets, s) for s in SELECTIVITIES}
    truth = {
        s: positions_to_lists(exact.search(queries[:BATCH], K, masks[s]).positions)
        for s in SELECTIVITIES
    }
    ids = np.array([f"c{i:07d}" for i in range(n)], dtype=object)
    truth_ids = {s: [[ids[p] for p in row] for row in truth[s]] for s in SELECTIVITIES}
    brute: dict[float, float] = {}

    # -- baseline: scikit-learn brute force (filter applied by fitting on the allowed rows)
    from sklearn.neighbors import NearestNeighbors

    for s in SELECTIVITIES:
        rows = np.arange(n) if masks[s] is None else np.flatnonzero(masks[s])
        t0 = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine").fit(x[rows])
        fit_s = time.perf_counter() - t0

        def sk(q, nn=nn, rows=rows):
            return [rows[r].tolist() for r in nn.kneighbors(q, return_distance=False)]

        e = measure("sklearn-brute", n, dim, s, sk, queries, truth[s], build_s=fit_s)
        del nn
        e["speedup_vs_brute"] = 1.0
        brute[s] = e["p50_ms"]
        results.append(e)
        log(f"  {e['backend']} sel={s}: p50 {e['p50_ms']:.2f} ms")

    def add(e: dict) -> None:
        e["speedup_vs_brute"] = round(brute[e["filter_selectivity"]] / e["p50_ms"], 2)
        results.append(e)
        log(
            f"  {e['backend']} sel={e['filter_selectivity']}: p50 {e['p50_ms']:.3f} ms, "
            f"recall {e['recall_at_10']:.3f}, batch {e['batch64_qps']:.0f} q/s"
        )

    # -- NumPy exact (the old default)
    for s in SELECTIVITIES:
        add(
            measure(
                "numpy-exact",
                n,
                dim,
                s,
                lambda q, s=s: positions_to_lists(exact.search(q, K, masks[s]).positions),
                queries,
                truth[s],
                build_s=0.0,
                memory_mb=n * dim * 4 / 2**20,
            )
        )
    derived.setdefault("numpy_p50_ms", {})[n] = results[-3]["p50_ms"]

    # -- FAISS Flat (exact), filters as a packed bitmap selector
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    flat_build = time.perf_counter() - t0
    for s in SELECTIVITIES:

        def fs(q, s=s):
            params = None
            if masks[s] is not None:
                params = faiss.SearchParameters(sel=bitmap_selector(masks[s]))
            return positions_to_lists(flat.search(q, K, params=params)[1])

        add(
            measure(
                "faiss-flat", n, dim, s, fs, queries, truth[s],
                build_s=flat_build, memory_mb=n * dim * 4 / 2**20,
            )
        )  # fmt: skip
    flat.reset()

    # -- the FAISS index auto picks (budget plan, tuned on the library's own vectors)
    t0 = time.perf_counter()
    ann = BudgetIndex.build(x)
    ann_build = time.perf_counter() - t0
    key = ScaledSearcher(store).content_key()
    path = db / "ann" / f"faiss-{key}.index"
    ann.save(path)  # the auto pass finds it as if `priorcase index` had built it
    t0 = time.perf_counter()
    reopened = BudgetIndex.load(path)
    assert reopened is not None
    reopened.search(queries[:1], K)
    faiss_open = time.perf_counter() - t0
    label = f"faiss-{ann.plan.kind}"
    for s in SELECTIVITIES:
        add(
            measure(
                "faiss-auto", n, dim, s,
                lambda q, s=s: positions_to_lists(ann.search(q, K, masks[s]).positions),
                queries, truth[s], build_s=ann_build, memory_mb=ann.memory_mb(),
                open_s=faiss_open, index=label,
                tuned=f"{ann.tuning.param}={ann.tuning.value}",
            )
        )  # fmt: skip
    derived.setdefault("faiss_open_s", {})[n] = faiss_open

    # -- LanceDB: unindexed (flat scan), then its own vector index; scalar indexes for filters
    lance = LanceAnn(store.table, db / "ann")
    lance.ensure_scalar_indexes(
        {"bucket": "BITMAP", "kind": "BITMAP", "group": "BTREE", "id": "BTREE"}
    )

    def lance_search(q, s, flat=False):
        return [i for i, _ in lance.search(q, K, filter_sql(where_for(s)), flat=flat)]

    for s in SELECTIVITIES:
        add(
            measure(
                "lance-unindexed", n, dim, s, lambda q, s=s: lance_search(q, s, True),
                queries, truth_ids[s], build_s=0.0, memory_mb=0.0,
            )
        )  # fmt: skip
    t0 = time.perf_counter()
    plan = lance.build_vector_index(force="IVF_SQ")  # what auto builds within the budget
    lance_build = time.perf_counter() - t0
    size_mb = sum(c.size_bytes or 0 for c in store.table.list_indices()) / 2**20
    for s in SELECTIVITIES:
        add(
            measure(
                "lance-indexed", n, dim, s, lambda q, s=s: lance_search(q, s),
                queries, truth_ids[s], build_s=lance_build, memory_mb=size_mb,
                index=plan.index_type,
                tuned=f"nprobes={plan.nprobes},refine={plan.refine_factor}",
            )
        )  # fmt: skip
    return {"db": db, "queries": queries, "truth_ids": truth_ids, "brute": brute,
            "faiss_build_s": ann_build, "lance_build_s": lance_build}  # fmt: skip


def bench_auto(n: int, info: dict, results: list) -> None:
    """The default path end to end: open the library, first answer, then queries as
    ``PriorCase.search`` makes them after embedding (``pc.searcher``) and batches as
    ``PriorCase.search_batch`` makes them."""
    import priorcase

    said: list[str] = []
    t0 = time.perf_counter()
    pc = priorcase.open(info["db"], notify=said.append)
    pc.searcher.search(info["queries"][0], K)
    open_s = time.perf_counter() - t0
    chosen = pc.searcher.scaled.chosen
    name = chosen.backend if chosen else "exact"
    build = {"faiss-ann": info["faiss_build_s"], "lance": info["lance_build_s"]}.get(name, 0.0)
    for s in SELECTIVITIES:
        where = where_for(s)

        def run(q, where=where):
            if len(q) == 1:
                return [[h.id for h in pc.searcher.search(q[0], K, where=where)]]
            batch = pc.searcher.scaled.search([Query(v) for v in q], K, None, where)
            return [[h.id for h in hits] for hits in batch]

        e = measure(
            "auto", n, DIM, s, run, info["queries"], info["truth_ids"][s],
            build_s=build, open_s=open_s, chosen=name,
            reason=chosen.reason if chosen else "",
        )  # fmt: skip
        e["speedup_vs_brute"] = round(info["brute"][s] / e["p50_ms"], 2)
        results.append(e)
        log(f"  auto ({name}) sel={s}: p50 {e['p50_ms']:.3f} ms, recall {e['recall_at_10']:.3f}")


def bench_ingest(root: Path, count: int = 64) -> dict:
    """Ingest images/s from PNG files against the encoder's forward-only limit, same run
    (``count`` films: the pipeline's fill and drain weigh less the more there are)."""
    import torch

    import priorcase
    from priorcase.datasets.mias import find_mias
    from priorcase.encoders import create_encoder
    from priorcase.ingest.readers import _read_pil

    mias = find_mias()
    if mias is not None:  # real 1024x1024 films, read in place
        files = sorted(mias.images.glob("*.png"))[:count]
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        (root / "ingest-src").mkdir(parents=True, exist_ok=True)
        files = [root / "ingest-src" / f"{i}.png" for i in range(count)]
        for path in files:
            Image.fromarray(rng.integers(0, 255, (1024, 1024), np.uint8)).save(path)
    encoder = create_encoder("bundled", "cpu")
    pixels = [_read_pil(p) for p in files[:32]]
    batch = torch.stack([encoder.preprocess(p) for p in pixels])
    encoder.embed_batch(batch)  # warm-up

    def forward_only() -> float:
        t0 = time.perf_counter()
        reps = 2
        for _ in range(reps):
            encoder.embed_batch(batch)
        return reps * len(batch) / (time.perf_counter() - t0)

    # the limit is measured before and after the ingest and averaged, so a load that comes
    # or goes during the run (a shared machine) moves both sides of the ratio alike
    before = forward_only()
    pc = priorcase.open(root / "ingest-db", encoder=encoder, notify=lambda m: None)
    t0 = time.perf_counter()
    report = pc.ingest(files, progress=False)
    rate = report.stored_images / (time.perf_counter() - t0)
    limit = (before + forward_only()) / 2
    return {
        "images_per_s": round(rate, 2),
        "limit_images_per_s": round(limit, 2),
        "ratio": round(rate / limit, 3),
        "images": report.stored_images,
        "encoder": "bundled (cpu)",
    }


def derive_thresholds(derived: dict) -> dict:
    """Row counts for ``auto``: exact while NumPy meets the 5 ms p50 target (cost grows with
    rows, extrapolated from the largest size measured), FAISS while its index opens within
    2 s (load time grows with rows, likewise)."""
    n_max = max(derived["numpy_p50_ms"])
    exact_max = int(n_max * TARGET_P50_MS / derived["numpy_p50_ms"][n_max])
    faiss_max = int(n_max * TARGET_OPEN_S / max(derived["faiss_open_s"][n_max], 1e-3))
    return {
        "exact_max_rows": min(exact_max, n_max * 10),
        "faiss_max_rows": max(min(faiss_max, n_max * 10), exact_max),
        "source": f"priorcase bench, {datetime.now(UTC).date()}: NumPy p50 "
        f"{derived['numpy_p50_ms'][n_max]:.2f} ms and FAISS open "
        f"{derived['faiss_open_s'][n_max]:.2f} s at {n_max} rows",
    }


def run_bench(
    quick: bool = False,
    as_json: bool = False,
    sizes: list[int] | None = None,
    write_thresholds: bool = False,
    only: str | None = None,
) -> int:
    sizes = sizes or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    started = time.perf_counter()
    model = EmbeddingModel.load()
    out: dict = {"machine": machine()}
    root = Path(tempfile.mkdtemp(prefix="priorcase-bench-"))
    results: list[dict] = []
    derived: dict = {}
    if only == "storage":
        return _run_storage(out, root, started, as_json)
    try:
        log("ingest")
        out["ingest"] = bench_ingest(root, count=64 if quick else 216)
        if not quick:  # --quick keeps to its 3-minute budget: these two take minutes each
            log("storage: query latency from an S3-compatible server vs local disk")
            out["storage"] = bench_storage(root)
            log("distributed ingest (Ray, 2 workers) against one process")
            out["distributed_ingest"] = bench_distributed(root / "distributed")
        infos = {n: bench_size(n, model, root, results, derived) for n in sizes}
        thresholds = derive_thresholds(derived)
        if write_thresholds:
            THRESHOLDS_PATH.write_text(json.dumps(thresholds, indent=1) + "\n")
        out["derived_thresholds"] = thresholds
        for n in sizes:
            log(f"n={n}: auto, end to end")
            bench_auto(n, infos[n], results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["ann"] = results
    out["machine"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    out["total_s"] = round(time.perf_counter() - started, 1)
    if as_json:
        print(json.dumps(out))
    else:
        print(format_table(out))
    return 0


def _run_storage(out: dict, root: Path, started: float, as_json: bool) -> int:
    """``priorcase bench --only storage``: the object-storage figure alone."""
    try:
        out["storage"] = bench_storage(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["machine"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    out["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out) if as_json else f"storage: {json.dumps(out['storage'], indent=1)}")
    return 0


def format_table(out: dict) -> str:
    lines = [
        f"machine: {out['machine']}",
        f"ingest: {out['ingest']}",
        f"distributed ingest: {out.get('distributed_ingest', 'full run only')}",
        f"storage: {out.get('storage', 'full run only')}",
        f"auto thresholds derived: {out['derived_thresholds']}",
        f"{'backend':<16}{'n':>9}{'sel':>6}{'build s':>9}{'open s':>8}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'b64 q/s':>9}{'recall':>8}{'x brute':>9}  chosen/index",
    ]
    for e in out["ann"]:

        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"

        lines.append(
            f"{e['backend']:<16}{e['n']:>9}{e['filter_selectivity']:>6}"
            f"{f(e['build_s'], '.1f'):>9}{f(e['open_s'], '.2f'):>8}{f(e['p50_ms'], '.3f'):>9}"
            f"{f(e['p99_ms'], '.3f'):>9}{f(e['batch64_qps'], '.0f'):>9}"
            f"{f(e['recall_at_10'], '.3f'):>8}{f(e['speedup_vs_brute'], '.1f'):>9}  "
            f"{e.get('chosen', e.get('index', ''))} {e.get('tuned', '')}"
        )
    lines.append(f"total {out['total_s']} s")
    return "\n".join(lines)
