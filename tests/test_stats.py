"""Tests for eval.stats (bootstrap CIs, paired tests, summaries), expected values by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.stats import bootstrap_ci, paired_test, summarize

from .test_metrics import _hand_run


def test_bootstrap_ci_contains_mean_and_shrinks() -> None:
    rng = np.random.default_rng(0)
    small = rng.random(100)
    large = rng.random(10_000)
    m_s, lo_s, hi_s = bootstrap_ci(small)
    m_l, lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= m_s <= hi_s and lo_l <= m_l <= hi_l
    assert m_s == pytest.approx(small.mean())
    # CI width scales ~ 1/sqrt(n): 100x the data -> about a tenth of the width.
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)
    assert bootstrap_ci(small, seed=1) == bootstrap_ci(small, seed=1)


def test_bootstrap_ci_nan_safe_and_degenerate() -> None:
    x = np.array([0.1, 0.5, np.nan, 0.9, 0.3])
    assert bootstrap_ci(x) == bootstrap_ci(x[~np.isnan(x)])  # nan dropped before resampling
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan, np.nan]))


def test_paired_test_detects_real_difference() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(2000)
    better = base + 0.05 + rng.normal(0, 0.1, 2000)  # true mean difference 0.05
    res = paired_test(better, base)
    assert res.mean_diff == pytest.approx(0.05, abs=0.01)
    assert res.ci_low > 0 and res.ci_low <= res.mean_diff <= res.ci_high
    assert res.p_value < 0.001 and res.p_ttest < 0.001


def test_paired_test_no_difference() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(500)
    same = paired_test(a, a.copy())
    assert same.mean_diff == 0.0 and (same.ci_low, same.ci_high) == (0.0, 0.0)
    assert same.p_value == 1.0 and same.p_ttest == 1.0
    noise = paired_test(a + rng.normal(0, 0.1, 500), a)  # zero-mean noise only
    assert noise.ci_low < 0 < noise.ci_high
    assert noise.p_value > 0.05


def test_paired_test_exact_small_sample() -> None:
    # d = [1, 1, 1, 1]: of the 2^4 = 16 sign patterns only all-plus and all-minus give |mean| >= 1,
    # so the exact two-sided p = 2/16 = 0.125. The nan pair is dropped first.
    res = paired_test([2.0, 2.0, 2.0, 2.0, np.nan], [1.0, 1.0, 1.0, 1.0, 0.0])
    assert res.n == 4 and res.exact
    assert res.p_value == pytest.approx(0.125)
    with pytest.raises(ValueError, match="aligned"):
        paired_test([1.0, 2.0], [1.0])


def test_summarize_shape() -> None:
    res = _hand_run()
    out = summarize(res, n_boot=200)
    assert list(out) == res.keys()
    for key, cell in out.items():
        assert set(cell) == {"mean", "ci_low", "ci_high"}, key
    # recall@2 per user [1, 0, 0] -> mean 1/3; coverage is a run-level scalar without a CI.
    assert out["recall@2"]["mean"] == pytest.approx(1 / 3)
    assert out["recall@2"]["ci_low"] <= 1 / 3 <= out["recall@2"]["ci_high"]
    assert out["coverage@2"]["mean"] == pytest.approx(0.4)
    assert math.isnan(out["coverage@2"]["ci_low"]) and math.isnan(out["coverage@2"]["ci_high"])
    # nan users (u5 has no diversity) are ignored: mean of [1, 1 - 1/sqrt(2)]
    assert out["diversity@2"]["mean"] == pytest.approx((2 - 1 / math.sqrt(2)) / 2)
