"""gradlab.statistics at the edges a comparison meets: diverged runs (inf), unknown values (NaN), ties."""

import itertools
import math
import warnings

import pytest
from scipy import stats

from gradlab import statistics

INF = math.inf


def exact_p(cand, base):
    """The two-sided exact Mann–Whitney p-value by enumerating every split of the pooled values."""
    pooled, n = list(cand) + list(base), len(cand)

    def u(c, b):
        return sum((x < y) + 0.5 * (x == y) for x in c for y in b)
    centre = n * len(base) / 2
    observed = abs(u(cand, base) - centre)
    splits = list(itertools.combinations(range(len(pooled)), n))
    extreme = sum(abs(u([pooled[i] for i in s], [pooled[i] for i in range(len(pooled)) if i not in s]) - centre)
                  >= observed - 1e-12 for s in splits)
    return extreme / len(splits)


def test_mann_whitney_of_all_inf_groups_is_no_test_and_warns_nothing():
    """Every run diverged on both sides (loss ratio inf): every value ties, as for equal finite values."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert statistics.mann_whitney([INF, INF], [INF, INF, INF]) is None
        assert statistics.mann_whitney([0.5, 0.5], [0.5]) is None
        assert statistics.mann_whitney([0.5, math.nan], [0.4, 0.6]) is None  # an unknown value: no test
        assert statistics.mann_whitney([], [INF]) is None


@pytest.mark.parametrize("cand, base", [([INF, INF, INF], [0.9, 1.0, 1.1]), ([0.2, INF, 0.4], [0.9, 1.0, 1.1]),
                                        ([0.2, 0.3, 0.4], [INF, 1.0, 1.2]), ([0.2, 0.3, 0.4], [INF, 1.0, INF])])
def test_mann_whitney_ranks_inf_above_every_finite_value(cand, base):
    """Against the enumerated exact distribution and scipy with inf replaced by a huge finite value."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = statistics.mann_whitney(cand, base)
    finite = [[1e300 if v == INF else v for v in side] for side in (cand, base)]
    assert p == pytest.approx(stats.mannwhitneyu(*finite, alternative="two-sided").pvalue, rel=1e-12)
    if len(set(cand + base)) == len(cand + base):  # no ties: scipy's p is the exact one
        assert p == pytest.approx(exact_p(cand, base), rel=1e-12)
