"""Near-duplicate detection over the pool: embedding neighbours, confirmed by appearance.

Embeddings alone cannot tell a repeat of the same item from a look-alike (see
edge_agent/appearance.py), and comparing every pair's appearance is quadratic. So each pool
item's `k` nearest embeddings (among the reference set and earlier pool items) are the only
candidates, and a candidate counts as the item's original when their shift-tolerant appearance
distance is under `appearance_threshold`.

Result codes follow `selection.find_near_duplicates`: -1 = kept; v < M = duplicate of
reference[v]; M + j = duplicate of pool item j (an earlier, kept one).
"""

from __future__ import annotations

import numpy as np

from edge_agent.appearance import pair_distances
from cloud_selector.selection import cosine_distances

DEFAULT_APPEARANCE_THRESHOLD = 0.2
DEFAULT_NEIGHBOURS = 10


def find_repeats(pool_emb: np.ndarray, ref_emb: np.ndarray, pool_sig: np.ndarray, ref_sig: np.ndarray, *,
                 appearance_threshold: float = DEFAULT_APPEARANCE_THRESHOLD, k: int = DEFAULT_NEIGHBOURS,
                 max_shift: int = 3, block_rows: int = 1024) -> np.ndarray:
    n, m = len(pool_emb), len(ref_emb)
    if len(pool_sig) != n or len(ref_sig) != m:
        raise ValueError("each embedding needs its appearance signature")
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    everyone_emb = np.concatenate([ref_emb, pool_emb]) if m else pool_emb
    everyone_sig = np.concatenate([ref_sig, pool_sig]) if m else pool_sig
    kept = np.ones(m + n, dtype=bool)  # references are always "kept"; pool items until found repeated
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        d = cosine_distances(pool_emb[start:stop], everyone_emb)
        # Only the reference set and earlier pool items can be an item's original.
        rows = np.arange(start, stop)
        later = (np.arange(m + n)[None, :] >= (m + rows)[:, None])
        d[later] = np.inf
        kk = min(k, m + n)
        if kk < m + n:
            neighbours = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        else:
            neighbours = np.tile(np.arange(m + n), (len(rows), 1))
        finite = np.isfinite(np.take_along_axis(d, neighbours, axis=1))
        pi, pj = np.nonzero(finite)
        i_idx, j_idx = rows[pi], neighbours[pi, pj]
        app = pair_distances(pool_sig[i_idx], everyone_sig[j_idx], max_shift)
        # Resolve in pool order: an original must itself still be kept.
        order = np.lexsort((app, i_idx))
        for p in order:
            i, j = i_idx[p], j_idx[p]
            if out[i] >= 0 or app[p] >= appearance_threshold or not kept[j]:
                continue
            out[i] = j
            kept[m + i] = False
    return out
