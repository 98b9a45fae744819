"""Query latency from an S3-compatible server against a local disk, on one small library.

The server is moto's S3 server (``moto[server]``, a test extra) in this process on
127.0.0.1: what differs from a local disk is the object-store protocol (one HTTP request per
listing, manifest or range read), not network distance, so a real bucket adds its round
trips on top. Both libraries hold the same synthetic vectors and answer the same held-out
queries through ``PriorCase.searcher`` (what ``PriorCase.search`` runs after embedding).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from priorcase.bench.library import write_library
from priorcase.bench.synthetic import EmbeddingModel, sample

ROWS = 10_000
QUERIES = 50
K = 10
BUCKET = "priorcase-bench"
ENCODER = {"spec": "synthetic-mias-bundled", "weights_sha256": "-", "dim": 512, "preprocess": {}}


def bench_storage(root: Path, rows: int = ROWS, queries: int = QUERIES) -> dict:
    """p50 / p90 per query (ms) on local disk and from the S3 server: ``auto`` as a user gets
    it (exact in memory locally, LanceDB on object storage), exact over vectors read once per
    table version, the LanceDB path unindexed (a flat scan of the vector column) and with an
    IVF_SQ index, and the S3 / local ratios."""
    import priorcase

    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return {"skipped": "moto[server] is not installed (pip install 'priorcase[test]')"}
    model = EmbeddingModel.load()
    vectors = sample(model, rows, seed=rows)
    asked = sample(model, queries, seed=rows + 1)
    out: dict = {"rows": rows, "queries": queries, "k": K, "server": "moto (127.0.0.1)"}
    with _s3_server(ThreadedMotoServer) as remote_root:
        places = {"local": str(root / "storage-local"), "s3": f"{remote_root}/lib"}
        for db in places.values():
            write_library(db, vectors, ENCODER)
        for backend in ("auto", "exact", "lance"):
            pcs = {p: priorcase.open(d, backend=backend, notify=_quiet) for p, d in places.items()}
            for place, figures in _measure(pcs, asked).items():
                out[f"{place}_{backend}"] = figures
        # the vector index auto builds from INDEX_MIN_ROWS, forced here on a small library
        built = {}
        for place, db in places.items():
            t0 = time.perf_counter()
            pc = priorcase.open(db, backend="lance", notify=_quiet)
            plan = pc.searcher.scaled.lance().build_vector_index(force="IVF_SQ")
            built[place] = {"index": plan.index_type, "build_s": round(time.perf_counter() - t0, 1)}
        pcs = {p: priorcase.open(db, backend="lance", notify=_quiet) for p, db in places.items()}
        for place, figures in _measure(pcs, asked).items():
            out[f"{place}_lance_indexed"] = {**figures, **built[place]}
    for name in ("auto", "exact", "lance", "lance_indexed"):
        ratio = out[f"s3_{name}"]["p50_ms"] / out[f"local_{name}"]["p50_ms"]
        out[f"s3_over_local_{name}_p50"] = round(ratio, 2)
    return out


def _measure(pcs: dict, asked: np.ndarray) -> dict[str, dict]:
    """Per library: open and first answer (s), then p50 / p90 (ms) of one query at a time.
    The libraries take turns query by query, so a busy machine slows both alike."""
    first: dict[str, float] = {}
    for place, pc in pcs.items():
        t0 = time.perf_counter()
        pc.searcher.search(asked[0], K)
        first[place] = time.perf_counter() - t0
    times: dict[str, list[float]] = {place: [] for place in pcs}
    for q in asked:
        for place, pc in pcs.items():
            t = time.perf_counter()
            hits = pc.searcher.search(q, K)
            times[place].append(time.perf_counter() - t)
            assert len(hits) == K
    out = {}
    for place, pc in pcs.items():
        chosen = pc.searcher.scaled.chosen
        ms = np.asarray(times[place]) * 1e3
        out[place] = {
            "path": chosen.backend if chosen else "exact",
            "first_s": round(first[place], 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2),
        }
    return out


@contextlib.contextmanager
def _s3_server(server_class) -> Iterator[str]:
    """moto's S3 server on a free port, a bucket, and the AWS variables pointing at it
    (restored afterwards); yields ``s3://bucket``."""
    import logging

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_class(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def _quiet(message: str) -> None:
    """Notices would land on stdout, which is --json."""
