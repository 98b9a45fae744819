"""``priorcase ingest --engine ray``: the ingest pipeline on a Ray cluster.

The plan (hashes, dedup by content and id, labels) and the writes stay with the driver, exactly
as in one process (:func:`priorcase.ingest.pipeline.ingest`); Ray Data spreads the rest:

* files are hashed and decoded (breast crop, ROIs, tiles) by CPU tasks, which read them from
  paths every node sees (a shared file system), or read objects (``s3://``) from storage
  themselves, into memory, with a filesystem built from the worker's own AWS variables
  (:mod:`priorcase.ingest.sources`): the driver only lists the prefix;
* films are embedded by an actor pool (``map_batches`` with a callable class), one model per
  worker, on ``num_gpus_per_worker`` GPUs or on CPUs;
* the driver writes each embedded batch with the store's ``merge_insert`` on ``id``.

Why the driver writes, and not lance-ray's fragment writer: lance-ray commits whatever fragments
its tasks wrote, with no key, so a retried task or a re-run after a crash can store a file twice
and would need a dedup pass afterwards. ``merge_insert`` on ``id`` makes every batch commit
idempotent: an actor killed mid-batch is restarted and its batch retried (the driver never saw
the lost output), and a re-run after a crash skips what was committed. The driver also counts
the summary, so it stays exact. The cost is one writer; see docs/DEPLOY.md.

The pseudonym salt never travels through Ray: workers read it where the driver does
(``$PRIORCASE_SALT``, ``$PRIORCASE_KEY_FILE`` or the library's key file) and must match its
fingerprint. Nothing here is imported unless ``--engine ray`` is asked for.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import socket
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
from tqdm.auto import tqdm

from priorcase import errors
from priorcase.encoders.base import Encoder
from priorcase.encoders.preprocess import PreprocessConfig, preprocess_pixels
from priorcase.errors import PriorcaseError, SaltMismatchError
from priorcase.index.location import LibraryLocation
from priorcase.index.manifest import Manifest
from priorcase.index.store import CaseStore
from priorcase.ingest.pipeline import (
    BatchWriter,
    IngestOptions,
    Unreadable,
    _Task,
    _Views,
    embed_items,
    hash_file,
    load_item,
)
from priorcase.ingest.pseudonym import SALT_ENV, Pseudonymizer, key_file
from priorcase.ingest.readers import SourceFile
from priorcase.records import IngestReport

INSTALL_HINT = "pip install 'priorcase[ray]'"
FILMS_PER_DECODE_TASK = 4


def import_ray():
    """The ``ray`` module, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise PriorcaseError(
            f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from err
    return ray


@lru_cache(maxsize=4)
def worker_pseudonymizer(db_dir: str, fingerprint: str) -> Pseudonymizer:
    """The salt on a Ray worker, from the same places the driver reads it; never created here
    (a new random key would give patients other pseudonyms) and checked by fingerprint."""
    if not os.environ.get(SALT_ENV) and not key_file(LibraryLocation.parse(db_dir)).is_file():
        raise SaltMismatchError(
            f"Ray worker on {socket.gethostname()} has no pseudonym salt: mount the key file "
            f"and set $PRIORCASE_KEY_FILE (or ${SALT_ENV}) on every worker"
        )
    pseudonymize = Pseudonymizer.for_index(LibraryLocation.parse(db_dir))
    if pseudonymize.fingerprint() != fingerprint:
        raise SaltMismatchError(
            f"Ray worker on {socket.gethostname()} has another pseudonym salt (fingerprint "
            f"{pseudonymize.fingerprint()}, driver {fingerprint}): give every worker the same "
            "key file"
        )
    return pseudonymize


def _hash_row(row: dict) -> dict:
    """A CPU task: one file hashed where it lies (an object is read from storage here)."""
    return {"n": row["n"], "hash": pickle.dumps(hash_file(pickle.loads(row["file"])))}


def _decode_row(
    row: dict, cfg: PreprocessConfig, views: _Views, db_dir: str, fingerprint: str
) -> dict:
    """A CPU task: one file decoded and preprocessed, as the single-process DataLoader does."""
    task: _Task = pickle.loads(row["task"])
    pseudonymize = worker_pseudonymizer(db_dir, fingerprint)
    item = load_item(task, partial(preprocess_pixels, cfg=cfg), pseudonymize, views)
    return {"item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)}


class Embedder:
    """An actor of the embedding pool: loads the index's encoder once, refuses one that embeds
    differently (other weights, precision or device), and embeds batches of decoded items."""

    def __init__(self, described: dict, device: str, db_dir: str, batch_size: int, threads: int):
        import torch

        from priorcase.encoders import create_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = create_encoder(str(described["spec"]), device)
        Manifest(encoder=described).check_encoder(
            self.encoder.describe(), LibraryLocation.parse(db_dir)
        )
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(blob) for blob in batch["item"]]
        embed_items(items, self.encoder, self.batch_size)
        return {"item": np.array([pickle.dumps(item) for item in items], dtype=object)}


@dataclass
class RayEngine:
    """Ingest on a Ray cluster: ``address`` (None: a running cluster, else a local one),
    ``num_gpus_per_worker`` for each embedding actor, ``workers`` actors (default: one per
    ``num_gpus_per_worker`` GPUs, or half the CPUs)."""

    address: str | None = None
    num_gpus_per_worker: float = 0.0
    workers: int | None = None
    embedder: type = Embedder

    def __post_init__(self) -> None:
        self._ray = import_ray()  # refused before anything is written
        self._started = False

    # -------------------------------------------------------------- the cluster
    def _connect(self) -> None:
        """Join the cluster at ``address``, or the one this process runs, or start one."""
        ray = self._ray
        if ray.is_initialized():
            return
        with warnings.catch_warnings():
            # LanceDB warns about fork; Ray forks only to exec its own processes at once
            warnings.filterwarnings("ignore", "lancedb fork", RuntimeWarning)
            ray.init(
                address=self.address,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,  # worker errors reach the driver as exceptions
            )
        self._started = True

    def close(self) -> None:
        """Stop the cluster this engine started (one it joined keeps running)."""
        if self._started:
            self._ray.shutdown()
            self._started = False

    def _context(self, options: IngestOptions):
        context = self._ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the first of two same-id files wins
        context.enable_progress_bars = options.progress
        context.print_on_execution_start = False
        if not options.progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        return context

    def _workers(self, options: IngestOptions) -> tuple[int, float]:
        """Embedding actors, and CPUs each one takes (decode tasks need the rest)."""
        resources = self._ray.cluster_resources()
        cpus = float(resources.get("CPU", 1))
        if self.workers or options.workers:
            workers = int(self.workers or options.workers)  # type: ignore[arg-type]
        elif self.num_gpus_per_worker:
            workers = max(1, int(resources.get("GPU", 0) // self.num_gpus_per_worker))
        else:
            workers = max(1, int(cpus // 2))
        if self.num_gpus_per_worker:
            return workers, 1.0
        return workers, min(1.0, max(0.25, (cpus - 1) / workers))

    # -------------------------------------------------------------- the engine API
    def hash_files(
        self, files: list[SourceFile], options: IngestOptions
    ) -> dict[SourceFile, str | Unreadable]:
        """Content hashes, computed by Ray tasks (each file read where it lies)."""
        if not files:
            return {}
        self._connect()
        self._context(options)
        rows = self._ray.data.from_items(
            [{"n": n, "file": pickle.dumps(p)} for n, p in enumerate(files)],
            override_num_blocks=_blocks(len(files), 64),
        )
        hashed = {r["n"]: pickle.loads(r["hash"]) for r in _run(rows.map(_hash_row).iter_rows())}
        return {path: hashed[n] for n, path in enumerate(files)}

    def embed_and_store(
        self,
        store: CaseStore,
        encoder: Encoder,
        tasks: list[_Task],
        pseudonymize: Pseudonymizer,
        options: IngestOptions,
        report: IngestReport,
        views: _Views,
    ) -> int:
        """Decode on CPU tasks, embed on the actor pool, write here; returns commits made."""
        manifest = store.manifest
        assert manifest is not None
        self._connect()
        writer = BatchWriter(store, pseudonymize, options, report)
        self._context(options)
        workers, cpus = self._workers(options)
        data = self._ray.data.from_items(
            [{"task": pickle.dumps(t)} for t in tasks],
            override_num_blocks=_blocks(len(tasks), FILMS_PER_DECODE_TASK),
        )
        decoded = data.map(
            _decode_row,
            fn_kwargs={
                "cfg": encoder.preprocess_cfg,
                "views": views,
                "db_dir": str(store.db_dir),
                "fingerprint": pseudonymize.fingerprint(),
            },
            num_cpus=1,
        )
        embedded = decoded.map_batches(
            self.embedder,
            fn_constructor_kwargs={
                "described": manifest.encoder,
                "device": "cuda" if self.num_gpus_per_worker else "cpu",
                "db_dir": str(store.db_dir),
                "batch_size": options.batch_size,
                "threads": math.ceil(cpus),
            },
            batch_size=options.batch_size,
            batch_format="numpy",
            # Ray Data restarts a dead actor and retries its batch (its defaults)
            compute=self._ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            num_gpus=self.num_gpus_per_worker or None,
        )
        bar = tqdm(total=len(tasks), desc="embedding", unit="img", disable=not options.progress)
        with writer, bar:
            batches = embedded.iter_batches(batch_size=options.batch_size, batch_format="numpy")
            for batch in _run(batches):
                items = [pickle.loads(blob) for blob in batch["item"]]
                writer.write(items)
                bar.update(len(items))
            return writer.finish()


def _blocks(n: int, per_block: int) -> int:
    return max(1, min(n, math.ceil(n / per_block), 10_000))


def _run(iterable):
    """Iterate a Ray Data pipeline; a worker's priorcase error becomes its one line."""
    try:
        yield from iterable
    except PriorcaseError:
        raise
    except Exception as err:
        # Ray hands the worker's exception over as traceback text only
        raise PriorcaseError(_worker_error(str(err)) or _first_line(err)) from None


def _worker_error(text: str) -> str | None:
    """The message of the last priorcase error named in a worker's traceback text."""
    found = None
    for line in text.splitlines():
        match = re.match(r"\s*(?:priorcase\.errors\.)?(\w+): (.+)$", line)
        kind = getattr(errors, match.group(1), None) if match else None
        if match and isinstance(kind, type) and issubclass(kind, PriorcaseError):
            found = match.group(2).strip()
    return found


def _first_line(err: Exception) -> str:
    first = next((line for line in str(err).splitlines() if line.strip()), "")
    return f"Ray ingest failed: {type(err).__name__}: {first.strip()}"
