"""The Models and Fleet services: model assignments, chunked bundle downloads, heartbeats.

Watch streams poll the catalog for the newest published version (another process, such as
`cloud-selector train`, may publish), and send an assignment whenever it is newer than what
the device reported or last received.

Every RPC first authenticates the caller from metadata (see cloud_selector/auth.py) and refuses
a request that names another device (PERMISSION_DENIED) before anything is read or written.
"""

from __future__ import annotations

import logging
import threading

import grpc

from cloud_selector.auth import AllowUnauthenticated, Authenticator, check_claim
from cloud_selector.blobstore import BlobError, BlobStore
from cloud_selector.catalog import Catalog, now_ms
from cloud_selector.registry import bundle_key
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1024 * 1024
_INSTALL_STATUS = {
    pb.INSTALL_STATUS_INSTALLED: "installed",
    pb.INSTALL_STATUS_FAILED: "failed",
    pb.INSTALL_STATUS_ROLLED_BACK: "rolled_back",
}


def assignment_for(record: dict) -> pb.ModelAssignment:
    return pb.ModelAssignment(
        model_name=record["name"],
        version=record["version"],
        files=[pb.BundleFile(path=f["path"], sha256=f["sha256"], size=f["size"]) for f in record["files"]],
    )


class ModelsService(pb_grpc.ModelsServicer):
    def __init__(self, catalog: Catalog, blobs: BlobStore, *, stop: threading.Event, poll_interval_s: float = 1.0,
                 max_chunk_bytes: int = DEFAULT_CHUNK_BYTES, auth: Authenticator | None = None):
        self.catalog = catalog
        self.blobs = blobs
        self.auth = auth or AllowUnauthenticated()
        self._stop = stop
        self.poll_interval_s = poll_interval_s
        self.max_chunk_bytes = max_chunk_bytes

    def Watch(self, request, context):
        device_id = self.auth.authenticate(context)
        check_claim(context, device_id, request.device_id, "watch request")
        sent = request.current_version
        while context.is_active() and not self._stop.is_set():
            if not self.auth.still_valid(device_id):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"device {device_id} was revoked")
            latest = self.catalog.latest_model()
            if latest is not None and latest["version"] > sent:
                yield assignment_for(latest)
                sent = latest["version"]
            self._stop.wait(self.poll_interval_s)

    def Fetch(self, request, context):
        device_id = self.auth.authenticate(context)
        check_claim(context, device_id, request.device_id, "fetch request")
        record = self.catalog.model(request.version)
        files = {f["path"]: f for f in record["files"]} if record else {}
        if request.path not in files:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no file {request.path!r} in model v{request.version}")
        total = files[request.path]["size"]
        if request.offset > total:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} beyond size {total}")
        chunk = min(request.max_chunk_bytes or self.max_chunk_bytes, self.max_chunk_bytes)
        offset = request.offset
        key = bundle_key(request.version, request.path)
        try:
            while offset < total and context.is_active():
                data = self.blobs.get_range(key, offset, chunk)
                if not data:
                    break
                yield pb.ModelChunk(offset=offset, data=data, total_size=total)
                offset += len(data)
        except BlobError as exc:
            context.abort(grpc.StatusCode.DATA_LOSS, str(exc))

    def ReportInstall(self, request, context):
        device_id = self.auth.authenticate(context)
        check_claim(context, device_id, request.device_id, "install report")
        status = _INSTALL_STATUS.get(request.status, "unspecified")
        self.catalog.record_install(device_id=request.device_id[:128], version=request.version, status=status,
                                    detail=request.detail[:2000], smoke_latency_ms=request.smoke_latency_ms)
        log.info("device %s: model v%d %s %s", request.device_id[:64], request.version, status, request.detail[:200])
        return pb.InstallReportAck()


class FleetService(pb_grpc.FleetServicer):
    def __init__(self, catalog: Catalog, *, auth: Authenticator | None = None):
        self.catalog = catalog
        self.auth = auth or AllowUnauthenticated()

    def Heartbeat(self, request, context):
        device_id = self.auth.authenticate(context)
        check_claim(context, device_id, request.device_id, "heartbeat")
        if not request.device_id or len(request.device_id) > 128:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id is empty or too long")
        self.catalog.record_heartbeat({
            "id": request.device_id, "model_version": request.model_version, "frames_seen": request.frames_seen,
            "frames_kept": request.frames_kept, "candidates_acked": request.candidates_acked,
            "spool_depth": request.spool_depth, "spool_bytes": request.spool_bytes, "fps": request.fps,
            "status": {**dict(list(request.status.items())[:32]), **health(request)},
        })
        return pb.HeartbeatResponse(server_time_ms=now_ms())


def health(request: pb.HeartbeatRequest) -> dict:
    """The heartbeat's typed health fields, kept in the device row's status JSON (next to the
    device's free-form status) until the catalog gets migrations for columns of their own."""
    return {
        "agent_version": request.agent_version[:64],
        "inference_p50_ms": round(request.inference_p50_ms, 3),
        "inference_p99_ms": round(request.inference_p99_ms, 3),
        "candidates_evicted": request.candidates_evicted,
        "candidates_rejected": request.candidates_rejected,
        "bytes_uploaded": request.bytes_uploaded,
        "spool_cap_bytes": request.spool_cap_bytes,
        "clock_skew_ms": now_ms() - request.device_time_ms if request.device_time_ms else None,
    }
