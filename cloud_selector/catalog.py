"""The catalog: every candidate's row, labels, selection runs, model versions and devices.

SQLAlchemy Core over a SQLite file (WAL) by default, or PostgreSQL for several replicas:
`Catalog.open(url)`. The Table objects below are the one description of the schema that
queries use; the Alembic revisions in cloud_selector/migrations create it (a test checks that
the two agree on both backends), and `Catalog.open` upgrades to head. All SQL goes through
SQLAlchemy expressions, never string formatting.

Candidate states:  pooled -> selected -> labeled,  pooled -> duplicate,  * -> rejected.

Several writers (threads, processes, replicas on one PostgreSQL) are safe row by row: a
candidate id is stored once however many ingests race (INSERT ... ON CONFLICT DO NOTHING);
selection and duplicate marking move only candidates that are still pooled, so a candidate
labeled meanwhile keeps its label and two concurrent runs never both claim one candidate.
Updates of many candidates go in id order, so two writers touching the same rows lock them in
the same order and one waits for the other instead of deadlocking.

Errors:

    CatalogSchemaError (RuntimeError)     the database cannot serve as this catalog
    UnknownCandidates (KeyError)          set_labels got ids the catalog lacks
    DeviceCredentialError (ValueError)    drawn in cloud_selector/auth.py
    ├── DeviceExists
    └── UnknownDevice (also LookupError)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from cloud_selector.migrations import (
    DEFAULT_MAX_OVERFLOW,
    DEFAULT_POOL_SIZE,
    CatalogSchemaError,
    advisory_lock_key,
    create_engine,
    current_revision,
    head_revision,
    revision_of,
    upgrade,
    upgrade_engine,
)

__all__ = [
    "Catalog", "CandidateRow", "CatalogSchemaError", "DeviceCredential", "DeviceCredentialError", "DeviceExists",
    "UnknownCandidates", "UnknownDevice", "current_revision", "head_revision", "metadata", "upgrade",
]

log = logging.getLogger(__name__)

POOLED, DUPLICATE, SELECTED, LABELED, REJECTED = "pooled", "duplicate", "selected", "labeled", "rejected"
STATES = (POOLED, DUPLICATE, SELECTED, LABELED, REJECTED)

metadata = sa.MetaData()

candidates = sa.Table(
    "candidates", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("capture_time_ms", sa.BigInteger, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Column("blob_key", sa.String(512), nullable=False),
    sa.Column("jpeg_bytes", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),  # float32 little-endian
    sa.Column("probabilities", sa.LargeBinary, nullable=False),  # float32 little-endian
    sa.Column("least_confidence", sa.Float, nullable=False),
    sa.Column("margin", sa.Float, nullable=False),
    sa.Column("entropy", sa.Float, nullable=False),
    sa.Column("novelty", sa.Float, nullable=False),
    sa.Column("combined", sa.Float, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("extra", sa.Text, nullable=False),  # JSON metadata from the device
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("duplicate_of", sa.String(36)),
    sa.Column("selection_run", sa.Integer),
    sa.Column("label", sa.String(128)),
    sa.Column("labeled_ms", sa.BigInteger),
    # The dashboard's lists: by state newest first, a device's frames in order, a run's picks.
    sa.Index("ix_candidates_state_received_ms", "state", "received_ms"),
    sa.Index("ix_candidates_device_id_capture_time_ms", "device_id", "capture_time_ms"),
    sa.Index("ix_candidates_selection_run", "selection_run"),
)

selection_runs = sa.Table(
    "selection_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Column("pool_size", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("selected", sa.Integer, nullable=False),
)

selection_picks = sa.Table(
    "selection_picks", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("selection_runs.id"), primary_key=True),
    sa.Column("candidate_id", sa.String(36), primary_key=True),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("typicality", sa.Float, nullable=False),
    sa.Column("min_distance", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Index("ix_selection_picks_candidate_id", "candidate_id"),
)

models = sa.Table(
    "models", metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),  # the registry assigns it
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("parent_version", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("files", sa.Text, nullable=False),  # JSON [{path, sha256, size}] incl. manifest.json
    sa.Column("published", sa.Boolean, nullable=False),
)

devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Column("frames_seen", sa.BigInteger, nullable=False),
    sa.Column("frames_kept", sa.BigInteger, nullable=False),
    sa.Column("candidates_acked", sa.BigInteger, nullable=False),
    sa.Column("spool_depth", sa.BigInteger, nullable=False),
    sa.Column("spool_bytes", sa.BigInteger, nullable=False),
    sa.Column("fps", sa.Float, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
)

# Device credentials: only the sha256 of each token is kept (see cloud_selector/auth.py).
device_credentials = sa.Table(
    "device_credentials", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked_ms", sa.BigInteger),
)

installs = sa.Table(
    "installs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(128), nullable=False, index=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("smoke_latency_ms", sa.Float, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
)

# Leases behind Catalog.try_lock on SQLite (PostgreSQL uses advisory locks and leaves it empty).
locks = sa.Table(
    "locks", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)


def now_ms() -> int:
    return int(time.time() * 1000)


def pack_floats(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_floats(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


@dataclass(frozen=True)
class CandidateRow:
    id: str
    device_id: str
    capture_time_ms: int
    model_version: int
    blob_key: str
    embedding: np.ndarray
    probabilities: np.ndarray
    scores: dict[str, float]
    reason: str
    extra: dict[str, str]
    state: str
    label: str | None

    @classmethod
    def from_row(cls, r) -> "CandidateRow":
        return cls(
            id=r.id, device_id=r.device_id, capture_time_ms=r.capture_time_ms, model_version=r.model_version,
            blob_key=r.blob_key, embedding=unpack_floats(r.embedding), probabilities=unpack_floats(r.probabilities),
            scores={k: getattr(r, k) for k in ("least_confidence", "margin", "entropy", "novelty", "combined")},
            reason=r.reason, extra=json.loads(r.extra), state=r.state, label=r.label,
        )


class UnknownCandidates(KeyError):
    """Some candidate ids are not in the catalog."""


@dataclass(frozen=True)
class DeviceCredential:
    id: str
    token_sha256: str
    created_ms: int
    revoked_ms: int | None  # None while the device may connect


class DeviceCredentialError(ValueError):
    """Enrolling or revoking a device failed (the tree is drawn in cloud_selector/auth.py)."""


class DeviceExists(DeviceCredentialError):
    """A device with this id is already enrolled (revoked ones too: ids are never reused)."""


class UnknownDevice(DeviceCredentialError, LookupError):
    """No device with this id was ever enrolled."""


class Catalog:
    """The catalog on one database; safe to share between threads (the engine pools)."""

    def __init__(self, url: str, *, schema: str | None = None, migrate: bool = True,
                 pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW):
        """Prefer `Catalog.open`, which takes the same arguments."""
        self.engine = create_engine(url, schema=schema, pool_size=pool_size, max_overflow=max_overflow)
        try:
            if migrate:
                upgrade_engine(self.engine)
            else:
                with self.engine.connect() as conn:
                    found = revision_of(conn)
                if found != head_revision():
                    raise CatalogSchemaError(f"the catalog is at revision {found}, this code needs {head_revision()}: "
                                             "run the upgrade (cloud_selector.catalog.upgrade) first")
        except BaseException:
            self.engine.dispose()
            raise
        # Both dialects compile ON CONFLICT; the generic insert has no such clause.
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert

    @classmethod
    def open(cls, url: str, *, schema: str | None = None, migrate: bool = True,
             pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW) -> Catalog:
        """Open the catalog at `url` (sqlite:///PATH, or postgresql+psycopg://USER@HOST/DB).

        The schema is upgraded to head first (a catalog from before migrations is adopted),
        so a new file or an empty database just works; with migrate=False a database that is
        not at head is refused instead (when upgrades run as their own deployment step).
        `schema` selects a PostgreSQL schema, which must exist. The pool (pool_size +
        max_overflow connections) is sized for a threaded gRPC server."""
        return cls(url, schema=schema, migrate=migrate, pool_size=pool_size, max_overflow=max_overflow)

    @classmethod
    def sqlite(cls, path) -> Catalog:
        """The embedded default: a SQLite file at `path`, created if missing."""
        return cls.open(f"sqlite:///{path}")

    def close(self) -> None:
        self.engine.dispose()

    # -------------------------------------------------------------- locks

    @contextmanager
    def try_lock(self, name: str, *, ttl_s: float = 60.0) -> Iterator[bool]:
        """Try once, without waiting, to hold the catalog-wide lock `name` for the `with` block;
        yields whether this holder got it (e.g. only one replica runs scheduled selection).

        Not re-entrant: a second try_lock of a held name yields False, even in this process.
        PostgreSQL: a session-level advisory lock on a connection kept for the block; if the
        holder dies, the database drops its session and the lock with it. Scoped to the
        catalog's schema. SQLite: a row in `locks` with an owner and an expiry `ttl_s` ahead,
        renewed every ttl_s / 3 while the block runs; a holder that dies without releasing
        blocks others for at most `ttl_s`. A holder stalled for longer than ttl_s (a
        stopped process, a lost disk) may lose the lock without being told."""
        if self.engine.dialect.name == "postgresql":
            with self._advisory_lock(name) as held:
                yield held
        else:
            with self._lease_lock(name, ttl_s) as held:
                yield held

    @contextmanager
    def _advisory_lock(self, name: str) -> Iterator[bool]:
        # Autocommit: a session-level lock needs no transaction, and an open one would pin the
        # snapshot (vacuum) and trip idle-in-transaction timeouts for as long as the block runs.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            key = sa.cast(advisory_lock_key(conn, name), sa.BigInteger)
            held = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
            try:
                yield held
            finally:
                if held:
                    self._advisory_unlock(conn, key, name)

    @staticmethod
    def _advisory_unlock(conn: sa.Connection, key, name: str) -> None:
        try:
            released = conn.execute(sa.select(sa.func.pg_advisory_unlock(key))).scalar_one()
        except sa.exc.DBAPIError:  # the session is gone, and its locks went with it
            log.warning("lock %r: the connection died while held; the database released it", name)
            return
        if not released:
            # Never hand a connection that may still hold a lock back to the pool.
            log.warning("lock %r was not held at release; closing its connection", name)
            conn.invalidate()

    @contextmanager
    def _lease_lock(self, name: str, ttl_s: float) -> Iterator[bool]:
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        ttl_ms = int(ttl_s * 1000)
        stamp = now_ms()
        claim = self._insert(locks).values(name=name, owner=owner, expires_ms=stamp + ttl_ms)
        claim = claim.on_conflict_do_update(  # take it over only once the last lease ran out
            index_elements=[locks.c.name], set_={"owner": claim.excluded.owner, "expires_ms": claim.excluded.expires_ms},
            where=locks.c.expires_ms <= stamp)
        mine = (locks.c.name == name) & (locks.c.owner == owner)
        with self.engine.begin() as conn:
            conn.execute(claim)
            held = conn.execute(sa.select(locks.c.owner).where(mine)).first() is not None
        if not held:
            yield False
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_lease, args=(name, mine, ttl_ms, stop),
                                   name=f"lock-{name}", daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join()
            with self.engine.begin() as conn:
                conn.execute(locks.delete().where(mine))

    def _renew_lease(self, name: str, mine, ttl_ms: int, stop: threading.Event) -> None:
        while not stop.wait(ttl_ms / 3000):
            try:
                with self.engine.begin() as conn:
                    renewed = conn.execute(locks.update().where(mine).values(expires_ms=now_ms() + ttl_ms)).rowcount
            except sa.exc.OperationalError as exc:  # top of a loop: a busy database must not kill the lease
                log.warning("lock %r: renewing failed (%s); retrying", name, exc)
                continue
            if not renewed:
                log.warning("lock %r: the lease expired and another holder took it", name)
                return

    # -------------------------------------------------------------- candidates

    def insert_candidate(self, values: dict) -> bool:
        """Insert one candidate row; False (and nothing changes) if its id is already there.

        ON CONFLICT DO NOTHING rather than catching the unique violation: under concurrent
        ingest on PostgreSQL the loser of a race then neither errors nor aborts anything.
        RETURNING says whether this statement stored the row (SQLAlchemy promises rowcount
        for UPDATE and DELETE only; on psycopg an INSERT's reads -1)."""
        statement = (self._insert(candidates).values({"state": POOLED, **values})
                     .on_conflict_do_nothing(index_elements=[candidates.c.id]).returning(candidates.c.id))
        with self.engine.begin() as conn:
            return conn.execute(statement).first() is not None

    def has_candidate(self, candidate_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(candidates.c.id).where(candidates.c.id == candidate_id)).first() is not None

    def candidates(self, states: Iterable[str] | None = None, ids: Iterable[str] | None = None) -> list[CandidateRow]:
        query = sa.select(candidates).order_by(candidates.c.capture_time_ms, candidates.c.id)
        if states is not None:
            query = query.where(candidates.c.state.in_(list(states)))
        if ids is not None:
            query = query.where(candidates.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return [CandidateRow.from_row(r) for r in conn.execute(query)]

    def count_by_state(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(candidates.c.state, sa.func.count()).group_by(candidates.c.state))
            return {state: n for state, n in rows}

    def mark_duplicates(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Mark (candidate, duplicate_of) pairs; only candidates still pooled change, so one
        labeled or selected meanwhile by another writer keeps its state."""
        if not pairs:
            return
        with self.engine.begin() as conn:
            conn.execute(
                candidates.update().where(candidates.c.id == sa.bindparam("cid"), candidates.c.state == POOLED).values(
                    state=DUPLICATE, duplicate_of=sa.bindparam("dup")),
                [{"cid": c, "dup": d} for c, d in sorted(pairs)],  # id order (module docstring)
            )

    def record_selection(self, *, config: dict, model_version: int, pool_size: int, duplicates: int,
                         picks: Sequence[dict]) -> int:
        """Store a run and its picks, and move the picked candidates to `selected`, atomically.

        Only candidates still pooled move: when two runs race for one candidate, the first to
        commit claims it (PostgreSQL re-checks the row after waiting for the other's lock), and
        one labeled meanwhile stays labeled. The run's picks are stored either way."""
        with self.engine.begin() as conn:
            run_id = conn.execute(selection_runs.insert().values(
                created_ms=now_ms(), config=json.dumps(config), model_version=model_version,
                pool_size=pool_size, duplicates=duplicates, selected=len(picks))).inserted_primary_key[0]
            if picks:
                conn.execute(selection_picks.insert(), [{**p, "run_id": run_id} for p in picks])
                conn.execute(
                    candidates.update().where(candidates.c.id == sa.bindparam("cid"), candidates.c.state == POOLED)
                    .values(state=SELECTED, selection_run=run_id),
                    [{"cid": cid} for cid in sorted(p["candidate_id"] for p in picks)],  # id order (module docstring)
                )
        return run_id

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> int:
        """Label candidates (any state but rejected); all or nothing. Returns how many changed."""
        ids = [cid for cid, _ in labels]
        if not ids:
            return 0
        with self.engine.begin() as conn:
            found = {r.id for r in conn.execute(sa.select(candidates.c.id).where(candidates.c.id.in_(ids)))}
            missing = [cid for cid in ids if cid not in found]
            if missing:
                raise UnknownCandidates(f"{len(missing)} unknown candidate id(s), e.g. {missing[0]!r}")
            stamp = now_ms()
            conn.execute(
                candidates.update().where(candidates.c.id == sa.bindparam("cid")).values(
                    state=LABELED, label=sa.bindparam("lab"), labeled_ms=stamp),
                [{"cid": cid, "lab": label} for cid, label in sorted(labels)],  # id order (module docstring)
            )
        return len(labels)

    # -------------------------------------------------------------- models

    def add_model(self, *, version: int, name: str, parent_version: int, manifest: dict, files: list[dict],
                  published: bool = True) -> None:
        with self.engine.begin() as conn:
            conn.execute(models.insert().values(
                version=version, name=name, created_ms=now_ms(), parent_version=parent_version,
                manifest=json.dumps(manifest), files=json.dumps(files), published=published))

    def latest_model(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.published.is_(True))
                               .order_by(models.c.version.desc()).limit(1)).first()
        return _model_dict(row) if row else None

    def model(self, version: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.version == version)).first()
        return _model_dict(row) if row else None

    def list_models(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [_model_dict(r) for r in conn.execute(sa.select(models).order_by(models.c.version))]

    # -------------------------------------------------------------- fleet

    def record_heartbeat(self, values: dict) -> None:
        """Insert or update the device's row in one statement, so that concurrent heartbeats
        of a new device (two replicas behind a load balancer) cannot collide."""
        values = {**values, "last_seen_ms": now_ms(), "status": json.dumps(values.get("status", {}))}
        upsert = self._insert(devices).values(**values)
        upsert = upsert.on_conflict_do_update(index_elements=[devices.c.id],
                                              set_={k: upsert.excluded[k] for k in values if k != "id"})
        with self.engine.begin() as conn:
            conn.execute(upsert)

    def devices(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(devices).order_by(devices.c.id))
            return [{**r._asdict(), "status": json.loads(r.status)} for r in rows]

    def record_install(self, *, device_id: str, version: int, status: str, detail: str, smoke_latency_ms: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(installs.insert().values(device_id=device_id, version=version, status=status, detail=detail,
                                                  smoke_latency_ms=smoke_latency_ms, at_ms=now_ms()))

    # -------------------------------------------------------------- device credentials

    def add_device_credential(self, device_id: str, token_sha256: str) -> DeviceCredential:
        """Store a new device's token hash; raises DeviceExists if the id was ever enrolled."""
        record = DeviceCredential(device_id, token_sha256, now_ms(), None)
        try:
            with self.engine.begin() as conn:
                conn.execute(device_credentials.insert().values(
                    id=record.id, token_sha256=record.token_sha256, created_ms=record.created_ms, revoked_ms=None))
        except IntegrityError:
            raise DeviceExists(f"device {device_id!r} already exists (ids are never reused)") from None
        return record

    def device_credential(self, device_id: str) -> DeviceCredential | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(device_credentials).where(device_credentials.c.id == device_id)).first()
        return DeviceCredential(**row._asdict()) if row else None

    def device_credentials(self) -> list[DeviceCredential]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(device_credentials).order_by(device_credentials.c.id))
            return [DeviceCredential(**r._asdict()) for r in rows]

    def revoke_device_credential(self, device_id: str) -> DeviceCredential:
        """Mark revoked now (the first revocation time stays); raises UnknownDevice."""
        with self.engine.begin() as conn:
            conn.execute(device_credentials.update()
                         .where(device_credentials.c.id == device_id, device_credentials.c.revoked_ms.is_(None))
                         .values(revoked_ms=now_ms()))
            row = conn.execute(sa.select(device_credentials).where(device_credentials.c.id == device_id)).first()
        if row is None:
            raise UnknownDevice(f"no device {device_id!r} (see `cloud-selector devices list`)")
        return DeviceCredential(**row._asdict())


def _model_dict(row) -> dict:
    d = row._asdict()
    d["manifest"] = json.loads(d["manifest"])
    d["files"] = json.loads(d["files"])
    return d
