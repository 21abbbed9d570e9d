"""Stream spooled candidates to the cloud over one long-lived bidirectional call.

At most `window` items are in flight; each ack deletes its item from the spool (or marks it
dead when the server rejected it). When the stream breaks, the unacked items go back to the
queue and the uploader reconnects with backoff. The server is idempotent on candidate_id, so
a resend after a lost ack is harmless.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc

from edge_agent.spool import Spool
from edge_agent.transport import Backoff
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Uploader:
    def __init__(self, channel: grpc.Channel, spool: Spool, *, window: int = 32, backoff: Backoff | None = None):
        self._stub = pb_grpc.IngestStub(channel)
        self._spool = spool
        self._window = max(1, window)
        self._backoff = backoff or Backoff()
        self._in_flight: set[str] = set()
        self._slots = threading.Condition()
        self.acked = 0
        self.rejected = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._stream_once(stop)
            except grpc.RpcError as exc:
                log.warning("upload stream failed (%s); retrying", exc.code() if hasattr(exc, "code") else exc)
            with self._slots:
                unacked = list(self._in_flight)
                self._in_flight.clear()
            self._spool.release(unacked)
            if not stop.is_set():  # the server ended the stream, or it failed: do not spin
                self._backoff.wait(stop)

    def _requests(self, stop: threading.Event, done: threading.Event) -> Iterator[pb.Candidate]:
        while not stop.is_set() and not done.is_set():
            with self._slots:
                while len(self._in_flight) >= self._window and not stop.is_set() and not done.is_set():
                    self._slots.wait(0.2)
                free = self._window - len(self._in_flight)
            items = self._spool.claim(free) if free > 0 else []
            if not items:
                self._spool.wait_for_items(0.2)
                continue
            with self._slots:
                self._in_flight.update(item.candidate_id for item in items)
            for item in items:
                yield pb.Candidate.FromString(item.payload)

    def _stream_once(self, stop: threading.Event) -> None:
        done = threading.Event()
        responses = self._stub.Upload(self._requests(stop, done))
        try:
            for ack in responses:
                if ack.status == pb.ACK_STATUS_REJECTED:
                    log.warning("cloud rejected candidate %s: %s", ack.candidate_id, ack.detail)
                    self._spool.reject(ack.candidate_id, ack.detail)
                    self.rejected += 1
                else:
                    self._spool.ack(ack.candidate_id)
                    self.acked += 1
                    self._backoff.reset()
                with self._slots:
                    self._in_flight.discard(ack.candidate_id)
                    self._slots.notify_all()
        finally:
            done.set()
            responses.cancel()
