"""The per-frame loop: score every frame, keep the informative ones in the outbox.

    frame -> slot.model (ORT) -> scores -> policy (budget, repeats) -> spool (with source progress)

The loop never waits on the network: the uploader, the model updater and the heartbeat run in
their own threads and meet the loop only through the spool, the model slot, the health monitor
and the counters.

Every scored frame is recorded in the health monitor (model version, top-class confidence,
calibrated novelty, inference latency), which is how the updater judges a freshly swapped-in
model. An inference error on a model still on trial is recorded there too and the frame is
dropped (reason "inference_error"): the updater then rolls the model back, and the loop goes
on. On a model that is not on trial (one that already proved itself) the error propagates as
before: it points at the device, not at the update.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import cv2
import grpc
import numpy as np

from edge_agent import __version__
from edge_agent.appearance import RecentFrames
from edge_agent.embedding_codec import ENCODINGS, encode_int8
from edge_agent.health import HealthMonitor, NullHealthMonitor
from edge_agent.metrics import AgentSnapshot, LatencyWindow
from edge_agent.policy import Decision, KeepPolicy
from edge_agent.scoring import FrameScores, score_frame
from edge_agent.sources import FILE_DONE, Frame, FrameSource
from edge_agent.spool import Spool
from edge_agent.updater import ModelSlot
from edge_agent.uploader import Uploader
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
DROP_INFERENCE_ERROR = "inference_error"


@dataclass
class AgentStats:
    frames_seen: int = 0
    frames_kept: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # reason -> frames kept for it
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> frames not kept for it
    started: float = field(default_factory=time.monotonic)
    source_finished: bool = False

    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames_seen / elapsed if elapsed > 0 else 0.0


class Agent:
    def __init__(self, *, device_id: str, source: FrameSource, slot: ModelSlot, policy: KeepPolicy, spool: Spool,
                 jpeg_quality: int = 90, max_side: int = 0, recent: RecentFrames | None = None,
                 latency: LatencyWindow | None = None, health: HealthMonitor | None = None,
                 embedding_encoding: str = "int8"):
        if embedding_encoding not in ENCODINGS:
            raise ValueError(f"embedding_encoding must be one of {ENCODINGS}, got {embedding_encoding!r}")
        self.device_id = device_id
        self.source = source
        self.slot = slot
        self.policy = policy
        self.spool = spool
        self.jpeg_quality = jpeg_quality
        self.max_side = max_side
        self.embedding_encoding = embedding_encoding
        self.recent = recent
        self.latency = latency or LatencyWindow()
        self.health = health or NullHealthMonitor()
        self.stats = AgentStats()
        self._manual = threading.Event()

    def request_manual(self) -> None:
        """Keep the next frame whatever its scores (reason "manual"); safe from a signal handler."""
        self._manual.set()

    def run(self, stop: threading.Event) -> None:
        """Process frames until the source ends or `stop` is set."""
        resume = None if self.source.live else self.spool.progress()
        for frame in self.source.frames(stop, resume):
            if frame.progress_only:  # pacing skipped the last frame of a file: only mark the file done
                self.spool.record_progress(frame.source, FILE_DONE)
                continue
            self.process(frame)
        self.stats.source_finished = not stop.is_set()

    def process(self, frame: Frame) -> Decision:
        model = self.slot.model  # one model for the whole frame, even if a swap happens meanwhile
        started = time.perf_counter()
        try:
            result = model.infer([frame.image])
        except Exception as exc:  # ORT raises untyped errors; only a model on trial may fail without stopping us
            if not self.slot.on_trial(model):
                raise
            return self._inference_failed(frame, model.version, exc)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.latency.record(latency_ms)
        probs, embedding = result.probs[0], result.embeddings[0]
        scores = score_frame(probs, embedding, model.bank)
        self.health.record(model.version, confidence=float(probs.max()), novelty=scores.novelty, latency_ms=latency_ms)
        is_repeat = (lambda: self.recent.is_repeat(frame.image, embedding)) if self.recent is not None else None
        manual = self._manual.is_set()
        self._manual.clear()
        decision = self.policy.decide(scores, frame.capture_time_ms, is_repeat, manual=manual)
        self.stats.frames_seen += 1
        progress = None if self.source.live else (frame.source, FILE_DONE if frame.last_in_file else frame.index)
        if decision.keep:
            if self.recent is not None:
                self.recent.remember()
            candidate = self._candidate(frame, model.version, probs, embedding, scores, decision)
            self.policy.record_bytes(frame.capture_time_ms, len(candidate.jpeg))
            self.spool.put(candidate.candidate_id, candidate.SerializeToString(), decision.combined, progress=progress)
            self.stats.frames_kept += 1
            self.stats.kept[decision.reason] = self.stats.kept.get(decision.reason, 0) + 1
        else:
            self.stats.dropped[decision.reason] = self.stats.dropped.get(decision.reason, 0) + 1
            if progress is not None and (frame.last_in_file or frame.index % _PROGRESS_EVERY == 0):
                self.spool.record_progress(*progress)
        return decision

    def _inference_failed(self, frame: Frame, version: int, exc: Exception) -> Decision:
        log.error("inference failed on model v%d, which is on trial: %s: %s", version, type(exc).__name__, exc)
        self.health.record_error(version, f"{type(exc).__name__}: {exc}")
        self.stats.frames_seen += 1
        self.stats.dropped[DROP_INFERENCE_ERROR] = self.stats.dropped.get(DROP_INFERENCE_ERROR, 0) + 1
        if not self.source.live and (frame.last_in_file or frame.index % _PROGRESS_EVERY == 0):
            self.spool.record_progress(frame.source, FILE_DONE if frame.last_in_file else frame.index)
        return Decision(keep=False, combined=0.0, reason=DROP_INFERENCE_ERROR, threshold=0.0)

    def _encode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The upload image (downscaled to max_side) and its JPEG bytes."""
        height, width = image.shape[:2]
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return image, jpeg

    def _candidate(self, frame: Frame, model_version: int, probs, embedding, scores: FrameScores,
                   decision: Decision) -> pb.Candidate:
        image, jpeg = self._encode(frame.image)
        height, width = image.shape[:2]
        metadata = {"source": frame.source, "frame_index": str(frame.index), "threshold": f"{decision.threshold:.6g}"}
        if frame.source_name:
            metadata["source_name"] = frame.source_name
        candidate = pb.Candidate(
            candidate_id=str(uuid.uuid4()),
            device_id=self.device_id,
            capture_time_ms=frame.capture_time_ms,
            model_version=model_version,
            jpeg=jpeg.tobytes(),
            width=width,
            height=height,
            probabilities=probs.tolist(),
            scores=pb.Scores(least_confidence=scores.least_confidence, margin=scores.margin, entropy=scores.entropy,
                             novelty=scores.novelty, combined=decision.combined,
                             novelty_distance=scores.novelty_distance),
            reason=_REASON_TO_PB[decision.reason],
            metadata=metadata,
        )
        if self.embedding_encoding == "int8":
            candidate.embedding_int8, candidate.embedding_scale = encode_int8(embedding)
        elif self.embedding_encoding == "float32":
            candidate.embedding.extend(embedding.tolist())
        return candidate


def snapshot(agent: Agent, uploader: Uploader | None) -> AgentSnapshot:
    """The agent's counters now, for heartbeats and the metrics endpoint."""
    stats, spool = agent.stats, agent.spool.stats()
    return AgentSnapshot(
        agent_version=__version__, model_version=agent.slot.version, frames_seen=stats.frames_seen,
        frames_kept=stats.frames_kept, dropped=dict(stats.dropped),
        candidates_acked=uploader.acked if uploader else 0, spool_queued=spool.queued, spool_sending=spool.sending,
        spool_dead=spool.dead, spool_pending_bytes=spool.pending_bytes,
        latency_p50_ms=agent.latency.percentile(50), latency_p99_ms=agent.latency.percentile(99),
        candidates_evicted=spool.evicted_total, bytes_uploaded=uploader.bytes_acked if uploader else 0,
        spool_cap_bytes=spool.cap_bytes, source_finished=stats.source_finished,
    )


class Heartbeat:
    """Report counters to the cloud every `interval_s` (and once more at stop)."""

    def __init__(self, channel: grpc.Channel, agent: Agent, uploader: Uploader | None, interval_s: float = 5.0):
        self._stub = pb_grpc.FleetStub(channel)
        self._agent = agent
        self._uploader = uploader
        self.interval_s = interval_s

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self.beat()

    def beat(self) -> None:
        s = snapshot(self._agent, self._uploader)
        request = pb.HeartbeatRequest(
            device_id=self._agent.device_id,
            model_version=s.model_version,
            frames_seen=s.frames_seen,
            frames_kept=s.frames_kept,
            candidates_acked=s.candidates_acked,
            spool_depth=s.spool_queued + s.spool_sending,
            spool_bytes=s.spool_pending_bytes,
            fps=self._agent.stats.fps(),
            agent_version=s.agent_version,
            device_time_ms=int(time.time() * 1000),
            status={"source_finished": str(s.source_finished).lower(),
                    **{f"dropped_{k}": str(v) for k, v in s.dropped.items()},
                    **{f"kept_{k}": str(v) for k, v in self._agent.stats.kept.items()}},
            inference_p50_ms=s.latency_p50_ms,
            inference_p99_ms=s.latency_p99_ms,
            candidates_evicted=s.candidates_evicted,
            candidates_rejected=self._uploader.rejected if self._uploader else 0,
            bytes_uploaded=s.bytes_uploaded,
            spool_cap_bytes=s.spool_cap_bytes,
        )
        try:
            response = self._stub.Heartbeat(request, timeout=5)
        except grpc.RpcError as exc:
            log.info("heartbeat failed: %s", exc.code() if hasattr(exc, "code") else exc)
            return
        if response.interval_s:
            self.interval_s = float(response.interval_s)
