"""Appearance signatures: brightness invariance, shift tolerance, separation, and a brute-force
reference for pair_distances."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.appearance import (
    DEFAULT_MAX_SHIFT,
    DEFAULT_SIZE,
    RecentFrames,
    pair_distances,
    signature,
    signatures,
)


def texture(seed: int, n: int = 62) -> np.ndarray:
    """A smooth random grey texture in [40, 190] (room for +10 % brightness without clipping)."""
    r = np.random.default_rng(seed).random((n, n)).astype(np.float32)
    r = cv2.GaussianBlur(r, (0, 0), 2.0)
    r = (r - r.min()) / (r.max() - r.min())
    return (40 + 150 * r).astype(np.uint8)


def bgr(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def dist(frame_a: np.ndarray, frame_b: np.ndarray, max_shift: int = DEFAULT_MAX_SHIFT) -> float:
    return float(pair_distances(signature(frame_a)[None], signature(frame_b)[None], max_shift)[0])


# --- signature -------------------------------------------------------------------------------


def test_signature_shape_and_standardised():
    sig = signature(bgr(texture(0)))
    assert sig.shape == (DEFAULT_SIZE, DEFAULT_SIZE) and sig.dtype == np.float32
    assert float(sig.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(sig.std()) == pytest.approx(1.0, abs=1e-3)
    assert signature(bgr(texture(0)), size=24).shape == (24, 24)


def test_signature_of_flat_frame_is_zero_not_nan():
    sig = signature(np.full((40, 40, 3), 128, np.uint8))
    assert np.all(np.isfinite(sig)) and np.all(sig == 0)


def test_signature_accepts_grey_and_bgr_alike():
    grey = texture(1)[:56, :56]
    np.testing.assert_allclose(signature(grey), signature(bgr(grey)), atol=1e-5)


def test_brightness_invariant():
    frame = bgr(texture(2)[:56, :56])
    brighter = np.round(frame.astype(np.float32) * 1.1).astype(np.uint8)  # max 190 * 1.1 = 209: no clipping
    assert dist(frame, brighter) < 0.02  # only uint8 rounding is left
    # without rounding (float32 frame), the standardisation removes the gain exactly
    assert dist(frame.astype(np.float32), frame.astype(np.float32) * 1.1) == pytest.approx(0.0, abs=1e-4)
    # contrast + offset too: 0.8 * x + 30
    dimmer = np.round(frame.astype(np.float32) * 0.8 + 30).astype(np.uint8)
    assert dist(frame, dimmer) < 0.02


def test_two_pixel_shift_within_threshold():
    big = texture(3)
    original = bgr(big[3:59, 3:59])
    shifted_down = bgr(big[5:61, 3:59])  # the camera moved 2 px
    shifted_diag = bgr(big[5:61, 1:57])  # 2 px down, 2 px left
    assert dist(original, shifted_down, max_shift=3) < 0.2
    assert dist(original, shifted_diag, max_shift=3) < 0.2
    # without shift tolerance the same pair is far apart: the tolerance is what makes it close
    assert dist(original, shifted_down, max_shift=0) > 0.5


def test_different_noise_textures_are_far():
    assert dist(bgr(texture(10)[:56, :56]), bgr(texture(11)[:56, :56])) > 0.5
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    # unrelated standardised images: RMS difference ~ sqrt(2)
    assert dist(a, b) > 0.5
    assert dist(a, b) == pytest.approx(np.sqrt(2), abs=0.2)


def test_different_shapes_are_far():
    circle = np.zeros((56, 56, 3), np.uint8)
    cv2.circle(circle, (28, 28), 14, (255, 255, 255), -1)
    cross = np.zeros((56, 56, 3), np.uint8)
    cv2.rectangle(cross, (4, 24), (52, 32), (255, 255, 255), -1)
    cv2.rectangle(cross, (24, 4), (32, 52), (255, 255, 255), -1)
    square = np.zeros((56, 56, 3), np.uint8)
    cv2.rectangle(square, (14, 14), (42, 42), (255, 255, 255), -1)
    assert dist(circle, cross) > 0.5
    assert dist(circle, square) > 0.5
    assert dist(circle, circle) == 0.0


def test_signatures_stacks_frames():
    frames = [bgr(texture(s)[:56, :56]) for s in range(3)]
    stack = signatures(frames)
    assert stack.shape == (3, DEFAULT_SIZE, DEFAULT_SIZE)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(stack[i], signature(f))
    assert signatures([]).shape == (0, DEFAULT_SIZE, DEFAULT_SIZE)


# --- pair_distances vs a brute-force reference -----------------------------------------------


def brute_force(a: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """min over (dy, dx) in [-s, s]^2 of RMS(a[p, s:S-s, s:S-s] - b[p, s+dy:S-s+dy, s+dx:S-s+dx])."""
    n, size = a.shape[0], a.shape[-1]
    inner = size - 2 * s
    out = np.zeros(n)
    for p in range(n):
        best = np.inf
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                total = 0.0
                for y in range(inner):
                    for x in range(inner):
                        d = float(a[p, s + y, s + x]) - float(b[p, s + dy + y, s + dx + x])
                        total += d * d
                best = min(best, (total / (inner * inner)) ** 0.5)
        out[p] = best
    return out


@pytest.mark.parametrize(("size", "shift"), [(8, 0), (8, 1), (9, 2), (7, 3)])
def test_pair_distances_matches_brute_force(size, shift):
    rng = np.random.default_rng(size * 10 + shift)
    a = rng.normal(size=(4, size, size)).astype(np.float32)
    b = rng.normal(size=(4, size, size)).astype(np.float32)
    b[0] = a[0]  # identical pair -> 0
    b[1] = np.roll(a[1], (1, -1), axis=(0, 1)) if shift >= 1 else b[1]  # an exact shift -> 0 when tolerated
    got = pair_distances(a, b, max_shift=shift)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, brute_force(a, b, shift), rtol=1e-5, atol=1e-6)
    assert got[0] == 0.0
    if shift >= 1:
        assert got[1] == pytest.approx(0.0, abs=1e-6)


def test_pair_distances_hand_case():
    # 3x3, no shift: a - b is 1 everywhere -> RMS 1; a - c is 3 at one pixel -> sqrt(9/9) = 1 as well;
    # a - d is 2 at 4 of 9 pixels -> sqrt(16/9) = 4/3
    a = np.zeros((3, 3, 3), np.float32)
    b = np.stack([np.ones((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))]).astype(np.float32)
    b[1, 0, 0] = 3.0
    b[2, :2, :2] = 2.0
    np.testing.assert_allclose(pair_distances(a, b, max_shift=0), [1.0, 1.0, 4 / 3], rtol=1e-6)


def test_pair_distances_empty():
    out = pair_distances(np.zeros((0, 8, 8), np.float32), np.zeros((0, 8, 8), np.float32))
    assert out.shape == (0,)


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((2, 8, 8), (3, 8, 8)), ((2, 8, 8), (2, 9, 9)), ((8, 8), (8, 8)), ((1, 2, 8, 8), (1, 2, 8, 8))],
)
def test_pair_distances_shape_mismatch_raises(shape_a, shape_b):
    with pytest.raises(ValueError, match="pair_distances needs"):
        pair_distances(np.zeros(shape_a, np.float32), np.zeros(shape_b, np.float32))


def test_pair_distances_shift_too_large_raises():
    with pytest.raises(ValueError, match="too large"):
        pair_distances(np.zeros((1, 6, 6), np.float32), np.zeros((1, 6, 6), np.float32), max_shift=3)


# --- RecentFrames ----------------------------------------------------------------------------


def test_recent_frames_remembers_only_kept_frames():
    recent = RecentFrames(capacity=2, threshold=0.2)
    a, b, c = (bgr(texture(s)[:56, :56]) for s in (20, 21, 22))
    assert not recent.is_repeat(a)  # nothing remembered yet
    assert not recent.is_repeat(a)  # still nothing: is_repeat alone does not remember
    recent.remember()
    assert recent.is_repeat(a)
    brighter = np.round(a.astype(np.float32) * 1.1).astype(np.uint8)
    assert recent.is_repeat(brighter)
    assert not recent.is_repeat(b)
    recent.remember()
    assert not recent.is_repeat(c)
    recent.remember()
    # capacity 2: a fell out of the ring
    assert not recent.is_repeat(a)
    assert recent.is_repeat(c)


def test_recent_frames_threshold_zero_turns_check_off():
    recent = RecentFrames(threshold=0.0)
    frame = bgr(texture(30)[:56, :56])
    recent.is_repeat(frame)
    recent.remember()
    assert not recent.is_repeat(frame)


# --- is_repeat stops at the first matching shift: it must agree with the full computation ------


def test_shifts_are_nearest_first_and_cover_the_square():
    from edge_agent.appearance import _shifts

    for s in (0, 1, 3):
        order = _shifts(s)
        assert sorted(order) == [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
        assert order[0] == (0, 0)
        steps = [abs(dy) + abs(dx) for dy, dx in order]
        assert steps == sorted(steps)


def test_is_repeat_agrees_with_pair_distances_over_every_shift():
    # Probes that match a kept frame only at a large shift (found late), at no shift (found
    # first), or not at all; thresholds around the true distances so that an early exit on the
    # wrong crop or a missed shift would flip the answer.
    size, s = DEFAULT_SIZE, DEFAULT_MAX_SHIFT
    kept = [bgr(texture(seed, 64)[:size, :size]) for seed in (40, 41, 42)]
    big = texture(41, 64)
    probes = [kept[0], bgr(big[3:3 + size, 2:2 + size]), bgr(big[1:1 + size, 0:size]), bgr(texture(43, 64)[:size, :size])]
    noisy = np.clip(kept[2].astype(np.int16) + np.random.default_rng(0).integers(-25, 26, kept[2].shape), 0, 255)
    probes.append(noisy.astype(np.uint8))
    ring = np.stack([signature(k) for k in kept])
    answers = []
    for probe in probes:
        full = pair_distances(np.broadcast_to(signature(probe), ring.shape), ring, s).min()
        for threshold in (full * 0.999, full * 1.001, 0.05, 0.2, 0.5):
            recent = RecentFrames(capacity=4, threshold=float(threshold), max_shift=s)
            for k in kept:
                recent.is_repeat(k)
                recent.remember()
            got = recent.is_repeat(probe)
            assert got == bool(full < threshold), (full, threshold)
            answers.append(got)
    assert any(answers) and not all(answers)
