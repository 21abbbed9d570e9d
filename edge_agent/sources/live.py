"""Live sources: cameras, RTSP/HTTP streams and GStreamer pipelines, reconnecting forever."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2

from edge_agent.sources.base import Frame, SourceError
from edge_agent.transport import Backoff

log = logging.getLogger(__name__)


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
