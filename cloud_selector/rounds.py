"""One selection round over the pool: embed, drop near-duplicates, pick by typicality and
diversity, record the run.

Embedding space: all distances are taken in the current model's embedding space. A candidate
scored on the device by that same version carries a usable embedding; everything else (older
versions, imported images) is re-embedded here from its JPEG with the current bundle.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import LABELED, POOLED, SELECTED, Catalog, CandidateRow
from cloud_selector.registry import Registry
from cloud_selector.dedup import DEFAULT_APPEARANCE_THRESHOLD, find_repeats
from cloud_selector.selection import select_diverse_typical
from edge_agent.appearance import signatures
from edge_agent.runtime import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundConfig:
    n_samples: int = 50
    # Shift-tolerant appearance distance under which a candidate repeats another (see dedup.py).
    duplicate_distance: float = DEFAULT_APPEARANCE_THRESHOLD
    typicality_strength: float = 1.0
    diversity_strength: float = 1.0
    num_nearest_neighbors: int = 10


@dataclass(frozen=True)
class RoundResult:
    run_id: int
    model_version: int
    pool_size: int
    duplicates: int
    selected: list[str]


def decode_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("undecodable JPEG")
    return image


def embed(rows: list[CandidateRow], frames: list[np.ndarray], model: LoadedModel) -> np.ndarray:
    """Embeddings of `rows` in `model`'s space [len(rows), D]: device embeddings of the same
    version are reused, the rest are computed from the decoded `frames`."""
    out = np.zeros((len(rows), model.embedding_dim), np.float32)
    stale = []
    for i, r in enumerate(rows):
        if r.model_version == model.version and len(r.embedding) == model.embedding_dim:
            out[i] = r.embedding
        else:
            stale.append(i)
    if stale:
        out[stale] = model.infer_batched([frames[i] for i in stale]).embeddings
    return out


def run_round(catalog: Catalog, blobs: BlobStore, registry: Registry, config: RoundConfig) -> RoundResult:
    latest = registry.latest()
    if latest is None:
        raise LookupError("no published model yet: train one first (`cloud-selector train`)")
    model = LoadedModel(registry.local_bundle(latest["version"]))
    pool = catalog.candidates(states=[POOLED])
    reference = catalog.candidates(states=[SELECTED, LABELED])
    # Every image is decoded once: appearance signatures need them all, embeddings the stale ones.
    pool_frames = [decode_jpeg(blobs.get(r.blob_key)) for r in pool]
    ref_frames = [decode_jpeg(blobs.get(r.blob_key)) for r in reference]
    pool_emb, ref_emb = embed(pool, pool_frames, model), embed(reference, ref_frames, model)
    pool_sig, ref_sig = signatures(pool_frames), signatures(ref_frames)
    dup_of = find_repeats(pool_emb, ref_emb, pool_sig, ref_sig, appearance_threshold=config.duplicate_distance)
    everyone = reference + pool
    duplicates = [(pool[i].id, everyone[j].id if j < len(reference) else pool[j - len(reference)].id)
                  for i, j in enumerate(dup_of) if j >= 0]
    catalog.mark_duplicates(duplicates)

    keep = [i for i, j in enumerate(dup_of) if j < 0]
    picks = select_diverse_typical(
        pool_emb[keep], config.n_samples, reference=ref_emb,
        typicality_strength=config.typicality_strength, diversity_strength=config.diversity_strength,
        k=config.num_nearest_neighbors,
    ) if keep else []
    pick_rows = [{"candidate_id": pool[keep[p.index]].id, "rank": rank, "typicality": float(p.typicality),
                  "min_distance": float(p.min_distance), "score": float(p.score)} for rank, p in enumerate(picks)]
    run_id = catalog.record_selection(config=asdict(config), model_version=model.version, pool_size=len(pool),
                                      duplicates=len(duplicates), picks=pick_rows)
    log.info("selection run %d: pool %d, %d near-duplicates, %d selected", run_id, len(pool), len(duplicates), len(picks))
    return RoundResult(run_id, model.version, len(pool), len(duplicates), [p["candidate_id"] for p in pick_rows])
