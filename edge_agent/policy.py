"""Which frames to keep: the top fraction by score, paced to the user's budgets.

Pure: no clocks, no I/O. Time comes from the frames' capture timestamps, so replaying the same
video gives the same decisions, and a live camera's timestamps pace the budgets in real time.

    combined = uncertainty_weight * <uncertainty measure> + novelty_weight * novelty

Two modes:

- ``budget`` (default): keep the top `target_fraction` of frames by `combined`. The threshold
  adapts: a frame is kept when it ranks within that fraction of the last `quantile_window`
  scores (an exact sliding-window quantile), so the policy follows the score distribution of
  the current model and scene instead of a number someone guessed. The fraction is lowered when
  the frame rate (measured on capture timestamps) would otherwise spend a per-minute, per-hour,
  per-day or bytes-per-day budget early: the budget is spent evenly across the period instead
  of in a burst at its start. `exploration_share` of the kept frames are drawn at random from
  the rest (reason ``random``), so the cloud also sees typical data.
- ``threshold``: keep a frame when `combined >= threshold`; `random_fraction` of the other
  frames are kept at random.

In both modes the hard caps (frames per minute/hour/day of capture time, bytes per day) hold
whatever the scores do, a frame that repeats a recently kept one (the caller's `is_repeat`,
run only then because it costs more than the scores) is dropped before it spends budget, and
a manual request (reason ``manual``) always keeps the frame. Every decision carries its reason.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.scoring import UNCERTAINTY_MEASURES, FrameScores

REASON_UNCERTAINTY = "uncertainty"
REASON_NOVELTY = "novelty"
REASON_RANDOM = "random"
REASON_MANUAL = "manual"
REASONS = (REASON_UNCERTAINTY, REASON_NOVELTY, REASON_RANDOM, REASON_MANUAL)

# Why a frame was dropped; counted by the agent.
DROP_BELOW_THRESHOLD = "below_threshold"
DROP_RATE_CAP = "rate_cap"
DROP_BYTE_BUDGET = "byte_budget"
DROP_REPEAT = "repeat"

MODES = ("budget", "threshold")
MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
# Largest sliding window of scores the budget mode keeps (memory: 8 bytes a score, twice).
MAX_QUANTILE_WINDOW = 200_000


@dataclass(frozen=True)
class PolicyConfig:
    mode: str = "budget"
    target_fraction: float = 0.05
    exploration_share: float = 0.1
    quantile_window: int = 2000
    threshold: float = 0.5
    random_fraction: float = 0.0
    uncertainty_measure: str = "entropy"
    uncertainty_weight: float = 1.0
    novelty_weight: float = 1.0
    max_per_minute: int = 60
    max_per_hour: int = 0
    max_per_day: int = 0
    max_bytes_per_day: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.uncertainty_measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"uncertainty_measure must be one of {UNCERTAINTY_MEASURES}, got {self.uncertainty_measure!r}")
        for name in ("max_per_minute", "max_per_hour", "max_per_day", "max_bytes_per_day"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = no cap)")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError("target_fraction must be within (0, 1]")
        for name in ("random_fraction", "exploration_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.uncertainty_weight < 0 or self.novelty_weight < 0:
            raise ValueError("score weights must be >= 0")
        if not 10 <= self.quantile_window <= MAX_QUANTILE_WINDOW:
            raise ValueError(f"quantile_window must be within 10..{MAX_QUANTILE_WINDOW}")


@dataclass(frozen=True)
class Decision:
    keep: bool
    combined: float
    reason: str  # a REASONS value when kept, a DROP_* value when not
    threshold: float  # the score a frame needed at this moment (budget mode: the adaptive one)


class _SlidingCount:
    """Events (capture time, amount) within the last `window_ms`."""

    def __init__(self, window_ms: int):
        self.window_ms = window_ms
        self._events: deque[tuple[int, int]] = deque()
        self.total = 0

    def advance(self, now_ms: int) -> None:
        while self._events and self._events[0][0] <= now_ms - self.window_ms:
            self.total -= self._events.popleft()[1]

    def add(self, now_ms: int, amount: int = 1) -> None:
        self._events.append((now_ms, amount))
        self.total += amount



class _WindowRank:
    """The last `capacity` scores, sorted, for exact sliding-window quantiles."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._order: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, value: float) -> None:
        self._order.append(value)
        bisect.insort(self._sorted, value)
        if len(self._order) > self.capacity:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def drop_newest(self) -> None:
        del self._sorted[bisect.bisect_left(self._sorted, self._order.pop())]

    def count_above(self, value: float) -> int:
        return len(self._sorted) - bisect.bisect_right(self._sorted, value)

    def top_cut(self, fraction: float) -> float:
        """The smallest score inside the top `fraction` (inf when the fraction holds none)."""
        n_top = math.floor(fraction * len(self._sorted))
        return self._sorted[-n_top] if n_top >= 1 else math.inf


class KeepPolicy:
    def __init__(self, config: PolicyConfig):
        self.config = config
        self._rng = np.random.default_rng(config.seed)
        window = config.quantile_window
        if config.mode == "budget":  # the top fraction must hold a few frames to be a quantile
            window = min(MAX_QUANTILE_WINDOW, max(window, math.ceil(20 / config.target_fraction)))
        self._scores = _WindowRank(window)
        # Pacing: keep decisions over the last `window` frames and how many of them kept, counted
        # as they come and go (summing the window on every frame would cost O(window) per frame).
        self._kept_flags: deque[bool] = deque()
        self._kept_in_window = 0
        self._pacing_window = window
        caps = ((config.max_per_minute, MINUTE_MS), (config.max_per_hour, HOUR_MS), (config.max_per_day, DAY_MS))
        self._caps = [(limit, _SlidingCount(span)) for limit, span in caps if limit > 0]
        self._bytes = _SlidingCount(DAY_MS)
        self._mean_kept_bytes = 0.0
        self._frame_times: deque[int] = deque(maxlen=64)  # frame rate, for pacing

    def combined(self, scores: FrameScores) -> float:
        c = self.config
        return c.uncertainty_weight * scores.uncertainty(c.uncertainty_measure) + c.novelty_weight * scores.novelty

    def keep_fraction(self) -> float:
        """The share of frames the budget mode keeps now: the target, lowered so no budget
        runs out before its period ends at the measured frame rate."""
        c = self.config
        fraction = c.target_fraction
        fps = self._fps()
        if fps <= 0:
            return fraction
        for limit, span_ms in ((c.max_per_minute, MINUTE_MS), (c.max_per_hour, HOUR_MS), (c.max_per_day, DAY_MS)):
            if limit > 0:
                fraction = min(fraction, limit / (fps * span_ms / 1000))
        if c.max_bytes_per_day > 0 and self._mean_kept_bytes > 0:
            fraction = min(fraction, c.max_bytes_per_day / self._mean_kept_bytes / (fps * DAY_MS / 1000))
        return fraction

    def decide(self, scores: FrameScores, capture_time_ms: int, is_repeat: Callable[[], bool] | None = None,
               *, manual: bool = False) -> Decision:
        c = self.config
        combined = self.combined(scores)
        uncertainty_part = c.uncertainty_weight * scores.uncertainty(c.uncertainty_measure)
        explained = REASON_UNCERTAINTY if uncertainty_part >= c.novelty_weight * scores.novelty else REASON_NOVELTY
        self._frame_times.append(capture_time_ms)
        for _, window in self._caps:
            window.advance(capture_time_ms)
        self._bytes.advance(capture_time_ms)
        if c.mode == "budget":
            reason, threshold = self._budget_reason(combined, explained)
        else:
            reason, threshold = self._threshold_reason(combined, explained)
        if manual:
            reason = REASON_MANUAL
        decision = self._check_limits(combined, reason, threshold, is_repeat, manual)
        self._kept_flags.append(decision.keep)
        self._kept_in_window += decision.keep
        if len(self._kept_flags) > self._pacing_window:
            self._kept_in_window -= self._kept_flags.popleft()
        if c.mode == "budget" and decision.reason in (DROP_REPEAT, DROP_RATE_CAP, DROP_BYTE_BUDGET):
            # A frame the budget could not take must not raise the bar for later ones: after a
            # burst of high scores, the quantile would otherwise shut out the normal stream.
            self._scores.drop_newest()
        if decision.keep:
            for _, window in self._caps:
                window.add(capture_time_ms)
        return decision

    def _check_limits(self, combined: float, reason: str | None, threshold: float,
                      is_repeat: Callable[[], bool] | None, manual: bool) -> Decision:
        c = self.config
        if manual:
            return Decision(True, combined, REASON_MANUAL, threshold)
        if reason is None:
            return Decision(False, combined, DROP_BELOW_THRESHOLD, threshold)
        if is_repeat is not None and is_repeat():
            return Decision(False, combined, DROP_REPEAT, threshold)
        if any(window.total >= limit for limit, window in self._caps):
            return Decision(False, combined, DROP_RATE_CAP, threshold)
        if c.max_bytes_per_day > 0 and self._bytes.total + self._mean_kept_bytes > c.max_bytes_per_day:
            return Decision(False, combined, DROP_BYTE_BUDGET, threshold)
        return Decision(True, combined, reason, threshold)

    def record_bytes(self, capture_time_ms: int, n_bytes: int) -> None:
        """What a kept frame costs on the wire; the caller reports it after encoding."""
        self._bytes.advance(capture_time_ms)
        self._bytes.add(capture_time_ms, n_bytes)
        alpha = 0.1 if self._mean_kept_bytes else 1.0
        self._mean_kept_bytes += alpha * (n_bytes - self._mean_kept_bytes)

    def _budget_reason(self, combined: float, explained: str) -> tuple[str | None, float]:
        c = self.config
        # A tiny seeded jitter breaks ties (a bank-less model scores many frames alike) at random.
        score = combined + float(self._rng.uniform(0.0, 1e-9))
        self._scores.add(score)
        fraction = self.keep_fraction()
        score_share = min(1.0, fraction * (1.0 - c.exploration_share) * self._catch_up(fraction))
        threshold = self._scores.top_cut(score_share)
        # Rank 1 = best; the frame is in the top share of the window (which includes it).
        if self._scores.count_above(score) + 1 <= score_share * len(self._scores):
            return explained, threshold
        random_p = fraction * c.exploration_share / max(1e-9, 1.0 - score_share)
        if random_p > 0 and self._rng.random() < random_p:
            return REASON_RANDOM, threshold
        return None, threshold

    def _catch_up(self, fraction: float) -> float:
        """> 1 when fewer frames were kept over the window than the budget allowed (a burst
        of high scores raised the quantile, or caps dropped frames), < 1 when more: a pacing
        controller that makes the whole budget get spent, within [1/2, 4] of the plain share."""
        expected = fraction * len(self._kept_flags)
        kept = self._kept_in_window
        return min(4.0, max(0.5, (expected + 1.0) / (kept + 1.0)))

    def _threshold_reason(self, combined: float, explained: str) -> tuple[str | None, float]:
        c = self.config
        if combined >= c.threshold:
            return explained, c.threshold
        if c.random_fraction > 0 and self._rng.random() < c.random_fraction:
            return REASON_RANDOM, c.threshold
        return None, c.threshold

    def _fps(self) -> float:
        """Frames per second of capture time over the last 64 frames (0 until 10 are in)."""
        times = self._frame_times
        if len(times) < 10 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) * 1000.0 / (times[-1] - times[0])
