"""Stream spooled candidates to the cloud over one long-lived bidirectional call.

At most `window` items are in flight; each ack deletes its item from the spool (or marks it
dead when the server rejected it). When the stream breaks, the unacked items go back to the
queue and the uploader reconnects with backoff. The server is idempotent on candidate_id, so
a resend after a lost ack is harmless.

Liveness: the channel's keepalive pings detect a dead TCP connection; on top of that, when
items are in flight and no ack arrives for `ack_timeout_s` (a server that accepts but never
answers), the stream is cancelled and reopened. The spool hands out the highest-value items
first, so after a long offline period the best frames go out first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc

from edge_agent.spool import Spool
from edge_agent.transport import Backoff
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class _Stream:
    """What one stream attempt has in flight. Each attempt gets its own, because gRPC may still
    run an ended attempt's request generator for a moment: items it claims then must go back to
    the queue, never into the next attempt's window."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}  # candidate_id -> payload bytes
        self.ended = False
        self.changed = threading.Condition()
        self.last_progress = time.monotonic()
        self.call: grpc.Future | None = None

    def stalled(self, timeout_s: float) -> bool:
        """Items are in flight and none was acked for timeout_s (hold `changed`)."""
        return bool(self.in_flight) and time.monotonic() - self.last_progress > timeout_s


class Uploader:
    def __init__(self, channel: grpc.Channel, spool: Spool, *, window: int = 32, backoff: Backoff | None = None,
                 ack_timeout_s: float = 60.0):
        self._stub = pb_grpc.IngestStub(channel)
        self._spool = spool
        self._window = max(1, window)
        self._backoff = backoff or Backoff()
        self.ack_timeout_s = ack_timeout_s
        self.acked = 0
        self.rejected = 0
        self.bytes_acked = 0
        self.reconnects = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            stream = _Stream()
            try:
                self._stream_once(stream, stop)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else exc
                details = exc.details() if hasattr(exc, "details") else ""
                log.warning("upload stream failed (%s %s); retrying", code, details or "")
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the cloud rejects this device's credentials: check device.id and device.token")
            with stream.changed:
                stream.ended = True
                unacked = list(stream.in_flight)
                stream.in_flight.clear()
                stream.changed.notify_all()
            self._spool.release(unacked)
            self.reconnects += 1
            if not stop.is_set():  # the server ended the stream, or it failed: do not spin
                self._backoff.wait(stop)

    def _requests(self, stream: _Stream, stop: threading.Event) -> Iterator[pb.Candidate]:
        while not stop.is_set():
            with stream.changed:
                while (len(stream.in_flight) >= self._window and not stream.ended and not stop.is_set()
                       and not stream.stalled(self.ack_timeout_s)):
                    stream.changed.wait(0.2)
                if stream.ended:
                    return
                if stream.stalled(self.ack_timeout_s):
                    log.warning("no ack for %.0f s with %d in flight; reconnecting",
                                self.ack_timeout_s, len(stream.in_flight))
                    if stream.call is not None:
                        stream.call.cancel()
                    return
                free = self._window - len(stream.in_flight)
            items = self._spool.claim(free)
            if not items:
                self._spool.wait_for_items(0.2)
                continue
            with stream.changed:
                if stream.ended:  # the attempt ended while we claimed: these go back
                    self._spool.release([item.candidate_id for item in items])
                    return
                if not stream.in_flight:
                    stream.last_progress = time.monotonic()
                stream.in_flight.update((item.candidate_id, len(item.payload)) for item in items)
            for item in items:
                yield pb.Candidate.FromString(item.payload)

    def _stream_once(self, stream: _Stream, stop: threading.Event) -> None:
        responses = self._stub.Upload(self._requests(stream, stop))
        stream.call = responses
        try:
            for ack in responses:
                rejected = ack.status == pb.ACK_STATUS_REJECTED
                if rejected:
                    log.warning("cloud rejected candidate %s: %s", ack.candidate_id, ack.detail)
                    self._spool.reject(ack.candidate_id, ack.detail)
                    self.rejected += 1
                else:
                    self._spool.ack(ack.candidate_id)
                    self.acked += 1
                    self._backoff.reset()
                with stream.changed:
                    size = stream.in_flight.pop(ack.candidate_id, 0)
                    if not rejected:
                        self.bytes_acked += size
                    stream.last_progress = time.monotonic()
                    stream.changed.notify_all()
        finally:
            responses.cancel()
