"""B1's data: the dataset split, one seed's scenario (seed labels, camera mixes, stream plans,
the shift) and the frames each camera sees, rendered in memory.

Every draw comes from the run seed, so each arm of one seed sees byte-identical frames; frames
are re-rendered on demand (about 60 us each) rather than held, because a full run streams tens
of thousands of them per seed.

The streams are flywheel_demo/streams.py's (skewed Dirichlet class mixes, an item in view for
4-12 jittered frames); only the MJPG file is skipped: frames go to the agent from memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flywheel_demo.datasets import FASHION_MNIST_DIR, Dataset, DatasetError, load_fashion_mnist, load_image_folder
from flywheel_demo.streams import Jitter, StreamItem, jitter_walk, class_mix, plan_stream, render_clean, render_frame

FPS = 10.0
UPLOAD_JPEG_QUALITY = 90  # the agent's default [upload] jpeg_quality: what the cloud receives
SEED_JPEG_QUALITY = 95  # what `cloud-selector labels import-folder` stores for a non-JPEG image
DAY_MS = 86_400_000


def label_name(class_name: str) -> str:
    """Class names become labels and folder names: Fashion-MNIST's "T-shirt/top" cannot."""
    return class_name.replace("/", "-")


@dataclass(frozen=True)
class BenchData:
    train: Dataset
    test: Dataset
    name: str  # "fashion-mnist" or the ImageFolder path

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label_name(c) for c in self.train.classes)


def _stratified_split(data: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(len(data.classes)):
        members = rng.permutation(np.flatnonzero(data.labels == c))
        test_idx += list(members[:max(1, round(test_fraction * len(members)))] if len(members) > 1 else [])
    mask = np.zeros(len(data), bool)
    mask[test_idx] = True
    part = lambda m: Dataset(data.images[m], data.labels[m], data.classes)  # noqa: E731
    return part(~mask), part(mask)


def load_data(dataset: Path | None, *, image_size: int = 64, test_fraction: float = 0.2) -> BenchData:
    """Fashion-MNIST (dataset None or its IDX directory), else an ImageFolder tree: `root/train`
    and `root/test` when both exist, else `root/<class>/...` split per class (test_fraction)."""
    if dataset is None or (Path(dataset) / "train-images-idx3-ubyte.gz").is_file():
        root = Path(dataset) if dataset is not None else FASHION_MNIST_DIR
        return BenchData(load_fashion_mnist("train", root), load_fashion_mnist("test", root), "fashion-mnist")
    root, size = Path(dataset), (image_size, image_size)
    if (root / "train").is_dir():
        train = load_image_folder(root / "train", size=size)
        if (root / "test").is_dir():
            test = load_image_folder(root / "test", size=size)
            unknown = set(test.classes) - set(train.classes)
            if unknown:
                raise DatasetError(f"{root / 'test'} has classes {sorted(unknown)} that {root / 'train'} lacks")
            remap = np.array([train.classes.index(c) for c in test.classes], np.int64)
            test = Dataset(test.images, remap[test.labels], train.classes)
        else:
            train, test = _stratified_split(train, test_fraction, seed=0)
    else:
        train, test = _stratified_split(load_image_folder(root, size=size), test_fraction, seed=0)
    if len(train.classes) < 3:
        raise DatasetError(f"{root}: B1 needs at least 3 classes (one of them held back as the novel class)")
    return BenchData(train, test, str(root))


@dataclass(frozen=True)
class Sizes:
    devices: int = 4  # cameras in all, the last one joining mid-way when there are two or more
    rounds: int = 6
    items: int = 150  # dataset items per camera per round (4-12 frames each)
    select: int = 50  # labels bought per round
    seed_per_class: int = 10
    upload_fraction: float = 0.025  # the upload budget: share of frames a camera may send
    frame_size: int = 56
    novel_round: int = 2  # the held-back class appears in this round's streams
    join_round: int = 0  # 0: rounds // 2 + 1

    @property
    def joins_at(self) -> int:
        return self.join_round or self.rounds // 2 + 1


@dataclass
class DevicePlan:
    device_id: str
    index: int
    joins: int  # first round it streams
    mix_before: np.ndarray  # class proportions before the novel class appears
    mix_after: np.ndarray


@dataclass
class RoundStream:
    """What one camera sees in one round, before rendering."""

    device_id: str
    round: int
    items: list[StreamItem]
    render_seed: int
    start_ms: int

    @property
    def name(self) -> str:  # the agent's `source`: progress and candidate metadata carry it
        return f"round-{self.round:02d}"

    @property
    def n_frames(self) -> int:
        return sum(i.n_frames for i in self.items)

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        """Per frame: (label, dataset index of the item in view)."""
        labels = np.concatenate([np.full(i.n_frames, i.label) for i in self.items]).astype(np.int64)
        items = np.concatenate([np.full(i.n_frames, i.index_in_dataset) for i in self.items]).astype(np.int64)
        return labels, items


@dataclass
class Scenario:
    """One seed's world: the same for every arm."""

    seed: int
    novel: int  # class index held back from the seed labels and the streams until novel_round
    seed_indices: np.ndarray
    devices: list[DevicePlan]
    rounds: list[list[RoundStream]]  # rounds[r - 1] = the streams of round r
    truth: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def label_of(self, device_id: str, source: str, frame_index: int) -> int:
        return int(self.truth[(device_id, source)][0][frame_index])


def _with_novel(mix: np.ndarray, novel: int, share: float = 0.1) -> np.ndarray:
    """The mix once the novel class is in the world: it gets at least `share` (as in the demo)."""
    out = mix.copy()
    out[novel] = max(out[novel], share)
    return out / out.sum()


def make_scenario(data: BenchData, sizes: Sizes, seed: int, novel: int, clock_ms: int) -> Scenario:
    n_classes = len(data.classes)
    rng = np.random.default_rng([seed, 2024])
    used: set[int] = set()
    seed_idx = []
    for c in range(n_classes):
        if c == novel:
            continue
        members = np.flatnonzero(data.train.labels == c)
        seed_idx += list(rng.choice(members, min(sizes.seed_per_class, len(members)), replace=False))
    used.update(int(i) for i in seed_idx)
    initial = sizes.devices - 1 if sizes.devices >= 2 else sizes.devices
    mixes = class_mix(initial, n_classes, seed=seed, absent=[novel])
    # The joining camera has its own mix: another Dirichlet draw, so other classes dominate.
    joiner = class_mix(1, n_classes, seed=seed + 7919, absent=[novel])
    devices = [DevicePlan(f"cam-{i + 1:02d}", i, 1, m, _with_novel(m, novel)) for i, m in enumerate(mixes)]
    if sizes.devices >= 2:
        devices.append(DevicePlan(f"cam-{sizes.devices:02d}", sizes.devices - 1, min(sizes.joins_at, sizes.rounds),
                                  joiner[0], _with_novel(joiner[0], novel)))
    rounds, truth = [], {}
    for r in range(1, sizes.rounds + 1):
        streams = []
        for d in devices:
            if r < d.joins:
                continue
            mix = d.mix_after if r >= sizes.novel_round else d.mix_before
            items = plan_stream(data.train.labels, mix, sizes.items, rng=rng, used=used)
            # Round r is recorded during hour r of the simulated day: per-minute caps see real spans.
            # Cameras start d.index ms apart: no two frames share a capture time, so the catalog's
            # order (capture time, then the random candidate UUID) and with it dedup and selection
            # tie-breaks are the same in every run of this seed.
            stream = RoundStream(d.device_id, r, items, render_seed=seed * 100_003 + r * 101 + d.index,
                                 start_ms=clock_ms + (r - 1) * 3_600_000 + d.index)
            streams.append(stream)
            truth[(d.device_id, stream.name)] = stream.truth()
        rounds.append(streams)
    return Scenario(seed, novel, np.asarray(seed_idx, np.int64), devices, rounds, truth)


def render_stream(data: BenchData, stream: RoundStream, frame_size: int,
                  jitter: Jitter = Jitter()) -> Iterator[np.ndarray]:
    """The stream's frames, as `write_stream_video` renders them (item k seeded with (seed, k)),
    without the MJPG file."""
    for k, item in enumerate(stream.items):
        rng = np.random.default_rng((stream.render_seed, k))
        image = data.train.images[item.index_in_dataset]
        for dx, dy, b in jitter_walk(item.n_frames, jitter, rng):
            yield render_frame(image, frame_size=frame_size, dx=dx, dy=dy, brightness=b, noise_std=jitter.noise_std,
                               rng=rng)


def jpeg(frame: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def seed_frames(data: BenchData, scenario: Scenario, frame_size: int) -> tuple[list[bytes], list[int]]:
    """The seed set as the cloud stores it: clean renders, JPEG-encoded once."""
    frames = [jpeg(render_clean(data.train.images[i], frame_size), SEED_JPEG_QUALITY) for i in scenario.seed_indices]
    return frames, [int(data.train.labels[i]) for i in scenario.seed_indices]


def write_seed_folder(root: Path, data: BenchData, jpegs: list[bytes], labels: list[int], indices) -> Path:
    """root/<label>/<dataset index>.jpg: what `labels import-folder` takes."""
    for blob, label, index in zip(jpegs, labels, indices):
        folder = root / data.labels[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{int(index)}.jpg").write_bytes(blob)
    return root


def eval_frames(data: BenchData, size: int, frame_size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`size` test images (a fixed random subset; 0 = all), rendered clean (no jitter): accuracy
    is measured on them."""
    n = min(size, len(data.test)) if size else len(data.test)
    idx = np.sort(np.random.default_rng(0).permutation(len(data.test))[:n])
    return [render_clean(data.test.images[i], frame_size) for i in idx], data.test.labels[idx].copy()
