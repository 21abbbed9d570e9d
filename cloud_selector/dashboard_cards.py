"""The candidate records the dashboard shows, and how they are read (import them from
`cloud_selector.dashboard_data`, the public face).

A card never carries the image, the embedding or the probabilities: a grid of 60 reads 60 rows'
small columns and their tags, nothing more (the detail page reads the rest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from cloud_selector.schema import candidate_tags, candidates

SCORE_COLUMNS = ("least_confidence", "margin", "entropy", "novelty", "combined")
# Ids per IN (...) list: PostgreSQL takes at most 65535 parameters a statement.
ID_CHUNK = 10_000


@dataclass(frozen=True)
class CandidateCard:
    """One candidate as the grid shows it. `scores` holds the five device scores by name;
    `predicted_class`/`predicted_prob` are None when unknown (rows from before ingest filled
    them, or a model version the catalog did not know)."""

    id: str
    device_id: str
    capture_time_ms: int
    received_ms: int
    state: str
    reason: str
    label: str | None
    predicted_class: str | None
    predicted_prob: float | None
    scores: dict[str, float]
    tags: list[str]
    width: int
    height: int
    model_version: int
    blob_key: str  # where the image is in the blob store


@dataclass(frozen=True)
class CandidateRef:
    """Another candidate named on a detail page (a near-duplicate, a neighbour)."""

    id: str
    device_id: str
    state: str
    label: str | None
    predicted_class: str | None


_CARD_COLUMNS = (
    candidates.c.id, candidates.c.device_id, candidates.c.capture_time_ms, candidates.c.received_ms,
    candidates.c.state, candidates.c.reason, candidates.c.label, candidates.c.predicted_class,
    candidates.c.predicted_prob, *(candidates.c[name] for name in SCORE_COLUMNS), candidates.c.width,
    candidates.c.height, candidates.c.model_version, candidates.c.blob_key,
)
_REF_COLUMNS = (candidates.c.id, candidates.c.device_id, candidates.c.state, candidates.c.label,
                candidates.c.predicted_class)


def chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i:i + ID_CHUNK]) for i in range(0, len(ids), ID_CHUNK)]


def load_cards(conn: sa.Connection, ids: Sequence[str]) -> list[CandidateCard]:
    """Cards of `ids` in the order given (ids not in the catalog are left out)."""
    if not ids:
        return []
    rows, tags = {}, tags_of(conn, ids)
    for part in chunks(ids):
        rows.update({r.id: r for r in conn.execute(sa.select(*_CARD_COLUMNS).where(candidates.c.id.in_(part)))})
    return [_card(rows[cid], tags.get(cid, [])) for cid in ids if cid in rows]


def load_refs(conn: sa.Connection, ids: Sequence[str]) -> dict[str, CandidateRef]:
    out: dict[str, CandidateRef] = {}
    for part in chunks(ids):
        out.update({r.id: CandidateRef(**r._asdict())
                    for r in conn.execute(sa.select(*_REF_COLUMNS).where(candidates.c.id.in_(part)))})
    return out


def tags_of(conn: sa.Connection, ids: Sequence[str]) -> dict[str, list[str]]:
    """{candidate id: its tags, sorted} for the ids that have any."""
    out: dict[str, list[str]] = {}
    for part in chunks(ids):
        rows = conn.execute(sa.select(candidate_tags.c.candidate_id, candidate_tags.c.tag)
                            .where(candidate_tags.c.candidate_id.in_(part))
                            .order_by(candidate_tags.c.candidate_id, candidate_tags.c.tag))
        for cid, tag in rows:
            out.setdefault(cid, []).append(tag)
    return out


def _card(r, tags: list[str]) -> CandidateCard:
    return CandidateCard(
        id=r.id, device_id=r.device_id, capture_time_ms=r.capture_time_ms, received_ms=r.received_ms, state=r.state,
        reason=r.reason, label=r.label, predicted_class=r.predicted_class, predicted_prob=r.predicted_prob,
        scores={name: float(getattr(r, name)) for name in SCORE_COLUMNS}, tags=tags, width=r.width,
        height=r.height, model_version=r.model_version, blob_key=r.blob_key)
