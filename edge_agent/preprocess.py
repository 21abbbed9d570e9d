"""Turn BGR uint8 frames into the model's input tensor, entirely from the manifest's InputSpec.

Pure (numpy + OpenCV arithmetic, no I/O). The cloud's trainer and evaluator call the same
function, so training and inference can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge_agent.bundle import InputSpec


def to_model_color(frame_bgr: np.ndarray, color: str) -> np.ndarray:
    """BGR (or single-channel) uint8 -> HxWxC in the model's channel order."""
    if frame_bgr.ndim == 2:
        frame_bgr = frame_bgr[:, :, None]
    if frame_bgr.shape[2] == 1:
        if color == "gray":
            return frame_bgr
        return np.repeat(frame_bgr, 3, axis=2)
    if color == "gray":
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    if color == "rgb":
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    return frame_bgr


def preprocess(frames_bgr: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """A batch of frames (any sizes) -> float32 [N, C, H, W]: resize, channel order, scale to
    [0, 1], then (x - mean) / std."""
    batch = np.empty((len(frames_bgr), spec.channels, spec.height, spec.width), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    for i, frame in enumerate(frames_bgr):
        img = to_model_color(np.asarray(frame), spec.color)
        if img.shape[0] != spec.height or img.shape[1] != spec.width:
            img = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
            if img.ndim == 2:
                img = img[:, :, None]
        chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
        batch[i] = (chw - mean) / std
    return batch
