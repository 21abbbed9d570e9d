"""The per-frame loop: score every frame, keep the informative ones in the outbox.

    frame -> slot.model (ORT) -> scores -> policy -> spool (with source progress)

The loop never waits on the network: the uploader, the model updater and the heartbeat run in
their own threads and meet the loop only through the spool, the model slot and the counters.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import grpc

from edge_agent import __version__
from edge_agent.appearance import RecentFrames
from edge_agent.policy import Decision, ThresholdPolicy
from edge_agent.scoring import FrameScores, score_frame
from edge_agent.sources import FILE_DONE, Frame
from edge_agent.spool import Spool
from edge_agent.updater import ModelSlot
from protos import flywheel_pb2 as pb
from protos import flywheel_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_REASON_TO_PB = {
    "uncertainty": pb.KEEP_REASON_UNCERTAINTY,
    "novelty": pb.KEEP_REASON_NOVELTY,
    "random": pb.KEEP_REASON_RANDOM,
    "manual": pb.KEEP_REASON_MANUAL,
}
# Record source progress at least this often for frames that were not kept.
_PROGRESS_EVERY = 50


class FrameSource(Protocol):
    def frames(self, stop: threading.Event, resume: dict[str, int] | None = None) -> Iterator[Frame]: ...


@dataclass
class AgentStats:
    frames_seen: int = 0
    frames_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    source_finished: bool = False

    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames_seen / elapsed if elapsed > 0 else 0.0


class Agent:
    def __init__(self, *, device_id: str, source: FrameSource, slot: ModelSlot, policy: ThresholdPolicy, spool: Spool,
                 jpeg_quality: int = 90, recent: RecentFrames | None = None):
        self.device_id = device_id
        self.source = source
        self.slot = slot
        self.policy = policy
        self.spool = spool
        self.jpeg_quality = jpeg_quality
        self.recent = recent
        self.stats = AgentStats()

    def run(self, stop: threading.Event) -> None:
        """Process frames until the source ends or `stop` is set."""
        for frame in self.source.frames(stop, self.spool.progress()):
            self.process(frame)
        self.stats.source_finished = not stop.is_set()

    def process(self, frame: Frame) -> Decision:
        model = self.slot.model  # one model for the whole frame, even if a swap happens meanwhile
        result = model.infer([frame.image])
        probs, embedding = result.probs[0], result.embeddings[0]
        scores = score_frame(probs, embedding, model.bank)
        is_repeat = (lambda: self.recent.is_repeat(frame.image)) if self.recent is not None else None
        decision = self.policy.decide(scores, frame.capture_time_ms, is_repeat)
        self.stats.frames_seen += 1
        progress = FILE_DONE if frame.last_in_file else frame.index
        if decision.keep:
            if self.recent is not None:
                self.recent.remember()
            candidate = self._candidate(frame, model.version, probs, embedding, scores, decision)
            self.spool.put(candidate.candidate_id, candidate.SerializeToString(), decision.combined,
                           progress=(frame.source, progress))
            self.stats.frames_kept += 1
        else:
            self.stats.dropped[decision.reason] = self.stats.dropped.get(decision.reason, 0) + 1
            if frame.last_in_file or frame.index % _PROGRESS_EVERY == 0:
                self.spool.record_progress(frame.source, progress)
        return decision

    def _candidate(self, frame: Frame, model_version: int, probs, embedding, scores: FrameScores,
                   decision: Decision) -> pb.Candidate:
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        height, width = frame.image.shape[:2]
        return pb.Candidate(
            candidate_id=str(uuid.uuid4()),
            device_id=self.device_id,
            capture_time_ms=frame.capture_time_ms,
            model_version=model_version,
            jpeg=jpeg.tobytes(),
            width=width,
            height=height,
            embedding=embedding.tolist(),
            probabilities=probs.tolist(),
            scores=pb.Scores(least_confidence=scores.least_confidence, margin=scores.margin, entropy=scores.entropy,
                             novelty=scores.novelty, combined=decision.combined),
            reason=_REASON_TO_PB[decision.reason],
            metadata={"source": frame.source, "frame_index": str(frame.index)},
        )


class Heartbeat:
    """Report counters to the cloud every `interval_s` (and once more at stop)."""

    def __init__(self, channel: grpc.Channel, agent: Agent, uploaded: Callable[[], int], interval_s: float = 5.0):
        self._stub = pb_grpc.FleetStub(channel)
        self._agent = agent
        self._uploaded = uploaded
        self.interval_s = interval_s

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self.beat()

    def beat(self) -> None:
        stats, spool = self._agent.stats, self._agent.spool.stats()
        request = pb.HeartbeatRequest(
            device_id=self._agent.device_id,
            model_version=self._agent.slot.version,
            frames_seen=stats.frames_seen,
            frames_kept=stats.frames_kept,
            candidates_acked=self._uploaded(),
            spool_depth=spool.depth,
            spool_bytes=spool.pending_bytes,
            fps=stats.fps(),
            agent_version=__version__,
            device_time_ms=int(time.time() * 1000),
            status={"source_finished": str(stats.source_finished).lower(),
                    **{f"dropped_{k}": str(v) for k, v in stats.dropped.items()}},
        )
        try:
            self._stub.Heartbeat(request, timeout=5)
        except grpc.RpcError as exc:
            log.info("heartbeat failed: %s", exc.code() if hasattr(exc, "code") else exc)
