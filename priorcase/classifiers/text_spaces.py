"""Where texts meet images in one library: CLIP's own space, or an aligner learned from the
library's (image, report) pairs; per training subset for evaluation (:class:`FoldSpaces`)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from priorcase.classifiers.alignment import ContrastiveAligner
from priorcase.classifiers.joint_space import ClipSpace, JointSpace
from priorcase.classifiers.reports import report_from_labels
from priorcase.encoders import Encoder
from priorcase.errors import QueryError
from priorcase.index.artifacts import content_digest, load_or_build
from priorcase.ingest.pipeline import ROI_TYPE

if TYPE_CHECKING:
    from priorcase.classifiers.labelled import LabelledSet
    from priorcase.core import Core

ALIGNER_PREFIX = "text-aligner-"


class TextSpaces:
    """The library's joint text-image space, refitted when the table's content changes."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._space: tuple[tuple[int, str], JointSpace] | None = None
        self._lock = threading.Lock()

    def clear(self) -> None:
        self._space = None

    def joint_space(self) -> JointSpace:
        """CLIP's own space, or a learned aligner for unaligned towers.

        The bundled encoder's aligner is trained on the library's (image, report) pairs, the
        reports written from each row's labels, and retrained when the table changes.
        """
        store, encoder = self.core.store, self.core.encoder
        if encoder.aligned:
            return ClipSpace(encoder.embed_texts)
        # one thread fits while the others wait (UI warm-up and a first user, say)
        with self._lock:
            snapshot = store.snapshot()
            state = (snapshot.version, snapshot.digest)
            if self._space is not None and self._space[0] == state:
                return self._space[1]
            vectors, reports = self.reports()
            if not any(reports):
                raise QueryError(
                    f"text queries with encoder {encoder.spec!r} need labels to learn the "
                    "text-image alignment; ingest with --labels (or use a CLIP encoder)"
                )
            blank = ContrastiveAligner(encoder.embed_texts)
            # named by what it is fitted on, not by table version (versions restart when a
            # table is recreated); the file lock keeps a CLI process and the UI from racing
            key = content_digest(
                vectors, "\n".join(reports), encoder.weights_hash(), sorted(blank._config().items())
            )
            aligner = load_or_build(
                store.location.file(f"{ALIGNER_PREFIX}{key[:32]}.pt"),
                lambda p: ContrastiveAligner.load(p, encoder.embed_texts),
                lambda: self._fit_aligner(encoder, vectors, reports),
                lambda a, tmp: a.save(tmp),
                notify=self.core.notify,
                stale=lambda old: old.name.startswith(ALIGNER_PREFIX) and old.suffix == ".pt",
            )
            aligner.content_key = key
            self._space = (state, aligner)
            return aligner

    def _fit_aligner(
        self, encoder: Encoder, vectors: np.ndarray, reports: list[str]
    ) -> ContrastiveAligner:
        self.core.notify(
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
        store = self.core.store
        snapshot = store.snapshot(kind)
        manifest = store.manifest
        assert manifest is not None
        skip = {manifest.group_column, ROI_TYPE}
        columns = {c: store.column_values(c, kind) for c in manifest.label_columns if c not in skip}
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


class FoldSpaces:
    """Joint text-image space per training set: the bundled encoder's aligner is fitted on
    training rows' reports only, so no evaluated image ever shapes the text space."""

    def __init__(self, spaces: TextSpaces, data: LabelledSet) -> None:
        self.spaces = spaces
        self.encoder = spaces.core.encoder
        self._cache: dict[bytes, JointSpace] = {}
        self._reports: dict[str, str] | None = None
        self.data = data

    def for_rows(self, train_idx: np.ndarray) -> JointSpace:
        if self.encoder.aligned:
            return self.spaces.joint_space()  # CLIP's own space: nothing is fitted
        key = np.sort(train_idx).tobytes()
        if key not in self._cache:
            if self._reports is None:
                _, reports, ids = self.spaces.reports_by_id()
                self._reports = dict(zip(ids, reports, strict=True))
            ids = self.data.ids[train_idx]
            keep = [n for n, i in enumerate(ids) if self._reports.get(i)]
            aligner = ContrastiveAligner(self.encoder.embed_texts).fit(
                self.data.X[train_idx][keep], [self._reports[ids[n]] for n in keep]
            )
            self._cache[key] = aligner
        return self._cache[key]
