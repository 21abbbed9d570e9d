"""The Ingest service: authenticate the device, check each uploaded candidate, store it durably, ack it.

Idempotent on candidate_id: a resend of something already stored is acked ALREADY_STORED and
changes nothing (its stored blob is not rewritten). The blob is made durable (fsynced, or the S3
PUT returned) before the row is inserted, and the ack is sent only after the row commits, so an
acked candidate is always readable. A crash between blob and row leaves an unreferenced blob
under the candidate's own key, which the resend overwrites.

How a stream runs: a reader thread per stream takes messages as they arrive (up to
`IngestLimits.max_read_ahead` candidates / `max_read_ahead_bytes` not yet acked, the bidi
stream's read-ahead) and checks each; the ones to store go to the server's one `Committer`
(cloud_selector/ingest_batch.py), which stores whatever all streams queued as one batch: blobs
made durable together, rows in one transaction. The stream's own thread sends the acks, in the
order the candidates came, each once its batch is stored. If storing fails, the stream ends
with UNAVAILABLE after the acks before it; nothing of the failed batch is acked, and the agent
resends what was not acked.

What a stream goes through, cheapest first, so a bad or hostile device costs little:
1. the caller is authenticated from call metadata before the first message is read
   (UNAUTHENTICATED ends the call, nothing is written);
2. gRPC's receive limit (`create_server(max_message_bytes=...)`) refuses oversized messages
   with RESOURCE_EXHAUSTED before they reach us;
3. per message: a candidate naming another device ends the stream with PERMISSION_DENIED, and
   a device over its token bucket (`RateLimit`) with RESOURCE_EXHAUSTED. Acks already sent, and
   those of the candidates before it, stay valid; the agent resends what was not acked after
   its backoff;
4. per candidate, answered with a REJECTED ack (never resent): ids, sizes, the JPEG's pixel
   count read from its frame header BEFORE decoding, width/height against that header, vector
   lengths against the model version's manifest when the catalog knows it, and finally a
   decode of the whole compressed stream (`check_decodes`), so a stored JPEG is known to open.
   Whether the id is already stored is asked last, in the batch (one query for all of it):
   so a resend is decoded again before it is acked ALREADY_STORED, and a resend that no longer
   decodes is REJECTED, which the agent also takes as final.

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
from concurrent.futures import Future
from dataclasses import dataclass

import cv2
import grpc
import numpy as np

from cloud_selector.auth import AllowUnauthenticated, Authenticator, check_claim
from cloud_selector.blobstore import BlobStore
from cloud_selector.catalog import MAX_LABEL_CHARS, Catalog, now_ms, pack_floats
from cloud_selector.ingest_batch import AckPipe, Committer, EndStream, PendingCandidate, StoreFailed, store_batch
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
# The validity decode (`check_decodes`): 1/8 scale, grey, EXIF orientation ignored.
_DECODE_FLAGS = cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION


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
    # How far a stream's reader may run ahead of its acks (the agent keeps up to 32 candidates
    # unacked): a bound on the memory one stream holds. One candidate is always let through.
    max_read_ahead: int = 64
    max_read_ahead_bytes: int = 32 * 1024 * 1024


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
    if embedding_dim(c) > limits.max_embedding_dim:  # none at all is fine: the cloud embeds the JPEG
        raise InvalidCandidate(f"embedding must have at most {limits.max_embedding_dim} values")
    if c.embedding_int8 and not (math.isfinite(c.embedding_scale) and c.embedding_scale >= 0):
        raise InvalidCandidate("embedding_scale must be a finite number >= 0")
    if len(c.probabilities) > limits.max_classes:
        raise InvalidCandidate("too many class probabilities")
    if not (np.isfinite(np.asarray(c.embedding, dtype=np.float64)).all()
            and np.isfinite(np.asarray(c.probabilities, dtype=np.float64)).all()):
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
    if shape.embedding_dim and embedding_dim(c) not in (0, shape.embedding_dim):
        raise InvalidCandidate(f"embedding has {embedding_dim(c)} values, model v{c.model_version} "
                               f"produces {shape.embedding_dim}")
    if shape.num_classes and len(c.probabilities) != shape.num_classes:
        raise InvalidCandidate(f"{len(c.probabilities)} class probabilities, model v{c.model_version} "
                               f"has {shape.num_classes} classes")


def check_decodes(c: pb.Candidate) -> None:
    """Decode the whole compressed stream (the last and costliest check) so a stored JPEG is
    known to open.

    Decoded at 1/8 scale in grey: libjpeg still reads every marker and table and Huffman-decodes
    every coefficient of every scan (it must, to find the next one), and only the inverse DCT,
    upsampling and colour conversion shrink, so it fails exactly where a full decode fails, at
    about half its cost (~1.6 ms against ~3.3 ms for a 1280x960, 200 KiB photo). Truncation, a
    missing end marker and broken headers or tables fail here. libjpeg conceals damage inside
    the compressed scan data (it warns on stderr and fills the blocks), so such an image
    decodes, opens everywhere, and is stored. tests/cloud_selector/test_ingest_limits.py holds
    the cases.
    """
    image = cv2.imdecode(np.frombuffer(c.jpeg, dtype=np.uint8), _DECODE_FLAGS)
    if image is None:
        raise InvalidCandidate("jpeg is corrupt or truncated (it does not decode)")
    height, width = image.shape[:2]
    if (width, height) != (-(-c.width // 8), -(-c.height // 8)):  # libjpeg rounds the 1/8 size up
        raise InvalidCandidate(f"width/height {c.width}x{c.height} do not match the decoded "
                               f"{width}x{height} (at 1/8 scale)")


class _AbortLater:
    """What `check_claim` needs of a ServicerContext, for the reader thread: abort() raises
    EndStream, which the stream's own thread turns into the status in order."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise EndStream(code, details)


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
        self._committer: Committer | None = None  # started by the first stream, stopped by close()
        self._committer_lock = threading.Lock()
        self._closed = False

    @property
    def committer(self) -> Committer | None:
        return self._committer

    def close(self, timeout_s: float = 30.0) -> None:
        """Store what is queued and stop the committer thread (after the gRPC server stopped)."""
        with self._committer_lock:
            self._closed = True
            committer = self._committer
        if committer is not None:
            committer.close(timeout_s)

    def _submit(self, item: PendingCandidate) -> Future:
        with self._committer_lock:
            if self._committer is None and not self._closed:
                self._committer = Committer(self.catalog, self.blobs)
            committer = self._committer
        if committer is None:  # closed before any stream started
            future: Future = Future()
            future.set_exception(StoreFailed("the server is shutting down"))
            return future
        return committer.submit(item)

    def Upload(self, request_iterator, context):
        device_id = self.auth.authenticate(context)  # before the request iterator is touched
        pipe = AckPipe(self.limits.max_read_ahead, self.limits.max_read_ahead_bytes)
        threading.Thread(target=self._read, args=(request_iterator, device_id, pipe), daemon=True,
                         name=f"ingest-read-{device_id[:32]}").start()
        try:
            while True:
                entry, size = pipe.get()
                if entry is None:
                    return
                if isinstance(entry, EndStream):
                    context.abort(entry.code, entry.details)
                if isinstance(entry, Future):
                    try:
                        entry = entry.result()
                    except StoreFailed as exc:
                        context.abort(grpc.StatusCode.UNAVAILABLE,
                                      f"{exc}; resend the candidates not acknowledged")
                pipe.acked(size)
                yield entry
        finally:
            pipe.close()  # the reader stops at its next message

    def _read(self, request_iterator, device_id: str, pipe: AckPipe) -> None:
        """The stream's reader thread: per-message checks, then each candidate's Ack or Future."""
        end = None
        try:
            for candidate in request_iterator:
                check_claim(_AbortLater(), device_id, candidate.device_id, "candidate")
                if not self.auth.still_valid(device_id):
                    raise EndStream(grpc.StatusCode.UNAUTHENTICATED, f"device {device_id} was revoked")
                if not self.rate.take(device_id or candidate.device_id[:self.limits.max_id_chars]):
                    log.warning("device %s exceeds %.1f candidates/s; ending its stream", device_id or
                                candidate.device_id[:64], self.rate.limit.per_s)
                    raise EndStream(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"more than {self.rate.limit.per_s:g} candidates/s "
                                    f"(burst {self.rate.limit.burst}); resend the unacknowledged ones after a backoff")
                checked = self.check(candidate)
                entry = checked if isinstance(checked, pb.Ack) else self._submit(checked)
                if not pipe.put(entry, len(candidate.jpeg)):
                    return  # the stream ended (the client went away or an earlier store failed)
        except EndStream as exc:
            end = exc
        except grpc.RpcError:
            pass  # the client cancelled or the call ended: nobody to answer
        except Exception as exc:  # noqa: BLE001 - the top of this thread: end the stream with a status
            log.exception("ingest stream of %s failed", device_id or "an anonymous device")
            end = EndStream(grpc.StatusCode.INTERNAL, f"the server failed to check a candidate: {exc}"[:500])
        finally:
            pipe.finish(end)

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

    def check(self, c: pb.Candidate) -> pb.Ack | PendingCandidate:
        """Every check of step 4 (module doc): a REJECTED Ack, or the blob and row to store."""
        try:
            validate(c, self.limits)
            shape = self.model_shape(c.model_version)
            if shape is not None:
                check_shape(c, shape)
            check_decodes(c)
        except InvalidCandidate as exc:
            log.warning("rejected candidate from %s: %s", c.device_id[:64], exc)
            return pb.Ack(candidate_id=c.candidate_id[:128], status=pb.ACK_STATUS_REJECTED, detail=str(exc))
        cid, jpeg = c.candidate_id.lower(), c.jpeg
        key = f"candidates/{cid[:2]}/{cid}.jpg"
        top, top_prob = predicted_class(c.probabilities, shape.classes if shape else ())
        return PendingCandidate(candidate_id=c.candidate_id, key=key, jpeg=jpeg, row={
            "id": cid, "device_id": c.device_id, "capture_time_ms": c.capture_time_ms, "received_ms": now_ms(),
            "model_version": c.model_version, "blob_key": key, "jpeg_bytes": len(jpeg),
            "width": c.width, "height": c.height,
            "embedding": pack_floats(candidate_embedding(c)) if embedding_dim(c) else b"",
            "probabilities": pack_floats(c.probabilities),
            "least_confidence": c.scores.least_confidence, "margin": c.scores.margin, "entropy": c.scores.entropy,
            "novelty": c.scores.novelty, "combined": c.scores.combined,
            "reason": _REASONS.get(c.reason, "unspecified"), "extra": json.dumps(dict(c.metadata)),
            "predicted_class": top, "predicted_prob": top_prob,
        })

    def store(self, c: pb.Candidate) -> pb.Ack:
        """Check and store one candidate in the caller's thread (a batch of one): for tools and
        tests; streams go through the committer. Raises what the blob store or catalog raises."""
        checked = self.check(c)
        if isinstance(checked, pb.Ack):
            return checked
        return store_batch(self.catalog, self.blobs, [checked])[0]
