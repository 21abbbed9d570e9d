"""Appearance signatures: is this frame a repeat of that one?

Model embeddings tell classes apart but not "the same item again" from "a similar item"
(measured on the demo's streams: the 99th percentile of same-item cosine distances was above the
1st percentile of different-item ones). A small grey thumbnail compared under small shifts does
separate them, so near-duplicate checks use this signal next to the embedding.

signature: grey, resized to `size` x `size`, standardised (zero mean, unit variance) so that
brightness and contrast changes do not count as differences.
distance: root-mean-square difference of two signatures, minimised over integer shifts of up to
`max_shift` pixels (the overlap region only). 0 = identical up to shift/brightness; unrelated
images score around sqrt(2).

Pure numpy + OpenCV arithmetic; no I/O.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence

import cv2
import numpy as np

# Signatures at (near) the frame's own scale: downscaling turns pixel shifts into sub-pixel
# ones, and on the demo's 56 px frames that erased the margin between repeats and look-alikes
# (size 24: same-item max 0.51 vs different-item min 0.24; size 56: 0.12 vs 0.27).
DEFAULT_SIZE = 56
DEFAULT_MAX_SHIFT = 3


def signature(frame_bgr: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    grey = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    return small / max(float(small.std()), 1e-3)


def signatures(frames_bgr: Sequence[np.ndarray], size: int = DEFAULT_SIZE) -> np.ndarray:
    """[N, size, size] float32."""
    out = np.zeros((len(frames_bgr), size, size), np.float32)
    for i, frame in enumerate(frames_bgr):
        out[i] = signature(frame, size)
    return out


@functools.lru_cache(maxsize=8)
def _shifts(max_shift: int) -> tuple[tuple[int, int], ...]:
    """Every (dy, dx) within max_shift, nearest first: a repeat usually matches at a small shift,
    and `RecentFrames.is_repeat` stops at the first shift that matches."""
    span = range(-max_shift, max_shift + 1)
    return tuple(sorted(((dy, dx) for dy in span for dx in span), key=lambda d: (abs(d[0]) + abs(d[1]), d)))


def _check(a: np.ndarray, b: np.ndarray, max_shift: int) -> int:
    """The side of the compared centre crops; ValueError for stacks that cannot be compared."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"pair_distances needs two [P, S, S] stacks of one shape, got {a.shape} and {b.shape}")
    inner = a.shape[-1] - 2 * max_shift
    if len(a) and inner < 1:
        raise ValueError(f"max_shift {max_shift} too large for signatures of size {a.shape[-1]}")
    return inner


def _shift_distances(a: np.ndarray, b: np.ndarray, max_shift: int, inner: int):
    """Yield, one shift at a time (nearest first), the RMS distance [P] between the centre crop of
    each a[p] (margin `max_shift`, side `inner`) and the crop of b[p] shifted by it.

    One scratch buffer for all shifts: the same float32 operations on the same contiguous
    layout as a fresh array per shift, so the same values, without 2 x 49 allocations."""
    s = max_shift
    centre = a[:, s:s + inner, s:s + inner]
    diff = np.empty((len(a), inner, inner), np.float32)
    count = np.intp(inner * inner)  # what ndarray.mean divides by (an intp: the division is float64)
    for dy, dx in _shifts(s):
        np.subtract(centre, b[:, s + dy:s + dy + inner, s + dx:s + dx + inner], out=diff)
        np.multiply(diff, diff, out=diff)
        # diff.mean(axis=(1, 2)) without its Python-level wrapper: the same sum, then the same
        # division cast back to float32.
        mean = np.add.reduce(diff, axis=(1, 2))
        np.true_divide(mean, count, out=mean, casting="unsafe")
        yield np.sqrt(mean, out=mean)


def pair_distances(a: np.ndarray, b: np.ndarray, max_shift: int = DEFAULT_MAX_SHIFT) -> np.ndarray:
    """Shift-tolerant RMS distance between a[p] and b[p] for each p: [P].

    The centre crop of `a` (margin `max_shift`) is compared with every shifted crop of `b`
    of the same size; the smallest RMS difference wins.
    """
    inner = _check(a, b, max_shift)
    if len(a) == 0:
        return np.zeros(0, np.float32)
    best = np.full(len(a), np.inf, np.float32)
    for distances in _shift_distances(a, b, max_shift, inner):
        np.minimum(best, distances, out=best)
    return best


class RecentFrames:
    """The last `capacity` kept frames: a parked car is uploaded once, not for every frame it
    stays in view.

    A frame repeats a kept one when both signals agree on the same kept frame: its embedding is
    within `embedding_threshold` cosine distance (cheap, checked first; 0 = skip this signal)
    and its appearance signature is within `threshold` (0 = skip this signal). The embedding
    alone would call two look-alike items repeats; appearance confirms. With both thresholds 0
    nothing is a repeat.

    `is_repeat` computes what it needs once and keeps it for `remember`, which the caller
    invokes when the frame is actually kept.
    """

    def __init__(self, capacity: int = 16, threshold: float = 0.2, size: int = DEFAULT_SIZE,
                 max_shift: int = DEFAULT_MAX_SHIFT, embedding_threshold: float = 0.0):
        self.threshold = threshold
        self.embedding_threshold = embedding_threshold
        self.size = size
        self.max_shift = max_shift
        self._signatures: deque[np.ndarray] = deque(maxlen=capacity)
        self._embeddings: deque[np.ndarray | None] = deque(maxlen=capacity)
        self._last: tuple[np.ndarray, np.ndarray | None] | None = None

    @property
    def enabled(self) -> bool:
        return self.threshold > 0 or self.embedding_threshold > 0

    def is_repeat(self, frame_bgr: np.ndarray, embedding: np.ndarray | None = None) -> bool:
        unit = None
        if embedding is not None:
            e = np.asarray(embedding, np.float32).ravel()
            unit = e / max(float(np.linalg.norm(e)), 1e-12)
        self._last = (signature(frame_bgr, self.size), unit)
        if not self._signatures or not self.enabled:
            return False
        candidates = np.ones(len(self._signatures), bool)
        if self.embedding_threshold > 0 and unit is not None:
            for i, kept in enumerate(self._embeddings):
                candidates[i] = kept is not None and 1.0 - float(kept @ unit) <= self.embedding_threshold
            if not candidates.any():
                return False
        if self.threshold <= 0:
            return bool(candidates.any())
        ring = np.stack([sig for sig, ok in zip(self._signatures, candidates) if ok])
        probe = np.broadcast_to(self._last[0], ring.shape)
        # Equal to pair_distances(probe, ring).min() < threshold, stopping at the first shift
        # that matches: a repeat costs one or two shifts instead of all 49 (~35 us instead of
        # ~1.5 ms against a full ring). A frame that is not a repeat still tries every shift.
        # (Signatures are always finite, so no NaN could have vetoed an early match.)
        shifts = _shift_distances(probe, ring, self.max_shift, _check(probe, ring, self.max_shift))
        return any(bool((distances < self.threshold).any()) for distances in shifts)

    def remember(self) -> None:
        if self._last is not None:
            self._signatures.append(self._last[0])
            self._embeddings.append(self._last[1])
            self._last = None
