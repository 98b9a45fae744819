"""The index manifest: which encoder built the vectors, and what the columns mean."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from filelock import FileLock

from priorcase.errors import EncoderMismatchError, PriorcaseError, SaltMismatchError, StorageError
from priorcase.index.location import LibraryLocation, redact

MANIFEST_NAME = "priorcase-manifest.json"
LOCK_NAME = ".priorcase-manifest.lock"
FORMAT_VERSION = 1
REMOTE_COMMIT_TRIES = 5
REMOTE_SETTLE_S = 0.2  # a concurrent writer's PUT lands within this, in practice


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
    # HMAC of a fixed text under the pseudonym salt (Pseudonymizer.fingerprint), never the salt
    salt_fingerprint: str | None = None
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
        self.check_probe(described, db_dir)

    def check_probe(self, described: dict, db_dir: Path) -> None:
        """Refuse an encoder whose vector for the fixed probe image differs from the stored one
        (another precision, device or image library): its vectors would not be comparable.
        Indexes written before the probe was recorded are not checked."""
        stored, theirs = self.encoder.get("probe"), described.get("probe")
        if not stored or not theirs:
            return
        a, b = np.asarray(stored, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        cosine = -1.0
        if a.shape == b.shape:
            cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
        minimum = float(self.encoder.get("probe_min_cosine", 0.999))
        if cosine < minimum:
            raise EncoderMismatchError(
                f"index {db_dir} was built with {self.encoder_spec!r} at "
                f"{self.encoder.get('precision', '?')} on {self.encoder.get('device_type', '?')}; "
                f"this encoder ({described.get('precision')} on {described.get('device_type')}) "
                f"embeds the probe image differently (cosine {cosine:.5f} < {minimum}): "
                "vectors would not be comparable. Use the original device or another --db."
            )

    def check_salt(self, fingerprint: str, db_dir: Path) -> None:
        """Raise unless the salt with this fingerprint is the one the library was built with."""
        if self.salt_fingerprint is not None and self.salt_fingerprint != fingerprint:
            raise SaltMismatchError(
                f"index {db_dir} was built with another pseudonym salt (fingerprint "
                f"{self.salt_fingerprint}, now {fingerprint}): check $PRIORCASE_SALT and "
                "$PRIORCASE_KEY_FILE; the same patient would get two pseudonyms"
            )

    def commit(self, db_dir: Path) -> None:
        """Merge into the manifest on disk under a cross-process lock, then write it.

        Columns are unioned (a concurrent ingest's columns are kept), the encoder, group
        column and salt must agree; ``self`` becomes the merged manifest.
        """
        location = LibraryLocation.parse(db_dir)
        if location.is_remote:
            self._commit_remote(location)
            return
        db_dir = location.path
        try:
            lock = FileLock(db_dir / LOCK_NAME, timeout=120)
            lock.acquire()
        except OSError as err:  # read-only folder, full disk, or held too long (Timeout)
            raise StorageError(f"{db_dir}: cannot lock the manifest: {err}") from err
        try:
            self._merge(db_dir)
            self.save(db_dir)
        finally:
            lock.release()

    def _commit_remote(self, location: LibraryLocation) -> None:
        """Object storage has no lock: merge, write, read back, and merge again while a
        concurrent writer's manifest replaced ours (see docs/DEPLOY.md for the limit)."""
        for _ in range(REMOTE_COMMIT_TRIES):
            self._merge(location)
            self.save(location)
            time.sleep(REMOTE_SETTLE_S)
            disk = Manifest.load(location)
            if disk is not None and self._kept_by(disk):
                return
        raise StorageError(
            f"{location}: the manifest kept changing under concurrent writers; run again"
        )

    def _kept_by(self, disk: Manifest) -> bool:
        return set(self.label_columns) <= set(disk.label_columns) and set(
            self.metadata_columns
        ) <= set(disk.metadata_columns + disk.label_columns)

    def _merge(self, db_dir: Path | LibraryLocation) -> None:
        """Union ``self`` with the stored manifest (the encoder, group and salt must agree)."""
        disk = Manifest.load(db_dir)
        if disk is not None:
            disk.check_encoder(self.encoder, db_dir)
            if disk.group_column != self.group_column:
                raise PriorcaseError(
                    f"index {db_dir} groups by {disk.group_column!r}; "
                    f"cannot ingest with --group {self.group_column!r}"
                )
            if self.salt_fingerprint is not None:
                disk.check_salt(self.salt_fingerprint, db_dir)
            labels = _union(disk.label_columns, self.label_columns)
            self.metadata_columns = [
                c for c in _union(disk.metadata_columns, self.metadata_columns) if c not in labels
            ]
            self.label_columns = labels
            self.created = disk.created
            self.salt_fingerprint = disk.salt_fingerprint or self.salt_fingerprint

    def save(self, db_dir: Path | LibraryLocation) -> None:
        """Write atomically (a private temporary file, synced, then renamed; one PUT on object
        storage), so a crash or a full disk never leaves half a manifest nor a stray temporary
        file."""
        self.updated = _now()
        text = json.dumps(asdict(self), indent=2, sort_keys=True)
        location = LibraryLocation.parse(db_dir)
        try:
            # no secret inside: readable like the table
            location.file(MANIFEST_NAME).write_bytes(text.encode(), mode=0o644)
        except OSError as err:
            raise StorageError(
                f"{db_dir}: cannot write the manifest: {err.strerror or redact(str(err))}"
            ) from err

    @classmethod
    def load(cls, db_dir: Path | LibraryLocation) -> Manifest | None:
        data = LibraryLocation.parse(db_dir).file(MANIFEST_NAME).read_bytes()
        if data is None:
            return None
        return cls(**json.loads(data))


def _union(first: list[str], second: list[str]) -> list[str]:
    return first + [c for c in second if c not in first]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
