"""Indexes for the dashboard's lists.

Candidates by state, newest first (the pool, the labeling queue); by device in capture order
(a device's page); by selection run (why each was picked); picks by candidate (the runs that
picked one). The composite indexes start with the columns of ix_candidates_state and
ix_candidates_device_id, which they make redundant: those are dropped, so that ingest, the
hot write path, maintains two indexes on candidates' state and device rather than four.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_candidates_state_received_ms", "candidates", ["state", "received_ms"])
    op.create_index("ix_candidates_device_id_capture_time_ms", "candidates", ["device_id", "capture_time_ms"])
    op.create_index("ix_candidates_selection_run", "candidates", ["selection_run"])
    op.create_index("ix_selection_picks_candidate_id", "selection_picks", ["candidate_id"])
    op.drop_index("ix_candidates_state", table_name="candidates")
    op.drop_index("ix_candidates_device_id", table_name="candidates")


def downgrade() -> None:
    op.create_index("ix_candidates_device_id", "candidates", ["device_id"])
    op.create_index("ix_candidates_state", "candidates", ["state"])
    op.drop_index("ix_selection_picks_candidate_id", table_name="selection_picks")
    op.drop_index("ix_candidates_selection_run", table_name="candidates")
    op.drop_index("ix_candidates_device_id_capture_time_ms", table_name="candidates")
    op.drop_index("ix_candidates_state_received_ms", table_name="candidates")
