"""Choose what to label: near-duplicate removal, typicality, and a greedy diverse-typical pick.

Pure numpy, no I/O, so the service, the benchmarks and the tests share one definition.
Laid out like modAL: a *measure* (cosine distance, typicality) feeds a *strategy* (one score
per item) that a *selection* loop turns into picks, each its own small function.

Conventions, everywhere:
- Cosine distance ``1 - cos`` in [0, 2] on L2-normalised rows. An all-zero row has no
  direction, so it is rejected (``ValueError``) rather than given a made-up distance.
- Ties go to the lowest index (``np.argmin``/``np.argmax`` return the first occurrence), so a
  run is reproducible from its inputs alone.
- Pairwise distances are built one block of rows at a time (about 32 MiB per block), so a
  50k x 50k pool never allocates its 20 GB matrix. ``block_rows`` overrides the block height;
  it changes memory and speed, never the answer.
- Bad input raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DISTANCE_RESOLUTION", "Pick", "cosine_distances", "find_near_duplicates",
           "random_selection", "select_diverse_typical", "typicality"]

DISTANCE_RESOLUTION = 1e-9
"""Distances below this are rounding noise and are snapped to exactly 0.

Normalising two identical vectors gives ``1 - cos`` of about 1e-16, not 0; without the snap an
exact duplicate of a picked item would keep a tiny positive score and be picked anyway. The
same value floors typicality's mean distance, so k identical neighbours give 1e9, not 1/0.
"""

_BLOCK_ELEMENTS = 1 << 22  # float64 entries per distance block: 32 MiB


# ---- validation -------------------------------------------------------------------------


def _unit_rows(name: str, x, like: tuple[str, int] | None = None) -> np.ndarray:
    """Validate a [n, dim] embedding matrix and return its rows L2-normalised (float64)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {arr.shape}")
    if like is not None and arr.shape[1] != like[1]:
        raise ValueError(f"{name} has dimension {arr.shape[1]} but {like[0]} has {like[1]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{name} row {zero[0]} is all zeros; its cosine distance is undefined")
    return arr / norms


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be finite and >= {minimum}, got {value}")
    return float(value)


def _rows_per_block(n_cols: int, block_rows: int | None) -> int:
    if block_rows is None:
        return max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    return _check_int("block_rows", block_rows, 1)


# ---- measures ---------------------------------------------------------------------------


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine distances between unit rows; clipped to [0, 2], noise below resolution -> 0."""
    d = a @ b.T
    np.subtract(1.0, d, out=d)  # in place: one block-sized array, not three
    np.clip(d, 0.0, 2.0, out=d)
    d[d < DISTANCE_RESOLUTION] = 0.0
    return d


def cosine_distances(a, b) -> np.ndarray:
    """Full [len(a), len(b)] cosine-distance matrix; for small inputs (it is not blocked)."""
    ua = _unit_rows("a", a)
    return _distances(ua, _unit_rows("b", b, like=("a", ua.shape[1])))


def _nearest(a: np.ndarray, b: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``a``: distance to and index of its nearest row of ``b`` (lowest index on
    ties; inf and -1 when ``b`` is empty)."""
    dist, idx = np.full(len(a), np.inf), np.full(len(a), -1, dtype=np.int64)
    if len(b):
        for s in range(0, len(a), rows):
            d = _distances(a[s : s + rows], b)
            idx[s : s + rows] = d.argmin(axis=1)
            dist[s : s + rows] = d[np.arange(len(d)), idx[s : s + rows]]
    return dist, idx


def typicality(emb, k: int, *, block_rows: int | None = None) -> np.ndarray:
    """TypiClust's typicality: 1 / mean cosine distance to the k nearest other items.

    ``k`` is clipped to N-1; a single item gets 1.0 (it has no neighbours to be atypical
    against). Self is excluded by index, not by value, so an exact duplicate counts as a
    neighbour at distance 0. The mean is floored at ``DISTANCE_RESOLUTION`` (max 1e9).
    """
    k = _check_int("k", k, 1)
    u = _unit_rows("emb", emb)
    return _typicality(u, k, _rows_per_block(len(u), block_rows))


def _typicality(u: np.ndarray, k: int, rows: int) -> np.ndarray:
    n = len(u)
    if n <= 1:
        return np.ones(n)
    k = min(k, n - 1)
    out = np.empty(n)
    for s in range(0, n, rows):
        d = _distances(u[s : s + rows], u)
        local = np.arange(len(d))
        d[local, s + local] = np.inf
        d.partition(k - 1, axis=1)  # in place; the k smallest now lead each row
        out[s : s + rows] = 1.0 / np.maximum(d[:, :k].mean(axis=1), DISTANCE_RESOLUTION)
        del d  # free this block before the next one is built: halves peak memory
    return out


def find_near_duplicates(
    pool, reference, threshold: float, *, block_rows: int | None = None
) -> np.ndarray:
    """For each pool item in order: what it duplicates, or -1 if it is kept.

    A value in [0, M) is ``reference[v]``; ``M + j`` is pool item ``j < i`` that was itself
    kept, so chains do not propagate (a duplicate of a duplicate may be kept). An item is a
    duplicate when its nearest reference-or-kept item is at distance < ``threshold``
    (strict, so 0 keeps everything). Nearest wins; ties go to the lowest code, i.e. reference
    before pool. ``reference`` may be None or [0, D].

    Order matters only among pool items, so the nearest reference is found for all items in
    blocks; then each block is compared with the items kept before it (one matrix) and
    resolved item by item against its own earlier kept items.
    """
    threshold = _check_real("threshold", threshold)
    p = _unit_rows("pool", pool)
    r = np.empty((0, p.shape[1])) if reference is None else _unit_rows(
        "reference", reference, like=("pool", p.shape[1]))
    n, m = len(p), len(r)
    rows = _rows_per_block(n, block_rows)
    ref_dist, ref_code = _nearest(p, r, _rows_per_block(m, block_rows))
    out = np.full(n, -1, dtype=np.int64)
    # Kept rows packed in order (indices and vectors), so each block reads a view, not a copy.
    kept_idx, kept_vecs, n_kept = np.empty(n, dtype=np.int64), np.empty_like(p), 0
    for s in range(0, n, rows):
        block = p[s : s + rows]
        # Candidate 1 per item: nearest of reference and of pool items kept in earlier blocks.
        best_d, best_c = ref_dist[s : s + rows].copy(), ref_code[s : s + rows].copy()
        if n_kept:
            d_kept, j = _nearest(block, kept_vecs[:n_kept], rows=len(block))
            closer = d_kept < best_d  # equal distance keeps the reference (lower code)
            best_d[closer], best_c[closer] = d_kept[closer], m + kept_idx[j[closer]]
        intra = _distances(block, block)
        kept_here = np.zeros(len(block), dtype=bool)
        for i in range(len(block)):
            # Candidate 2: earlier kept items of this block; their codes exceed all of
            # candidate 1's, so they win only when strictly closer.
            d_here = np.where(kept_here[:i], intra[i, :i], np.inf)
            if i and d_here.min() < best_d[i]:
                j = int(d_here.argmin())
                best_d[i], best_c[i] = d_here[j], m + s + j
            if best_d[i] < threshold:
                out[s + i] = best_c[i]
            else:
                kept_here[i] = True
        new = np.flatnonzero(kept_here)
        kept_idx[n_kept : n_kept + len(new)] = s + new
        kept_vecs[n_kept : n_kept + len(new)] = block[new]
        n_kept += len(new)
    return out


# ---- strategy and selection -------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """One greedy pick and why: ``score = typicality**ts * min_distance**ds``.

    ``typicality`` is normalised to max 1 over the pool; ``min_distance`` is the distance to
    the closest reference or earlier pick at the time of picking (1.0 when there was none).
    """

    index: int
    typicality: float
    min_distance: float
    score: float


def _scores(typ: np.ndarray, min_dist: np.ndarray, ts: float, ds: float) -> np.ndarray:
    """The strategy: product of objectives raised to their strengths (0**0 == 1: off is off)."""
    return np.power(typ, ts) * np.power(min_dist, ds)


def select_diverse_typical(
    pool,
    n: int,
    *,
    reference=None,
    typicality_strength: float = 1.0,
    diversity_strength: float = 1.0,
    k: int = 10,
    block_rows: int | None = None,
) -> list[Pick]:
    """Greedy, one at a time: the item maximising typicality**ts * min_distance**ds.

    ``min_distance`` is to the closest of ``reference`` (e.g. already labelled or already
    selected samples, so re-runs account for them) and the picks so far; with neither, it is
    1.0 for everyone, so the first pick is the most typical. Typicality is normalised to max
    1 so the strengths trade off on comparable scales. Picks ``min(n, N)`` distinct items,
    but stops early when every remaining score is 0: with diversity_strength > 0 that means
    everything left duplicates a reference or a pick, and labelling it teaches nothing.
    """
    n = _check_int("n", n, 0)
    k = _check_int("k", k, 1)
    ts = _check_real("typicality_strength", typicality_strength)
    ds = _check_real("diversity_strength", diversity_strength)
    p = _unit_rows("pool", pool)
    r = None if reference is None else _unit_rows(
        "reference", reference, like=("pool", p.shape[1]))
    if len(p) == 0 or n == 0:
        return []
    typ = _typicality(p, k, _rows_per_block(len(p), block_rows))
    typ = typ / typ.max()
    anchored = r is not None and len(r) > 0
    min_dist = (_nearest(p, r, _rows_per_block(len(r), block_rows))[0] if anchored
                else np.ones(len(p)))
    picks: list[Pick] = []
    available = np.ones(len(p), dtype=bool)
    for _ in range(min(n, len(p))):
        score = np.where(available, _scores(typ, min_dist, ts, ds), -np.inf)
        i = int(np.argmax(score))
        if score[i] <= 0.0:
            break
        picks.append(Pick(i, float(typ[i]), float(min_dist[i]), float(score[i])))
        available[i] = False
        d = _distances(p[i : i + 1], p)[0]
        min_dist = np.minimum(min_dist, d) if anchored else d
        anchored = True
    return picks


def random_selection(n_pool: int, n: int, seed: int) -> list[int]:
    """The baseline: ``min(n, n_pool)`` distinct indices, uniformly at random, seeded."""
    n_pool = _check_int("n_pool", n_pool, 0)
    n = _check_int("n", n, 0)
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_pool, size=min(n, n_pool), replace=False)]
