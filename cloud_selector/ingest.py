"""The Ingest service: authenticate the device, check each uploaded candidate, store it durably, ack it.

Idempotent on candidate_id: a resend of something already stored is acked ALREADY_STORED and
changes nothing. The blob is written (and fsynced) before the row, and the ack is sent only
after the row commits, so an acked candidate is always readable. A crash between blob and row
leaves an unreferenced blob under the candidate's own key, which the resend overwrites.

What a stream goes through, cheapest first, so a bad or hostile device costs little:
1. the caller is authenticated from call metadata before the first message is read
   (UNAUTHENTICATED ends the call, nothing is written);
2. gRPC's receive limit (`create_server(max_message_bytes=...)`) refuses oversized messages
   with RESOURCE_EXHAUSTED before they reach us;
3. per message: a candidate naming another device ends the stream with PERMISSION_DENIED, and
   a device over its token bucket (`RateLimit`) with RESOURCE_EXHAUSTED. Acks already sent stay
   valid; the agent resends what was not acked after its backoff;
4. per candidate, answered with a REJECTED ack (never resent): ids, sizes, the JPEG's pixel
   count read from its frame header BEFORE decoding, width/height against that header, vector
   lengths against the model version's manifest when the catalog knows it, and finally a full
   decode, so a stored JPEG is known to open.

Forward compatibility: a newer agent may send fields this server does not know. protobuf keeps
them as unknown fields and we ignore them; the candidate is stored like any other.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import grpc
import numpy as np

from cloud_selector.auth import AllowUnauthenticated, Authenticator, check_claim
from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import MAX_LABEL_CHARS, Catalog, now_ms, pack_floats
from edge_agent.embedding_codec import decode_int8
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_REASONS = {
    pb.KEEP_REASON_UNCERTAINTY: "uncertainty",
    pb.KEEP_REASON_NOVELTY: "novelty",
    pb.KEEP_REASON_RANDOM: "random",
    pb.KEEP_REASON_MANUAL: "manual",
}
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class IngestLimits:
    max_jpeg_bytes: int = 4 * 1024 * 1024
    # Checked from the JPEG header before decoding: a small file can declare a huge image, and
    # decoding 40 MP already takes ~120 MB of memory per concurrent upload.
    max_pixels: int = 40_000_000
    max_side: int = 16384
    max_embedding_dim: int = 4096
    max_classes: int = 10_000
    max_metadata_items: int = 64
    max_metadata_chars: int = 1024
    max_id_chars: int = 128


@dataclass(frozen=True)
class RateLimit:
    """Candidates per second per device: a token bucket refilled at `per_s` holding at most
    `burst`. The default is generous (a camera keeps a few frames a minute); per_s <= 0 is off."""

    per_s: float = 50.0
    burst: int = 200


@dataclass(frozen=True)
class ModelShape:
    """What a model version's outputs look like, from its manifest (0 = unknown, not checked)."""

    embedding_dim: int
    num_classes: int
    classes: tuple[str, ...] = ()  # the manifest's class names, in output order


def predicted_class(probabilities, classes: tuple[str, ...]) -> tuple[str | None, float | None]:
    """(name, probability) of the most probable class, the first listed on a tie; (None, None)
    when the class list is unknown or does not match the vector (the dashboard's "unknown").
    Stored with the candidate at ingest (candidates.predicted_class / predicted_prob)."""
    if not classes or len(probabilities) != len(classes):
        return None, None
    best = int(np.argmax(np.asarray(probabilities, dtype=np.float64)))
    if len(classes[best]) > MAX_LABEL_CHARS:  # not a name the catalog can hold
        return None, None
    return classes[best], float(probabilities[best])


class InvalidCandidate(ValueError):
    pass


class TokenBuckets:
    """One token bucket per device. Thread-safe; forgets full (idle) buckets when it holds many."""

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        """Spend one token for `key`; False when its bucket is empty."""
        if self.limit.per_s <= 0:
            return True
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.per_s)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > self._max_keys:
                self._forget_full(now)
        return allowed

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.limit.per_s >= self.limit.burst]
        for key in full:
            del self._buckets[key]


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's first frame header (SOF), without decoding anything."""
    if not data.startswith(b"\xff\xd8"):
        raise InvalidCandidate("jpeg does not start with a JPEG marker")
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise InvalidCandidate("jpeg header is malformed (expected a marker)")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers carry no length
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):  # stray byte, second SOI, EOI or scan data before a frame header
            break
        if pos + 2 > end:
            break
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            raise InvalidCandidate("jpeg header is malformed (bad segment length)")
        if marker in _SOF_MARKERS:
            if length < 8 or pos + 7 > end:
                break
            height = int.from_bytes(data[pos + 3:pos + 5], "big")
            width = int.from_bytes(data[pos + 5:pos + 7], "big")
            return width, height
        pos += length
    raise InvalidCandidate("jpeg has no frame header (SOF) before its image data")


def validate(c: pb.Candidate, limits: IngestLimits) -> None:
    """Every check that needs neither the catalog nor a decode; raises InvalidCandidate."""
    try:
        if str(uuid.UUID(c.candidate_id)) != c.candidate_id.lower():
            raise ValueError
    except ValueError:
        raise InvalidCandidate(f"candidate_id {c.candidate_id[:64]!r} is not a UUID") from None
    if not c.device_id or len(c.device_id) > limits.max_id_chars:
        raise InvalidCandidate("device_id is empty or too long")
    if not c.jpeg or len(c.jpeg) > limits.max_jpeg_bytes:
        raise InvalidCandidate(f"jpeg is empty or larger than {limits.max_jpeg_bytes} bytes")
    width, height = jpeg_size(c.jpeg)
    if width * height > limits.max_pixels:
        raise InvalidCandidate(f"jpeg declares {width}x{height} = {width * height} pixels, "
                               f"more than the limit of {limits.max_pixels}")
    if not (0 < c.width <= limits.max_side and 0 < c.height <= limits.max_side):
        raise InvalidCandidate("width/height out of range")
    if (c.width, c.height) != (width, height):
        raise InvalidCandidate(f"width/height {c.width}x{c.height} do not match the jpeg's {width}x{height}")
    if c.embedding and c.embedding_int8:
        raise InvalidCandidate("embedding and embedding_int8 are both set (send one)")
    if not 0 < embedding_dim(c) <= limits.max_embedding_dim:
        raise InvalidCandidate(f"embedding must have 1..{limits.max_embedding_dim} values")
    if c.embedding_int8 and not (math.isfinite(c.embedding_scale) and c.embedding_scale >= 0):
        raise InvalidCandidate("embedding_scale must be a finite number >= 0")
    if len(c.probabilities) > limits.max_classes:
        raise InvalidCandidate("too many class probabilities")
    if not all(math.isfinite(v) for v in (*c.embedding, *c.probabilities)):
        raise InvalidCandidate("embedding or probabilities contain non-finite values")
    if len(c.metadata) > limits.max_metadata_items or any(
        len(k) + len(v) > limits.max_metadata_chars for k, v in c.metadata.items()
    ):
        raise InvalidCandidate("metadata has too many or too long entries")


def embedding_dim(c: pb.Candidate) -> int:
    return len(c.embedding_int8) or len(c.embedding)


def candidate_embedding(c: pb.Candidate) -> np.ndarray:
    """The embedding as float32, from whichever of the two wire forms the agent sent."""
    if c.embedding_int8:
        return decode_int8(c.embedding_int8, c.embedding_scale)
    return np.asarray(c.embedding, dtype=np.float32)


def check_shape(c: pb.Candidate, shape: ModelShape) -> None:
    """Vector lengths must fit the model version that scored the frame, when it is known."""
    if shape.embedding_dim and embedding_dim(c) != shape.embedding_dim:
        raise InvalidCandidate(f"embedding has {embedding_dim(c)} values, model v{c.model_version} "
                               f"produces {shape.embedding_dim}")
    if shape.num_classes and len(c.probabilities) != shape.num_classes:
        raise InvalidCandidate(f"{len(c.probabilities)} class probabilities, model v{c.model_version} "
                               f"has {shape.num_classes} classes")


def check_decodes(c: pb.Candidate) -> None:
    """Decode the whole JPEG (the last and costliest check) so a stored image is known to open.

    Truncation, a missing end marker and broken headers or tables fail here. libjpeg conceals
    damage inside the compressed scan data (it warns on stderr and fills the blocks), so such
    an image decodes, opens everywhere, and is stored.
    """
    # IMREAD_UNCHANGED also ignores EXIF orientation, so the size is the one the header declares.
    image = cv2.imdecode(np.frombuffer(c.jpeg, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidCandidate("jpeg is corrupt or truncated (it does not decode)")
    height, width = image.shape[:2]
    if (width, height) != (c.width, c.height):
        raise InvalidCandidate(f"width/height {c.width}x{c.height} do not match the decoded {width}x{height}")


class IngestService(pb_grpc.IngestServicer):
    def __init__(self, catalog: Catalog, blobs: BlobStore, limits: IngestLimits | None = None, *,
                 auth: Authenticator | None = None, rate_limit: RateLimit | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.catalog = catalog
        self.blobs = blobs
        self.limits = limits or IngestLimits()
        self.auth = auth or AllowUnauthenticated()
        self.rate = TokenBuckets(rate_limit or RateLimit(), clock=clock)
        self._shapes: dict[int, ModelShape] = {}  # model versions are immutable once in the catalog

    def Upload(self, request_iterator, context):
        device_id = self.auth.authenticate(context)  # before the request iterator is touched
        for candidate in request_iterator:
            check_claim(context, device_id, candidate.device_id, "candidate")
            if not self.auth.still_valid(device_id):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"device {device_id} was revoked")
            if not self.rate.take(device_id or candidate.device_id[:self.limits.max_id_chars]):
                log.warning("device %s exceeds %.1f candidates/s; ending its stream", device_id or
                            candidate.device_id[:64], self.rate.limit.per_s)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"more than {self.rate.limit.per_s:g} candidates/s (burst {self.rate.limit.burst}); "
                              "resend the unacknowledged ones after a backoff")
            yield self.store(candidate)

    def model_shape(self, version: int) -> ModelShape | None:
        """The manifest's output sizes for a version the catalog knows (cached), else None."""
        if version == 0:
            return None
        shape = self._shapes.get(version)
        if shape is None:
            record = self.catalog.model(version)
            if record is None:  # maybe published later: do not cache the miss
                return None
            manifest = record["manifest"]
            classes = tuple(str(name) for name in manifest.get("classes", ()))
            shape = ModelShape(embedding_dim=max(0, int(manifest.get("embedding_dim", 0) or 0)),
                               num_classes=len(classes), classes=classes)
            self._shapes[version] = shape
        return shape

    def store(self, c: pb.Candidate) -> pb.Ack:
        try:
            validate(c, self.limits)
            shape = self.model_shape(c.model_version)
            if shape is not None:
                check_shape(c, shape)
            if self.catalog.has_candidate(c.candidate_id.lower()):  # a resend: skip the decode
                return pb.Ack(candidate_id=c.candidate_id, status=pb.ACK_STATUS_ALREADY_STORED)
            check_decodes(c)
        except InvalidCandidate as exc:
            log.warning("rejected candidate from %s: %s", c.device_id[:64], exc)
            return pb.Ack(candidate_id=c.candidate_id[:128], status=pb.ACK_STATUS_REJECTED, detail=str(exc))
        cid = c.candidate_id.lower()
        key = f"candidates/{cid[:2]}/{cid}.jpg"
        top, top_prob = predicted_class(c.probabilities, shape.classes if shape else ())
        self.blobs.put(key, c.jpeg)
        inserted = self.catalog.insert_candidate({
            "id": cid, "device_id": c.device_id, "capture_time_ms": c.capture_time_ms, "received_ms": now_ms(),
            "model_version": c.model_version, "blob_key": key, "jpeg_bytes": len(c.jpeg),
            "width": c.width, "height": c.height, "embedding": pack_floats(candidate_embedding(c)),
            "probabilities": pack_floats(c.probabilities),
            "least_confidence": c.scores.least_confidence, "margin": c.scores.margin, "entropy": c.scores.entropy,
            "novelty": c.scores.novelty, "combined": c.scores.combined,
            "reason": _REASONS.get(c.reason, "unspecified"), "extra": json.dumps(dict(c.metadata)),
            "predicted_class": top, "predicted_prob": top_prob,
        })
        status = pb.ACK_STATUS_STORED if inserted else pb.ACK_STATUS_ALREADY_STORED
        return pb.Ack(candidate_id=c.candidate_id, status=status)
