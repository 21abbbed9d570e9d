"""Lightly-style metrics of a selection, next to a random pick of the same size: how spread out
the picks are (diversity), how well they cover the pool (coverage), how even their classes are.
Pure numpy/FAISS; the engine's distance conventions (unit vectors, float32 noise floor)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from cloud_selector.selection_geometry import (
    SQUARED_DISTANCE_RESOLUTION,
    nearest_dot,
    unit_vectors,
)


@dataclass(frozen=True)
class SetMetrics:
    """How well ``n`` picks represent a pool (cosine distance 1 - cos throughout).

    diversity: mean distance from each pick to its nearest other pick (higher = more spread;
    0 with fewer than two picks). coverage_mean / coverage_max: mean and max over every pool
    sample of the distance to its nearest pick (lower = better covered; k-center minimises the
    max). class_balance: normalised entropy of the picks' labels over the pool's classes (1 =
    even), None without labels.
    """

    n: int
    diversity: float
    coverage_mean: float
    coverage_max: float
    class_balance: float | None


@dataclass(frozen=True)
class SelectionMetrics:
    """A selection's metrics next to a seeded random pick of the same size."""

    picked: SetMetrics
    random: SetMetrics

    @property
    def diversity_ratio(self) -> float:
        """picked / random diversity: > 1 means more spread out than chance."""
        return _ratio(self.picked.diversity, self.random.diversity)

    @property
    def coverage_mean_ratio(self) -> float:
        """random / picked mean coverage distance: > 1 means better covered than chance."""
        return _ratio(self.random.coverage_mean, self.picked.coverage_mean)

    @property
    def coverage_max_ratio(self) -> float:
        return _ratio(self.random.coverage_max, self.picked.coverage_max)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a == b else math.inf)


def _cosine(dots: np.ndarray) -> np.ndarray:
    d = np.clip(1.0 - dots.astype(np.float64), 0.0, 2.0)
    d[d < SQUARED_DISTANCE_RESOLUTION / 2] = 0.0  # same float32 noise floor as the selection
    return d


def set_metrics(embeddings, idx, labels=None) -> SetMetrics:
    """Metrics of the rows ``idx`` of ``embeddings`` (see ``SetMetrics``)."""
    unit = unit_vectors(np.ascontiguousarray(embeddings, dtype=np.float32))
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        return SetMetrics(0, 0.0, 2.0, 2.0, None if labels is None else 0.0)
    if len(np.unique(idx)) != len(idx) or idx.min() < 0 or idx.max() >= len(unit):
        raise ValueError("picked indices must be distinct rows of embeddings")
    picked = np.ascontiguousarray(unit[idx])
    coverage = _cosine(nearest_dot(unit, picked))
    diversity = 0.0
    if len(idx) > 1:
        index = faiss.IndexFlatIP(picked.shape[1])
        index.add(picked)
        dots, nn = index.search(picked, 2)
        own = nn == np.arange(len(idx))[:, None]
        other = np.where(own[:, 0], dots[:, 1], dots[:, 0])  # drop self by index, not value
        diversity = float(_cosine(other).mean())
    balance = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(unit),):
            raise ValueError(f"labels must have shape ({len(unit)},), got {labels.shape}")
        classes = np.unique(labels)
        if len(classes) < 2:
            balance = 1.0
        else:
            counts = np.array([(labels[idx] == c).sum() for c in classes], dtype=np.float64)
            p = counts[counts > 0] / counts.sum()
            balance = float(-(p * np.log(p)).sum() / math.log(len(classes)))
    return SetMetrics(len(idx), diversity, float(coverage.mean()), float(coverage.max()), balance)


def selection_metrics(embeddings, picked_idx, labels=None, rng: np.random.Generator | int = 0) -> SelectionMetrics:
    """``set_metrics`` of the picks and of a random pick of the same size (seeded by ``rng``)."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n_rows = len(embeddings)
    random_idx = gen.choice(n_rows, size=min(len(picked_idx), n_rows), replace=False)
    return SelectionMetrics(picked=set_metrics(embeddings, picked_idx, labels),
                            random=set_metrics(embeddings, random_idx, labels))
