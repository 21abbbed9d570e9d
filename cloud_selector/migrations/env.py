"""Alembic's entry point for the catalog's revisions.

Our code passes an open connection (already inside the transaction that `upgrade_engine`
holds its lock in) through `config.attributes["connection"]`; the alembic command line,
which only developers use, passes a URL instead. `render_as_batch` lets future revisions
alter columns on SQLite, which has no ALTER COLUMN (Alembic rebuilds the table instead).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cloud_selector.catalog import metadata

config = context.config


def run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run(config.attributes["connection"])
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            run(connection)
    finally:
        engine.dispose()
