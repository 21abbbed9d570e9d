"""Frame sources: where the agent's frames come from.

A source yields `Frame` records. Each frame has a stable `position` (source name + frame index)
so the agent can record how far it got and resume there after a restart.

- `ImageFolderSource`: every image file under a directory, in name order.
- `VideoFileSource`: one video file, or a directory of video files in name order, read with
  OpenCV. With `follow=True` it waits for new files (a camera's recording directory); a file
  counts as complete once its sidecar `<name>.json` exists or it has not grown for a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v"})
# Progress marker for a file whose every frame was handled.
FILE_DONE = 1 << 62


class SourceError(Exception):
    """A source cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8 [H, W, 3]
    source: str  # file name the frame came from (relative to the source root)
    index: int  # frame index within that file (0 for still images)
    capture_time_ms: int
    last_in_file: bool = False  # no frame of this file follows: the agent marks the file done


def _files(root: Path, suffixes: frozenset[str]) -> list[Path]:
    if root.is_file():
        return [root]
    # Hidden files are work in progress (writers rename them into place when complete).
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


class ImageFolderSource:
    """Still images under `root`; capture time = file modification time."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.exists():
            raise SourceError(f"image source {self.root} does not exist")

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        done = resume or {}
        for path in _files(self.root, IMAGE_SUFFIXES):
            if stop.is_set():
                return
            name = path.name if self.root.is_file() else str(path.relative_to(self.root))
            if name in done:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("skipping unreadable image %s", path)
                continue
            yield Frame(image=image, source=name, index=0, capture_time_ms=int(path.stat().st_mtime * 1000),
                        last_in_file=True)


class VideoFileSource:
    """Frames of one video file or of every video file in a directory.

    Capture time: a recording's modification time is when it ended, so frame i was captured at
    mtime - frame_count / fps + i / fps. Replays of the same file give the same timestamps (and
    the same per-minute budget decisions).
    """

    def __init__(self, root: Path, *, follow: bool = False, poll_interval_s: float = 0.5, settle_s: float = 5.0):
        self.root = Path(root)
        self.follow = follow
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        if not self.root.exists() and not follow:
            raise SourceError(f"video source {self.root} does not exist")

    def _is_complete(self, path: Path) -> bool:
        if path.with_suffix(".json").exists():
            return True
        return time.time() - path.stat().st_mtime >= self.settle_s

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        """`resume` maps a file name to the last frame index already handled (FILE_DONE for a
        file handled to its end)."""
        handled = dict(resume or {})
        while not stop.is_set():
            pending = [
                p for p in (_files(self.root, VIDEO_SUFFIXES) if self.root.exists() else [])
                if handled.get(self._name(p), -1) < FILE_DONE and self._is_complete(p)
            ]
            for path in pending:
                name = self._name(path)
                yield from self._read(path, name, handled.get(name, -1), stop)
                handled[name] = FILE_DONE
                if stop.is_set():
                    return
            if not self.follow:
                return
            stop.wait(self.poll_interval_s)

    def _name(self, path: Path) -> str:
        return path.name if self.root.is_file() else str(path.relative_to(self.root))

    def _read(self, path: Path, name: str, last_done: int, stop: threading.Event) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            log.warning("skipping unreadable video %s", path)
            return
        try:
            fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
            fps = fps if 0.0 < fps <= 1000.0 else 30.0
            n_frames = max(0.0, capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
            start_ms = int(path.stat().st_mtime * 1000 - n_frames * 1000 / fps)
            ok, image = capture.read()
            index = 0
            while ok and not stop.is_set():
                # Read one frame ahead so the last frame of the file can say so.
                ok_next, image_next = capture.read()
                if index > last_done:
                    yield Frame(image=image, source=name, index=index,
                                capture_time_ms=start_ms + int(index * 1000 / fps), last_in_file=not ok_next)
                ok, image, index = ok_next, image_next, index + 1
        finally:
            capture.release()
