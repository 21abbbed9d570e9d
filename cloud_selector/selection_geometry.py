"""Geometry the selection engine and its metrics share: unit vectors, distances on them, nearest
neighbours with FAISS, and TypiClust typicality (exact k-NN up to a work bound, k-means cell
probing beyond it). Pure numpy/FAISS; float32 throughout, chunked to bound memory."""

from __future__ import annotations

import math

import faiss
import numpy as np

SQUARED_DISTANCE_RESOLUTION = 1e-6
"""Squared Euclidean distances below this (distance < 1e-3) are float32 rounding noise and
snap to 0: a unit vector's dot with itself is 1 +- 6e-8, which would otherwise read as a
distance of ~3e-4 between exact duplicates."""

EXACT_KNN_MAX_WORK = 5e10
"""Typicality's k-NN is exact while N * N * D stays below this (~1-2 s on 2 cores: N=20k at
D=128, N=6k at D=1280); beyond it neighbours are proposed by k-means cell probing and their
distances computed exactly, so only a missed neighbour (rare; it raises that row's mean
distance a little) separates the result from the exact one."""

_PCA_DIM = 128          # candidate search space for the approximate k-NN
_PROBE_CELLS = 24      # k-means cells a cell's members are searched in (own cell first)
_FAISS_SEED = 1234      # k-means and PCA sample: fixed so a run is reproducible
_ROW_BLOCK = 4096       # rows per block where a [rows, k, D] gather is built


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
                      exact_max_work: float = EXACT_KNN_MAX_WORK) -> np.ndarray:
    """TypiClust's typicality of ``rows`` (default: all): 1 / mean Euclidean distance to the k
    nearest other rows of ``unit`` (self excluded by index, so an exact duplicate counts as a
    neighbour at 0). Neighbours are searched among all rows whatever ``rows`` is: the density
    is the whole pool's, only the queries are limited (a big labelled datapool is searched,
    not scored).

    ``k`` is clipped to N - 1; a lone row gets 1.0. The mean is floored at 1e-3 (the
    distance resolution), so k duplicates give 1000, not 1/0. Exact up to
    ``exact_max_work`` (queries * N * D); beyond it, cell-probed neighbours with exact
    distances. ``unit`` must hold unit-length float32 rows.
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
        dists = _approximate_knn_distances(unit, k, rows)
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


def _approximate_knn_distances(unit: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """k nearest-neighbour distances by cell probing, re-ranked with exact dot products.

    k-means (seeded, on a sample) cuts the pool into ~sqrt(N) cells; each cell's members are
    searched, in one blocked FAISS scan, among the members of the ``_PROBE_CELLS`` cells
    whose centroids are nearest its own: a tenth of the pool or less, scanned at matrix-
    multiply speed, which finds the true neighbours of nearly every row (a per-query IVF
    index probing as much is several times slower). Above 128 dimensions the search runs
    on a PCA projection fitted on a seeded sample and proposes 2k neighbours, of which the
    k closest in the full space are kept. Rows left with fewer than k proposals are scanned
    exactly. Only ``rows`` are searched for; every row is searched among.
    """
    n, dim = unit.shape
    space, proposals = unit, k + 1
    wanted = np.zeros(n, bool)
    wanted[rows] = True
    if dim > _PCA_DIM:
        rng = np.random.default_rng(_FAISS_SEED)
        sample = unit[np.sort(rng.choice(n, size=min(n, 16384), replace=False))]
        mean = sample.mean(axis=0)
        centred = sample - mean
        _, vecs = np.linalg.eigh((centred.T @ centred).astype(np.float64))
        basis = np.ascontiguousarray(vecs[:, ::-1][:, :_PCA_DIM], dtype=np.float32)
        space = np.ascontiguousarray(unit @ basis - mean @ basis, dtype=np.float32)
        proposals = 2 * k + 1
    n_cells = max(1, min(round(math.sqrt(n)), n // 39))
    kmeans = faiss.Kmeans(space.shape[1], n_cells, niter=10, seed=_FAISS_SEED,
                          max_points_per_centroid=39, verbose=False)
    kmeans.train(space)
    _, assign = kmeans.index.search(space, 1)
    _, near = faiss.knn(kmeans.centroids, kmeans.centroids, min(_PROBE_CELLS, n_cells))
    order = np.argsort(assign[:, 0], kind="stable")
    starts = np.searchsorted(assign[order, 0], np.arange(n_cells + 1))
    packed = np.ascontiguousarray(space[order])
    found = np.full((n, proposals), -1, dtype=np.int64)  # filled for wanted rows only
    for c in range(n_cells):
        queries = np.arange(starts[c], starts[c + 1])
        queries = queries[wanted[order[queries]]]
        if len(queries) == 0:
            continue
        cells = [c] + [j for j in near[c] if j != c][: _PROBE_CELLS - 1]
        positions = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in cells])
        _, idx = faiss.knn(np.ascontiguousarray(packed[queries]), np.ascontiguousarray(packed[positions]),
                           min(proposals, len(positions)), metric=faiss.METRIC_L2)
        found[order[queries], : idx.shape[1]] = np.where(idx >= 0, order[positions[np.maximum(idx, 0)]], -1)
    del packed, space
    out = np.empty((len(rows), k), dtype=np.float32)
    block = max(1, _ROW_BLOCK * 128 // max(dim, 1) // max(proposals // 16, 1))
    for s in range(0, len(rows), block):
        these = rows[s : s + block]
        cand = found[these]
        bad = (cand < 0) | (cand == these[:, None])
        dots = np.einsum("rd,rkd->rk", unit[these], unit[np.where(bad, these[:, None], cand)])
        dots[bad] = -np.inf
        best = -np.sort(-dots, axis=1)[:, :k]
        for r in np.flatnonzero(~np.isfinite(best).all(axis=1)):  # under-served: scan everything
            all_dots = unit @ unit[these[r]]
            all_dots[these[r]] = -np.inf
            best[r] = -np.sort(-all_dots)[:k]
        out[s : s + len(these)] = distance_from_dots(best)
    return out
