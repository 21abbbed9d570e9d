r"""The durable outbox: kept frames wait here until the cloud acknowledges them.

One SQLite file (WAL). Each item is a serialized `Candidate` (JPEG included) in a single row,
so a crash can never leave a row without its image or an image without its row. Items move
through explicit states:

    queued --claim--> sending --ack--> (deleted)
       ^                 |  \--reject--> dead   (the server refused it as invalid; kept for audit)
       +----release------+                       (stream broke: try again)

`sending` is only meaningful while a stream is open: opening the spool puts every `sending`
item back to `queued` (the previous process died mid-stream), so nothing is lost and the
server's idempotency on candidate_id absorbs the resend.

The spool also records how far the agent got in each source file, in the same transaction as
the items it kept there, so a restarted agent neither re-keeps nor skips frames.

Disk cap: with `cap_bytes`, the payload bytes of the items still to send never exceed it. When
a new item does not fit, the lowest-value queued items (by the policy's combined score) that are
worth less than the new one are evicted to make room; when that is not enough, the new item is
the one dropped. Either way the evictions are counted (persistently) and the source progress
is still recorded. The SQLite file itself reuses freed pages, so it stays near the cap plus a
small overhead. Items go out highest value first, so after days offline the best ones are sent
first.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QUEUED, SENDING, DEAD = "queued", "sending", "dead"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    candidate_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    score REAL NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS items_state_created ON items(state, created_ms);
CREATE INDEX IF NOT EXISTS items_state_score ON items(state, score);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    source TEXT PRIMARY KEY,
    last_index INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class SpoolItem:
    candidate_id: str
    payload: bytes


@dataclass(frozen=True)
class PutResult:
    stored: bool  # False: the item was worth less than everything queued and did not fit
    evicted: int  # items removed to stay under the cap (including this one when not stored)


@dataclass(frozen=True)
class SpoolStats:
    queued: int
    sending: int
    dead: int
    pending_bytes: int
    evicted_total: int = 0
    cap_bytes: int = 0

    @property
    def depth(self) -> int:
        return self.queued + self.sending


class Spool:
    # Dead items are kept for audit up to this many (oldest go first).
    MAX_DEAD = 10_000

    def __init__(self, path: Path, *, synchronous: str = "FULL", cap_bytes: int = 0):
        if cap_bytes < 0:
            raise ValueError("spool cap_bytes must be >= 0 (0 = no cap)")
        self.cap_bytes = int(cap_bytes)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._items_available = threading.Condition(self._lock)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL survives power loss (cameras lose power); NORMAL only process crashes.
        self._synchronous = "FULL" if synchronous.upper() == "FULL" else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        self._db.executescript(_SCHEMA)
        self._db.execute("UPDATE items SET state=? WHERE state=?", (QUEUED, SENDING))
        # Bytes of the items still to send, kept up to date by put/ack/reject under the lock, so
        # a put under the cap does not sum the whole table each time.
        self._pending_bytes = int(self._db.execute(
            "SELECT coalesce(sum(size), 0) FROM items WHERE state != ?", (DEAD,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, candidate_id: str, payload: bytes, score: float,
            progress: tuple[str, int] | None = None) -> PutResult:
        """Store one item durably (and, in the same transaction, the source progress), evicting
        lower-value queued items when the cap requires it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                victims = self._make_room(len(payload), float(score))
                if victims is None:
                    self._count("evicted", 1)
                else:
                    self._db.executemany("DELETE FROM items WHERE candidate_id=?", [(v,) for v, _ in victims])
                    self._count("evicted", len(victims))
                    self._db.execute(
                        "INSERT INTO items(candidate_id, state, created_ms, score, size, payload) VALUES (?,?,?,?,?,?)",
                        (candidate_id, QUEUED, int(time.time() * 1000), float(score), len(payload), payload),
                    )
                if progress is not None:
                    self._set_progress(*progress)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if victims is not None:
                self._pending_bytes += len(payload) - sum(item_size for _, item_size in victims)
            self._items_available.notify_all()
        return PutResult(stored=victims is not None, evicted=1 if victims is None else len(victims))

    def _make_room(self, size: int, score: float) -> list[tuple[str, int]] | None:
        """Queued items (id, size) to evict so `size` more bytes fit under the cap (lowest score
        first, only items worth less than the newcomer), or None when the newcomer must go."""
        if not self.cap_bytes:
            return []
        if size > self.cap_bytes:
            return None
        excess = self._pending_bytes + size - self.cap_bytes
        if excess <= 0:
            return []
        victims, freed = [], 0
        rows = self._db.execute(
            "SELECT candidate_id, size FROM items WHERE state=? AND score < ? ORDER BY score, created_ms",
            (QUEUED, score),
        )
        for candidate_id, item_size in rows:
            victims.append((candidate_id, item_size))
            freed += item_size
            if freed >= excess:
                return victims
        return None

    def _count(self, name: str, amount: int) -> None:
        if amount:
            self._db.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=value + excluded.value",
                (name, int(amount)),
            )

    def record_progress(self, source: str, last_index: int) -> None:
        """Progress through a source for frames that were not kept. Committed without an fsync
        (synchronous=NORMAL, then back): in WAL mode it is durable at the next FULL commit (the
        next kept frame) or checkpoint, and a power cut can only make the agent score a few
        dropped frames again. An fsync per dropped frame was a third of the agent's time per frame
        on a folder source (benchmarks/edge_overhead.py's profile)."""
        with self._lock:
            if self._synchronous == "FULL":
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._set_progress(source, last_index)
            finally:
                if self._synchronous == "FULL":
                    self._db.execute("PRAGMA synchronous=FULL")

    def _set_progress(self, source: str, last_index: int) -> None:
        self._db.execute(
            "INSERT INTO progress(source, last_index) VALUES (?, ?) "
            "ON CONFLICT(source) DO UPDATE SET last_index=max(last_index, excluded.last_index)",
            (source, int(last_index)),
        )

    def progress(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT source, last_index FROM progress").fetchall())

    def claim(self, limit: int) -> list[SpoolItem]:
        """Mark up to `limit` queued items (highest value first, then oldest) as sending and
        return them."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT candidate_id, payload FROM items WHERE state=? ORDER BY score DESC, created_ms, rowid LIMIT ?",
                (QUEUED, int(limit)),
            ).fetchall()
            if rows:
                self._db.executemany("UPDATE items SET state=? WHERE candidate_id=?", [(SENDING, r[0]) for r in rows])
        return [SpoolItem(r[0], r[1]) for r in rows]

    def wait_for_items(self, timeout_s: float) -> None:
        """Block until something is put or the timeout passes."""
        with self._items_available:
            self._items_available.wait(timeout_s)

    def ack(self, candidate_id: str) -> None:
        with self._lock:
            gone = self._db.execute("DELETE FROM items WHERE candidate_id=? RETURNING size, state",
                                    (candidate_id,)).fetchone()
            if gone is not None and gone[1] != DEAD:
                self._pending_bytes -= gone[0]

    def reject(self, candidate_id: str, detail: str) -> None:
        """The server will never accept this item: keep it for audit, never resend it."""
        with self._lock:
            before = self._db.execute("SELECT size, state FROM items WHERE candidate_id=?", (candidate_id,)).fetchone()
            self._db.execute(
                "UPDATE items SET state=?, detail=?, payload=x'', size=0 WHERE candidate_id=?",
                (DEAD, detail[:500], candidate_id),
            )
            if before is not None and before[1] != DEAD:
                self._pending_bytes -= before[0]
            self._db.execute(
                "DELETE FROM items WHERE state=? AND rowid NOT IN "
                "(SELECT rowid FROM items WHERE state=? ORDER BY rowid DESC LIMIT ?)",
                (DEAD, DEAD, self.MAX_DEAD),
            )

    def release(self, candidate_ids: list[str]) -> None:
        """Put items whose stream broke back in the queue."""
        with self._lock:
            self._db.executemany(
                "UPDATE items SET state=? WHERE candidate_id=? AND state=?", [(QUEUED, cid, SENDING) for cid in candidate_ids]
            )
            self._items_available.notify_all()

    def stats(self) -> SpoolStats:
        with self._lock:
            counts = dict(self._db.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
            pending = self._pending_bytes
            evicted = self._db.execute("SELECT value FROM counters WHERE name='evicted'").fetchone()
        return SpoolStats(counts.get(QUEUED, 0), counts.get(SENDING, 0), counts.get(DEAD, 0), pending,
                          evicted_total=int(evicted[0]) if evicted else 0, cap_bytes=self.cap_bytes)

    def items(self) -> list[tuple[str, str, float]]:
        """(candidate_id, state, score) of every item, for audits and tests."""
        with self._lock:
            return self._db.execute("SELECT candidate_id, state, score FROM items ORDER BY rowid").fetchall()
