"""The catalog as it was before migrations existed: exactly what metadata.create_all made.

Catalogs created that way are stamped at this revision (see cloud_selector/migrations), so this
file must keep matching that schema column for column and index for index; change the schema
in a later revision, never here.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "candidates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("capture_time_ms", sa.BigInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("model_version", sa.BigInteger, nullable=False),
        sa.Column("blob_key", sa.String(512), nullable=False),
        sa.Column("jpeg_bytes", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("probabilities", sa.LargeBinary, nullable=False),
        sa.Column("least_confidence", sa.Float, nullable=False),
        sa.Column("margin", sa.Float, nullable=False),
        sa.Column("entropy", sa.Float, nullable=False),
        sa.Column("novelty", sa.Float, nullable=False),
        sa.Column("combined", sa.Float, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("extra", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("duplicate_of", sa.String(36)),
        sa.Column("selection_run", sa.Integer),
        sa.Column("label", sa.String(128)),
        sa.Column("labeled_ms", sa.BigInteger),
    )
    op.create_index("ix_candidates_device_id", "candidates", ["device_id"])
    op.create_index("ix_candidates_state", "candidates", ["state"])
    op.create_table(
        "selection_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("model_version", sa.BigInteger, nullable=False),
        sa.Column("pool_size", sa.Integer, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("selected", sa.Integer, nullable=False),
    )
    op.create_table(
        "selection_picks",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("selection_runs.id"), primary_key=True),
        sa.Column("candidate_id", sa.String(36), primary_key=True),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("typicality", sa.Float, nullable=False),
        sa.Column("min_distance", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
    )
    op.create_table(
        "models",
        # Versions are assigned by the registry, never by the database (no sequence on PostgreSQL).
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("parent_version", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
    )
    op.create_table(
        "devices",
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
    op.create_table(
        "device_credentials",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_ms", sa.BigInteger),
    )
    op.create_table(
        "installs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("smoke_latency_ms", sa.Float, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_installs_device_id", "installs", ["device_id"])


def downgrade() -> None:
    for table in ("installs", "device_credentials", "devices", "models", "selection_picks", "selection_runs",
                  "candidates"):
        op.drop_table(table)
