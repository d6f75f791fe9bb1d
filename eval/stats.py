"""Uncertainty for offline results: bootstrap CIs, paired model comparison, run summaries.

All functions ignore ``nan`` (users a metric is undefined for), are vectorised over resamples
in bounded-memory chunks, and are deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from eval.metrics import RunResult

__all__ = ["PairedTest", "bootstrap_ci", "paired_test", "summarize"]

# Max resample-matrix cells per chunk (~32 MB of int64 indices), whatever the number of users.
_CHUNK_CELLS = 4_000_000


def _clean(values: ArrayLike, where: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array of per-user values, got shape {x.shape}")
    return x[~np.isnan(x)]


def _check_common(n_boot: int, alpha: float, where: str) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"{where}: n_boot must be a positive int, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{where}: alpha must be in (0, 1), got {alpha!r}")


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``x``."""
    n = len(x)
    out = np.empty(n_boot)
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        out[start : start + b] = x[rng.integers(0, n, size=(b, n))].mean(axis=1)
    return out


def bootstrap_ci(
    values: ArrayLike, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of the mean: ``(mean, lo, hi)`` at level ``1 - alpha``.

    ``nan`` entries are dropped first; no finite value gives ``(nan, nan, nan)``. ``mean`` is
    the sample mean (not the mean of the resampled means).
    """
    _check_common(n_boot, alpha, "bootstrap_ci")
    x = _clean(values, "bootstrap_ci")
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    means = _boot_means(x, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(x.mean()), float(lo), float(hi))


@dataclass(frozen=True)
class PairedTest:
    """Comparison of two models' per-user scores on the same users (difference = a - b).

    ``p_value`` is the two-sided paired sign-flip (permutation) test: under H0 each user's
    difference is symmetric around 0, so its sign is exchangeable. It needs no normality
    assumption and is the one to report. ``p_ttest`` is scipy's paired t-test, for reference.
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_ttest: float
    exact: bool  # True when all 2^n sign patterns were enumerated instead of sampled


def _sign_flip_p(d: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, bool]:
    n = len(d)
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, obs)  # flipped means equal to obs may differ in the last bits
    if 2**n <= n_perm:  # small n: enumerate every sign pattern, exact p-value
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d / n) >= obs - tol)), True
    extreme, total = 0, float(d.sum())
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_perm, step):
        b = min(step, n_perm - start)
        # One random byte gives 8 signs; flipping the set bits turns sum(d) into sum(d) - 2*bits@d.
        bits = np.unpackbits(
            rng.integers(0, 256, size=(b, (n + 7) // 8), dtype=np.uint8), axis=1, count=n
        )
        flipped = (total - 2.0 * (bits @ d)) / n
        extreme += int(np.count_nonzero(np.abs(flipped) >= obs - tol))
    # +1 on both sides counts the observed labelling, so p is never 0 (Phipson & Smyth 2010).
    return (extreme + 1) / (n_perm + 1), False


def _t_p(d: np.ndarray) -> float:
    if len(d) < 2:
        return math.nan
    if np.all(d == d[0]):  # zero variance: scipy would return nan
        return 1.0 if d[0] == 0 else 0.0
    return float(sps.ttest_1samp(d, 0.0).pvalue)  # identical to ttest_rel(a, b)


def paired_test(
    a: ArrayLike,
    b: ArrayLike,
    seed: int = 0,
    n_boot: int = 1000,
    n_perm: int = 10_000,
    alpha: float = 0.05,
) -> PairedTest:
    """Paired comparison of per-user scores ``a`` and ``b`` (same users, same order).

    Pairs where either value is ``nan`` are dropped. Returns the mean difference ``a - b``,
    its percentile bootstrap CI, the sign-flip permutation p-value (exact when
    ``2**n <= n_perm``) and the paired t-test p-value.
    """
    where = "paired_test"
    _check_common(n_boot, alpha, where)
    if int(n_perm) != n_perm or n_perm < 1:
        raise ValueError(f"{where}: n_perm must be a positive int, got {n_perm!r}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"{where}: a and b must be 1-D and aligned per user, got shapes {x.shape} and {y.shape}"
        )
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    if d.size == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, math.nan, False)
    rng = np.random.default_rng(seed)
    means = _boot_means(d, n_boot, rng)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    p_perm, exact = _sign_flip_p(d, n_perm, rng)
    return PairedTest(len(d), float(d.mean()), float(lo), float(hi), float(p_perm), _t_p(d), exact)


def summarize(
    run_result: RunResult,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    keys: Iterable[str] | None = None,
) -> dict[str, dict[str, float]]:
    """``{"recall@10": {"mean": m, "ci_low": lo, "ci_high": hi}, ...}`` for every metric.

    Per-user metrics get a percentile bootstrap CI (same ``seed`` for every metric). Run-level
    scalars (``coverage@K``) have no per-user distribution: their ``mean`` is the value and
    ``ci_low``/``ci_high`` are ``nan``.
    """
    out: dict[str, dict[str, float]] = {}
    for key in run_result.keys() if keys is None else keys:
        v = run_result[key]
        if isinstance(v, np.ndarray):
            m, lo, hi = bootstrap_ci(v, n_boot=n_boot, alpha=alpha, seed=seed)
        else:
            m, lo, hi = float(v), math.nan, math.nan
        out[key] = {"mean": m, "ci_low": lo, "ci_high": hi}
    return out
