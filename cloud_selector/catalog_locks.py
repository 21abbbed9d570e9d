"""Catalog-wide locks: one holder at a time across replicas (the replica that runs scheduled
selection, the rollout controller). `Catalog.try_lock(name)` tries once, without waiting, and
yields whether this holder got the lock for its `with` block.

Not re-entrant: a second try_lock of a held name yields False, even in this process.
PostgreSQL: a session-level advisory lock on a connection kept for the block; if the holder
dies, the database drops its session and the lock with it. Scoped to the catalog's schema.
SQLite: a row in `locks` with an owner and an expiry `ttl_s` ahead, renewed every ttl_s / 3
while the block runs; a holder that dies without releasing blocks others for at most `ttl_s`.
A holder stalled for longer than ttl_s (a stopped process, a lost disk) may lose the lock
without being told.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from cloud_selector.migrations import advisory_lock_key
from cloud_selector.schema import locks

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def try_lock(engine: sa.Engine, insert, name: str, *, ttl_s: float = 60.0) -> Iterator[bool]:
    """Yield whether this holder got the lock `name` (`insert`: the dialect's insert, which
    compiles ON CONFLICT)."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, name) as held:
            yield held
    else:
        with _lease_lock(engine, insert, name, ttl_s) as held:
            yield held


@contextmanager
def _advisory_lock(engine: sa.Engine, name: str) -> Iterator[bool]:
    # Autocommit: a session-level lock needs no transaction, and an open one would pin the
    # snapshot (vacuum) and trip idle-in-transaction timeouts for as long as the block runs.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        key = sa.cast(advisory_lock_key(conn, name), sa.BigInteger)
        held = conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
        try:
            yield held
        finally:
            if held:
                _advisory_unlock(conn, key, name)

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
def _lease_lock(engine: sa.Engine, insert, name: str, ttl_s: float) -> Iterator[bool]:
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    ttl_ms = int(ttl_s * 1000)
    stamp = _now_ms()
    claim = insert(locks).values(name=name, owner=owner, expires_ms=stamp + ttl_ms)
    claim = claim.on_conflict_do_update(  # take it over only once the last lease ran out
        index_elements=[locks.c.name], set_={"owner": claim.excluded.owner, "expires_ms": claim.excluded.expires_ms},
        where=locks.c.expires_ms <= stamp)
    mine = (locks.c.name == name) & (locks.c.owner == owner)
    with engine.begin() as conn:
        conn.execute(claim)
        held = conn.execute(sa.select(locks.c.owner).where(mine)).first() is not None
    if not held:
        yield False
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_lease, args=(engine, name, mine, ttl_ms, stop),
                               name=f"lock-{name}", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        with engine.begin() as conn:
            conn.execute(locks.delete().where(mine))

def _renew_lease(engine: sa.Engine, name: str, mine, ttl_ms: int, stop: threading.Event) -> None:
    while not stop.wait(ttl_ms / 3000):
        try:
            with engine.begin() as conn:
                renewed = conn.execute(locks.update().where(mine).values(expires_ms=_now_ms() + ttl_ms)).rowcount
        except sa.exc.OperationalError as exc:  # top of a loop: a busy database must not kill the lease
            log.warning("lock %r: renewing failed (%s); retrying", name, exc)
            continue
        if not renewed:
            log.warning("lock %r: the lease expired and another holder took it", name)
            return
