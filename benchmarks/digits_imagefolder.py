"""B1's second dataset: scikit-learn's bundled handwritten digits written out as an ImageFolder.

    python -m benchmarks.digits_imagefolder OUT_DIR [--size 32] [--test-fraction 0.3]
    python -m benchmarks.flywheel --dataset OUT_DIR ...

Why this one: B1's defaults may only change when a change helps on Fashion-MNIST *and* on a
second dataset from another offline source. scikit-learn (installed with the bench extra, via
scikit-activeml) ships the UCI optical digits inside the wheel: 1,797 real 8x8 scans with 16
grey levels, 10 classes, nothing downloaded. They are small and few next to Fashion-MNIST (a
few hundred test images, ~125 training images per class), so B1 on them needs smaller rounds
(see the README's Results section for the command used).

Writes `OUT_DIR/train/<digit>/<n>.png` and `OUT_DIR/test/<digit>/<n>.png`: a stratified split
with a fixed seed, each image scaled to 0-255 and up to `--size` pixels with bicubic
interpolation (B1 then resizes to its own `--image-size`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np


def write_digits(out: Path, *, size: int = 32, test_fraction: float = 0.3, seed: int = 0) -> dict[str, int]:
    """Write the split; returns {"train": n, "test": n}. Refuses a non-empty OUT_DIR."""
    from sklearn.datasets import load_digits  # the bench extra's dependency, imported on use

    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new directory")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_test = round(test_fraction * len(members))
        for rank, index in enumerate(members):
            split = "test" if rank < n_test else "train"
            image = np.clip(digits.images[index] * (255.0 / 16.0), 0, 255).astype(np.uint8)
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(folder / f"{index:04d}.png"), image):
                raise OSError(f"could not write {folder / f'{index:04d}.png'}")
            counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.digits_imagefolder",
                                     description="Write scikit-learn's digits as an ImageFolder (train/ and test/) "
                                                 "for `python -m benchmarks.flywheel --dataset`.")
    parser.add_argument("out", type=Path, help="new or empty directory")
    parser.add_argument("--size", type=int, default=32, help="side of the written images in pixels (default 32)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of each class held out for testing")
    args = parser.parse_args(argv)
    if not 8 <= args.size <= 512 or not 0.05 <= args.test_fraction <= 0.9:
        parser.error("--size must be within 8..512 and --test-fraction within 0.05..0.9")
    try:
        counts = write_digits(args.out, size=args.size, test_fraction=args.test_fraction)
    except ModuleNotFoundError:
        print("scikit-learn is missing: install the bench extra (`make bench` does)", file=sys.stderr)
        return 2
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {counts['train']} training and {counts['test']} test images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
