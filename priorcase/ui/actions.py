"""What the UI does, without Gradio: decode a query, search, classify, map. Also benchmarked."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from priorcase.api import PriorCase
from priorcase.encoders.preprocess import model_view
from priorcase.errors import ImageReadError, QueryError
from priorcase.index.store import field_name
from priorcase.ingest.readers import SUPPORTED_SUFFIXES, file_sha256
from priorcase.records import LoadedImage, SearchHit
from priorcase.retrieval.reference import Reference, search_reference
from priorcase.retrieval.regions import add_matches, query_tiles, query_view
from priorcase.ui.classify_panel import ClassifyPanel
from priorcase.ui.library_view import LibraryMap, map_svg

ANY = "any"
ALL_KINDS = "all"
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".pgm")
MAX_UPLOAD_MB = 50


@dataclass
class Query:
    """An image query: its embedding plus what to show about it."""

    name: str
    vector: np.ndarray
    view: Image.Image  # what the model saw (letterboxed, before normalisation)
    metadata: dict[str, str] = field(default_factory=dict)
    group: str | None = None  # patient pseudonym (DICOM) or stored group
    stored_id: str | None = None  # set when the query is (a copy of) an indexed case
    from_index: bool = False  # chosen by id (so searches leave the case itself out)
    note: str = ""
    loaded: LoadedImage | None = None  # the decoded upload (its file is deleted once read)


def upload_name(metadata: dict[str, str]) -> str:
    """ "uploaded image (MG · MLO · L)": the coded DICOM fields only, never the file name."""
    fields = [metadata.get(k) for k in ("modality", "view_position", "laterality")]
    safe = " · ".join(f for f in fields if f)
    return f"uploaded image ({safe})" if safe else "uploaded image"


class UploadError(Exception):
    """An upload that cannot be used; ``str()`` is the message shown in the page."""


class Actions:
    """One library's UI operations (thread-safe enough for Gradio's worker threads)."""

    def __init__(self, pc: PriorCase) -> None:
        self.pc = pc
        self.classifier = ClassifyPanel(pc)
        self.library = LibraryMap(pc)
        # The bundled encoder's text aligner is trained on first use (minutes on a big
        # library): one thread trains it while other text queries wait instead of repeating it.
        self._text_lock = threading.Lock()

    def warm_up(self, column: str | None = None) -> None:
        """Build the one-off caches (kNN index, text aligner, classifiers, PCA) ahead of use."""
        if self.pc.store.count() == 0:
            return
        snapshot = self.pc.store.snapshot("image")
        self.pc.searcher.index_for(snapshot, "image")
        try:
            with self._text_lock:
                self.pc.joint_space()
        except QueryError:
            pass  # no labels: text search will say so when asked
        columns = self.classifier.columns("image")
        if column in columns and len(snapshot.ids):
            query = Query("warm-up", snapshot.vectors[0], Image.new("RGB", (1, 1)))
            self.classify(query, column)
        self.library.projection("image")

    # ------------------------------------------------------------------ queries
    def query_from_upload(self, path: str | Path) -> Query:
        """Decode, check and embed an uploaded file; bad files raise :class:`UploadError`.

        The file's name is never shown (PACS exports put patient names in file names): the
        query is "uploaded image" plus its coded DICOM fields (modality, view, laterality).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix and suffix not in SUPPORTED_SUFFIXES:
            raise UploadError(
                f"The uploaded file is not a supported image type ({suffix}); "
                f"upload one of {', '.join(UPLOAD_SUFFIXES)}"
            )
        size = path.stat().st_size
        if size > MAX_UPLOAD_MB * 1024 * 1024:
            raise UploadError(
                f"The uploaded file is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB"
            )
        try:
            loaded = self.pc.read(path)
        except ImageReadError as err:
            raise UploadError(f"Could not read the uploaded image: {err.reason}") from None
        vector = self.pc.embed(loaded)
        height, width = loaded.pixels.shape[:2]
        metadata = {**loaded.metadata, "width": str(width), "height": str(height)}
        query = Query(
            name=upload_name(loaded.metadata),
            vector=vector,
            loaded=loaded,
            # as preprocessed: breast crop and flip where the index does that
            view=model_view(
                query_view(self.pc.store, loaded).pixels, self.pc.encoder.preprocess_cfg
            ),
            metadata=metadata,
            group=loaded.patient,
        )
        stored = self.pc.store.stored_copy(file_sha256(path))
        if stored is not None:
            query.stored_id, query.group = stored[0], stored[1] or query.group
            query.note = f"This file is already in the library as case {stored[0]}."
        return query

    def query_from_id(self, case_id: str) -> Query:
        """A stored case as the query (its stored vector; the view from its thumbnail)."""
        case_id = (case_id or "").strip()
        if not case_id:
            raise QueryError("choose a case id first")
        row = self.pc.store.fetch([case_id], with_vectors=True).get(case_id)
        if row is None:
            raise QueryError(f"no case with id {case_id!r} in this library")
        hit = self.pc.store.row_to_hit(row, 1.0)
        with Image.open(io.BytesIO(hit.thumbnail or b"")) as thumb:
            pixels = np.asarray(thumb.convert("L"))
        meta = {k: str(v) for k, v in hit.metadata.items() if v not in (None, "")}
        return Query(
            name=case_id,
            vector=np.asarray(row["vector"], dtype=np.float32),
            view=model_view(pixels, self.pc.encoder.preprocess_cfg),
            metadata=meta,
            group=hit.group,
            stored_id=case_id,
            from_index=True,
            note="",
        )

    # ------------------------------------------------------------------ search
    def filter_columns(self) -> dict[str, list[str]]:
        """Label column -> sorted values, for the per-label filter dropdowns."""
        manifest = self.pc.store.manifest
        if manifest is None:
            return {}
        out = {}
        for column in manifest.label_columns:
            if column == manifest.group_column:
                continue
            values = sorted({v for v in self.pc.store.column_values(column).values() if v})
            if values:
                out[column] = values
        return out

    @staticmethod
    def where_clause(filters: dict[str, str | None], free: str | None) -> str | None:
        """The free SQL predicate AND-ed with one equality per chosen label value."""
        parts = []
        if free and free.strip():
            parts.append(f"({free.strip()})")
        for column, value in filters.items():
            if value and value != ANY:
                escaped = value.replace("'", "''")
                parts.append(f"`{field_name(column)}` = '{escaped}'")
        return " AND ".join(parts) or None

    @staticmethod
    def kind_arg(kind: str | None) -> str | None:
        return None if kind in (None, "", ALL_KINDS) else kind

    def search_vector(
        self,
        query: Query,
        k: int = 10,
        kind: str | None = "image",
        where: str | None = None,
        exclude_same_patient: bool = False,
    ) -> list[SearchHit]:
        """Nearest cases to an image query (a stored query never returns itself)."""
        exclude_group = query.group if exclude_same_patient else None
        exclude_ids = {query.stored_id} if query.from_index and query.stored_id else None
        hits = self.pc.searcher.search(
            query.vector, int(k), self.kind_arg(kind), where, exclude_group, exclude_ids
        )
        if self.kind_arg(kind) in (None, "image") and len(self.pc.tiles()):
            bank = self.pc.tiles()  # where it matched: the best (query tile, hit tile) pair
            if query.loaded is not None:
                add_matches(hits, bank, *query_tiles(self.pc.core, query.loaded))
            elif query.stored_id:
                mine = bank.of(query.stored_id)
                add_matches(hits, bank, bank.boxes[mine], bank.vectors[mine])
        return hits

    def hidden_by_exclusion(self, query: Query, kind: str | None) -> int | None:
        """How many library rows of ``kind`` "exclude same patient" hides for this query (the
        query itself not counted); None when the query has no patient identity."""
        if query.group is None:
            return None
        snapshot = self.pc.store.snapshot(self.kind_arg(kind))
        same = (snapshot.groups == query.group) | (snapshot.patients == query.group)
        if query.stored_id:
            same &= snapshot.ids != query.stored_id
        return int(same.sum())

    def search_text(
        self, text: str, k: int = 10, kind: str | None = "image", where: str | None = None
    ) -> list[SearchHit]:
        text = (text or "").strip()
        if not text:
            raise QueryError("type a description to search for, e.g. 'dense glandular breast'")
        with self._text_lock:
            self.pc.joint_space()  # fitted once per training data (see PriorCase.joint_space)
        return self.pc.search(text=text, k=int(k), kind=self.kind_arg(kind), where=where)

    def search_reference(
        self, hits: list[SearchHit], text: str | None, kind: str | None
    ) -> tuple[Reference, str, list[float | None]]:
        """The search's reference status, a sentence on where its best score sits, and each
        hit's score as a percentile of the library's own nearest-neighbour scores."""
        reference, percentiles = search_reference(self.pc, hits, text, self.kind_arg(kind))
        percentiles = list(percentiles) if percentiles is not None else [None] * len(hits)
        if not hits or percentiles[0] is None:
            return reference, "", percentiles
        return (
            reference,
            (
                f" Best score {hits[0].score:.3f}: percentile {percentiles[0]:.0f} of this "
                "library's own nearest-neighbour scores."
            ),
            percentiles,
        )

    def parent_of(self, hit: SearchHit) -> SearchHit | None:
        """The whole-film row an ROI hit was cut from (thumbnail and metadata)."""
        if not hit.parent_id:
            return None
        row = self.pc.store.fetch([hit.parent_id]).get(hit.parent_id)
        return None if row is None else self.pc.store.row_to_hit(row, 0.0)

    # ------------------------------------------------------------------ classify / map
    def classify(
        self,
        query: Query,
        column: str,
        kind: str | None = "image",
        exclude_same_patient: bool = True,
        wait: bool = True,
    ):
        """Per-method probabilities for ``column`` (kNN leaves the query's patient out);
        ``wait=False`` leaves out heads still being fitted (see ``ClassifyPanel.pending``)."""
        kind = self.kind_arg(kind) or "image"
        group = query.group if (exclude_same_patient or query.stored_id) else None
        if query.stored_id and group is None:
            group = query.stored_id
        return self.classifier.classify(
            query.vector, column, kind, exclude_group=group, query_id=query.stored_id, wait=wait
        )

    def library_map(self, column: str | None, kind: str | None, query: Query | None) -> str:
        """The interactive SVG map, with the query (if any) as a star."""
        vector = None if query is None else query.vector
        name = query.name if query else "query"
        return map_svg(self.library, column, self.kind_arg(kind), vector, name)
