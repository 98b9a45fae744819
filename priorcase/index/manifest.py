"""The index manifest: which encoder built the vectors, and what the columns mean."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from priorcase.errors import EncoderMismatchError

MANIFEST_NAME = "priorcase-manifest.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """Recorded next to the LanceDB table; vectors from any other encoder are refused."""

    encoder: dict
    label_columns: list[str] = field(default_factory=list)
    metadata_columns: list[str] = field(default_factory=list)
    group_column: str = "patient_id"
    created: str = field(default_factory=lambda: _now())
    updated: str = field(default_factory=lambda: _now())
    format: int = FORMAT_VERSION
    # how images are preprocessed before embedding (priorcase.ingest.breast.BreastConfig);
    # None: an index from before breast preprocessing, whose images are embedded as read
    breast: dict | None = None
    tiles: dict | None = None  # priorcase.ingest.tiles.TileConfig; None: no tile rows

    @property
    def encoder_spec(self) -> str:
        return str(self.encoder["spec"])

    def check_encoder(self, described: dict, db_dir: Path) -> None:
        """Raise unless ``described`` (``Encoder.describe()``) built the index."""
        keys = ("spec", "weights_sha256", "preprocess")
        # compare as JSON sees them: tuples written to the manifest come back as lists
        ours = json.loads(json.dumps([self.encoder[k] for k in keys]))
        theirs = json.loads(json.dumps([described[k] for k in keys]))
        if ours != theirs:
            raise EncoderMismatchError(
                f"index {db_dir} was built with encoder {self.encoder['spec']!r} "
                f"(weights {self.encoder['weights_sha256'][:12]}); refusing vectors from "
                f"{described['spec']!r} (weights {described['weights_sha256'][:12]}): "
                "embeddings of two encoders are not comparable. Use another --db."
            )

    def save(self, db_dir: Path) -> None:
        """Write atomically, so a crash never leaves half a manifest."""
        self.updated = _now()
        tmp = db_dir / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, db_dir / MANIFEST_NAME)

    @classmethod
    def load(cls, db_dir: Path) -> Manifest | None:
        path = db_dir / MANIFEST_NAME
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
