"""Pacing (stride, max_fps) for any source, and `open_source`: the [source] config section to a
FrameSource."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.sources.base import (
    SOURCE_TYPES,
    STREAM_SCHEMES,
    Frame,
    FrameSource,
    SourceError,
)
from edge_agent.sources.files import ImageFolderSource, VideoFileSource
from edge_agent.sources.live import (
    CameraSource,
    GStreamerSource,
    StreamSource,
    redact_url,
)


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
