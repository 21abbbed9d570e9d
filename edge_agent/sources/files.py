"""File sources: image folders and video files, resumable by (file, frame index)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from edge_agent.sources.base import (
    FILE_DONE,
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    Frame,
    SourceError,
)

log = logging.getLogger(__name__)


def _files(root: Path, suffixes: frozenset[str]) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.exists():
        return []
    # Hidden files are work in progress (writers rename them into place when complete).
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _mtime(path: Path) -> float | None:
    """None when the file vanished between listing and reading (rotation in a watched folder)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


class ImageFolderSource:
    """Still images under `root`; capture time = file modification time.

    With `watch=True` the folder is polled every `poll_interval_s` for new images (in name order)
    until `stop` is set. An image that cannot be decoded while it is younger than `settle_s` is
    retried on the next poll, since a writer that does not use a hidden temporary name may still
    be writing it; after that it is skipped with a warning.
    """

    live = False

    def __init__(self, root: Path, *, watch: bool = False, poll_interval_s: float = 0.5, settle_s: float = 5.0,
                 name: str = ""):
        self.root = Path(root)
        self.watch = watch
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self.name = name or self.root.name
        if not self.root.exists() and not watch:
            raise SourceError(f"image source {self.root} does not exist")

    def _name(self, path: Path) -> str:
        return path.name if self.root.is_file() else str(path.relative_to(self.root))

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        handled = set(resume or {})
        while not stop.is_set():
            for path in _files(self.root, IMAGE_SUFFIXES):
                if stop.is_set():
                    return
                name = self._name(path)
                if name in handled:
                    continue
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                mtime = _mtime(path)
                if mtime is None:
                    continue
                if image is None:
                    if self.watch and time.time() - mtime < self.settle_s:
                        continue  # maybe still being written: try again on the next poll
                    log.warning("skipping unreadable image %s", path)
                    handled.add(name)
                    continue
                handled.add(name)
                yield Frame(image=image, source=name, index=0, capture_time_ms=int(mtime * 1000),
                            last_in_file=True, source_name=self.name)
            if not self.watch:
                return
            stop.wait(self.poll_interval_s)


class VideoFileSource:
    """Frames of one video file or of every video file in a directory.

    Capture time: a recording's modification time is when it ended, so frame i was captured at
    mtime - frame_count / fps + i / fps. Replays of the same file give the same timestamps (and
    the same per-minute budget decisions).

    Only with `follow=True` does a file have to be complete (sidecar `.json`, or unchanged for
    `settle_s`) before it is read: without follow the user points at finished recordings, and a
    file copied a second ago must not be skipped silently.
    """

    live = False

    def __init__(self, root: Path, *, follow: bool = False, poll_interval_s: float = 0.5, settle_s: float = 5.0,
                 name: str = ""):
        self.root = Path(root)
        self.follow = follow
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self.name = name or self.root.name
        if not self.root.exists() and not follow:
            raise SourceError(f"video source {self.root} does not exist")

    def _is_complete(self, path: Path) -> bool:
        if not self.follow or path.with_suffix(".json").exists():
            return True
        mtime = _mtime(path)
        return mtime is not None and time.time() - mtime >= self.settle_s

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        """`resume` maps a file name to the last frame index already handled (FILE_DONE for a
        file handled to its end)."""
        handled = dict(resume or {})
        while not stop.is_set():
            pending = [p for p in _files(self.root, VIDEO_SUFFIXES)
                       if handled.get(self._name(p), -1) < FILE_DONE and self._is_complete(p)]
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
            mtime = _mtime(path)
            if mtime is None:
                return
            start_ms = int(mtime * 1000 - n_frames * 1000 / fps)
            ok, image = capture.read()
            index = 0
            while ok and not stop.is_set():
                # Read one frame ahead so the last frame of the file can say so.
                ok_next, image_next = capture.read()
                if index > last_done:
                    yield Frame(image=image, source=name, index=index,
                                capture_time_ms=start_ms + int(index * 1000 / fps), last_in_file=not ok_next,
                                source_name=self.name)
                ok, image, index = ok_next, image_next, index + 1
        finally:
            capture.release()
