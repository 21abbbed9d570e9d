"""Selection runs as records: each pick's per-strategy contributions, the run's metrics against
random picks, when it started and finished, which replica ran it and what triggered it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("selection_picks") as batch:
        batch.add_column(sa.Column("contributions", sa.Text))
    with op.batch_alter_table("selection_runs") as batch:
        batch.add_column(sa.Column("metrics", sa.Text))
        batch.add_column(sa.Column("started_ms", sa.BigInteger))
        batch.add_column(sa.Column("finished_ms", sa.BigInteger))
        batch.add_column(sa.Column("replica", sa.String(128)))
        batch.add_column(sa.Column("trigger", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("selection_runs") as batch:
        for name in ("trigger", "replica", "finished_ms", "started_ms", "metrics"):
            batch.drop_column(name)
    with op.batch_alter_table("selection_picks") as batch:
        batch.drop_column("contributions")
