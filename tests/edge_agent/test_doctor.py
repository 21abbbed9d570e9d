"""`edge-agent doctor` checks against real things: a trained bundle and a broken one, real gRPC
servers on 127.0.0.1:0 (one answering, one refusing the device, one too slow, one without the
Fleet service) and a closed port, real directories, a real image folder source."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.doctor import (
    CheckResult,
    check_clock,
    check_cloud,
    check_disk,
    check_model,
    check_source,
    exit_code,
    render_report,
)
from edge_agent.sources import ImageFolderSource, SourceError
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

SERVER_TIME_MS = 1_700_000_000_000

# ---------------------------------------------------------------- model


@pytest.fixture(scope="module")
def bundle(fashion_train, tmp_path_factory) -> Path:
    """A real bundle trained by the cloud's own code (shared helper in tests/conftest.py)."""
    from cloud_selector.cli import open_services
    from conftest import seed_model

    services = open_services(tmp_path_factory.mktemp("cloud"))
    try:
        return seed_model(services, fashion_train, tmp_path_factory.mktemp("seed"), per_class=2)
    finally:
        services.catalog.close()


def test_model_ok_reports_version_providers_and_latency(bundle):
    result = check_model(bundle, ["CPUExecutionProvider"])
    assert result.ok, result
    assert result.name == "model"
    assert "v1 " in result.detail and "CPUExecutionProvider" in result.detail
    assert "smoke run" in result.detail and " ms" in result.detail


def test_model_missing_accelerator_is_reported(bundle):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the fallback path cannot be shown here")
    result = check_model(bundle, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert not result.ok
    assert "CUDAExecutionProvider" in result.detail.split("not in use:")[1]
    assert "on CPUExecutionProvider" in result.detail  # it still loaded and ran on CPU
    assert "onnxruntime-gpu" in result.hint


def test_model_misspelt_provider_is_not_ok(bundle):
    result = check_model(bundle, ["CudaExecutionProvider"])
    assert not result.ok and "CudaExecutionProvider" in result.detail and "model.providers" in result.hint


def test_model_broken_bundle_is_not_ok(bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = check_model(empty, ["CPUExecutionProvider"])
    assert not result.ok and str(empty) in result.detail and "bundle_dir" in result.hint

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    onnx_file = next(tampered.glob("*.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])
    result = check_model(tampered, ["CPUExecutionProvider"])
    assert not result.ok and "sha256" in result.detail.lower()


# ---------------------------------------------------------------- source


def test_source_reads_one_frame_from_a_real_folder(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((48, 64, 3), 127, np.uint8))

    def open_and_read() -> tuple[int, int]:
        frame = next(ImageFolderSource(tmp_path).frames(threading.Event()))
        height, width = frame.image.shape[:2]
        return width, height

    result = check_source(open_and_read)
    assert result.ok and "64x48" in result.detail


def test_source_error_is_not_ok(tmp_path):
    def missing_folder() -> tuple[int, int]:
        ImageFolderSource(tmp_path / "missing")  # raises SourceError: the folder does not exist
        return 1, 1

    result = check_source(missing_folder)
    assert not result.ok and "does not exist" in result.detail and "source.path" in result.hint

    def os_error() -> tuple[int, int]:
        raise OSError(19, "No such device", "/dev/video7")

    result = check_source(os_error)
    assert not result.ok and "/dev/video7" in result.detail


def test_source_that_hangs_times_out():
    release = threading.Event()
    started = time.monotonic()
    try:
        result = check_source(lambda: (release.wait(), (1, 1))[1], timeout_s=0.3)
    finally:
        release.set()  # let the abandoned daemon thread finish
    assert time.monotonic() - started < 2
    assert not result.ok and "0.3 s" in result.detail and "camera" in result.hint


def test_source_empty_frame_and_bugs():
    assert not check_source(lambda: (0, 480)).ok

    def bug() -> tuple[int, int]:
        raise KeyError("a bug, not a camera problem")

    with pytest.raises(KeyError):
        check_source(bug)


def test_source_error_type_is_the_agents():
    def fails() -> tuple[int, int]:
        raise SourceError("gstreamer pipeline did not start")

    assert check_source(fails).detail == "gstreamer pipeline did not start"


# ---------------------------------------------------------------- cloud


class FixedTimeFleet(pb_grpc.FleetServicer):
    def __init__(self, delay_s: float = 0.0):
        self.requests: list[pb.HeartbeatRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.delay_s = delay_s

    def Heartbeat(self, request, context):  # noqa: N802 (generated name)
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        time.sleep(self.delay_s)
        return pb.HeartbeatResponse(server_time_ms=SERVER_TIME_MS)


class RefusingFleet(pb_grpc.FleetServicer):
    def __init__(self, code: grpc.StatusCode):
        self.code = code

    def Heartbeat(self, request, context):  # noqa: N802
        context.abort(self.code, "device token unknown or revoked")


def serve(servicer: pb_grpc.FleetServicer | None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    if servicer is not None:
        pb_grpc.add_FleetServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def fleet():
    """Start a Fleet server for a servicer; yields a function servicer -> channel."""
    started: list[tuple[grpc.Server, grpc.Channel]] = []

    def start(servicer):
        server, port = serve(servicer)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return channel

    yield start
    for server, channel in started:
        channel.close()
        server.stop(grace=0.5)


def test_cloud_ok_returns_server_time_and_marks_the_heartbeat(fleet):
    servicer = FixedTimeFleet()
    channel = fleet(servicer)
    server, credentials, server_time = check_cloud(channel, "cam-7", metadata=[("x-device-id", "cam-7"),
                                                                             ("authorization", "Bearer t0k")])
    assert server.ok and credentials.ok
    assert server_time == SERVER_TIME_MS
    (request,) = servicer.requests
    assert request.device_id == "cam-7" and request.status["doctor"] == "true" and request.agent_version
    assert servicer.metadata[0]["authorization"] == "Bearer t0k"


def test_cloud_unauthenticated_points_at_enrollment(fleet):
    server, credentials, server_time = check_cloud(fleet(RefusingFleet(grpc.StatusCode.UNAUTHENTICATED)), "cam-7")
    assert server.ok and not credentials.ok and server_time is None
    assert "cloud-selector devices add" in credentials.hint and "token" in credentials.hint
    assert "UNAUTHENTICATED" in credentials.detail


def test_cloud_permission_denied_is_an_id_mismatch(fleet):
    server, credentials, _ = check_cloud(fleet(RefusingFleet(grpc.StatusCode.PERMISSION_DENIED)), "cam-7")
    assert server.ok and not credentials.ok
    assert "cam-7" in credentials.detail and "device.id" in credentials.hint


def test_cloud_closed_port_is_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        started = time.monotonic()
        server, credentials, server_time = check_cloud(channel, "cam-7", timeout_s=3)
    finally:
        channel.close()
    assert time.monotonic() - started < 3.5
    assert not server.ok and "UNAVAILABLE" in server.detail
    assert "cloud.address" in server.hint and "firewall" in server.hint and "TLS" in server.hint
    assert credentials.skipped and not credentials.ok and server_time is None


def test_cloud_too_slow_is_deadline_exceeded(fleet):
    server, credentials, _ = check_cloud(fleet(FixedTimeFleet(delay_s=1.0)), "cam-7", timeout_s=0.2)
    assert not server.ok and "DEADLINE_EXCEEDED" in server.detail and "0.2 s" in server.detail
    assert credentials.skipped


def test_cloud_other_service_on_the_port(fleet):
    server, credentials, _ = check_cloud(fleet(None), "cam-7")
    assert not server.ok and "UNIMPLEMENTED" in server.detail and credentials.skipped


# ---------------------------------------------------------------- clock


def test_clock_within_and_beyond_the_allowed_skew():
    assert check_clock(SERVER_TIME_MS, SERVER_TIME_MS + 2_000).ok
    ahead = check_clock(SERVER_TIME_MS, SERVER_TIME_MS + 95_000)
    assert not ahead.ok and "95.0 s ahead" in ahead.detail and "NTP" in ahead.hint
    behind = check_clock(SERVER_TIME_MS, SERVER_TIME_MS - 31_000, max_skew_s=30)
    assert not behind.ok and "behind" in behind.detail
    unknown = check_clock(None, SERVER_TIME_MS)
    assert unknown.skipped and not unknown.ok


def test_clock_from_a_real_heartbeat(fleet):
    _, _, server_time = check_cloud(fleet(FixedTimeFleet()), "cam-7")
    # the fixed server time is years in the past: this device's clock is "ahead"
    result = check_clock(server_time, int(time.time() * 1000))
    assert not result.ok and "ahead" in result.detail


# ---------------------------------------------------------------- disk


def test_disk_creates_the_state_dir_and_leaves_no_probe(tmp_path):
    state = tmp_path / "var" / "lib" / "edge-agent"
    result = check_disk(state, spool_cap_bytes=1 << 20)
    assert result.ok, result
    assert state.is_dir() and list(state.iterdir()) == []
    assert "free" in result.detail


def test_disk_without_cap_is_ok(tmp_path):
    result = check_disk(tmp_path, 0)
    assert result.ok and "no outbox cap" in result.detail


def test_disk_state_dir_that_cannot_be_created(tmp_path):
    a_file = tmp_path / "regular-file"
    a_file.write_text("not a directory")
    result = check_disk(a_file / "state", 1 << 20)
    assert not result.ok and "cannot create" in result.detail and "state_dir" in result.hint


def test_disk_state_dir_that_is_a_file(tmp_path):
    a_file = tmp_path / "regular-file"
    a_file.write_text("not a directory")
    assert not check_disk(a_file, 1 << 20).ok


def test_disk_too_small_for_the_cap(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    result = check_disk(tmp_path, spool_cap_bytes=free)  # the 10 % headroom no longer fits
    assert not result.ok
    assert "free" in result.detail and "need" in result.detail and "+ 10%" in result.detail
    assert "lower the outbox cap" in result.hint


# ---------------------------------------------------------------- report


def test_report_lines_and_exit_code():
    results = [
        CheckResult("model", True, "v3 on CPUExecutionProvider"),
        CheckResult("server", False, "unreachable (UNAVAILABLE)", "check cloud.address"),
        CheckResult("credentials", False, "not checked: the server did not answer", skipped=True),
    ]
    assert render_report(results).splitlines() == [
        "ok   model: v3 on CPUExecutionProvider",
        "FAIL server: unreachable (UNAVAILABLE) -> check cloud.address",
        "skip credentials: not checked: the server did not answer",
    ]
    assert exit_code(results) == 1
    assert exit_code(results[:1]) == 0
    assert exit_code([]) == 0
