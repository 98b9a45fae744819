"""The core of one case library: its store, its searcher and its encoder (no back-references).

Services (:class:`~priorcase.retrieval.text_spaces.TextSpaces`,
:class:`~priorcase.library.LibraryClassifiers`, the reference distributions) take a
:class:`Core`; :class:`~priorcase.api.PriorCase` wires them for users.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from priorcase.encoders import Encoder, create_default_encoder, create_encoder
from priorcase.errors import EncoderMismatchError
from priorcase.index.store import CaseStore
from priorcase.retrieval.regions import TileBank
from priorcase.retrieval.search import Searcher


class Core:
    """A LanceDB case store, its nearest-neighbour searcher and the encoder that built it.

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
    ) -> None:
        self.store = CaseStore(db)
        self.searcher = Searcher(self.store, backend=backend, use_gpu=device != "cpu")
        self.notify = notify
        self._encoder_arg = encoder
        self._device = device
        self._encoder: Encoder | None = encoder if isinstance(encoder, Encoder) else None
        self._encoder_lock = threading.Lock()
        self._tiles: tuple[int, TileBank] | None = None
        manifest = self.store.manifest
        if manifest is not None and isinstance(encoder, str) and encoder != manifest.encoder_spec:
            raise EncoderMismatchError(
                f"index {self.store.db_dir} was built with encoder {manifest.encoder_spec!r}; "
                f"refusing {encoder!r}: embeddings of two encoders are not comparable"
            )

    @property
    def encoder(self) -> Encoder:
        """The index's encoder, loaded on first use and checked against the manifest."""
        with self._encoder_lock:
            if self._encoder is None:
                manifest = self.store.manifest
                spec = manifest.encoder_spec if manifest else self._encoder_arg
                if spec is None:
                    self._encoder = create_default_encoder(self._device, notify=self.notify)
                else:
                    self._encoder = create_encoder(str(spec), self._device)
        if self.store.manifest is not None:
            self.store.manifest.check_encoder(self._encoder.describe(), self.store.db_dir)
        return self._encoder

    def tiles(self) -> TileBank:
        """The stored tiles (cached per table version)."""
        version = self.store.version
        if self._tiles is None or self._tiles[0] != version:
            self._tiles = (version, TileBank.load(self.store))
        return self._tiles[1]
