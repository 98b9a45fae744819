"""Lesion-aware retrieval: breast crop/flip, tiles, box queries, tile scores (issue 9)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import table_rows, write_csv
from PIL import Image

import priorcase
from priorcase.classifiers.tiles import TileData, TileMILClassifier
from priorcase.cli import main
from priorcase.errors import PriorcaseError, QueryError
from priorcase.ingest.breast import BreastConfig, breast_view, clahe, segment_breast
from priorcase.ingest.tiles import TileConfig, sizes_from_radii, tile_boxes

FAST = {"workers": 0, "progress": False}


def film(side: str = "right", blob: tuple[int, int] | None = (300, 200), seed: int = 0):
    """A 320x256 film: a textured half-disc against the ``side`` edge, a bright label in the
    opposite top corner, and a bright blob (the lesion) at ``blob`` (x, y)."""
    height, width = 320, 256
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    edge = width - 1 if side == "right" else 0
    breast = (xx - edge) ** 2 + (yy - height / 2) ** 2 < 150**2
    rng = np.random.default_rng(seed)
    img = np.where(breast, 120 + rng.normal(0, 12, breast.shape), 4.0)
    label_x = slice(8, 40) if side == "right" else slice(width - 40, width - 8)
    img[8:24, label_x] = 250
    if blob is not None:
        bx, by = blob
        img[(xx - bx) ** 2 + (yy - by) ** 2 < 12**2] = 230
    return np.clip(img, 0, 255).astype(np.uint8), breast


# ---------------------------------------------------------------- preprocessing (pure numpy)
def test_segmentation_drops_the_label_and_keeps_the_breast() -> None:
    pixels, breast = film("right", blob=None)
    mask = segment_breast(pixels)
    assert not mask[8:24, 8:40].any(), "the label is not part of the breast"
    assert (mask & breast).sum() / breast.sum() > 0.97


@pytest.mark.parametrize("side", ["right", "left"])
def test_view_is_cropped_flipped_to_the_left_and_boxes_map_back(side: str) -> None:
    blob = (200, 160) if side == "right" else (55, 160)
    pixels, _ = film(side, blob=blob)
    view = breast_view(pixels, BreastConfig(policy="on"))
    assert view.flipped == (side == "right")
    assert view.width < pixels.shape[1], "cropped to the breast"
    # the breast touches the left edge of every view
    assert view.mask[:, :3].any() and not view.mask[:, -3:].any()
    source_box = (blob[0] - 20, blob[1] - 20, blob[0] + 20, blob[1] + 20)
    vbox = view.from_source(source_box)
    assert view.to_source(vbox) == source_box
    crop = view.crop(vbox)
    src = pixels[source_box[1] : source_box[3], source_box[0] : source_box[2]]
    assert np.array_equal(crop, src[:, ::-1] if view.flipped else src)
    x, y = view.point_from_source(*blob)
    assert view.pixels[y, x] == 230, "the blob centre lands on the blob"


def test_clahe_raises_local_contrast_of_a_flat_film() -> None:
    rng = np.random.default_rng(0)
    pixels = (100 + rng.integers(0, 8, (128, 128))).astype(np.uint8)
    out = clahe(pixels, clip=2.0, tiles=4)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert out.std() > 2 * pixels.std()  # clipped: a flat film gains contrast, not noise x10
    assert np.array_equal(out, clahe(pixels, clip=2.0, tiles=4))


def test_tiles_lie_inside_the_breast_and_their_count_is_bounded() -> None:
    pixels, _ = film("right")
    view = breast_view(pixels)
    cfg = TileConfig(sizes=(48, 96), overlap=0.5, min_inside=0.9, max_per_scale=12)
    boxes = tile_boxes(view, cfg)
    assert 0 < len(boxes) <= 24
    for size in (48, 96):
        assert 0 < sum(1 for b in boxes if b[2] - b[0] == size) <= 12
    for x0, y0, x1, y1 in boxes:
        assert view.mask[y0:y1, x0:x1].mean() >= 0.9
    assert sizes_from_radii([10, 40, 40, 90]) == (120, 224)  # p50 40, p90 75: 2 x 1.5 r
    assert sizes_from_radii([]) == TileConfig().sizes


# ---------------------------------------------------------------- ingest and queries
def _films(folder: Path) -> tuple[Path, Path, Path]:
    """Four films of two patients (left and right each); patient P1's right film has a lesion."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows, findings = [], []
    for n, (patient, side, lesion) in enumerate(
        [("P1", "R", True), ("P1", "L", False), ("P2", "R", False), ("P2", "L", False)]
    ):
        blob = ((200, 160) if side == "R" else (55, 160)) if lesion else None
        pixels, _ = film("right" if side == "R" else "left", blob=blob, seed=n)
        name = f"f{n}"
        Image.fromarray(pixels).save(images / f"{name}.png")
        pathology = "malignant" if lesion else "normal"
        rows.append([name, f"images/{name}.png", patient, side, pathology])
        if lesion:
            findings.append([name, "CIRC", "malignant", blob[0], blob[1], 15])
    labels = write_csv(
        folder / "images.csv", ["image_id", "file", "patient_id", "laterality", "pathology"], rows
    )
    found = write_csv(
        folder / "findings.csv",
        ["image_id", "abnormality", "severity", "x", "y", "radius"],
        findings,
    )
    return images, labels, found


@pytest.fixture(scope="module")
def mg_library(tmp_path_factory, tiny_clip):
    folder = tmp_path_factory.mktemp("lesion")
    images, labels, found = _films(folder)
    pc = priorcase.open(folder / "db", encoder=tiny_clip)
    report = pc.ingest(
        images, labels=labels, findings=found, modality="MG", tile_sizes=(64,), **FAST
    )
    return pc, folder, report


def test_mammography_ingest_stores_tiles_with_source_boxes(mg_library) -> None:
    pc, folder, report = mg_library
    assert report.stored_images == 4 and report.stored_tiles > 4 and not report.failures
    manifest = json.loads((pc.store.db_dir / "priorcase-manifest.json").read_text())
    assert manifest["breast"]["policy"] == "on" and manifest["tiles"]["sizes"] == [64]
    rows = table_rows(pc.store.db_dir).to_pylist()
    tiles = [r for r in rows if r["kind"] == "tile"]
    assert {r["parent_id"] for r in tiles} == {"f0", "f1", "f2", "f3"}
    for r in tiles:
        assert r["box_x1"] - r["box_x0"] == 64 and r["box_y1"] - r["box_y0"] == 64
        assert min(r["box_x0"], r["box_y0"]) >= 0 and r["box_x1"] <= 256 and r["box_y1"] <= 320
    # the lesion (source x=200, y=160 on a right film) falls in a tile labelled lesion
    lesion = [r for r in tiles if r["roi_type"] == "lesion"]
    assert lesion and all(r["parent_id"] == "f0" for r in lesion)
    assert all(
        r["box_x0"] <= 200 < r["box_x1"] and r["box_y0"] <= 160 < r["box_y1"] for r in lesion
    )
    normal_films = {r["parent_id"] for r in tiles if r["roi_type"] == "normal"}
    assert normal_films == {"f1", "f2", "f3"}
    # right films' tiles sit on the right of the source image (boxes are un-flipped)
    right = [r["box_x0"] for r in tiles if r["parent_id"] == "f0"]
    assert min(right) >= 256 - 150 - 1
    # a second ingest adds nothing, and another preprocessing is refused
    again = pc.ingest(folder / "images", modality="MG", **FAST)
    assert again.stored == 0 and again.duplicates == 4
    with pytest.raises(PriorcaseError, match="breast preprocessing"):
        pc.ingest(folder / "images", modality="CT", **FAST)


def test_box_query_finds_the_lesion_tile_and_film_hits_say_where(mg_library) -> None:
    pc, folder, _ = mg_library
    query = folder / "images" / "f0.png"
    rows = table_rows(pc.store.db_dir).to_pylist()
    lesion = next(r for r in rows if r["kind"] == "tile" and r["roi_type"] == "lesion")
    box = (lesion["box_x0"], lesion["box_y0"], lesion["box_x1"], lesion["box_y1"])
    hits = pc.search(image=query, box=box, k=3, kind="tile")
    assert hits[0].id == lesion["id"], "the same source box is its own nearest tile"
    assert hits[0].score > 0.999 and hits[0].box == box and hits[0].parent_id == "f0"
    films = pc.search(image=query, k=4)
    assert {h.kind for h in films} == {"image"}, "tiles answer region queries only"
    assert all(h.match and len(h.match["query_box"]) == 4 for h in films)
    own = next(h for h in films if h.id == "f0")
    assert own.match["query_box"] == own.match["hit_box"]
    with pytest.raises(QueryError, match="not inside"):
        pc.search(image=query, box=(0, 0, 999, 10))


def test_cli_box_search_json(mg_library, capsys) -> None:
    pc, folder, _ = mg_library
    db = str(pc.store.db_dir)
    query = str(folder / "images" / "f0.png")
    args = ["search", "--db", db, "--image", query, "--box", "168,128,232,192", "--kind", "tile"]
    code = main(["--device", "cpu", *args, "-k", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    first = out["results"][0]
    assert first["parent_id"] == "f0" and len(first["box"]) == 4
    assert main(["search", "--db", db, "--image", "x.png", "--box", "1,2,3"]) == 2


def test_tile_scores_rank_films_by_their_lesion_tiles() -> None:
    """Synthetic tiles: a lesion direction present in one tile of each positive film."""
    rng = np.random.default_rng(0)
    dim, lesion_dir = 16, np.eye(16)[0]
    tiles, lesions, ids, y, groups = {}, {}, [], [], []
    for n in range(40):
        film_id, positive = f"m{n:02d}", n % 2 == 0
        vectors = rng.normal(0, 1, (10, dim))
        boxes = np.array([[i * 10, 0, i * 10 + 10, 10] for i in range(10)])
        if positive:
            vectors[3:5] += 6 * lesion_dir  # overlapping tiles share a lesion
            lesions[film_id] = vectors[3:4] + rng.normal(0, 0.1, (1, dim))
        tiles[film_id] = (vectors, boxes, np.array([f"{film_id}-tile{i}" for i in range(10)]))
        ids.append(film_id)
        y.append("malignant" if positive else "not malignant")  # as --positive names them
        groups.append(f"P{n // 2}")
    data = TileData(tiles, lesions)
    model = TileMILClassifier(data).fit(np.array(ids[:30]), np.array(y[:30]), np.array(groups[:30]))
    proba = model.predict_proba(np.array(ids[30:]))[:, list(model.classes_).index("malignant")]
    truth = np.array(y[30:]) == "malignant"
    assert proba[truth].min() > proba[~truth].max()
    tile, box, _ = model.explain("m30")
    assert (tile, box) in {("m30-tile3", (30, 0, 40, 10)), ("m30-tile4", (40, 0, 50, 10))}


@pytest.mark.mias
def test_mias_breast_side_matches_laterality(mias) -> None:
    """On 20 real films the breast found on the right is the one labelled R (flipped)."""
    with open(mias.labels) as fh:
        rows = list(csv.DictReader(fh))[:20]
    for row in rows:
        pixels = np.asarray(Image.open(mias.root / row["file"]).convert("L"))
        view = breast_view(pixels)
        assert view.flipped == (row["laterality"] == "R"), row["image_id"]
        assert view.mask.mean() > 0.3
