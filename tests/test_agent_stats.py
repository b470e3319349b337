"""Protocol statistics on known numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agents.records import Protocol
from device_agents.stats import is_unstable, percentile, summarize, upper_outliers


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0.01, 1e4, allow_nan=False), min_size=1, max_size=60), st.floats(0, 100))
def test_percentile_matches_numpy_linear(values, q):
    assert percentile(sorted(values), q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-12)


def test_upper_outliers_modified_z():
    values = [10.0, 10.1, 10.2, 9.9, 10.0, 10.3, 30.0, 10.1, 9.8, 25.0]
    # median 10.1, MAD 0.2 -> limit 10.1 + 3.5 * 1.4826 * 0.2 = 11.138
    inliers, n = upper_outliers(values, 3.5)
    assert n == 2 and max(inliers) == 10.3
    assert upper_outliers([5.0, 5.0, 5.0, 9.0], 3.5) == ([5.0, 5.0, 5.0, 9.0], 0)  # MAD 0: no scale, keep all
    low = [1.0, 10.0, 10.1, 10.2, 10.0]
    assert upper_outliers(low, 3.5)[1] == 0  # one-sided: a fast run is never an outlier


def test_summarize_known_blocks():
    blocks = [[10.0, 11.0, 12.0], [9.0, 30.0, 9.5], [10.5, 10.5, 11.0]]
    s = summarize(blocks, Protocol(blocks=3, runs_per_block=3))
    assert s.block_min_ms == (10.0, 9.0, 10.5)
    assert s.block_median_ms == (11.0, 9.5, 10.5)
    assert s.block_min_median_ms == 10.0 and s.estimate_ms == 10.0
    assert s.block_min_spread == pytest.approx((10.5 - 9.0) / 10.0)
    assert (s.n_total, s.n_outliers, s.n) == (9, 1, 8)  # 30.0 is the outlier
    inl = [10.0, 11.0, 12.0, 9.0, 9.5, 10.5, 10.5, 11.0]
    assert s.mean_ms == pytest.approx(np.mean(inl))
    assert s.std_ms == pytest.approx(np.std(inl, ddof=1))
    assert s.cv == pytest.approx(np.std(inl, ddof=1) / np.mean(inl))
    flat = sorted(v for b in blocks for v in b)
    assert s.min_ms == 9.0 and s.max_ms == 30.0  # order statistics keep every run
    assert s.median_ms == pytest.approx(np.percentile(flat, 50))
    assert s.p99_ms == pytest.approx(np.percentile(flat, 99))
    assert s.samples_ms is None


@pytest.mark.parametrize("estimator, expected", [("min", 9.0), ("p10", 9.4), ("median", 10.5),
                                                 ("block_min_median", 10.0)])
def test_estimators(estimator, expected):
    blocks = [[10.0, 11.0, 12.0], [9.0, 30.0, 9.5], [10.5, 10.5, 11.0]]
    s = summarize(blocks, Protocol(estimator=estimator, keep_samples=True))
    assert s.estimate_ms == pytest.approx(expected)
    assert s.samples_ms == ((10.0, 11.0, 12.0), (9.0, 30.0, 9.5), (10.5, 10.5, 11.0))


def test_block_min_median_resists_a_slow_block_and_a_fast_one():
    rng = np.random.default_rng(0)
    true = 5.0
    blocks = [list(true + rng.exponential(0.3, 10)) for _ in range(5)]
    blocks[1] = [v + 2.0 for v in blocks[1]]  # a block under sustained interference
    blocks[3] = [v * 0.8 for v in blocks[3]]  # a block in an unusually fast window
    s = summarize(blocks, Protocol())
    assert Protocol().estimator == "block_min_median"
    assert s.estimate_ms == s.block_min_median_ms == pytest.approx(true, rel=0.03)
    # the overall minimum and the 10th percentile follow the fast window
    assert s.min_ms < 0.85 * true and s.p10_ms < 0.9 * true


def test_instability_thresholds():
    p = Protocol(max_cv=0.05, max_block_spread=0.05)
    steady = summarize([[10.0, 10.1, 10.2]] * 3, p)
    assert not is_unstable(steady, p)
    drifting = summarize([[10.0, 10.1], [11.0, 11.1], [12.0, 12.1]], p)
    assert drifting.block_min_spread == pytest.approx(2.0 / 11.0) and is_unstable(drifting, p)
    noisy = summarize([[10.0, 13.0, 10.0, 13.0]] * 3, p)
    assert noisy.cv > 0.05 and is_unstable(noisy, p)
    two_blocks = summarize([[10.0, 10.1], [10.6, 10.7]], p)  # spread 5.8%, but the test needs >= 3 blocks
    assert two_blocks.block_min_spread > 0.05 and two_blocks.cv < 0.05 and not is_unstable(two_blocks, p)


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match="no timed runs"):
        summarize([[], []], Protocol())
    with pytest.raises(ValueError, match="finite and positive"):
        summarize([[1.0, float("inf")]], Protocol())
