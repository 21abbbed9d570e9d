"""A fresh PostgreSQL schema per test, in the machine's `test` database.

Each schema is `t_<random>`, so parallel runs and other engineers' tests never see each other's
rows; the URL handed out carries the schema as libpq's search_path option, so code under test
needs nothing but the URL. The schema is dropped (CASCADE) afterwards. An unreachable server
fails the test with a message: PostgreSQL is part of the test bed, never a reason to skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateSchema, DropSchema

BASE_URL = os.environ.get("EDGEFLYWHEEL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class PgSchema:
    url: str  # BASE_URL with search_path set to `schema`
    schema: str
    base_url: str  # without the schema: for Catalog.open(base_url, schema=...)


@contextmanager
def fresh_schema(base_url: str = BASE_URL) -> Iterator[PgSchema]:
    name = f"t_{secrets.token_hex(6)}"
    # lock_timeout: a connection left inside a transaction must fail the drop, not hang the run.
    admin = sa.create_engine(base_url, poolclass=sa.pool.NullPool,
                             connect_args={"connect_timeout": 5, "options": "-clock_timeout=10s"})
    try:
        with admin.begin() as conn:
            conn.execute(CreateSchema(name))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable at {base_url} ({exc.orig}); the catalog tests need it. "
                    "Start it, or point EDGEFLYWHEEL_TEST_PG_URL at a database you may create schemas in.",
                    pytrace=False)
    url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield PgSchema(url=url.render_as_string(hide_password=False), schema=name, base_url=base_url)
    finally:
        with admin.begin() as conn:
            conn.execute(DropSchema(name, cascade=True))
        admin.dispose()
