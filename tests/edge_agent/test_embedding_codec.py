"""The int8 wire form of an embedding: a quarter of the bytes, distances nearly unchanged."""

from __future__ import annotations

import math

import numpy as np

from edge_agent.embedding_codec import decode_int8, encode_int8


def _cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - a @ b.T


def test_each_value_comes_back_within_half_a_step():
    values = np.random.default_rng(0).standard_normal(1280).astype(np.float32)
    data, scale = encode_int8(values)
    assert len(data) == 1280 and scale == np.float32(np.abs(values).max() / 127)
    assert np.abs(decode_int8(data, scale) - values).max() <= scale / 2 + 1e-6


def test_cosine_distances_move_by_about_2e_4():
    # Like a ReLU backbone's pooled features: non-negative and sparse-ish.
    rng = np.random.default_rng(1)
    raw = np.maximum(rng.standard_normal((200, 1280)).astype(np.float32), 0) * rng.random((200, 1)).astype(np.float32)
    decoded = np.stack([decode_int8(*encode_int8(v)) for v in raw])
    drift = np.abs(_cosine_distances(decoded, decoded) - _cosine_distances(raw, raw))
    assert drift.max() < 2e-3 and drift.mean() < 3e-4


def test_zero_and_non_finite_vectors():
    data, scale = encode_int8(np.zeros(4))
    assert scale == 0.0 and decode_int8(data, scale).tolist() == [0, 0, 0, 0]
    _, scale = encode_int8(np.array([1.0, math.nan]))
    assert math.isnan(scale)  # the cloud rejects a non-finite scale as it does non-finite floats
