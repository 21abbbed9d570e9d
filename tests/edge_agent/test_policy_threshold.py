"""KeepPolicy in threshold mode: hand-computed combined scores, reasons, the capture-time rate cap, exploration.

Numbers are binary fractions (0.5, 0.25, 0.125, ...) so the boundary cases are exact in float.
"""

from __future__ import annotations

import pytest

from edge_agent.policy import (
    DROP_BELOW_THRESHOLD,
    DROP_RATE_CAP,
    DROP_REPEAT,
    REASON_NOVELTY,
    REASON_RANDOM,
    REASON_UNCERTAINTY,
    PolicyConfig,
    KeepPolicy,
)
from edge_agent.scoring import FrameScores


def scores(*, lc: float = 0.0, margin: float = 0.0, entropy: float = 0.0, novelty: float = 0.0) -> FrameScores:
    return FrameScores(least_confidence=lc, margin=margin, entropy=entropy, novelty=novelty)


def lc_policy(**overrides) -> KeepPolicy:
    # combined = 0.5 * least_confidence + 2.0 * novelty, threshold 0.5
    cfg = dict(mode="threshold", threshold=0.5, uncertainty_measure="least_confidence", uncertainty_weight=0.5, novelty_weight=2.0,
               max_per_minute=1000)
    cfg.update(overrides)
    return KeepPolicy(PolicyConfig(**cfg))


# --- threshold and combined score ------------------------------------------------------------


def test_combined_is_weighted_sum():
    p = lc_policy()
    # 0.5 * 0.75 + 2.0 * 0.0625 = 0.375 + 0.125 = 0.5
    assert p.combined(scores(lc=0.75, novelty=0.0625)) == 0.5
    # 0.5 * 0.5 + 2.0 * 0.0625 = 0.25 + 0.125 = 0.375
    assert p.combined(scores(lc=0.5, novelty=0.0625)) == 0.375
    # the other measures do not count: entropy/margin 1.0 change nothing
    assert p.combined(scores(lc=0.5, margin=1.0, entropy=1.0, novelty=0.0625)) == 0.375


def test_below_threshold_dropped():
    d = lc_policy().decide(scores(lc=0.5, novelty=0.0625), capture_time_ms=0)
    # 0.375 < 0.5
    assert not d.keep
    assert d.reason == DROP_BELOW_THRESHOLD
    assert d.combined == 0.375


def test_at_threshold_kept_for_uncertainty():
    d = lc_policy().decide(scores(lc=0.75, novelty=0.0625), capture_time_ms=0)
    # 0.375 (uncertainty part) + 0.125 (novelty part) = 0.5 >= 0.5; 0.375 > 0.125 -> uncertainty
    assert d.keep
    assert d.combined == 0.5
    assert d.reason == REASON_UNCERTAINTY


def test_kept_for_novelty_when_its_contribution_is_larger():
    d = lc_policy().decide(scores(lc=0.25, novelty=0.1875), capture_time_ms=0)
    # uncertainty part 0.5 * 0.25 = 0.125; novelty part 2.0 * 0.1875 = 0.375; sum 0.5 -> kept
    # the raw novelty (0.1875) is smaller than the raw uncertainty (0.25): the weighted parts decide
    assert d.keep
    assert d.reason == REASON_NOVELTY


def test_just_below_threshold_dropped():
    d = lc_policy().decide(scores(lc=0.75, novelty=0.0625 - 2**-20), capture_time_ms=0)
    assert not d.keep and d.reason == DROP_BELOW_THRESHOLD


def test_measure_choice_changes_the_uncertainty_term():
    s = scores(lc=0.0, margin=0.0, entropy=0.75, novelty=0.0)
    # entropy policy: 1.0 * 0.75 + 1.0 * 0 = 0.75 >= 0.5 -> kept for uncertainty
    d = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5, uncertainty_measure="entropy")).decide(s, 0)
    assert d.keep and d.combined == 0.75 and d.reason == REASON_UNCERTAINTY
    # margin policy on the same frame: 0 + 0 = 0 -> dropped
    d = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5, uncertainty_measure="margin")).decide(s, 0)
    assert not d.keep and d.combined == 0.0


def test_zero_weight_ignores_a_score():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5, uncertainty_weight=0.0, novelty_weight=1.0))
    # entropy 1.0 weighs nothing: combined = 0 * 1.0 + 1.0 * 0.25 = 0.25
    d = p.decide(scores(entropy=1.0, novelty=0.25), 0)
    assert d.combined == 0.25 and not d.keep


# --- per-minute cap on capture timestamps ----------------------------------------------------


def test_rate_cap_counts_capture_time():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.0, max_per_minute=60))
    s = scores(entropy=1.0)
    # 61 frames 100 ms apart (0 .. 6000 ms), all in the same minute: 60 kept, the 61st capped
    decisions = [p.decide(s, capture_time_ms=i * 100) for i in range(61)]
    assert all(d.keep for d in decisions[:60])
    assert not decisions[60].keep
    assert decisions[60].reason == DROP_RATE_CAP
    # 60 s after the first kept frame (t=0), it leaves the window: one slot opens
    assert p.decide(s, capture_time_ms=60_000).keep
    # at 60 050 ms the window (10 050, 60 050] still holds 100..5 900 (59) + 60 000 = 60: capped
    d = p.decide(s, capture_time_ms=60_050)
    assert not d.keep and d.reason == DROP_RATE_CAP
    # at 60 100 ms the frame kept at 100 ms leaves: kept again
    assert p.decide(s, capture_time_ms=60_100).keep


def test_rate_cap_ignores_wall_clock():
    # an hour of capture time is replayed in microseconds of wall time: only timestamps count
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.0, max_per_minute=2))
    s = scores(entropy=1.0)
    kept = [p.decide(s, capture_time_ms=minute * 60_000 + k * 1000).keep for minute in range(60) for k in range(3)]
    assert kept == [True, True, False] * 60


def test_dropped_frames_do_not_take_slots():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5, max_per_minute=1))
    # many below-threshold frames first
    for t in range(0, 1000, 10):
        assert p.decide(scores(entropy=0.0), t).reason == DROP_BELOW_THRESHOLD
    assert p.decide(scores(entropy=1.0), 1000).keep
    # capped frames do not extend the window either: the slot frees 60 s after 1000 ms
    assert p.decide(scores(entropy=1.0), 30_000).reason == DROP_RATE_CAP
    assert p.decide(scores(entropy=1.0), 61_000).keep


def test_zero_cap_means_no_cap():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.0, max_per_minute=0))
    assert all(p.decide(scores(entropy=1.0), t).keep for t in range(1000))


# --- random exploration ----------------------------------------------------------------------


def _random_run(seed: int, n: int = 1000, fraction: float = 0.3) -> list[bool]:
    # threshold 10 cannot be reached (combined <= 2), so every keep is exploration
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=10.0, random_fraction=fraction, seed=seed, max_per_minute=100_000))
    out = []
    for i in range(n):
        d = p.decide(scores(entropy=0.5, novelty=0.5), capture_time_ms=i * 1000)
        if d.keep:
            assert d.reason == REASON_RANDOM
            assert d.combined == 1.0
        else:
            assert d.reason == DROP_BELOW_THRESHOLD
        out.append(d.keep)
    return out


def test_random_fraction_is_deterministic_per_seed():
    a = _random_run(seed=7)
    assert a == _random_run(seed=7)
    assert a != _random_run(seed=8)
    # about 30 % kept (binomial sd ~ 14.5 over 1000 draws)
    assert 230 <= sum(a) <= 370


def test_random_fraction_bounds():
    assert not any(_random_run(seed=1, n=200, fraction=0.0))
    assert all(_random_run(seed=1, n=200, fraction=1.0))


def test_random_keeps_obey_the_cap():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=10.0, random_fraction=1.0, max_per_minute=2))
    ds = [p.decide(scores(), t) for t in (0, 1, 2)]
    assert [d.keep for d in ds] == [True, True, False]
    assert [d.reason for d in ds] == [REASON_RANDOM, REASON_RANDOM, DROP_RATE_CAP]


def test_above_threshold_frames_are_not_labelled_random():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5, random_fraction=1.0))
    assert p.decide(scores(entropy=1.0), 0).reason == REASON_UNCERTAINTY


# --- the is_repeat hook ---------------------------------------------------------------------


class RepeatProbe:
    """A plain callable that answers a fixed value and counts how often it was asked."""

    def __init__(self, answer: bool):
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


def test_repeat_is_dropped_and_takes_no_slot():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5, max_per_minute=1))
    repeat = RepeatProbe(True)
    d = p.decide(scores(entropy=1.0), 0, repeat)
    assert not d.keep and d.reason == DROP_REPEAT and d.combined == 1.0
    assert repeat.calls == 1
    # the repeat did not use the single slot of this minute
    assert p.decide(scores(entropy=1.0), 1, RepeatProbe(False)).keep
    assert p.decide(scores(entropy=1.0), 2, RepeatProbe(False)).reason == DROP_RATE_CAP


def test_repeat_check_only_runs_for_frames_that_would_be_kept():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5))
    probe = RepeatProbe(True)
    d = p.decide(scores(entropy=0.25), 0, probe)  # 0.25 < 0.5
    assert d.reason == DROP_BELOW_THRESHOLD
    assert probe.calls == 0  # the costly appearance check is skipped
    d = p.decide(scores(entropy=0.75), 0, probe)
    assert d.reason == DROP_REPEAT and probe.calls == 1


def test_repeat_check_applies_to_random_exploration():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=10.0, random_fraction=1.0))
    assert p.decide(scores(), 0, RepeatProbe(True)).reason == DROP_REPEAT
    assert p.decide(scores(), 1, RepeatProbe(False)).reason == REASON_RANDOM


def test_no_repeat_hook_means_no_check():
    p = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.5))
    assert p.decide(scores(entropy=1.0), 0, None).keep
    assert p.decide(scores(entropy=1.0), 1).keep


# --- invalid configs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uncertainty_measure": "bogus"},
        {"uncertainty_measure": "novelty"},
        {"max_per_minute": -1},
        {"random_fraction": -0.1},
        {"random_fraction": 1.5},
        {"uncertainty_weight": -1.0},
        {"novelty_weight": -0.5},
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError):
        PolicyConfig(**kwargs)


def test_default_config_is_valid():
    c = PolicyConfig()
    assert c.threshold == 0.5 and c.uncertainty_measure == "entropy" and c.max_per_minute == 60
