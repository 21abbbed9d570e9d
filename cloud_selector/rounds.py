"""One selection round over the pool: embed, drop near-duplicates, select with a LightlyOne
selection config (default: typicality x diversity), record the run with every pick's reasons and
the selection's metrics against random picks of the same size.

Embedding space: all distances are taken in the current model's embedding space. A candidate
scored on the device by that same version carries a usable embedding; everything else (older
versions, imported images) is re-embedded here from its JPEG with the current bundle.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import IN_LABELING, LABELED, POOLED, SELECTED, SKIPPED, CandidateRow, Catalog
from cloud_selector.dedup import DEFAULT_APPEARANCE_THRESHOLD, find_repeats
from cloud_selector.registry import Registry
from cloud_selector.selection_config import SelectionConfig, parse_selection_config
from cloud_selector.selection_engine import PickedSample, SelectionPool, select
from cloud_selector.selection_metrics import selection_metrics
from edge_agent.appearance import signatures
from edge_agent.runtime import LoadedModel

log = logging.getLogger(__name__)

# What a new pick must differ from, and what counts for balance: everything already chosen.
REFERENCE_STATES = (SELECTED, IN_LABELING, LABELED, SKIPPED)


@dataclass(frozen=True)
class RoundConfig:
    """One round: a LightlyOne selection config (`selection`), or, without one, the default
    DIVERSITY x TYPICALITY config built from the fields below."""

    n_samples: int = 50
    # Shift-tolerant appearance distance under which a candidate repeats another (see dedup.py).
    duplicate_distance: float = DEFAULT_APPEARANCE_THRESHOLD
    # Cosine distance between embeddings a repeat must also be within (0 = the k nearest).
    duplicate_embedding_distance: float = 0.0
    typicality_strength: float = 1.0
    diversity_strength: float = 1.0
    num_nearest_neighbors: int = 10
    selection: dict | None = None

    def selection_config(self) -> SelectionConfig:
        """Parsed and validated (SelectionConfigError names the bad field)."""
        return parse_selection_config(self.selection if self.selection is not None else default_selection(
            self.n_samples, k=self.num_nearest_neighbors, typicality_strength=self.typicality_strength,
            diversity_strength=self.diversity_strength))


def default_selection(n_samples: int, *, k: int = 10, typicality_strength: float = 1.0,
                      diversity_strength: float = 1.0) -> dict:
    """Typical and diverse: TypiClust typicality times k-center distance, in Lightly's schema."""
    return {"n_samples": n_samples, "strategies": [
        {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY", "strength": diversity_strength}},
        {"input": {"type": "EMBEDDINGS"},
         "strategy": {"type": "TYPICALITY", "num_nearest_neighbors": k, "strength": typicality_strength}},
    ]}


@dataclass(frozen=True)
class RoundResult:
    run_id: int
    model_version: int
    pool_size: int
    duplicates: int
    selected: list[str]
    metrics: dict


def decode_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("undecodable JPEG")
    return image


def embed(rows: list[CandidateRow], frames: list[np.ndarray], model: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [len(rows), D] and class probabilities [len(rows), C] of `rows` in `model`'s
    space: what the device sent for the same version is reused, the rest is computed from the
    decoded `frames`."""
    emb = np.zeros((len(rows), model.embedding_dim), np.float32)
    probs = np.zeros((len(rows), len(model.classes)), np.float64)
    stale = []
    for i, r in enumerate(rows):
        if (r.model_version == model.version and len(r.embedding) == model.embedding_dim
                and len(r.probabilities) == len(model.classes)):
            emb[i], probs[i] = r.embedding, r.probabilities
        else:
            stale.append(i)
    if stale:
        inference = model.infer_batched([frames[i] for i in stale])
        emb[stale], probs[stale] = inference.embeddings, inference.probs
    return emb, probs


SCORE_NAMES = ("least_confidence", "margin", "entropy", "novelty", "combined")


def selection_pool(rows: list[CandidateRow], emb: np.ndarray, probs: np.ndarray, already: int,
                   classes: tuple[str, ...]) -> SelectionPool:
    """The engine's view of the pool: the first len(rows) - already rows are candidates, the
    last `already` are the datapool (selected or labeled earlier)."""
    keys = sorted({k for r in rows for k in r.extra} - {"device_id", "capture_time_ms", "reason"})
    metadata = {"device_id": [r.device_id for r in rows], "capture_time_ms": [r.capture_time_ms for r in rows],
                "reason": [r.reason for r in rows], **{k: [r.extra.get(k) for r in rows] for k in keys}}
    return SelectionPool(
        ids=[r.id for r in rows], embeddings=emb, predictions=probs, class_names=classes, metadata=metadata,
        scores={name: np.array([r.scores[name] for r in rows], np.float64) for name in SCORE_NAMES},
        already_selected=np.arange(len(rows)) >= len(rows) - already,
    )


def _contribution(pick: PickedSample, strategy: str) -> float:
    return next((c.raw for c in pick.contributions if c.strategy == strategy and c.raw is not None), 0.0)


def run_round(catalog: Catalog, blobs: BlobStore, registry: Registry, config: RoundConfig) -> RoundResult:
    selection = config.selection_config()  # a bad config fails before any work
    latest = registry.released()
    if latest is None:
        raise LookupError("no published model yet: train one first (`cloud-selector train`)")
    model = LoadedModel(registry.local_bundle(latest["version"]))
    pool = catalog.candidates(states=[POOLED])
    reference = catalog.candidates(states=REFERENCE_STATES)
    # Every image is decoded once: appearance signatures need them all, embeddings the stale ones.
    pool_frames = [decode_jpeg(blobs.get(r.blob_key)) for r in pool]
    ref_frames = [decode_jpeg(blobs.get(r.blob_key)) for r in reference]
    (pool_emb, pool_probs), (ref_emb, ref_probs) = embed(pool, pool_frames, model), embed(reference, ref_frames, model)
    pool_sig, ref_sig = signatures(pool_frames), signatures(ref_frames)
    dup_of = find_repeats(pool_emb, ref_emb, pool_sig, ref_sig, appearance_threshold=config.duplicate_distance,
                          embedding_threshold=config.duplicate_embedding_distance)
    everyone = reference + pool
    duplicates = [(pool[i].id, everyone[j].id if j < len(reference) else pool[j - len(reference)].id)
                  for i, j in enumerate(dup_of) if j >= 0]
    catalog.mark_duplicates(duplicates)

    keep = [i for i, j in enumerate(dup_of) if j < 0]
    rows = [pool[i] for i in keep] + reference
    emb = np.concatenate([pool_emb[keep], ref_emb]) if rows else np.zeros((0, model.embedding_dim), np.float32)
    probs = np.concatenate([pool_probs[keep], ref_probs]) if rows else np.zeros((0, len(model.classes)))
    result = select(selection, selection_pool(rows, emb, probs, len(reference), model.classes)) if keep else None
    picks = result.picks if result else ()
    # The pool this run saw, compactly: its size, its newest arrival and a digest of its ids
    # (what a later audit compares against without storing 100k ids per run).
    metrics: dict = {"pool": {"size": len(pool), "after_duplicates": len(keep), "reference": len(reference),
                              "newest_received_ms": max((r.received_ms for r in pool), default=0),
                              "ids_sha256": hashlib.sha256("\n".join(sorted(r.id for r in pool)).encode()).hexdigest()}}
    if keep and picks:
        m = selection_metrics(emb[:len(keep)], [p.index for p in picks], probs[:len(keep)].argmax(axis=1), rng=0)
        metrics |= {"picked": asdict(m.picked), "random": asdict(m.random), "diversity_ratio": m.diversity_ratio,
                    "coverage_mean_ratio": m.coverage_mean_ratio, "coverage_max_ratio": m.coverage_max_ratio,
                    "stop_reason": result.stop_reason.value}
    pick_rows = [{"candidate_id": p.id, "rank": p.rank, "typicality": float(_contribution(p, "TYPICALITY")),
                  "min_distance": float(_contribution(p, "DIVERSITY")), "score": float(p.score),
                  "contributions": [asdict(c) for c in p.contributions]} for p in picks]
    run_id = catalog.record_selection(config=selection.to_dict(), model_version=model.version, pool_size=len(pool),
                                      duplicates=len(duplicates), picks=pick_rows, metrics=metrics)
    log.info("selection run %d: pool %d, %d near-duplicates, %d selected", run_id, len(pool), len(duplicates), len(picks))
    return RoundResult(run_id, model.version, len(pool), len(duplicates), [p["candidate_id"] for p in pick_rows],
                       metrics)
