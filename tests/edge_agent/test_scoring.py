"""Scores: known answers worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_agent.scoring import (
    UNCERTAINTY_MEASURES,
    FrameScores,
    NoveltyBank,
    entropy,
    least_confidence,
    margin,
    score_frame,
    softmax,
)

# --- least confidence = 1 - p_max -------------------------------------------------------------


def test_least_confidence_known_answers():
    # 1 - 0.7 = 0.3
    assert least_confidence(np.array([0.7, 0.2, 0.1])) == pytest.approx(0.3)
    # uniform over 4: 1 - 0.25 = 0.75
    assert least_confidence(np.full(4, 0.25)) == pytest.approx(0.75)
    # one-hot: 1 - 1 = 0
    assert least_confidence(np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    # order does not matter: p_max is still 0.7
    assert least_confidence(np.array([0.1, 0.2, 0.7])) == pytest.approx(0.3)


# --- margin = 1 - (p1 - p2) ------------------------------------------------------------------


def test_margin_known_answers():
    # p1 = 0.7, p2 = 0.2: 1 - (0.7 - 0.2) = 0.5
    assert margin(np.array([0.7, 0.2, 0.1])) == pytest.approx(0.5)
    # unsorted input, same two largest: still 0.5
    assert margin(np.array([0.1, 0.7, 0.2])) == pytest.approx(0.5)
    # a tie between the two largest: 1 - (0.5 - 0.5) = 1
    assert margin(np.array([0.5, 0.5])) == pytest.approx(1.0)
    # one-hot: 1 - (1 - 0) = 0
    assert margin(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.0)
    # p1 = 0.6, p2 = 0.3: 1 - 0.3 = 0.7
    assert margin(np.array([0.3, 0.1, 0.6])) == pytest.approx(0.7)


def test_margin_single_class_is_zero():
    assert margin(np.array([1.0])) == pytest.approx(0.0)
    assert margin(np.ones((3, 1))).shape == (3,)


# --- entropy = -sum p ln p / ln C ------------------------------------------------------------


def test_entropy_uniform_is_one():
    for c in (2, 3, 10):
        # -C * (1/C) ln(1/C) / ln C = ln C / ln C = 1
        assert entropy(np.full(c, 1.0 / c)) == pytest.approx(1.0)


def test_entropy_one_hot_is_zero():
    # -(1 ln 1 + 0 ln 0 + 0 ln 0) = 0 (0 ln 0 := 0)
    assert entropy(np.array([0.0, 1.0, 0.0])) == pytest.approx(0.0, abs=1e-9)


def test_entropy_two_classes_half_half_is_one():
    # -(0.5 ln 0.5 + 0.5 ln 0.5) / ln 2 = ln 2 / ln 2 = 1
    assert entropy(np.array([0.5, 0.5])) == pytest.approx(1.0)


def test_entropy_three_classes_by_hand():
    # p = [0.5, 0.25, 0.25]
    # H = -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 0.5 ln 2 + 0.5 * 2 ln 2 = 1.5 ln 2 = 1.0397208
    # normalised: 1.5 ln 2 / ln 3 = 1.0397208 / 1.0986123 = 0.9463946
    expected = 1.5 * math.log(2) / math.log(3)
    assert expected == pytest.approx(0.9463946, abs=1e-7)
    assert entropy(np.array([0.5, 0.25, 0.25])) == pytest.approx(expected)


def test_entropy_with_zero_probabilities_by_hand():
    # p = [0.5, 0.5, 0, 0]: H = ln 2 (the zeros add nothing), normalised by ln 4 = 2 ln 2 -> 0.5
    assert entropy(np.array([0.5, 0.5, 0.0, 0.0])) == pytest.approx(0.5)


def test_entropy_single_class_is_zero():
    assert entropy(np.array([1.0])) == pytest.approx(0.0)


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [least_confidence, margin, entropy])
def test_batch_and_single_shapes(fn):
    batch = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    out = fn(batch)
    assert out.shape == (3,)
    single = fn(batch[0])
    assert np.ndim(single) == 0
    # row by row, a batch gives what single frames give
    for i in range(3):
        assert out[i] == pytest.approx(float(fn(batch[i])))


def test_batch_known_answers():
    batch = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    # [1 - 0.7, 1 - 0.5]
    np.testing.assert_allclose(least_confidence(batch), [0.3, 0.5])
    # [1 - (0.7 - 0.2), 1 - (0.5 - 0.5)]
    np.testing.assert_allclose(margin(batch), [0.5, 1.0])
    # row 2: ln 2 / ln 3 = 0.6309298
    np.testing.assert_allclose(entropy(batch)[1], math.log(2) / math.log(3))


def test_scores_accept_python_lists():
    assert float(least_confidence([0.7, 0.2, 0.1])) == pytest.approx(0.3)


# --- softmax ---------------------------------------------------------------------------------


def test_softmax_known_answer():
    # e^0 : e^(ln 3) = 1 : 3 -> [0.25, 0.75]
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3)])), [0.25, 0.75])


def test_softmax_stable_on_large_logits():
    # exp(1000) overflows float64; subtracting the max first must keep it finite
    p = softmax(np.array([1000.0, 1000.0]))
    np.testing.assert_allclose(p, [0.5, 0.5])
    p = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [1.0, 0.0, 0.0], atol=1e-12)
    # shift invariance: softmax(x + 1e4) == softmax(x)
    x = np.array([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0]])
    np.testing.assert_allclose(softmax(x + 1e4), softmax(x))
    np.testing.assert_allclose(softmax(x).sum(axis=-1), [1.0, 1.0])


def test_softmax_then_entropy_on_large_equal_logits_is_one():
    assert entropy(softmax(np.array([5e4, 5e4, 5e4]))) == pytest.approx(1.0)


# --- NoveltyBank -----------------------------------------------------------------------------


def test_novelty_orthogonal_same_opposite():
    bank = NoveltyBank(np.array([[1.0, 0.0]]))
    # cos 90 = 0 -> 1 - 0 = 1
    assert bank.novelty(np.array([0.0, 1.0])) == pytest.approx(1.0)
    # same direction (length does not matter): cos 0 = 1 -> 0
    assert bank.novelty(np.array([3.0, 0.0])) == pytest.approx(0.0, abs=1e-6)
    # opposite: cos 180 = -1 -> 1 - (-1) = 2
    assert bank.novelty(np.array([-2.0, 0.0])) == pytest.approx(2.0)


def test_novelty_sixty_degrees_to_nearest():
    # bank: 0 deg and 180 deg. query at 60 deg: cos 60 = 0.5 -> distance 0.5 to the 0-deg entry,
    # cos 120 = -0.5 -> distance 1.5 to the 180-deg entry; the nearest wins: 0.5
    bank = NoveltyBank(np.array([[1.0, 0.0], [-4.0, 0.0]]))
    query = np.array([math.cos(math.radians(60)), math.sin(math.radians(60))])
    assert bank.novelty(query) == pytest.approx(0.5, abs=1e-6)
    # scaling the query changes nothing
    assert bank.novelty(10 * query) == pytest.approx(0.5, abs=1e-6)


def test_novelty_batch_shape_and_values():
    bank = NoveltyBank(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    queries = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, -1.0, 0.0]])
    out = bank.novelty(queries)
    assert out.shape == (3,)
    # orthogonal to both -> 1; same as the 2nd -> 0; opposite to the 2nd, orthogonal to the 1st -> 1
    np.testing.assert_allclose(out, [1.0, 0.0, 1.0], atol=1e-6)
    assert np.ndim(bank.novelty(queries[0])) == 0


def test_empty_bank_is_maximally_novel():
    bank = NoveltyBank(np.zeros((0, 4), np.float32))
    assert len(bank) == 0
    assert bank.novelty(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(1.0)
    out = bank.novelty(np.ones((5, 4)))
    assert out.shape == (5,)
    np.testing.assert_allclose(out, 1.0)


def test_bank_len_and_dim():
    bank = NoveltyBank(np.ones((3, 7)))
    assert len(bank) == 3
    assert bank.dim == 7


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_bank_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="2-D"):
        NoveltyBank(np.zeros(shape))


# --- score_frame / FrameScores ---------------------------------------------------------------


def test_score_frame_known_answers():
    bank = NoveltyBank(np.array([[1.0, 0.0]]))
    s = score_frame(np.array([0.5, 0.25, 0.25]), np.array([0.0, 1.0]), bank)
    assert isinstance(s, FrameScores)
    assert s.least_confidence == pytest.approx(0.5)  # 1 - 0.5
    assert s.margin == pytest.approx(0.75)  # p1 = 0.5, p2 = 0.25: 1 - (0.5 - 0.25) = 0.75
    assert s.entropy == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert s.novelty == pytest.approx(1.0)  # orthogonal
    for name in ("least_confidence", "margin", "entropy", "novelty"):
        assert type(getattr(s, name)) is float


def test_frame_scores_uncertainty_selects_measure():
    s = FrameScores(least_confidence=0.1, margin=0.2, entropy=0.3, novelty=0.4)
    assert [s.uncertainty(m) for m in UNCERTAINTY_MEASURES] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("measure", ["novelty", "bogus", "", "Entropy"])
def test_frame_scores_unknown_measure_raises(measure):
    s = FrameScores(least_confidence=0.1, margin=0.2, entropy=0.3, novelty=0.4)
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        s.uncertainty(measure)


# --- the per-frame fast paths give what the plain definitions give --------------------------


def _sorted_kth_distance(bank: np.ndarray, query: np.ndarray, k: int) -> float:
    """Reference in float64: sort every cosine distance, take the k-th smallest."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    return float(np.sort(1.0 - b.astype(np.float64) @ q.astype(np.float64))[min(k, len(b)) - 1])


@pytest.mark.parametrize("k", [1, 3, 50])
def test_novelty_distance_matches_a_sorted_reference(k):
    rng = np.random.default_rng(k)
    bank = rng.normal(size=(40, 16)).astype(np.float32)
    nb = NoveltyBank(bank, k=k)
    assert (len(nb), nb.dim) == (40, 16)
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    queries[0] = bank[7] * 3.0  # a bank member: nearest distance 0
    batch = nb.distance(queries)
    for i, q in enumerate(queries):
        single = float(nb.distance(q))
        assert single == pytest.approx(_sorted_kth_distance(bank, q, k), abs=1e-6)
        assert single == pytest.approx(float(batch[i]), abs=1e-6)
    if k == 1:
        assert float(nb.distance(queries[0])) == pytest.approx(0.0, abs=1e-6)


def test_novelty_skips_a_nan_bank_row_like_the_partition_did():
    # A NaN similarity is skipped (the partition sorts it last); the k = 1 max must not return NaN.
    bank = np.array([[1.0, 0.0], [np.nan, np.nan], [0.0, 1.0]], np.float32)
    query = np.array([math.cos(math.radians(30)), math.sin(math.radians(30))])
    # nearest: 30 degrees from [1, 0]: 1 - cos 30 = 0.1339746
    assert float(NoveltyBank(bank, k=1).distance(query)) == pytest.approx(1 - math.cos(math.radians(30)), abs=1e-6)
    # 2nd nearest: 60 degrees from [0, 1]: 1 - cos 60 = 0.5
    assert float(NoveltyBank(bank, k=2).distance(query)) == pytest.approx(0.5, abs=1e-6)


def test_novelty_calibration_interpolates_the_quantiles():
    # quantiles 0.0, 0.2, 0.4 map to levels 0, 0.5, 1: distance 0.1 -> 0.25, 0.3 -> 0.75, beyond -> 1
    nb = NoveltyBank(np.array([[1.0, 0.0]]), quantiles=(0.0, 0.2, 0.4))
    assert float(nb.calibrate(0.1)) == pytest.approx(0.25)
    assert float(nb.calibrate(0.3)) == pytest.approx(0.75)
    assert float(nb.calibrate(0.9)) == 1.0
    # cos 60 = 0.5 -> distance 0.5, past the last quantile
    s = score_frame(np.array([0.6, 0.4]), np.array([0.5, math.sqrt(3) / 2]), nb)
    assert (s.novelty, s.novelty_distance) == (1.0, pytest.approx(0.5, abs=1e-6))


def _bits(x: float) -> bytes:
    return np.float64(x).tobytes()


def test_score_frame_is_bit_identical_to_the_plain_functions():
    rng = np.random.default_rng(0)
    bank = NoveltyBank(np.eye(3))
    cases = [np.eye(5)[2], np.full(4, 0.25), np.array([0.5, 0.5]), np.array([1.0, 0.0])]
    for n_classes in (2, 3, 7, 8, 9, 31, 200):
        for scale in (0.01, 1.0, 30.0):
            cases.append(softmax(rng.normal(size=n_classes) * scale))
    for probs in cases:
        s = score_frame(probs, np.array([1.0, 0.0, 0.0]), bank)
        # bitwise, not approx: the fused path must round exactly as the definitions do (a one-hot
        # frame's entropy is -0.0 there, and stays so)
        assert _bits(s.least_confidence) == _bits(least_confidence(probs))
        assert _bits(s.margin) == _bits(margin(probs))
        assert _bits(s.entropy) == _bits(entropy(probs))


def test_score_frame_with_non_finite_probabilities_gives_what_the_definitions_give():
    bank = NoveltyBank(np.eye(2))
    for probs in (np.array([np.nan, 0.5, 0.5]), np.array([1.0]), np.array([[0.7, 0.3]])[0]):
        s = score_frame(probs, np.array([1.0, 0.0]), bank)
        for got, want in ((s.least_confidence, least_confidence(probs)), (s.margin, margin(probs)),
                          (s.entropy, entropy(probs))):
            assert (math.isnan(got) and math.isnan(float(want))) or got == float(want)
