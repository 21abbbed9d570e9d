"""Per-frame scores, defined as Lightly defines them so users can compare.

All functions take class probabilities along the last axis and work on one frame ([C]) or a
batch ([N, C]). Pure numpy; no I/O.

- least confidence = 1 - p_max
- margin           = 1 - (p_1 - p_2)         (p_1 >= p_2 the two largest probabilities)
- entropy          = -sum p log p / log C     (normalised to [0, 1])
- novelty          = cosine distance from the frame's embedding to the nearest embedding of the
                     model's reference bank (0 = seen before, up to 2 = opposite direction)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNCERTAINTY_MEASURES = ("least_confidence", "margin", "entropy")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax along the last axis."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return 1.0 - p.max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] < 2:
        return np.zeros(p.shape[:-1])
    top2 = np.sort(p, axis=-1)[..., -2:]
    return 1.0 - (top2[..., 1] - top2[..., 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    n_classes = p.shape[-1]
    if n_classes < 2:
        return np.zeros(p.shape[:-1])
    # 0 * log 0 is 0: clip only inside the log.
    h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-1)
    return np.clip(h / np.log(n_classes), 0.0, 1.0)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class NoveltyBank:
    """Reference embeddings; novelty of a frame = cosine distance to the nearest of them.

    An empty bank makes every frame maximally novel (1.0, the distance to an orthogonal
    vector), so a model shipped without references still uploads.
    """

    EMPTY_NOVELTY = 1.0

    def __init__(self, embeddings: np.ndarray):
        bank = np.asarray(embeddings, dtype=np.float32)
        if bank.ndim != 2:
            raise ValueError(f"novelty bank must be 2-D [N, D], got shape {bank.shape}")
        self._bank = l2_normalize(bank) if len(bank) else bank

    def __len__(self) -> int:
        return len(self._bank)

    @property
    def dim(self) -> int:
        return self._bank.shape[1]

    def novelty(self, embedding: np.ndarray) -> np.ndarray:
        """Cosine distance to the nearest reference, for one embedding [D] or a batch [N, D]."""
        e = l2_normalize(embedding)
        if len(self._bank) == 0:
            return np.full(e.shape[:-1], self.EMPTY_NOVELTY)
        similarity = e @ self._bank.T
        return np.clip(1.0 - similarity.max(axis=-1), 0.0, 2.0).astype(np.float64)


@dataclass(frozen=True)
class FrameScores:
    least_confidence: float
    margin: float
    entropy: float
    novelty: float

    def uncertainty(self, measure: str) -> float:
        if measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; use one of {UNCERTAINTY_MEASURES}")
        return getattr(self, measure)


def score_frame(probs: np.ndarray, embedding: np.ndarray, bank: NoveltyBank) -> FrameScores:
    """All scores for one frame from its probabilities [C] and embedding [D]."""
    return FrameScores(
        least_confidence=float(least_confidence(probs)),
        margin=float(margin(probs)),
        entropy=float(entropy(probs)),
        novelty=float(bank.novelty(embedding)),
    )
