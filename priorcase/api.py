"""The library API: ``priorcase.open(db)`` returns a :class:`PriorCase` bound to one index."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from priorcase.classifiers.alignment import ContrastiveAligner
from priorcase.classifiers.joint_space import ClipSpace, JointSpace
from priorcase.classifiers.reports import report_from_labels
from priorcase.encoders import Encoder, create_default_encoder, create_encoder
from priorcase.errors import EncoderMismatchError, QueryError
from priorcase.index.store import CaseStore
from priorcase.ingest.pipeline import ROI_TYPE, IngestOptions, ingest
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.ingest.readers import file_sha256, read_image
from priorcase.library import DEFAULT_KNN, Classification, KnnOptions, LibraryClassifiers
from priorcase.records import IngestReport, LoadedImage, SearchHit
from priorcase.retrieval.scaled import Query
from priorcase.retrieval.search import Searcher

ALIGNER_PREFIX = "text-aligner-v"


class PriorCase:
    """One case library (a LanceDB directory) and the encoder that built it.

    The encoder is the one recorded in the index; ``encoder`` may name it again but never
    another one. For a new index, ``encoder=None`` means the default CLIP model, or the
    bundled encoder when its weights cannot be had (said in one line through ``notify``).
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
        self.store = CaseStore(db)
        self.searcher = Searcher(self.store, backend=backend, use_gpu=device != "cpu")
        self.searcher.scaled.configure(memory_budget_mb, target_recall, notify)
        self._encoder_arg = encoder
        self._device = device
        self._notify = notify
        self._encoder: Encoder | None = encoder if isinstance(encoder, Encoder) else None
        self._space: tuple[int, JointSpace] | None = None
        self._classifiers: LibraryClassifiers | None = None
        manifest = self.store.manifest
        if manifest is not None and isinstance(encoder, str) and encoder != manifest.encoder_spec:
            raise EncoderMismatchError(
                f"index {self.store.db_dir} was built with encoder {manifest.encoder_spec!r}; "
                f"refusing {encoder!r}: embeddings of two encoders are not comparable"
            )

    # ------------------------------------------------------------------ encoder
    @property
    def encoder(self) -> Encoder:
        """The index's encoder, loaded on first use and checked against the manifest."""
        if self._encoder is None:
            manifest = self.store.manifest
            spec = manifest.encoder_spec if manifest else self._encoder_arg
            if spec is None:
                self._encoder = create_default_encoder(self._device, notify=self._notify)
            else:
                self._encoder = create_encoder(str(spec), self._device)
        if self.store.manifest is not None:
            self.store.manifest.check_encoder(self._encoder.describe(), self.store.db_dir)
        return self._encoder

    # ------------------------------------------------------------------ ingest
    def ingest(self, sources: Iterable[str | Path] | str | Path, **options) -> IngestReport:
        """Add images (files or folders); options as :class:`IngestOptions` fields."""
        if isinstance(sources, (str, Path)):
            sources = [sources]
        return ingest(self.store, self.encoder, list(sources), IngestOptions(**options))

    # ------------------------------------------------------------------ queries
    def read(self, path: str | Path) -> LoadedImage:
        """Decode a query file exactly as ingest would (DICOM identifiers pseudonymised)."""
        return read_image(Path(path), Pseudonymizer.for_index(self.store.db_dir))

    def embed(self, image: LoadedImage) -> np.ndarray:
        """The image-space vector of a decoded image."""
        return self.encoder.embed_pixels([image.pixels])[0]

    def search(
        self,
        image: str | Path | LoadedImage | None = None,
        text: str | None = None,
        id: str | None = None,
        k: int = 10,
        where: str | None = None,
        exclude_same_patient: bool = False,
        kind: str | None = None,
    ) -> list[SearchHit]:
        """The k most similar cases to an image file, a text or a stored case id."""
        if sum(q is not None for q in (image, text, id)) != 1:
            raise QueryError("give exactly one of image, text or id")
        exclude_group: str | None = None
        exclude_ids: set[str] = set()
        if text is not None:
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
        return self.searcher.search(vector, k, kind, where, exclude_group, exclude_ids)

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
        vectors = [
            self.encoder.embed_pixels([im.pixels for im in loaded[i : i + batch_size]])
            for i in range(0, len(loaded), batch_size)
        ]
        groups = [self.query_group(im) if exclude_same_patient else None for im in loaded]
        if not loaded:
            return []
        queries = [Query(v, g) for v, g in zip(np.concatenate(vectors), groups, strict=True)]
        return self.searcher.scaled.search(queries, k, kind, where)

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
            self._classifiers = LibraryClassifiers(self)
        return self._classifiers

    def classify(
        self,
        image: str | Path | LoadedImage | np.ndarray,
        label: str,
        methods: tuple[str, ...] = ("knn", "logreg", "zeroshot"),
        kind: str = "image",
        knn: KnnOptions = DEFAULT_KNN,
        exclude_same_patient: bool = False,
    ) -> Classification:
        """Class probabilities per method for one image (file, decoded image or vector).

        ``exclude_same_patient`` keeps the query's patient (its stored copy's, or its DICOM
        patient's) out of the kNN vote.
        """
        group = None
        if isinstance(image, np.ndarray) and image.ndim == 1:
            vector = image
        else:
            loaded = image if isinstance(image, LoadedImage) else self.read(image)  # type: ignore[arg-type]
            vector = self.embed(loaded)
            group = self.query_group(loaded) if exclude_same_patient else None
        return self.classifiers.classify(vector, label, tuple(methods), kind, knn, group)

    # ------------------------------------------------------------------ text space
    def joint_space(self) -> JointSpace:
        """Where texts meet images: CLIP's own space, or a learned aligner for unaligned towers.

        The bundled encoder's aligner is trained on the library's (image, report) pairs, the
        reports written from each row's labels, and retrained when the table changes.
        """
        encoder = self.encoder
        if encoder.aligned:
            return ClipSpace(encoder.embed_texts)
        version = self.store.version
        if self._space is not None and self._space[0] == version:
            return self._space[1]
        path = self.store.db_dir / f"{ALIGNER_PREFIX}{version}.pt"
        if path.exists():
            aligner = ContrastiveAligner.load(path, encoder.embed_texts)
        else:
            aligner = self._fit_aligner(encoder)
            for old in self.store.db_dir.glob(f"{ALIGNER_PREFIX}*.pt"):
                old.unlink()
            aligner.save(path)
        self._space = (version, aligner)
        return aligner

    def _fit_aligner(self, encoder: Encoder) -> ContrastiveAligner:
        vectors, reports = self.reports()
        if not any(reports):
            raise QueryError(
                f"text queries with encoder {encoder.spec!r} need labels to learn the "
                "text-image alignment; ingest with --labels (or use a CLIP encoder)"
            )
        self._notify(
            f"learning text-image alignment for {encoder.spec!r} from {len(reports)} labelled cases"
        )
        return ContrastiveAligner(encoder.embed_texts).fit(vectors, reports)

    def reports(self, kind: str | None = None) -> tuple[np.ndarray, list[str]]:
        """Stored vectors with a report sentence written from each row's labels (unlabelled
        rows left out)."""
        vectors, reports, _ = self.reports_by_id(kind)
        return vectors, reports

    def reports_by_id(self, kind: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """Vectors, report sentences and ids of every labelled row."""
        snapshot = self.store.snapshot(kind)
        manifest = self.store.manifest
        assert manifest is not None
        skip = {manifest.group_column, ROI_TYPE}
        columns = {
            c: self.store.column_values(c, kind) for c in manifest.label_columns if c not in skip
        }
        reports = [
            report_from_labels({c: values.get(i) for c, values in columns.items()})
            for i in snapshot.ids
        ]
        keep = [n for n, r in enumerate(reports) if r]
        return (
            snapshot.vectors[keep],
            [reports[n] for n in keep],
            [str(snapshot.ids[n]) for n in keep],
        )


def open(db: str | Path, encoder: str | Encoder | None = None, **kwargs) -> PriorCase:
    """Open (or create) the case library at ``db``."""
    return PriorCase(db, encoder=encoder, **kwargs)
