"""The catalog: every candidate's row, labels, selection runs, model versions and devices.

SQLAlchemy Core over SQLite (WAL) by default; the same code runs on PostgreSQL (the storage
issue adds migrations). All SQL goes through SQLAlchemy expressions, never string formatting.

Candidate states:  pooled -> selected -> labeled,  pooled -> duplicate,  * -> rejected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

POOLED, DUPLICATE, SELECTED, LABELED, REJECTED = "pooled", "duplicate", "selected", "labeled", "rejected"
STATES = (POOLED, DUPLICATE, SELECTED, LABELED, REJECTED)

metadata = sa.MetaData()

candidates = sa.Table(
    "candidates", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("device_id", sa.String(128), nullable=False, index=True),
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
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("duplicate_of", sa.String(36)),
    sa.Column("selection_run", sa.Integer),
    sa.Column("label", sa.String(128)),
    sa.Column("labeled_ms", sa.BigInteger),
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
)

models = sa.Table(
    "models", metadata,
    sa.Column("version", sa.BigInteger, primary_key=True),
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
    def __init__(self, url: str):
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    @classmethod
    def sqlite(cls, path) -> "Catalog":
        return cls(f"sqlite:///{path}")

    def close(self) -> None:
        self.engine.dispose()

    # -------------------------------------------------------------- candidates

    def insert_candidate(self, values: dict) -> bool:
        """Insert one candidate row; False (and nothing changes) if its id is already there."""
        try:
            with self.engine.begin() as conn:
                conn.execute(candidates.insert().values({"state": POOLED, **values}))
        except IntegrityError:
            return False
        return True

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
        if not pairs:
            return
        with self.engine.begin() as conn:
            conn.execute(
                candidates.update().where(candidates.c.id == sa.bindparam("cid")).values(
                    state=DUPLICATE, duplicate_of=sa.bindparam("dup")),
                [{"cid": c, "dup": d} for c, d in pairs],
            )

    def record_selection(self, *, config: dict, model_version: int, pool_size: int, duplicates: int,
                         picks: Sequence[dict]) -> int:
        """Store a run and its picks, and move the picked candidates to `selected`, atomically."""
        with self.engine.begin() as conn:
            run_id = conn.execute(selection_runs.insert().values(
                created_ms=now_ms(), config=json.dumps(config), model_version=model_version,
                pool_size=pool_size, duplicates=duplicates, selected=len(picks))).inserted_primary_key[0]
            if picks:
                conn.execute(selection_picks.insert(), [{**p, "run_id": run_id} for p in picks])
                conn.execute(
                    candidates.update().where(candidates.c.id == sa.bindparam("cid")).values(
                        state=SELECTED, selection_run=run_id),
                    [{"cid": p["candidate_id"]} for p in picks],
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
                [{"cid": cid, "lab": label} for cid, label in labels],
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
        values = {**values, "last_seen_ms": now_ms(), "status": json.dumps(values.get("status", {}))}
        with self.engine.begin() as conn:
            updated = conn.execute(devices.update().where(devices.c.id == values["id"]).values(**values)).rowcount
            if not updated:
                try:
                    with conn.begin_nested():
                        conn.execute(devices.insert().values(**values))
                except IntegrityError:  # another heartbeat of the same device won the race
                    conn.execute(devices.update().where(devices.c.id == values["id"]).values(**values))

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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
