"""Frame sources: where the agent's frames come from, all behind one `FrameSource` interface.

    open_source(SourceSpec) -> FrameSource          (validates the [source] config section)

File sources (`live = False`) give every frame a stable position (file name + frame index) so
the agent can record how far it got and resume there after a restart:

- `ImageFolderSource`: every image file under a directory, in name order; with `watch=True` it
  keeps polling for new images.
- `VideoFileSource`: one video file, or a directory of video files in name order. With
  `follow=True` it waits for new files (a camera's recording directory); a file counts as
  complete once its sidecar `<name>.json` exists or it has not grown for a while.

Live sources (`live = True`) ignore `resume`: a live frame index restarts at 0 after a restart,
so there is nothing to resume. They share `LiveSource`'s read loop, which reconnects forever
with backoff when the device or stream goes away:

- `CameraSource`: a USB/V4L2 camera by index or device path.
- `StreamSource`: an RTSP or HTTP(S) stream through OpenCV's FFmpeg backend.
- `GStreamerSource`: a GStreamer pipeline ending in `appsink` (Jetson CSI cameras).

`PacedSource` wraps any of them to keep every Nth frame and at most N frames per second of
capture time.

Errors: one exception, `SourceError`, for everything a user can get wrong or a device can refuse
(bad config, missing file, camera that cannot be opened at start). OpenCV's own `cv2.error` is
translated into it where captures are opened. Losing a live source after it worked is not an
error: the source logs, waits and reconnects, because the agent runs unattended.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge_agent.transport import Backoff

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v"})
# Progress marker for a file whose every frame was handled.
FILE_DONE = 1 << 62
SOURCE_TYPES = ("video", "images", "camera", "stream", "gstreamer")
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")


class SourceError(Exception):
    """A source cannot be opened or is configured wrongly; the message is for the user."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8 [H, W, 3]
    source: str  # file name the frame came from (relative to the source root); the source name for live sources
    index: int  # frame index within that file (0 for still images); frames since start for live sources
    capture_time_ms: int
    last_in_file: bool = False  # no frame of this file follows: the agent marks the file done
    source_name: str = ""  # configured name of the source ("cam0"), the same for every frame
    # Pacing dropped this frame; it is yielded only because it is the last of its file, so the
    # agent can mark the file done without scoring it. An agent that scores it anyway is correct.
    progress_only: bool = False


class FrameSource(Protocol):
    """What the agent reads frames from.

    `live` sources (cameras, streams) ignore `resume`; file sources skip what `resume` says was
    handled: a file name mapped to the last frame index handled, or FILE_DONE.
    """

    live: bool

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]: ...


# --- file sources ---------------------------------------------------------------------------


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


# --- live sources ---------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """`url` with any user:password replaced by ***, for log lines and error messages.

    Camera URLs routinely carry credentials (rtsp://admin:secret@...), and logs leave the device.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


@cache
def has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (pip's opencv-python cannot)."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(match) and match.group(1).upper() == "YES"


def _open_error(what: str, exc: cv2.error) -> SourceError:
    return SourceError(f"cannot open {what}: OpenCV refused it ({str(exc).strip().splitlines()[-1]})")


class LiveSource:
    """A capture that yields frames until stopped and reconnects when it is lost.

    `opener` returns a fresh `cv2.VideoCapture` (opened or not); it is called once at the start
    of `frames()` and again after every loss. Construction does no I/O, so building a source from
    the config is cheap and testable; the device is first touched by `check()` or `frames()`.
    Failing to open at the very start raises `SourceError` (a wrong address should stop the
    agent with a plain message; systemd restarts it). Once a capture has opened, a failed read or
    the end of the stream is a loss: release, log, wait with `Backoff` (jittered, capped at
    `reconnect_max_s`) and reopen, forever, counting `reconnects`.

    Frames: capture time is the wall clock at read; `index` counts frames since `frames()` began
    (it does not restart on reconnect). `stop` is noticed between reads and at once during the
    backoff waits; a read or open that blocks inside OpenCV returns within the capture's own
    timeout (see `StreamSource`).
    """

    live = True

    def __init__(self, *, name: str, address: str, opener: Callable[[], cv2.VideoCapture],
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 30.0):
        self.name = name
        self.address = address  # for messages only: never holds credentials
        self._opener = opener
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.reconnects = 0  # successful reopenings after a loss (a health counter for the heartbeat)
        self.connected = False

    def _failure_hint(self) -> str:
        return "is the address right and the device reachable?"

    def _open(self) -> cv2.VideoCapture | None:
        """An opened capture, or None. `cv2.error` counts as a failed open."""
        try:
            capture = self._opener()
        except cv2.error as exc:
            log.warning("opening %s failed: %s", self.address, str(exc).strip().splitlines()[-1])
            return None
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _open_first(self) -> cv2.VideoCapture:
        try:
            capture = self._opener()
        except cv2.error as exc:
            raise _open_error(self.address, exc) from exc
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.address}: no video could be read ({self._failure_hint()})")
        return capture

    def check(self) -> None:
        """Open once and release: raises SourceError with a plain message when it cannot open."""
        self._open_first().release()

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        del resume  # a live frame index restarts at 0 after a restart: nothing to resume
        capture: cv2.VideoCapture | None = self._open_first()
        self.connected = True
        log.info("reading %s", self.address)
        backoff = Backoff(self.reconnect_initial_s, self.reconnect_max_s)
        index = 0
        try:
            while capture is not None and not stop.is_set():
                ok, image = capture.read()
                if ok and image is not None:
                    backoff.reset()  # only after a frame: a server that accepts and hangs up must back off
                    yield Frame(image=image, source=self.name, index=index,
                                capture_time_ms=int(time.time() * 1000), source_name=self.name)
                    index += 1
                    continue
                capture.release()
                self.connected = False
                if stop.is_set():
                    return
                log.warning("lost %s after %d frames; reconnecting", self.address, index)
                capture = self._reopen(stop, backoff)
        finally:
            if capture is not None:
                capture.release()
            self.connected = False

    def _reopen(self, stop: threading.Event, backoff: Backoff) -> cv2.VideoCapture | None:
        """Wait and reopen until it works (returns the capture) or `stop` is set (returns None)."""
        attempt = 0
        while True:
            if stop.wait(backoff.next_delay()):
                return None
            attempt += 1
            capture = self._open()
            if capture is not None:
                self.reconnects += 1
                self.connected = True
                log.info("reconnected to %s after %d attempt(s)", self.address, attempt)
                return capture
            log.warning("cannot reopen %s (attempt %d); trying again", self.address, attempt)


def _camera_device(device: int | str) -> int | str:
    """A camera index (int) or a device path; digits in a string mean an index."""
    if isinstance(device, int):
        return device
    text = device.strip()
    if text.isdigit():
        return int(text)
    if not text.startswith("/"):
        raise SourceError(f"camera must be an index (0, 1, ...) or a device path like /dev/video0, got {device!r}")
    return text


class CameraSource(LiveSource):
    """A USB/V4L2 camera by index (0, "0") or device path ("/dev/video0", "/dev/v4l/by-id/...").

    `width`, `height` and `fps` (0 = the camera's default) are requested after every open, so a
    camera that is unplugged and plugged back gets the same mode; the camera may choose another
    one, which is logged.
    """

    def __init__(self, device: int | str, *, width: int = 0, height: int = 0, fps: float = 0.0, name: str = "",
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 30.0):
        self.device = _camera_device(device)
        self.width, self.height, self.fps = width, height, fps
        label = f"camera {self.device}"
        default_name = f"camera{self.device}" if isinstance(self.device, int) else Path(self.device).name
        super().__init__(name=name or default_name, address=label, opener=self._open_camera,
                         reconnect_initial_s=reconnect_initial_s, reconnect_max_s=reconnect_max_s)

    def _path(self) -> Path:
        return Path(f"/dev/video{self.device}") if isinstance(self.device, int) else Path(self.device)

    def _failure_hint(self) -> str:
        path = self._path()
        if sys.platform.startswith("linux") and not path.exists():
            return f"{path} does not exist; is the camera plugged in? `ls /dev/video*` lists cameras"
        return "is another program using it, and may this user read it (group video)?"

    def _open_camera(self) -> cv2.VideoCapture:
        # V4L2 directly on Linux: CAP_ANY would first try FFmpeg on a device path and log noise.
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        capture = cv2.VideoCapture(self.device, backend)
        if not capture.isOpened():
            return capture
        for prop, wanted in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                             (cv2.CAP_PROP_FPS, self.fps)):
            if wanted:
                capture.set(prop, float(wanted))
        if self.width or self.height or self.fps:
            log.info("%s gives %dx%d at %.1f fps (asked for %dx%d at %.1f)", self.address,
                     int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     capture.get(cv2.CAP_PROP_FPS), self.width, self.height, self.fps)
        return capture


class StreamSource(LiveSource):
    """An RTSP or HTTP(S) stream (MJPEG, H.264, ...) read with OpenCV's FFmpeg backend.

    `open_timeout_s` and `read_timeout_s` bound how long FFmpeg may block on a dead network, so a
    stalled camera counts as lost (and `stop` is noticed) within that time instead of hanging.
    Credentials in the URL reach FFmpeg but never a log line or error message.
    """

    def __init__(self, url: str, *, name: str = "", open_timeout_s: float = 10.0, read_timeout_s: float = 10.0,
                 reconnect_initial_s: float = 0.5, reconnect_max_s: float = 30.0):
        self.url = url
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        super().__init__(name=name or (urlsplit(url).hostname or "stream"), address=f"stream {redact_url(url)}",
                         opener=self._open_stream, reconnect_initial_s=reconnect_initial_s,
                         reconnect_max_s=reconnect_max_s)

    def _open_stream(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000),
        ])


class GStreamerSource(LiveSource):
    """A GStreamer pipeline ending in `appsink`, e.g. a Jetson CSI camera:

        nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1
          ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1

    pip's opencv-python wheels are built without GStreamer, so this checks the build at
    construction (cheap, no I/O) and says what to install instead of failing to open later.
    """

    def __init__(self, pipeline: str, *, name: str = "", reconnect_initial_s: float = 0.5,
                 reconnect_max_s: float = 30.0):
        if not has_gstreamer():
            raise SourceError(
                "this OpenCV build has no GStreamer support, so a GStreamer pipeline cannot be opened; "
                "on Jetson use the system OpenCV (apt install python3-opencv, built with GStreamer) instead of "
                "the opencv-python wheel, or read the camera as type \"camera\" (V4L2) or \"stream\" (RTSP)")
        if "appsink" not in pipeline:
            raise SourceError(f"a GStreamer pipeline for OpenCV must end in appsink, got {pipeline!r}")
        self.pipeline = pipeline
        super().__init__(name=name or "gstreamer", address=f"GStreamer pipeline {pipeline!r}",
                         opener=lambda: cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER),
                         reconnect_initial_s=reconnect_initial_s, reconnect_max_s=reconnect_max_s)

    def _failure_hint(self) -> str:
        return "run it with gst-launch-1.0 (fakesink instead of appsink) to see GStreamer's own error"


# --- pacing ---------------------------------------------------------------------------------


class PacedSource:
    """Thin out any source: keep every `stride`-th frame, then at most `max_fps` frames per second
    of capture time (0 = no cap).

    Why capture time and not wall time: a video file replays faster than real time, and the
    budget the user means is "5 frames per second of what the camera saw". A frame is dropped
    when its capture time is earlier than the last kept frame's + 1000/max_fps ms; a capture time
    that goes backwards (a new file, a clock correction) restarts the pacing instead of dropping
    everything until the clock catches up.

    The stride counts every frame the inner source yields in this run (across files), so it
    thins image folders too; after a restart it starts again at the first frame.

    File completion survives pacing: the last frame of a file is yielded even when pacing drops
    it, marked `progress_only=True`, so the agent still marks the file done (it may skip scoring
    it; scoring it is harmless). Such frames do not count as kept for the pacing clock.
    """

    def __init__(self, inner: FrameSource, *, stride: int = 1, max_fps: float = 0.0):
        if stride < 1:
            raise SourceError(f"stride must be 1 or more, got {stride}")
        if max_fps < 0:
            raise SourceError(f"max_fps must be 0 (no cap) or more, got {max_fps}")
        self.inner = inner
        self.stride = stride
        self.max_fps = max_fps
        self.live = inner.live
        self.name = getattr(inner, "name", "")
        self.dropped = 0  # frames thinned out (progress-only frames included)

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        interval_ms = 1000.0 / self.max_fps if self.max_fps > 0 else 0.0
        last_kept_ms: int | None = None
        for count, frame in enumerate(self.inner.frames(stop, resume)):
            keep = count % self.stride == 0
            if keep and interval_ms and last_kept_ms is not None:
                t = frame.capture_time_ms
                keep = t < last_kept_ms or t >= last_kept_ms + interval_ms
            if keep:
                last_kept_ms = frame.capture_time_ms
                yield frame
                continue
            self.dropped += 1
            if frame.last_in_file:
                yield replace(frame, progress_only=True)


# --- the factory ----------------------------------------------------------------------------


@dataclass
class SourceSpec:
    """The [source] config section; `open_source` turns it into a FrameSource."""

    type: str = "video"  # one of SOURCE_TYPES: video | images | camera | stream | gstreamer
    path: str = ""  # file/dir (video, images), camera index or /dev/videoN, rtsp/http URL, or GStreamer pipeline
    name: str = ""  # name carried on every frame; default: the path's basename, "camera0", the stream's host
    follow: bool = False  # video/images: keep watching the directory for new files instead of ending
    poll_interval_s: float = 0.5  # with follow: how often to look for new files
    max_fps: float = 0.0  # keep at most this many frames per second of capture time (0 = no cap)
    stride: int = 1  # keep every Nth frame of the source (1 = all)
    width: int = 0  # camera: requested frame width in pixels (0 = the camera's default)
    height: int = 0  # camera: requested frame height in pixels (0 = the camera's default)
    fps: float = 0.0  # camera: requested frame rate (0 = the camera's default)
    reconnect_initial_s: float = 0.5  # camera/stream/gstreamer: first wait before reopening a lost source
    reconnect_max_s: float = 30.0  # camera/stream/gstreamer: longest wait between reopen attempts


def _validate(spec: SourceSpec) -> None:
    if spec.type not in SOURCE_TYPES:
        raise SourceError(f"source.type must be one of {', '.join(SOURCE_TYPES)}; got {spec.type!r}")
    if not spec.path.strip():
        what = {"video": "a video file or directory", "images": "an image directory",
                "camera": "a camera index (0) or device path (/dev/video0)", "stream": "an rtsp:// or http:// URL",
                "gstreamer": "a GStreamer pipeline ending in appsink"}[spec.type]
        raise SourceError(f"source.path is empty: give {what}")
    if isinstance(spec.stride, bool) or not isinstance(spec.stride, int) or spec.stride < 1:
        raise SourceError(f"source.stride must be a whole number, 1 or more, got {spec.stride!r}")
    checks = (("max_fps", spec.max_fps, 0.0, "0 (no cap) or more"),
              ("width", spec.width, 0.0, "0 (camera default) or more"),
              ("height", spec.height, 0.0, "0 (camera default) or more"),
              ("fps", spec.fps, 0.0, "0 (camera default) or more"))
    for key, value, low, words in checks:
        if value < low:
            raise SourceError(f"source.{key} must be {words}, got {value!r}")
    for key, value in (("poll_interval_s", spec.poll_interval_s), ("reconnect_initial_s", spec.reconnect_initial_s)):
        if value <= 0:
            raise SourceError(f"source.{key} must be more than 0 seconds, got {value!r}")
    if spec.reconnect_max_s < spec.reconnect_initial_s:
        raise SourceError(f"source.reconnect_max_s ({spec.reconnect_max_s}) must be at least "
                          f"source.reconnect_initial_s ({spec.reconnect_initial_s})")
    live = spec.type in ("camera", "stream", "gstreamer")
    if live and spec.follow:
        raise SourceError(f'source.follow applies to "video" and "images"; a {spec.type} source runs until stopped')
    if spec.type != "camera" and (spec.width or spec.height or spec.fps):
        hint = " (put them in the pipeline's caps)" if spec.type == "gstreamer" else ""
        raise SourceError(f'source.width, height and fps apply to type "camera" only{hint}')
    if spec.type == "stream":
        parts = urlsplit(spec.path.strip())
        if parts.scheme.lower() not in STREAM_SCHEMES or not parts.hostname:
            raise SourceError(f"source.path must be an rtsp://, rtsps://, http:// or https:// URL for a stream, "
                              f"got {redact_url(spec.path)!r}")


def open_source(spec: SourceSpec) -> FrameSource:
    """Validate `spec` and build its source (no device I/O yet for live sources; see LiveSource).

    Raises SourceError with a message naming the config key for every mistake.
    """
    _validate(spec)
    path = spec.path.strip()
    reconnect = {"reconnect_initial_s": spec.reconnect_initial_s, "reconnect_max_s": spec.reconnect_max_s}
    source: FrameSource
    if spec.type == "video":
        source = VideoFileSource(Path(path), follow=spec.follow, poll_interval_s=spec.poll_interval_s, name=spec.name)
    elif spec.type == "images":
        source = ImageFolderSource(Path(path), watch=spec.follow, poll_interval_s=spec.poll_interval_s,
                                   name=spec.name)
    elif spec.type == "camera":
        source = CameraSource(path, width=spec.width, height=spec.height, fps=spec.fps, name=spec.name, **reconnect)
    elif spec.type == "stream":
        source = StreamSource(path, name=spec.name, **reconnect)
    else:
        source = GStreamerSource(path, name=spec.name, **reconnect)
    if spec.stride > 1 or spec.max_fps > 0:
        return PacedSource(source, stride=spec.stride, max_fps=spec.max_fps)
    return source
