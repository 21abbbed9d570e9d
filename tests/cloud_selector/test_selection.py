"""Selection: known answers worked out by hand, plus naive reference implementations.

Geometry used below. Cosine distance only sees directions, so 2-D examples are angles:
d(angle) = 1 - cos(angle), which grows with the angle (1 deg -> 1.52e-4, 2 deg -> 6.09e-4).
The 3-D "clusters" fixture puts a 5x5 grid of tiny offsets around each axis; a grid point
(1, a*s, b*s) is at angle ~ s*|(a,b)|, so d ~ s^2 * |(a,b)|^2 / 2 inside a cluster, and ~1
between clusters (orthogonal axes).
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from cloud_selector.selection import (
    DISTANCE_RESOLUTION,
    Pick,
    cosine_distances,
    find_near_duplicates,
    random_selection,
    select_diverse_typical,
    typicality,
)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def d_of(deg: float) -> float:
    return 1.0 - math.cos(math.radians(deg))


# ---- fixtures and naive references ------------------------------------------------------

SPACING = {0: 0.01, 1: 0.02, 2: 0.03}  # axis -> grid spacing: cluster A (x) is the densest
OUTLIER = 75


def clusters() -> np.ndarray:
    """Rows 0-24: A around +x; 25-49: B around +y; 50-74: C around +z; 75: -(1,1,1).

    Row order inside a cluster: (a, b) for a in -2..2, b in -2..2, so its centre is row 12.
    The outlier is at distance 1 + 1/sqrt(3) ~ 1.577 from every cluster.
    """
    rows = []
    for axis, s in SPACING.items():
        for a in range(-2, 3):
            for b in range(-2, 3):
                v = np.zeros(3)
                v[axis], v[(axis + 1) % 3], v[(axis + 2) % 3] = 1.0, a * s, b * s
                rows.append(v)
    rows.append(-np.ones(3))
    return np.array(rows)


def cluster_of(i: int) -> str:
    return "ABC"[i // 25] if i < 75 else "outlier"


def naive_typicality(emb: np.ndarray, k: int) -> np.ndarray:
    """TypiClust's definition written as plainly as possible: a double loop."""
    n = len(emb)
    out = []
    for i in range(n):
        dists = []
        for j in range(n):
            if j != i:
                cos = emb[i] @ emb[j] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j]))
                dists.append(1.0 - cos)
        dists.sort()
        out.append(1.0 / np.mean(dists[: min(k, n - 1)]))
    return np.array(out)


def naive_near_duplicates(pool, reference, threshold):
    """The rule read literally: nearest of (reference + earlier kept), ties by lowest code."""
    m = len(reference)
    to_ref = cosine_distances(pool, reference) if m else np.zeros((len(pool), 0))
    to_pool = cosine_distances(pool, pool)
    out, kept = [], []
    for i in range(len(pool)):
        cands = [(to_ref[i, r], r) for r in range(m)] + [(to_pool[i, j], m + j) for j in kept]
        dist, code = min(cands, default=(math.inf, -1))
        if dist < threshold:
            out.append(code)
        else:
            out.append(-1)
            kept.append(i)
    return np.array(out)


def naive_select(pool, n, k, ts=1.0, ds=1.0):
    """Greedy with the full distance matrix in memory."""
    full = cosine_distances(pool, pool)
    typ = naive_typicality(pool, k)
    typ = typ / typ.max()
    min_dist, picked = np.ones(len(pool)), []
    for _ in range(min(n, len(pool))):
        score = typ**ts * min_dist**ds
        score[picked] = -1
        i = int(np.argmax(score))
        if score[i] <= 0:
            break
        picked.append(i)
        min_dist = full[i] if len(picked) == 1 else np.minimum(min_dist, full[i])
    return picked


# ---- cosine distance --------------------------------------------------------------------


def test_cosine_distances_known_values():
    # same direction 0, orthogonal 1, opposite 2, 60 degrees 0.5; scale does not matter.
    a = np.array([[1.0, 0.0], [0.0, 3.0]])
    b = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], unit(60)])
    d = cosine_distances(a, b)
    np.testing.assert_allclose(d, [[0, 1, 2, 0.5], [1, 0, 1, 1 - math.sqrt(3) / 2]], atol=1e-12)
    assert d.shape == (2, 4)
    assert cosine_distances(np.zeros((0, 2)), b).shape == (0, 4)


def test_identical_directions_are_exactly_zero():
    # Normalising leaves ~1e-16 of noise; it is snapped so exact duplicates score exactly 0.
    x = np.random.default_rng(0).normal(size=(1, 512))
    assert cosine_distances(x, 7.3 * x)[0, 0] == 0.0
    assert DISTANCE_RESOLUTION == 1e-9


# ---- near-duplicates --------------------------------------------------------------------


@pytest.mark.parametrize("block_rows", [1, 2, None])
def test_near_duplicate_chain_does_not_propagate(block_rows):
    # Angles 0,1,2,3,4 deg, threshold = d(1.5 deg). 1 is 1 deg from kept 0 -> dup of 0.
    # 2 is 1 deg from 1, but 1 was not kept; kept 0 is 2 deg away -> kept. 3 -> dup of 2.
    # 4: nearest kept is 2 at 2 deg -> kept. No reference, so M = 0 and pool j is coded j.
    pool = np.array([unit(a) for a in [0, 1, 2, 3, 4]])
    got = find_near_duplicates(pool, None, d_of(1.5), block_rows=block_rows)
    assert got.tolist() == [-1, 0, -1, 2, -1]
    assert got.dtype.kind == "i"


def test_near_duplicates_with_reference_codes():
    # Reference at 2.2 deg (M = 1, so pool j is coded 1 + j); threshold d(1.5 deg).
    # 0: ref is 2.2 deg away -> kept.  1: kept 0 at 1 deg beats ref at 1.2 -> code 1 + 0.
    # 2: ref at 0.2 deg -> 0.  3: ref at 0.8 deg (kept 0 at 3 deg) -> 0.  4: ref 1.8 -> kept.
    pool = np.array([unit(a) for a in [0, 1, 2, 3, 4]])
    got = find_near_duplicates(pool, np.array([unit(2.2)]), d_of(1.5))
    assert got.tolist() == [-1, 1, 0, 0, -1]


@pytest.mark.parametrize("block_rows", [1, 2, None])  # ties across and within blocks
def test_near_duplicate_ties_go_to_lowest_index_reference_first(block_rows):
    diag = [1.0, 1.0]  # 45 deg: exactly as far (1 - 1/sqrt2 ~ 0.29) from +x as from +y
    # Reference +x, kept pool +y (it is at distance 1 >= 0.5 from +x): tie -> reference.
    pool, ref = np.array([[0.0, 1.0], diag]), np.array([[1.0, 0.0]])
    assert find_near_duplicates(pool, ref, 0.5, block_rows=block_rows).tolist() == [-1, 0]
    # Two kept pool items +x, +y (reference -(1,1) is far from both): tie -> pool 0, code 1.
    pool, ref = np.array([[1.0, 0.0], [0.0, 1.0], diag]), np.array([[-1.0, -1.0]])
    assert find_near_duplicates(pool, ref, 0.5, block_rows=block_rows).tolist() == [-1, -1, 1]
    # Two identical references: the lower index.
    ref = np.array([[5.0, 5.0], [1.0, 0.0], [2.0, 2.0]])
    assert find_near_duplicates(np.array([diag]), ref, 0.1, block_rows=block_rows).tolist() == [0]


def test_near_duplicate_threshold_is_strict():
    pool, ref = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])  # distance exactly 1
    assert find_near_duplicates(pool, ref, 1.0).tolist() == [-1]
    assert find_near_duplicates(pool, ref, math.nextafter(1.0, 2.0)).tolist() == [0]
    # Threshold 0 keeps even exact duplicates (nothing is < 0).
    same = np.array([[3.0, 4.0], [6.0, 8.0]])
    assert find_near_duplicates(same, None, 0.0).tolist() == [-1, -1]
    assert find_near_duplicates(same, None, 1e-6).tolist() == [-1, 0]
    assert find_near_duplicates(np.zeros((0, 2)), None, 0.1).tolist() == []


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.2, 0.6])
def test_near_duplicates_blockwise_equals_naive(threshold):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(25, 8))
    pool = centres[rng.integers(0, 25, 150)] + 0.15 * rng.normal(size=(150, 8))
    pool[40] = pool[3]  # an exact duplicate inside the pool
    ref = centres[:6] + 0.15 * rng.normal(size=(6, 8))
    want = naive_near_duplicates(pool, ref, threshold)
    if threshold == 0.2:  # the interesting case: all three outcomes occur
        assert (want == -1).any() and (want < 6).any() and (want >= 6).any()
    for block_rows in [1, 2, 7, 64, None]:
        got = find_near_duplicates(pool, ref, threshold, block_rows=block_rows)
        np.testing.assert_array_equal(got, want)


# ---- typicality -------------------------------------------------------------------------


def test_typicality_known_values_on_clusters():
    x = clusters()
    t = typicality(x, 4)
    # A's centre has 4 neighbours at angle atan(0.01): d = 1 - 1/sqrt(1.0001) ~ 5.0e-5.
    assert t[12] == pytest.approx(1 / (1 - 1 / math.sqrt(1.0001)), rel=1e-9)
    # Spacing 2x and 3x -> distances 4x and 9x -> typicality 1/4 and 1/9 of A's.
    assert t[25 + 12] / t[12] == pytest.approx(1 / 4, rel=1e-3)
    assert t[50 + 12] / t[12] == pytest.approx(1 / 9, rel=1e-3)
    # The outlier's nearest are grid corners tilted towards it, 1.5-1.58 away (C's (-2,-2)
    # corner: cos = -(1 - 4*0.03) / (sqrt3 * sqrt(1.0072)) -> d ~ 1.506): typicality ~ 0.65,
    # the lowest of all.
    assert 1 / 1.58 < t[OUTLIER] < 1 / 1.5
    assert t[OUTLIER] == pytest.approx(1 / 1.52, rel=0.01)
    assert int(np.argmin(t)) == OUTLIER
    # A corner (2 neighbours at s, 1 at sqrt2 s, 1 at 2s): mean (1+1+2+4)/4 * s^2/2 = s^2,
    # twice the centre's s^2/2 -> half the typicality.
    assert t[24] / t[12] == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize("k", [1, 3, 10, 49, 500])
def test_typicality_matches_double_loop(k):
    emb = np.random.default_rng(k).normal(size=(50, 6))
    want = naive_typicality(emb, k)  # k >= N is clipped to N-1 on both sides
    np.testing.assert_allclose(typicality(emb, k), want, rtol=1e-9)
    for block_rows in [1, 7, 50]:
        np.testing.assert_allclose(typicality(emb, k, block_rows=block_rows), want, rtol=1e-9)


def test_typicality_edge_cases():
    assert typicality(np.zeros((0, 3)), 5).tolist() == []
    assert typicality(np.array([[1.0, 2.0]]), 5).tolist() == [1.0]
    # Three copies: mean distance 0 is floored at DISTANCE_RESOLUTION -> 1e9, not inf.
    t = typicality(np.ones((3, 4)), 2)
    np.testing.assert_allclose(t, 1 / DISTANCE_RESOLUTION)
    assert np.isfinite(t).all()
    # Self is excluded by index: a duplicate pair are each other's nearest (distance 0).
    t = typicality(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 1)
    assert t.tolist() == [1 / DISTANCE_RESOLUTION, 1 / DISTANCE_RESOLUTION, 1.0]


# ---- greedy selection -------------------------------------------------------------------


def test_first_pick_densest_then_other_clusters_outlier_late():
    picks = select_diverse_typical(clusters(), 76, k=4)
    order = [p.index for p in picks]
    assert sorted(order) == list(range(76))  # every item exactly once
    # 1st: nothing picked, min_distance 1 for all -> the most typical, which is in A.
    assert cluster_of(order[0]) == "A"
    assert picks[0].typicality == 1.0 and picks[0].min_distance == 1.0
    # 2nd: B's best scores ~ 1/4 * 1 (distance ~1 to A); C's ~ 1/9; any A point at most
    # 1 * 8 s_A^2 / 2 ~ 3e-4. So B, then C (C ~ 1/9 beats the rest of B at <= 1/4 * 1.6e-3).
    assert [cluster_of(i) for i in order[1:3]] == ["B", "C"]
    assert picks[1].score == pytest.approx(0.25, rel=0.05)
    # The outlier: score = (typ_out / typ_max) * min_distance ~ (s_A^2/2) * (1.58 / 1.58),
    # i.e. it beats only cluster points whose min_distance/kNN-mean ratio is below ~1.
    # A grid corner has kNN mean s^2 (see the typicality test), so its ratio stays above 1.1
    # until a pick lands within 1.48 s of it, i.e. in its own 2x2 corner block; each pick
    # covers at most one of the 12 corners, so at least 12 picks precede the outlier.
    assert order.index(OUTLIER) >= 12
    for p in picks:  # each Pick explains its own score
        assert p.score == pytest.approx(p.typicality * p.min_distance, rel=1e-12)


def test_without_typicality_outlier_is_picked_second():
    # typicality_strength 0 -> plain k-center greedy. 1st: all scores 1, tie -> row 0.
    # 2nd: farthest from row 0 (in A): the outlier at ~1.58; every cluster point is <= ~1.04.
    order = [p.index for p in select_diverse_typical(clusters(), 5, typicality_strength=0.0)]
    assert order[0] == 0 and order[1] == OUTLIER
    # 3rd and 4th: the far side of B and C (distance ~1 from A's row 0 and ~1.5 from outlier).
    assert {cluster_of(i) for i in order[2:4]} == {"B", "C"}


def test_symmetric_square_exact_tie_breaking():
    # Four orthogonal/opposite directions, k=2: each has two neighbours at exactly 1, so all
    # typicalities are exactly 1. 1st: tie -> 0 (+x). 2nd: -x at distance 2. 3rd: +y and -y
    # are both exactly 1 from {+x, -x} -> the lower index, 1. Then 3.
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    picks = select_diverse_typical(pool, 10, k=2)
    assert [p.index for p in picks] == [0, 2, 1, 3]
    assert [p.min_distance for p in picks] == [1.0, 2.0, 1.0, 1.0]


def test_reference_copy_is_never_picked():
    # Pool row 12 (A's centre, the most typical item) equals the reference: min_distance 0,
    # score 0 -> it is never picked; the run stops with it as the only item left.
    x = clusters()
    picks = select_diverse_typical(x, 76, reference=x[[12]], k=4)
    order = [p.index for p in picks]
    assert 12 not in order and len(order) == 75
    # The reference covers A, so the first pick is B's best (score ~ 1/4 * 1), not A's;
    # B's offsets along x are at most 2 * 0.02, so its distance to +x is 1 +- 0.04.
    assert cluster_of(order[0]) == "B"
    assert picks[0].min_distance == pytest.approx(1.0, abs=0.04)


def test_exact_duplicates_stop_early_unless_diversity_is_off():
    pool = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # Row 0 and 1 are the same direction (typicality 1e9, normalised 1); row 2 ~1e-9.
    # After picking 0, row 1 has min_distance 0 -> score 0; row 2 has 1e-9 * 1 > 0.
    picks = select_diverse_typical(pool, 3, k=1)
    assert [p.index for p in picks] == [0, 2]
    # diversity_strength 0: min_distance ** 0 == 1 even at 0, so duplicates are allowed.
    picks = select_diverse_typical(pool, 3, k=1, diversity_strength=0.0)
    assert [p.index for p in picks] == [0, 1, 2]


def test_rerun_with_selected_as_reference_continues_the_run():
    pool = np.random.default_rng(5).normal(size=(120, 10))
    full = [p.index for p in select_diverse_typical(pool, 8, k=5)]
    first = [p.index for p in select_diverse_typical(pool, 4, k=5)]
    rest = [p.index for p in select_diverse_typical(pool, 4, k=5, reference=pool[first])]
    assert first + rest == full


@pytest.mark.parametrize("ts,ds", [(1.0, 1.0), (0.0, 1.0), (2.0, 0.5), (1.0, 0.0)])
def test_select_matches_naive_and_block_size_does_not_matter(ts, ds):
    pool = np.random.default_rng(7).normal(size=(80, 5))
    want = naive_select(pool, 30, k=6, ts=ts, ds=ds)
    for block_rows in [1, 9, None]:
        picks = select_diverse_typical(
            pool, 30, k=6, typicality_strength=ts, diversity_strength=ds, block_rows=block_rows
        )
        assert [p.index for p in picks] == want


def test_select_sizes():
    pool = np.random.default_rng(2).normal(size=(6, 3))
    assert select_diverse_typical(pool, 0) == []
    assert select_diverse_typical(np.zeros((0, 3)), 5) == []
    assert len({p.index for p in select_diverse_typical(pool, 100)}) == 6
    assert select_diverse_typical(np.array([[0.0, 2.0]]), 3) == [Pick(0, 1.0, 1.0, 1.0)]


def test_no_full_matrix_is_allocated():
    # 5000 x 5000 float64 would be 200 MB; a block is 32 MiB and is worked on in place.
    pool = np.random.default_rng(3).normal(size=(5000, 16)).astype(np.float32)
    full_bytes = 5000 * 5000 * 8
    for run in (
        lambda: typicality(pool, 10),
        lambda: find_near_duplicates(pool, pool[:100], 0.05),
        lambda: select_diverse_typical(pool, 5, reference=pool[:10]),
    ):
        tracemalloc.start()
        try:
            run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < full_bytes / 2


# ---- random baseline --------------------------------------------------------------------


def test_random_selection():
    a = random_selection(100, 10, seed=0)
    assert a == random_selection(100, 10, seed=0)
    assert a != random_selection(100, 10, seed=1)
    assert len(set(a)) == 10 and all(0 <= i < 100 for i in a)
    assert sorted(random_selection(5, 50, seed=0)) == [0, 1, 2, 3, 4]
    assert random_selection(0, 3, seed=0) == []


# ---- validation -------------------------------------------------------------------------

GOOD = np.ones((4, 3))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cosine_distances(np.ones(3), GOOD), "a must be 2-D"),
        (lambda: cosine_distances(GOOD, np.ones((2, 4))), "b has dimension 4 but a has 3"),
        (lambda: find_near_duplicates(GOOD, np.ones((2, 4)), 0.1), "reference has dimension 4"),
        (lambda: select_diverse_typical(GOOD, 2, reference=np.ones((1, 2))), "reference has"),
        (lambda: find_near_duplicates(GOOD, None, float("nan")), "threshold"),
        (lambda: find_near_duplicates(GOOD, None, -0.1), "threshold"),
        (lambda: select_diverse_typical(GOOD, -1), "n must be >= 0"),
        (lambda: select_diverse_typical(GOOD, 2.0), "n must be an integer"),
        (lambda: select_diverse_typical(GOOD, 2, k=0), "k must be >= 1"),
        (lambda: typicality(GOOD, 0), "k must be >= 1"),
        (lambda: select_diverse_typical(GOOD, 2, typicality_strength=-1), "typicality_strength"),
        (lambda: select_diverse_typical(GOOD, 2, diversity_strength=math.inf), "diversity_str"),
        (lambda: select_diverse_typical(GOOD, 2, block_rows=0), "block_rows"),
        (lambda: select_diverse_typical(np.array([[1.0, np.nan]]), 1), "pool contains non-fin"),
        (lambda: find_near_duplicates(GOOD, [[1, 2, np.inf]], 0.1), "reference contains non"),
        (lambda: typicality([[1.0, 0.0], [0.0, 0.0]], 1), "emb row 1 is all zeros"),
        (lambda: random_selection(-1, 2, seed=0), "n_pool"),
        (lambda: random_selection(5, -2, seed=0), "n must be >= 0"),
    ],
)
def test_validation_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
