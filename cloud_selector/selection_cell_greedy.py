"""The lazy greedy loop of the selection engine, cell by cell, for pools of thousands of
candidates (cloud_selector/selection_engine.py uses it from ``ScaleLimits.cell_greedy_min_candidates``
on): it makes exactly the picks of the exhaustive loop, but refreshes a cell's distances only when
the cell could hold the best key, and only against the picks the triangle inequality cannot rule
out (``d(x, p) >= d(c, p) - r`` for a member x of a cell with centroid c and radius r).
"""

from __future__ import annotations

import faiss
import numpy as np

from cloud_selector.selection_geometry import distance_from_dots
from cloud_selector.selection_index import CellPartition, cell_radii, faiss_threads

_TRIANGLE_SLACK = 1e-3   # added to radii: float32 distances are off by ~1e-6; this is generous
_REFRESH_CELLS = 4        # stale cells refreshed together: 1 refreshes 3x as often, 16 twice the rows


def lazy_cell_greedy(vecs, part: CellPartition, dist, alive, key_of, pick, requested: int,
                     min_distance: float) -> str:
    """Lazy greedy over cells; returns "n_samples", "exhausted" or "max_sum".

    ``vecs`` are the candidates' unit rows, ``part`` their cells; ``dist`` (each candidate's
    distance to its nearest pick or datapool sample, inf when none) and ``alive`` (eligible)
    are updated in place; ``key_of(positions)`` gives log-scores that can only fall when
    ``dist`` falls (DIVERSITY with a non-negative strength, static objectives); ``pick(j)``
    records a pick and returns False when a max-sum cap is reached.

    Every cell keeps its best key as of its last refresh, an upper bound on its members' keys
    now (distances only shrink). The cell on top (ties: lowest position) is refreshed against
    the picks made since, unless fresh: then its best member is the exact argmax, the same
    pick the eager loop makes. A refresh skips every pick the triangle inequality rules out
    (centroid-to-pick distance minus the cell radius >= the largest distance left in the
    cell), so a pick costs work only in the cells near it. Float32 rounding in the distance
    products can, as in the eager loop, break a tie differently than float64 would.
    """
    n_cells, dim = part.n_cells, vecs.shape[1]
    sizes = np.diff(part.starts)
    centroids = part.centroids
    cent_sq = (centroids.astype(np.float64) ** 2).sum(axis=1)
    radii = cell_radii(vecs, part) + _TRIANGLE_SLACK
    fresh = np.zeros(n_cells, np.int64)           # picks each cell's distances account for
    key = np.full(n_cells, -np.inf)
    best = np.zeros(n_cells, np.int64)
    reach = np.full(n_cells, np.inf)              # largest distance among a cell's live members
    picks = np.empty((max(requested, 1), dim), np.float32)
    cent_pick = np.empty((n_cells, max(requested, 1)), np.float32)   # centroid-to-pick distances
    made = 0
    packed = np.ascontiguousarray(vecs[part.order])   # cell members contiguous: products read slices

    def refresh(cells: np.ndarray) -> None:
        since = int(fresh[cells].min())
        if since < made:
            near = cent_pick[cells, since:made] - radii[cells, None] < reach[cells, None]
            near &= np.arange(since, made)[None, :] >= fresh[cells, None]
            moved = near.any(axis=1)
            fresh[cells[~moved]] = made        # no new pick within reach: distances and keys stand
            cells, near = cells[moved], near[moved]
            if len(cells) == 0:
                return
        rows = np.concatenate([part.members(c) for c in cells])
        lens = sizes[cells]
        seg = np.concatenate(([0], np.cumsum(lens)[:-1]))
        if since < made:
            # Each cell against only the picks near it (the triangle test above): a few small
            # products per refresh instead of one big one over the union (7x less work on B4).
            with faiss_threads(1):   # FAISS's BLAS, single-threaded: numpy's threads thrash on small products
                for c, mask in zip(cells, near):
                    s, e = part.starts[c], part.starts[c + 1]
                    dots, _ = faiss.knn(packed[s:e], picks[np.flatnonzero(mask) + since], 1,
                                        metric=faiss.METRIC_INNER_PRODUCT)
                    rows_c = part.order[s:e]
                    dist[rows_c] = np.minimum(dist[rows_c], distance_from_dots(dots[:, 0]))
            if min_distance > 0:
                alive[rows] &= dist[rows] >= min_distance   # too close: gone for good
        fresh[cells] = made
        live = alive[rows]
        keys = np.full(len(rows), -np.inf)
        if live.any():
            keys[live] = key_of(rows[live])
        top = np.maximum.reduceat(keys, seg)
        is_top = np.flatnonzero(keys == np.repeat(top, lens))
        owner = np.repeat(np.arange(len(cells)), lens)[is_top]
        first = is_top[np.unique(owner, return_index=True)[1]]   # lowest position among ties
        key[cells], best[cells] = top, rows[first]
        reach[cells] = np.maximum.reduceat(np.where(live, dist[rows], -np.inf), seg)

    for s in range(0, n_cells, 256):
        refresh(np.arange(s, min(s + 256, n_cells)))
    while made < requested:
        top = key.max()
        if top == -np.inf:
            return "exhausted"
        tied = np.flatnonzero(key == top)
        c = tied[np.argmin(best[tied])] if len(tied) > 1 else tied[0]
        if fresh[c] == made:
            j = int(best[c])
            ok = pick(j)
            alive[j] = False
            picks[made] = vecs[j]
            # einsum, not BLAS: numpy's threaded gemv took ~7 ms here (3.9k cells) under load.
            dots = np.einsum("cd,d->c", centroids, vecs[j])
            cent_pick[:, made] = np.sqrt(np.maximum(cent_sq + 1.0 - 2.0 * dots, 0.0))
            # A fresh cell the new pick cannot reach stays fresh: no refresh needed to trust it.
            unmoved = (fresh == made) & (cent_pick[:, made] - radii >= reach)
            unmoved[c] = False                    # its best was just picked: recompute it
            made += 1
            fresh[unmoved] = made
            if not ok:
                return "max_sum"
            continue
        stale = np.flatnonzero(fresh < made)
        if len(stale) > _REFRESH_CELLS:   # the top stale cells by bound (c is among them)
            stale = stale[np.argpartition(-key[stale], _REFRESH_CELLS - 1)[:_REFRESH_CELLS]]
        refresh(np.sort(stale))
    return "n_samples"
