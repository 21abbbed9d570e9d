"""The catalog's tables: the one description of the schema that queries use.

The Alembic revisions in cloud_selector/migrations create these (a test compares the migrated
database with these Table objects on SQLite and PostgreSQL); `cloud_selector.catalog` and the
stores beside it (`releases`, `rollouts`) query them. Add a column here and a revision there,
together.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Every column the dashboard's candidate grid filters, sorts or counts on, led by its default
# order (received_ms, id): one covering index (0007 says why).
DASHBOARD_INDEX_COLUMNS = (
    "received_ms", "id", "device_id", "state", "reason", "predicted_class", "label", "least_confidence", "margin",
    "entropy", "novelty", "combined", "predicted_prob", "capture_time_ms", "jpeg_bytes",
)

candidates = sa.Table(
    "candidates", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("device_id", sa.String(128), nullable=False),
    sa.Column("capture_time_ms", sa.BigInteger, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Column("blob_key", sa.String(512), nullable=False),
    sa.Column("jpeg_bytes", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),  # float32 little-endian
    sa.Column("probabilities", sa.LargeBinary, nullable=False),  # float32 little-endian
    sa.Column("least_confidence", sa.Float, nullable=False),
    sa.Column("margin", sa.Float, nullable=False),
    sa.Column("entropy", sa.Float, nullable=False),
    sa.Column("novelty", sa.Float, nullable=False),
    sa.Column("combined", sa.Float, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("extra", sa.Text, nullable=False),  # JSON metadata from the device
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("duplicate_of", sa.String(36)),
    sa.Column("selection_run", sa.Integer),
    sa.Column("label", sa.String(128)),
    sa.Column("labeled_ms", sa.BigInteger),
    sa.Column("assigned_to", sa.String(128)),  # in_labeling: the labeler or export holding it (0004)
    sa.Column("assigned_ms", sa.BigInteger),
    # The top class of `probabilities` by the model version's class list, set at ingest (0007);
    # NULL when the catalog did not know the version's classes then ("unknown"), and on older rows.
    sa.Column("predicted_class", sa.String(128)),
    sa.Column("predicted_prob", sa.Float),
    # The dashboard's lists: by state newest first, a device's frames in order, a run's picks.
    sa.Index("ix_candidates_state_received_ms", "state", "received_ms"),
    sa.Index("ix_candidates_device_id_capture_time_ms", "device_id", "capture_time_ms"),
    sa.Index("ix_candidates_selection_run", "selection_run"),
    # 0007: the candidate grid (why this index is so wide: the revision's docstring), a class's
    # candidates, and the near-duplicates of one candidate.
    sa.Index("ix_candidates_dashboard", *DASHBOARD_INDEX_COLUMNS),
    sa.Index("ix_candidates_predicted_class", "predicted_class"),
    sa.Index("ix_candidates_duplicate_of", "duplicate_of"),
)

selection_runs = sa.Table(
    "selection_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("model_version", sa.BigInteger, nullable=False),
    sa.Column("pool_size", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("selected", sa.Integer, nullable=False),
    # 0005; NULL on runs recorded before it
    sa.Column("metrics", sa.Text),  # JSON: the picks' metrics next to random picks
    sa.Column("started_ms", sa.BigInteger),
    sa.Column("finished_ms", sa.BigInteger),
    sa.Column("replica", sa.String(128)),
    sa.Column("trigger", sa.String(32)),  # "count" | "time" for scheduled runs
)

selection_picks = sa.Table(
    "selection_picks", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("selection_runs.id"), primary_key=True),
    sa.Column("candidate_id", sa.String(36), primary_key=True),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("typicality", sa.Float, nullable=False),
    sa.Column("min_distance", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("contributions", sa.Text),  # JSON: why it was picked, per strategy (0005; NULL before)
    sa.Index("ix_selection_picks_candidate_id", "candidate_id"),
)

models = sa.Table(
    "models", metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),  # the registry assigns it
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("parent_version", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("files", sa.Text, nullable=False),  # JSON [{path, sha256, size}] incl. manifest.json
    sa.Column("published", sa.Boolean, nullable=False),
)

devices = sa.Table(
    "devices", metadata,
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

# Device credentials: only the sha256 of each token is kept (see cloud_selector/auth.py).
device_credentials = sa.Table(
    "device_credentials", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked_ms", sa.BigInteger),
)

installs = sa.Table(
    "installs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(128), nullable=False, index=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("smoke_latency_ms", sa.Float, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
)

# One row per outcome of labeling (state labeled | skipped | rejected), written with the change (0004).
label_events = sa.Table(
    "label_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("candidate_id", sa.String(36), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("label", sa.String(128)),
    sa.Column("previous_label", sa.String(128)),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("annotator", sa.String(128), nullable=False),
    sa.Column("note", sa.Text, nullable=False),  # e.g. why it was rejected
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_label_events_candidate_id", "candidate_id"),
    sa.Index("ix_label_events_at_ms", "at_ms"),  # 0007: the dashboard's labels per day
)

# The label set imports are checked against (module docstring); id gives the order added (0004).
classes = sa.Table(
    "classes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("origin", sa.String(64), nullable=False),  # "model v3", "manual", "labels:csv", ...
    sa.Column("added_ms", sa.BigInteger, nullable=False),
    sa.Index("ux_classes_name", "name", unique=True),
)

# Leases behind Catalog.try_lock on SQLite (PostgreSQL uses advisory locks and leaves it empty).
locks = sa.Table(
    "locks", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)


# ------------------------------------------------------------------ releases (0006)
# Lineage beside each model row: how it was made, the gate's verdict, who released it.
model_lineage = sa.Table(
    "model_lineage", metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("trainer_mode", sa.String(16), nullable=False),  # head | full | external | seed | imported
    sa.Column("label_count", sa.Integer, nullable=False),
    sa.Column("label_sha256", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # candidate | refused | released | rolled_back
    sa.Column("evaluation", sa.Text),  # JSON: evaluation.EvalReport.to_dict()
    sa.Column("gate", sa.Text),  # JSON: the gate's decision against the release it was compared with
    sa.Column("released_by", sa.String(128)),
    sa.Column("released_ms", sa.BigInteger),
)

# The labels a version was trained on (ids and labels), so a version can be audited and reproduced.
model_labels = sa.Table(
    "model_labels", metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("candidate_id", sa.String(36), primary_key=True),
    sa.Column("label", sa.String(128), nullable=False),
)

# The fixed held-out set the gate evaluates every version on (until `models holdout --reset`).
holdout = sa.Table(
    "holdout", metadata,
    sa.Column("candidate_id", sa.String(36), primary_key=True),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("added_ms", sa.BigInteger, nullable=False),
)

# What each release channel runs when no rollout or pin says otherwise.
channels = sa.Table(
    "channels", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

# Every change of a channel's version: promote, rollback, a rollout completing.
releases = sa.Table(
    "releases", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("previous_version", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
)

device_pins = sa.Table(
    "device_pins", metadata,
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
)

# Signed statements "version R is revoked, run T": what lets a device go back (edge_agent.signing).
revocations = sa.Table(
    "revocations", metadata,
    sa.Column("revoked_version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("target_version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("document", sa.LargeBinary, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

# Devices as the Models service sees them: channel and version from their Watch calls.
watchers = sa.Table(
    "watchers", metadata,
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("seen_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_watchers_channel", "channel"),
)

rollouts = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("previous_version", sa.BigInteger, nullable=False),
    sa.Column("stages", sa.Text, nullable=False),  # JSON list of cumulative percentages, e.g. [10, 50, 100]
    sa.Column("stage", sa.Integer, nullable=False),  # index into stages
    sa.Column("criteria", sa.Text, nullable=False),  # JSON: rollouts.AbortCriteria
    sa.Column("state", sa.String(16), nullable=False),  # running | completed | aborted
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_rollouts_channel_state", "channel", "state"),
)

rollout_devices = sa.Table(
    "rollout_devices", metadata,
    sa.Column("rollout_id", sa.String(36), primary_key=True),
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("stage", sa.Integer, nullable=False),
    # assigned | installed | healthy | failed | timed_out | reverted
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("health", sa.Text),  # JSON of the device's ModelHealth
    sa.Column("assigned_ms", sa.BigInteger, nullable=False),
    sa.Column("reported_ms", sa.BigInteger),
)


# ------------------------------------------------------------------ dashboard (0007)
# People who sign in to the dashboard (cloud_selector/users.py): argon2id hashes only.
users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # reviewer | labeler | admin
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("disabled_ms", sa.BigInteger),  # NULL while the user may sign in
)

# Free-form tags people put on candidates in the dashboard ("night", "glare", ...).
candidate_tags = sa.Table(
    "candidate_tags", metadata,
    sa.Column("candidate_id", sa.String(36), primary_key=True),
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Index("ix_candidate_tags_tag", "tag", "candidate_id"),
)

# Each device's cumulative counters as last reported on a UTC day ('YYYY-MM-DD'), written with
# its heartbeat: the difference between two of a device's days is what it did in between.
fleet_daily = sa.Table(
    "fleet_daily", metadata,
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("frames_seen", sa.BigInteger, nullable=False),
    sa.Column("frames_kept", sa.BigInteger, nullable=False),
    sa.Column("candidates_acked", sa.BigInteger, nullable=False),
    sa.Column("bytes_uploaded", sa.BigInteger, nullable=False),
    sa.Index("ix_fleet_daily_day", "day"),
)
