"""The Models and Fleet services: model assignments, chunked bundle downloads, heartbeats.

Watch streams send each device its target version (cloud_selector/releases.py: pin, running
rollout, channel) whenever it differs from what the device runs. The targets come from one
`Plan` shared by all streams and re-read once per poll interval, so another process (a CLI
`models promote`, the rollout controller of another replica) moves devices within about one
interval. An assignment to a version older than the device's carries the signed revocation
that lets the device go back; without one the device is not sent anything.

Every RPC first authenticates the caller from metadata (see cloud_selector/auth.py) and refuses
a request that names another device (PERMISSION_DENIED) before anything is read or written.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from cloud_selector import rollouts
from cloud_selector.auth import AllowUnauthenticated, Authenticator, check_claim
from cloud_selector.blobstore import BlobError, BlobStore
from cloud_selector.catalog import Catalog, now_ms
from cloud_selector.registry import bundle_key
from cloud_selector.releases import Plan, ReleaseError, Releases, Target, channel_name
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1024 * 1024
_INSTALL_STATUS = {
    pb.INSTALL_STATUS_INSTALLED: "installed",
    pb.INSTALL_STATUS_FAILED: "failed",
    pb.INSTALL_STATUS_ROLLED_BACK: "rolled_back",
    pb.INSTALL_STATUS_HEALTHY: "healthy",
}
# How often an open Watch stream refreshes its device's "last seen" (rollout membership).
_SEEN_EVERY_S = 30.0


def assignment_for(record: dict, target: Target | None = None) -> pb.ModelAssignment:
    target = target or Target(record["version"])
    return pb.ModelAssignment(
        model_name=record["name"],
        version=record["version"],
        files=[pb.BundleFile(path=f["path"], sha256=f["sha256"], size=f["size"]) for f in record["files"]],
        rollout_id=target.rollout_id,
        health_frames=target.health_frames,
    )


def health_dict(health: pb.ModelHealth) -> dict | None:
    if not health.ByteSize():
        return None
    return {field.name: round(value, 4) if isinstance(value, float) else value
            for field, value in health.ListFields()}


class _SharedPlan:
    """One Plan for all Watch streams, re-read at most once per `max_age_s`."""

    def __init__(self, releases: Releases, max_age_s: float):
        self._releases = releases
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._plan: Plan | None = None
        self._read_at = 0.0

    def get(self) -> Plan:
        with self._lock:
            if self._plan is None or time.monotonic() - self._read_at >= self._max_age_s:
                self._plan = self._releases.plan()
                self._read_at = time.monotonic()
            return self._plan


class ModelsService(pb_grpc.ModelsServicer):
    def __init__(self, catalog: Catalog, blobs: BlobStore, *, stop: threading.Event, poll_interval_s: float = 1.0,
                 max_chunk_bytes: int = DEFAULT_CHUNK_BYTES, auth: Authenticator | None = None,
                 releases: Releases | None = None):
        self.catalog = catalog
        self.blobs = blobs
        self.auth = auth or AllowUnauthenticated()
        self.releases = releases or Releases(catalog)
        self._stop = stop
        self.poll_interval_s = poll_interval_s
        self.max_chunk_bytes = max_chunk_bytes
        self._plan = _SharedPlan(self.releases, poll_interval_s)
        self._records: dict[int, dict] = {}  # published model rows never change

    def Watch(self, request, context):
        device_id = self.auth.authenticate(context)
        check_claim(context, device_id, request.device_id, "watch request")
        try:
            channel = channel_name(request.channel)
        except ReleaseError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.releases.saw(device_id, channel=channel, version=request.current_version)
        running, sent, seen_at = request.current_version, None, time.monotonic()
        while context.is_active() and not self._stop.is_set():
            if not self.auth.still_valid(device_id):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"device {device_id} was revoked")
            if time.monotonic() - seen_at >= _SEEN_EVERY_S:
                self.releases.saw(device_id)
                seen_at = time.monotonic()
            plan = self._plan.get()
            running = plan.versions.get(device_id, running)  # ReportInstall keeps it current
            target = plan.target_for(device_id, channel)
            # Once per (target, what the device runs) on this stream, even when it was not
            # sendable: a refused assignment is not repeated until something changes.
            if target is not None and target.version != running and (target, running) != sent:
                assignment = self._assignment(device_id, target, running)
                if assignment is not None:
                    yield assignment
                sent = (target, running)
            self._stop.wait(self.poll_interval_s)

    def _assignment(self, device_id: str, target: Target, running: int) -> pb.ModelAssignment | None:
        record = self._records.get(target.version) or self.catalog.model(target.version)
        if record is None:
            log.error("device %s: target v%d is not in the catalog", device_id, target.version)
            return None
        self._records[target.version] = record
        assignment = assignment_for(record, target)
        if target.version < running:
            revocation = self.releases.revocation(running, target.version)
            if revocation is None:
                log.warning("device %s runs v%d but should run the older v%d, and no revocation of v%d says so; "
                            "not sending it back", device_id, running, target.version, running)
                return None
            assignment.revocation, assignment.revocation_signature = revocation
        return assignment

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
        detail, health = request.detail[:2000], health_dict(request.health)
        self.catalog.record_install(device_id=device_id[:128], version=request.version, status=status,
                                    detail=detail, smoke_latency_ms=request.smoke_latency_ms)
        if status in ("installed", "healthy"):
            self.releases.saw(device_id[:128], version=request.version)
        rollouts.record_report(self.catalog, device_id[:128], rollout_id=request.rollout_id[:36],
                               version=request.version, status=status, detail=detail, health=health)
        log.info("device %s: model v%d %s %s", device_id[:64], request.version, status, detail[:200])
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
