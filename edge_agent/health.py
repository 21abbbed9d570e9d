"""Is a freshly swapped-in model healthy? What the agent saw on each frame, per model version.

    Agent.process ──record / record_error──> HealthMonitor <──summary / wait── ModelUpdater

The agent records every frame it scores (model version, top-class confidence, calibrated
novelty, inference latency) or the error its inference raised. After a swap the updater waits
for the new version's first frames (`wait`), summarises the previous version's last frames
before the swap (`summary`), and `judge` decides:

- any inference error on the new model -> roll back;
- its median latency above `max_latency_ratio` x the previous model's (when the previous one
  had frames to compare with) -> roll back;
- otherwise healthy, even with fewer frames than asked for (or none: a camera that shows
  nothing tells nothing against the model; the report says how many frames it was judged on).

Confidence and novelty are reported, not judged: a model trained on new data may well be less
sure of frames its predecessor knew; the cloud compares them across the fleet.

`NullHealthMonitor` is the stand-in where no agent scores frames (a simulated device): it
records nothing and `wait` returns at once with no frames.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from protos import flywheel_pb2 as pb

DEFAULT_WINDOW = 256  # frames remembered per version: covers health_frames and the comparison
_VERSIONS_KEPT = 4  # versions remembered at once: the running one, its predecessor, a trial or two


@dataclass(frozen=True)
class HealthPolicy:
    """How the updater judges a new model ([model] health_frames, health_timeout_s,
    max_latency_ratio). frames == 0 turns the check off: healthy right after the swap."""

    frames: int = 30
    timeout_s: float = 60.0
    max_latency_ratio: float = 3.0


@dataclass(frozen=True)
class HealthSummary:
    """What one model version did over some frames."""

    version: int
    frames: int = 0  # frames scored (errors not included)
    errors: int = 0
    mean_confidence: float = 0.0
    mean_novelty: float = 0.0
    latency_p50_ms: float = 0.0
    last_error: str = ""


@dataclass(frozen=True)
class _Sample:
    confidence: float
    novelty: float
    latency_ms: float


class _VersionRecord:
    def __init__(self, window: int):
        self.samples: deque[_Sample] = deque(maxlen=window)
        self.frames = 0  # since the record began, beyond the window too
        self.errors = 0
        self.last_error = ""
        self.touched = 0.0


class HealthMonitor:
    """Per-version frame records, fed by the agent's loop and read by the updater's thread."""

    enabled = True

    def __init__(self, window: int = DEFAULT_WINDOW):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._records: dict[int, _VersionRecord] = {}
        self._changed = threading.Condition()

    def _record_for(self, version: int) -> _VersionRecord:
        record = self._records.get(version)
        if record is None:
            record = self._records[version] = _VersionRecord(self.window)
            record.touched = time.monotonic()
            if len(self._records) > _VERSIONS_KEPT:  # forget the version seen least recently
                del self._records[min(self._records, key=lambda v: self._records[v].touched)]
        record.touched = time.monotonic()
        return record

    def record(self, version: int, *, confidence: float, novelty: float, latency_ms: float) -> None:
        with self._changed:
            record = self._record_for(version)
            record.samples.append(_Sample(float(confidence), float(novelty), float(latency_ms)))
            record.frames += 1
            self._changed.notify_all()

    def record_error(self, version: int, error: str) -> None:
        with self._changed:
            record = self._record_for(version)
            record.errors += 1
            record.last_error = error[:300]
            self._changed.notify_all()

    def begin(self, version: int) -> None:
        """Start counting `version` afresh (called just before it is swapped in)."""
        with self._changed:
            self._records.pop(version, None)
            self._record_for(version)

    def summary(self, version: int, last: int = 0) -> HealthSummary:
        """`version`'s figures over its last `last` frames (0 = all remembered)."""
        with self._changed:
            return self._summary(version, last)

    def _summary(self, version: int, last: int) -> HealthSummary:
        record = self._records.get(version)
        if record is None:
            return HealthSummary(version)
        samples = list(record.samples)[-last:] if last else list(record.samples)
        if not samples:
            return HealthSummary(version, errors=record.errors, last_error=record.last_error)
        return HealthSummary(
            version, frames=len(samples), errors=record.errors,
            mean_confidence=float(np.mean([s.confidence for s in samples])),
            mean_novelty=float(np.mean([s.novelty for s in samples])),
            latency_p50_ms=float(np.median([s.latency_ms for s in samples])), last_error=record.last_error)

    def wait(self, version: int, frames: int, timeout_s: float, stop: threading.Event | None = None) -> HealthSummary:
        """Block until `version` has `frames` frames, an inference error, `timeout_s` passed or
        `stop` is set; then its summary over those frames."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                record = self._records.get(version)
                done = record is not None and (record.frames >= frames or record.errors)
                remaining = deadline - time.monotonic()
                if done or remaining <= 0 or (stop is not None and stop.is_set()):
                    return self._summary(version, frames)
                self._changed.wait(min(remaining, 0.2))  # wake now and then to notice `stop`


class NullHealthMonitor(HealthMonitor):
    """The stand-in where nothing scores frames: records nothing, never waits."""

    enabled = False

    def record(self, version: int, *, confidence: float, novelty: float, latency_ms: float) -> None:
        pass

    def record_error(self, version: int, error: str) -> None:
        pass

    def wait(self, version: int, frames: int, timeout_s: float, stop: threading.Event | None = None) -> HealthSummary:
        return HealthSummary(version)


def judge(new: HealthSummary, previous: HealthSummary, max_latency_ratio: float) -> str:
    """Why `new` must be rolled back, or "" when it may stay (module docstring)."""
    if new.errors:
        return f"{new.errors} inference error(s) on v{new.version} ({new.last_error})"
    if previous.frames and new.frames and new.latency_p50_ms > max_latency_ratio * previous.latency_p50_ms:
        return (f"v{new.version}'s median inference latency {new.latency_p50_ms:.1f} ms is over {max_latency_ratio:g}x "
                f"v{previous.version}'s {previous.latency_p50_ms:.1f} ms")
    return ""


def health_message(new: HealthSummary, previous: HealthSummary) -> pb.ModelHealth:
    return pb.ModelHealth(
        frames=new.frames, mean_confidence=new.mean_confidence, mean_novelty=new.mean_novelty,
        latency_p50_ms=new.latency_p50_ms, errors=new.errors, previous_version=previous.version,
        previous_frames=previous.frames, previous_mean_confidence=previous.mean_confidence,
        previous_mean_novelty=previous.mean_novelty, previous_latency_p50_ms=previous.latency_p50_ms)


def healthy_detail(after: HealthSummary, before: HealthSummary, policy: HealthPolicy, *, monitor_enabled: bool) -> str:
    """The HEALTHY report's detail: what the verdict rests on, and so how much it is worth."""
    if not policy.frames:
        return "health check off (health_frames = 0): healthy on swap"
    if not monitor_enabled:
        return "no frames are scored on this device (no health monitor): healthy on swap"
    if not after.frames:
        return f"no frames within {policy.timeout_s:g} s of the swap (is the camera delivering?): nothing to judge"
    judged = f"{after.frames} frames" if after.frames >= policy.frames else \
        f"only {after.frames} of {policy.frames} frames within {policy.timeout_s:g} s"
    compared = f" (v{before.version}: {before.latency_p50_ms:.2f} ms)" if before.frames else ""
    return f"{judged}, no inference errors, median latency {after.latency_p50_ms:.2f} ms{compared}"
