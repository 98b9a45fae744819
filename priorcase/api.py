"""The library API: ``priorcase.open(db)`` returns a :class:`PriorCase` bound to one index."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from priorcase.classifiers.binarize import binary_label_names
from priorcase.classifiers.joint_space import JointSpace
from priorcase.classifiers.text_spaces import TextSpaces
from priorcase.core import Core
from priorcase.encoders import Encoder
from priorcase.errors import PriorcaseError, QueryError
from priorcase.index.store import CaseStore
from priorcase.ingest.pipeline import IngestOptions, ingest
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.ingest.readers import file_sha256, read_image
from priorcase.library import (
    DEFAULT_ALPHA,
    DEFAULT_KNN,
    Classification,
    KnnOptions,
    LibraryClassifiers,
    MethodPrediction,
)
from priorcase.records import IngestReport, LoadedImage, SearchHit
from priorcase.retrieval.reference import LibraryReference
from priorcase.retrieval.regions import (
    TileBank,
    add_matches,
    box_pixels,
    query_tiles,
    query_view,
)
from priorcase.retrieval.search import Searcher, check_k, check_text


class PriorCase:
    """A thin facade over one case library: the :class:`Core` (store, searcher, encoder)
    and the services wired on it (text spaces, reference distributions, classifiers).
    Arguments as :class:`Core`'s (the encoder is always the one the index was built with).
    """

    def __init__(
        self,
        db: str | Path,
        encoder: str | Encoder | None = None,
        device: str | None = None,
        backend: str = "auto",
        notify: Callable[[str], None] = print,
        target_recall: float | None = None,
        memory_budget_mb: float | None = None,
    ) -> None:
        self.core = Core(db, encoder, device, backend, notify)
        self.core.searcher.scaled.configure(memory_budget_mb, target_recall, notify)
        self.spaces = TextSpaces(self.core)
        self.reference = LibraryReference(self.spaces)
        self._classifiers: LibraryClassifiers | None = None

    @property
    def store(self) -> CaseStore:
        return self.core.store

    @property
    def searcher(self) -> Searcher:
        return self.core.searcher

    @property
    def encoder(self) -> Encoder:
        """The index's encoder, loaded on first use and checked against the manifest."""
        return self.core.encoder

    # ------------------------------------------------------------------ ingest
    def ingest(self, sources: Iterable[str | Path] | str | Path, **options) -> IngestReport:
        """Add images (files, folders, or object-storage URIs such as ``s3://bucket/prefix/``);
        options as :class:`IngestOptions` fields."""
        if isinstance(sources, (str, Path)):
            sources = [sources]
        return ingest(self.store, self.encoder, list(sources), IngestOptions(**options))

    def delete(
        self,
        ids: Iterable[str] = (),
        where: str | None = None,
        patient: str | None = None,
    ) -> tuple[int, int]:
        """Erase cases: by id, by a SQL filter, or every case of one patient pseudonym.

        Their ROIs and every derived file (saved heads, aligners, FAISS caches) go too, and
        the table is compacted so the pixels and thumbnails leave the disk. Returns (images,
        ROIs) deleted.
        """
        chosen = set(ids)
        if where is not None:
            chosen |= self.store.ids_matching(where)
        if patient is not None:
            chosen |= self.store.ids_of_patient(patient)
        if not chosen and not (where or patient):
            raise QueryError("give ids, a where filter or a patient pseudonym to delete")
        deleted = self.store.delete_cases(sorted(chosen))
        self.spaces.clear()
        self._classifiers = None
        return deleted

    def pseudonym(self, patient_id: str) -> str | None:
        """The library's pseudonym of a patient ID (its salt checked against the manifest)."""
        return self._pseudonymizer()(patient_id)

    def _pseudonymizer(self) -> Pseudonymizer:
        pseudonymize = Pseudonymizer.for_index(self.store.db_dir)
        if self.store.manifest is not None:
            self.store.manifest.check_salt(pseudonymize.fingerprint(), self.store.db_dir)
        return pseudonymize

    # ------------------------------------------------------------------ queries
    def read(self, path: str | Path) -> LoadedImage:
        """Decode a query file exactly as ingest would (DICOM identifiers pseudonymised)."""
        return read_image(Path(path), self._pseudonymizer())

    def embed(self, image: LoadedImage) -> np.ndarray:
        """The image-space vector of a decoded image, preprocessed as the index's films were."""
        return self.encoder.embed_pixels([query_view(self.store, image).pixels])[0]

    def tiles(self) -> TileBank:
        """The stored tiles (cached per table version)."""
        return self.core.tiles()

    def search(
        self,
        image: str | Path | LoadedImage | None = None,
        text: str | None = None,
        id: str | None = None,
        k: int = 10,
        where: str | None = None,
        exclude_same_patient: bool = False,
        kind: str | None = None,
        box: tuple[int, int, int, int] | None = None,
        match: bool = True,
    ) -> list[SearchHit]:
        """The k most similar cases to an image file, a text or a stored case id.

        ``box`` (x0, y0, x1, y1, source pixels of ``image``) searches with that region, among
        ROIs (or tiles where the index has no ROIs) unless ``kind`` says otherwise. ``match``
        adds, to each film hit of an index with tiles, its best-matching pair of tiles.
        """
        if sum(q is not None for q in (image, text, id)) != 1:
            raise QueryError("give exactly one of image, text or id")
        if box is not None:
            if image is None:
                raise QueryError("a box query needs an image")
            return self._search_box(image, box, k, where, exclude_same_patient, kind)
        exclude_group: str | None = None
        exclude_ids: set[str] = set()
        k = check_k(k)
        if text is not None:
            text = check_text(text)
            space = self.joint_space()
            vector = space.texts([text])[0]
            return self.searcher.search(vector, k, kind, where, space=space)
        if id is not None:
            row = self.store.fetch([id], with_vectors=True).get(id)
            if row is None:
                raise QueryError(f"no case with id {id!r} in {self.store.db_dir}")
            vector = np.asarray(row["vector"], dtype=np.float32)
            exclude_group = row["group"] if exclude_same_patient else None
            exclude_ids = {id}
        else:
            loaded = image if isinstance(image, LoadedImage) else self.read(image)  # type: ignore[arg-type]
            vector = self.embed(loaded)
            if exclude_same_patient:
                exclude_group = self.query_group(loaded)
        hits = self.searcher.search(vector, k, kind, where, exclude_group, exclude_ids)
        if match and kind in (None, "image") and len(self.tiles()):
            bank = self.tiles()
            if id is not None:
                mine = bank.of(id)
                add_matches(hits, bank, bank.boxes[mine], bank.vectors[mine])
            else:
                add_matches(hits, bank, *query_tiles(self.core, loaded))
        return hits

    def _search_box(
        self,
        image: str | Path | LoadedImage,
        box: tuple[int, int, int, int],
        k: int,
        where: str | None,
        exclude_same_patient: bool,
        kind: str | None,
    ) -> list[SearchHit]:
        loaded = image if isinstance(image, LoadedImage) else self.read(image)
        crop = box_pixels(query_view(self.store, loaded), tuple(box), loaded.path)  # type: ignore[arg-type]
        vector = self.encoder.embed_pixels([crop])[0]
        kind = kind or ("roi" if self.store.count("roi") else "tile")
        group = self.query_group(loaded) if exclude_same_patient else None
        return self.searcher.search(vector, k, kind, where, group)

    def search_batch(
        self,
        images: Sequence[str | Path | LoadedImage],
        k: int = 10,
        where: str | None = None,
        exclude_same_patient: bool = False,
        kind: str | None = None,
        batch_size: int = 32,
    ) -> list[list[SearchHit]]:
        """The k most similar cases to each image, in order: images are embedded in batches
        and searched with one batched kNN call (per distinct same-patient exclusion)."""
        loaded = [im if isinstance(im, LoadedImage) else self.read(im) for im in images]
        if not loaded:
            return []
        # preprocessed as the index's films were (breast crop and flip), like embed()
        views = [query_view(self.store, im).pixels for im in loaded]
        vectors = np.concatenate(
            [
                self.encoder.embed_pixels(views[i : i + batch_size])
                for i in range(0, len(views), batch_size)
            ]
        )
        groups = [self.query_group(im) if exclude_same_patient else None for im in loaded]
        return self.searcher.search_batch(vectors, check_k(k), kind, where, groups)

    def build_indexes(self) -> str:
        """Bring the search indexes up to date (``priorcase index``); a one-line summary each."""
        return self.searcher.scaled.prepare()

    def query_group(self, image: LoadedImage) -> str | None:
        """The query's group: that of its stored copy (same bytes), else its DICOM patient."""
        stored = self.store.stored_copy(file_sha256(image.path)) if image.path.is_file() else None
        if stored is not None and stored[1] is not None:
            return stored[1]
        return image.patient

    # ------------------------------------------------------------------ classification
    @property
    def classifiers(self) -> LibraryClassifiers:
        """Classifiers fitted on this library (cached per table version)."""
        if self._classifiers is None:
            self._classifiers = LibraryClassifiers(self.core, self.spaces, self.reference)
        return self._classifiers

    def as_of(self, version: int) -> None:
        """Answer from an earlier table version from now on (LanceDB checkout)."""
        self.store.pin_version(version)

    def classify(
        self,
        image: str | Path | LoadedImage | np.ndarray,
        label: str,
        methods: tuple[str, ...] = ("knn", "logreg", "zeroshot"),
        kind: str = "image",
        knn: KnnOptions = DEFAULT_KNN,
        exclude_same_patient: bool = False,
        alpha: float = DEFAULT_ALPHA,
    ) -> Classification:
        """Class probabilities per method for one image (file, decoded image or vector).

        ``exclude_same_patient`` keeps the query's patient (its stored copy's, or its DICOM
        patient's) out of the kNN vote.
        """
        group = None
        stored_id = None
        loaded = None
        if isinstance(image, np.ndarray) and image.ndim == 1:
            vector = image
        else:
            loaded = image if isinstance(image, LoadedImage) else self.read(image)  # type: ignore[arg-type]
            vector = self.embed(loaded)
            group = self.query_group(loaded) if exclude_same_patient else None
            # a library image asked again: its heads were trained on it, so say so
            if loaded.path.is_file():
                stored = self.store.stored_copy(file_sha256(loaded.path))
                stored_id = stored[0] if stored else None
        others = tuple(m for m in methods if m != "tiles")
        result = self.classifiers.classify(
            vector, label, others, kind, knn, group, query_id=stored_id, alpha=alpha
        )
        if "tiles" in methods and not result.abstain:
            result.predictions.insert(list(methods).index("tiles"), self._tiles_say(loaded, label))
        return result

    def _tiles_say(self, image: LoadedImage | None, label: str) -> MethodPrediction:
        """The tile head's answer for a film, with the tile that drove it."""
        prediction = MethodPrediction("tiles")
        try:
            if image is None:
                raise QueryError("tiles needs the image, not a vector")
            model, data = self.classifiers.fitted("tiles", label)
            boxes, vectors = query_tiles(self.core, image)
            if not len(vectors):
                raise QueryError("the index has no tiles (ingest with --modality MG)")
            p, best = model.score_tiles(vectors)
            negative, positive = binary_label_names(data.positive)
            prediction.probabilities = {positive: p, negative: 1 - p}
            x0, y0, x1, y1 = (int(v) for v in boxes[best])
            prediction.explanation = (
                f"max-lesion tile at {x0},{y0},{x1},{y1} (tile head on {len(data.y)} films)"
            )
            prediction.box = (x0, y0, x1, y1)
        except (PriorcaseError, ValueError) as err:
            prediction.error = str(err).splitlines()[0]
        return prediction

    # ------------------------------------------------------------------ text space
    def joint_space(self) -> JointSpace:
        """Where texts meet images (see :meth:`TextSpaces.joint_space`)."""
        return self.spaces.joint_space()

    def reports(self, kind: str | None = None) -> tuple[np.ndarray, list[str]]:
        """Stored vectors with a report sentence written from each row's labels."""
        return self.spaces.reports(kind)

    def reports_by_id(self, kind: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """Vectors, report sentences and ids of every labelled row."""
        return self.spaces.reports_by_id(kind)


def open(db: str | Path, encoder: str | Encoder | None = None, **kwargs) -> PriorCase:
    """Open (or create) the case library at ``db``."""
    return PriorCase(db, encoder=encoder, **kwargs)
