"""Near-duplicates: FAISS neighbours confirmed by appearance, or the plain cosine rule."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_selector.dedup import find_repeats
from edge_agent.appearance import signatures


def frames(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (56, 56), dtype=np.uint8) for _ in range(n)]


def shifted(frame: np.ndarray) -> np.ndarray:
    return np.roll(frame, (1, 2), axis=(0, 1))


def test_a_shifted_copy_of_a_labeled_image_is_its_duplicate_a_look_alike_is_not():
    ref = frames(0, 3)
    pool = [shifted(ref[1]), frames(1, 1)[0], shifted(ref[2])]
    ref_emb = np.eye(4, dtype=np.float32)[:3]
    # Embeddings cannot tell: the look-alike (pool 1) sits as close to ref 0 as the real copies.
    pool_emb = np.array([[0, 1, 0, 0.01], [1, 0, 0, 0.01], [0, 0, 1, 0.01]], np.float32)
    out = find_repeats(pool_emb, ref_emb, signatures(pool), signatures(ref))
    assert out.tolist() == [1, -1, 2]


def test_cosine_rule_alone_marks_close_embeddings():
    ref_emb = np.array([[1, 0, 0]], np.float32)
    pool_emb = np.array([[0.999, 0.04, 0], [0, 1, 0], [0, 0.999, 0.04]], np.float32)
    sig = signatures(frames(2, 4))
    out = find_repeats(pool_emb, ref_emb, sig[1:], sig[:1], appearance_threshold=0.0, embedding_threshold=0.01)
    assert out.tolist() == [0, -1, 2]  # pool 2 repeats pool 1 (index M + 1 = 2)


def test_a_repeat_attaches_to_a_kept_original_only():
    base = frames(3, 1)[0]
    pool = [base, shifted(base), np.roll(base, (0, 1), axis=(0, 1)), shifted(shifted(base))]
    emb = np.array([[1, 0], [1, 0.001], [1, 0.002], [1, 0.003]], np.float32)
    out = find_repeats(emb, np.zeros((0, 2), np.float32), signatures(pool), np.zeros((0, 56, 56), np.float32))
    # 1 and 2 repeat 0. 3 is only close to 1 (4 px from 0, beyond max_shift), and 1 is itself
    # a duplicate, so 3 stays: a chain of small shifts never swallows a different view.
    assert out.tolist() == [-1, 0, 0, -1]


def test_needs_one_signal():
    with pytest.raises(ValueError, match="threshold"):
        find_repeats(np.ones((1, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros((1, 56, 56), np.float32),
                     np.zeros((0, 56, 56), np.float32), appearance_threshold=0.0, embedding_threshold=0.0)
