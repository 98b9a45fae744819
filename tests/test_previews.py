"""Full-resolution previews: stored at ingest in a second LanceDB table, erased with the case."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import priorcase
from priorcase.index.previews import PREVIEW_TABLE, Previews, source_png_preview


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


def _png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_a_png_source_is_its_own_preview_without_its_text_chunks(tmp_path, bundled):
    from PIL.PngImagePlugin import PngInfo

    rng = np.random.default_rng(0)
    info = PngInfo()
    info.add_text("PatientName", "Doe^Jane")
    gray = rng.integers(0, 255, (96, 80), np.uint8)
    rgb = rng.integers(0, 255, (64, 64, 3), np.uint8)
    wide = (rng.integers(0, 65535, (64, 64))).astype(np.uint16)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "gray.png").write_bytes(_png(gray, pnginfo=info))
    (lib / "rgb.png").write_bytes(_png(rgb, pnginfo=info))
    (lib / "wide.png").write_bytes(_png(wide))  # 16-bit: the decoder rescales, so re-encoded
    (lib / "alpha.png").write_bytes(_png(np.dstack([rgb, gray[:64, :64]])))
    pc = priorcase.open(tmp_path / "db", encoder=bundled)
    pc.ingest(lib, progress=False, workers=0)
    previews = Previews(pc.store)
    for name in ("gray", "rgb", "wide", "alpha"):
        stored = previews.get(name)
        assert stored is not None and b"Doe" not in stored.png, name
        with Image.open(io.BytesIO(stored.png)) as image:
            shown = np.asarray(image)
        decoded = {"gray": gray, "rgb": rgb, "alpha": rgb}.get(name)
        if decoded is not None:
            assert np.array_equal(shown, decoded), name
        else:
            assert shown.dtype == np.uint8 and shown.shape == wide.shape
    # the gray and RGB sources are stored as they are, picture chunks only (no re-encoding)
    assert previews.get("gray").png == source_png_preview(_png(gray))
    assert source_png_preview(_png(wide)) is None
    assert source_png_preview(b"GIF89a...") is None
