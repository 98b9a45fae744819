"""Full-resolution previews for the side-by-side viewer, in a second LanceDB table.

Source paths are never stored (folder and file names from PACS exports carry patient
names), so the viewer cannot reopen a source file. Instead ingest stores each film once more
as a lossless PNG of its decoded 8-bit pixels in the table ``previews`` of the same LanceDB
connection as the cases (so it lives wherever the library does: a folder, S3, ...). Rows are
keyed on the case id; erasing a case erases its preview (``CaseStore.delete_cases``).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image

if TYPE_CHECKING:
    from priorcase.index.store import CaseStore

PREVIEW_TABLE = "previews"
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("png", pa.binary()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Preview:
    """One stored preview: lossless PNG bytes of the decoded film and its size in pixels."""

    id: str
    png: bytes
    width: int
    height: int


def encode_preview(pixels: np.ndarray) -> bytes:
    """Lossless PNG of uint8 pixels (HxW gray or HxWx3 RGB), at full resolution."""
    image = Image.fromarray(pixels if pixels.ndim == 2 else pixels[..., :3])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # level 3: near-best size, 3x faster
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the chunks that make the picture; every other one (text, EXIF, time, ICC, gamma) is left
# out: PNG text chunks can carry a patient's name, and gamma or ICC would make a browser
# show other values than the decoded pixels that were embedded
PICTURE_CHUNKS = (b"IHDR", b"IDAT", b"IEND")


def source_png_preview(data: bytes) -> bytes | None:
    """The source file itself as its preview, when it is a PNG whose decoded pixels are its
    stored samples (8-bit gray or RGB, no transparency), with only its picture chunks kept;
    else None (the pixels are then PNG-encoded). Saves encoding a film a second time."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kept, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        end = at + 12 + length
        if end > len(data):
            return None
        if kind == b"IHDR":
            bit_depth, colour_type = data[at + 16], data[at + 17]
            if bit_depth != 8 or colour_type not in (0, 2):  # 0 gray, 2 RGB
                return None
        elif kind in (b"tRNS", b"PLTE"):
            return None  # transparency or a palette: the decoder changed the samples
        if kind in PICTURE_CHUNKS:
            kept.append(data[at:end])
        if kind == b"IEND":
            return b"".join(kept)
        at = end
    return None


class Previews:
    """The ``previews`` table beside one :class:`CaseStore`'s ``cases`` table."""

    def __init__(self, store: CaseStore) -> None:
        self.store = store
        self._db = store._db  # the same connection: the same location and credentials

    def _table(self, create: bool = False):
        if PREVIEW_TABLE in self._db.list_tables().tables:
            return self._db.open_table(PREVIEW_TABLE)
        if not create:
            return None
        return self._db.create_table(PREVIEW_TABLE, schema=SCHEMA, exist_ok=True)

    def put(self, previews: list[Preview], update: bool = False) -> int:
        """Store previews; an existing id is replaced only when ``update`` (a corrected
        file), so a clashing file with a stored case's id never replaces that case's film."""
        unique = list({p.id: p for p in reversed(previews)}.values())  # first of an id wins
        if not unique:
            return 0
        data = pa.table(
            {
                "id": [p.id for p in unique],
                "png": [p.png for p in unique],
                "width": [p.width for p in unique],
                "height": [p.height for p in unique],
            },
            schema=SCHEMA,
        )

        def write() -> int:
            merge = self._table(create=True).merge_insert("id").when_not_matched_insert_all()
            if update:
                merge = merge.when_matched_update_all()
            result = merge.execute(data)
            return int(getattr(result, "num_inserted_rows", 0) or 0)

        return self.store._retry(write)

    def get(self, case_id: str) -> Preview | None:
        table = self._table()
        if table is None:
            return None
        quoted = case_id.replace("'", "''")
        rows = table.search().where(f"id = '{quoted}'").limit(1).to_list()
        if not rows:
            return None
        row = rows[0]
        return Preview(row["id"], row["png"], int(row["width"]), int(row["height"]))

    def delete(self, ids: list[str]) -> None:
        """Erase the previews of ``ids`` and compact, so their pixels leave the disk."""
        table = self._table()
        if table is None or not ids:
            return
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        self.store._retry(lambda: table.delete(f"id IN ({quoted})"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)

    def stats(self) -> tuple[int, int]:
        """(previews stored, total PNG bytes): the disk cost of full-resolution viewing."""
        table = self._table()
        if table is None:
            return 0, 0
        column = table.to_arrow().column("png")
        return len(column), int(sum(len(v.as_py() or b"") for v in column))


def store_previews(store: CaseStore, items: list[dict]) -> None:
    """Ingest hook: store each decoded item's ``preview``, the source PNG's picture chunks
    (bytes) or its pixels PNG-encoded here, keyed on its task's id."""
    fresh = [i for i in items if "preview" in i and not i["task"].update]
    fixed = [i for i in items if "preview" in i and i["task"].update]
    previews = Previews(store)
    for batch, update in ((fresh, False), (fixed, True)):
        previews.put(
            [Preview(i["task"].image_id, _png(i["preview"]), *_size(i["metadata"])) for i in batch],
            update=update,
        )


def _png(preview: bytes | np.ndarray) -> bytes:
    return preview if isinstance(preview, bytes) else encode_preview(preview)


def _size(metadata: dict) -> tuple[int, int]:
    return int(metadata["width"]), int(metadata["height"])
