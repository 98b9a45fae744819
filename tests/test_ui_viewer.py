"""Viewer panes, vocabulary and export without a browser (fast): overlays, mirroring, words."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures import write_csv, write_pngs

import priorcase
from priorcase.index.vocabulary import (
    MIAS_VOCABULARY,
    VOCABULARY_FILE,
    expand,
    load_vocabulary,
    read_vocabulary,
)
from priorcase.records import SearchHit
from priorcase.ui.gallery import cards_html
from priorcase.ui.viewer import THUMBNAIL_NOTE, Pane, _orient, case_pane


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("viewer")
    files = write_pngs(root / "images", 4, size=48)
    labels = write_csv(
        root / "labels.csv",
        ["image_id", "patient_id", "tissue"],
        [[f.stem, f"P{i}", "FGD"[i % 3]] for i, f in enumerate(files)],
    )
    (root / VOCABULARY_FILE).write_text(json.dumps({"tissue": {"D": "dense-glandular"}}))
    pc = priorcase.open(root / "db", encoder=tiny_clip)
    pc.ingest(root / "images", labels=labels, workers=0, progress=False)
    return pc, files


def test_vocabulary_beside_the_labels_is_recorded_at_ingest(tiny):
    pc, _ = tiny
    vocabulary = load_vocabulary(pc.store.db_dir)
    assert expand(vocabulary, "tissue", "D") == "dense-glandular (D)"
    assert expand(vocabulary, "tissue", "Q") == "Q"  # unknown codes are shown as they are
    mias = read_vocabulary(MIAS_VOCABULARY)
    assert mias["abnormality"]["SPIC"] == "spiculated mass" and mias["severity"]["M"]


def test_case_pane_draws_matched_region_and_roi_on_the_full_film(tiny):
    pc, files = tiny
    row = pc.store.fetch([files[1].stem])[files[1].stem]
    hit = pc.store.row_to_hit(row, 0.9)
    hit.match = {"query_box": [0, 0, 10, 10], "hit_box": [4, 4, 20, 20], "score": 0.8}
    pane = case_pane(pc, hit, 1)
    assert (pane.width, pane.height) == (48, 48)  # the preview: full resolution
    assert pane.resolution != THUMBNAIL_NOTE
    assert ("matched", (4, 4, 20, 20)) in pane.boxes
    roi = SearchHit("x-roi0", 0.5, "roi", {}, {}, parent_id=files[1].stem, roi=(24, 24, 5))
    assert case_pane(pc, roi, 2).circles == [("ROI", (24, 24, 5))]


def test_mirroring_flips_the_overlays_with_the_film():
    film = np.zeros((40, 60), np.uint8)
    film[5:35, 40:60] = 200  # breast on the right: mirrored to the left
    pane = _orient(Pane("t", None, boxes=[("matched", (45, 10, 55, 20))]), film, True)
    assert pane.mirrored and pane.boxes == [("matched", (5, 10, 15, 20))]


def test_cards_have_both_actions_and_words(tiny):
    pc, files = tiny
    hits = pc.search(id=files[0].stem, k=3)
    html = cards_html(hits, [99.0, 50.0, None], {"tissue": {"D": "dense-glandular"}})
    assert html.count("Search with this case") == len(hits)
    assert "99th percentile" in html and "50th percentile" in html
