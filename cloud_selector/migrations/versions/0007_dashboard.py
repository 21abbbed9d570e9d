"""The dashboard: its users, candidate tags, per-day fleet counters, each candidate's predicted
class, and the indexes that keep the candidate grid fast at 100k+ candidates.

- candidates.predicted_class / predicted_prob: the top class of the device's probabilities,
  named by the model version's class list, filled at ingest. Nullable: rows from before this
  revision stay NULL ("unknown"), and SQLite adds the columns without rebuilding the table.
- ix_candidates_dashboard: every column the grid filters, sorts or counts on, led by its default
  order (received_ms, id). SQLite stores each row's embedding and probabilities inline, before
  the score and state columns, so reading one score of every row walks the whole table (about
  5 kB a row at 1280 dimensions: 500 MB per 100k candidates). This covering index holds ~150
  bytes a row, so a count or a filter on anything the grid offers reads ~15 MB instead, and
  the newest-first page is a walk from its end. PostgreSQL moves large embeddings out of line
  (TOAST) and scans the narrow heap instead; the index costs it one more entry per write.
- ix_candidates_predicted_class: one class's candidates; ix_candidates_duplicate_of: the
  candidates marked near-duplicates of one (a candidate's detail page); ix_label_events_at_ms:
  labels given per day (the overview) and since a time (the labeling page's progress).
- users, candidate_tags, fleet_daily: new tables (cloud_selector/schema.py describes them).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Written out, not imported: a revision must keep meaning what it meant when it shipped.
_DASHBOARD_COLUMNS = [
    "received_ms", "id", "device_id", "state", "reason", "predicted_class", "label", "least_confidence", "margin",
    "entropy", "novelty", "combined", "predicted_prob", "capture_time_ms", "jpeg_bytes",
]


def upgrade() -> None:
    op.add_column("candidates", sa.Column("predicted_class", sa.String(128)))
    op.add_column("candidates", sa.Column("predicted_prob", sa.Float))
    op.create_index("ix_candidates_dashboard", "candidates", _DASHBOARD_COLUMNS)
    op.create_index("ix_candidates_predicted_class", "candidates", ["predicted_class"])
    op.create_index("ix_candidates_duplicate_of", "candidates", ["duplicate_of"])
    op.create_index("ix_label_events_at_ms", "label_events", ["at_ms"])
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("disabled_ms", sa.BigInteger),
    )
    op.create_table(
        "candidate_tags",
        sa.Column("candidate_id", sa.String(36), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_index("ix_candidate_tags_tag", "candidate_tags", ["tag", "candidate_id"])
    op.create_table(
        "fleet_daily",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("frames_seen", sa.BigInteger, nullable=False),
        sa.Column("frames_kept", sa.BigInteger, nullable=False),
        sa.Column("candidates_acked", sa.BigInteger, nullable=False),
        sa.Column("bytes_uploaded", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_fleet_daily_day", "fleet_daily", ["day"])


def downgrade() -> None:
    op.drop_index("ix_fleet_daily_day", table_name="fleet_daily")
    op.drop_table("fleet_daily")
    op.drop_index("ix_candidate_tags_tag", table_name="candidate_tags")
    op.drop_table("candidate_tags")
    op.drop_table("users")
    op.drop_index("ix_label_events_at_ms", table_name="label_events")
    op.drop_index("ix_candidates_duplicate_of", table_name="candidates")
    op.drop_index("ix_candidates_predicted_class", table_name="candidates")
    op.drop_index("ix_candidates_dashboard", table_name="candidates")
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("predicted_prob")
        batch.drop_column("predicted_class")
