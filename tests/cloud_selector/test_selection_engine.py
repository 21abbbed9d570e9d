"""The selection engine: hand-computed pick orders per strategy and in combination, a
brute-force TypiClust reference, a brute-force greedy reference, metrics, and B4's smoke run.

Geometry: embeddings are L2-normalised, so only directions count. A 2-D unit vector at angle
a; two of them at angles a, b are sqrt(2 - 2cos(a - b)) = 2 sin(|a - b| / 2) apart (the
chord), which grows with the angle: "points on a line" are angles here.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from benchmarks.b4_selection import kcenter_greedy
from benchmarks.b4_selection import main as b4_main
from benchmarks.b4_selection import run as b4_run
from cloud_selector.selection_config import SelectionConfigError, parse_selection_config
from cloud_selector.selection_engine import (
    OBJECTIVE_FLOOR,
    SelectionPool,
    StopReason,
    select,
    typicality_scores,
)
from cloud_selector.selection_index import partition_cells
from cloud_selector.selection_metrics import selection_metrics, set_metrics


def at(*degrees: float) -> np.ndarray:
    return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees], np.float32)


def chord(degrees: float) -> float:
    return 2 * math.sin(math.radians(abs(degrees)) / 2)


def pool_of(embeddings=None, n=None, **kw) -> SelectionPool:
    n = len(embeddings) if embeddings is not None else n
    return SelectionPool(ids=[f"s{i}" for i in range(n)], embeddings=embeddings, **kw)


def config(n, *entries, proportion=None):
    top = {"proportion_samples": proportion} if proportion is not None else {"n_samples": n}
    return parse_selection_config({**top, "strategies": [{"input": i, "strategy": s} for i, s in entries]})


EMB = {"type": "EMBEDDINGS"}
DIV = {"type": "DIVERSITY"}
TYP = {"type": "TYPICALITY"}


def score_input(name="entropy"):
    return {"type": "SCORES", "score": name}


# ---- DIVERSITY ---------------------------------------------------------------------------


def test_diversity_on_a_line_picks_the_extremes_first():
    # x on a line, seen from (1, x): angles atan(x). Nothing selected yet: all tie, index 0
    # (x=0) goes first; then the farthest angle (x=5, 78.7 deg), then the other end (x=-3).
    xs = [0, -3, -1, 1, 2, 5]
    emb = np.array([[1, x] for x in xs], np.float32)
    result = select(config(4, (EMB, DIV)), pool_of(emb))
    assert result.indices == [0, 5, 1, 3]
    ang = np.degrees(np.arctan(xs))
    first, second = result.picks[0].contributions[0], result.picks[1].contributions[0]
    assert first.raw is None and first.objective == 1.0
    assert second.raw == pytest.approx(chord(ang[5]), abs=1e-5)
    assert second.objective == pytest.approx(chord(ang[5]) / 2, abs=1e-5)
    # x=1 (45 deg) is 33.7 deg from its nearest pick, x=-1 only 26.6, x=2 only 15.3.
    assert result.picks[3].contributions[0].raw == pytest.approx(chord(ang[5] - ang[3]), abs=1e-5)
    assert result.stop_reason is StopReason.N_SAMPLES


def test_already_selected_steer_diversity_and_are_never_picked():
    xs = [0, -3, -1, 1, 2, 5]
    emb = np.array([[1, x] for x in xs], np.float32)
    chosen = np.array([True, False, False, False, False, True])
    result = select(config(10, (EMB, DIV)), pool_of(emb, already_selected=chosen))
    # Farthest from {x=0, x=5} is x=-3; then x=1 (as above); then x=-1, then x=2.
    assert result.indices == [1, 3, 2, 4]
    assert result.n_candidates == 4 and result.requested == 10
    assert result.stop_reason is StopReason.EXHAUSTED
    assert result.picks[0].contributions[0].raw == pytest.approx(chord(math.degrees(math.atan(3))), abs=1e-5)


def test_minimum_distance_stops_early_and_holds_between_all_picks():
    emb = at(0, 10, 25, 45, 90)
    diverse = {"type": "DIVERSITY", "stopping_condition_minimum_distance": chord(30)}
    result = select(config(5, (EMB, diverse)), pool_of(emb))
    # 0 (tie), 90, 45; then 25 is 20 deg from 45 and 10 is 10 deg from 0: both too close.
    assert result.indices == [0, 4, 3]
    assert result.stop_reason is StopReason.MINIMUM_DISTANCE
    picked = emb[result.indices]
    gaps = np.sqrt(np.maximum(0, 2 - 2 * picked @ picked.T))[np.triu_indices(3, 1)]
    assert gaps.min() >= chord(30) - 1e-6


def test_minimum_distance_applies_to_the_datapool_too():
    emb = at(0, 10, 25, 45, 90)
    diverse = {"type": "DIVERSITY", "stopping_condition_minimum_distance": chord(30)}
    result = select(config(5, (EMB, diverse)), pool_of(emb, already_selected=np.array([1, 0, 0, 0, 0], bool)))
    assert result.indices == [4, 3]  # 10 and 25 deg are within 30 deg of 0 or 45


def test_exact_duplicates_of_a_pick_rank_last():
    emb = at(0, 0, 40, 40, 90)
    result = select(config(5, (EMB, DIV)), pool_of(emb))
    assert result.indices[:3] == [0, 4, 2]
    dup = result.picks[3].contributions[0]
    assert dup.raw == 0.0 and dup.factor == pytest.approx(OBJECTIVE_FLOOR)


# ---- TYPICALITY --------------------------------------------------------------------------


def typiclust_reference(x: np.ndarray, k: int) -> np.ndarray:
    """TypiClust (Hacohen et al. 2022): 1 / mean L2 distance to the k nearest neighbours."""
    u = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    out = np.empty(len(u))
    for i in range(len(u)):
        d = np.linalg.norm(u - u[i], axis=1)
        d[i] = np.inf  # the sample itself is not its own neighbour
        out[i] = 1.0 / np.sort(d)[:k].mean()
    return out


def _unit32(x):
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_typicality_matches_the_typiclust_reference(k):
    x = np.random.default_rng(3).standard_normal((300, 16))
    np.testing.assert_allclose(typicality_scores(_unit32(x), k), typiclust_reference(x, k), rtol=2e-4)


def clustered(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    return centres[rng.integers(0, 8, n)] + 0.3 * rng.standard_normal((n, dim))


@pytest.mark.parametrize("dim", [24, 160])
def test_approximate_typicality_stays_close_to_the_reference(dim):
    x = clustered(1500, dim, seed=dim)
    # ~100 searched rows per query (of 1500; clusters hold ~190): a quarter or more of the
    # rows miss a true neighbour, so the search is really approximate here.
    cells = partition_cells(_unit32(x), 64)   # small cells (the default floor, 256, would hold whole clusters)
    approx = typicality_scores(_unit32(x), 10, exact_max_work=0, approx_work=1500 * dim * 100, partition=cells)
    ref = typiclust_reference(x, 10)
    rel = np.abs(approx / ref - 1)
    assert (rel > 1e-4).mean() > 0.1
    assert rel.max() < 0.15 and np.median(rel) < 0.01  # a missed neighbour only lowers it a bit
    assert (approx <= ref * (1 + 1e-4)).all()
    # With the whole pool in reach, the search is exact.
    np.testing.assert_allclose(typicality_scores(_unit32(x), 10, exact_max_work=0), ref, rtol=2e-4)


# Mean angle to the 2 nearest: 0 -> 1.25 deg, 1 -> 1.5, -1.5 -> 2, 3 -> 2.5, -4 -> 3.25,
# 60 -> 43.5, 90 -> 58.5 (no ties, so float32 rounding cannot reorder them).
CLUSTER_AND_OUTLIERS = (0, 1, -1.5, 3, -4, 60, 90)


@pytest.mark.parametrize("exact_max_work", [0, 1e12])
def test_typicality_of_some_rows_searches_all_rows(exact_max_work):
    u = _unit32(clustered(1200, 20, seed=8))
    rows = np.arange(0, 1200, 7)
    full = typicality_scores(u, 9, exact_max_work=exact_max_work)
    np.testing.assert_allclose(typicality_scores(u, 9, rows=rows, exact_max_work=exact_max_work), full[rows],
                               rtol=1e-6)


def test_typicality_prefers_a_dense_cluster_over_an_outlier():
    emb = at(*CLUSTER_AND_OUTLIERS)
    result = select(config(7, (EMB, {"type": "TYPICALITY", "num_nearest_neighbors": 2})), pool_of(emb))
    ref = typiclust_reference(emb, 2)
    assert result.indices == list(np.argsort(-ref, kind="stable")) == [0, 1, 2, 3, 4, 5, 6]
    top = result.picks[0].contributions[0]
    assert top.objective == pytest.approx(1.0) and top.raw == pytest.approx(ref[0], rel=1e-4)


def test_minimum_typicality_stops_early():
    emb = at(*CLUSTER_AND_OUTLIERS)
    typ = {"type": "TYPICALITY", "num_nearest_neighbors": 2, "stopping_condition_minimum_typicality": 0.55}
    result = select(config(7, (EMB, typ)), pool_of(emb))
    assert result.indices == [0, 1, 2]  # relative typicality ~1, 0.83, 0.62; then 0.5 and below
    assert result.stop_reason is StopReason.MINIMUM_TYPICALITY


# ---- WEIGHTS, strength, RANDOM -----------------------------------------------------------


def test_weights_pick_high_values_first_and_negative_strength_inverts():
    scores = {"entropy": np.array([0.2, 0.9, 0.5, 0.7])}
    pool = pool_of(n=4, scores=scores)
    assert select(config(4, (score_input(), {"type": "WEIGHTS"})), pool).indices == [1, 3, 2, 0]
    inverted = select(config(4, (score_input(), {"type": "WEIGHTS", "strength": -1})), pool)
    assert inverted.indices == [0, 2, 3, 1]
    assert inverted.picks[0].contributions[0].factor == pytest.approx((0.2 / 0.9) ** -1)


def test_strength_zero_switches_a_strategy_off():
    scores = {"entropy": np.array([0.2, 0.9, 0.5, 0.7])}
    result = select(config(4, (score_input(), {"type": "WEIGHTS", "strength": 0})), pool_of(n=4, scores=scores))
    assert result.indices == [0, 1, 2, 3]  # every score ties: lowest index first
    assert all(p.score == 1.0 for p in result.picks)


def test_weights_of_metadata_with_negative_values_use_min_max():
    pool = pool_of(n=4, metadata={"temperature": [-5, 10, None, 0]})
    result = select(config(4, ({"type": "METADATA", "key": "temperature"}, {"type": "WEIGHTS"})), pool)
    assert result.indices == [1, 3, 0, 2]  # a missing value counts as the lowest
    assert [c.objective for p in result.picks for c in p.contributions] == [1.0, pytest.approx(1 / 3), 0.0, 0.0]
    assert result.picks[3].contributions[0].raw is None


def test_weights_max_sum_stops_once_reached():
    scores = {"margin": np.array([0.6, 0.5, 0.4, 0.3])}
    weights = {"type": "WEIGHTS", "stopping_condition_max_sum": 1.0}
    result = select(config(4, (score_input("margin"), weights)), pool_of(n=4, scores=scores))
    assert result.indices == [0, 1] and result.stop_reason is StopReason.MAX_SUM


def test_random_input_is_a_seeded_uniform_draw():
    pool = pool_of(n=50)
    pick = lambda seed: select(config(10, ({"type": "RANDOM", "random_seed": seed}, {"type": "WEIGHTS"})), pool)
    draws = np.random.default_rng(7).random(50)
    assert pick(7).indices == list(np.argsort(-draws, kind="stable")[:10])
    assert pick(7) == pick(7) and pick(7).indices != pick(8).indices


# ---- THRESHOLD ---------------------------------------------------------------------------


@pytest.mark.parametrize("operation, passing", [
    ("BIGGER", [3]), ("BIGGER_EQUAL", [1, 2, 3]), ("SMALLER", [0]), ("SMALLER_EQUAL", [0, 1, 2])])
def test_threshold_operations(operation, passing):
    pool = pool_of(n=4, scores={"least_confidence": np.array([0.1, 0.5, 0.5, 0.9])})
    result = select(config(4, (score_input("least_confidence"),
                               {"type": "THRESHOLD", "threshold": 0.5, "operation": operation})), pool)
    assert result.indices == passing and result.n_after_thresholds == len(passing)
    assert result.picks[0].contributions == ()  # filters are not objectives


def test_threshold_filters_before_the_other_strategies():
    pool = pool_of(n=5, scores={"entropy": np.array([0.9, 0.8, 0.7, 0.6, 0.5])},
                   metadata={"device_id": [1, 2, None, 2, 2]})
    result = select(config(5, ({"type": "METADATA", "key": "device_id"},
                               {"type": "THRESHOLD", "threshold": 2, "operation": "BIGGER_EQUAL"}),
                           (score_input(), {"type": "WEIGHTS"})), pool)
    assert result.indices == [1, 3, 4]  # device 1 and the missing device never pass


def test_category_count_counts_the_predicted_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    pool = pool_of(n=4, predictions=probs, class_names=["cat", "dog", "bird"])
    result = select(config(4, ({"type": "PREDICTIONS", "name": "CATEGORY_COUNT", "categories": ["cat", "bird"]},
                               {"type": "THRESHOLD", "threshold": 1, "operation": "BIGGER_EQUAL"})), pool)
    assert result.indices == [0, 2, 3]


# ---- BALANCE -----------------------------------------------------------------------------


def weather_pool(counts: dict[str, int], **kw) -> SelectionPool:
    values = [name for name, c in counts.items() for _ in range(c)]
    return pool_of(n=len(values), metadata={"weather": values}, **kw)


WEATHER = {"type": "METADATA", "key": "weather"}


def histogram(pool, result, key="weather"):
    values = [pool.metadata[key][i] for i in result.indices]
    return {v: values.count(v) for v in set(values)}


def test_balance_reaches_target_fractions():
    pool = weather_pool({"sunny": 30, "cloudy": 30, "rainy": 30})
    target = {"type": "BALANCE", "target": {"sunny": 0.5, "cloudy": 0.3, "rainy": 0.2}}
    result = select(config(10, (WEATHER, target)), pool)
    assert histogram(pool, result) == {"sunny": 5, "cloudy": 3, "rainy": 2}
    # Worked by hand: deficit round-robin from an empty selection.
    assert [pool.metadata["weather"][i] for i in result.indices] == [
        "sunny", "cloudy", "rainy", "sunny", "cloudy", "sunny", "rainy", "sunny", "cloudy", "sunny"]
    first = result.picks[0].contributions[0]
    assert first.raw == pytest.approx(0.5) and first.objective == pytest.approx(0.75)


def test_balance_uniform_and_input_distributions():
    pool = weather_pool({"sunny": 60, "cloudy": 30, "rainy": 10})
    uniform = select(config(9, (WEATHER, {"type": "BALANCE", "distribution": "UNIFORM"})), pool)
    assert histogram(pool, uniform) == {"sunny": 3, "cloudy": 3, "rainy": 3}
    representative = select(config(10, (WEATHER, {"type": "BALANCE", "distribution": "INPUT"})), pool)
    assert histogram(pool, representative) == {"sunny": 6, "cloudy": 3, "rainy": 1}


def test_balance_remainder_goes_to_the_other_classes():
    pool = weather_pool({"sunny": 20, "cloudy": 20, "rainy": 20})
    result = select(config(10, (WEATHER, {"type": "BALANCE", "target": {"sunny": 0.5}})), pool)
    counts = histogram(pool, result)
    assert counts["sunny"] == 5 and counts.get("cloudy", 0) + counts.get("rainy", 0) == 5


def test_balance_counts_the_datapool():
    chosen = np.zeros(60, bool)
    chosen[:4] = True  # four sunny samples are already labelled
    pool = weather_pool({"sunny": 20, "cloudy": 20, "rainy": 20}, already_selected=chosen)
    result = select(config(4, (WEATHER, {"type": "BALANCE", "target": {"sunny": 0.5, "cloudy": 0.5}})), pool)
    assert histogram(pool, result) == {"cloudy": 4}


def test_balance_on_predicted_class_distributions():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), labels] = 0.9
    pool = pool_of(n=60, predictions=probs + rng.uniform(0, 1e-3, probs.shape), class_names=["a", "b", "c"])
    result = select(config(10, ({"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
                                {"type": "BALANCE", "target": {"a": 0.6, "b": 0.2, "c": 0.2}})), pool)
    assert np.bincount(labels[result.indices], minlength=3).tolist() == [6, 2, 2]


# ---- SIMILARITY --------------------------------------------------------------------------


def test_similarity_picks_nearest_to_the_tagged_queries():
    emb = at(90, 0, 80, 30, 100, 60)
    query = np.array([True, False, False, False, False, False])
    pool = pool_of(emb, tags={"hard-cases": query}, already_selected=query)
    result = select(config(5, ({"type": "EMBEDDINGS", "tag_name": "hard-cases"}, {"type": "SIMILARITY"})), pool)
    assert result.indices == [2, 4, 5, 3, 1]  # 10, 10 (tie: lower index), 30, 60, 90 deg away
    c = result.picks[0].contributions[0]
    assert c.raw == pytest.approx(chord(10), abs=1e-5) and c.objective == pytest.approx(1 - chord(10) / 2, abs=1e-5)


# ---- combinations ------------------------------------------------------------------------


def test_diversity_times_weights_by_hand():
    # A (0 deg) is labelled. B (90 deg, w=0.5): diversity sqrt(2)/2 = 0.707 -> 0.354.
    # C (30 deg, w=1.0): diversity chord(30)/2 = 0.259 -> 0.259. B first; with the weights
    # squared B scores 0.177 < 0.259, so C goes first.
    emb = at(0, 90, 30)
    pool = pool_of(emb, scores={"entropy": np.array([1.0, 0.5, 1.0])}, already_selected=np.array([1, 0, 0], bool))
    plain = select(config(1, (EMB, DIV), (score_input(), {"type": "WEIGHTS"})), pool)
    squared = select(config(1, (EMB, DIV), (score_input(), {"type": "WEIGHTS", "strength": 2})), pool)
    assert plain.indices == [1] and squared.indices == [2]
    pick = plain.picks[0]
    assert [c.strategy for c in pick.contributions] == ["DIVERSITY", "WEIGHTS"]
    assert [c.input for c in pick.contributions] == ["EMBEDDINGS", "SCORES:entropy"]
    assert pick.score == pytest.approx(math.sqrt(2) / 2 * 0.5, abs=1e-6)
    assert pick.score == pytest.approx(math.prod(c.factor for c in pick.contributions))


def test_pure_diversity_is_exact_k_center_greedy():
    # Both start at row 0 (every objective ties before anything is selected) and then take the
    # row farthest from its nearest pick; Euclidean and cosine distance order rows alike.
    x = clustered(2000, 16, seed=4).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert select(config(60, (EMB, DIV)), pool_of(x)).indices == kcenter_greedy(unit, 60)


def test_negative_diversity_strength_prefers_near_duplicates():
    emb = at(0, 5, 90, 45)
    chosen = np.array([True, False, False, False])
    result = select(config(3, (EMB, {"type": "DIVERSITY", "strength": -1})), pool_of(emb, already_selected=chosen))
    assert result.indices == [1, 3, 2]  # 5 deg from a pick, then 40, then 45 (from 45)


def _strategy_state(unit, chosen):
    d = np.full(len(unit), np.inf)
    if chosen.any():
        d = np.sqrt(np.maximum(2 - 2 * unit @ unit[chosen].T, 0)).min(axis=1)
    return d


def greedy_reference(unit, static_objectives, static_strengths, div_strength, chosen, n,
                     balance=None):
    """Brute-force greedy: every step rescores every candidate in float64 from scratch."""
    d_anchor = _strategy_state(unit, chosen)
    picks = []
    counts = None if balance is None else balance["vectors"][chosen].sum(axis=0)
    for _ in range(n):
        picked = np.zeros(len(unit), bool)
        picked[picks] = True
        d = d_anchor.copy()
        if picks:
            d = np.minimum(d, np.sqrt(np.maximum(2 - 2 * unit @ unit[picks].T, 0)).min(axis=1))
        div = np.where(np.isinf(d), 1.0, d / 2)
        score = np.maximum(div, OBJECTIVE_FLOOR) ** div_strength
        for obj, s in zip(static_objectives, static_strengths):
            score = score * np.maximum(obj, OBJECTIVE_FLOOR) ** s
        if balance is not None:
            total = counts.sum()
            current = counts / total if total else 0 * counts
            gain = balance["vectors"] @ (balance["target"] - current)
            score = score * np.maximum((1 + gain) / 2, OBJECTIVE_FLOOR) ** balance["strength"]
        score[chosen | picked] = -np.inf
        j = int(np.argmax(score))
        picks.append(j)
        if balance is not None:
            counts = counts + balance["vectors"][j]
    return picks


def test_diversity_typicality_weights_match_a_brute_force_greedy():
    rng = np.random.default_rng(11)
    x = clustered(400, 12, seed=5)
    entropy = rng.uniform(0.05, 1.0, 400)
    chosen = np.zeros(400, bool)
    chosen[rng.choice(400, 30, replace=False)] = True
    pool = pool_of(x.astype(np.float32), scores={"entropy": entropy}, already_selected=chosen)
    cfg = config(60, (EMB, {"type": "DIVERSITY", "strength": 1.5}),
                 (EMB, {"type": "TYPICALITY", "num_nearest_neighbors": 7, "strength": 0.5}),
                 (score_input(), {"type": "WEIGHTS", "strength": 2}))
    result = select(cfg, pool)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    typ = typiclust_reference(x, 7)
    ref = greedy_reference(unit, [typ / typ.max(), entropy / entropy[~chosen].max()], [0.5, 2], 1.5, chosen, 60)
    assert result.indices == ref


def test_balance_with_diversity_matches_a_brute_force_greedy():
    rng = np.random.default_rng(12)
    x = clustered(300, 8, seed=6)
    probs = rng.dirichlet(np.full(4, 0.5), 300)
    chosen = np.zeros(300, bool)
    chosen[rng.choice(300, 20, replace=False)] = True
    pool = pool_of(x.astype(np.float32), predictions=probs, class_names=list("abcd"), already_selected=chosen)
    cfg = config(40, (EMB, DIV), ({"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"},
                                  {"type": "BALANCE", "target": {"a": 0.4, "b": 0.4}, "strength": 3}))
    result = select(cfg, pool)
    vectors = np.column_stack([probs[:, 0], probs[:, 1], probs[:, 2] + probs[:, 3]])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = greedy_reference(unit, [], [], 1.0, chosen, 40,
                           balance={"vectors": vectors, "target": np.array([0.4, 0.4, 0.2]), "strength": 3})
    assert result.indices == ref


def test_same_input_same_output():
    rng = np.random.default_rng(1)
    x = clustered(500, 16, seed=2).astype(np.float32)
    pool = lambda: pool_of(x.copy(), scores={"margin": rng.uniform(size=500) * 0 + np.linspace(0, 1, 500)},
                           metadata={"device_id": [i % 7 for i in range(500)]},
                           tags={"q": np.arange(500) < 5}, already_selected=np.arange(500) < 20)
    cfg = config(50, (EMB, DIV), (EMB, TYP), (score_input("margin"), {"type": "WEIGHTS"}),
                 ({"type": "EMBEDDINGS", "tag_name": "q"}, {"type": "SIMILARITY", "strength": 0.3}),
                 ({"type": "METADATA", "key": "device_id"}, {"type": "BALANCE", "distribution": "UNIFORM"}),
                 ({"type": "RANDOM", "random_seed": 4}, {"type": "THRESHOLD", "threshold": 0.1, "operation": "BIGGER"}))
    first, second = select(cfg, pool()), select(cfg, pool())
    assert first == second and len(first.picks) == 50
    assert len(set(first.indices)) == 50 and not set(first.indices) & set(range(20))


def test_proportion_samples_counts_candidates_only():
    emb = at(*range(0, 150, 10))
    chosen = np.arange(15) < 5
    result = select(config(None, (EMB, DIV), proportion=0.25), pool_of(emb, already_selected=chosen))
    assert result.n_candidates == 10 and result.requested == 3 and len(result.picks) == 3


def test_a_huge_request_takes_what_there_is():
    result = select(config(10**12, (EMB, DIV), (EMB, TYP)), pool_of(at(0, 30, 60)))
    assert sorted(result.indices) == [0, 1, 2] and result.stop_reason is StopReason.EXHAUSTED


def test_nothing_to_pick_from():
    everything = np.ones(3, bool)
    result = select(config(2, (EMB, DIV), (EMB, TYP)), pool_of(at(0, 30, 60), already_selected=everything))
    assert result.picks == () and result.n_candidates == 0 and result.stop_reason is StopReason.EXHAUSTED


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("entry, path", [
    ((score_input("novelty"), {"type": "WEIGHTS"}), "strategies[0].input.score"),
    (({"type": "METADATA", "key": "lightly.sharpness"}, {"type": "WEIGHTS"}), "strategies[0].input.key"),
    (({"type": "METADATA", "key": "source_name"}, {"type": "WEIGHTS"}), "strategies[0].input.key"),
    (({"type": "METADATA", "key": "capture_time_ms"}, {"type": "BALANCE", "distribution": "UNIFORM"}),
     "strategies[0].input.key"),
    (({"type": "METADATA", "key": "source_name"}, {"type": "BALANCE", "target": {"cam9": 0.5}}),
     "strategies[0].strategy.target.cam9"),
    (({"type": "EMBEDDINGS", "tag_name": "nope"}, {"type": "SIMILARITY"}), "strategies[0].input.tag_name"),
    (({"type": "EMBEDDINGS", "tag_name": "empty"}, {"type": "SIMILARITY"}), "strategies[0].input.tag_name"),
    (({"type": "PREDICTIONS", "name": "CATEGORY_COUNT", "categories": ["cow"]}, {"type": "WEIGHTS"}),
     "strategies[0].input.categories"),
    (({"type": "PREDICTIONS", "name": "CLASS_DISTRIBUTION"}, {"type": "BALANCE", "target": {"cow": 1}}),
     "strategies[0].strategy.target.cow"),
])
def test_config_that_does_not_fit_the_pool(entry, path):
    pool = pool_of(at(0, 10, 20), scores={"entropy": np.zeros(3)}, predictions=np.eye(3), class_names=["a", "b", "c"],
                   metadata={"source_name": ["cam1", "cam2", "cam1"], "capture_time_ms": [1.5, 2.5, 3.5]},
                   tags={"empty": np.zeros(3, bool)})
    with pytest.raises(SelectionConfigError) as err:
        select(config(2, entry), pool)
    assert err.value.path == path, str(err.value)


def test_embedding_strategies_need_embeddings():
    with pytest.raises(SelectionConfigError, match=r"strategies\[0\]\.input: the pool has no embeddings"):
        select(config(1, (EMB, DIV)), pool_of(n=3))


@pytest.mark.parametrize("kwargs, message", [
    ({"ids": ["a", "a"]}, "unique"),
    ({"ids": ["a", "b"], "embeddings": np.ones((3, 2))}, "embeddings"),
    ({"ids": ["a", "b"], "embeddings": np.array([[1, np.nan], [1, 0]])}, "non-finite"),
    ({"ids": ["a", "b"], "scores": {"entropy": [0.1]}}, "scores"),
    ({"ids": ["a", "b"], "already_selected": [1, 0]}, "already_selected"),
    ({"ids": ["a", "b"], "metadata": {"k": [1]}}, "metadata"),
    ({"ids": ["a", "b"], "metadata": {"k": [1, [2]]}}, "metadata"),
    ({"ids": ["a", "b"], "predictions": np.eye(2), "class_names": ["x"]}, "class_names"),
    ({"ids": ["a", "b"], "tags": {"t": [1, 0]}}, "tags"),
])
def test_malformed_pools_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectionPool(**kwargs)


def test_zero_embedding_is_rejected_when_used():
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        select(config(1, (EMB, DIV)), pool_of(np.array([[1, 0], [0, 0]], np.float32)))


# ---- metrics -----------------------------------------------------------------------------


def test_set_metrics_by_hand():
    emb = at(0, 90, 180, 270)
    m = set_metrics(emb, [0, 2], labels=np.array([0, 1, 0, 1]))
    assert m.n == 2 and m.diversity == pytest.approx(2.0)     # the two picks are opposite
    assert m.coverage_mean == pytest.approx(0.5, abs=1e-6)    # 0, 1, 0, 1 (cosine distance)
    assert m.coverage_max == pytest.approx(1.0, abs=1e-6)
    assert m.class_balance == 0.0                              # both picks are class 0
    assert set_metrics(emb, [0, 1], labels=np.array([0, 1, 0, 1])).class_balance == pytest.approx(1.0)
    assert set_metrics(emb, [0]).diversity == 0.0 and set_metrics(emb, [0]).class_balance is None


def test_selection_metrics_compare_with_a_seeded_random_pick():
    x = clustered(600, 8, seed=9).astype(np.float32)
    picked = kcenter_greedy(x / np.linalg.norm(x, axis=1, keepdims=True), 30)
    a = selection_metrics(x, picked, rng=5)
    assert a == selection_metrics(x, picked, rng=np.random.default_rng(5))
    assert a.random.n == 30 and a.coverage_max_ratio > 1 and a.diversity_ratio > 1


# ---- B4 smoke ----------------------------------------------------------------------------


def test_b4_benchmark_smoke(capsys):
    t0 = time.perf_counter()
    r = b4_run(n=2000, select_n=50, dim=32)
    assert time.perf_counter() - t0 < 3.0
    assert len(json.dumps(r.__dict__, default=lambda o: o.__dict__)) > 0
    assert r.engine.n == r.kcenter.n == r.random.n == 50
    assert r.coverage_mean_vs_random > 1.0 and r.engine_s > 0 and r.kcenter_s > 0
    assert b4_main(["--n", "500", "--select", "10", "--dim", "8"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert json.loads(line)["benchmark"] == "B4"
