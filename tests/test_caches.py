"""Derived files and memory caches: keyed by content, atomic, validated, locked, bounded."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import lancedb
import numpy as np
import pytest
from fixtures import write_csv, write_pngs

import priorcase
from priorcase.index.store import TABLE_NAME

TEXTURES = ["fatty", "dense", "glandular"]


def _labelled_library(root: Path, encoder, n: int = 12) -> Path:
    files = write_pngs(root / "images", n, size=32)
    labels = write_csv(
        root / "labels.csv",
        ["image_id", "patient_id", "tissue"],
        [[f.stem, f"P{i // 2}", TEXTURES[i % 3]] for i, f in enumerate(files)],
    )
    db = root / "db"
    report = priorcase.open(db, encoder=encoder).ingest(
        root / "images", labels=labels, workers=0, progress=False
    )
    assert report.stored_images == n
    return db


def test_recreated_table_at_same_path_never_reuses_the_old_faiss_index(
    tmp_path: Path, tiny_clip
) -> None:
    """LanceDB restarts versions for a recreated table: a version-keyed cache went stale."""
    db = tmp_path / "db"
    write_pngs(tmp_path / "a", 50, prefix="a", size=32)
    pc = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    pc.ingest(tmp_path / "a", workers=0, progress=False)
    assert pc.search(image=tmp_path / "a" / "a003.png", k=1)[0].id == "a003"
    assert len(list((db / "faiss").glob("*.index"))) == 1

    lancedb.connect(str(db)).drop_table(TABLE_NAME)  # same path, version restarts at 1
    write_pngs(tmp_path / "b", 50, prefix="b", start=1000, size=32)
    pc = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    pc.ingest(tmp_path / "b", workers=0, progress=False)
    fresh = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    hits = fresh.search(image=tmp_path / "b" / "b003.png", k=3)
    assert hits[0].id == "b003" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    exact = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="exact")
    assert [h.id for h in exact.search(image=tmp_path / "b" / "b003.png", k=3)] == [
        h.id for h in hits
    ]
    assert len(list((db / "faiss").glob("*.index"))) == 1, "the old table's index was kept"


def test_corrupt_faiss_cache_file_is_rebuilt_not_trusted(tmp_path: Path, tiny_clip) -> None:
    db = tmp_path / "db"
    write_pngs(tmp_path / "a", 20, size=32)
    pc = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
    pc.ingest(tmp_path / "a", workers=0, progress=False)
    pc.search(id="img004", k=3)
    (cached,) = (db / "faiss").glob("*.index")
    for damage in (b"", b"not a faiss index"):
        cached.write_bytes(damage)
        fresh = priorcase.open(db, encoder=tiny_clip, device="cpu", backend="faiss")
        assert fresh.search(image=tmp_path / "a" / "img004.png", k=1)[0].id == "img004"
        assert cached.stat().st_size > 1000  # rewritten


def test_hundred_clip_text_queries_keep_a_bounded_number_of_matrices(
    tmp_path: Path, tiny_clip
) -> None:
    write_pngs(tmp_path / "images", 30, size=32)
    pc = priorcase.open(tmp_path / "db", encoder=tiny_clip, device="cpu")
    pc.ingest(tmp_path / "images", workers=0, progress=False)
    stored = pc.store.snapshot(None)
    for i in range(100):
        text = f"a mammogram with finding number {i}"
        hits = pc.search(text=text, k=3)
        expected = stored.ids[np.argsort(-(stored.vectors @ tiny_clip.embed_texts([text])[0]))[:3]]
        assert [h.id for h in hits] == list(expected)
    indexes = list(pc.searcher._indexes.values())
    assert len(indexes) == 1, f"{len(indexes)} kNN matrices cached after 100 text queries"
    assert len(pc.searcher._indexes) <= pc.searcher._indexes.maxsize


def test_zero_byte_aligner_is_rebuilt_with_a_notice(tmp_path: Path, bundled) -> None:
    """A full disk once left a 0-byte aligner that broke text search for good."""
    db = _labelled_library(tmp_path, bundled)
    pc = priorcase.open(db, encoder=bundled, notify=lambda m: None)
    first = [h.id for h in pc.search(text="dense tissue", k=4)]
    (aligner,) = db.glob("text-aligner-*.pt")
    aligner.write_bytes(b"")  # what a full disk left behind
    notes: list[str] = []
    fresh = priorcase.open(db, encoder=bundled, notify=notes.append)
    assert [h.id for h in fresh.search(text="dense tissue", k=4)] == first
    assert any("unusable" in n and aligner.name in n for n in notes), notes
    assert aligner.stat().st_size > 0
    assert not list(db.glob(".text-aligner-*.tmp")), "a temp file was left behind"


def test_aligner_and_heads_follow_the_content_not_the_version(tmp_path: Path, bundled) -> None:
    db = _labelled_library(tmp_path / "one", bundled)
    pc = priorcase.open(db, encoder=bundled, notify=lambda m: None)
    pc.search(text="dense tissue", k=2)
    pc.classifiers.fitted("logreg", "tissue")
    (aligner,) = db.glob("text-aligner-*.pt")
    (head,) = (db / "classifiers").glob("image-tissue-logreg-*.joblib")
    # the same table rebuilt from other images: versions restart, names must not repeat
    lancedb.connect(str(db)).drop_table(TABLE_NAME)
    files = write_pngs(tmp_path / "two", 12, start=300, size=32)
    labels = write_csv(
        tmp_path / "two.csv",
        ["image_id", "patient_id", "tissue"],
        [[f.stem, f"Q{i}", TEXTURES[(i + 1) % 3]] for i, f in enumerate(files)],
    )
    priorcase.open(db, encoder=bundled).ingest(
        tmp_path / "two", labels=labels, workers=0, progress=False
    )
    notes: list[str] = []
    fresh = priorcase.open(db, encoder=bundled, notify=notes.append)
    fresh.search(text="dense tissue", k=2)
    fresh.classifiers.fitted("logreg", "tissue")
    assert any("learning text-image alignment" in n for n in notes), "old aligner reused"
    assert [p.name for p in db.glob("text-aligner-*.pt")] != [aligner.name]
    assert [p.name for p in (db / "classifiers").glob("*-logreg-*.joblib")] != [head.name]


def test_threads_fitting_the_same_head_fit_it_once(tmp_path: Path, bundled) -> None:
    """The UI warm-up thread and a first user asked for the same head at the same moment."""
    db = _labelled_library(tmp_path, bundled)
    notes: list[str] = []
    pc = priorcase.open(db, encoder=bundled, notify=notes.append)
    results: list = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def use() -> None:
        try:
            barrier.wait()
            results.append((pc.classifiers.fitted("logreg", "tissue")[0], pc.joint_space()))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({id(head) for head, _ in results}) == 1
    assert len({id(space) for _, space in results}) == 1
    assert sum("learning text-image alignment" in n for n in notes) == 1


def _first_use(db: str, out: str) -> None:
    from priorcase.encoders import create_encoder

    encoder = create_encoder("bundled", "cpu")
    notes: list[str] = []
    pc = priorcase.open(db, encoder=encoder, notify=notes.append)
    model, _ = pc.classifiers.fitted("logreg", "tissue")
    pc.search(text="dense tissue", k=2)
    classes = ",".join(sorted(map(str, model.classes_)))
    Path(out).write_text("\n".join([*notes, f"classes {classes}"]))


@pytest.mark.slow
def test_two_processes_first_use_never_read_a_half_written_file(tmp_path: Path, bundled) -> None:
    db = _labelled_library(tmp_path, bundled)
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"out{i}.txt" for i in range(2)]
    procs = [ctx.Process(target=_first_use, args=(str(db), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    texts = [o.read_text() for o in outs]
    assert all(f"classes {','.join(sorted(TEXTURES))}" in t for t in texts), texts
    assert not any("unusable" in t for t in texts), texts
    # the file lock lets one process fit the aligner; the other loads what it wrote
    assert sum(t.count("learning text-image alignment") for t in texts) == 1, texts
    assert len(list(db.glob("text-aligner-*.pt"))) == 1
    assert len(list((db / "classifiers").glob("*.joblib"))) == 1


def test_full_disk_while_saving_leaves_no_file_and_still_answers(tmp_path: Path) -> None:
    """ENOSPC in the middle of a write: the caller gets its object, the disk no partial file."""
    import errno

    from priorcase.index.artifacts import load_or_build

    def save_half(obj: bytes, tmp: Path) -> None:
        tmp.write_bytes(obj[:3])  # what was written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    notes: list[str] = []
    path = tmp_path / "artefact.bin"
    built = load_or_build(path, Path.read_bytes, lambda: b"payload", save_half, notes.append)
    assert built == b"payload"
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))
    assert any("No space left" in n for n in notes), notes
    # once there is room again, the next use writes it
    again = load_or_build(path, Path.read_bytes, lambda: b"payload", lambda o, t: t.write_bytes(o))
    assert again == b"payload" and path.read_bytes() == b"payload"
