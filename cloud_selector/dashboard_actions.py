"""What the dashboard's pages do to candidates, and the keyboard labeling page's queue (import
from `cloud_selector.dashboard_data`, the public face).

State moves go through the catalog (its module docstring draws them), so label events are
written exactly where the catalog writes them: rejecting writes one, queueing does not (entering
the queue is not an outcome). Labels themselves go through `Catalog.set_labels(..., source=
"manual", annotator=user)`. Tags are free-form names on candidates, kept in `candidate_tags`
with who added them and when.

The labeling page takes one candidate at a time: `label_queue_next` claims the next queued one
for the labeler (in capture order), so two labelers never get the same candidate, and a labeler
who reloads the page gets back what they hold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from cloud_selector.catalog import (
    IN_LABELING, QUEUED, SELECTED, STATES, Catalog, InvalidLabel, UnknownCandidates, check_label, now_ms,
)
from cloud_selector.dashboard_cards import CandidateCard, chunks, load_cards
from cloud_selector.schema import candidate_tags, candidates, label_events

log = logging.getLogger(__name__)

MAX_TAG_CHARS = 64
DAY_MS = 86_400_000


@dataclass(frozen=True)
class QueueProgress:
    """The labeling queue: `done` candidates got an outcome (labeled, skipped, rejected) since
    `since_ms`, `remaining` are queued now (selected or in_labeling)."""

    done: int
    remaining: int
    since_ms: int

    @property
    def total(self) -> int:
        return self.done + self.remaining


@dataclass(frozen=True)
class FilterOptions:
    """The values the grid's filters can take right now (for its drop-downs)."""

    devices: list[str]
    states: list[str]
    reasons: list[str]
    predicted_classes: list[str]  # NO_VALUE (dashboard_data) matches the unknown ones
    labels: list[str]  # NO_VALUE matches the unlabeled ones
    tags: dict[str, int]  # tag -> candidates carrying it


def queue_for_labeling(catalog: Catalog, ids: Iterable[str], actor: str) -> int:
    """Put candidates in the labeling queue (pooled, duplicate, skipped, rejected -> selected;
    others unchanged). Returns how many moved; raises UnknownCandidates, changing nothing."""
    ids = list(ids)
    moved = catalog.queue_for_labeling(ids)
    log.info("%s queued %d of %d candidates for labeling", actor or "?", moved, len(ids))
    return moved


def reject(catalog: Catalog, ids: Iterable[str], reason: str, actor: str) -> int:
    """Take candidates out of labeling and training (Catalog.reject: a label event with the
    reason and the actor). Returns how many changed."""
    return catalog.reject(ids, reason, source="manual", annotator=actor)


def tag(catalog: Catalog, ids: Iterable[str], tag: str, actor: str) -> int:
    """Tag candidates; returns how many did not have the tag yet. All or nothing: an unknown id
    raises UnknownCandidates, a bad tag InvalidLabel (the rules of labels, at most 64 chars)."""
    check_tag(tag)
    ids = sorted(set(ids))
    stamp = now_ms()
    with catalog.engine.begin() as conn:
        _require(conn, ids)
        have = set()
        for part in chunks(ids):
            have.update(conn.execute(sa.select(candidate_tags.c.candidate_id).where(
                candidate_tags.c.tag == tag, candidate_tags.c.candidate_id.in_(part))).scalars())
        new = [cid for cid in ids if cid not in have]
        if new:  # ON CONFLICT: a tag added meanwhile by someone else is no error
            conn.execute(catalog._insert(candidate_tags).on_conflict_do_nothing(
                index_elements=[candidate_tags.c.candidate_id, candidate_tags.c.tag]),
                [{"candidate_id": cid, "tag": tag, "created_ms": stamp, "actor": actor[:128]} for cid in new])
    return len(new)


def untag(catalog: Catalog, ids: Iterable[str], tag: str, actor: str) -> int:
    """Remove a tag from candidates; returns how many had it (unknown ids had none)."""
    removed = 0
    with catalog.engine.begin() as conn:
        for part in chunks(sorted(set(ids))):
            removed += conn.execute(candidate_tags.delete().where(
                candidate_tags.c.tag == tag, candidate_tags.c.candidate_id.in_(part))).rowcount
    log.info("%s removed tag %r from %d candidates", actor or "?", tag, removed)
    return removed


def check_tag(name: str) -> None:
    check_label(name)
    if len(name) > MAX_TAG_CHARS:
        raise InvalidLabel(f"a tag is at most {MAX_TAG_CHARS} characters (got {name[:40]!r})")


def label_queue_next(catalog: Catalog, *, assignee: str, after_id: str | None = None) -> CandidateCard | None:
    """Claim and return the next candidate for `assignee` to label: the first in capture order
    (then id) that is selected or already held by them, after `after_id` when given (a skip
    "for now": the one skipped stays theirs until labeled or requeued as stale). None when the
    queue has nothing further. Raises UnknownCandidates for an unknown after_id."""
    mine = sa.or_(candidates.c.state == SELECTED,
                  (candidates.c.state == IN_LABELING) & (candidates.c.assigned_to == assignee[:128]))
    query = sa.select(candidates.c.id).where(mine)
    if after_id is not None:
        with catalog.engine.connect() as conn:
            at = conn.execute(sa.select(candidates.c.capture_time_ms).where(candidates.c.id == after_id)).first()
        if at is None:
            raise UnknownCandidates(f"no candidate {after_id!r}")
        query = query.where(sa.or_(candidates.c.capture_time_ms > at.capture_time_ms,
                                   (candidates.c.capture_time_ms == at.capture_time_ms) & (candidates.c.id > after_id)))
    query = query.order_by(candidates.c.capture_time_ms, candidates.c.id).limit(1)
    while True:  # each lost race means another labeler took one: the queue is finite
        with catalog.engine.connect() as conn:
            cid = conn.execute(query).scalar()
        if cid is None:
            return None
        if catalog.claim_for_labeling(cid, assignee):
            with catalog.engine.connect() as conn:
                return load_cards(conn, [cid])[0]


def queue_progress(catalog: Catalog, *, since_ms: int | None = None) -> QueueProgress:
    """Outcomes since `since_ms` (default: the start of today, UTC) and what is still queued."""
    if since_ms is None:
        since_ms = now_ms() // DAY_MS * DAY_MS
    with catalog.engine.connect() as conn:
        done = conn.execute(sa.select(sa.func.count(sa.distinct(label_events.c.candidate_id)))
                            .where(label_events.c.at_ms >= since_ms)).scalar_one()
        remaining = conn.execute(sa.select(sa.func.count()).select_from(candidates)
                                 .where(candidates.c.state.in_(QUEUED))).scalar_one()
    return QueueProgress(done=done, remaining=remaining, since_ms=since_ms)


def filter_options(catalog: Catalog) -> FilterOptions:
    """Every value in use, for the filter drop-downs: four DISTINCT scans of the candidates
    (15-50 ms together per 100k on SQLite, more on PostgreSQL; benchmarks/dashboard_candidates.py).
    It changes slowly: cache it for a minute rather than reading it for every grid page."""
    def distinct(conn, column) -> list[str]:
        return sorted(v for v in conn.execute(sa.select(column).distinct()).scalars() if v is not None)

    with catalog.engine.connect() as conn:
        devices = distinct(conn, candidates.c.device_id)
        reasons = distinct(conn, candidates.c.reason)
        predicted = distinct(conn, candidates.c.predicted_class)
        labels = distinct(conn, candidates.c.label)
        tags = dict(conn.execute(sa.select(candidate_tags.c.tag, sa.func.count())
                                 .group_by(candidate_tags.c.tag).order_by(candidate_tags.c.tag)).all())
    return FilterOptions(devices=devices, states=list(STATES), reasons=reasons, predicted_classes=predicted,
                         labels=labels, tags=tags)


def _require(conn: sa.Connection, ids: list[str]) -> None:
    found: set[str] = set()
    for part in chunks(ids):
        found.update(conn.execute(sa.select(candidates.c.id).where(candidates.c.id.in_(part))).scalars())
    missing = [cid for cid in ids if cid not in found]
    if missing:
        raise UnknownCandidates(f"{len(missing)} unknown candidate id(s), e.g. {missing[0]!r}")
