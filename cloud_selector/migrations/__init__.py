"""The catalog's database: how to connect to it (SQLite or PostgreSQL) and how its schema moves.

Schema changes are Alembic revisions in `versions/`, run from code: `Catalog.open` upgrades to
head, so embedded use needs no ceremony and no alembic.ini exists at run time. A deployment
that prefers to migrate as a separate step runs `upgrade(url)` (a future `cloud-selector db
upgrade`) and opens its replicas with `Catalog.open(url, migrate=False)`, which refuses a
database that is not at head instead of migrating it.

Concurrent upgrades are serialised by the database, so many replicas may start at once:
PostgreSQL takes a transaction-scoped advisory lock and runs every revision in one transaction
(its DDL is transactional); SQLite runs them inside BEGIN IMMEDIATE, so a second process waits
on the busy timeout and then finds the work done.

Catalogs created before migrations existed (metadata.create_all, no alembic_version table) are
adopted: if exactly the tables of revision 0001 are there, with its columns, the database is
stamped at 0001 and upgraded from there. That is why 0001 is today's schema to the letter and
newer indexes live in later revisions; stamping a file at a revision whose DDL it never ran
would leave it silently without them.

Errors: `CatalogSchemaError` (RuntimeError) — the database cannot serve as this catalog: its
revision is unknown to this code (newer code wrote it), it holds part of the catalog's tables
but no revision, the PostgreSQL schema does not exist, or it is not at head with migrate=False.

Writing a new revision (developers; the database at `url` must be at head):

    from alembic import command
    from cloud_selector.migrations import alembic_config
    command.revision(alembic_config("sqlite:////tmp/c.sqlite"), "what changes", autogenerate=True,
                     rev_id="0004")

then read the generated file: autogenerate misses renames and server-side details.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

log = logging.getLogger(__name__)
_ALEMBIC_LOG = logging.getLogger("alembic")
_ALEMBIC_LOG_LOCK = threading.RLock()


@contextmanager
def _alembic_quiet() -> Iterator[None]:
    """Alembic narrates at INFO (each plugin it registers on import, each context, each step).
    A catalog that migrates itself on open would print that on the CLI's stderr for every new
    data dir, so records below WARNING are dropped while we use it, unless someone set the
    "alembic" logger's level (then theirs holds). The lock keeps concurrent opens in this
    process from restoring each other's level."""
    with _ALEMBIC_LOG_LOCK:
        restore = _ALEMBIC_LOG.level
        if restore == logging.NOTSET:
            _ALEMBIC_LOG.setLevel(logging.WARNING)
        try:
            yield
        finally:
            _ALEMBIC_LOG.setLevel(restore)


with _alembic_quiet():
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

INITIAL_REVISION = "0001"
_HERE = Path(__file__).resolve().parent
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Sized for a threaded gRPC server: every worker thread may hold one connection for a request.
DEFAULT_POOL_SIZE = 10
DEFAULT_MAX_OVERFLOW = 20


class CatalogSchemaError(RuntimeError):
    """The database cannot serve as this catalog (see the module docstring for the cases)."""


# ------------------------------------------------------------------ engines


def create_engine(url: str, *, schema: str | None = None, pool_size: int = DEFAULT_POOL_SIZE,
                  max_overflow: int = DEFAULT_MAX_OVERFLOW, pooled: bool = True) -> sa.Engine:
    """An engine for the catalog at `url` (sqlite:///PATH or postgresql+psycopg://...).

    SQLite gets WAL, synchronous=FULL (an acked candidate must survive a power cut) and a busy
    timeout, because several processes (server, CLI) share one file. PostgreSQL gets a pool
    with pre-ping, so a connection cut by a database restart is replaced instead of failing a
    request. `schema` puts one PostgreSQL schema on the search_path (tests use one per run);
    the schema must exist. `pooled=False` gives one connection per use (short-lived tools)."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"the catalog runs on sqlite or postgresql, not {backend!r} ({url!r})")
    options: dict = {}
    connect_args: dict = {}
    if schema is not None:
        if backend != "postgresql":
            raise ValueError("schema= applies to PostgreSQL only")
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must be a lower-case identifier, got {schema!r}")
        connect_args["options"] = f"-csearch_path={schema}"  # a libpq option, not SQL
    if backend == "sqlite" and _in_memory(parsed):
        # One shared connection, or every checkout would see its own empty database.
        options["poolclass"] = sa.pool.StaticPool
        connect_args["check_same_thread"] = False
    elif not pooled:
        options["poolclass"] = sa.pool.NullPool
    else:
        options.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=backend == "postgresql")
    engine = sa.create_engine(parsed, connect_args=connect_args, **options)
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _in_memory(url: sa.URL) -> bool:
    return url.database in (None, "", ":memory:")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked"
    # at once, without its busy handler, while another connection is doing the same: retry.
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05 + 0.01 * attempt)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _sqlite_immediate(engine: sa.Engine) -> None:
    """Make every transaction on `engine` BEGIN IMMEDIATE and cover DDL too.

    pysqlite neither begins a transaction before DDL nor takes the write lock before the first
    write; migrations need both, so that two processes upgrading one file take turns. This is
    SQLAlchemy's documented recipe (driver autocommit off, our own BEGIN)."""
    def no_driver_transactions(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None

    def begin_immediate(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    sa.event.listen(engine, "connect", no_driver_transactions)
    sa.event.listen(engine, "begin", begin_immediate)


def current_schema(conn: sa.Connection) -> str:
    """The PostgreSQL schema that unqualified names resolve to; raises if none exists."""
    name = conn.execute(sa.select(sa.func.current_schema())).scalar_one()
    if name is None:
        path = conn.execute(sa.select(sa.func.current_setting("search_path"))).scalar_one()
        raise CatalogSchemaError(f"no schema on the search_path ({path}) exists in this database: "
                                 "create it first (CREATE SCHEMA ...) or open without schema=")
    return name


def advisory_lock_key(conn: sa.Connection, name: str) -> int:
    """A 64-bit PostgreSQL advisory lock key for `name` within the connection's schema.

    Advisory locks are per database, not per schema; mixing the schema in keeps two catalogs
    in one database (two deployments, parallel test runs) from blocking each other."""
    digest = hashlib.sha256(f"edgeflywheel\0{current_schema(conn)}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# ------------------------------------------------------------------ migrations


def alembic_config(url: str | None = None, connection: sa.Connection | None = None) -> Config:
    """An Alembic config pointing at our scripts; env.py uses `connection` when given."""
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The revision this code expects (read once from versions/)."""
    with _alembic_quiet():
        return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(url: str, *, schema: str | None = None, revision: str = "head") -> str | None:
    """Upgrade (adopting an unversioned catalog first) the database at `url`; returns the
    revision it is at afterwards."""
    engine = create_engine(url, schema=schema, pooled=False)
    try:
        return upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def current_revision(url: str, *, schema: str | None = None) -> str | None:
    """The revision of the database at `url`; None before the first upgrade (or adoption)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and not _in_memory(parsed) and not Path(parsed.database).exists():
        return None  # looking must not create the file
    engine = create_engine(url, schema=schema, pooled=False)
    try:
        with engine.connect() as conn:
            return revision_of(conn)
    finally:
        engine.dispose()


def revision_of(conn: sa.Connection) -> str | None:
    """`current_revision` on an open connection (a missing PostgreSQL schema raises)."""
    if conn.dialect.name == "postgresql":
        current_schema(conn)
    with _alembic_quiet():
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_engine(engine: sa.Engine, revision: str = "head") -> str | None:
    """`upgrade` on an engine you already have (the catalog's own, for in-memory SQLite)."""
    target = head_revision() if revision == "head" else revision
    with engine.connect() as conn:
        if revision_of(conn) == target:  # the common case: one cheap read, no lock
            return target
    migration_engine = engine
    if engine.dialect.name == "sqlite" and not _in_memory(engine.url):
        migration_engine = create_engine(engine.url.render_as_string(hide_password=False), pooled=False)
        _sqlite_immediate(migration_engine)
    try:
        with _alembic_quiet(), _migration_transaction(migration_engine) as conn:
            try:
                before = revision_of(conn)
                if before is None:
                    _adopt_if_created_before_migrations(conn)
                    before = revision_of(conn)
                command.upgrade(alembic_config(connection=conn), revision)
            except CommandError as exc:  # e.g. a revision in the database that this code lacks
                raise CatalogSchemaError(f"cannot upgrade the catalog: {exc} (was it written by newer "
                                         "code? upgrade edgeflywheel)") from exc
            after = revision_of(conn)
    finally:
        if migration_engine is not engine:
            migration_engine.dispose()
    if before != after:  # equal when another process did it while we waited for the lock
        # A new database is not news; an existing one changing schema is, for whoever runs it.
        log.log(logging.DEBUG if before is None else logging.INFO, "catalog schema upgraded from %s to %s",
                before, after)
    return after


@contextmanager
def _migration_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction that only one upgrader at a time gets (see the module docstring)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
                sa.cast(advisory_lock_key(conn, "catalog-migrations"), sa.BigInteger))))
        yield conn


def _adopt_if_created_before_migrations(conn: sa.Connection) -> None:
    """Stamp an unversioned catalog made by metadata.create_all at 0001; refuse anything else
    that holds our tables. Tables of other applications alone do not count."""
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    if not present:
        return
    initial, head = _tables_at(INITIAL_REVISION), _tables_at("head")
    ours = present & set(head)
    if not ours:
        return
    problems = []
    if missing := sorted(set(initial) - present):
        problems.append(f"tables {missing} are missing")
    if later := sorted(ours - set(initial)):
        problems.append(f"tables {later} belong to later revisions")
    for table in sorted(set(initial) & present):
        columns = {c["name"] for c in inspector.get_columns(table)}
        if columns != initial[table]:
            problems.append(f"table {table} has columns {sorted(columns)}, expected {sorted(initial[table])}")
    if problems:
        raise CatalogSchemaError("the database holds catalog tables but no alembic_version, and they are not "
                                 "the pre-migration schema, so it cannot be adopted: " + "; ".join(problems))
    log.info("adopting a catalog created before migrations: stamping it at %s", INITIAL_REVISION)
    command.stamp(alembic_config(connection=conn), INITIAL_REVISION)


@functools.cache
def _tables_at(revision: str) -> dict[str, frozenset[str]]:
    """{table: column names} after upgrading an empty in-memory SQLite database to `revision`:
    what the revisions really create, rather than a hand-kept copy that could drift."""
    engine = create_engine("sqlite://")
    try:
        with _alembic_quiet(), engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), revision)
            inspector = sa.inspect(conn)
            return {t: frozenset(c["name"] for c in inspector.get_columns(t))
                    for t in inspector.get_table_names() if t != "alembic_version"}
    finally:
        engine.dispose()
