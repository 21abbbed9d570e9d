"""Cells for selection at scale: a seeded two-level k-means partition of unit vectors, the
approximate k-NN search typicality uses on it, and the cell radii the greedy loop over cells
(cloud_selector/selection_cell_greedy.py) prunes with.

Why cells: at 100k x 128 an exact k-NN is 1.3e12 multiply-adds and exact k-center-style
diversity is a full pass over the pool per pick (memory-bound, ~5-20 ms each on 2 cores).
Cells of a few hundred rows let typicality scan only a row's own cell and its nearest ones
(the work per row stays bounded whatever N is), and let the greedy loop skip a cell when the
triangle inequality proves a pick cannot be its rows' nearest (``d(x, p) >= d(c, p) - r``).

Why two levels: one k-means with N / 300 centroids costs N * (N / 300) * D to assign (4e11 at
1M); coarse cells of ~sqrt(cells), then k-means inside each (and again inside any cell over
twice the target size) cost a few N * sqrt(N / 300) * D. A row then sits in the nearest fine
cell *of its coarse cell*, not always the globally nearest one: that loosens cells a little,
never the bounds (radii are measured, not assumed).

Threads: FAISS runs single-threaded in every call here (``faiss_threads(1)``): these are
many small searches, and on a loaded 2-core machine OpenMP's fork/join per call made them
2.5-4x slower. numpy's BLAS is kept to tiny products for the same reason (a 5000 x 128
matrix-vector product took 8 ms with its two threads contending, 0.4 ms through
single-threaded FAISS). The typicality search splits its cells over ``_WORKERS`` Python
threads instead (FAISS releases the GIL).
Everything is deterministic for the same input (seeded k-means, stable sorts, disjoint writes).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np

SEED = 1234                 # k-means seeds: fixed so a run is reproducible
_KMEANS_ITER = 8            # Lloyd iterations; cells only need to be compact, not optimal
_SAMPLE_PER_CENTROID = 32   # k-means trains on this many rows per centroid (a seeded sample)
_WORKERS = 2               # threads for the cell searches (each single-threaded FAISS)


@contextlib.contextmanager
def faiss_threads(n: int):
    """FAISS's OpenMP thread count for the calling thread, restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class CellPartition:
    """Rows grouped into cells: ``order`` lists rows cell by cell (ascending row within a cell),
    cell ``c`` is ``order[starts[c]:starts[c + 1]]``; ``cell_of[row]`` is its cell."""

    centroids: np.ndarray   # float32 [C, D] (not unit length)
    cell_of: np.ndarray     # int64 [N]
    order: np.ndarray       # int64 [N]
    starts: np.ndarray      # int64 [C + 1]

    @property
    def n_cells(self) -> int:
        return len(self.centroids)

    def members(self, c: int) -> np.ndarray:
        return self.order[self.starts[c] : self.starts[c + 1]]

    def restricted(self, rows: np.ndarray) -> "CellPartition":
        """The same cells over ``rows`` only (renumbered 0..len(rows)-1; empty cells dropped)."""
        cell_of = self.cell_of[rows]
        used = np.unique(cell_of)
        renumber = np.full(self.n_cells, -1, np.int64)
        renumber[used] = np.arange(len(used))
        return _from_assignment(self.centroids[used], renumber[cell_of])


def _from_assignment(centroids: np.ndarray, cell_of: np.ndarray) -> CellPartition:
    order = np.argsort(cell_of, kind="stable")
    starts = np.searchsorted(cell_of[order], np.arange(len(centroids) + 1))
    return CellPartition(np.ascontiguousarray(centroids, dtype=np.float32), cell_of, order, starts)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means trained on a sample; (centroids [k', D], assignment of every row)."""
    if k <= 1 or len(x) <= k:
        return (x.mean(axis=0, keepdims=True), np.zeros(len(x), np.int64)) if k <= 1 else \
            (x.copy(), np.arange(len(x), dtype=np.int64))
    km = faiss.Kmeans(x.shape[1], k, niter=_KMEANS_ITER, seed=seed, verbose=False,
                      max_points_per_centroid=_SAMPLE_PER_CENTROID, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign[:, 0].astype(np.int64)


def partition_cells(unit: np.ndarray, cell_size: int) -> CellPartition:
    """Seeded k-means, coarse then fine, into cells of about ``cell_size`` rows; a cell over
    twice that is cut again (k-means in high dimensions leaves a few cells several times the
    mean, and a cell's search costs its size squared)."""
    n = len(unit)
    cell_size = max(int(cell_size), 1)
    n_coarse = max(1, round(math.sqrt(max(1, round(n / cell_size)))))
    cells: list[np.ndarray] = []
    with faiss_threads(1):
        _, coarse_of = _kmeans(unit, n_coarse, SEED)
        by_coarse = np.argsort(coarse_of, kind="stable")
        bounds = np.searchsorted(coarse_of[by_coarse], np.arange(n_coarse + 1))
        todo = [(by_coarse[bounds[g] : bounds[g + 1]], 1) for g in range(n_coarse)]
        while todo:
            rows, depth = todo.pop()
            if len(rows) <= 2 * cell_size or depth > 3:
                if len(rows):
                    cells.append(rows)
                continue
            _, part_of = _kmeans(np.ascontiguousarray(unit[rows]), max(2, round(len(rows) / cell_size)),
                                 SEED + len(cells) + 7919 * depth)
            order = np.argsort(part_of, kind="stable")
            splits = np.split(rows[order], np.flatnonzero(np.diff(part_of[order])) + 1)
            if len(splits) == 1:          # k-means could not cut it (duplicates): keep it whole
                cells.append(rows)
                continue
            todo.extend((sub, depth + 1) for sub in splits)
    cell_of = np.empty(n, np.int64)
    centroids = np.empty((len(cells), unit.shape[1]), np.float32)
    for c, rows in enumerate(sorted(cells, key=lambda r: int(r.min()))):   # numbering independent of the work order
        cell_of[rows] = c
        centroids[c] = unit[rows].mean(axis=0)
    return _from_assignment(centroids, cell_of)


def cell_radii(unit: np.ndarray, part: CellPartition) -> np.ndarray:
    """Per cell, the largest Euclidean distance from its centroid to a member (float64)."""
    radii = np.zeros(part.n_cells)
    for c in range(part.n_cells):
        members = unit[part.members(c)]
        if len(members):
            radii[c] = math.sqrt(float(((members - part.centroids[c]) ** 2).sum(axis=1).max()))
    return radii


def cell_knn_dots(unit: np.ndarray, k: int, rows: np.ndarray, part: CellPartition, scan: int) -> np.ndarray:
    """[len(rows), k] dot products of each row with its k best neighbours among the rows of its
    own cell and of the nearest cells (by centroid) until at least ``scan`` rows are searched
    (the whole pool when ``scan >= N``: then exact). The row itself is excluded by index, so an
    exact duplicate still counts; a neighbour the search misses only lowers that row's dot,
    so typicality can only come out lower than the exact one. A row that finds fewer than k
    (a tiny isolated cell) is searched against every row.

    Cost: about ``len(rows) * scan * D`` multiply-adds in per-cell FAISS searches.
    """
    n = len(unit)
    sizes = np.diff(part.starts)
    want = np.zeros(n, bool)
    want[rows] = True
    found = np.full((n, k), -np.inf, dtype=np.float32)       # filled for wanted rows only
    per_cell = max(1, min(part.n_cells, math.ceil(scan / max(sizes.mean(), 1)) * 2 + 1))
    with faiss_threads(1):
        _, near = faiss.knn(part.centroids, part.centroids, per_cell)
    packed = np.ascontiguousarray(unit[part.order])

    def search(cells_of_worker: range) -> None:
        with faiss_threads(1):   # per worker thread: OpenMP's setting is per thread
            for c in cells_of_worker:
                s, e = part.starts[c], part.starts[c + 1]
                q = np.flatnonzero(want[part.order[s:e]]) + s
                if len(q) == 0:
                    continue
                cells = [c] + [j for j in near[c] if j != c and j >= 0]
                take = np.searchsorted(np.cumsum(sizes[cells]), min(scan, n))   # cells until >= scan rows
                cells = cells[: take + 1]
                base = np.concatenate([np.arange(part.starts[j], part.starts[j + 1]) for j in cells])
                dots, idx = faiss.knn(np.ascontiguousarray(packed[q]), np.ascontiguousarray(packed[base]),
                                      min(k + 1, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
                hit = idx >= 0
                own = hit & (base[np.maximum(idx, 0)] == q[:, None])    # the query itself, by index
                keep = hit & ~own
                keep[keep.sum(axis=1) > k, -1] = False                 # self absent: drop the (k+1)th
                vals = np.where(keep, dots, -np.inf).astype(np.float32)
                vals = -np.sort(-vals, axis=1)[:, :k]
                found[part.order[q], : vals.shape[1]] = vals             # disjoint rows per worker

    # Cells split between threads (FAISS releases the GIL while it searches): independent
    # single-threaded searches scale where OpenMP inside each small search did not.
    workers = max(1, min(_WORKERS, faiss.omp_get_max_threads(), part.n_cells))
    if workers == 1:
        search(range(part.n_cells))
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(search, [range(w, part.n_cells, workers) for w in range(workers)]))
    with faiss_threads(1):
        out = found[rows]
        for r in np.flatnonzero(~np.isfinite(out).all(axis=1)):   # under-served: scan everything
            all_dots = unit @ unit[rows[r]]
            all_dots[rows[r]] = -np.inf
            out[r] = -np.sort(-all_dots)[:k]
    return out
