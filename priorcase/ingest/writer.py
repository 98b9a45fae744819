"""A background writer: LanceDB commits run beside the encoder instead of between batches.

Records are gathered into large commits (up to ``COMMIT_ROWS``, at least every
``COMMIT_SECONDS``: fewer table versions and small fragments than one commit a batch) and
written by one thread while the next batch is decoded and embedded; every few commits the
table is compacted. ``close()`` writes what is left and re-raises a failed write.
"""

from __future__ import annotations

import queue
import threading
import time

from priorcase.index.store import CaseStore
from priorcase.records import CaseRecord

COMMIT_ROWS = 1024
COMMIT_SECONDS = 2.0  # and at least this often, so a killed ingest keeps most of its work
COMPACT_EVERY = 16  # commits


class BackgroundWriter:
    """``put`` records; a thread commits them ``commit_rows`` at a time."""

    def __init__(self, store: CaseStore, commit_rows: int = COMMIT_ROWS) -> None:
        self.store = store
        self.commit_rows = commit_rows
        self._queue: queue.Queue[list[CaseRecord] | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._commits = 0
        self._thread = threading.Thread(target=self._run, name="priorcase-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # commit what was embedded even when the loop stopped early

    def put(self, records: list[CaseRecord]) -> None:
        if self._error is not None:
            raise self._error
        if records:
            self._queue.put(records)

    def close(self) -> None:
        """Commit what is pending and wait; re-raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        pending: list[CaseRecord] = []
        last = time.monotonic()
        while True:
            item = self._queue.get()
            if item is not None:
                pending += item
            # the first batch alone: creating the table stays as quick as before for readers
            due = (
                self._commits == 0
                or len(pending) >= self.commit_rows
                or time.monotonic() - last >= COMMIT_SECONDS
            )
            if pending and (item is None or due):
                self._commit(pending)
                pending = []
                last = time.monotonic()
            if item is None:
                return

    def _commit(self, records: list[CaseRecord]) -> None:
        if self._error is not None:
            return
        try:
            self.store.add(records)
            self._commits += 1
            if self._commits % COMPACT_EVERY == 0 and self.store.table is not None:
                self.store.table.optimize()  # compact fragments, fold new rows into indexes
        except BaseException as err:  # surfaced by put()/close() in the ingest thread
            self._error = err
