"""The catalog: every candidate's row, labels, selection runs, model versions and devices.

SQLAlchemy Core over a SQLite file (WAL) by default, or PostgreSQL for several replicas:
`Catalog.open(url)`. The Table objects below are the one description of the schema that
queries use; the Alembic revisions in cloud_selector/migrations create it (a test checks that
the two agree on both backends), and `Catalog.open` upgrades to head. All SQL goes through
SQLAlchemy expressions, never string formatting.

Candidate states (the labeling queue is `selected` + `in_labeling`):

    pooled ──select──> selected ──export / assign──> in_labeling ──label──> labeled
      │                   ^                              │
      └──> duplicate      └──── requeue_stale ───────────┤  (assigned too long ago)
                                                         └──skip──> skipped
    any state ──reject──> rejected          any state ──label──> labeled
    pooled, duplicate, skipped, rejected ──queue_for_labeling (by hand)──> selected

A label from a person is the latest word: `set_labels` labels a candidate in any state (also
skipped, rejected or duplicate), and every outcome of labeling (labeled, skipped, rejected) is
one row in `label_events` with the label before and after, its source and its annotator, written
in the transaction that changes the candidate. `labels history` reads it back.

Classes: `class_list()` is the label set that imports check against, kept in the `classes`
table. It grows only on purpose: `add_class`, labels imported with new classes allowed (every
label that `set_labels` writes is added, so no labeled candidate has a class outside the list),
and publishing a model (its classes are added in the same transaction as its row). Classes are
never removed here: a labeled candidate may still use one. The list is ordered as the latest
model's classes, then the others in the order they were added; a class outside the latest model
makes the next training run grow the head (retrain appends it).

Several writers (threads, processes, replicas on one PostgreSQL) are safe row by row: a
candidate id is stored once however many ingests race (INSERT ... ON CONFLICT DO NOTHING);
selection and duplicate marking move only candidates that are still pooled, so a candidate
labeled meanwhile keeps its label and two concurrent runs never both claim one candidate.
Updates of many candidates go in id order, so two writers touching the same rows lock them in
the same order and one waits for the other instead of deadlocking.

Errors:

    CatalogSchemaError (RuntimeError)     the database cannot serve as this catalog
    UnknownCandidates (KeyError)          a labeling call got ids the catalog lacks
    InvalidLabel (ValueError)             a label or class name that cannot name a class
    DeviceCredentialError (ValueError)    drawn in cloud_selector/auth.py
    ├── DeviceExists
    └── UnknownDevice (also LookupError)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from cloud_selector.catalog_locks import try_lock
from cloud_selector.migrations import (
    DEFAULT_MAX_OVERFLOW,
    DEFAULT_POOL_SIZE,
    CatalogSchemaError,
    create_engine,
    current_revision,
    head_revision,
    revision_of,
    upgrade,
    upgrade_engine,
)
# The tables live in schema.py; re-exported here because tests and tools import them from here.
from cloud_selector.schema import (  # noqa: F401
    candidates,
    classes,
    device_credentials,
    devices,
    fleet_daily,
    installs,
    label_events,
    locks,
    metadata,
    models,
    selection_picks,
    selection_runs,
)

__all__ = [
    "Catalog", "CandidateRow", "CatalogSchemaError", "DeviceCredential", "DeviceCredentialError", "DeviceExists",
    "InvalidLabel", "LabelEvent", "LabelsApplied", "NewLabel", "UnknownCandidates", "UnknownDevice",
    "check_label", "current_revision", "head_revision", "metadata", "upgrade",
]

log = logging.getLogger(__name__)

POOLED, DUPLICATE, SELECTED, LABELED, REJECTED = "pooled", "duplicate", "selected", "labeled", "rejected"
IN_LABELING, SKIPPED = "in_labeling", "skipped"
STATES = (POOLED, DUPLICATE, SELECTED, IN_LABELING, LABELED, SKIPPED, REJECTED)
QUEUED = (SELECTED, IN_LABELING)  # the labeling queue: picked by a selection run, no outcome yet
REQUEUEABLE = (POOLED, DUPLICATE, SKIPPED, REJECTED)  # what `queue_for_labeling` moves to selected
# Where a label came from (label_events.source): the four file formats, an image folder, a person
# or program calling the API.
LABEL_SOURCES = ("csv", "label-studio", "coco", "yolo", "folder", "manual")
MAX_LABEL_CHARS = 128

# Ids per statement when locking many candidates (PostgreSQL takes at most 65535 parameters).
_ID_CHUNK = 10_000


def now_ms() -> int:
    return int(time.time() * 1000)


def utc_day(ms: int) -> str:
    """'YYYY-MM-DD' of a time in ms since the epoch, in UTC (how `fleet_daily` names days)."""
    return time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))


def pack_floats(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_floats(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


@dataclass(frozen=True)
class CandidateRow:
    id: str
    device_id: str
    capture_time_ms: int
    model_version: int
    blob_key: str
    embedding: np.ndarray
    probabilities: np.ndarray
    scores: dict[str, float]
    reason: str
    extra: dict[str, str]
    state: str
    label: str | None
    width: int = 0
    height: int = 0
    assigned_to: str | None = None  # set while in_labeling
    assigned_ms: int | None = None
    received_ms: int = 0

    @classmethod
    def from_row(cls, r) -> "CandidateRow":
        return cls(
            id=r.id, device_id=r.device_id, capture_time_ms=r.capture_time_ms, model_version=r.model_version,
            blob_key=r.blob_key, embedding=unpack_floats(r.embedding), probabilities=unpack_floats(r.probabilities),
            scores={k: getattr(r, k) for k in ("least_confidence", "margin", "entropy", "novelty", "combined")},
            reason=r.reason, extra=json.loads(r.extra), state=r.state, label=r.label, width=r.width,
            height=r.height, assigned_to=r.assigned_to, assigned_ms=r.assigned_ms, received_ms=r.received_ms,
        )


class UnknownCandidates(KeyError):
    """Some candidate ids are not in the catalog."""


class InvalidLabel(ValueError):
    """A label or class name is empty, too long, non-printable or padded with spaces."""


@dataclass(frozen=True)
class NewLabel:
    """One label to write; `annotator` overrides the call's default (a Label Studio export names
    the person per annotation)."""

    candidate_id: str
    label: str
    annotator: str = ""


@dataclass(frozen=True)
class LabelsApplied:
    """What one `apply_labels` changed. `unchanged` counts candidates that already had that label
    (a re-imported file is not news: no event, no new labeled_ms); `new_classes` were added to
    the class list by this call."""

    labeled: int
    unchanged: int
    skipped: int
    new_classes: tuple[str, ...]


@dataclass(frozen=True)
class LabelEvent:
    """One row of a candidate's labeling history (state is the outcome: labeled/skipped/rejected)."""

    candidate_id: str
    state: str
    label: str | None
    previous_label: str | None
    source: str
    annotator: str
    note: str
    at_ms: int


@dataclass(frozen=True)
class DeviceCredential:
    id: str
    token_sha256: str
    created_ms: int
    revoked_ms: int | None  # None while the device may connect


class DeviceCredentialError(ValueError):
    """Enrolling or revoking a device failed (the tree is drawn in cloud_selector/auth.py)."""


class DeviceExists(DeviceCredentialError):
    """A device with this id is already enrolled (revoked ones too: ids are never reused)."""


class UnknownDevice(DeviceCredentialError, LookupError):
    """No device with this id was ever enrolled."""


class Catalog:
    """The catalog on one database; safe to share between threads (the engine pools)."""

    def __init__(self, url: str, *, schema: str | None = None, migrate: bool = True,
                 pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW):
        """Prefer `Catalog.open`, which takes the same arguments."""
        self.engine = create_engine(url, schema=schema, pool_size=pool_size, max_overflow=max_overflow)
        try:
            if migrate:
                upgrade_engine(self.engine)
            else:
                with self.engine.connect() as conn:
                    found = revision_of(conn)
                if found != head_revision():
                    raise CatalogSchemaError(f"the catalog is at revision {found}, this code needs {head_revision()}: "
                                             "run the upgrade (cloud_selector.catalog.upgrade) first")
        except BaseException:
            self.engine.dispose()
            raise
        # Both dialects compile ON CONFLICT; the generic insert has no such clause.
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert

    @classmethod
    def open(cls, url: str, *, schema: str | None = None, migrate: bool = True,
             pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW) -> Catalog:
        """Open the catalog at `url` (sqlite:///PATH, or postgresql+psycopg://USER@HOST/DB).

        The schema is upgraded to head first (a catalog from before migrations is adopted),
        so a new file or an empty database just works; with migrate=False a database that is
        not at head is refused instead (when upgrades run as their own deployment step).
        `schema` selects a PostgreSQL schema, which must exist. The pool (pool_size +
        max_overflow connections) is sized for a threaded gRPC server."""
        return cls(url, schema=schema, migrate=migrate, pool_size=pool_size, max_overflow=max_overflow)

    @classmethod
    def sqlite(cls, path) -> Catalog:
        """The embedded default: a SQLite file at `path`, created if missing."""
        return cls.open(f"sqlite:///{path}")

    def close(self) -> None:
        self.engine.dispose()

    # -------------------------------------------------------------- locks

    def try_lock(self, name: str, *, ttl_s: float = 60.0):
        """Try once, without waiting, to hold the catalog-wide lock `name` for the `with` block;
        yields whether this holder got it (e.g. only one replica runs scheduled selection).
        How each database keeps it: cloud_selector/catalog_locks.py."""
        return try_lock(self.engine, self._insert, name, ttl_s=ttl_s)

    # -------------------------------------------------------------- candidates

    def insert_candidate(self, values: dict) -> bool:
        """Insert one candidate row; False (and nothing changes) if its id is already there.

        ON CONFLICT DO NOTHING rather than catching the unique violation: under concurrent
        ingest on PostgreSQL the loser of a race then neither errors nor aborts anything.
        RETURNING says whether this statement stored the row (SQLAlchemy promises rowcount
        for UPDATE and DELETE only; on psycopg an INSERT's reads -1)."""
        statement = (self._insert(candidates).values({"state": POOLED, **values})
                     .on_conflict_do_nothing(index_elements=[candidates.c.id]).returning(candidates.c.id))
        with self.engine.begin() as conn:
            return conn.execute(statement).first() is not None

    def insert_candidates(self, rows: Sequence[dict]) -> set[str]:
        """Insert many candidate rows in ONE transaction (one commit, so one WAL fsync on SQLite);
        returns the ids this call stored. Ids already there are skipped as in `insert_candidate`
        (ON CONFLICT DO NOTHING), so the rest of the batch still commits. Ingest's group commit
        (cloud_selector/ingest_batch.py) is the caller."""
        if not rows:
            return set()
        statement = (self._insert(candidates).on_conflict_do_nothing(index_elements=[candidates.c.id])
                     .returning(candidates.c.id))
        stored: set[str] = set()
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 500):  # well below PostgreSQL's 65535 parameters a statement
                chunk = [{"state": POOLED, **values} for values in rows[start:start + 500]]
                stored.update(conn.execute(statement, chunk).scalars())
        return stored

    def has_candidate(self, candidate_id: str) -> bool:
        return bool(self.stored_ids([candidate_id]))

    def stored_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of `ids` the catalog holds (ids only; no row is read)."""
        ids = list(ids)
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):  # well below PostgreSQL's 65535 parameters a statement
                chunk = ids[start:start + 500]
                found.update(conn.execute(sa.select(candidates.c.id).where(candidates.c.id.in_(chunk))).scalars())
        return found

    def candidates(self, states: Iterable[str] | None = None, ids: Iterable[str] | None = None) -> list[CandidateRow]:
        query = sa.select(candidates).order_by(candidates.c.capture_time_ms, candidates.c.id)
        if states is not None:
            query = query.where(candidates.c.state.in_(list(states)))
        if ids is not None:
            query = query.where(candidates.c.id.in_(list(ids)))
        with self.engine.connect() as conn:
            return [CandidateRow.from_row(r) for r in conn.execute(query)]

    def count_by_state(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(candidates.c.state, sa.func.count()).group_by(candidates.c.state))
            return {state: n for state, n in rows}

    def mark_duplicates(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Mark (candidate, duplicate_of) pairs; only candidates still pooled change, so one
        labeled or selected meanwhile by another writer keeps its state."""
        if not pairs:
            return
        with self.engine.begin() as conn:
            conn.execute(
                candidates.update().where(candidates.c.id == sa.bindparam("cid"), candidates.c.state == POOLED).values(
                    state=DUPLICATE, duplicate_of=sa.bindparam("dup")),
                [{"cid": c, "dup": d} for c, d in sorted(pairs)],  # id order (module docstring)
            )

    def record_selection(self, *, config: dict, model_version: int, pool_size: int, duplicates: int,
                         picks: Sequence[dict], metrics: dict | None = None) -> int:
        """Store a run, its metrics and its picks (each with its per-strategy `contributions`),
        and move the picked candidates to `selected`, atomically.

        Only candidates still pooled move: when two runs race for one candidate, the first to
        commit claims it (PostgreSQL re-checks the row after waiting for the other's lock), and
        one labeled meanwhile stays labeled. The run's picks are stored either way."""
        with self.engine.begin() as conn:
            run_id = conn.execute(selection_runs.insert().values(
                created_ms=now_ms(), config=json.dumps(config), model_version=model_version,
                pool_size=pool_size, duplicates=duplicates, selected=len(picks),
                metrics=json.dumps(metrics or {}))).inserted_primary_key[0]
            if picks:
                rows = [{**p, "run_id": run_id, "contributions": json.dumps(p.get("contributions", []))} for p in picks]
                conn.execute(selection_picks.insert(), rows)
                conn.execute(
                    candidates.update().where(candidates.c.id == sa.bindparam("cid"), candidates.c.state == POOLED)
                    .values(state=SELECTED, selection_run=run_id),
                    [{"cid": cid} for cid in sorted(p["candidate_id"] for p in picks)],  # id order (module docstring)
                )
        return run_id

    def finish_selection_run(self, run_id: int, *, started_ms: int, replica: str, trigger: str) -> None:
        """Stamp a run with when it started and finished, who ran it and why (scheduled runs)."""
        with self.engine.begin() as conn:
            conn.execute(selection_runs.update().where(selection_runs.c.id == run_id).values(
                started_ms=started_ms, finished_ms=now_ms(), replica=replica[:128], trigger=trigger[:32]))

    def selection_runs(self, limit: int = 100) -> list[dict]:
        """The newest runs first, with config and metrics decoded."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(selection_runs).order_by(selection_runs.c.id.desc()).limit(limit))
            return [{**r._asdict(), "config": json.loads(r.config), "metrics": json.loads(r.metrics or "{}")}
                    for r in rows]

    def latest_selection_run(self) -> dict | None:
        runs = self.selection_runs(limit=1)
        return runs[0] if runs else None

    def selection_picks(self, run_id: int) -> list[dict]:
        """A run's picks in rank order, each with why it was picked (its contributions)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(selection_picks).where(selection_picks.c.run_id == run_id)
                                .order_by(selection_picks.c.rank))
            return [{**r._asdict(), "contributions": json.loads(r.contributions or "[]")} for r in rows]

    def count_received_since(self, since_ms: int) -> int:
        """Candidates that arrived after `since_ms` (what a count-triggered schedule counts)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(candidates)
                                .where(candidates.c.received_ms > since_ms)).scalar_one()

    def candidate_ids(self) -> set[str]:
        """Every candidate id: what label imports validate against (one read, a set in memory:
        about 100 bytes a candidate)."""
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(candidates.c.id)).scalars())

    def label_counts(self) -> dict[str, int]:
        """How many labeled candidates each label has (labels of other states do not count)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(candidates.c.label, sa.func.count())
                                .where(candidates.c.state == LABELED).group_by(candidates.c.label))
            return {label: n for label, n in rows}

    # -------------------------------------------------------------- the labeling queue

    def mark_in_labeling(self, ids: Iterable[str], assignee: str) -> int:
        """Hand queued candidates (selected, or in_labeling under someone else) to `assignee`
        from now; others keep their state (one labeled meanwhile stays labeled). Returns how
        many are now assigned. Raises UnknownCandidates, changing nothing."""
        ids = list(ids)
        if not ids:
            return 0
        stamp = now_ms()
        with self._writing() as conn:
            current = self._lock_rows(conn, ids)
            moving = sorted(cid for cid, row in current.items() if row.state in QUEUED)
            if moving:
                conn.execute(
                    candidates.update().where(candidates.c.id == sa.bindparam("cid"), _queued())
                    .values(state=IN_LABELING, assigned_to=assignee[:128], assigned_ms=stamp),
                    [{"cid": cid} for cid in moving])
        return len(moving)

    def queue_for_labeling(self, ids: Iterable[str]) -> int:
        """Put candidates in the labeling queue by hand (the dashboard): pooled, duplicate,
        skipped and rejected ones move to `selected` (a duplicate keeps its duplicate_of, for
        the record); queued and labeled ones keep their state. No label event: entering the
        queue is not an outcome. Returns how many moved; raises UnknownCandidates, changing
        nothing."""
        ids = list(ids)
        if not ids:
            return 0
        with self._writing() as conn:
            current = self._lock_rows(conn, ids)
            moving = sorted(cid for cid, row in current.items() if row.state in REQUEUEABLE)
            if moving:
                conn.execute(candidates.update().where(candidates.c.id == sa.bindparam("cid"))
                             .values(state=SELECTED, assigned_to=None, assigned_ms=None),
                             [{"cid": cid} for cid in moving])  # id order (module docstring)
        return len(moving)

    def claim_for_labeling(self, candidate_id: str, assignee: str) -> bool:
        """Hand one queued candidate to `assignee` unless someone else holds it: a selected one,
        or one `assignee` already holds, becomes in_labeling for them from now. False when it
        is not free (another labeler claimed it first, or it left the queue): of two labelers
        racing for one candidate, exactly one gets it."""
        free = sa.or_(candidates.c.state == SELECTED,
                      (candidates.c.state == IN_LABELING) & (candidates.c.assigned_to == assignee[:128]))
        with self.engine.begin() as conn:
            return conn.execute(candidates.update().where(candidates.c.id == candidate_id, free).values(
                state=IN_LABELING, assigned_to=assignee[:128], assigned_ms=now_ms())).rowcount == 1

    def requeue_stale(self, older_than_s: float) -> int:
        """Return in_labeling candidates assigned `older_than_s` or more ago to `selected`, so
        the next export hands them to someone else (a labeler who left, an export nobody
        imported). Returns how many moved."""
        cutoff = now_ms() - int(older_than_s * 1000)
        stale = (candidates.c.state == IN_LABELING) & (candidates.c.assigned_ms <= cutoff)
        with self._writing() as conn:
            found = conn.execute(sa.select(candidates.c.id).where(stale)).scalars().all()
            # Lock in id order (module docstring), then look again: one may have been labeled meanwhile.
            locked = self._lock_rows(conn, found)
            ids = sorted(cid for cid, row in locked.items()
                         if row.state == IN_LABELING and row.assigned_ms is not None and row.assigned_ms <= cutoff)
            if ids:
                conn.execute(candidates.update().where(candidates.c.id == sa.bindparam("cid"), stale)
                             .values(state=SELECTED, assigned_to=None, assigned_ms=None),
                             [{"cid": cid} for cid in ids])
        return len(ids)

    def mark_skipped(self, ids: Iterable[str], *, source: str = "manual", annotator: str = "",
                     note: str = "") -> int:
        """The labeler skipped these on purpose: queued ones move to `skipped` (out of the queue,
        not training data); others keep their state, so a skip never undoes a label. Returns how
        many moved."""
        ids = list(ids)
        if not ids:
            return 0
        with self._writing() as conn:
            return self._skip(conn, ids, source=source, annotator=annotator, note=note)

    def reject(self, ids: Iterable[str], reason: str, *, source: str = "manual", annotator: str = "") -> int:
        """Take candidates out of labeling and training for good (a broken image, not our domain):
        any state moves to `rejected`, its label and assignment cleared, `reason` kept in the
        history. A later label brings one back. Returns how many changed."""
        _check_source(source)
        ids = list(ids)
        if not ids:
            return 0
        stamp = now_ms()
        with self._writing() as conn:
            current = self._lock_rows(conn, ids)
            changing = sorted(cid for cid, row in current.items() if row.state != REJECTED)
            if changing:
                conn.execute(label_events.insert(), [_event(cid, REJECTED, None, current[cid].label, source, annotator,
                                                            reason, stamp) for cid in changing])
                conn.execute(candidates.update().where(candidates.c.id == sa.bindparam("cid"))
                             .values(state=REJECTED, label=None, labeled_ms=None, assigned_to=None, assigned_ms=None),
                             [{"cid": cid} for cid in changing])
        return len(changing)

    def set_labels(self, labels: Iterable[NewLabel | tuple[str, str]], *, source: str = "manual",
                   annotator: str = "") -> int:
        """Label candidates (any state: module docstring); all or nothing. Returns how many
        changed (a candidate that already had the label does not count)."""
        return self.apply_labels(labels, source=source, annotator=annotator).labeled

    def apply_labels(self, labels: Iterable[NewLabel | tuple[str, str]], *, source: str = "manual",
                     annotator: str = "", skipped: Iterable[str] = (), skip_note: str = "") -> LabelsApplied:
        """Write labels and skips, their history and any new classes, in one transaction.

        All or nothing: an unknown id raises UnknownCandidates, an unusable label InvalidLabel,
        one id with two different labels ValueError, before anything is written. A label equal
        to the candidate's current one changes nothing and writes no event. `skipped` ids
        follow `mark_skipped`. Rows are locked in id order (module docstring); new classes are
        added in name order after that, so two importers cannot wait on each other in a ring."""
        _check_source(source)
        wanted: dict[str, NewLabel] = {}
        for item in labels:
            record = item if isinstance(item, NewLabel) else NewLabel(*item)
            check_label(record.label)
            earlier = wanted.setdefault(record.candidate_id, record)
            if earlier.label != record.label:
                raise ValueError(f"candidate {record.candidate_id} is given two labels: "
                                 f"{earlier.label!r} and {record.label!r}")
        skip_ids = set(skipped) - set(wanted)
        if not wanted and not skip_ids:
            return LabelsApplied(0, 0, 0, ())
        stamp = now_ms()
        with self._writing() as conn:
            current = self._lock_rows(conn, [*wanted, *skip_ids])
            changing = sorted(cid for cid, rec in wanted.items()
                              if current[cid].state != LABELED or current[cid].label != rec.label)
            new_classes = self._add_classes(conn, sorted({r.label for r in wanted.values()}), f"labels:{source}",
                                            stamp)
            if changing:
                conn.execute(label_events.insert(), [
                    _event(cid, LABELED, wanted[cid].label, current[cid].label, source,
                           wanted[cid].annotator or annotator, "", stamp) for cid in changing])
                conn.execute(
                    candidates.update().where(candidates.c.id == sa.bindparam("cid")).values(
                        state=LABELED, label=sa.bindparam("lab"), labeled_ms=stamp, assigned_to=None,
                        assigned_ms=None),
                    [{"cid": cid, "lab": wanted[cid].label} for cid in changing],  # id order (module docstring)
                )
            n_skipped = self._skip(conn, skip_ids, source=source, annotator=annotator, note=skip_note,
                                   current=current) if skip_ids else 0
        return LabelsApplied(len(changing), len(wanted) - len(changing), n_skipped, tuple(new_classes))

    def insert_labeled(self, values: dict, label: str, *, source: str = "folder", annotator: str = "") -> bool:
        """`insert_candidate` for an image that arrives with its label (an imported folder): the
        row, its label event and its class in one transaction, so no selection run can see it
        unlabeled. False (nothing changes) if the id is already there."""
        _check_source(source)
        check_label(label)
        stamp = now_ms()
        statement = (self._insert(candidates)
                     .values({**values, "state": LABELED, "label": label, "labeled_ms": stamp})
                     .on_conflict_do_nothing(index_elements=[candidates.c.id]).returning(candidates.c.id))
        with self.engine.begin() as conn:
            if conn.execute(statement).first() is None:
                return False
            self._add_classes(conn, [label], f"labels:{source}", stamp)
            conn.execute(label_events.insert().values(
                _event(values["id"], LABELED, label, None, source, annotator, "", stamp)))
        return True

    def label_history(self, candidate_id: str) -> list[LabelEvent]:
        """The candidate's labeling outcomes, oldest first; raises UnknownCandidates."""
        with self.engine.connect() as conn:
            if conn.execute(sa.select(candidates.c.id).where(candidates.c.id == candidate_id)).first() is None:
                raise UnknownCandidates(f"no candidate {candidate_id!r}")
            rows = conn.execute(sa.select(label_events).where(label_events.c.candidate_id == candidate_id)
                                .order_by(label_events.c.at_ms, label_events.c.id))
            return [LabelEvent(**{k: v for k, v in r._asdict().items() if k != "id"}) for r in rows]

    def _skip(self, conn: sa.Connection, ids: Iterable[str], *, source: str, annotator: str, note: str,
              current: dict | None = None) -> int:
        _check_source(source)
        ids = list(ids)
        if current is None:
            current = self._lock_rows(conn, ids)
        elif missing := [cid for cid in ids if cid not in current]:
            raise UnknownCandidates(f"{len(missing)} unknown candidate id(s), e.g. {missing[0]!r}")
        moving = sorted(cid for cid in ids if current[cid].state in QUEUED)
        if moving:
            stamp = now_ms()
            conn.execute(label_events.insert(), [
                _event(cid, SKIPPED, None, current[cid].label, source, annotator, note, stamp) for cid in moving])
            conn.execute(candidates.update().where(candidates.c.id == sa.bindparam("cid"), _queued())
                         .values(state=SKIPPED, assigned_to=None, assigned_ms=None),
                         [{"cid": cid} for cid in moving])
        return len(moving)

    @contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """A transaction that is the database's writer before it reads what it will change.

        SQLite: pysqlite opens the transaction only at the first INSERT/UPDATE/DELETE, so a read
        before it sees a snapshot that another writer may change before ours writes (and the
        history would then name the wrong previous label). An UPDATE that matches no row takes
        the write lock first, as BEGIN IMMEDIATE would; readers are not blocked (WAL).
        PostgreSQL needs nothing here: `_lock_rows` locks the rows themselves."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.execute(locks.update().where(sa.false()).values(owner=""))
            yield conn

    def _lock_rows(self, conn: sa.Connection, ids: Iterable[str]) -> dict:
        """{id: row(state, label, assigned_ms)} for `ids`, locked FOR UPDATE in id order on PostgreSQL (in
        chunks: a statement takes at most 65535 parameters); raises UnknownCandidates, naming
        one missing id, when some are not in the catalog."""
        wanted = sorted(set(ids))
        found: dict = {}
        for start in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[start:start + _ID_CHUNK]
            query = (sa.select(candidates.c.id, candidates.c.state, candidates.c.label, candidates.c.assigned_ms)
                     .where(candidates.c.id.in_(chunk)).order_by(candidates.c.id).with_for_update())
            found.update({r.id: r for r in conn.execute(query)})
        missing = [cid for cid in wanted if cid not in found]
        if missing:
            raise UnknownCandidates(f"{len(missing)} unknown candidate id(s), e.g. {missing[0]!r}")
        return found

    # -------------------------------------------------------------- classes

    def class_list(self) -> list[str]:
        """The label set (module docstring): the latest published model's classes in the model's
        order, then every other class in the order it was added."""
        latest = self.latest_model()
        first = list(latest["manifest"].get("classes", [])) if latest else []
        with self.engine.connect() as conn:
            added = conn.execute(sa.select(classes.c.name).order_by(classes.c.id)).scalars().all()
        known = set(first)
        return first + [name for name in added if name not in known]

    def add_class(self, name: str, *, origin: str = "manual") -> bool:
        """Add `name` to the class list; False if it is already there (a no-op). Raises
        InvalidLabel for a name no label could have."""
        check_label(name)
        with self.engine.begin() as conn:
            return bool(self._add_classes(conn, [name], origin, now_ms()))

    def _add_classes(self, conn: sa.Connection, names: Sequence[str], origin: str, stamp: int) -> list[str]:
        """Insert the names not yet present, in the order given; returns those this call added.
        ON CONFLICT DO NOTHING: two writers adding one class both succeed, one row results."""
        added = []
        for name in names:
            statement = (self._insert(classes).values(name=name, origin=origin[:64], added_ms=stamp)
                         .on_conflict_do_nothing(index_elements=[classes.c.name]).returning(classes.c.id))
            if conn.execute(statement).first() is not None:
                added.append(name)
        return added

    # -------------------------------------------------------------- models

    def add_model(self, *, version: int, name: str, parent_version: int, manifest: dict, files: list[dict],
                  published: bool = True) -> None:
        """Record a model version; a published one also adds its classes to the class list in the
        same transaction (module docstring), so labels for them are accepted from then on."""
        stamp = now_ms()
        with self.engine.begin() as conn:
            conn.execute(models.insert().values(
                version=version, name=name, created_ms=stamp, parent_version=parent_version,
                manifest=json.dumps(manifest), files=json.dumps(files), published=published))
            if published:
                self._add_classes(conn, list(manifest.get("classes", [])), f"model v{version}", stamp)

    def latest_model(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.published.is_(True))
                               .order_by(models.c.version.desc()).limit(1)).first()
        return _model_dict(row) if row else None

    def model(self, version: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.version == version)).first()
        return _model_dict(row) if row else None

    def list_models(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [_model_dict(r) for r in conn.execute(sa.select(models).order_by(models.c.version))]

    # -------------------------------------------------------------- fleet

    def record_heartbeat(self, values: dict) -> None:
        """Insert or update the device's row, and its counters of today (UTC) in `fleet_daily`,
        in one transaction; each is one statement, so that concurrent heartbeats of a new device
        (two replicas behind a load balancer) cannot collide. `bytes_uploaded` is read from the
        status (where the Fleet service puts the heartbeat's health fields), 0 when absent."""
        stamp = now_ms()
        status = values.get("status", {})
        values = {**values, "last_seen_ms": stamp, "status": json.dumps(status)}
        daily = {"device_id": values["id"], "day": utc_day(stamp),
                 **{k: int(values.get(k) or 0) for k in ("frames_seen", "frames_kept", "candidates_acked")},
                 "bytes_uploaded": int(status.get("bytes_uploaded") or 0)}
        with self.engine.begin() as conn:
            conn.execute(self._upsert(devices, values, [devices.c.id]))
            conn.execute(self._upsert(fleet_daily, daily, [fleet_daily.c.device_id, fleet_daily.c.day]))

    def _upsert(self, table: sa.Table, values: dict, keys: list[sa.Column]):
        """INSERT ... ON CONFLICT (keys) DO UPDATE SET every other column given."""
        statement = self._insert(table).values(**values)
        names = {k.name for k in keys}
        return statement.on_conflict_do_update(index_elements=keys,
                                               set_={k: statement.excluded[k] for k in values if k not in names})

    def devices(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(devices).order_by(devices.c.id))
            return [{**r._asdict(), "status": json.loads(r.status)} for r in rows]

    def record_install(self, *, device_id: str, version: int, status: str, detail: str, smoke_latency_ms: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(installs.insert().values(device_id=device_id, version=version, status=status, detail=detail,
                                                  smoke_latency_ms=smoke_latency_ms, at_ms=now_ms()))

    # -------------------------------------------------------------- device credentials

    def add_device_credential(self, device_id: str, token_sha256: str) -> DeviceCredential:
        """Store a new device's token hash; raises DeviceExists if the id was ever enrolled."""
        record = DeviceCredential(device_id, token_sha256, now_ms(), None)
        try:
            with self.engine.begin() as conn:
                conn.execute(device_credentials.insert().values(
                    id=record.id, token_sha256=record.token_sha256, created_ms=record.created_ms, revoked_ms=None))
        except IntegrityError:
            raise DeviceExists(f"device {device_id!r} already exists (ids are never reused)") from None
        return record

    def device_credential(self, device_id: str) -> DeviceCredential | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(device_credentials).where(device_credentials.c.id == device_id)).first()
        return DeviceCredential(**row._asdict()) if row else None

    def device_credentials(self) -> list[DeviceCredential]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(device_credentials).order_by(device_credentials.c.id))
            return [DeviceCredential(**r._asdict()) for r in rows]

    def revoke_device_credential(self, device_id: str) -> DeviceCredential:
        """Mark revoked now (the first revocation time stays); raises UnknownDevice."""
        with self.engine.begin() as conn:
            conn.execute(device_credentials.update()
                         .where(device_credentials.c.id == device_id, device_credentials.c.revoked_ms.is_(None))
                         .values(revoked_ms=now_ms()))
            row = conn.execute(sa.select(device_credentials).where(device_credentials.c.id == device_id)).first()
        if row is None:
            raise UnknownDevice(f"no device {device_id!r} (see `cloud-selector devices list`)")
        return DeviceCredential(**row._asdict())


def _queued() -> sa.ColumnElement[bool]:
    """state IN (selected, in_labeling) spelled as ORs: an IN list is expanded per execution,
    which SQLAlchemy cannot do inside executemany."""
    return sa.or_(*(candidates.c.state == state for state in QUEUED))


def _check_source(source: str) -> None:
    if source not in LABEL_SOURCES:
        raise ValueError(f"label source must be one of {', '.join(LABEL_SOURCES)} (got {source!r})")


def check_label(name: str) -> None:
    """Raise InvalidLabel unless `name` can be a label and a class name: the rules labels follow
    in cloud_selector.formats, plus no outer spaces (a class name is compared exactly, and
    " shirt" beside "shirt" would split one class in two)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise InvalidLabel(f"a label needs at least one character and no spaces around it (got {name!r})")
    if len(name) > MAX_LABEL_CHARS or not name.isprintable():
        raise InvalidLabel(f"a label is at most {MAX_LABEL_CHARS} printable characters (got {name[:40]!r})")


def _event(cid: str, state: str, label: str | None, previous: str | None, source: str, annotator: str, note: str,
           stamp: int) -> dict:
    return {"candidate_id": cid, "state": state, "label": label, "previous_label": previous, "source": source,
            "annotator": annotator[:128], "note": note, "at_ms": stamp}


def _model_dict(row) -> dict:
    d = row._asdict()
    d["manifest"] = json.loads(d["manifest"])
    d["files"] = json.loads(d["files"])
    return d
