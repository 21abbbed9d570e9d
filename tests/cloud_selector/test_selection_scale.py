"""The engine's at-scale paths on small pools, forced on with ``ScaleLimits``: k-means cells,
the cell-by-cell lazy greedy (must make exactly the picks of the candidate-heap greedy and of
a brute-force one) and the approximate typicality k-NN (close to, and never above, the
exact TypiClust value)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.selection_scale import kcenter_greedy
from cloud_selector.selection_config import parse_selection_config
from cloud_selector.selection_engine import OBJECTIVE_FLOOR, ScaleLimits, SelectionPool, StopReason, select
from cloud_selector.selection_geometry import typicality_scores
from cloud_selector.selection_index import partition_cells

CELLS = ScaleLimits(cell_greedy_min_candidates=0)               # cells at any size, exact k-NN
APPROX = ScaleLimits(exact_knn_max_work=0, approx_knn_work=2e6, cell_greedy_min_candidates=0)


def clustered(n, dim, seed, clusters=8):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    sizes = rng.uniform(0.15, 0.5, clusters)
    lab = rng.integers(0, clusters, n)
    x = centres[lab] + sizes[lab, None] * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def pool_of(x, **kw):
    return SelectionPool(ids=[f"s{i}" for i in range(len(x))], embeddings=x, **kw)


def config(n, *strategies):
    return parse_selection_config({"n_samples": n, "strategies": [
        {"input": {"type": "EMBEDDINGS"} if s["type"] != "WEIGHTS" else {"type": "SCORES", "score": "entropy"},
         "strategy": s} for s in strategies]})


def brute_force(x, n, typ_k, chosen):
    """DIVERSITY x TYPICALITY greedy in float64, every candidate rescored every step."""
    x = x.astype(np.float64)
    d_all = np.sqrt(np.maximum(2 - 2 * x @ x.T, 0))
    typ = 1 / np.sort(d_all + np.diag(np.full(len(x), np.inf)), axis=1)[:, :typ_k].mean(axis=1)
    typ_obj = typ / typ[~chosen].max()
    nearest = d_all[:, chosen].min(axis=1) if chosen.any() else np.full(len(x), np.inf)
    taken = chosen.copy()
    picks = []
    for _ in range(n):
        div = np.where(np.isinf(nearest), 1.0, nearest / 2)
        score = np.log(np.maximum(div, OBJECTIVE_FLOOR)) + np.log(np.maximum(typ_obj, OBJECTIVE_FLOOR))
        score[taken] = -np.inf
        j = int(np.argmax(score))
        picks.append(j)
        taken[j] = True
        nearest = np.minimum(nearest, d_all[:, j])
    return picks


def same_scores(a, b):
    """Same contributions up to float32 rounding (the two loops take dot products differently)."""
    for p, q in zip(a.picks, b.picks):
        assert p.score == pytest.approx(q.score, rel=1e-5)
        assert [c.raw is None for c in p.contributions] == [c.raw is None for c in q.contributions]
        assert [c.objective for c in p.contributions] == pytest.approx([c.objective for c in q.contributions], rel=1e-5)


def test_partition_covers_every_row_once_in_compact_cells():
    x = clustered(3000, 16, seed=1)
    part = partition_cells(x, 100)
    assert sorted(part.order.tolist()) == list(range(3000))
    assert (part.cell_of[part.order] == np.repeat(np.arange(part.n_cells), np.diff(part.starts))).all()
    assert np.diff(part.starts).max() <= 200 and part.n_cells >= 15
    again = partition_cells(x, 100)
    assert (again.cell_of == part.cell_of).all() and np.array_equal(again.centroids, part.centroids)
    rows = np.arange(0, 3000, 3)
    sub = part.restricted(rows)
    assert sorted(sub.order.tolist()) == list(range(len(rows)))
    # Same grouping: two kept rows share a cell in the restriction iff they did before.
    same_before = part.cell_of[rows][:, None] == part.cell_of[rows][None, :]
    assert (same_before == (sub.cell_of[:, None] == sub.cell_of[None, :])).all()


def test_cell_greedy_matches_the_brute_force_greedy_with_a_datapool():
    x = clustered(1200, 12, seed=2)
    chosen = np.zeros(1200, bool)
    chosen[np.random.default_rng(3).choice(1200, 25, replace=False)] = True
    cfg = config(80, {"type": "DIVERSITY"}, {"type": "TYPICALITY", "num_nearest_neighbors": 7})
    cells = select(cfg, pool_of(x, already_selected=chosen), limits=CELLS)
    heap = select(cfg, pool_of(x, already_selected=chosen))
    assert cells.indices == heap.indices == brute_force(x, 80, 7, chosen)
    same_scores(cells, heap)


@pytest.mark.parametrize("dim, clusters", [(16, 8), (3, 40)])  # in 3-d the triangle test prunes most picks
def test_pure_diversity_through_cells_is_exact_k_center(dim, clusters):
    x = clustered(3000, dim, seed=4, clusters=clusters)
    assert select(config(150, {"type": "DIVERSITY"}), pool_of(x), limits=CELLS).indices == kcenter_greedy(x, 150)


@pytest.mark.parametrize("strategies", [
    ({"type": "DIVERSITY", "strength": 2, "stopping_condition_minimum_distance": 0.45},
     {"type": "TYPICALITY", "strength": 0.5}),
    ({"type": "DIVERSITY"}, {"type": "WEIGHTS", "strength": 1.5, "stopping_condition_max_sum": 40.0}),
])
def test_cell_greedy_stops_like_the_heap_greedy(strategies):
    x = clustered(1500, 10, seed=5)
    w = np.random.default_rng(6).uniform(0.1, 1.0, 1500)
    cfg = config(400, *strategies)
    cells = select(cfg, pool_of(x, scores={"entropy": w}), limits=CELLS)
    heap = select(cfg, pool_of(x, scores={"entropy": w}))
    assert cells.indices == heap.indices and cells.stop_reason == heap.stop_reason
    same_scores(cells, heap)
    assert cells.stop_reason in (StopReason.MINIMUM_DISTANCE, StopReason.MAX_SUM)
    assert len(cells.picks) < 400


def test_approximate_typicality_is_close_and_never_above_the_exact_one():
    x = clustered(4000, 24, seed=7)
    exact = typicality_scores(x, 10)
    approx = typicality_scores(x, 10, exact_max_work=0, approx_work=4000 * 24 * 300)  # ~300 of 4000 rows each
    rel = approx / exact - 1
    assert (rel <= 1e-4).all()                          # a missed neighbour only lowers it
    assert np.median(-rel) < 0.02 and (-rel).max() < 0.25
    assert np.corrcoef(np.argsort(np.argsort(approx)), np.argsort(np.argsort(exact)))[0, 1] > 0.98
    rows = np.arange(1, 4000, 9)
    part = partition_cells(x, 300)
    some = typicality_scores(x, 10, rows=rows, exact_max_work=0, approx_work=len(rows) * 24 * 300, partition=part)
    full = typicality_scores(x, 10, exact_max_work=0, approx_work=4000 * 24 * 300, partition=part)
    np.testing.assert_allclose(some, full[rows], rtol=1e-6)   # same cells, same search: same values


def test_select_at_scale_settings_is_deterministic_and_spread_out():
    x = clustered(3000, 32, seed=8)
    cfg = config(100, {"type": "DIVERSITY"}, {"type": "TYPICALITY"})
    first, second = select(cfg, pool_of(x), limits=APPROX), select(cfg, pool_of(x.copy()), limits=APPROX)
    assert first == second and len(first.picks) == 100 and len(set(first.indices)) == 100
    exact = select(cfg, pool_of(x))
    # Approximate typicality changes some picks, not how well they cover the pool.
    cover = lambda idx: float((1 - (x @ x[idx].T).max(axis=1)).mean())
    assert cover(first.indices) <= 1.05 * cover(exact.indices)
