"""The labeling queue: who holds a candidate, the history of its labels, and the class list.

- candidates.assigned_to / assigned_ms: the labeler (or export) a candidate in `in_labeling`
  was handed to, and when; `Catalog.requeue_stale` returns old assignments to `selected`.
  Nullable, so existing rows need no value and SQLite can add them without a table rebuild.
- label_events: one row per outcome of labeling (labeled, skipped, rejected) with the label
  before and after, where it came from and who gave it; indexed by candidate for
  `cloud-selector labels history`.
- classes: the label set, managed explicitly. It is filled here from what a catalog already
  implies -- the latest published model's classes in their order, then every label in use,
  sorted -- so an upgraded catalog accepts the same labels as before the upgrade.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("candidates", sa.Column("assigned_to", sa.String(128)))
    op.add_column("candidates", sa.Column("assigned_ms", sa.BigInteger))
    op.create_table(
        "label_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("candidate_id", sa.String(36), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("previous_label", sa.String(128)),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("annotator", sa.String(128), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_label_events_candidate_id", "label_events", ["candidate_id"])
    classes = op.create_table(
        "classes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("added_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ux_classes_name", "classes", ["name"], unique=True)
    _fill_classes(op.get_bind(), classes)


def _fill_classes(conn: sa.Connection, classes: sa.Table) -> None:
    models = sa.table("models", sa.column("version"), sa.column("manifest"), sa.column("published"))
    candidates = sa.table("candidates", sa.column("label"), sa.column("state"))
    latest = conn.execute(sa.select(models.c.version, models.c.manifest).where(models.c.published.is_(True))
                          .order_by(models.c.version.desc()).limit(1)).first()
    rows: list[dict] = []
    stamp = int(time.time() * 1000)
    if latest is not None:
        for name in json.loads(latest.manifest).get("classes", []):
            rows.append({"name": name, "origin": f"model v{latest.version}", "added_ms": stamp})
    seen = {row["name"] for row in rows}
    used = conn.execute(sa.select(candidates.c.label).distinct()
                        .where(candidates.c.state == "labeled", candidates.c.label.is_not(None))).scalars()
    rows += [{"name": name, "origin": "labels", "added_ms": stamp} for name in sorted(set(used) - seen)]
    if rows:
        conn.execute(classes.insert(), rows)


def downgrade() -> None:
    op.drop_index("ux_classes_name", table_name="classes")
    op.drop_table("classes")
    op.drop_index("ix_label_events_candidate_id", table_name="label_events")
    op.drop_table("label_events")
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("assigned_ms")
        batch.drop_column("assigned_to")
