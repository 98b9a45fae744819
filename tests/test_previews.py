"""Full-resolution previews: stored at ingest in a second LanceDB table, erased with the case."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import priorcase
from priorcase.index.previews import PREVIEW_TABLE, Previews


def test_previews_are_full_resolution_and_deleted_with_the_case(tmp_path, mias, bundled):
    files = [mias.images / f"mdb00{n}.png" for n in (1, 2, 3)]
    pc = priorcase.open(tmp_path / "db", encoder=bundled)
    pc.ingest(files, progress=False, workers=0)
    previews = Previews(pc.store)
    stored = previews.get("mdb002")
    assert stored is not None and (stored.width, stored.height) == (1024, 1024)
    with Image.open(io.BytesIO(stored.png)) as image:
        source = np.asarray(Image.open(files[1]).convert("L"))
        assert np.array_equal(np.asarray(image), source)  # lossless, full size
    assert previews.stats()[0] == 3
    pc.ingest(files, progress=False, workers=0)  # a re-ingest stores nothing twice
    assert previews.stats()[0] == 3
    assert PREVIEW_TABLE in pc.store._db.list_tables().tables
    pc.delete(["mdb002"])
    assert previews.get("mdb002") is None and previews.stats()[0] == 2
