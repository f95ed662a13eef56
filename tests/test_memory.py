"""Forward memory: the readout against scikit-learn, states built by hand to hold or not hold an input,
every task's declared dependency input recomputed from its targets, and the model wiring.

Tolerances come from N: a readout fitted on n rows with F features scores a state that holds nothing
at R² ≈ -(F + 1)/n (least squares' excess risk out of sample), and accuracies are binomial
proportions with SD sqrt(p(1 - p)/n_test).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradlab.engine
import gradlab.memory
from gradlab.cells import RecurrentNet
from gradlab.memory import DEFAULT_ALPHA, NULL_DRAWS, NULL_SEED, hidden_states, memory, memory_curve, readout_score
from gradlab.tasks import catalogue
from gradlab.vocabulary import SYMBOLS, VALUES

ALL = catalogue()
NO_DEPENDENCY_INPUT = {"digits", "digits[permuted]", "digits[rows]"}  # the class is the target itself
ADDING_FAMILY = {"adding", "adding[tcn]", "adding[pascanu]", "adding[hochreiter]", "adding[near]", "multiplication"}


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# readout_score against scikit-learn


def _nulls(n):
    """The NULL_DRAWS permutations of the fitting half behind the values' ``chance``, drawn as documented."""
    g = torch.Generator().manual_seed(NULL_SEED)
    return [torch.randperm(n, generator=g).numpy() for _ in range(NULL_DRAWS)]


def _sklearn(estimator, x, y, n, orders=()):
    """Held-out predictions of StandardScaler + estimator fitted on the first n rows: to y, then to y in
    each of ``orders``."""
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fits = [y[:n], *(y[:n][o] for o in orders)]
    return [make_pipeline(StandardScaler(), clone(estimator)).fit(x[:n], t).predict(x[n:]) for t in fits]


@pytest.mark.parametrize("N, n_features, outputs, alpha", [
    (301, 7, 1, DEFAULT_ALPHA),  # odd N: the fitting half is the first N // 2 rows
    (400, 12, 3, 0.3),  # several outputs: R² averaged uniformly
    (60, 45, 1, 10.0),  # more features than fitting rows: the dual solve
])
def test_values_score_is_sklearn_ridge_r2(N, n_features, outputs, alpha):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    g = rng(N)
    x = g.normal(size=(N, n_features)) * g.uniform(0.1, 3, n_features) + g.normal(size=n_features)
    y = x @ g.normal(size=(n_features, outputs)) + 2 * g.normal(size=(N, outputs)) + 5  # signal, noise, offset
    n = N // 2
    y = y if outputs > 1 else y[:, 0]
    ref, *null = (r2_score(y[n:], p) for p in _sklearn(Ridge(alpha=alpha, fit_intercept=True), x, y, n, _nulls(n)))
    null = np.mean(null)
    got = readout_score(torch.from_numpy(x), torch.from_numpy(y), VALUES, alpha)
    assert 0.05 < ref < 0.95  # neither trivially perfect nor nothing: the figure tests the fit
    assert got["score"] == pytest.approx(ref, abs=1e-8)
    assert got["chance"] == pytest.approx(null, abs=1e-8) and null < ref - 0.05
    assert (got["n_fit"], got["n_test"]) == (n, N - n)


@pytest.mark.parametrize("N, n_features, classes, alpha", [
    (301, 6, 2, DEFAULT_ALPHA),  # two classes: sklearn keeps one ±1 column, we keep two (same argmax)
    (500, 10, 5, 3.0),
    (80, 60, 4, 0.5),  # the dual solve
])
def test_symbols_score_is_sklearn_ridge_classifier_accuracy(N, n_features, classes, alpha):
    from sklearn.linear_model import RidgeClassifier

    g = rng(N + classes)
    labels = g.choice(classes, size=N, p=np.arange(1, classes + 1) / sum(range(1, classes + 1)))  # unbalanced
    x = g.normal(size=(N, n_features)) + 0.8 * g.normal(size=(classes, n_features))[labels]
    n = N // 2
    ref = (_sklearn(RidgeClassifier(alpha=alpha), x, labels, n)[0] == labels[n:]).mean()
    majority = np.bincount(labels[:n]).argmax()  # the first of equal counts, as ours
    got = readout_score(torch.from_numpy(x), torch.from_numpy(labels), SYMBOLS, alpha)
    assert got["score"] == pytest.approx(ref, abs=1e-8)
    assert got["chance"] == pytest.approx((labels[n:] == majority).mean(), abs=1e-12)
    assert got["chance"] + 0.05 < ref < 1  # above chance, below perfect: the figure tests the fit


def test_features_on_the_float32_side_give_the_float64_figure():
    g = rng(1)
    x, y = g.normal(size=(200, 5)).astype(np.float32), g.normal(size=200)
    a = readout_score(torch.from_numpy(x), torch.from_numpy(y), VALUES)["score"]
    b = readout_score(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y), VALUES)["score"]
    assert a == b  # float32 features are widened before the solve, not solved in float32


# ---------------------------------------------------------------------------
# States built by hand: one stores the input, one does not

N_BIG, NOISE_FEATURES = 4000, 8


def test_a_state_that_stores_a_value_reads_it_back_with_r2_near_1():
    g = rng(2)
    value = g.uniform(size=N_BIG)  # variance 1/12
    features = np.column_stack([value, g.normal(size=(N_BIG, NOISE_FEATURES))])
    got = readout_score(torch.from_numpy(features), torch.from_numpy(value), VALUES)
    # the only loss is ridge's shrinkage of the one (standardised) weight, by α / (n + α): 1 - R² ≈ (α / n)²,
    # and the noise weights fitted to that residual, smaller still
    shrink = DEFAULT_ALPHA / got["n_fit"]
    assert 1 - got["score"] < 5 * shrink**2
    assert 1 - got["score"] > 0  # ridge does shrink: a score of exactly 1 would mean no penalty


def test_a_state_that_holds_nothing_scores_r2_near_0():
    g = rng(3)
    features, value = g.normal(size=(N_BIG, NOISE_FEATURES)), g.uniform(size=N_BIG)
    got = readout_score(torch.from_numpy(features), torch.from_numpy(value), VALUES)
    n = got["n_fit"]
    # expected -(F + 1)/n ≈ -0.0045 (F slopes and the intercept fitted to noise), SD about
    # 2 sqrt(F / n) / sqrt(n_test) ≈ 0.003: a band of 5 (F + 1) / n holds 7 SD either side
    assert abs(got["score"]) < 5 * (NOISE_FEATURES + 1) / n
    assert abs(got["chance"] - got["score"]) < 5 * (NOISE_FEATURES + 1) / n  # the null: the same readout on nothing


def test_a_state_that_stores_a_symbol_reads_it_back_exactly():
    g = rng(4)
    classes = 8
    labels = g.integers(0, classes, N_BIG)
    features = np.column_stack([np.eye(classes)[labels], g.normal(size=(N_BIG, NOISE_FEATURES))])
    got = readout_score(torch.from_numpy(features), torch.from_numpy(labels), SYMBOLS)
    # the one-hot columns fit the ±1 targets exactly (up to a shrinkage of ~0.2 %), a margin of ~2
    # between the true class and any other; the noise columns' weights, fitted to a residual of
    # ~0.01, add ~0.01 · sqrt(F / n): no row can lose its margin
    assert got["score"] == 1.0
    assert got["chance"] < 2 / classes  # 8 balanced classes: the majority's share is ~1/8


def test_a_state_that_holds_no_symbol_scores_near_chance():
    g = rng(5)
    classes = 4
    features, labels = g.normal(size=(N_BIG, NOISE_FEATURES)), g.integers(0, classes, N_BIG)
    got = readout_score(torch.from_numpy(features), torch.from_numpy(labels), SYMBOLS)
    sd = math.sqrt((1 / classes) * (1 - 1 / classes) / got["n_test"])  # ≈ 0.0097 for each proportion
    assert abs(got["chance"] - 1 / classes) < 5 * sd
    assert abs(got["score"] - got["chance"]) < 5 * 2 * sd  # two proportions: SD of the difference ≤ 2 sd


CEILINGS = {  # the closed forms of R² of v1 read linearly from the target, independent values
    "adding": 1 / 2, "adding[tcn]": 1 / 2, "adding[pascanu]": 1 / 2, "adding[near]": 1 / 2,  # Var v1 / Var(v1 + v2)
    "multiplication": 3 / 7,  # Cov(v1, v1 v2)² / (Var v1 Var(v1 v2)) = (1/24)² / (1/12 · 7/144)
    "adding[hochreiter]": 0.8 / 1.8,  # at T = 20: v1 is 0 with p0 = 1/10 + 9/10 / 9 = 0.2, (1 - p0) / (2 - p0)
}


@pytest.mark.parametrize("name", sorted(set(ALL) - NO_DEPENDENCY_INPUT))
def test_a_state_that_holds_only_the_target_reads_the_declared_input_at_the_declared_ceiling(name):
    """Each task's memory_ceiling: the score of its declared input read back from a state that holds the
    target itself (the first scored step's y: a value, or a symbol as one-hot) and nothing else."""
    task, length = ALL[name], 20
    batch = task.generate(N_BIG, length, torch.Generator().manual_seed(6))
    first, kind = task.memory_target(batch, length)
    at = torch.nonzero(batch.score_mask.any(dim=1)).flatten()[0]  # the first step a target is judged at
    held = batch.y[at].double().unsqueeze(1) if kind == VALUES else F.one_hot(batch.y[at]).double()
    got = readout_score(held, first, kind)
    ceiling = task.memory_ceiling(length)
    assert ceiling == pytest.approx(CEILINGS.get(name, 1.0), abs=1e-12)  # the closed form, 1 for symbols
    if kind == SYMBOLS:  # the answer names the symbol: every held-out sequence reads it back
        assert got["score"] == ceiling == 1.0
    else:  # a squared correlation from n_test rows: SD ≈ 2 ρ (1 - ρ²) / sqrt(n) ≈ 0.016
        assert got["score"] == pytest.approx(ceiling, abs=5 * 0.016)
    assert ALL["digits"].memory_ceiling(64) is None  # no declared input, no ceiling


# ---------------------------------------------------------------------------
# Degenerate inputs: None, never an exception


def test_degenerate_inputs_score_none():
    g = rng(7)
    x = torch.from_numpy(g.normal(size=(40, 3)))
    assert readout_score(x[:3], torch.zeros(3), VALUES) == {"score": None, "chance": None, "n_fit": 1, "n_test": 2}
    assert readout_score(x, torch.full((40,), 0.7, dtype=torch.float64), VALUES)["score"] is None  # constant
    one_class = torch.cat([torch.zeros(20, dtype=torch.long), torch.arange(20)])  # one class where it is fitted
    got = readout_score(x, one_class, SYMBOLS)
    assert got["score"] is None and got["chance"] is None  # no readout, so no null of one either
    nan = x.clone()
    nan[5, 1] = float("nan")  # a diverged model's state
    assert readout_score(nan, x[:, 0], VALUES)["score"] is None
    assert readout_score(nan, (x[:, 0] > 0).long(), SYMBOLS)["score"] is None


def test_a_constant_output_is_left_out_of_the_average():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    g = rng(8)
    x = g.normal(size=(200, 4))
    y = np.column_stack([x @ g.normal(size=4) + g.normal(size=200), np.full(200, -1.0)])  # a marker that never moves
    n = 100
    ref = r2_score(y[n:, 0], _sklearn(Ridge(alpha=DEFAULT_ALPHA), x, y[:, 0], n)[0])
    assert readout_score(torch.from_numpy(x), torch.from_numpy(y), VALUES)["score"] == pytest.approx(ref, abs=1e-8)


def test_bad_arguments_are_refused():
    x = torch.zeros(10, 2)
    for args, message in [((x, torch.zeros(10), "value"), "kind must be"),
                          ((x, torch.zeros(9), VALUES), "10 rows, target 9")]:
        with pytest.raises(ValueError, match=message):
            readout_score(*args)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        readout_score(x, torch.zeros(10), VALUES, alpha=0.0)


def _holding(scale, seed=20, n_rows=1000):
    """(state (N, 1 + NOISE_FEATURES), value (N,)): a state whose first unit holds the value exactly, every
    unit at SD ``scale`` about an offset."""
    g = rng(seed)
    value = g.uniform(size=n_rows)
    z = np.column_stack([(value - value.mean()) / value.std(), g.normal(size=(n_rows, NOISE_FEATURES))])
    return scale * z + 0.3, value


def test_large_collinear_states_score_rather_than_raise():
    """A diverging relu model's state: unscaled, XᵀX + αI of two equal columns at 1e9 is singular in float64
    (torch raised _LinAlgError), and a rank-1 state at 1e160 overflowed XᵀX to a NaN score. Standardised
    and solved by SVD they score as the same state at scale 1."""
    state, value = _holding(1.0)
    at_one = readout_score(torch.from_numpy(state), torch.from_numpy(value), VALUES)
    twice = np.column_stack([state[:, 0], state])  # the holding unit duplicated
    big = readout_score(torch.from_numpy(1e9 * twice), torch.from_numpy(value), VALUES)
    assert big["score"] > 1 - 1e-4 and big["chance"] < 0.1
    direction = rng(21).normal(size=5)
    rank_one = np.outer(state[:, 0], direction)  # five units, all the value times a constant
    huge = readout_score(torch.from_numpy(1e160 * rank_one), torch.from_numpy(value), VALUES)
    unit = readout_score(torch.from_numpy(rank_one), torch.from_numpy(value), VALUES)
    assert huge["score"] == pytest.approx(unit["score"], abs=1e-9) and unit["score"] > 1 - 1e-4
    assert huge["chance"] == pytest.approx(unit["chance"], abs=1e-9)
    assert at_one["score"] > 1 - 1e-4


def test_a_held_out_row_far_beyond_the_fitting_half_leaves_its_column_out():
    """Finite features whose held-out rows lie far beyond the fitting half's (a model that diverges on some
    sequences): standardised, the entry is ~1e300 SDs out, beyond ``memory.WILD_SDS``, so the column is left
    out (it overflowed the prediction's square before): the score is the readout's on the other columns."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    state, value = _holding(1.0)
    state[-1, 0] = 1e300  # a held-out row of the holding unit
    got = readout_score(torch.from_numpy(state), torch.from_numpy(value), VALUES)
    n = got["n_fit"]
    ref = r2_score(value[n:], _sklearn(Ridge(alpha=DEFAULT_ALPHA), state[:, 1:], value, n)[0])
    assert got["score"] == pytest.approx(ref, abs=1e-8) and got["score"] < 0.1  # the noise units: nothing


@pytest.mark.parametrize("H", [4, 8, 16])
def test_ordinary_data_at_the_fewest_rows_watch_reads_is_scored_as_scikit_learn(H):
    """At the few rows gradlab.watch reads a memory from (``watching.memory_rows(H)``: n_fit = H + 2), held-out
    entries of ordinary Gaussian columns lie 2-4 SDs out, beyond Samuelson's sqrt(n_fit - 1), often: none is
    left out of the readout (a bound at sqrt(n_fit - 1) zeroed 41 % of the columns at H = 4), so the score is
    scikit-learn's on every seed."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    from gradlab.watching import memory_rows

    N = memory_rows(H)
    n = N // 2
    beyond = 0  # seeds with a held-out entry beyond sqrt(n - 1) SDs: the case the test is about
    for seed in range(60):
        g = rng(seed)
        x = g.normal(size=(N, H))
        y = x @ np.ones(H) + 0.1 * g.normal(size=N)
        got = readout_score(torch.from_numpy(x), torch.from_numpy(y), VALUES)
        ref = r2_score(y[n:], _sklearn(Ridge(alpha=DEFAULT_ALPHA), x, y, n)[0])
        assert got["score"] == pytest.approx(ref, abs=1e-8), seed
        z = (x[n:] - x[:n].mean(axis=0)) / x[:n].std(axis=0)
        beyond += bool((np.abs(z) > math.sqrt(n - 1)).any())
    assert beyond >= 10


def test_a_non_finite_score_is_none():
    """Targets whose squares overflow (R² = 1 - inf / inf): the score is None, not NaN."""
    state, value = _holding(1.0)
    got = readout_score(torch.from_numpy(state), torch.from_numpy(1e200 * value), VALUES)
    assert got["score"] is None and got["chance"] is None


def _saturated(seed, n_rows=1000, holds=False):
    """(state (N, F) float32, value (N,), kept (F,) bool): NOISE_FEATURES normal units (the first holding the
    value when ``holds``) beside tanh-like units saturated at ±1 as the quickstart's vanilla seed 1 had them
    (adding T = 40, float32): on the fitting half some sit at ±1 exactly, some move by one float32 step
    (6e-8) on a few sequences (SD < 1 eps), some vary by ~1e-4 (SD ~ 1e3 eps); on the held-out half a few
    sequences flip them to ∓0.99. ``kept``: the units the readout can use (the normal ones)."""
    g = rng(seed)
    n = n_rows // 2
    value = g.uniform(size=n_rows)
    normal = g.normal(size=(n_rows, NOISE_FEATURES))
    if holds:
        normal[:, 0] = (value - value.mean()) / value.std()
    sign = np.array([1, -1, 1, -1, 1, -1])
    sat = np.tile(sign, (n_rows, 1)).astype(np.float32)  # (N, 6)
    inward = np.nextafter(np.float32(1), np.float32(0)) * sign  # one float32 step towards 0
    for j in (0, 1, 2, 3):  # round-off: a few rows one step in, on both halves
        rows = g.choice(n_rows, size=4, replace=False)
        sat[rows, j] = inward[j]
    sat[:, 4:] -= (sign[4:] * 1e-4 * g.uniform(size=(n_rows, 2))).astype(np.float32)  # tiny but real variation
    sat[:, 1] = sign[1]  # and one exactly constant
    for j in range(6):  # flips on the held-out half
        sat[n + g.choice(n_rows - n, size=3, replace=False), j] = -0.99 * sign[j]
    state = np.column_stack([normal.astype(np.float32), sat])
    return state, value, np.arange(state.shape[1]) < NOISE_FEATURES


@pytest.mark.parametrize("holds", [False, True])
def test_saturated_units_do_not_blow_up_the_score(holds):
    """Standardised by their fitting-half SD (round-off: < 1 eps of float32; or ~1e-4 of a unit), a held-out
    flip to ∓0.99 stood 1e4-1e7 SDs out and the readout's predictions exploded: R² -5.8e9, chance -1e12 on
    the quickstart's vanilla seed 1. Those units carry nothing the fitting half can use: the score is the
    readout's on the other units (scikit-learn on those columns alone), near its chance level when the
    state holds nothing, near 1 when a normal unit holds the value."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    state, value, kept = _saturated(30, holds=holds)
    n = len(value) // 2
    fit = state[:n].astype(np.float64)
    sd = fit.std(axis=0)
    out = np.abs(state[n:] - fit.mean(axis=0)).max(axis=0)
    with np.errstate(divide="ignore"):
        assert (out / sd)[~kept].min() > 1e4  # the state is the pathology: each saturated unit far out
    got = readout_score(torch.from_numpy(state), torch.from_numpy(value), VALUES)
    rest = state[:, kept].astype(np.float64)  # scikit-learn keeps float32 input in float32; ours is float64
    ref, *null = (r2_score(value[n:], p)
                  for p in _sklearn(Ridge(alpha=DEFAULT_ALPHA), rest, value, n, _nulls(n)))
    assert got["score"] == pytest.approx(ref, abs=1e-8)
    assert got["chance"] == pytest.approx(np.mean(null), abs=1e-8)
    F, n_test = int(kept.sum()), got["n_test"]
    spread = math.sqrt(2 * F / (n - F) ** 2 + 4 * F / ((n - F) * n_test))  # readout_score's docstring
    if holds:
        assert got["score"] > 1 - 1e-4
    else:
        assert abs(got["score"] - got["chance"]) < 4 * spread


def test_saturated_units_do_not_blow_up_a_symbols_score():
    """The same state read as a classifier: the saturated units are left out there too (RidgeClassifier on
    the other columns)."""
    from sklearn.linear_model import RidgeClassifier

    state, value, kept = _saturated(31, holds=True)
    labels = (value > 0.5).astype(np.int64)
    n = len(labels) // 2
    rest = state[:, kept].astype(np.float64)
    ref = (_sklearn(RidgeClassifier(alpha=DEFAULT_ALPHA), rest, labels, n)[0] == labels[n:]).mean()
    got = readout_score(torch.from_numpy(state), torch.from_numpy(labels), SYMBOLS)
    assert got["score"] == pytest.approx(ref, abs=1e-12) and ref > 0.9


def test_round_off_is_judged_at_the_dtype_the_state_was_computed_in():
    """A unit at 1 - k float32 steps (k = 0..3, 6e-8 each) holding the value quantised to 4 levels: SD 1.1e-7,
    under 10 eps of float32 (1.2e-6, scikit-learn's near-constant rule) but 5e8 eps of float64. From a float64
    state it is signal and reads the value back; from a float32 state it is round-off, left out as a constant
    unit is: the readout is the other units' (scikit-learn on those alone), though no held-out row lies out."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    g = rng(32)
    value = g.uniform(size=1000)
    step = np.float32(1) - np.nextafter(np.float32(1), np.float32(0))
    unit = np.float32(1) - np.floor(4 * value).astype(np.float32) * step  # 4 levels, exact in float32
    state = np.column_stack([unit, g.normal(size=(1000, NOISE_FEATURES)).astype(np.float32)])
    as64 = readout_score(torch.from_numpy(state.astype(np.float64)), torch.from_numpy(value), VALUES)
    as32 = readout_score(torch.from_numpy(state), torch.from_numpy(value), VALUES)
    n = as32["n_fit"]
    ref = r2_score(value[n:], _sklearn(Ridge(alpha=DEFAULT_ALPHA), state[:, 1:].astype(np.float64), value, n)[0])
    assert as64["score"] > 0.9  # 4 levels of a uniform: R² = 1 - 1/16
    assert as32["score"] == pytest.approx(ref, abs=1e-8) and ref < 0.1


@pytest.mark.parametrize("scale", [1e-2, 1e-4])
def test_the_score_does_not_depend_on_the_states_units(scale):
    """Unscaled, ridge shrank a unit at SD 0.01 until R² fell from 0.97 to 0.09 while it held the value
    exactly. Standardised, the same state at SD 1, 0.01 and 1e-4 scores the same, to rounding."""
    ref = readout_score(torch.from_numpy(_holding(1.0)[0]), torch.from_numpy(_holding(1.0)[1]), VALUES)
    state, value = _holding(scale)
    got = readout_score(torch.from_numpy(state), torch.from_numpy(value), VALUES)
    assert ref["score"] > 1 - 1e-4
    assert got["score"] == pytest.approx(ref["score"], abs=1e-10)
    assert got["chance"] == pytest.approx(ref["chance"], abs=1e-10)


def test_the_values_chance_level_is_the_readouts_score_on_a_state_that_holds_nothing():
    """Not 0: F uninformative columns give R² ≈ -F / (n - F - 1) out of sample (-0.67 here), SD about
    sqrt(2F / (n - F)² + 4F / ((n - F) n_test)) = 0.07 for one draw; the mean of NULL_DRAWS is tighter,
    the score (one fit) is not."""
    g = rng(22)
    N, features = 2000, 400
    x, y = g.normal(size=(N, features)), g.normal(size=N)
    got = readout_score(torch.from_numpy(x), torch.from_numpy(y), VALUES)
    n = got["n_fit"]
    expected = -features / (n - features - 1)
    sd = math.sqrt(2 * features / (n - features) ** 2 + 4 * features / ((n - features) * got["n_test"]))
    assert abs(got["score"] - expected) < 5 * sd and abs(got["chance"] - expected) < 5 * sd
    assert abs(got["chance"]) > 5 * sd  # far from the 0 it used to be


def test_float64_is_decided_by_the_engines_device_fact(monkeypatch):
    """One place says which devices have float64 (gradlab.engine.has_float64); the readout asks it."""
    asked = []
    monkeypatch.setattr(gradlab.memory, "has_float64", lambda device: asked.append(torch.device(device)) or True)
    readout_score(torch.zeros(8, 2), torch.arange(8.0), VALUES)
    assert asked == [torch.device("cpu")]
    assert gradlab.memory.has_float64 is not gradlab.engine.has_float64  # the patch took: the name is looked up
    monkeypatch.undo()
    assert gradlab.memory.has_float64 is gradlab.engine.has_float64


# ---------------------------------------------------------------------------
# Every task declares its dependency input and its readout step


def _first_marked_loop(x, mark=1.0):
    """(B,) the value (channel 0) at the first step whose marker (channel 1) is ``mark``, by a plain loop."""
    return torch.tensor([next(float(x[t, b, 0]) for t in range(x.shape[0]) if x[t, b, 1] == mark)
                         for b in range(x.shape[1])], dtype=torch.float64)


# the adding family's targets from their definitions (Hochreiter 1997, Pascanu 2013, Arjovsky 2016, Bai 2018)
COMBINE = {"adding": lambda a, b: a + b, "adding[tcn]": lambda a, b: a + b, "adding[near]": lambda a, b: a + b,
           "adding[pascanu]": lambda a, b: (a + b) / 2, "adding[hochreiter]": lambda a, b: 0.5 + (a + b) / 4,
           "multiplication": lambda a, b: a * b}


def _expected_target(name, task, batch, length):
    """The dependency input recomputed from the batch's TARGETS (not from where the inputs put it)."""
    y, K = batch.y, 10
    if name in COMBINE:  # y = combine(first, second): solve for first, the second read off the last mark
        x = batch.x
        last = torch.tensor([next(float(x[t, b, 0]) for t in reversed(range(x.shape[0])) if x[t, b, 1] == 1)
                             for b in range(x.shape[1])])
        first = _first_marked_loop(x)
        assert torch.allclose(COMBINE[name](first, last), y[-1].double(), atol=1e-6)  # the first one is right
        return first, VALUES
    if name in ("copy", "memorization"):
        return y[length + K], SYMBOLS  # the first recalled target
    if name.startswith("temporal_order"):
        return y[-1] // 2 ** (len(task.starts) - 1), SYMBOLS  # the class's most significant bit: the first A/B
    if name == "permutation":
        return y[-1], SYMBOLS
    raise AssertionError(f"no expectation for task {name}")


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_task_declares_its_dependency_input(name):
    task = ALL[name]
    length = max(30, task.min_length)
    batch = task.generate(64, length, torch.Generator().manual_seed(9))
    S = batch.x.shape[0]
    step = task.memory_step(length, S)
    scored = torch.nonzero(batch.score_mask.any(dim=1)).flatten()  # the steps a target is judged at
    if len(scored) > 1:  # recall: the state just before the first recall target must hold the symbols
        assert step == scored[0] - 1 and step == task.memory_step(length)
    else:  # one target at the end: the state it is read from
        assert step == scored[0] == S - 1
    declared = task.memory_target(batch, length)
    if name in NO_DEPENDENCY_INPUT:
        assert declared is None and "memory_curve" in type(task).memory_target.__doc__  # says what applies
        return
    target, kind = declared
    expected, expected_kind = _expected_target(name, task, batch, length)
    assert kind == expected_kind and target.shape == (64,)
    assert torch.allclose(target.double(), expected.double(), atol=1e-6)
    assert task.input_kind == (SYMBOLS if kind == SYMBOLS else VALUES)  # the curve decodes what the state holds


@pytest.mark.parametrize("name", sorted(set(ALL) - NO_DEPENDENCY_INPUT))
def test_a_perfect_memory_of_the_declared_input_scores_1(name):
    task = ALL[name]
    length = max(30, task.min_length)
    batch = task.generate(2000, length, torch.Generator().manual_seed(10))
    target, kind = task.memory_target(batch, length)
    g = torch.Generator().manual_seed(11)
    held = F.one_hot(target).double() if kind == SYMBOLS else target.double().unsqueeze(1)
    state = torch.cat([held, torch.randn(2000, NOISE_FEATURES, generator=g, dtype=torch.float64)], dim=1)
    got = readout_score(state, target, kind)
    if kind == SYMBOLS:
        assert got["score"] == 1.0 and got["chance"] < 0.75  # the majority of 2..8 classes is not the answer
    else:  # shrinkage alone, as for the hand-built state above; Var ≥ 1/12 · 0.9 (hochreiter's zeros)
        assert 1 - got["score"] < 5 * (DEFAULT_ALPHA / (got["n_fit"] * 0.9 / 12)) ** 2


@pytest.mark.parametrize("name, hide", [
    ("adding", lambda x: x[:10].zero_()),  # the first half, the first marker with it; the second stays
    ("adding[hochreiter]", lambda x: x[:10].zero_()),  # X1 (and maybe X2) in the first ten pairs
    ("temporal_order", lambda x: x[:4].zero_()),  # the first A/B sits in [2, 4); the second stays
    ("temporal_order_3bit", lambda x: x[:4].zero_()),
    ("copy", lambda x: x[:1].zero_()),  # the first symbol zeroed
    ("copy", lambda x: x[0].copy_(F.one_hot(torch.tensor(0), 10))),  # ... or made a blank (class 0)
    ("memorization", lambda x: x[0].copy_(F.one_hot(torch.tensor(5), 7))),  # a blank (class 5)
    ("permutation", lambda x: x[:1].zero_()),
])
def test_a_hidden_dependency_input_is_none_not_a_wrong_target(name, hide):
    """A batch whose dependency input is no longer there (hidden, as a window over the data would)
    declares no target, rather than the next input in line as if it were the first."""
    task, length = ALL[name], 20
    batch = task.generate(8, length, torch.Generator().manual_seed(12))
    assert task.memory_target(batch, length) is not None
    hidden = batch.x.clone()
    hide(hidden)
    assert task.memory_target(type(batch)(hidden, batch.y, batch.loss_mask, batch.score_mask), length) is None


# ---------------------------------------------------------------------------
# memory and memory_curve on models


class StateOf:
    """A stand-in for a model whose top-layer state at step t is ``state(x)[t]``: the wiring's test."""

    def __init__(self, state):
        self.state = state

    def initial_state(self, batch, *, device=None, dtype=None):
        return None

    def __call__(self, x, state):
        return self.state(x), None


def _noise_like(x, features=NOISE_FEATURES, seed=13):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*x.shape[:2], features, generator=g)


def test_memory_reads_the_state_at_the_declared_step():
    task, length = ALL["permutation"], 12
    batch = task.generate(2000, length, torch.Generator().manual_seed(14))
    first = batch.x[:1].expand_as(batch.x)  # every step's state holds the first input
    holds = StateOf(lambda x: torch.cat([first, _noise_like(x)], dim=-1))
    forgets = StateOf(lambda x: torch.cat([x, _noise_like(x)], dim=-1))  # the state holds the current input only
    held, lost = memory(holds, task, batch, length), memory(forgets, task, batch, length)
    assert held == {"memory": 1.0, "memory_chance": held["memory_chance"], "memory_ceiling": 1.0}
    sd = math.sqrt(0.25 / 1000)  # two equally likely classes, 1000 held-out sequences
    assert abs(held["memory_chance"] - 0.5) < 5 * sd
    assert abs(lost["memory"] - lost["memory_chance"]) < 5 * 2 * sd


def test_memory_on_an_untrained_model_leaves_it_as_it_was():
    task, length = ALL["adding"], 20
    batch = task.evaluation_set(128, length, torch.Generator().manual_seed(15))
    model = RecurrentNet("lstm", task.input_size, 8, task.output_size, seed=0)
    model.weight_hh.grad = torch.ones_like(model.weight_hh)  # a gradient left from training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = memory(model, task, batch, length)
    assert set(got) == {"memory", "memory_chance", "memory_ceiling"} and got["memory_ceiling"] == 1 / 2
    assert got["memory"] is not None and got["memory"] <= 1 and got["memory_chance"] < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.weight_hh.grad, torch.ones_like(model.weight_hh))
    assert got == memory(model, task, batch, length, hs=hidden_states(model, batch))  # one forward, shared
    classify = ALL["temporal_order"]
    symbols = classify.evaluation_set(128, 20, torch.Generator().manual_seed(16))
    got = memory(RecurrentNet("gru", classify.input_size, 8, classify.output_size), classify, symbols, 20)
    assert 0 <= got["memory"] <= 1 and 0 < got["memory_chance"] < 1
    digits = ALL["digits"]
    images = digits.evaluation_set(64, 64, torch.Generator())
    assert memory(RecurrentNet("vanilla", 1, 8, 10), digits, images, 64) == {}


def test_memory_curve_peaks_at_the_lag_the_state_holds():
    task, length, held_lag = ALL["adding"], 20, 3
    batch = task.generate(2000, length, torch.Generator().manual_seed(17))

    def shift(x):  # h_t = (x_{t-3}, noise): a delay line of three steps
        delayed = torch.cat([torch.zeros_like(x[:held_lag]), x[:-held_lag]])
        return torch.cat([delayed, _noise_like(x)], dim=-1)

    curve = memory_curve(StateOf(shift), batch, [0, 1, held_lag, 5, length - 1, length])
    assert list(curve) == [0, 1, held_lag, 5, length - 1, length]
    assert curve[length] is None  # before the first step
    # the two inputs (value, marker) are stored: each R² is 1 up to shrinkage (n Var ≥ 1000 · 0.05)
    assert curve[held_lag] > 1 - 1e-3
    for k in (0, 1, 5, length - 1):  # nothing of those inputs is in the state: as for pure noise
        assert abs(curve[k]) < 5 * (2 + NOISE_FEATURES + 1) / 1000
    at = memory_curve(StateOf(shift), batch, [0], step=held_lag)  # h_3 holds x_0
    assert at[0] < 0.05 and memory_curve(StateOf(shift), batch, [held_lag], step=held_lag)[held_lag] > 1 - 1e-3


def test_memory_curve_of_symbols_is_an_accuracy_and_the_kind_is_read_from_one_hot_inputs():
    task, length = ALL["temporal_order"], 20
    batch = task.generate(1000, length, torch.Generator().manual_seed(18))
    holds_last = StateOf(lambda x: torch.cat([x, _noise_like(x)], dim=-1))
    curve = memory_curve(holds_last, batch, [0, 4])
    assert curve == memory_curve(holds_last, batch, [0, 4], kind=task.input_kind)  # one-hot: SYMBOLS
    assert curve[0] == 1.0 and curve[4] < 0.5  # x_{t-4} is one of 4 distractors (or A/B): about 1/4
    values = memory_curve(holds_last, batch, [0], kind=VALUES)  # the one-hot vector as numbers: R² per class
    assert values[0] > 1 - 1e-2


def test_memory_curve_runs_on_digits_with_a_model():
    digits = ALL["digits"]
    images = digits.evaluation_set(200, 70, torch.Generator())
    model = RecurrentNet("lstm", 1, 8, 10)
    curve = memory_curve(model, images, [0, 3, 6, 10, 69, 70], kind=digits.input_kind)
    assert curve[0] is None and curve[3] is None  # x_69, x_66: blank steps after the image, the same everywhere
    assert curve[69] is None  # the first pixel, 0 in every image: nothing to decode
    assert curve[70] is None  # before the first step
    # the image's last pixels (steps 63, 59), which vary: a figure, not None
    assert all(curve[k] is not None and curve[k] <= 1 for k in (6, 10))


def test_memory_tells_a_hidden_dependency_input_from_a_task_that_declares_none():
    """{} only for a task with no dependency input (digits); a declared input hidden in this batch (as a
    task.window hides it) is a figure that cannot be had: memory None, with the task's ceiling."""
    task, length = ALL["adding"], 20
    batch = task.generate(64, length, torch.Generator().manual_seed(23))
    model = RecurrentNet("gru", task.input_size, 4, task.output_size, seed=0)
    hidden = batch.x.clone()
    hidden[:10] = 0  # the first half, the first marker with it
    windowed = type(batch)(hidden, batch.y, batch.loss_mask, batch.score_mask)
    assert memory(model, task, windowed, length) == {"memory": None, "memory_chance": None, "memory_ceiling": 1 / 2}
    assert memory(model, task, batch, length)["memory"] is not None
    digits = ALL["digits"]
    assert not digits.has_dependency_input and all(ALL[n].has_dependency_input for n in set(ALL) - NO_DEPENDENCY_INPUT)
    assert memory(RecurrentNet("vanilla", 1, 4, 10), digits, digits.evaluation_set(16, 64, torch.Generator()), 64) == {}


def test_memory_curve_refuses_a_step_outside_the_batch():
    task, length = ALL["adding"], 20
    batch = task.generate(16, length, torch.Generator().manual_seed(24))
    holds = StateOf(lambda x: x)
    for step in (length, length + 5, -length - 1):  # `step % S` read step 20 as step 0
        with pytest.raises(ValueError, match=rf"step must be in \[-{length}, {length}\).*got {step}"):
            memory_curve(holds, batch, [0], step=step)
    assert memory_curve(holds, batch, [0], step=-length) == memory_curve(holds, batch, [0], step=0)


def test_a_hidden_symbol_is_left_out_not_counted_as_class_0():
    """A zeroed one-hot input (a step a window hid) has no class; its argmax, 0, would make it one. The state
    here holds the symbol that was there before it was hidden: every shown sequence reads back exactly, and
    a hidden one, counted as class 0, would be wrong in 3 cases of 4."""
    task, length = ALL["temporal_order"], 20
    batch = task.generate(1000, length, torch.Generator().manual_seed(25))
    t, k = length - 1, 3
    before = batch.x[t - k].clone()  # (B, 6): one-hot, a distractor or A/B
    holds = StateOf(lambda x: torch.cat([before.expand(x.shape[0], -1, -1), _noise_like(x)], dim=-1))
    hidden = batch.x.clone()
    hidden[t - k, ::2] = 0  # every other sequence's input at that step
    windowed = type(batch)(hidden, batch.y, batch.loss_mask, batch.score_mask)
    assert memory_curve(holds, windowed, [k])[k] == 1.0  # kind read as SYMBOLS though some steps are all zero
    assert memory_curve(holds, windowed, [k], kind=SYMBOLS)[k] == 1.0
    all_hidden = hidden.clone()
    all_hidden[t - k, : 1000 - 3] = 0  # three sequences left: fewer than two to fit and two to score
    windowed = type(batch)(all_hidden, batch.y, batch.loss_mask, batch.score_mask)
    assert memory_curve(holds, windowed, [k], kind=SYMBOLS)[k] is None


# ---------------------------------------------------------------------------
# the curve a run records: its lags, and the curve of the trained model


@pytest.mark.parametrize("reach, task_lag", [(39, 39), (49, 30), (209, 210), (5, 3), (1, None), (999, 500)])
def test_curve_lags_spread_log_like_over_the_reach_and_hold_the_tasks_lag(reach, task_lag):
    from gradlab.memory import CURVE_LAGS, curve_lags

    lags = curve_lags(reach, task_lag)
    assert lags == sorted(set(lags)) and lags[0] == 1 and lags[-1] == reach
    if task_lag is not None and task_lag <= reach:
        assert task_lag in lags
    spread = [k for k in lags if k != task_lag]
    assert len(spread) <= CURVE_LAGS
    if reach >= 100:  # rounding merges none of the spread: CURVE_LAGS of them, evenly spaced in log k
        assert len(spread) == CURVE_LAGS
        steps = np.diff(np.log(spread))
        even = math.log(reach) / (CURVE_LAGS - 1)
        assert np.all(np.abs(steps - even) < math.log(2) / 2), steps  # rounding to whole steps, at most half a step
    spread_np = set(np.rint(np.geomspace(1, reach, CURVE_LAGS)).astype(int).tolist()) if reach > 1 else {1}
    assert set(lags) == spread_np | ({task_lag} if task_lag is not None and task_lag <= reach else set())
    assert curve_lags(0, 0) == [] and curve_lags(7, 9) == curve_lags(7)  # a lag beyond the reach: not added
    assert curve_lags(5, 3) == [1, 2, 3, 4, 5]  # a short reach: every lag


def test_run_curve_reads_the_declared_step_with_each_lags_chance_level():
    from gradlab.memory import run_curve

    task, length = ALL["copy"], 12  # the state is read at T + 9, the step before the recall; the lag capped there
    batch = task.generate(1000, length, torch.Generator().manual_seed(31))
    t = task.memory_step(length)
    assert t == length + 9 and task.lag(length) == t + 1
    first = batch.x[:1].expand_as(batch.x)
    holds_first = StateOf(lambda x: torch.cat([first, _noise_like(x)], dim=-1))
    got = run_curve(holds_first, task, batch, length)
    assert got["step"] == t and got["task_lag"] == t and got["kind"] == SYMBOLS and t in got["lags"]
    assert got["scores"] == [memory_curve(holds_first, batch, got["lags"], step=t)[k] for k in got["lags"]]
    assert got["scores"][got["lags"].index(t)] == 1.0  # x_0 held: read back exactly at the task's lag
    for k, chance in zip(got["lags"], got["chance"]):
        x = batch.x[t - k]  # (B, I): the held-out half's share of the fitting half's most frequent class
        shown = x.ne(0).any(dim=-1)
        labels = x[shown].argmax(dim=-1).numpy()
        fit, test = labels[: len(labels) // 2], labels[len(labels) // 2:]
        if len(np.unique(fit)) < 2:  # one class only (a blank step): nothing to score
            assert chance is None and got["scores"][got["lags"].index(k)] is None
            continue
        values, counts = np.unique(fit, return_counts=True)
        assert chance == np.mean(test == values[np.argmax(counts)]), k


def test_a_run_records_the_memory_curve_of_its_trained_model(monkeypatch):
    from gradlab import training
    from gradlab.memory import run_curve

    cfg = {"name": "t", "task": {"name": "adding", "length": 10, "eval_size": 64},
           "model": {"cell": "gru", "hidden": 6, "nonlinearity": None, "skip": 2, "engine": "scan"},
           "train": {"steps": 4, "batch_size": 8, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": None, "eval_every": 2, "on_nonfinite": "skip"},
           "diagnostics": {}, "seed": 3, "device": "cpu", "dtype": "float64", "threads": 1}
    kept, real = {}, training.build_model
    monkeypatch.setattr(training, "build_model", lambda *a, **k: kept.setdefault("model", real(*a, **k)))
    calls = []
    real_curve = gradlab.memory.run_curve
    monkeypatch.setattr(gradlab.memory, "run_curve", lambda *a, **k: calls.append(1) or real_curve(*a, **k))
    summary = training.train(cfg)["summary"]
    assert len(calls) == 1  # the last evaluation only, of 3
    task = training.resolve(cfg["task"])
    batch = task.evaluation_set(64, 10, torch.Generator().manual_seed(3 + training.EVAL_SEED_OFFSET))
    want = run_curve(kept["model"], task, batch.to("cpu", torch.float64), 10)
    assert summary["memory_curve"] == want and want["lags"][-1] == 9 == want["task_lag"]
    assert all(isinstance(v, float) for v in want["scores"] + want["chance"])
