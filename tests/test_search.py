"""Search by image, id and text; filters, same-patient exclusion, kinds, kNN backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures import row_count, write_csv, write_png, write_pngs

import priorcase
from priorcase.errors import QueryError

N = 12


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, bundled):
    """A bundled-encoder index: 12 labelled images (6 patients, 2 each) and 4 lesion ROIs."""
    root = tmp_path_factory.mktemp("search")
    files = write_pngs(root / "images", N, size=96)
    labels = write_csv(
        root / "labels.csv",
        ["image_id", "patient_id", "tissue", "pathology"],
        [
            [p.stem, f"P{i // 2}", "D" if i % 3 == 0 else "F", "benign" if i % 2 else "normal"]
            for i, p in enumerate(files)
        ],
    )
    findings = write_csv(
        root / "findings.csv",
        ["image_id", "severity", "x", "y", "radius"],
        [[f"img{i:03d}", "benign", "48", "40", "12"] for i in (1, 3, 5, 7)],
    )
    db = root / "db"
    report = priorcase.open(db, encoder=bundled).ingest(
        root / "images", labels=labels, findings=findings, workers=0, progress=False
    )
    assert (report.stored_images, report.stored_rois, report.failures) == (N, 4, [])
    return db, files


def test_search_by_image_finds_itself_first(library, bundled) -> None:
    db, files = library
    hits = priorcase.open(db, encoder=bundled).search(image=files[4], k=8)
    assert len(hits) == 8
    assert hits[0].id == "img004" and hits[0].score > 0.99
    assert hits[1].score < hits[0].score
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.id for h in hits}) == 8
    assert hits[0].labels["tissue"] == "F" and not hasattr(hits[0], "path")


def test_search_by_id_excludes_itself(library, bundled) -> None:
    db, _ = library
    hits = priorcase.open(db, encoder=bundled).search(id="img004", k=100)
    ids = [h.id for h in hits]
    assert "img004" not in ids
    assert len(ids) == len(set(ids)) == N + 4 - 1
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(QueryError, match="no case with id 'nope'"):
        priorcase.open(db, encoder=bundled).search(id="nope")


def test_where_filter_restricts_results(library, bundled) -> None:
    db, files = library
    pc = priorcase.open(db, encoder=bundled)
    hits = pc.search(image=files[0], k=100, where="tissue = 'D'", kind="image")
    assert sorted(h.id for h in hits) == [f"img{i:03d}" for i in (0, 3, 6, 9)]
    assert hits[0].id == "img000"
    assert all(h.labels["tissue"] == "D" for h in hits)
    both = pc.search(image=files[0], k=100, where="tissue = 'F' AND pathology = 'benign'")
    assert both and all(
        h.labels["tissue"] == "F" and h.labels["pathology"] == "benign" for h in both
    )


@pytest.mark.parametrize("where", ["tissue = = 'D'", "no_such_column = 1", "tissue LIKE"])
def test_invalid_where_is_a_query_error(library, bundled, where: str) -> None:
    db, files = library
    before = row_count(db)
    pc = priorcase.open(db, encoder=bundled)
    with pytest.raises(QueryError) as err:
        pc.search(image=files[0], where=where)
    msg = str(err.value)
    assert "\n" not in msg and where in msg and msg.startswith("invalid --where")
    assert row_count(db) == before
    assert pc.search(image=files[0], k=1)[0].id == "img000"  # index intact


def test_exclude_same_patient(library, bundled) -> None:
    db, files = library
    pc = priorcase.open(db, encoder=bundled)
    everything = pc.search(id="img002", k=100)
    group = pc.store.fetch(["img002"])["img002"]["group"]
    assert group.startswith("anon-")
    same = [h.id for h in everything if h.group == group]
    assert "img003" in same  # P1 has img002 and img003 (+ img003's ROI)
    hits = pc.search(id="img002", k=100, exclude_same_patient=True)
    assert hits and all(h.group != group for h in hits)
    assert {h.id for h in hits} == {h.id for h in everything} - set(same)
    # a query file already in the library takes the patient of its stored copy
    by_file = pc.search(image=files[2], k=100, exclude_same_patient=True)
    assert {h.id for h in by_file} == {h.id for h in everything} - set(same)


def test_exclude_same_patient_new_png_has_no_patient(library, bundled, tmp_path: Path) -> None:
    db, _ = library
    pc = priorcase.open(db, encoder=bundled)
    query = write_png(tmp_path / "new.png", 999)  # not stored, no DICOM patient
    assert len(pc.search(image=query, k=100, exclude_same_patient=True)) == N + 4


def test_kind_filter(library, bundled) -> None:
    db, files = library
    pc = priorcase.open(db, encoder=bundled)
    rois = pc.search(image=files[1], k=100, kind="roi")
    assert sorted(h.id for h in rois) == [f"img{i:03d}-roi1" for i in (1, 3, 5, 7)]
    assert all(h.kind == "roi" and h.roi == (48, 40, 12) and h.parent_id for h in rois)
    assert rois[0].id == "img001-roi1"  # the crop of the query image itself ranks first
    images = pc.search(image=files[1], k=100, kind="image")
    assert len(images) == N and {h.kind for h in images} == {"image"}
    with pytest.raises(QueryError, match="unknown kind"):
        pc.search(image=files[1], kind="lesion")


def test_text_search_with_bundled_needs_labels(tmp_path: Path, library, bundled) -> None:
    write_pngs(tmp_path / "images", 4)
    pc = priorcase.open(tmp_path / "db", encoder=bundled)
    pc.ingest(tmp_path / "images", workers=0, progress=False)
    with pytest.raises(QueryError, match="need labels"):
        pc.search(text="dense breast tissue")

    db, _ = library
    notes: list[str] = []
    pc = priorcase.open(db, encoder=bundled, notify=notes.append)
    hits = pc.search(text="dense tissue, benign", k=5)
    assert len(hits) == 5 and all(np.isfinite(h.score) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert any("learning text-image alignment" in n for n in notes)
    assert list(db.glob("text-aligner-*.pt")), "aligner not saved next to the index"
    # a second handle reuses the saved aligner: same answer, no new training
    notes.clear()
    again = priorcase.open(db, encoder=bundled, notify=notes.append).search(
        text="dense tissue, benign", k=5
    )
    assert [h.id for h in again] == [h.id for h in hits] and notes == []


def test_text_search_with_clip_encoder(tmp_path: Path, tiny_clip) -> None:
    write_pngs(tmp_path / "images", 6)
    pc = priorcase.open(tmp_path / "db", encoder=tiny_clip)
    pc.ingest(tmp_path / "images", workers=0, progress=False)  # no labels needed
    hits = pc.search(text="a mammogram", k=4)
    assert len(hits) == 4
    text_vec = tiny_clip.embed_texts(["a mammogram"])[0]
    stored = pc.store.snapshot("image")
    expected = stored.ids[np.argsort(-(stored.vectors @ text_vec), kind="stable")[:4]]
    assert [h.id for h in hits] == list(expected)
    assert not list((tmp_path / "db").glob("text-aligner-*.pt"))
    with pytest.raises(QueryError, match="exactly one"):
        pc.search(text="x", id="img000")


# ---------------------------------------------------------------- kNN backends


@pytest.fixture(scope="module")
def big_library(tmp_path_factory: pytest.TempPathFactory, tiny_clip):
    root = tmp_path_factory.mktemp("big")
    write_pngs(root / "images", 300, size=32)
    db = root / "db"
    report = priorcase.open(db, encoder=tiny_clip).ingest(
        root / "images", workers=0, batch_size=64, progress=False
    )
    assert report.stored_images == 300
    return root, db


def _same_up_to_ties(a, b) -> None:
    sa, sb = np.array([h.score for h in a]), np.array([h.score for h in b])
    np.testing.assert_allclose(sa, sb, atol=1e-5)
    # ids must agree except among (near-)equal scores
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.id != y.id:
            tied = {h.id for h in b if abs(h.score - x.score) <= 1e-5}
            assert x.id in tied, f"rank {i}: {x.id} vs {y.id}"


def test_exact_and_faiss_backends_agree(big_library, tiny_clip) -> None:
    root, db = big_library
    exact = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="exact")
    fast = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    for query in ["img000", "img123", "img299"]:
        a = exact.search(id=query, k=25)
        b = fast.search(id=query, k=25)
        assert len(a) == len(b) == 25
        _same_up_to_ties(a, b)
    for kwargs in [{"where": "kind = 'image'"}, {"kind": "image"}]:
        _same_up_to_ties(
            exact.search(image=root / "images" / "img010.png", k=10, **kwargs),
            fast.search(image=root / "images" / "img010.png", k=10, **kwargs),
        )
    assert exact.searcher.index_for(exact.store.snapshot(None), None).backend == "exact"
    assert fast.searcher.index_for(fast.store.snapshot(None), None).backend == "faiss"


def test_faiss_cache_is_rebuilt_for_a_new_table_version(tmp_path: Path, tiny_clip) -> None:
    write_pngs(tmp_path / "a", 20, size=32)
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    pc.ingest(tmp_path / "a", workers=0, progress=False)
    first = pc.search(id="img005", k=3)
    cached = sorted((db / "faiss").glob("*.index"))
    assert len(cached) == 1
    # a new handle reuses the file for the same version (same answers)
    reopened = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    assert [h.id for h in reopened.search(id="img005", k=3)] == [h.id for h in first]
    assert sorted((db / "faiss").glob("*.index")) == cached

    write_pngs(tmp_path / "b", 5, prefix="new", start=500, size=32)
    labels = write_csv(tmp_path / "labels.csv", ["image_id", "tissue"], [["new000", "D"]])
    pc.ingest(tmp_path / "b", labels=labels, workers=0, progress=False)  # adds a column too
    hits = pc.search(image=tmp_path / "b" / "new000.png", k=3)
    assert hits[0].id == "new000" and hits[0].labels["tissue"] == "D"
    now = set((db / "faiss").glob("*.index"))
    assert len(now - set(cached)) == 1, "no FAISS index built for the new table version"
    assert not now & set(cached), "the old version's index file was not removed"
    assert len(pc.search(id="img005", k=30)) == 24  # all 25 rows of the new version, less itself


def test_backends_on_cpu() -> None:
    from priorcase.index.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    assert VectorIndex(vectors).backend == "exact"  # no GPU FAISS here: NumPy is faster
    queries = vectors[:50] + 0.01 * rng.standard_normal((50, 32)).astype(np.float32)
    exact = VectorIndex(vectors, "exact").search(queries, 5)
    flat = VectorIndex(vectors, "faiss").search(queries, 5)
    assert (exact.positions == flat.positions).all()
    hnsw = VectorIndex(vectors, "hnsw").search(queries, 5)
    assert (hnsw.positions[:, 0] == np.arange(50)).all()  # approximate, but finds the twin
    with pytest.raises(ValueError, match="unknown kNN backend"):
        VectorIndex(vectors, "annoy")
