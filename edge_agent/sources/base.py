"""The records and the interface every frame source shares."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

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
