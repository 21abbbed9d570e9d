"""How an embedding travels in a Candidate: float32 values, or int8 with one scale per vector.

Or not at all ("none"): the cloud embeds the JPEG itself when a selection round needs it, as it
does for every candidate scored by an older model version; the dashboard's map and neighbour
lists then leave the candidate out, as they do imported images.

Pure (numpy only), shared by the agent that encodes and the cloud that decodes, so the two
sides cannot disagree on the format (`protos/flywheel.proto`, Candidate.embedding_int8).

Why int8: a MobileNetV2 embedding is 1280 values, 5 kB as float32, four times the ~1.3 kB JPEG
of a small frame; it was 79 % of what the B1 fleet uploaded. Symmetric int8 with the scale
max|x| / 127 keeps every value within scale / 2 of the original, which moves the cosine
distances the cloud dedups and selects on by about 2e-4 on average, 2e-3 at most (the test
measures it).
"""

from __future__ import annotations

import math

import numpy as np

ENCODINGS = ("int8", "float32", "none")


def encode_int8(embedding) -> tuple[bytes, float]:
    """(int8 bytes, scale) with value i ~= byte i * scale; an all-zero vector gets scale 0."""
    values = np.asarray(embedding, dtype=np.float32).ravel()
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        # A non-finite vector keeps a NaN scale, so the cloud rejects it as it would the floats.
        return np.zeros(values.size, dtype=np.int8).tobytes(), (0.0 if peak == 0.0 else math.nan)
    scale = peak / 127.0
    codes = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return codes.tobytes(), scale


def decode_int8(data: bytes, scale: float) -> np.ndarray:
    """The float32 vector that `encode_int8` packed."""
    return np.frombuffer(data, dtype=np.int8).astype(np.float32) * np.float32(scale)
