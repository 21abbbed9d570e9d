"""The one simulated camera fleet: skewed class mixes, video-like streams, MJPG files + truth.

Real cameras see the same object for many frames, so consecutive frames are near-duplicates;
that is what makes on-device duplicate suppression matter, and a simulator that emitted one
frame per dataset image would flatter every uncertainty sampler. Here each dataset item stays in
view for a random run of frames, as jittered copies (a slowly drifting shift of a few pixels,
brightness drift, sensor noise). Each device has its own Dirichlet class mix, and classes can be
held absent until a later round to model a shift.

Every random choice comes from an explicit seed or `np.random.Generator`, so a benchmark arm
re-run with the same seeds sees byte-identical frames.

Completion contract for watchers: `write_stream_video` writes the video under a hidden
temporary name, renames it into place, and only then writes the ground-truth sidecar
`<video>.json` atomically (temp file + `os.replace`). A watcher that sees the `.json` may read
the video: it is complete. A video without its `.json` may still be in progress.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flywheel_demo.datasets import Dataset

ITEM_FILL = 0.8  # fraction of the frame the item's longer side occupies


class StreamError(RuntimeError):
    """A stream could not be planned or written (dataset exhausted, codec unavailable, ...)."""


@dataclass(frozen=True)
class StreamItem:
    """One dataset item in view for `n_frames` frames starting at `start_frame`."""

    index_in_dataset: int
    label: int
    start_frame: int
    n_frames: int


@dataclass(frozen=True)
class StreamPlan:
    """What one device sees in one round, before any pixels are rendered."""

    device_id: str
    round: int
    items: list[StreamItem]
    fps: float

    @property
    def n_frames(self) -> int:
        return sum(item.n_frames for item in self.items)


@dataclass(frozen=True)
class Jitter:
    """How much consecutive frames of one item differ. The defaults keep them near-duplicates
    to the eye (≤3 px shift, ±15 % brightness, light noise) while no two are byte-identical,
    as with a real sensor."""

    max_shift: int = 3
    start_shift: int = 2
    step_prob: float = 0.3  # chance per frame and axis that the shift moves by 1 px
    brightness: tuple[float, float] = (0.85, 1.15)
    brightness_step: float = 0.02
    noise_std: float = 3.0


def render_frame(
    item: np.ndarray,
    *,
    frame_size: int,
    dx: int,
    dy: int,
    brightness: float,
    noise_std: float,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Place `item` (grey [H,W] or BGR [H,W,3] uint8) on a black square BGR frame.

    The item is scaled so its longer side fills `ITEM_FILL` of the frame (models see the object,
    not a speck), centred, then shifted by (dx, dy) pixels (clipped at the border), multiplied
    by `brightness` and given gaussian noise of `noise_std` grey levels. `rng` may be None only
    when there is no noise.
    """
    img = np.asarray(item)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"item must be uint8 [H,W] or [H,W,3], got {img.dtype} {img.shape}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    scale = frame_size * ITEM_FILL / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA
    img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    canvas = np.zeros((frame_size, frame_size, 3), dtype=np.float32)
    x0 = (frame_size - new_w) // 2 + dx
    y0 = (frame_size - new_h) // 2 + dy
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + new_w, frame_size), min(y0 + new_h, frame_size)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = img[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    canvas *= brightness
    if noise_std > 0:
        if rng is None:
            raise ValueError("render_frame needs an rng when noise_std > 0")
        canvas += rng.normal(0.0, noise_std, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_clean(item: np.ndarray, frame_size: int) -> np.ndarray:
    """The item as devices see it, minus jitter and noise: for evaluating on the test split."""
    return render_frame(item, frame_size=frame_size, dx=0, dy=0, brightness=1.0, noise_std=0, rng=None)


def class_mix(
    n_devices: int, n_classes: int, *, seed: int, concentration: float = 0.5, absent: Iterable[int] = ()
) -> np.ndarray:
    """Per-device class proportions [n_devices, n_classes], each row summing to 1.

    Dirichlet(concentration): small values give cameras that mostly see a few classes, which is
    the imbalance a cloud-side balance strategy has to even out. `absent` classes get 0 (they
    have not appeared in the world yet); a row whose mass fell entirely on absent classes
    becomes uniform over the present ones rather than NaN.
    """
    absent_idx = sorted(set(int(c) for c in absent))
    if any(c < 0 or c >= n_classes for c in absent_idx):
        raise ValueError(f"absent classes {absent_idx} must lie in [0, {n_classes})")
    if len(absent_idx) >= n_classes:
        raise ValueError("at least one class must be present")
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(n_classes, concentration, dtype=np.float64), size=n_devices)
    mix[:, absent_idx] = 0.0
    present = np.ones(n_classes, dtype=bool)
    present[absent_idx] = False
    sums = mix.sum(axis=1, keepdims=True)
    degenerate = sums[:, 0] < 1e-12
    mix[degenerate] = present / present.sum()
    sums[degenerate] = 1.0
    return mix / sums


def plan_stream(
    dataset_labels: np.ndarray,
    mix: np.ndarray,
    n_items: int,
    *,
    rng: np.random.Generator,
    run_length: tuple[int, int] = (4, 12),
    used: set[int] | None = None,
) -> list[StreamItem]:
    """Draw `n_items` dataset items per the class `mix`, each in view for a run of frames.

    Indices already in `used` are never drawn, and the drawn ones are added to it: pass one set
    across devices and rounds so no image is seen twice in the fleet (a repeat would let a
    sampler "discover" an item that is already labelled). When a class runs out of unused items
    its share moves to the classes that have some; when all run out, `StreamError`.
    `run_length` is the inclusive (min, max) number of frames per item.
    """
    labels = np.asarray(dataset_labels, dtype=np.int64)
    mix = np.asarray(mix, dtype=np.float64)
    lo, hi = run_length
    if not 1 <= lo <= hi:
        raise ValueError(f"run_length must satisfy 1 <= min <= max, got {run_length}")
    if mix.ndim != 1 or (labels.size and labels.max() >= mix.shape[0]) or not mix.sum() > 0:
        raise ValueError(f"mix must be [n_classes > max label] with a positive sum, got {mix}")
    if (mix < 0).any():
        raise ValueError(f"mix must be non-negative, got {mix}")
    used = set() if used is None else used
    # One shuffled queue of unused indices per class; popping from it draws without replacement.
    unused = np.ones(labels.shape[0], dtype=bool)
    if used:
        taken = np.fromiter((i for i in used if 0 <= i < labels.shape[0]), dtype=np.int64)
        unused[taken] = False
    pools = [list(rng.permutation(np.flatnonzero(unused & (labels == c)))) for c in range(len(mix))]
    weights = mix.copy()
    items: list[StreamItem] = []
    frame = 0
    for _ in range(n_items):
        weights[[c for c in range(len(pools)) if not pools[c]]] = 0.0
        total = weights.sum()
        if total <= 0:
            raise StreamError(f"no unused items left in the mix's classes after {len(items)}/{n_items}")
        c = int(rng.choice(len(weights), p=weights / total))
        index = int(pools[c].pop())
        n_frames = int(rng.integers(lo, hi + 1))
        items.append(StreamItem(index_in_dataset=index, label=c, start_frame=frame, n_frames=n_frames))
        used.add(index)
        frame += n_frames
    return items


def jitter_walk(n_frames: int, jitter: Jitter, rng: np.random.Generator) -> Iterator[tuple[int, int, float]]:
    """Yield (dx, dy, brightness) per frame of one item: a bounded random walk, as when a camera
    or the object moves slightly; the caller adds fresh noise every frame."""
    dx, dy = (int(v) for v in rng.integers(-jitter.start_shift, jitter.start_shift + 1, size=2))
    b_lo, b_hi = jitter.brightness
    brightness = float(rng.uniform(b_lo + (b_hi - b_lo) / 6, b_hi - (b_hi - b_lo) / 6))
    for k in range(n_frames):
        if k:
            steps = rng.integers(-1, 2, size=2) * (rng.random(2) < jitter.step_prob)
            dx = int(np.clip(dx + steps[0], -jitter.max_shift, jitter.max_shift))
            dy = int(np.clip(dy + steps[1], -jitter.max_shift, jitter.max_shift))
            brightness = float(np.clip(brightness + rng.normal(0.0, jitter.brightness_step), b_lo, b_hi))
        yield dx, dy, brightness


def write_stream_video(
    path: Path,
    dataset: Dataset,
    plan: StreamPlan,
    *,
    frame_size: int = 56,
    seed: int,
    jitter: Jitter = Jitter(),
) -> Path:
    """Render `plan` to an MJPG video at `path` (use `.avi`) plus its ground-truth sidecar
    `path.with_suffix(".json")`.

    The sidecar is {"device_id", "round", "fps", "frame_size", "n_frames", "frames": [{"frame",
    "label", "item"}, ...]} and appears only after the video is complete (see the module
    docstring). Frames of item k use the generator seeded with (seed, k), so one item's pixels do
    not depend on how many random numbers earlier items consumed.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A stale sidecar from an earlier run would announce a video that is being rewritten.
    sidecar.unlink(missing_ok=True)
    tmp_video = path.with_name(f".{path.stem}.partial{path.suffix}")
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(tmp_video), fourcc, float(plan.fps), (frame_size, frame_size), True)
    if not writer.isOpened():
        raise StreamError(
            f"OpenCV could not open an MJPG writer for {tmp_video}: is the directory writable, the "
            "suffix a container such as .avi, and this OpenCV build compiled with a video backend?"
        )
    truth: list[dict[str, int]] = []
    complete = False
    try:
        frame_no = 0
        for k, item in enumerate(plan.items):
            if item.start_frame != frame_no:
                raise StreamError(f"plan item {k} starts at frame {item.start_frame}, not {frame_no}")
            rng = np.random.default_rng((seed, k))
            image = dataset.images[item.index_in_dataset]
            row = {"label": int(item.label), "item": int(item.index_in_dataset)}
            for dx, dy, b in jitter_walk(item.n_frames, jitter, rng):
                noise = jitter.noise_std
                frame = render_frame(
                    image, frame_size=frame_size, dx=dx, dy=dy, brightness=b, noise_std=noise, rng=rng
                )
                writer.write(frame)
                truth.append({"frame": frame_no, **row})
                frame_no += 1
        complete = True
    finally:
        writer.release()
        if not complete:  # never leave a half-written video behind
            tmp_video.unlink(missing_ok=True)
    if not tmp_video.is_file() or tmp_video.stat().st_size == 0:
        raise StreamError(f"OpenCV reported success but wrote nothing to {tmp_video}")
    os.replace(tmp_video, path)
    doc = {
        "device_id": plan.device_id,
        "round": plan.round,
        "fps": float(plan.fps),
        "frame_size": frame_size,
        "n_frames": len(truth),
        "frames": truth,
    }
    tmp_json = sidecar.with_name(f".{sidecar.name}.tmp")
    with open(tmp_json, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp_json, sidecar)
    return path


def load_ground_truth(json_path: Path) -> dict[int, tuple[int, int]]:
    """Read a sidecar: frame index -> (label, dataset index of the item in view)."""
    with open(json_path, encoding="utf-8") as fh:
        doc = json.load(fh)
    return {int(f["frame"]): (int(f["label"]), int(f["item"])) for f in doc["frames"]}
