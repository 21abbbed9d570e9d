"""One candidate's page: everything the catalog knows about it (import from
`cloud_selector.dashboard_data`, the public face).

Neighbours are exact: cosine distance from this candidate's embedding to every other embedding
of the same model version (another version's space is not comparable), computed with numpy in
chunks of NEIGHBOUR_CHUNK rows, so memory stays flat. It reads every embedding of that version
on each call: about 0.5 MB per 1000 candidates at 128 dimensions, 5 MB at 1280 (MobileNetV2).
That is fine to ~100k candidates (benchmarks/dashboard_candidates.py times it); beyond, this
wants an ANN index kept beside the catalog (FAISS, as dedup uses), not a scan per page view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import numpy as np
import sqlalchemy as sa

from cloud_selector.catalog import Catalog, LabelEvent, unpack_floats
from cloud_selector.dashboard_cards import CandidateCard, CandidateRef, load_cards, load_refs
from cloud_selector.schema import candidates, models, selection_picks, selection_runs
from cloud_selector.selection_engine import Contribution

NEIGHBOUR_CHUNK = 4096
MAX_DUPLICATES = 100  # listed on the page; `duplicate_count` says how many there are


@dataclass(frozen=True)
class ClassProbability:
    index: int  # position in the model's output
    name: str | None  # None when the model version or its class list is unknown
    probability: float


@dataclass(frozen=True)
class Neighbour(CandidateRef):
    distance: float  # cosine distance, 0 = same direction


@dataclass(frozen=True)
class SelectionReason:
    """A selection run that picked the candidate, and why: each strategy's contribution
    (Contribution.factor multiplied together gives `score`; empty for runs before 0005)."""

    run_id: int
    created_ms: int
    config: dict
    model_version: int
    rank: int  # 0 = picked first
    score: float
    typicality: float
    min_distance: float
    contributions: list[Contribution]


@dataclass(frozen=True)
class CandidateDetail:
    card: CandidateCard
    extra: dict[str, str]  # the device's metadata
    jpeg_bytes: int
    labeled_ms: int | None
    assigned_to: str | None  # the labeler holding it while in_labeling
    assigned_ms: int | None
    embedding_dim: int
    class_probabilities: list[ClassProbability]  # most probable first
    neighbours: list[Neighbour]  # nearest first (ties by id), same model version only
    duplicate_of: CandidateRef | None  # the candidate it was marked a near-duplicate of
    duplicates: list[CandidateRef]  # candidates marked near-duplicates of it (at most MAX_DUPLICATES)
    duplicate_count: int
    selections: list[SelectionReason]  # oldest run first
    history: list[LabelEvent]  # labeling outcomes, oldest first


def candidate_detail(catalog: Catalog, candidate_id: str, *, neighbours: int = 8) -> CandidateDetail | None:
    """The candidate's detail, or None when the catalog has no such candidate."""
    with catalog.engine.connect() as conn:
        row = conn.execute(sa.select(
            candidates.c.model_version, candidates.c.embedding, candidates.c.probabilities, candidates.c.extra,
            candidates.c.jpeg_bytes, candidates.c.labeled_ms, candidates.c.assigned_to, candidates.c.assigned_ms,
            candidates.c.duplicate_of).where(candidates.c.id == candidate_id)).first()
        if row is None:
            return None
        [card] = load_cards(conn, [candidate_id])
        embedding = unpack_floats(row.embedding)
        near = _neighbours(conn, candidate_id, row.model_version, embedding, neighbours)
        duplicate_ids = conn.execute(sa.select(candidates.c.id).where(candidates.c.duplicate_of == candidate_id)
                                     .order_by(candidates.c.id).limit(MAX_DUPLICATES)).scalars().all()
        duplicate_count = len(duplicate_ids) if len(duplicate_ids) < MAX_DUPLICATES else conn.execute(
            sa.select(sa.func.count()).where(candidates.c.duplicate_of == candidate_id)).scalar_one()
        refs = load_refs(conn, list(duplicate_ids) + [row.duplicate_of] * bool(row.duplicate_of))
        probabilities = class_probabilities(conn, row.model_version, unpack_floats(row.probabilities))
        selections = _selections(conn, candidate_id)
    return CandidateDetail(
        card=card, extra=json.loads(row.extra), jpeg_bytes=row.jpeg_bytes, labeled_ms=row.labeled_ms,
        assigned_to=row.assigned_to, assigned_ms=row.assigned_ms, embedding_dim=len(embedding),
        class_probabilities=probabilities, neighbours=near,
        duplicate_of=refs.get(row.duplicate_of) if row.duplicate_of else None,
        duplicates=[refs[cid] for cid in duplicate_ids if cid in refs], duplicate_count=duplicate_count,
        selections=selections, history=catalog.label_history(candidate_id))


def candidate_neighbours(catalog: Catalog, candidate_id: str, *, k: int = 8) -> list[Neighbour] | None:
    """Only the neighbours (module docstring; the slow part of a detail page, which may load
    them on their own after `candidate_detail(..., neighbours=0)`); None for an unknown id."""
    with catalog.engine.connect() as conn:
        row = conn.execute(sa.select(candidates.c.model_version, candidates.c.embedding)
                           .where(candidates.c.id == candidate_id)).first()
        if row is None:
            return None
        return _neighbours(conn, candidate_id, row.model_version, unpack_floats(row.embedding), k)


def _neighbours(conn: sa.Connection, candidate_id: str, model_version: int, embedding: np.ndarray,
                k: int) -> list[Neighbour]:
    near = nearest(conn, candidate_id, model_version, embedding, k)
    refs = load_refs(conn, [cid for cid, _ in near])
    return [Neighbour(**vars(refs[cid]), distance=d) for cid, d in near if cid in refs]


def nearest(conn: sa.Connection, candidate_id: str, model_version: int, embedding: np.ndarray,
            k: int) -> list[tuple[str, float]]:
    """(id, cosine distance) of the k candidates of `model_version` closest to `embedding`,
    nearest first, ties by id; `candidate_id` itself is left out. Zero vectors are at distance 1."""
    norm = float(np.linalg.norm(embedding))
    if k <= 0 or norm == 0.0:
        return []
    query = (embedding / norm).astype(np.float32)
    width = len(query) * 4
    best_ids: list[str] = []
    best = np.zeros(0, np.float32)
    result = conn.execution_options(yield_per=NEIGHBOUR_CHUNK).execute(
        sa.select(candidates.c.id, candidates.c.embedding)
        .where(candidates.c.model_version == model_version, candidates.c.id != candidate_id))
    for part in result.partitions():
        part = [r for r in part if len(r.embedding) == width]  # a vector of another size is not in this space
        if not part:
            continue
        matrix = np.frombuffer(b"".join(r.embedding for r in part), dtype="<f4").reshape(len(part), -1)
        norms = np.linalg.norm(matrix, axis=1)
        distance = 1.0 - (matrix @ query) / np.where(norms > 0, norms, 1.0)
        distance[norms == 0] = 1.0
        best_ids, best = best_ids + [r.id for r in part], np.concatenate([best, distance.astype(np.float32)])
        if len(best) > k:  # keep everything tied with the k-th, so the id tie-break below is exact
            keep = np.flatnonzero(best <= np.partition(best, k - 1)[k - 1])
            best_ids, best = [best_ids[i] for i in keep], best[keep]
    ranked = sorted(zip(best.tolist(), best_ids))[:k]
    return [(cid, float(np.clip(d, 0.0, 2.0))) for d, cid in ranked]


def class_probabilities(conn: sa.Connection, model_version: int, probabilities: np.ndarray) -> list[ClassProbability]:
    """The probabilities named by the model version's classes (when the catalog has that
    version and its class count matches), most probable first, ties by index."""
    manifest = conn.execute(sa.select(models.c.manifest).where(models.c.version == model_version)).scalar()
    names = json.loads(manifest).get("classes", []) if manifest else []
    if len(names) != len(probabilities):
        names = [None] * len(probabilities)
    order = sorted(range(len(probabilities)), key=lambda i: (-float(probabilities[i]), i))
    return [ClassProbability(i, names[i], float(probabilities[i])) for i in order]


_CONTRIBUTION_FIELDS = tuple(f.name for f in fields(Contribution))


def _selections(conn: sa.Connection, candidate_id: str) -> list[SelectionReason]:
    rows = conn.execute(
        sa.select(selection_picks, selection_runs.c.created_ms, selection_runs.c.config,
                  selection_runs.c.model_version)
        .join(selection_runs, selection_runs.c.id == selection_picks.c.run_id)
        .where(selection_picks.c.candidate_id == candidate_id).order_by(selection_picks.c.run_id))
    return [SelectionReason(
        run_id=r.run_id, created_ms=r.created_ms, config=json.loads(r.config), model_version=r.model_version,
        rank=r.rank, score=r.score, typicality=r.typicality, min_distance=r.min_distance,
        contributions=[Contribution(**{name: c.get(name) for name in _CONTRIBUTION_FIELDS})
                       for c in json.loads(r.contributions or "[]")]) for r in rows]
