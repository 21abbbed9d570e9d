"""KeepPolicy in budget mode: the kept share, pacing across the period, caps that hold under
bursts, exploration, byte budgets and manual keeps."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.policy import (
    DROP_BYTE_BUDGET,
    DROP_RATE_CAP,
    REASON_MANUAL,
    REASON_RANDOM,
    KeepPolicy,
    PolicyConfig,
)
from edge_agent.scoring import FrameScores


def frame_scores(entropy: float, novelty: float = 0.0) -> FrameScores:
    return FrameScores(least_confidence=0.0, margin=0.0, entropy=entropy, novelty=novelty)


def run(policy: KeepPolicy, values, times_ms):
    return [policy.decide(frame_scores(v), t) for v, t in zip(values, times_ms)]


def max_in_any_window(times_ms: list[int], window_ms: int) -> int:
    times = np.asarray(sorted(times_ms))
    if len(times) == 0:
        return 0
    ends = np.searchsorted(times, times + window_ms, side="left")
    return int((ends - np.arange(len(times))).max())


def test_thousand_frames_at_five_percent_keep_five_percent_without_bursts():
    rng = np.random.default_rng(7)
    values = rng.uniform(size=1000)
    values[300:400] += 2.0  # a burst of very interesting frames: the cap must still hold
    times = [i * 1000 for i in range(1000)]  # 1 fps
    policy = KeepPolicy(PolicyConfig(target_fraction=0.05, exploration_share=0.1, max_per_minute=6, seed=1))
    decisions = run(policy, values, times)
    kept_times = [t for d, t in zip(decisions, times) if d.keep]
    assert 40 <= len(kept_times) <= 60, len(kept_times)
    assert max_in_any_window(kept_times, 60_000) <= 6
    assert any(d.reason == DROP_RATE_CAP for d in decisions[300:400])


def test_threshold_adapts_when_the_score_distribution_shifts():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(0.5, 1.0, 2000), rng.uniform(0.0, 0.1, 2000)])  # a new model scores lower
    times = [i * 100 for i in range(4000)]
    policy = KeepPolicy(PolicyConfig(target_fraction=0.05, exploration_share=0.0, max_per_minute=0,
                                     quantile_window=500))
    decisions = run(policy, values, times)
    first = sum(d.keep for d in decisions[:2000])
    second = sum(d.keep for d in decisions[2500:])  # after the window has refilled
    assert 80 <= first <= 120
    assert 55 <= second <= 95  # 5% of 1500
    assert decisions[-1].threshold < 0.1 < decisions[1999].threshold


def test_hour_budget_is_spent_evenly_across_the_hour():
    rng = np.random.default_rng(11)
    n = 36_000  # one hour at 10 fps
    times = [i * 100 for i in range(n)]
    policy = KeepPolicy(PolicyConfig(target_fraction=0.05, exploration_share=0.1, max_per_minute=0,
                                     max_per_hour=360, seed=2))
    decisions = run(policy, rng.uniform(size=n), times)
    kept = [t for d, t in zip(decisions, times) if d.keep]
    assert 300 <= len(kept) <= 360
    per_ten_minutes = np.bincount(np.asarray(kept) // 600_000, minlength=6)
    assert per_ten_minutes.min() >= 40, per_ten_minutes  # not 360 in the first minutes and then nothing
    assert abs(policy.keep_fraction() - 0.01) < 0.001


def test_exploration_share_of_kept_frames_is_random():
    rng = np.random.default_rng(5)
    times = [i * 1000 for i in range(20_000)]
    policy = KeepPolicy(PolicyConfig(target_fraction=0.1, exploration_share=0.25, max_per_minute=0, seed=3))
    decisions = run(policy, rng.uniform(size=20_000), times)
    kept = [d for d in decisions if d.keep]
    share = sum(d.reason == REASON_RANDOM for d in kept) / len(kept)
    assert 0.18 <= share <= 0.32
    assert 0.08 <= len(kept) / 20_000 <= 0.12


def test_equal_scores_still_keep_the_target_share():
    times = [i * 1000 for i in range(4000)]
    policy = KeepPolicy(PolicyConfig(target_fraction=0.05, exploration_share=0.0, max_per_minute=0))
    kept = sum(d.keep for d in run(policy, [0.5] * 4000, times))
    assert 150 <= kept <= 250


def keep_and_pay(policy: KeepPolicy, values, times, n_bytes: int) -> tuple[list[int], list[str]]:
    kept, reasons = [], []
    for t, v in zip(times, values):
        d = policy.decide(frame_scores(v), t)
        reasons.append(d.reason)
        if d.keep:
            policy.record_bytes(t, n_bytes)
            kept.append(t)
    return kept, reasons


def test_byte_budget_is_paced_over_the_day():
    times = [i * 60_000 for i in range(2 * 1440)]  # two days, one frame a minute
    policy = KeepPolicy(PolicyConfig(target_fraction=0.5, exploration_share=0.0, max_per_minute=0,
                                     max_bytes_per_day=100_000))  # 20 frames of 5 kB a day
    kept, _ = keep_and_pay(policy, np.random.default_rng(1).uniform(size=len(times)), times, 5_000)
    assert max_in_any_window(kept, 86_400_000) * 5_000 <= 100_000
    assert 30 <= len(kept) <= 40
    assert np.bincount(np.asarray(kept) // 21_600_000).min() >= 1  # every quarter day gets some


def test_byte_budget_is_a_hard_cap():
    times = [i * 1000 for i in range(100)]
    policy = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.0, max_per_minute=0, max_bytes_per_day=100_000))
    kept, reasons = keep_and_pay(policy, [1.0] * 100, times, 5_000)
    assert len(kept) == 20
    assert reasons[20:] == [DROP_BYTE_BUDGET] * 80


def test_manual_keeps_even_below_threshold_and_over_cap():
    policy = KeepPolicy(PolicyConfig(mode="threshold", threshold=0.9, max_per_minute=1))
    assert policy.decide(frame_scores(1.0), 0).keep
    d = policy.decide(frame_scores(0.0), 1, manual=True)
    assert d.keep and d.reason == REASON_MANUAL


def test_same_seed_same_decisions():
    values = np.random.default_rng(0).uniform(size=500)
    times = [i * 500 for i in range(500)]
    a = run(KeepPolicy(PolicyConfig(seed=4)), values, times)
    b = run(KeepPolicy(PolicyConfig(seed=4)), values, times)
    assert [d.keep for d in a] == [d.keep for d in b]


@pytest.mark.parametrize("kwargs", [{"mode": "adaptive"}, {"target_fraction": 0.0}, {"target_fraction": 1.5},
                                    {"exploration_share": 2.0}, {"max_per_hour": -1}, {"max_bytes_per_day": -5},
                                    {"quantile_window": 5}])
def test_invalid_budget_config(kwargs):
    with pytest.raises(ValueError):
        PolicyConfig(**kwargs)
