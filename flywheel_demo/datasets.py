"""Image datasets the demo and the benchmarks stream from: Fashion-MNIST and ImageFolder trees.

Both loaders return the same typed `Dataset` (uint8 images + int64 labels + class names), so the
stream simulator and the benchmarks never care where the pixels came from. Nothing here touches
the network: Fashion-MNIST comes from the Debian package `dataset-fashion-mnist`, and a missing
or damaged file raises `DatasetError` saying which file and how to install it, instead of a
bare `FileNotFoundError` or a confusing numpy reshape error deep inside a benchmark.

Exceptions: `DatasetError` (a `ValueError`) for anything wrong with the data on disk.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (without root: `apt-get download "
    "dataset-fashion-mnist` then `dpkg-deb -x <deb> <dir>` and pass root=<dir>/usr/share/"
    "datasets/fashion-mnist)"
)
# Suffixes OpenCV decodes everywhere; other files in a class folder (README, .DS_Store) are
# not images and are ignored rather than counted as unreadable.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DatasetError(ValueError):
    """The data on disk is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class Dataset:
    """Images with integer labels that index into `classes`.

    images: uint8, [N, H, W] (grey) or [N, H, W, 3] (BGR, OpenCV's order, as devices see it).
    labels: int64 [N], each in range(len(classes)).
    skipped: files the loader could not decode (ImageFolder only), so callers can report it.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: int = 0

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise DatasetError(
                f"images must be uint8 [N,H,W] or [N,H,W,3], got {self.images.dtype} {self.images.shape}"
            )
        if self.images.ndim == 4 and self.images.shape[3] != 3:
            raise DatasetError(f"colour images must have 3 channels, got shape {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise DatasetError(
                f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} {self.labels.shape}"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DatasetError(
                f"labels must lie in [0, {len(self.classes)}), got [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzip-compressed IDX file, checking the magic number and the declared size."""
    if not path.is_file():
        raise DatasetError(f"Fashion-MNIST file {path} is missing; {INSTALL_HINT}")
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(
            f"Fashion-MNIST file {path} is not a readable gzip file ({exc}); reinstall: {INSTALL_HINT}"
        ) from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        found = f"{struct.unpack('>I', raw[:4])[0]:#010x}" if len(raw) >= 4 else "none (file too short)"
        raise DatasetError(
            f"Fashion-MNIST file {path} has IDX magic {found}, expected {magic:#010x}; the file is corrupt "
            f"or not what its name says; reinstall: {INSTALL_HINT}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"Fashion-MNIST file {path} declares shape {dims} ({expected} bytes) but holds "
            f"{len(raw) - header}; it is truncated or corrupt; reinstall: {INSTALL_HINT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split: Literal["train", "test"], root: Path = FASHION_MNIST_DIR) -> Dataset:
    """Load Fashion-MNIST's train (60000) or test (10000) split as grey 28x28 images."""
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST directory {root} does not exist; {INSTALL_HINT}")
    images = _read_idx(root / f"{prefixes[split]}-images-idx3-ubyte.gz", _IDX_IMAGES_MAGIC)
    labels = _read_idx(root / f"{prefixes[split]}-labels-idx1-ubyte.gz", _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST {split} split under {root} has {images.shape[0]} images "
            f"but {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(
            f"Fashion-MNIST {split} labels under {root} go up to {labels.max()}, expected < 10"
        )
    # frombuffer gives a read-only view of the decompressed bytes; copy so callers own the array.
    return Dataset(images=images.copy(), labels=labels.astype(np.int64), classes=FASHION_MNIST_CLASSES)


def load_image_folder(root: Path, *, size: tuple[int, int] | None = None) -> Dataset:
    """Load an ImageFolder tree `root/<class>/<image>` as BGR images.

    Classes are the sub-directory names in sorted order (torchvision's convention, so label ids
    agree with models trained elsewhere). Files OpenCV cannot decode are skipped and counted in
    `Dataset.skipped`: one bad JPEG in a user's folder should not stop a benchmark.
    `size=(width, height)` resizes every image; without it all images must share one size,
    because the stream simulator and the models want a dense [N, H, W, 3] array.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DatasetError(
            f"image folder {root} has no class sub-directories (expected root/<class>/<image>)"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        for file in files:
            # imdecode from bytes rather than imread(path): imread fails on non-ASCII paths on
            # some platforms, and both return None for undecodable data.
            img = cv2.imdecode(np.fromfile(file, dtype=np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                skipped += 1
                continue
            if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
                img = cv2.resize(img, tuple(size), interpolation=cv2.INTER_AREA)
            images.append(img)
            labels.append(label)
    if not images:
        raise DatasetError(
            f"image folder {root} has classes {list(classes)} but no readable images ({skipped} unreadable)"
        )
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise DatasetError(
            f"images under {root} have {len(shapes)} different sizes (e.g. {sorted(shapes)[:3]}); "
            "pass size=(width, height) to resize them"
        )
    return Dataset(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
        skipped=skipped,
    )
