"""DP-Flames' adaptive budget policy on scripted validation-MRR sequences."""

from __future__ import annotations

import pytest

from fedsim.config import PrivacySettings
from fedsim.dp.noise_policy import NoisePolicy


def _policy(**kw) -> NoisePolicy:
    settings = PrivacySettings(mode="dp-flames-adaptive", noise_multiplier=1.0, check_per_round=5,
                               diff_mrr=0.001, decline_mult=0.9, sigma_min=0.7, **kw)
    return NoisePolicy(settings, [0, 1])


def test_sigma_declines_exactly_when_the_mrr_gain_is_below_diff_mrr() -> None:
    policy = _policy()
    script = [  # round, client-0 MRR, client-1 MRR
        (5, 0.30, 0.30),    # first check: nothing to compare with
        (10, 0.40, 0.3005),  # client 0 gained 0.1; client 1 gained 0.0005 < 0.001 -> 0.9
        (15, 0.4005, 0.31),  # client 0 gained 0.0005 -> 0.9; client 1 gained 0.0095
        (20, 0.39, 0.30),    # both fell -> client 0: 0.81, client 1: 0.81
        (25, 0.38, 0.29),    # both fell again -> 0.81 * 0.9 = 0.729 (still above the 0.7 floor)
    ]
    expected = [(1.0, 1.0), (1.0, 0.9), (0.9, 0.9), (0.81, 0.81), (0.729, 0.729)]
    for (rnd, m0, m1), (s0, s1) in zip(script, expected, strict=True):
        sig = policy.observe(rnd, {0: m0, 1: m1})
        assert sig[0] == pytest.approx(s0) and sig[1] == pytest.approx(s1), rnd
    sig = policy.observe(30, {0: 0.1, 1: 0.1})
    assert sig == {0: pytest.approx(0.7), 1: pytest.approx(0.7)}  # floor: 0.729 * 0.9 = 0.656 -> 0.7


def test_only_check_rounds_change_sigma() -> None:
    policy = _policy()
    policy.observe(5, {0: 0.5, 1: 0.5})
    for rnd in (6, 7, 8, 9):
        assert policy.observe(rnd, {0: 0.0, 1: 0.0}) == {0: 1.0, 1: 1.0}
    assert policy.needs_validation(10) and not policy.needs_validation(11)


def test_missing_evaluation_keeps_sigma_and_reference() -> None:
    policy = _policy()
    policy.observe(5, {0: 0.5, 1: 0.5})
    assert policy.observe(10, {0: 0.6}) == {0: 1.0, 1: 1.0}  # client 1 did not report
    assert policy.observe(15, {0: 0.7, 1: 0.5})[1] == pytest.approx(0.9)  # compared with round 5's 0.5


def test_schedule_signal_is_data_independent() -> None:
    policy = _policy(adaptive_signal="schedule")
    assert not policy.needs_validation(5)
    assert policy.observe(5, {}) == {0: pytest.approx(0.9), 1: pytest.approx(0.9)}
    assert policy.observe(10, {0: 1.0, 1: 0.0}) == {0: pytest.approx(0.81), 1: pytest.approx(0.81)}


def test_non_adaptive_modes_keep_sigma() -> None:
    policy = NoisePolicy(PrivacySettings(mode="dp-flames", noise_multiplier=1.3), [0, 1, 2])
    assert not policy.needs_validation(5)
    assert policy.observe(5, {0: 0.0, 1: 0.0, 2: 0.0}) == {0: 1.3, 1: 1.3, 2: 1.3}
