"""Statistics for comparing runs over a few seeds: intervals, robust aggregates and tests.

Groups in a gradlab sweep hold 2–10 seeds. Henderson et al. 2018 ("Deep
Reinforcement Learning that Matters") showed that two sets of 5 seeds of the
same algorithm can look significantly different; Agarwal et al. 2021 ("Deep RL
at the Edge of the Statistical Precipice", rliable) ask for interval estimates,
the interquartile mean (IQM) and the probability of improvement; Colas et al.
2018 ("How Many Random Seeds?") show the bootstrap is fragile at 2–3 seeds,
where the individual values are what to show. So:

- a proportion (solved k of n): the Wilson score interval, at any n;
- a per-run figure (the loss relative to the baseline): the IQM with, from
  ``MIN_RUNS_FOR_INTERVAL`` runs on, a 95% BCa bootstrap interval; below, the
  min–max of the runs instead of an interval that pretends precision;
- two sets of runs (a diff): the Mann–Whitney U test (two-sided; distribution
  free, exact for small samples without ties), the probability of improvement
  P(a candidate run beats a base run) with a bootstrap interval from
  ``MIN_RUNS_FOR_INTERVAL`` runs per side, and Fisher's exact test on solved
  counts.

Everything is scipy (``scipy.stats``); nothing is hand-written but the
arithmetic that defines the figures. Random resampling uses a fixed seed, so a
table prints the same numbers every time.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_RUNS_FOR_INTERVAL = 5   # below: min–max (Colas et al. 2018: the bootstrap is fragile at 2–3 seeds)
RESAMPLES = 9999
SEED = 0                    # the bootstrap's random state: the same table every time
ALPHA = 0.05                # a difference is "supported" when the test's p-value is below this


def wilson(k: int, n: int) -> tuple[float, float] | tuple[None, None]:
    """The 95% Wilson score interval of a proportion k/n (Wilson 1927); (None, None) for n = 0."""
    if n == 0:
        return None, None
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def iqm(values, axis=-1):
    """The interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean`` cutting 25% each side).

    It equals the mean for n ≤ 3 and the median of the middle two for n = 4."""
    return stats.trim_mean(values, 0.25, axis=axis)


def _interval(result) -> tuple[float | None, float | None]:
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (None, None)


def iqm_interval(values) -> tuple[float | None, float | None]:
    """A 95% BCa bootstrap interval of the IQM (``scipy.stats.bootstrap``, fixed seed), over the same
    values as ``iqm``; (None, None) below ``MIN_RUNS_FOR_INTERVAL`` values or when one is not finite
    (a diverged run: resamples holding it have no finite IQM). All values equal: that value twice."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(x) < MIN_RUNS_FOR_INTERVAL or not np.isfinite(x).all():
        return None, None
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-jackknife warning: the interval is then NaN, handled
        result = stats.bootstrap((x,), iqm, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                                 rng=np.random.default_rng(SEED), vectorized=True)
    return _interval(result)


def prob_improvement(candidate, base) -> float | None:
    """P(X < Y) + ½·P(X = Y) for a candidate run X and a base run Y, the lower value better
    (Agarwal et al. 2021's probability of improvement; the Mann–Whitney U statistic / (n·m))."""
    x, y = np.asarray(candidate, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if not len(x) or not len(y):
        return None
    return float(_prob_improvement(x, y))


def _prob_improvement(x, y, axis=-1):
    """Vectorised over resamples: x (..., n), y (..., m)."""
    x, y = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]
    return ((x < y) + 0.5 * (x == y)).mean(axis=(-2, -1))


def prob_improvement_interval(candidate, base) -> tuple[float | None, float | None]:
    """A 95% percentile bootstrap interval of ``prob_improvement``, each side resampled on its own;
    (None, None) unless both sides have ``MIN_RUNS_FOR_INTERVAL`` runs."""
    x, y = np.asarray(candidate, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if min(len(x), len(y)) < MIN_RUNS_FOR_INTERVAL:
        return None, None
    result = stats.bootstrap((x, y), _prob_improvement, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                             method="percentile", rng=np.random.default_rng(SEED), vectorized=True)
    return _interval(result)


def mann_whitney(candidate, base) -> float | None:
    """The two-sided Mann–Whitney U test's p-value (scipy: exact for small samples without ties);
    None when a side is empty, every value is equal (no test to make; also when all are inf, the
    loss ratio of diverged runs: scipy would call that total tie p = 1) or a value is NaN (unknown).
    An inf among finite values ranks above them all, as in scipy."""
    x, y = np.asarray(candidate, dtype=np.float64), np.asarray(base, dtype=np.float64)
    values = np.concatenate([x, y])
    if not len(x) or not len(y) or np.isnan(values).any() or (values == values[0]).all():
        return None
    return float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)


def exact_applies(candidate, base) -> bool:
    """Whether ``mann_whitney`` used the exact distribution: scipy does when a side has at most 8
    values and nothing ties (else the normal approximation, which ``smallest_p`` does not bound)."""
    values = np.concatenate([np.asarray(candidate, dtype=np.float64), np.asarray(base, dtype=np.float64)])
    return min(len(candidate), len(base)) <= 8 and len(np.unique(values)) == len(values)


def smallest_p(n: int, m: int) -> float:
    """The smallest two-sided p-value the exact Mann–Whitney test can give at sizes n and m,
    2 / C(n+m, n): at 2 against 2 seeds 0.33, at 3 against 3 0.1, so no difference can be
    significant there however large it is."""
    return min(1.0, 2 / math.comb(n + m, n))


def fisher(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Fisher's exact test (two-sided) of solved k1 of n1 against k2 of n2; None when nothing differs."""
    if n1 == 0 or n2 == 0 or (k1 * n2 == k2 * n1):
        return None if n1 == 0 or n2 == 0 else 1.0
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)
