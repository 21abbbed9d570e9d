"""Preprocessing from the InputSpec: resize modes, colour order, layout, and bit-identity of the
default (stretch + NCHW) with the original implementation, which the trainer depends on."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pytest

from edge_agent.bundle import InputSpec
from edge_agent.preprocess import preprocess

RGB_STATS = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def reference(frames_bgr: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """The original implementation, written the straightforward way: colour, resize, scale."""
    batch = np.empty((len(frames_bgr), spec.channels, spec.height, spec.width), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    for i, frame in enumerate(frames_bgr):
        img = frame[:, :, None] if frame.ndim == 2 else frame
        if img.shape[2] == 1:
            img = img if spec.color == "gray" else np.repeat(img, 3, axis=2)
        elif spec.color == "gray":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
        elif spec.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if img.shape[:2] != (spec.height, spec.width):
            img = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
            if img.ndim == 2:
                img = img[:, :, None]
        chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
        batch[i] = (chw - mean) / std
    return batch


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise and a hard edge: exercises rounding in every resize path."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x ^ y) & 255], axis=-1)
    img = img + rng.integers(-20, 21, img.shape)
    img[:, width // 3 : width // 3 + 3] = 255
    return np.clip(img, 0, 255).astype(np.uint8)


def spec(**overrides) -> InputSpec:
    fields = dict(width=64, height=64, color="rgb", mean=(0.0,), std=(1.0,))
    fields.update(overrides)
    return InputSpec(**fields)


# --- stretch + NCHW is the original behaviour, bit for bit ------------------------------------


FRAMES = [
    photo_like(1080, 1920, seed=1),  # a camera frame, non-integer downscale ratio
    photo_like(100, 200, seed=2),
    photo_like(56, 56, seed=3),  # integer ratio to 28
    photo_like(28, 28, seed=4),  # already the target size: no resize at all
    photo_like(17, 23, seed=5),  # upscale
    photo_like(77, 123, seed=6)[:, :, 0],  # 2-D grey frame
    photo_like(40, 30, seed=7)[:, :, :1],  # single-channel frame
]


@pytest.mark.parametrize(
    "input_spec",
    [
        spec(width=28, height=28, color="gray", mean=(0.3,), std=(0.3,)),  # the trainer's
        spec(width=28, height=28, color="gray", mean=(0.5,), std=(0.5,)),  # retrain's default
        spec(width=224, height=224, color="rgb", **RGB_STATS),
        spec(width=96, height=64, color="bgr", mean=(0.5,), std=(0.25,)),
        spec(width=64, height=64, color="rgb", mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3)),
    ],
    ids=["gray28-trainer", "gray28-retrain", "rgb224-imagenet", "bgr96x64", "rgb64"],
)
def test_stretch_nchw_is_bit_identical_to_the_original(input_spec):
    got, want = preprocess(FRAMES, input_spec), reference(FRAMES, input_spec)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_empty_batch():
    assert preprocess([], spec(layout="NHWC")).shape == (0, 64, 64, 3)
    assert preprocess([], spec(color="gray")).shape == (0, 1, 64, 64)


# --- letterbox --------------------------------------------------------------------------------


def test_letterbox_wide_frame_pads_top_and_bottom_with_zero():
    white = np.full((100, 200, 3), 255, np.uint8)  # 200 wide, 100 high -> fits as 64x32
    x = preprocess([white], spec(resize="letterbox"))[0]
    assert x.shape == (3, 64, 64)
    assert np.all(x[:, :16] == 0.0) and np.all(x[:, 48:] == 0.0)
    assert np.all(x[:, 16:48] == 1.0)


def test_letterbox_tall_frame_pads_left_and_right():
    white = np.full((200, 50, 3), 255, np.uint8)  # fits as 16x64 -> 24 columns each side
    x = preprocess([white], spec(resize="letterbox", color="gray"))[0, 0]
    assert np.all(x[:, :24] == 0.0) and np.all(x[:, 40:] == 0.0) and np.all(x[:, 24:40] == 1.0)


def test_letterbox_padding_is_zero_before_normalisation():
    white = np.full((100, 200, 3), 255, np.uint8)
    s = spec(resize="letterbox", **RGB_STATS)
    x = preprocess([white], s)[0]
    black_pixel = preprocess([np.zeros((64, 64, 3), np.uint8)], s)[0, :, 0, 0]
    np.testing.assert_array_equal(x[:, 0, 0], black_pixel)  # (0 - mean) / std, per channel
    np.testing.assert_array_equal(x[:, 0, 0], (0.0 - np.float32(RGB_STATS["mean"])) / np.float32(RGB_STATS["std"]))


def test_letterbox_of_matching_aspect_equals_stretch():
    frame = photo_like(128, 256)
    np.testing.assert_array_equal(preprocess([frame], spec(width=64, height=32, resize="letterbox")),
                                  preprocess([frame], spec(width=64, height=32)))


# --- center crop ------------------------------------------------------------------------------


def test_center_crop_removes_left_and_right_borders():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :] = (0, 200, 0)  # green centre
    frame[:, :50] = (0, 0, 255)  # red left border
    frame[:, 150:] = (255, 0, 0)  # blue right border
    x = preprocess([frame], spec(resize="center_crop"))[0]  # crops the central 100x100
    assert x.shape == (3, 64, 64)
    np.testing.assert_array_equal(x[0], 0.0)  # no red
    np.testing.assert_array_equal(x[1], np.float32(200) / 255)
    np.testing.assert_array_equal(x[2], 0.0)  # no blue


def test_center_crop_tall_frame_removes_top_and_bottom():
    frame = np.full((300, 100, 3), 100, np.uint8)
    frame[:100], frame[200:] = 255, 0
    x = preprocess([frame], spec(width=32, height=32, resize="center_crop", color="gray"))
    np.testing.assert_array_equal(x, np.float32(100) / 255)


def test_center_crop_is_stretch_of_the_centre():
    frame = photo_like(90, 160)
    np.testing.assert_array_equal(preprocess([frame], spec(width=48, height=48, resize="center_crop")),
                                  preprocess([frame[:, 35:125]], spec(width=48, height=48)))


# --- layout and colour order ------------------------------------------------------------------


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("color", ["gray", "rgb", "bgr"])
def test_nhwc_is_nchw_transposed(resize, color):
    frames = [photo_like(90, 160, seed=8), photo_like(50, 40, seed=9)]
    stats = dict(mean=(0.5,), std=(0.25,)) if color == "gray" else RGB_STATS
    nchw = preprocess(frames, spec(width=40, height=30, color=color, resize=resize, **stats))
    nhwc = preprocess(frames, spec(width=40, height=30, color=color, resize=resize, layout="NHWC", **stats))
    assert nhwc.shape == (2, 30, 40, 1 if color == "gray" else 3)
    assert nhwc.flags.c_contiguous
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


RED_BGR = np.zeros((20, 30, 3), np.uint8)
RED_BGR[:, :, 2] = 255


@pytest.mark.parametrize(("color", "expected"), [("rgb", (1.0, 0.0, 0.0)), ("bgr", (0.0, 0.0, 1.0))])
def test_channel_order_with_pure_red(color, expected):
    x = preprocess([RED_BGR], spec(width=8, height=8, color=color))[0]
    for channel, value in enumerate(expected):
        np.testing.assert_array_equal(x[channel], value)


def test_gray_of_pure_red_is_its_luma():
    x = preprocess([RED_BGR], spec(width=8, height=8, color="gray"))[0]
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x, 0.299, atol=1 / 255)  # ITU-R BT.601 weight of red


def test_single_channel_frame_feeds_a_colour_model_three_equal_channels():
    grey = np.full((10, 10), 51, np.uint8)
    x = preprocess([grey, grey[:, :, None]], spec(width=5, height=5, resize="letterbox"))
    np.testing.assert_array_equal(x, np.float32(51) / 255)


def test_bgra_frame_drops_alpha():
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 7
    x = preprocess([bgra], spec(width=8, height=8, color="rgb"))[0]
    np.testing.assert_array_equal(x[:, 0, 0], (1.0, 0.0, 0.0))
    x = preprocess([bgra], spec(width=8, height=8, color="bgr"))[0]
    np.testing.assert_array_equal(x[:, 0, 0], (0.0, 0.0, 1.0))
