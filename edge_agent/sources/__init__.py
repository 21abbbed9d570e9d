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

from edge_agent.sources.base import (
    FILE_DONE,
    IMAGE_SUFFIXES,
    SOURCE_TYPES,
    STREAM_SCHEMES,
    VIDEO_SUFFIXES,
    Frame,
    FrameSource,
    SourceError,
)
from edge_agent.sources.factory import PacedSource, SourceSpec, open_source
from edge_agent.sources.files import ImageFolderSource, VideoFileSource
from edge_agent.sources.live import (
    CameraSource,
    GStreamerSource,
    LiveSource,
    StreamSource,
    has_gstreamer,
    redact_url,
)

__all__ = [
    "FILE_DONE", "IMAGE_SUFFIXES", "SOURCE_TYPES", "STREAM_SCHEMES", "VIDEO_SUFFIXES", "CameraSource", "Frame",
    "FrameSource", "GStreamerSource", "ImageFolderSource", "LiveSource", "PacedSource", "SourceError", "SourceSpec",
    "StreamSource", "VideoFileSource", "has_gstreamer", "open_source", "redact_url",
]
