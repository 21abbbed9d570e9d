"""Which frames to keep: a combined score against a threshold, within a per-minute cap.

Pure: no clocks, no I/O. Time comes from the frames' capture timestamps, so replaying the same
video gives the same decisions, and a live camera's timestamps pace the cap in real time.

combined = uncertainty_weight * <uncertainty measure> + novelty_weight * novelty
A frame is kept when combined >= threshold and fewer than `max_per_minute` frames were kept in
the 60 s before it. An optional `random_fraction` of the other frames is kept as exploration
(reason `random`), within the same cap, so the cloud also sees typical data. A frame that
would be kept but repeats a recently kept one (the caller's `is_repeat` check, run only then
because it costs more than the scores) is dropped before it spends a slot of the cap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.scoring import UNCERTAINTY_MEASURES, FrameScores

REASON_UNCERTAINTY = "uncertainty"
REASON_NOVELTY = "novelty"
REASON_RANDOM = "random"
REASONS = (REASON_UNCERTAINTY, REASON_NOVELTY, REASON_RANDOM, "manual")

# Why a frame was dropped; counted by the agent.
DROP_BELOW_THRESHOLD = "below_threshold"
DROP_RATE_CAP = "rate_cap"
DROP_REPEAT = "repeat"


@dataclass(frozen=True)
class PolicyConfig:
    threshold: float = 0.5
    uncertainty_measure: str = "entropy"
    uncertainty_weight: float = 1.0
    novelty_weight: float = 1.0
    max_per_minute: int = 60
    random_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.uncertainty_measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"uncertainty_measure must be one of {UNCERTAINTY_MEASURES}, got {self.uncertainty_measure!r}")
        if self.max_per_minute < 0:
            raise ValueError("max_per_minute must be >= 0")
        if not 0.0 <= self.random_fraction <= 1.0:
            raise ValueError("random_fraction must be within [0, 1]")
        if self.uncertainty_weight < 0 or self.novelty_weight < 0:
            raise ValueError("score weights must be >= 0")


@dataclass(frozen=True)
class Decision:
    keep: bool
    combined: float
    reason: str  # a REASONS value when kept, a DROP_* value when not


class ThresholdPolicy:
    WINDOW_MS = 60_000

    def __init__(self, config: PolicyConfig):
        self.config = config
        self._kept_times: deque[int] = deque()
        self._rng = np.random.default_rng(config.seed)

    def combined(self, scores: FrameScores) -> float:
        c = self.config
        return c.uncertainty_weight * scores.uncertainty(c.uncertainty_measure) + c.novelty_weight * scores.novelty

    def decide(self, scores: FrameScores, capture_time_ms: int,
               is_repeat: Callable[[], bool] | None = None) -> Decision:
        c = self.config
        combined = self.combined(scores)
        if combined >= c.threshold:
            uncertainty_part = c.uncertainty_weight * scores.uncertainty(c.uncertainty_measure)
            reason = REASON_UNCERTAINTY if uncertainty_part >= c.novelty_weight * scores.novelty else REASON_NOVELTY
        elif c.random_fraction > 0 and self._rng.random() < c.random_fraction:
            reason = REASON_RANDOM
        else:
            return Decision(False, combined, DROP_BELOW_THRESHOLD)
        if is_repeat is not None and is_repeat():
            return Decision(False, combined, DROP_REPEAT)
        if not self._take_slot(capture_time_ms):
            return Decision(False, combined, DROP_RATE_CAP)
        return Decision(True, combined, reason)

    def _take_slot(self, now_ms: int) -> bool:
        while self._kept_times and self._kept_times[0] <= now_ms - self.WINDOW_MS:
            self._kept_times.popleft()
        if len(self._kept_times) >= self.config.max_per_minute:
            return False
        self._kept_times.append(now_ms)
        return True
