"""Near-duplicate detection over the pool: FAISS embedding neighbours, confirmed by appearance.

Embeddings alone cannot tell a repeat of the same item from a look-alike (see
edge_agent/appearance.py), and comparing every pair's appearance is quadratic. So each pool
item's `k` nearest embeddings (FAISS inner product on unit vectors, among the reference set --
everything already selected, queued or labeled -- and earlier pool items) are the only
candidates. A candidate counts as the item's original when:

- its cosine distance is at most `embedding_threshold` (0 = any of the k neighbours), and
- their shift-tolerant appearance distance is under `appearance_threshold` (0 = embedding only,
  Lightly's plain cosine rule).

The index is rebuilt from the catalog's embeddings at every round (in the current model's
space, so it never mixes spaces); duplicates are marked in the catalog, kept for audit and never
selected.

Result codes follow `selection.find_near_duplicates`: -1 = kept; v < M = duplicate of
reference[v]; M + j = duplicate of pool item j (an earlier, kept one).
"""

from __future__ import annotations

import faiss
import numpy as np

from edge_agent.appearance import pair_distances
from edge_agent.scoring import l2_normalize

DEFAULT_APPEARANCE_THRESHOLD = 0.2
DEFAULT_NEIGHBOURS = 10
PAIR_CHUNK = 8192


def find_repeats(pool_emb: np.ndarray, ref_emb: np.ndarray, pool_sig: np.ndarray, ref_sig: np.ndarray, *,
                 appearance_threshold: float = DEFAULT_APPEARANCE_THRESHOLD, embedding_threshold: float = 0.0,
                 k: int = DEFAULT_NEIGHBOURS, max_shift: int = 3) -> np.ndarray:
    n, m = len(pool_emb), len(ref_emb)
    if len(pool_sig) != n or len(ref_sig) != m:
        raise ValueError("each embedding needs its appearance signature")
    if appearance_threshold <= 0 and embedding_threshold <= 0:
        raise ValueError("set appearance_threshold or embedding_threshold (or both)")
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    everyone = np.ascontiguousarray(l2_normalize(np.concatenate([ref_emb, pool_emb]) if m else pool_emb))
    index = faiss.IndexFlatIP(everyone.shape[1])
    index.add(everyone)
    # Later pool items and the item itself come back too and are filtered out: ask for extra.
    similarity, neighbours = index.search(everyone[m:], min(m + n, 2 * k + 1))
    i_idx, j_idx, cosine = [], [], []
    for i in range(n):
        allowed = (neighbours[i] >= 0) & (neighbours[i] < m + i)
        js, sims = neighbours[i][allowed][:k], similarity[i][allowed][:k]
        if embedding_threshold > 0:
            js, sims = js[1.0 - sims <= embedding_threshold], sims[1.0 - sims <= embedding_threshold]
        i_idx += [i] * len(js)
        j_idx += js.tolist()
        cosine += (1.0 - sims).tolist()
    i_idx, j_idx = np.asarray(i_idx, np.int64), np.asarray(j_idx, np.int64)
    if appearance_threshold > 0:
        everyone_sig = np.concatenate([ref_sig, pool_sig]) if m else pool_sig
        # In chunks: a pair's two signatures take 25 kB, and 100k items have a million pairs.
        distance = np.concatenate([np.zeros(0, np.float32)] + [
            pair_distances(pool_sig[i_idx[c:c + PAIR_CHUNK]], everyone_sig[j_idx[c:c + PAIR_CHUNK]], max_shift)
            for c in range(0, len(i_idx), PAIR_CHUNK)])
        threshold = appearance_threshold
    else:
        distance, threshold = np.asarray(cosine), np.inf
    kept = np.ones(m + n, dtype=bool)  # references are always "kept"; pool items until found repeated
    # Resolve in pool order, closest first: an original must itself still be kept.
    for p in np.lexsort((distance, i_idx)):
        i, j = i_idx[p], j_idx[p]
        if out[i] >= 0 or distance[p] >= threshold or not kept[j]:
            continue
        out[i] = j
        kept[m + i] = False
    return out
