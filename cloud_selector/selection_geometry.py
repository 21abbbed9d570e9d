"""Geometry the selection engine and its metrics share: unit vectors, distances on them, nearest
neighbours with FAISS, and TypiClust typicality (exact k-NN up to a work bound, a bounded
search of k-means cells beyond it: cloud_selector/selection_index.py). Pure numpy/FAISS;
float32 throughout, chunked to bound memory."""

from __future__ import annotations

import math

import faiss
import numpy as np

from cloud_selector.selection_index import CellPartition, cell_knn_dots, partition_cells

SQUARED_DISTANCE_RESOLUTION = 1e-6
"""Squared Euclidean distances below this (distance < 1e-3) are float32 rounding noise and
snap to 0: a unit vector's dot with itself is 1 +- 6e-8, which would otherwise read as a
distance of ~3e-4 between exact duplicates."""

EXACT_KNN_MAX_WORK = 5e10
"""Typicality's k-NN is exact while queries * N * D stays below this (~1-2 s on 2 cores:
N=20k at D=128, N=6k at D=1280); beyond it each row searches its own k-means cell and the
nearest ones, about ``APPROX_KNN_WORK / (queries * D)`` rows, with exact distances."""

APPROX_KNN_WORK = 4e9
"""Multiply-adds the approximate k-NN aims for (~0.5-1 s on 2 cores): at 100k x 128 each row
searches ~300 rows, its own cell. What it costs: a true neighbour outside the searched cells
is replaced by a farther row, so typicality comes out lower; on B4's synthetic 128-d mixture
(isotropic clusters, the hard case for cells) by a median ~3 % (p99 ~6 %) at 100k, Spearman
rank correlation with the exact values 0.998. Halving the budget saves ~20 % of the time
(fixed costs: k-means, FAISS's top-k) for ~1.3x the error. Never fewer than 2(k+1) rows,
nor cells under 256 rows."""


def unit_vectors(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row has no direction: error."""
    norms = np.linalg.norm(embeddings, axis=1).astype(np.float32)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"embeddings row {zero[0]} is all zeros; its distances are undefined")
    return np.ascontiguousarray(embeddings / norms[:, None], dtype=np.float32)


def distance_from_dots(dots: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their dot products: sqrt(2 - 2 cos)."""
    d2 = np.maximum(2.0 - 2.0 * np.asarray(dots, dtype=np.float32), 0.0)
    d2[d2 < SQUARED_DISTANCE_RESOLUTION] = 0.0
    return np.sqrt(d2)


def nearest_dot(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per query row, the largest dot product with any base row (exact, FAISS, blocked)."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    dots, _ = index.search(queries, 1)
    return dots[:, 0]


def typicality_scores(unit: np.ndarray, k: int, *, rows: np.ndarray | None = None,
                      exact_max_work: float = EXACT_KNN_MAX_WORK, approx_work: float = APPROX_KNN_WORK,
                      partition: CellPartition | None = None) -> np.ndarray:
    """TypiClust's typicality of ``rows`` (default: all): 1 / mean Euclidean distance to the k
    nearest other rows of ``unit`` (self excluded by index, so an exact duplicate counts as a
    neighbour at 0). Neighbours are searched among all rows whatever ``rows`` is: the density
    is the whole pool's, only the queries are limited (a big labelled datapool is searched,
    not scored).

    ``k`` is clipped to N - 1; a lone row gets 1.0. The mean is floored at 1e-3 (the
    distance resolution), so k duplicates give 1000, not 1/0. Exact up to
    ``exact_max_work`` (queries * N * D); beyond it, neighbours from a search of about
    ``approx_work`` multiply-adds over k-means cells (``partition``, built here when not
    given; see ``knn_scan``), distances exact. ``unit`` must hold unit-length float32 rows.
    """
    n, dim = unit.shape
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if n <= 1:
        return np.ones(len(rows))
    k = min(k, n - 1)
    if float(len(rows)) * n * dim <= exact_max_work:
        index = faiss.IndexFlatIP(dim)
        index.add(unit)
        dots, idx = index.search(np.ascontiguousarray(unit[rows]), k + 1)
        dists = _drop_self(dots, idx, rows, k)
    else:
        scan = knn_scan(len(rows), n, dim, k, approx_work)
        part = partition if partition is not None else partition_cells(unit, knn_cell_size(scan))
        dists = distance_from_dots(cell_knn_dots(unit, k, rows, part, scan))
    mean = np.maximum(dists.astype(np.float64).mean(axis=1), math.sqrt(SQUARED_DISTANCE_RESOLUTION))
    return 1.0 / mean


def _drop_self(dots: np.ndarray, idx: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """[q, k+1] neighbour lists of ``rows`` (best first) -> [q, k] distances without the row
    itself. Where the row is absent (more than k exact duplicates outrank it), the last
    entry goes.
    """
    keep = idx != rows[:, None]
    keep[keep.sum(axis=1) > k, -1] = False
    return distance_from_dots(dots[keep].reshape(len(idx), k))


def knn_scan(queries: int, n: int, dim: int, k: int, approx_work: float = APPROX_KNN_WORK) -> int:
    """Rows the approximate k-NN searches per query: the work budget spread over the queries,
    at least 2(k+1), at most the pool (then the search is exact)."""
    return int(min(n, max(2 * (k + 1), approx_work / max(queries * dim, 1))))


def knn_cell_size(scan: int) -> int:
    """Cells about as big as a query's search, so it mostly reads its own cell; at least 256
    rows, because the greedy loop shares the cells and pays O(cells) per step (at 1M, 64-row
    cells made 15k cells and half the engine's time went to scanning cell arrays)."""
    return int(min(1024, max(256, scan)))
