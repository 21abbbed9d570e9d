"""The Ingest service: store each uploaded candidate durably, then ack it.

Idempotent on candidate_id: a resend of something already stored is acked ALREADY_STORED and
changes nothing. The blob is written (and fsynced) before the row, and the ack is sent only
after the row commits, so an acked candidate is always readable. A crash between blob and row
leaves an unreferenced blob under the candidate's own key, which the resend overwrites.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass

from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import Catalog, now_ms, pack_floats
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_REASONS = {
    pb.KEEP_REASON_UNCERTAINTY: "uncertainty",
    pb.KEEP_REASON_NOVELTY: "novelty",
    pb.KEEP_REASON_RANDOM: "random",
    pb.KEEP_REASON_MANUAL: "manual",
}


@dataclass(frozen=True)
class IngestLimits:
    max_jpeg_bytes: int = 4 * 1024 * 1024
    max_embedding_dim: int = 4096
    max_classes: int = 10_000
    max_metadata_items: int = 64
    max_metadata_chars: int = 1024
    max_id_chars: int = 128


class InvalidCandidate(ValueError):
    pass


def validate(c: pb.Candidate, limits: IngestLimits) -> None:
    try:
        if str(uuid.UUID(c.candidate_id)) != c.candidate_id.lower():
            raise ValueError
    except ValueError:
        raise InvalidCandidate(f"candidate_id {c.candidate_id[:64]!r} is not a UUID") from None
    if not c.device_id or len(c.device_id) > limits.max_id_chars:
        raise InvalidCandidate("device_id is empty or too long")
    if not c.jpeg or len(c.jpeg) > limits.max_jpeg_bytes:
        raise InvalidCandidate(f"jpeg is empty or larger than {limits.max_jpeg_bytes} bytes")
    if not c.jpeg.startswith(b"\xff\xd8"):
        raise InvalidCandidate("jpeg does not start with a JPEG marker")
    if not 0 < len(c.embedding) <= limits.max_embedding_dim:
        raise InvalidCandidate(f"embedding must have 1..{limits.max_embedding_dim} values")
    if len(c.probabilities) > limits.max_classes:
        raise InvalidCandidate("too many class probabilities")
    if not all(math.isfinite(v) for v in (*c.embedding, *c.probabilities)):
        raise InvalidCandidate("embedding or probabilities contain non-finite values")
    if len(c.metadata) > limits.max_metadata_items or any(
        len(k) + len(v) > limits.max_metadata_chars for k, v in c.metadata.items()
    ):
        raise InvalidCandidate("metadata has too many or too long entries")
    if not (0 < c.width <= 16384 and 0 < c.height <= 16384):
        raise InvalidCandidate("width/height out of range")


class IngestService(pb_grpc.IngestServicer):
    def __init__(self, catalog: Catalog, blobs: BlobStore, limits: IngestLimits | None = None):
        self.catalog = catalog
        self.blobs = blobs
        self.limits = limits or IngestLimits()

    def Upload(self, request_iterator, context):
        for candidate in request_iterator:
            yield self.store(candidate)

    def store(self, c: pb.Candidate) -> pb.Ack:
        try:
            validate(c, self.limits)
        except InvalidCandidate as exc:
            log.warning("rejected candidate from %s: %s", c.device_id[:64], exc)
            return pb.Ack(candidate_id=c.candidate_id[:128], status=pb.ACK_STATUS_REJECTED, detail=str(exc))
        cid = c.candidate_id.lower()
        if self.catalog.has_candidate(cid):
            return pb.Ack(candidate_id=c.candidate_id, status=pb.ACK_STATUS_ALREADY_STORED)
        key = f"candidates/{cid[:2]}/{cid}.jpg"
        self.blobs.put(key, c.jpeg)
        inserted = self.catalog.insert_candidate({
            "id": cid, "device_id": c.device_id, "capture_time_ms": c.capture_time_ms, "received_ms": now_ms(),
            "model_version": c.model_version, "blob_key": key, "jpeg_bytes": len(c.jpeg),
            "width": c.width, "height": c.height, "embedding": pack_floats(c.embedding),
            "probabilities": pack_floats(c.probabilities),
            "least_confidence": c.scores.least_confidence, "margin": c.scores.margin, "entropy": c.scores.entropy,
            "novelty": c.scores.novelty, "combined": c.scores.combined,
            "reason": _REASONS.get(c.reason, "unspecified"), "extra": json.dumps(dict(c.metadata)),
        })
        status = pb.ACK_STATUS_STORED if inserted else pb.ACK_STATUS_ALREADY_STORED
        return pb.Ack(candidate_id=c.candidate_id, status=status)
