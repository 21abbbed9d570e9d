"""Releases: model lineage and evaluation, the fixed held-out set, release channels and their
history, device pins, signed revocations, the devices seen by the Models service, and staged
rollouts with their devices.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLES = ("rollout_devices", "rollouts", "watchers", "revocations", "device_pins", "releases", "channels",
           "holdout", "model_labels", "model_lineage")


def upgrade() -> None:
    op.create_table(
        "model_lineage",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("trainer_mode", sa.String(16), nullable=False),
        sa.Column("label_count", sa.Integer, nullable=False),
        sa.Column("label_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("evaluation", sa.Text),
        sa.Column("gate", sa.Text),
        sa.Column("released_by", sa.String(128)),
        sa.Column("released_ms", sa.BigInteger),
    )
    op.create_table(
        "model_labels",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("candidate_id", sa.String(36), primary_key=True),
        sa.Column("label", sa.String(128), nullable=False),
    )
    op.create_table(
        "holdout",
        sa.Column("candidate_id", sa.String(36), primary_key=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("added_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "channels",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("previous_version", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "device_pins",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "revocations",
        sa.Column("revoked_version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("target_version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("document", sa.LargeBinary, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "watchers",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("seen_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_watchers_channel", "watchers", ["channel"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("previous_version", sa.BigInteger, nullable=False),
        sa.Column("stages", sa.Text, nullable=False),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("criteria", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rollouts_channel_state", "rollouts", ["channel", "state"])
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(36), primary_key=True),
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("stage", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("health", sa.Text),
        sa.Column("assigned_ms", sa.BigInteger, nullable=False),
        sa.Column("reported_ms", sa.BigInteger),
    )


def downgrade() -> None:
    for name in _TABLES:
        op.drop_table(name)
