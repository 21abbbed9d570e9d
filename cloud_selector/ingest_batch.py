"""Group commit for ingest: the candidates of every stream are stored in batches.

The reader threads of `IngestService`'s streams (cloud_selector/ingest.py) check each candidate
and hand the ones to store to the server's `Committer` as `PendingCandidate`s. Each of its
`workers` threads (2: one batch is written while the other waits on its fsyncs or its commit)
takes everything queued (up to `max_batch` candidates / `max_batch_bytes`), and `store_batch`
does, per batch:

1. one catalog query for the batch's ids: those already stored are ALREADY_STORED and their
   blobs are not touched (a resend never overwrites a stored image); a second copy of an id
   within the batch is ALREADY_STORED too, as the first is stored in the same batch;
2. write the other blobs and make them durable together (`blobstore.put_all`: the directory
   store fsyncs them concurrently so the filesystem commits them at once; S3 runs the PUTs
   concurrently);
3. insert all their rows in ONE transaction (`Catalog.insert_candidates`: one commit);
4. resolve each candidate's future with its Ack. Only now may a stream send it.

So the ack contract is kept per candidate: STORED only once its blob is durable and its row
committed; rows are inserted only after every blob of the batch is durable, so no row ever
names a blob that a crash could lose. A failure at 2 or 3 fails every future of the batch
with `StoreFailed`; nothing of it is acked (its streams end with UNAVAILABLE and the agents
resend; a blob that was written stays unreferenced and the resend overwrites it).

No batch waits for company: a worker takes what queued up while the previous batch was being
stored, so a lone candidate is stored at once and batches grow with the load. The cost of a
batch is mostly one fsync round (blobs), one more (their directories) and one commit, shared by
everyone in it; under load each candidate's ack waits for its whole batch. Two batches in
flight may hold the same id (a resend racing its original): both write the same key, one row
wins (ON CONFLICT DO NOTHING) and the other is acked ALREADY_STORED after that row committed.

`AckPipe` carries one stream's answers, in order, from its reader thread to the thread that
sends them: an Ack (REJECTED), a Future of one, or the end of the stream (`EndStream`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc

from cloud_selector.blobstore import BlobStore, put_all
from cloud_selector.catalog import Catalog
from protos import flywheel_pb2 as pb

log = logging.getLogger(__name__)


class StoreFailed(Exception):
    """Storing a batch failed (blob store or catalog); none of its candidates was acked."""


@dataclass(frozen=True)
class PendingCandidate:
    """A checked candidate, ready to store: its blob and its catalog row."""

    candidate_id: str  # as the device sent it, echoed in the ack
    key: str  # blob key
    jpeg: bytes
    row: dict  # the catalog row (Catalog.insert_candidates), row["id"] is the lower-case id


@dataclass
class CommitStats:
    """What the committer did, for benchmarks and logs (seconds are wall time in each step)."""

    batches: int = 0
    candidates: int = 0
    stored: int = 0
    failed_batches: int = 0
    largest_batch: int = 0
    lookup_s: float = 0.0
    blobs_s: float = 0.0
    catalog_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, candidates: int, stored: int, lookup_s: float, blobs_s: float, catalog_s: float) -> None:
        with self._lock:
            self.batches += 1
            self.candidates += candidates
            self.stored += stored
            self.largest_batch = max(self.largest_batch, candidates)
            self.lookup_s += lookup_s
            self.blobs_s += blobs_s
            self.catalog_s += catalog_s

    def record_failure(self) -> None:
        with self._lock:
            self.failed_batches += 1

    def as_dict(self) -> dict:
        per = max(1, self.candidates)
        return {"batches": self.batches, "candidates": self.candidates, "stored": self.stored,
                "failed_batches": self.failed_batches, "largest_batch": self.largest_batch,
                "mean_batch": round(self.candidates / max(1, self.batches), 2),
                "ms_per_batch": {k: round(getattr(self, f"{k}_s") * 1000 / max(1, self.batches), 3)
                                 for k in ("lookup", "blobs", "catalog")},
                "ms_per_candidate": {k: round(getattr(self, f"{k}_s") * 1000 / per, 3)
                                     for k in ("lookup", "blobs", "catalog")}}


def store_batch(catalog: Catalog, blobs: BlobStore, items: list[PendingCandidate],
                stats: CommitStats | None = None) -> list[pb.Ack]:
    """Store `items` as one group (steps 1-3 of the module doc); their acks in the same order.
    Raises whatever the blob store or catalog raised; then nothing of the batch may be acked."""
    started = time.perf_counter()
    ids = [item.row["id"] for item in items]
    already = catalog.stored_ids(set(ids))
    fresh: dict[str, PendingCandidate] = {}
    for item in items:
        if item.row["id"] not in already:
            fresh.setdefault(item.row["id"], item)  # the first copy of an id is the one stored
    looked_up = time.perf_counter()
    put_all(blobs, [(item.key, item.jpeg) for item in fresh.values()])
    written = time.perf_counter()
    stored = catalog.insert_candidates([item.row for item in fresh.values()])
    done = time.perf_counter()
    if stats is not None:
        stats.record(len(items), len(stored), looked_up - started, written - looked_up, done - written)
    acks = []
    for item in items:
        first = fresh.get(item.row["id"]) is item and item.row["id"] in stored
        acks.append(pb.Ack(candidate_id=item.candidate_id,
                           status=pb.ACK_STATUS_STORED if first else pb.ACK_STATUS_ALREADY_STORED))
    return acks


@dataclass
class _Job:
    item: PendingCandidate
    future: Future = field(default_factory=Future)


class Committer:
    """One thread storing queued candidates in batches; `submit` returns a Future of the Ack.

    `close()` stops taking new candidates, stores what is queued and joins the thread; a
    candidate submitted after that fails with StoreFailed (never acked)."""

    def __init__(self, catalog: Catalog, blobs: BlobStore, *, workers: int = 2, max_batch: int = 64,
                 max_batch_bytes: int = 64 * 1024 * 1024):
        self.catalog = catalog
        self.blobs = blobs
        self.max_batch = max(1, max_batch)
        self.max_batch_bytes = max_batch_bytes
        self.stats = CommitStats()
        self._queue: deque[_Job] = deque()
        self._in_flight: set[str] = set()  # ids in the batches being stored
        self._changed = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"ingest-committer-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, item: PendingCandidate) -> Future:
        job = _Job(item)
        with self._changed:
            if self._closed:
                job.future.set_exception(StoreFailed("the server is shutting down"))
            else:
                self._queue.append(job)
                self._changed.notify()
        return job.future

    def close(self, timeout_s: float = 30.0) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> list[_Job] | None:
        """The next batch (waits for one); None once closed and drained. A candidate whose id
        is in a batch being stored waits for that batch, so copies of one id are stored in the
        order they came (the first STORED, the rest ALREADY_STORED) and never written at once."""
        with self._changed:
            while True:
                batch, ids, size, held = [], set(), 0, []
                while self._queue and len(batch) < self.max_batch:
                    job = self._queue.popleft()
                    cid = job.item.row["id"]
                    if cid in self._in_flight:
                        held.append(job)
                    elif batch and size + len(job.item.jpeg) > self.max_batch_bytes:
                        self._queue.appendleft(job)
                        break
                    else:
                        batch.append(job)
                        ids.add(cid)
                        size += len(job.item.jpeg)
                self._queue.extendleft(reversed(held))
                if batch:
                    self._in_flight |= ids
                    return batch
                if self._closed and not self._queue:
                    return None
                self._changed.wait()

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                acks = store_batch(self.catalog, self.blobs, [job.item for job in batch], self.stats)
            except Exception as exc:  # noqa: BLE001 - the loop's top: fail this batch, keep serving
                self.stats.record_failure()
                log.error("storing a batch of %d candidates failed, none acked: %s", len(batch), exc)
                failure = StoreFailed(f"storing the candidate failed: {type(exc).__name__}: {exc}"[:500])
                failure.__cause__ = exc
                acks = [failure] * len(batch)
            with self._changed:
                self._in_flight -= {job.item.row["id"] for job in batch}
                self._changed.notify_all()
            for job, ack in zip(batch, acks):
                if isinstance(ack, StoreFailed):
                    job.future.set_exception(ack)
                else:
                    job.future.set_result(ack)


class EndStream(Exception):
    """Raised in a stream's reader thread (ingest.py): end the stream with this status once the
    acks of the candidates before it are sent."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class AckPipe:
    """A stream's ordered hand-over from its reader thread to its sending thread: an Ack, a
    Future of one, or the end (None, or an EndStream). Bounds what is read but not yet acked."""

    def __init__(self, max_items: int, max_bytes: int):
        self._max_items, self._max_bytes = max(1, max_items), max_bytes
        self._entries: deque = deque()
        self._items = self._bytes = 0  # read and not yet acked
        self._changed = threading.Condition()
        self.closed = False

    def put(self, entry: pb.Ack | Future, size: int) -> bool:
        """Wait for room, then queue `entry`; False when the stream has ended meanwhile."""
        with self._changed:
            while not self.closed and self._items and (self._items >= self._max_items
                                                       or self._bytes + size > self._max_bytes):
                self._changed.wait()
            if self.closed:
                return False
            self._entries.append((entry, size))
            self._items += 1
            self._bytes += size
            self._changed.notify_all()
            return True

    def finish(self, end: EndStream | None) -> None:
        with self._changed:
            self._entries.append((end, 0))
            self._changed.notify_all()

    def get(self) -> tuple[pb.Ack | Future | EndStream | None, int]:
        with self._changed:
            while not self._entries:
                self._changed.wait()
            return self._entries.popleft()

    def acked(self, size: int) -> None:
        with self._changed:
            self._items -= 1
            self._bytes -= size
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()
