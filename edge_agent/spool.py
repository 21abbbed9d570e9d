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
class SpoolStats:
    queued: int
    sending: int
    dead: int
    pending_bytes: int

    @property
    def depth(self) -> int:
        return self.queued + self.sending


class Spool:
    def __init__(self, path: Path, *, synchronous: str = "FULL"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._items_available = threading.Condition(self._lock)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL survives power loss (cameras lose power); NORMAL only process crashes.
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous.upper() == 'FULL' else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._db.execute("UPDATE items SET state=? WHERE state=?", (QUEUED, SENDING))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, candidate_id: str, payload: bytes, score: float, progress: tuple[str, int] | None = None) -> None:
        """Store one item durably (and, in the same transaction, the source progress)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
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
            self._items_available.notify_all()

    def record_progress(self, source: str, last_index: int) -> None:
        with self._lock:
            self._set_progress(source, last_index)

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
        """Mark up to `limit` queued items (oldest first) as sending and return them."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT candidate_id, payload FROM items WHERE state=? ORDER BY created_ms, rowid LIMIT ?",
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
            self._db.execute("DELETE FROM items WHERE candidate_id=?", (candidate_id,))

    def reject(self, candidate_id: str, detail: str) -> None:
        """The server will never accept this item: keep it for audit, never resend it."""
        with self._lock:
            self._db.execute(
                "UPDATE items SET state=?, detail=?, payload=x'' WHERE candidate_id=?", (DEAD, detail[:500], candidate_id)
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
            pending = self._db.execute("SELECT coalesce(sum(size), 0) FROM items WHERE state != ?", (DEAD,)).fetchone()[0]
        return SpoolStats(counts.get(QUEUED, 0), counts.get(SENDING, 0), counts.get(DEAD, 0), int(pending))
