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


def pair_distances(a: np.ndarray, b: np.ndarray, max_shift: int = DEFAULT_MAX_SHIFT) -> np.ndarray:
    """Shift-tolerant RMS distance between a[p] and b[p] for each p: [P].

    The centre crop of `a` (margin `max_shift`) is compared with every shifted crop of `b`
    of the same size; the smallest RMS difference wins.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"pair_distances needs two [P, S, S] stacks of one shape, got {a.shape} and {b.shape}")
    if len(a) == 0:
        return np.zeros(0, np.float32)
    s, size = max_shift, a.shape[-1]
    inner = size - 2 * s
    if inner < 1:
        raise ValueError(f"max_shift {max_shift} too large for signatures of size {size}")
    centre = a[:, s:s + inner, s:s + inner]
    best = np.full(len(a), np.inf, np.float32)
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            diff = centre - b[:, s + dy:s + dy + inner, s + dx:s + dx + inner]
            np.minimum(best, np.sqrt((diff * diff).mean(axis=(1, 2))), out=best)
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
        return bool(pair_distances(probe, ring, self.max_shift).min() < self.threshold)

    def remember(self) -> None:
        if self._last is not None:
            self._signatures.append(self._last[0])
            self._embeddings.append(self._last[1])
            self._last = None
