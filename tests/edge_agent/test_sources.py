"""Frame sources against real things: a real MJPEG-over-HTTP camera served on 127.0.0.1 and read
through OpenCV's FFmpeg backend, real video files written with cv2.VideoWriter, real image
folders. RTSP shares the FFmpeg code path with HTTP (StreamSource passes the URL to FFmpeg
unchanged); no RTSP server is available offline here, so RTSP itself is not exercised."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import free_port
from edge_agent.sources import (FILE_DONE, SOURCE_TYPES, CameraSource, Frame, FrameSource, GStreamerSource,
                                ImageFolderSource, PacedSource, SourceError, SourceSpec, StreamSource,
                                VideoFileSource, has_gstreamer, open_source, redact_url)

# --- a real MJPEG camera on loopback -------------------------------------------------------------

BLUE, GREEN = (255, 0, 0), (0, 255, 0)


def mjpeg_part(number: int, colour: tuple[int, int, int]) -> bytes:
    """One multipart JPEG part: a brightness ramp with the frame number drawn on it, and a solid
    block in the server's colour so a test can tell which server a frame came from."""
    image = np.full((120, 160, 3), (number * 7) % 200, np.uint8)
    image[:, :40] = colour
    cv2.putText(image, str(number), (50, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    body = jpeg.tobytes()
    return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"\r\n"


class _MjpegHandler(BaseHTTPRequestHandler):
    server: _MjpegHttpServer

    def log_message(self, *args) -> None:  # keep test output clean
        return

    def do_GET(self) -> None:
        camera = self.server.camera
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        with camera.lock:
            camera.connections.append(self.connection)
        sent = 0
        try:
            while not camera.closing.is_set():
                if camera.stall_after is not None and sent == camera.stall_after:
                    camera.closing.wait()  # a camera that keeps the socket open but sends nothing
                    return
                with camera.lock:
                    number = camera.frames_sent
                    camera.frames_sent += 1
                self.wfile.write(mjpeg_part(number, camera.colour))
                sent += 1
                time.sleep(camera.interval_s)
        except OSError:  # the client went away, or close() shut the socket under us
            return


class _MjpegHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    camera: MjpegCamera


class MjpegCamera:
    """An HTTP MJPEG camera (`multipart/x-mixed-replace`) on 127.0.0.1, like cheap IP cameras."""

    def __init__(self, port: int = 0, *, colour: tuple[int, int, int] = BLUE, stall_after: int | None = None,
                 interval_s: float = 0.02):
        self.colour = colour
        self.stall_after = stall_after
        self.interval_s = interval_s
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.frames_sent = 0
        self.httpd = _MjpegHttpServer(("127.0.0.1", port), _MjpegHandler)
        self.httpd.camera = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}/stream.mjpg"

    def close(self) -> None:
        """Stop listening and cut every open connection mid-stream (a camera losing power)."""
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone


@pytest.fixture
def camera():
    cam = MjpegCamera()
    yield cam
    cam.close()


def colour_of(frame: Frame) -> tuple[int, int, int]:
    block = frame.image[:, :40].reshape(-1, 3).mean(axis=0)
    return tuple(int(c > 128) * 255 for c in block)


@dataclass
class Reader:
    """Consumes a source in a thread, as the agent's loop does, so a test can stop it."""

    source: FrameSource
    stop: threading.Event
    frames: list[Frame]
    thread: threading.Thread

    @classmethod
    def start(cls, source: FrameSource) -> Reader:
        stop, frames = threading.Event(), []

        def consume() -> None:
            for frame in source.frames(stop):
                frames.append(frame)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        return cls(source, stop, frames, thread)

    def wait_for(self, n: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < n:
            assert time.monotonic() < deadline, f"only {len(self.frames)} of {n} frames arrived"
            time.sleep(0.01)

    def stop_within(self, seconds: float) -> float:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout=seconds)
        took = time.monotonic() - started
        assert not self.thread.is_alive(), f"the source did not stop within {seconds} s"
        return took


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- streams ------------------------------------------------------------------------------------


def test_stream_yields_distinct_frames_with_increasing_capture_times(camera):
    source = open_source(SourceSpec(type="stream", path=camera.url(), name="cam0"))
    assert isinstance(source, StreamSource) and source.live
    stop = threading.Event()
    frames = []
    before_ms = int(time.time() * 1000)
    for frame in source.frames(stop, resume={"cam0": 123}):  # live: resume is ignored
        frames.append(frame)
        if len(frames) == 8:
            stop.set()
    assert [f.index for f in frames] == list(range(8))
    assert {(f.source_name, f.source) for f in frames} == {("cam0", "cam0")}
    times = [f.capture_time_ms for f in frames]
    assert times == sorted(times) and times[0] >= before_ms and times[-1] > times[0]
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8
    brightness = [int(f.image[:, 100:].mean()) for f in frames]
    assert len(set(brightness)) == len(brightness), "each frame of the ramp is visibly different"
    assert source.reconnects == 0 and not source.connected


def test_stream_reconnects_after_the_camera_drops_and_comes_back(camera):
    source = StreamSource(camera.url(), name="cam0", reconnect_initial_s=0.05, reconnect_max_s=0.2)
    stop = threading.Event()
    port = camera.port
    replacement: list[MjpegCamera] = []

    frames = source.frames(stop)
    first = [next(frames) for _ in range(3)]
    assert {colour_of(f) for f in first} == {BLUE}
    camera.close()  # cut the connection mid-stream and refuse new ones for a while
    # The camera comes back on the same address 0.4 s later (the source meanwhile is refused).
    threading.Timer(0.4, lambda: replacement.append(MjpegCamera(port, colour=GREEN))).start()
    try:
        later = []
        for frame in frames:
            later.append(frame)
            if colour_of(frame) == GREEN and len([f for f in later if colour_of(f) == GREEN]) >= 3:
                break
            assert len(later) < 500
        assert source.reconnects >= 1
        indexes = [f.index for f in first + later]
        assert indexes == list(range(len(indexes))), "index counts frames since start, across reconnects"
        times = [f.capture_time_ms for f in first + later]
        assert times == sorted(times)
    finally:
        stop.set()
        frames.close()
        for cam in replacement:
            cam.close()


def test_stream_that_stalls_counts_as_lost_after_the_read_timeout():
    camera = MjpegCamera(stall_after=4)
    try:
        source = StreamSource(camera.url(), read_timeout_s=0.5, reconnect_initial_s=0.05, reconnect_max_s=0.1)
        stop = threading.Event()
        frames = source.frames(stop)
        got = [next(frames) for _ in range(6)]  # 4 from the first connection, then more after reconnecting
        assert source.reconnects >= 1 and len(got) == 6
        stop.set()
        frames.close()
    finally:
        camera.close()


def test_stop_ends_a_stream_promptly_while_reading_and_while_reconnecting(camera):
    reader = Reader.start(StreamSource(camera.url(), reconnect_initial_s=0.05))
    reader.wait_for(3)
    assert reader.stop_within(2.0) < 2.0

    # Long backoff: the source sits in a 5-10 s wait when stop comes.
    source = StreamSource(camera.url(), reconnect_initial_s=10.0, reconnect_max_s=10.0)
    reader = Reader.start(source)
    reader.wait_for(3)
    camera.close()
    wait_until(lambda: not source.connected, 5.0, "the source to notice the camera is gone")
    time.sleep(0.1)
    assert reader.stop_within(2.0) < 2.0
    assert source.reconnects == 0


def test_refused_stream_raises_at_start_without_leaking_credentials(caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent.sources")
    port = free_port()
    source = StreamSource(f"http://admin:hunter2@127.0.0.1:{port}/stream.mjpg")  # cheap: no I/O yet
    with pytest.raises(SourceError) as raised:
        source.check()
    with pytest.raises(SourceError):
        next(source.frames(threading.Event()))
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "cannot open" in message
    assert "hunter2" not in message and "hunter2" not in caplog.text


def test_redact_url_masks_user_and_password():
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/Streaming/101") == "rtsp://***@10.0.0.5:554/Streaming/101"
    assert redact_url("rtsp://user@cam.local/live") == "rtsp://***@cam.local/live"
    assert redact_url("http://10.0.0.5/video.mjpg") == "http://10.0.0.5/video.mjpg"
    assert redact_url("rtsp://a:b@c@host/x") == "rtsp://***@host/x"


# --- cameras and GStreamer ----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["/dev/video99", "99", 99])
def test_missing_camera_raises_at_start_with_the_device_in_the_message(device):
    source = CameraSource(device)  # constructing touches no device
    assert source.live and source.name in ("video99", "camera99")
    with pytest.raises(SourceError, match=r"camera (/dev/video)?99.*/dev/video99 does not exist"):
        next(source.frames(threading.Event()))
    spec_source = open_source(SourceSpec(type="camera", path=str(device), width=640, height=480, fps=15))
    with pytest.raises(SourceError, match="does not exist"):
        spec_source.check()


def test_gstreamer_says_in_plain_words_that_this_opencv_lacks_it():
    if has_gstreamer():
        pytest.skip("this OpenCV build has GStreamer")
    pipeline = "videotestsrc ! videoconvert ! video/x-raw,format=BGR ! appsink"
    for build in (lambda: GStreamerSource(pipeline), lambda: open_source(SourceSpec(type="gstreamer", path=pipeline))):
        with pytest.raises(SourceError) as raised:
            build()
        assert "this OpenCV build has no GStreamer support" in str(raised.value)
        assert "python3-opencv" in str(raised.value)


# --- video files and pacing ---------------------------------------------------------------------


def write_video(path: Path, n_frames: int = 40, fps: float = 20.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    assert writer.isOpened()
    for i in range(n_frames):
        image = np.full((120, 160, 3), (i * 5) % 250, np.uint8)
        cv2.putText(image, str(i), (40, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    return path


def agent_progress(frames: list[Frame]) -> dict[str, int]:
    """What the agent records per file: FILE_DONE for a file's last frame, else the index."""
    progress: dict[str, int] = {}
    for frame in frames:
        progress[frame.source] = max(progress.get(frame.source, -1), FILE_DONE if frame.last_in_file else frame.index)
    return progress


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    # Just written and without a sidecar .json: without follow it must be read at once.
    return write_video(tmp_path_factory.mktemp("videos") / "clip.avi")


def test_plain_video_reads_every_frame_and_marks_the_last(video):
    source = open_source(SourceSpec(type="video", path=str(video.parent)))
    assert isinstance(source, VideoFileSource) and not source.live
    frames = list(source.frames(threading.Event()))
    assert [f.index for f in frames] == list(range(40))
    assert [f.last_in_file for f in frames] == [False] * 39 + [True]
    assert {(f.source, f.source_name) for f in frames} == {("clip.avi", video.parent.name)}
    assert [b - a for a, b in zip([f.capture_time_ms for f in frames], [f.capture_time_ms for f in frames][1:])] \
        == [50] * 39


def test_stride_keeps_every_other_frame_and_the_file_still_ends_done(video):
    source = open_source(SourceSpec(type="video", path=str(video), name="clips", stride=2))
    assert isinstance(source, PacedSource) and not source.live
    frames = list(source.frames(threading.Event()))
    scored = [f for f in frames if not f.progress_only]
    assert [f.index for f in scored] == list(range(0, 40, 2))
    assert len(frames) == 21 and frames[-1].index == 39 and frames[-1].last_in_file and frames[-1].progress_only
    assert source.dropped == 20
    progress = agent_progress(frames)
    assert progress == {"clip.avi": FILE_DONE}
    assert list(source.frames(threading.Event(), progress)) == [], "a restart resumes after the finished file"


def test_max_fps_keeps_about_five_frames_per_second_of_capture_time(video):
    source = open_source(SourceSpec(type="video", path=str(video), max_fps=5))
    frames = list(source.frames(threading.Event()))
    scored = [f for f in frames if not f.progress_only]
    times = [f.capture_time_ms for f in scored]
    assert [f.index for f in scored] == list(range(0, 40, 4))  # 40 frames at 20 fps = 2 s -> 10 frames
    assert all(b - a >= 200 for a, b in zip(times, times[1:]))
    assert frames[-1].index == 39 and frames[-1].progress_only and agent_progress(frames) == {"clip.avi": FILE_DONE}


def test_stride_and_max_fps_combine(video):
    frames = list(PacedSource(VideoFileSource(video), stride=3, max_fps=4).frames(threading.Event()))
    scored = [f.index for f in frames if not f.progress_only]
    assert scored == [0, 6, 12, 18, 24, 30, 36]  # every 3rd frame, then >= 250 ms apart
    assert frames[-1].index == 39 and frames[-1].last_in_file


@dataclass
class ListSource:
    """A FrameSource over frames held in memory (a fake that really implements the interface)."""

    items: list[Frame]
    live: bool = True

    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]:
        yield from self.items


def test_max_fps_restarts_when_capture_time_goes_backwards():
    image = np.zeros((2, 2, 3), np.uint8)
    times = [10_000, 10_100, 10_600, 2_000, 2_100, 2_700]  # the clock was corrected backwards after 10_600
    inner = ListSource([Frame(image=image, source="cam", index=i, capture_time_ms=t) for i, t in enumerate(times)])
    kept = [f.capture_time_ms for f in PacedSource(inner, max_fps=2).frames(threading.Event())]
    assert kept == [10_000, 10_600, 2_000, 2_700]


# --- image folders ------------------------------------------------------------------------------


def write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((32, 32, 3), value, np.uint8))


def test_image_stride_marks_every_image_done(tmp_path):
    for i in range(6):
        write_image(tmp_path / "shots" / f"{i:03d}.png", i * 40)
    source = open_source(SourceSpec(type="images", path=str(tmp_path / "shots"), stride=3))
    frames = list(source.frames(threading.Event()))
    assert [f.source for f in frames if not f.progress_only] == ["000.png", "003.png"]
    assert agent_progress(frames) == {f"{i:03d}.png": FILE_DONE for i in range(6)}
    assert {f.source_name for f in frames} == {"shots"}


def test_image_folder_watch_picks_up_new_images_and_skips_hidden_ones(tmp_path):
    folder = tmp_path / "inbox"
    write_image(folder / "a.png", 10)
    source = open_source(SourceSpec(type="images", path=str(folder), follow=True, poll_interval_s=0.05, name="cam1"))
    assert isinstance(source, ImageFolderSource) and source.watch
    reader = Reader.start(source)
    reader.wait_for(1)
    write_image(folder / ".b.png", 200)  # still being written: hidden
    time.sleep(0.2)
    assert [f.source for f in reader.frames] == ["a.png"]
    (folder / ".b.png").rename(folder / "b.png")
    reader.wait_for(2)
    assert [f.source for f in reader.frames] == ["a.png", "b.png"]
    assert int(reader.frames[1].image.mean()) == 200 and reader.frames[1].source_name == "cam1"
    assert reader.stop_within(2.0) < 2.0
    assert len(reader.frames) == 2


def test_image_folder_resume_skips_handled_images(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name, 50)
    frames = list(ImageFolderSource(tmp_path).frames(threading.Event(), {"a.png": FILE_DONE, "b.png": FILE_DONE}))
    assert [f.source for f in frames] == ["c.png"]


# --- the factory --------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "words"), [
    (SourceSpec(type="webcam", path="0"), "source.type must be one of video, images, camera, stream, gstreamer"),
    (SourceSpec(type="video", path=""), "source.path is empty"),
    (SourceSpec(type="video", path="/nonexistent/clips"), "does not exist"),
    (SourceSpec(type="video", path="/tmp", stride=0), "source.stride must be a whole number, 1 or more"),
    (SourceSpec(type="video", path="/tmp", max_fps=-1), "source.max_fps must be 0 (no cap) or more"),
    (SourceSpec(type="stream", path="ftp://cam/x"), "must be an rtsp://, rtsps://, http:// or https:// URL"),
    (SourceSpec(type="stream", path="rtsp://u:pw@/x"), "rtsp://***@/x"),
    (SourceSpec(type="stream", path="rtsp://cam/x", follow=True), "source.follow applies to"),
    (SourceSpec(type="stream", path="rtsp://cam/x", width=640), "apply to type \"camera\" only"),
    (SourceSpec(type="camera", path="front"), "camera must be an index"),
    (SourceSpec(type="camera", path="0", reconnect_initial_s=5, reconnect_max_s=1), "reconnect_max_s"),
    (SourceSpec(type="camera", path="0", reconnect_initial_s=0), "reconnect_initial_s must be more than 0"),
])
def test_open_source_rejects_mistakes_in_plain_words(spec, words):
    with pytest.raises(SourceError) as raised:
        open_source(spec)
    assert words in str(raised.value)


def test_open_source_builds_each_type_without_touching_devices():
    assert SOURCE_TYPES == ("video", "images", "camera", "stream", "gstreamer")
    cam = open_source(SourceSpec(type="camera", path="0"))
    assert isinstance(cam, CameraSource) and cam.device == 0 and cam.name == "camera0"
    by_path = open_source(SourceSpec(type="camera", path="/dev/video2", name="front"))
    assert isinstance(by_path, CameraSource) and by_path.device == "/dev/video2" and by_path.name == "front"
    stream = open_source(SourceSpec(type="stream", path="rtsp://admin:pw@10.1.2.3:554/ch1", max_fps=2))
    assert isinstance(stream, PacedSource) and stream.live and stream.name == "10.1.2.3"
    assert isinstance(stream.inner, StreamSource) and "pw" not in stream.inner.address
