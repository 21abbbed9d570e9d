"""The catalog on both backends: migrations, round trips, concurrent writers and the lock.

Most tests take `catalog_url` (conftest.py), so each runs on a new SQLite file and on a fresh
PostgreSQL schema. "Another process" is a real child interpreter running CHILD below.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cloud_selector import catalog as cat
from cloud_selector.catalog import (
    DUPLICATE, LABELED, POOLED, SELECTED, Catalog, CatalogSchemaError, DeviceExists, UnknownCandidates,
    UnknownDevice, current_revision, head_revision, metadata, pack_floats, upgrade,
)
from conftest import wait_for


def candidate_values(cid: str, *, device_id: str = "cam-1", capture_time_ms: int = 1_000, **overrides) -> dict:
    return {
        "id": cid, "device_id": device_id, "capture_time_ms": capture_time_ms, "received_ms": 2_000,
        "model_version": 1, "blob_key": f"candidates/{cid}.jpg", "jpeg_bytes": 100, "width": 32, "height": 24,
        "embedding": pack_floats([0.5, -1.0, 2.0]), "probabilities": pack_floats([0.25, 0.75]),
        "least_confidence": 0.25, "margin": 0.5, "entropy": 0.8, "novelty": 0.1, "combined": 0.4,
        "reason": "uncertainty", "extra": '{"source": "test"}', **overrides,
    }


@pytest.fixture
def catalog(catalog_url):
    c = Catalog.open(catalog_url)
    yield c
    c.close()


def ids(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def run_in_threads(*targets):
    """Run the callables at once (a barrier releases them together); returns their results."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list = []

    def go(i, target):
        barrier.wait()
        try:
            results[i] = target()
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    return results


# ------------------------------------------------------------------ schema and migrations


def test_migrates_an_empty_database_to_head(catalog_url):
    assert current_revision(catalog_url) is None
    Catalog.open(catalog_url).close()
    assert current_revision(catalog_url) == head_revision() == "0007"
    engine = sa.create_engine(catalog_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == set(metadata.tables) | {"alembic_version"}
    engine.dispose()
    assert upgrade(catalog_url) == head_revision()  # a second upgrade changes nothing
    Catalog.open(catalog_url, migrate=False).close()


def test_migrated_schema_matches_the_table_metadata(catalog):
    with catalog.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, metadata) == []


def test_concurrent_opens_of_an_empty_database_migrate_it_once(catalog_url):
    opened = run_in_threads(lambda: Catalog.open(catalog_url), lambda: Catalog.open(catalog_url))
    for c in opened:
        c.close()
    assert current_revision(catalog_url) == head_revision()


def test_refuses_a_database_written_by_newer_code(catalog_url):
    Catalog.open(catalog_url).close()
    version = sa.table("alembic_version", sa.column("version_num"))
    engine = sa.create_engine(catalog_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(version.update().values(version_num="9999"))
    engine.dispose()
    with pytest.raises(CatalogSchemaError, match="9999"):
        Catalog.open(catalog_url)


def test_migrate_false_refuses_a_database_that_is_not_at_head(catalog_url):
    with pytest.raises(CatalogSchemaError, match="revision None"):
        Catalog.open(catalog_url, migrate=False)
    upgrade(catalog_url)
    Catalog.open(catalog_url, migrate=False).close()


def test_sqlite_catalog_uses_wal(tmp_path):
    c = Catalog.sqlite(tmp_path / "catalog.sqlite")
    c.insert_candidate(candidate_values("c1"))
    assert (tmp_path / "catalog.sqlite-wal").exists()
    c.close()


def test_postgres_schema_argument_and_missing_schema(pg_schema):
    c = Catalog.open(pg_schema.base_url, schema=pg_schema.schema)
    assert c.insert_candidate(candidate_values("c1"))
    assert c.engine.pool.size() == 10
    c.close()
    engine = sa.create_engine(pg_schema.base_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert "candidates" in sa.inspect(conn).get_table_names(schema=pg_schema.schema)
    engine.dispose()
    with pytest.raises(CatalogSchemaError, match="CREATE SCHEMA"):
        Catalog.open(pg_schema.base_url, schema=f"{pg_schema.schema}_missing")
    with pytest.raises(ValueError, match="identifier"):
        Catalog.open(pg_schema.base_url, schema="x; drop table candidates")


def test_postgres_pool_replaces_a_connection_the_server_dropped(pg_url):
    c = Catalog.open(pg_url)
    with c.engine.connect() as conn:  # the pool now keeps this connection
        pid = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar_one()
    admin.dispose()
    assert c.count_by_state() == {}  # pre-ping noticed and reconnected
    c.close()


# A frozen copy of the tables as metadata.create_all made them before migrations existed.
def _pre_migration_metadata() -> sa.MetaData:
    old = sa.MetaData()
    sa.Table("candidates", old, sa.Column("id", sa.String(36), primary_key=True),
             sa.Column("device_id", sa.String(128), nullable=False, index=True),
             *[sa.Column(n, sa.BigInteger, nullable=False) for n in ("capture_time_ms", "received_ms", "model_version")],
             sa.Column("blob_key", sa.String(512), nullable=False),
             *[sa.Column(n, sa.Integer, nullable=False) for n in ("jpeg_bytes", "width", "height")],
             *[sa.Column(n, sa.LargeBinary, nullable=False) for n in ("embedding", "probabilities")],
             *[sa.Column(n, sa.Float, nullable=False) for n in ("least_confidence", "margin", "entropy", "novelty",
                                                                "combined")],
             sa.Column("reason", sa.String(32), nullable=False), sa.Column("extra", sa.Text, nullable=False),
             sa.Column("state", sa.String(16), nullable=False, index=True), sa.Column("duplicate_of", sa.String(36)),
             sa.Column("selection_run", sa.Integer), sa.Column("label", sa.String(128)),
             sa.Column("labeled_ms", sa.BigInteger))
    sa.Table("selection_runs", old, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("created_ms", sa.BigInteger, nullable=False), sa.Column("config", sa.Text, nullable=False),
             sa.Column("model_version", sa.BigInteger, nullable=False),
             *[sa.Column(n, sa.Integer, nullable=False) for n in ("pool_size", "duplicates", "selected")])
    sa.Table("selection_picks", old,
             sa.Column("run_id", sa.Integer, sa.ForeignKey("selection_runs.id"), primary_key=True),
             sa.Column("candidate_id", sa.String(36), primary_key=True), sa.Column("rank", sa.Integer, nullable=False),
             *[sa.Column(n, sa.Float, nullable=False) for n in ("typicality", "min_distance", "score")])
    sa.Table("models", old, sa.Column("version", sa.BigInteger, primary_key=True),
             sa.Column("name", sa.String(128), nullable=False), sa.Column("created_ms", sa.BigInteger, nullable=False),
             sa.Column("parent_version", sa.BigInteger, nullable=False), sa.Column("manifest", sa.Text, nullable=False),
             sa.Column("files", sa.Text, nullable=False), sa.Column("published", sa.Boolean, nullable=False))
    sa.Table("devices", old, sa.Column("id", sa.String(128), primary_key=True),
             *[sa.Column(n, sa.BigInteger, nullable=False) for n in (
                 "last_seen_ms", "model_version", "frames_seen", "frames_kept", "candidates_acked", "spool_depth",
                 "spool_bytes")],
             sa.Column("fps", sa.Float, nullable=False), sa.Column("status", sa.Text, nullable=False))
    sa.Table("device_credentials", old, sa.Column("id", sa.String(64), primary_key=True),
             sa.Column("token_sha256", sa.String(64), nullable=False),
             sa.Column("created_ms", sa.BigInteger, nullable=False), sa.Column("revoked_ms", sa.BigInteger))
    sa.Table("installs", old, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("device_id", sa.String(128), nullable=False, index=True),
             sa.Column("version", sa.BigInteger, nullable=False), sa.Column("status", sa.String(16), nullable=False),
             sa.Column("detail", sa.Text, nullable=False), sa.Column("smoke_latency_ms", sa.Float, nullable=False),
             sa.Column("at_ms", sa.BigInteger, nullable=False))
    return old


def test_adopts_a_sqlite_catalog_created_before_migrations(tmp_path):
    path = tmp_path / "catalog.sqlite"
    old = _pre_migration_metadata()
    engine = sa.create_engine(f"sqlite:///{path}")
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["candidates"].insert().values({**candidate_values("old-1"), "state": LABELED,
                                                                "label": "shirt"}))
    engine.dispose()
    assert current_revision(f"sqlite:///{path}") is None

    c = Catalog.sqlite(path)
    assert current_revision(f"sqlite:///{path}") == head_revision()
    [row] = c.candidates()
    assert (row.id, row.state, row.label) == ("old-1", LABELED, "shirt")
    with c.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        index_names = {i["name"] for i in sa.inspect(conn).get_indexes("candidates")}
    assert "ix_candidates_state_received_ms" in index_names and "ix_candidates_state" not in index_names
    assert c.insert_candidate(candidate_values("new-1"))
    c.close()


def test_refuses_to_adopt_a_partial_catalog(tmp_path):
    path = tmp_path / "catalog.sqlite"
    old = _pre_migration_metadata()
    engine = sa.create_engine(f"sqlite:///{path}")
    old.tables["candidates"].create(engine)
    engine.dispose()
    with pytest.raises(CatalogSchemaError, match="missing"):
        Catalog.sqlite(path)
    assert current_revision(f"sqlite:///{path}") is None  # nothing was stamped or created


def test_installs_beside_other_applications_tables(catalog_url):
    other = sa.MetaData()
    sa.Table("someone_elses", other, sa.Column("id", sa.Integer, primary_key=True))
    engine = sa.create_engine(catalog_url, poolclass=sa.pool.NullPool)
    other.create_all(engine)
    engine.dispose()
    Catalog.open(catalog_url).close()
    assert current_revision(catalog_url) == head_revision()


# ------------------------------------------------------------------ candidates


def test_insert_candidate_is_idempotent(catalog):
    assert catalog.insert_candidate(candidate_values("c1"))
    assert not catalog.insert_candidate(candidate_values("c1", device_id="someone-else", blob_key="other"))
    [row] = catalog.candidates()
    assert (row.device_id, row.blob_key, row.state) == ("cam-1", "candidates/c1.jpg", POOLED)
    assert catalog.has_candidate("c1") and not catalog.has_candidate("c2")


def test_concurrent_inserts_from_two_catalogs_store_each_id_once(catalog_url):
    a, b = Catalog.open(catalog_url), Catalog.open(catalog_url)
    wanted = ids(100)
    stored = run_in_threads(*[lambda c=c: sum(c.insert_candidate(candidate_values(i)) for i in wanted) for c in (a, b)])
    assert sum(stored) == 100
    assert a.count_by_state() == {POOLED: 100}
    a.close(), b.close()


CHILD = r"""
import sys
from cloud_selector.catalog import Catalog, pack_floats

url, role, arg = sys.argv[1:4]
catalog = Catalog.open(url)
if role == "insert":
    print("ready", flush=True)
    sys.stdin.readline()
    stored = 0
    for cid in arg.split(","):
        stored += catalog.insert_candidate({
            "id": cid, "device_id": "cam-2", "capture_time_ms": 1, "received_ms": 2, "model_version": 1,
            "blob_key": cid, "jpeg_bytes": 1, "width": 1, "height": 1, "embedding": pack_floats([1.0]),
            "probabilities": pack_floats([1.0]), "least_confidence": 0.0, "margin": 0.0, "entropy": 0.0,
            "novelty": 0.0, "combined": 0.0, "reason": "novelty", "extra": "{}"})
    print(stored, flush=True)
elif role == "lock":
    with catalog.try_lock(arg, ttl_s=1.0) as held:
        print(held, flush=True)
        sys.stdin.readline()  # hold until told (or killed)
"""


def start_child(url: str, role: str, arg: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, role, arg], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(child: subprocess.Popen) -> str:
    line = child.stdout.readline().strip()
    if not line:
        child.wait(10)
        pytest.fail(f"child exited {child.returncode}: {child.stderr.read()}")
    return line


def test_two_processes_store_a_candidate_once(catalog_url):
    """Also two replicas starting on an empty database at once: both migrate it, one waits."""
    wanted = ",".join(ids(200))
    children = [start_child(catalog_url, "insert", wanted) for _ in range(2)]
    try:
        assert [read_line(c) for c in children] == ["ready", "ready"]
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        stored = [int(read_line(c)) for c in children]
    finally:
        for c in children:
            c.kill()
            c.wait(10)
    assert sum(stored) == 200
    c = Catalog.open(catalog_url)
    assert c.count_by_state() == {POOLED: 200}
    c.close()


def test_candidate_rows_round_trip(catalog):
    catalog.insert_candidate(candidate_values("b", capture_time_ms=2, extra='{"k": "v"}'))
    catalog.insert_candidate(candidate_values("a", capture_time_ms=2))
    catalog.insert_candidate(candidate_values("z", capture_time_ms=1))
    rows = catalog.candidates()
    assert [r.id for r in rows] == ["z", "a", "b"]  # capture time, then id
    b = rows[2]
    assert b.embedding.dtype == np.float32 and b.embedding.tolist() == [0.5, -1.0, 2.0]
    assert b.probabilities.tolist() == [0.25, 0.75]
    assert b.scores == {"least_confidence": 0.25, "margin": 0.5, "entropy": 0.8, "novelty": 0.1, "combined": 0.4}
    assert (b.extra, b.reason, b.model_version, b.label) == ({"k": "v"}, "uncertainty", 1, None)
    assert [r.id for r in catalog.candidates(ids=["b", "z", "nope"])] == ["z", "b"]
    assert catalog.candidates(states=[SELECTED]) == []


def test_duplicates_selection_and_labels(catalog):
    for i in ids(6):
        catalog.insert_candidate(candidate_values(i))
    catalog.mark_duplicates([("c0005", "c0000")])
    picks = [{"candidate_id": cid, "rank": r, "typicality": 1.0, "min_distance": 0.5, "score": 0.5}
             for r, cid in enumerate(["c0001", "c0002"])]
    run_id = catalog.record_selection(config={"n": 2}, model_version=1, pool_size=5, duplicates=1, picks=picks)
    assert catalog.count_by_state() == {POOLED: 3, SELECTED: 2, DUPLICATE: 1}
    with catalog.engine.connect() as conn:
        run = conn.execute(sa.select(cat.selection_runs)).one()
        stored_picks = conn.execute(sa.select(cat.selection_picks.c.candidate_id, cat.selection_picks.c.rank)
                                    .order_by(cat.selection_picks.c.rank)).all()
        selected_by = dict(conn.execute(sa.select(cat.candidates.c.id, cat.candidates.c.selection_run)
                                        .where(cat.candidates.c.state == SELECTED)).all())
        dup_of = conn.execute(sa.select(cat.candidates.c.duplicate_of).where(cat.candidates.c.id == "c0005")).scalar()
    assert (run.id, run.selected, run.pool_size, run.duplicates) == (run_id, 2, 5, 1)
    assert [tuple(p) for p in stored_picks] == [("c0001", 0), ("c0002", 1)]
    assert selected_by == {"c0001": run_id, "c0002": run_id} and dup_of == "c0000"

    assert catalog.set_labels([("c0001", "shirt"), ("c0003", "shoe")]) == 2
    labeled = {r.id: r.label for r in catalog.candidates(states=[LABELED])}
    assert labeled == {"c0001": "shirt", "c0003": "shoe"}
    with pytest.raises(UnknownCandidates):
        catalog.set_labels([("c0002", "bag"), ("missing", "bag")])
    assert catalog.candidates(ids=["c0002"])[0].state == SELECTED  # all or nothing
    assert catalog.set_labels([]) == 0

    # A later run that still holds a stale pool must not move labeled or duplicate rows back.
    catalog.record_selection(config={}, model_version=1, pool_size=3, duplicates=0, picks=[
        {"candidate_id": cid, "rank": 0, "typicality": 1.0, "min_distance": 0.5, "score": 0.5}
        for cid in ("c0003", "c0005")])
    catalog.mark_duplicates([("c0001", "c0000")])
    states = {r.id: r.state for r in catalog.candidates()}
    assert (states["c0003"], states["c0005"], states["c0001"]) == (LABELED, DUPLICATE, LABELED)


def test_concurrent_selection_runs_claim_each_candidate_once(catalog_url):
    a, b = Catalog.open(catalog_url), Catalog.open(catalog_url)
    pool = ids(1500)
    with a.engine.begin() as conn:
        conn.execute(cat.candidates.insert(), [{**candidate_values(i), "state": POOLED} for i in pool])

    def run(c, chosen):
        return c.record_selection(config={}, model_version=1, pool_size=len(pool), duplicates=0, picks=[
            {"candidate_id": cid, "rank": r, "typicality": 1.0, "min_distance": 0.5, "score": 0.5}
            for r, cid in enumerate(chosen)])

    # Opposite rank orders: updating rows in pick order could deadlock on PostgreSQL.
    run_a, run_b = run_in_threads(lambda: run(a, pool[:1000]), lambda: run(b, pool[500:][::-1]))
    with a.engine.connect() as conn:
        owner = dict(conn.execute(sa.select(cat.candidates.c.id, cat.candidates.c.selection_run)).all())
        picks = dict(conn.execute(sa.select(cat.selection_picks.c.run_id, sa.func.count())
                                  .group_by(cat.selection_picks.c.run_id)).all())
    assert a.count_by_state() == {SELECTED: 1500}
    assert picks == {run_a: 1000, run_b: 1000}
    assert all(owner[i] == run_a for i in pool[:500]) and all(owner[i] == run_b for i in pool[1000:])
    # Every contested candidate went to one run whole: the first to commit took them all.
    assert len({owner[i] for i in pool[500:1000]}) == 1
    a.close(), b.close()


def test_concurrent_labelers(catalog_url):
    a, b = Catalog.open(catalog_url), Catalog.open(catalog_url)
    pool = ids(40)
    for i in pool:
        a.insert_candidate(candidate_values(i))
    run_in_threads(lambda: a.set_labels([(i, "shirt") for i in pool[:25]]),
                   lambda: b.set_labels([(i, "shoe") for i in pool[15:]]))
    labels = {r.id: r.label for r in a.candidates(states=[LABELED])}
    assert len(labels) == 40
    assert {labels[i] for i in pool[:15]} == {"shirt"} and {labels[i] for i in pool[25:]} == {"shoe"}
    assert len({labels[i] for i in pool[15:25]}) == 1  # one writer's transaction won the overlap whole
    a.close(), b.close()


# ------------------------------------------------------------------ models, fleet, credentials


def test_models_round_trip(catalog):
    assert catalog.latest_model() is None and catalog.list_models() == []
    files = [{"path": "model.onnx", "sha256": "ab" * 32, "size": 10}]
    catalog.add_model(version=1, name="m", parent_version=0, manifest={"classes": ["a", "b"]}, files=files)
    catalog.add_model(version=2, name="m", parent_version=1, manifest={"classes": ["a"]}, files=[], published=False)
    latest = catalog.latest_model()
    assert (latest["version"], latest["manifest"], latest["files"], latest["published"]) == (
        1, {"classes": ["a", "b"]}, files, True)
    assert catalog.model(2)["published"] is False and catalog.model(3) is None
    assert [m["version"] for m in catalog.list_models()] == [1, 2]
    with pytest.raises(sa.exc.IntegrityError):
        catalog.add_model(version=1, name="again", parent_version=0, manifest={}, files=[])


def heartbeat(device_id: str, frames_seen: int) -> dict:
    return {"id": device_id, "model_version": 1, "frames_seen": frames_seen, "frames_kept": 1, "candidates_acked": 1,
            "spool_depth": 0, "spool_bytes": 0, "fps": 9.5, "status": {"ok": True}}


def test_heartbeats_and_installs(catalog_url):
    a, b = Catalog.open(catalog_url), Catalog.open(catalog_url)
    # Two replicas receive the first heartbeats of one new device at once: one row, no error.
    run_in_threads(*[lambda c=c: [c.record_heartbeat(heartbeat("cam-9", n)) for n in range(20)] for c in (a, b)])
    a.record_heartbeat(heartbeat("cam-9", 100))
    a.record_heartbeat(heartbeat("cam-1", 5))
    devices = a.devices()
    assert [d["id"] for d in devices] == ["cam-1", "cam-9"]
    assert (devices[1]["frames_seen"], devices[1]["status"], devices[1]["fps"]) == (100, {"ok": True}, 9.5)
    a.record_install(device_id="cam-9", version=2, status="ok", detail="", smoke_latency_ms=3.5)
    with a.engine.connect() as conn:
        assert conn.execute(sa.select(cat.installs.c.device_id, cat.installs.c.version)).all() == [("cam-9", 2)]
    a.close(), b.close()


def test_device_credentials_round_trip(catalog):
    record = catalog.add_device_credential("cam-1", "f" * 64)
    assert catalog.device_credential("cam-1") == record and record.revoked_ms is None
    with pytest.raises(DeviceExists):
        catalog.add_device_credential("cam-1", "0" * 64)
    revoked = catalog.revoke_device_credential("cam-1")
    assert revoked.revoked_ms is not None
    assert catalog.revoke_device_credential("cam-1").revoked_ms == revoked.revoked_ms  # first time stays
    with pytest.raises(DeviceExists):  # ids are never reused, revoked or not
        catalog.add_device_credential("cam-1", "0" * 64)
    with pytest.raises(UnknownDevice):
        catalog.revoke_device_credential("nobody")
    catalog.add_device_credential("cam-0", "e" * 64)
    assert [c.id for c in catalog.device_credentials()] == ["cam-0", "cam-1"]
    assert catalog.device_credential("nobody") is None


# ------------------------------------------------------------------ try_lock


def test_try_lock_is_exclusive_between_catalogs(catalog_url):
    a, b = Catalog.open(catalog_url), Catalog.open(catalog_url)
    with a.try_lock("selection") as held_a:
        assert held_a
        with b.try_lock("selection") as held_b, a.try_lock("selection") as again:
            assert not held_b and not again  # not re-entrant, even in the same process
        with b.try_lock("retrain") as other:
            assert other  # names are independent
    with b.try_lock("selection") as held_b:
        assert held_b  # released at the end of a's block
    a.close(), b.close()


def test_try_lock_excludes_another_process_and_frees_when_it_dies(catalog_url):
    c = Catalog.open(catalog_url)
    holder = start_child(catalog_url, "lock", "selection")
    try:
        assert read_line(holder) == "True"
        with c.try_lock("selection") as held:
            assert not held
        holder.send_signal(signal.SIGKILL)  # dies holding it: no release runs
        holder.wait(10)
    finally:
        holder.kill()
        holder.wait(10)

    def free() -> bool:  # PostgreSQL ends the session at once; SQLite's lease (ttl 1 s) runs out
        with c.try_lock("selection") as held:
            return held
    wait_for(free, 5.0, "the dead holder's lock to be released")

    holder = start_child(catalog_url, "lock", "selection")
    try:
        with c.try_lock("selection") as held:
            assert held
            assert read_line(holder) == "False"  # and the other process cannot take it from us
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(10) == 0
    finally:
        holder.kill()
        holder.wait(10)
    c.close()


def test_sqlite_lease_is_renewed_while_held(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    a, b = Catalog.open(url), Catalog.open(url)
    with a.try_lock("selection", ttl_s=0.3) as held:
        assert held
        threading.Event().wait(1.0)  # three lease lengths: only renewal keeps it
        with b.try_lock("selection") as other:
            assert not other
    a.close(), b.close()


def test_migrations_ship_inside_the_package():
    """The revisions ship inside the package (pyproject lists the template as package data)."""
    here = Path(cat.__file__).parent / "migrations"
    assert (here / "env.py").is_file() and (here / "script.py.mako").is_file()
    assert sorted(p.name for p in (here / "versions").glob("0*.py")) == [
        "0001_initial.py", "0002_dashboard_indexes.py", "0003_locks.py", "0004_labeling_queue.py",
        "0005_selection_records.py", "0006_releases.py", "0007_dashboard.py"]
