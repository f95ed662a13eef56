"""Forward memory: can the input a task depends on be read back from the hidden state?

A vanishing gradient says the loss cannot *teach* the network to keep an input; whether
the state *holds* it is a separate, forward question (issue 23, point 3). It is answered
the way probing classifiers answer it (Alain & Bengio 2016, "Understanding intermediate
layers using linear classifier probes", arXiv:1610.01644; the readout of a reservoir,
Jaeger 2001's memory capacity, "Short term memory in echo state networks", GMD Report
152, which sums the squared correlation of the input k steps back with its best linear
readout over k): fit a linear readout from the hidden state on one half of the
evaluation set and score it on the other half, R² for a real value, accuracy for a
symbol, next to a chance level: for a value the score of the same readout on a state that
holds nothing of it (a permutation null), for a symbol the majority class's share.

- ``readout_score``: the held-out score of a ridge readout on standardised features (closed
  form by SVD, float64, on the features' device), equal to scikit-learn's ``StandardScaler``
  + ``Ridge`` + ``r2_score`` and ``StandardScaler`` + ``RidgeClassifier`` on the same split
  (tests/test_memory.py).
- ``memory``: the score of the task's declared dependency input (``Task.memory_target``)
  from the top layer's hidden state at ``Task.memory_step`` (a lower bound on what the whole
  state holds), with the score a solver's state reaches (``Task.memory_ceiling``).
- ``memory_curve``: the score of the whole input x_{t-k} from h_t, for a range of lags k:
  memory against lag, which needs no task (digits, a user's own data).
- ``run_curve``: the curve a run records at its final evaluation (``curve_lags``: a dozen lags
  spread log-like over the readout step's reach, the task's own lag among them), with the chance
  level at each lag.

torch only; the model runs under ``no_grad`` and its parameters, gradients and mode are
left as they were.
"""

from __future__ import annotations

import math

import torch

from gradlab.engine import has_float64
from gradlab.task import Batch
from gradlab.vocabulary import SYMBOLS, VALUES

# The ridge penalty on STANDARDISED features (each column centred and divided by its SD on the fitting
# half, as scikit-learn's StandardScaler; alpha as Ridge's, whose default it is, so a reader's
# make_pipeline(StandardScaler(), Ridge()) gives the same figure). Standardising makes the score
# independent of the state's units: a unit that holds the input at SD 1e-4 scores as one at SD 1
# (unscaled, α = 1 at n_fit = 500 shrank a unit of variance v's weight by α / (n v + α): 8 % at SD 0.15,
# 69 % at SD 0.03, 95 % at SD 0.01, so R² fell 0.97 -> 0.09 while the state held the value exactly).
# Each standardised column adds n_fit to XᵀX's diagonal, so α = 1 shrinks a lone informative column's weight by
# α / (n_fit + α) (0.2 % at n_fit = 500: R² loses ~(α / n_fit)², 4e-6); among correlated columns it
# shrinks a direction of the state by α / (s² + α), s² = n_fit x its share of one column's variance,
# so only directions under ~1/n_fit of a unit's variance, below what n_fit rows can estimate, are
# damped. It keeps the weights bounded where columns are collinear (saturated or duplicated units)
# or H >= n_fit, and does not try to regularise away the overfitting to F uninformative columns:
# that is what the permutation null (``chance``) measures.
DEFAULT_ALPHA = 1.0
MIN_ROWS = 4  # two to fit, two to score: fewer leave no variance to explain on either half
# The values' chance level: the mean over NULL_DRAWS permutations of the fitting half's targets, drawn in turn
# from a generator seeded NULL_SEED (fixed, so a figure repeats). One draw on a state that holds the value
# spreads by about 2 / sqrt(n_fit) (0.09 at n_fit = 500: the readout fits the shuffled targets' chance
# correlation with the true ones); ten cut that to 0.03, for ten (F, n_fit) x (n_fit, d) products: the
# SVD is shared.
NULL_SEED, NULL_DRAWS = 0, 10
# The lags a run's recorded memory curve measures (``curve_lags``): this many spread log-like over 1..t, the
# readout step's reach, plus the task's own lag. A dozen draw the curve's shape on a log axis (1, 2, 3, 4, 6,
# 8, 12, 17, 24, 34, 49 at t = 49: rounding merges the first) for a readout per lag on one forward pass's
# states. Measured (benchmarks/diagnosis.py, adding T = 50, 1000 evaluation sequences, 64 units): 5-11 % of a
# run's wall time if taken at every evaluation (eval_every 100), so training takes it at the last one only,
# 0.5-1.1 % of the run.
CURVE_LAGS = 12
# How far out (in the fitting half's SDs) a held-out entry of a column may lie before the column is left out of
# the readout (``_standardise``). Far beyond what data reach, even at the few rows gradlab.watch fits on: for a
# Gaussian column a held-out entry's standardised value is sqrt((n + 1) / (n - 1)) t_{n-1} (Student's t), so it
# exceeds 100 SDs with probability 4e-9 per entry at n = 6 (H = 4), 1e-14 at n = 10, 1e-24 at n = 18, and
# 2e-4 at n = 3, the fewest memory_rows allows (H = 1); measured by simulation, a heavy-tailed t_3 column's
# 1e-4 quantile is 36 SDs at n = 6 and 17 at n = 250, a lognormal's 74 and 20. The pathology it is there
# for, saturated units that flip on a held-out sequence, stood 170 - 7e5 SDs out (``_standardise``).
WILD_SDS = 100.0


def readout_score(features: torch.Tensor, target: torch.Tensor, kind: str, alpha: float = DEFAULT_ALPHA) -> dict:
    """The held-out score of a ridge readout of ``target`` from ``features``, and its chance level.

    features (N, F) (or (N,)); the first N//2 rows fit the readout, the other rows score it
    (the evaluation set's sequences are independent draws, so the halves are a random split).
    Each feature column is standardised on the fitting half (scikit-learn's ``StandardScaler``:
    centred, divided by its SD; a column constant there, up to the round-off of the features' dtype,
    is zeroed), so the score does not depend on the state's units; a column whose held-out rows lie
    more than ``WILD_SDS`` SDs out is zeroed too (``_standardise``: saturated units
    that flip on a few held-out sequences); the targets are centred (an intercept, ``fit_intercept=True``); then
    w = V diag(s / (s² + α)) Uᵀ y from the SVD X = U diag(s) Vᵀ of the fitting half, in float64:
    the ridge solution (XᵀX + αI)⁻¹ Xᵀy without forming XᵀX, defined for every finite X (collinear
    columns, F > N//2) where a solve of XᵀX + αI can fail as singular in floating point.

    kind VALUES: target (N,) or (N, d) floats; score = R² on the held-out half,
    1 - SSE / SST with SST about the held-out targets' own mean (scikit-learn's ``r2_score``),
    averaged over the d outputs. chance = the permutation null (Ojala & Garriga 2010,
    "Permutation tests for studying classifier performance", JMLR 11): the mean R² of the same
    readout, on the same features, fitted to the fitting half's targets shuffled (``NULL_DRAWS``
    fixed permutations) and scored on the held-out half: what this readout scores on a state
    that holds nothing of the target. It is below 0, not 0: a readout fitted on F columns that
    hold nothing overfits them, R² ≈ -F / (n_fit - F - 1) (least squares' excess risk out of
    sample; -0.15 for F = 64 at n_fit = 500), with a spread of about
    sqrt(2F / (n_fit - F)² + 4F / ((n_fit - F) n_test)) (0.05 there) for a score as for the null.
    A score within a few of those of ``chance`` means not held.
    kind SYMBOLS: target (N,) int class labels; a ridge classifier (scikit-learn's
    ``RidgeClassifier``: ±1 one-hot targets for the classes seen in the fitting half, the
    highest score wins); score = held-out accuracy; chance = the held-out accuracy of always
    predicting the fitting half's most frequent class (the smallest label on a tie), what a
    readout that ignores the state scores. Not a permutation null: on a state that holds the
    symbol, a classifier fitted to shuffled labels picks a coin-flip decision from their chance
    correlation with the true ones, so one draw scores anywhere in [0, 1] (measured: 0.37 for two
    balanced classes held exactly, n_fit = 1000); and a ridge classifier on columns that hold
    nothing scores about the majority's share, not below it as R² does (tests/test_memory.py).

    Returns {"score", "chance", "n_fit", "n_test"}. score and chance are None, never an exception,
    when there is nothing to score: N < MIN_ROWS; non-finite features (a diverged model's state);
    VALUES whose held-out targets are all constant (R² is 0/0; a constant output among several
    is left out of the average, where ``r2_score`` would count it as 1 or 0); SYMBOLS with a
    single class in the fitting half (nothing to separate); a score that comes out non-finite (a
    guard: with the columns beyond the fitting half's reach left out, every standardised entry is
    within ``WILD_SDS`` (or sqrt(n_fit - 1), the fitting half's own reach) and the predictions stay bounded).
    """
    if kind not in (VALUES, SYMBOLS):
        raise ValueError(f"kind must be {VALUES!r} or {SYMBOLS!r}, got {kind!r}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 (the readout's weights must stay bounded), got {alpha}")
    features = torch.as_tensor(features)
    # the resolution of the dtype the state was computed in, before it is widened (float32: 1.2e-7);
    # an integer state is exact
    resolution = torch.finfo(features.dtype).eps if features.dtype.is_floating_point else 0.0
    x = _float64(features)
    x = x.flatten(1) if x.dim() > 1 else x[:, None]  # (N, F); reshape(N, -1) fails on N = 0 (all rows hidden)
    y = torch.as_tensor(target).to(x.device)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"features have {x.shape[0]} rows, target {y.shape[0]}")
    N = x.shape[0]
    n = N // 2
    out = {"score": None, "chance": None, "n_fit": n, "n_test": N - n}
    if N < MIN_ROWS or not torch.isfinite(x).all():
        return out
    scores = (_r2 if kind == VALUES else _accuracy)(x, y, n, alpha, resolution)
    if scores is None or not all(map(_finite, scores)):
        return out
    return {**out, "score": scores[0], "chance": scores[1]}


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _r2(x: torch.Tensor, y: torch.Tensor, n: int, alpha: float, resolution: float) -> tuple[float, float] | None:
    """(held-out R², its permutation null: the mean over NULL_DRAWS), each averaged over the outputs that
    vary, for x (N, F), y (N,) or (N, d); None when no output varies on the held-out half."""
    y = y.to(torch.float64).reshape(y.shape[0], -1)  # (N, d)
    test = y[n:]
    varies = test.amax(dim=0) > test.amin(dim=0)  # exact: a float mean of equal values need not be exact
    if not varies.any():
        return None
    nulls = [y[:n][order] for order in _null_orders(n, y.device)]
    preds = _fit_predict(x, [y[:n], *nulls], n, alpha, resolution)  # each (N - n, d)
    sst = ((test - test.mean(dim=0)) ** 2).sum(dim=0)
    r2 = [(1 - ((test - p) ** 2).sum(dim=0)[varies] / sst[varies]).mean().item() for p in preds]
    return r2[0], sum(r2[1:]) / len(nulls)


def _accuracy(x: torch.Tensor, y: torch.Tensor, n: int, alpha: float,
              resolution: float) -> tuple[float, float] | None:
    """(held-out accuracy of the ridge classifier, majority-class chance) for x (N, F), y (N,) labels;
    None with fewer than two classes in the fitting half."""
    y = y.reshape(-1)
    classes, counts = torch.unique(y[:n], return_counts=True)  # sorted, as LabelBinarizer's
    if classes.numel() < 2:
        return None
    test = y[n:]
    chance = (test == classes[counts.argmax()]).double().mean().item()  # argmax: the first of equal counts
    signs = torch.where(y[:n].unsqueeze(1) == classes, 1.0, -1.0).to(torch.float64)  # (n, K) one-hot ±1
    pred = classes[_fit_predict(x, [signs], n, alpha, resolution)[0].argmax(dim=1)]  # (N - n,)
    return (pred == test).double().mean().item(), chance


def _null_orders(n: int, device: torch.device) -> list[torch.Tensor]:
    """NULL_DRAWS fixed permutations (n,) of the fitting half (drawn on the host: the same on every device)."""
    g = torch.Generator().manual_seed(NULL_SEED)
    return [torch.randperm(n, generator=g).to(device) for _ in range(NULL_DRAWS)]


def _fit_predict(x: torch.Tensor, targets: list[torch.Tensor], n: int, alpha: float,
                 resolution: float) -> list[torch.Tensor]:
    """Ridge with an intercept on standardised features, fitted on rows [0, n) of x (N, F) to each
    target (n, d) of ``targets`` (one SVD serves them all); predictions (N - n, d) for the other rows.
    resolution: the features' dtype's eps (``_standardise``)."""
    z = _standardise(x, n, resolution)  # (N, F)
    u, s, vh = torch.linalg.svd(z[:n], full_matrices=False)  # (n, r), (r,), (r, F), r = min(n, F)
    shrink = s / (s**2 + alpha)  # (r,): 0 for a null direction (s = 0), never a division by 0
    preds = []
    for t in targets:
        mean = t.mean(dim=0)
        w = vh.T @ (shrink.unsqueeze(1) * (u.T @ (t - mean)))  # (F, d)
        preds.append(z[n:] @ w + mean)
    return preds


def _standardise(x: torch.Tensor, n: int, resolution: float) -> torch.Tensor:
    """x (N, F) with each column centred and divided by its SD over rows [0, n) (ddof 0, as StandardScaler),
    0 for a column that is constant there or whose held-out rows lie more than ``WILD_SDS`` SDs out (or beyond
    sqrt(n - 1), where the fitting rows themselves reach further). Each column is first divided by its largest
    |entry| on those rows, so the squares cannot overflow (a state at 1e160 standardises as one at 1).

    resolution: the eps of the dtype the features were computed in (float32: 1.2e-7; 0 for exact integers).
    """
    fit = x[:n]
    top = fit.abs().amax(dim=0)  # (F,)
    exact = fit.amax(dim=0) == fit.amin(dim=0)  # exact, as in _r2
    top = torch.where(exact | (top == 0), torch.ones_like(top), top)
    scaled = x / top  # fitting rows in [-1, 1]
    mean = scaled[:n].mean(dim=0)
    sd = ((scaled[:n] - mean) ** 2).mean(dim=0).sqrt()  # (F,), in units of the column's largest |entry|
    # Constant up to round-off: an SD under 10 eps of the features' dtype, relative to the column's largest
    # |entry|, is scikit-learn's own near-constant rule (``_handle_zeros_in_scale``: a scale < 10 eps is
    # set to 1) taken relative to the column's magnitude and at the dtype the state was computed in, not
    # the float64 it is widened to. A float32 tanh unit saturated at -1 moves in steps of 6e-8 (eps / 2):
    # measured on the quickstart's vanilla seed 1 (adding T = 40, 2000 steps), 14 of 64 units varied on the
    # fitting half by 0.1-8 eps only (the exact test caught 20 more), and a held-out sequence where such a
    # unit flipped to +0.99 stood 3e7 SDs out: R² -5.8e9, chance -1.0e12. Variation at round-off carries
    # nothing the readout can fit; such a column is zeroed, as an exactly constant one.
    constant = exact | (sd < 10 * resolution)
    z = torch.where(constant, torch.zeros_like(scaled), (scaled - mean) / torch.where(constant, 1.0, sd))
    # Beyond the fitting half's reach: a held-out entry more than WILD_SDS SDs from the fitting half's mean (or,
    # where the fitting half itself reaches further, its own largest possible deviation, sqrt(n - 1) SDs with
    # ddof 0: Samuelson 1968, "How deviant can you be?", JASA 63: 1522) lies where the fit has seen nothing,
    # and a linear readout extrapolates its weight there unboundedly. In that run, 9 more saturated units
    # (SD 10 eps - 2e4 eps) flipped on a held-out sequence, 170 - 7e5 SDs out: R² -4.5e6 with the round-off
    # columns zeroed, -0.095 (chance -0.109) with these zeroed too. Such a column is left out of the readout
    # (the figure stays a lower bound on what the state holds; the choice sees the held-out features, never
    # their targets). The bound is WILD_SDS, not sqrt(n - 1): at the few rows gradlab.watch reads from
    # (n = H + 2, ``watching.memory_rows``) an ordinary held-out entry exceeds sqrt(n - 1) = 2-4 SDs often
    # (measured: 41 % of Gaussian columns zeroed at H = 4, R² 0.14 where scikit-learn's is 0.88).
    wild = (z[n:].abs() > max(WILD_SDS, math.sqrt(max(n - 1, 0)))).any(dim=0)  # (F,)
    return torch.where(wild, torch.zeros_like(z), z)


def _float64(t: torch.Tensor) -> torch.Tensor:
    """t in float64: on its own device where that has float64 (``engine.has_float64``), else on the host."""
    return (t if has_float64(t.device) else t.cpu()).to(torch.float64)


@torch.no_grad()
def hidden_states(model, batch: Batch) -> torch.Tensor:
    """The top layer's hidden states (S, B, H) of ``model`` run on batch.x from its initial state, without a graph."""
    state = model.initial_state(batch.x.shape[1], device=batch.x.device, dtype=batch.x.dtype)
    hs, _ = model(batch.x, state)
    return hs


def memory(model, task, batch: Batch, length: int, hs: torch.Tensor | None = None) -> dict:
    """How well the task's dependency input (``task.memory_target``) reads back from the top layer's
    hidden state at ``task.memory_step``: {"memory": score, "memory_chance": chance,
    "memory_ceiling": ``task.memory_ceiling(length)``} (score and chance as ``readout_score``).

    - {} when the task declares no dependency input (``task.has_dependency_input`` False: digits,
      whose class is the target itself; use ``memory_curve``).
    - memory and memory_chance None when the task declares one but there is nothing to score:
      this batch does not hold it (hidden, as a ``task.window`` over the data does: ``memory_target``
      None) or ``readout_score`` has nothing to score (a diverged state, a single class).

    What the figure is and is not:

    - It reads the top layer's h only, the state the model's output reads. An LSTM can hold an
      input in its cell c with the output gate closed (h carries o ⊙ tanh(c)), and a stack can hold
      it in a lower layer, so the score is a lower bound on what the whole state holds.
    - memory_ceiling: the score of a state that holds exactly the task's target (linearly) and
      nothing else. Where the declared input is not a function of the target it is below 1: a
      perfect adding solver whose state keeps only v1 + v2 reads v1 back at R² 1/2 (3/7 for the
      product), so 0.5 there is a solver, not half lost; where it is 1 (symbols), anything below
      1 is lost.

    batch: the evaluation set (its first half fits the readout, the rest scores it); hs: its
    hidden states (S, B, H) when the caller already has them (``hidden_states``), else one
    forward pass under no_grad.
    """
    if not task.has_dependency_input:
        return {}
    result = {"memory": None, "memory_chance": None, "memory_ceiling": task.memory_ceiling(length)}
    declared = task.memory_target(batch, length)
    if declared is None:
        return result
    hs = hidden_states(model, batch) if hs is None else hs
    step = task.memory_step(length, batch.x.shape[0])
    scored = readout_score(hs[step], *declared)
    return {**result, "memory": scored["score"], "memory_chance": scored["chance"]}


def memory_curve(model, batch: Batch, lags, step: int | None = None, kind: str | None = None,
                 hs: torch.Tensor | None = None) -> dict:
    """Memory against lag: {k: score} for each k in ``lags``, the held-out score of the whole input
    x_{t-k} (I,) read back from the top layer's h_t (``readout_score``; a lower bound, as for
    ``memory``), t = ``step`` (default the last step; -S <= step < S, negative counting from the end).

    kind: how the input is scored: SYMBOLS (its class, the argmax of a one-hot input; accuracy)
    or VALUES (the I numbers; R² averaged over those that vary). Pass the task's declaration,
    ``task.input_kind``; None decides from the data: SYMBOLS when every input of the batch is
    one-hot or all zero (entries 0 or 1, at most one 1 per step), as a user's own batch without a
    task may be. For SYMBOLS an all-zero input (a hidden step) has no class: those sequences are
    left out at that lag (the first half of the others fits the readout), and the lag scores None
    when fewer than ``MIN_ROWS`` remain. A lag beyond the first step (k > t) scores None. The
    chance levels are ``readout_score``'s (for one lag, call it on hs[t] and x_{t-k}).
    """
    hs = hidden_states(model, batch) if hs is None else hs
    S = batch.x.shape[0]
    if step is not None and not -S <= step < S:
        raise ValueError(f"step must be in [-{S}, {S}) for a batch of {S} steps, got {step}")
    t = S - 1 if step is None else step % S
    kind = kind or (SYMBOLS if _one_hot(batch.x) else VALUES)
    curve = {}
    for k in lags:
        k = int(k)
        if k < 0:
            raise ValueError(f"a lag is a number of steps back, >= 0, got {k}")
        curve[k] = None if k > t else _read_input(hs[t], batch.x[t - k], kind)["score"]
    return curve


def _read_input(h: torch.Tensor, x: torch.Tensor, kind: str) -> dict:
    """``readout_score`` of the input x (B, I) read back from h (B, H); for SYMBOLS only the rows whose
    input is not all zero (hidden), whose class is their argmax."""
    if kind == VALUES:
        return readout_score(h, x, VALUES)
    shown = x.ne(0).any(dim=-1)  # (B,)
    return readout_score(h[shown], x[shown].argmax(dim=-1), SYMBOLS)


def curve_lags(reach: int, task_lag: int | None = None, count: int = CURVE_LAGS) -> list[int]:
    """The lags a recorded memory curve measures: ``count`` spread evenly in log k over 1..reach (rounded to
    whole steps, repeats dropped: fewer for a short reach), and ``task_lag`` when it is in 1..reach; sorted.

    reach: the readout step t (the farthest lag with an input, x_0); [] when it is 0 (nothing before t).
    """
    if reach < 1:
        return []
    if count < 2:
        raise ValueError(f"a curve needs at least 2 lags, got {count}")
    spread = {round(math.exp(math.log(reach) * i / (count - 1))) for i in range(count)}  # 1 and reach included
    if task_lag is not None and 1 <= task_lag <= reach:
        spread.add(int(task_lag))
    return sorted(spread)


def run_curve(model, task, batch: Batch, length: int, hs: torch.Tensor | None = None) -> dict:
    """The memory curve a run records: the readout step t = ``task.memory_step`` (where ``memory`` reads the
    state; the last step for most tasks), the lags of ``curve_lags(t, task_lag)`` and, for each, the
    held-out score of x_{t-k} from h_t (``memory_curve``, kind ``task.input_kind``) and its chance level
    (``readout_score``'s: the permutation null for values, the majority class's share for symbols).

    Returns {"lags": [k], "scores": [score or None], "chance": [chance or None], "kind": task.input_kind,
    "step": t, "task_lag": the task's lag as seen from t}. task_lag is ``task.lag(length)`` capped at t:
    a task whose target is read after t (copy: its first symbol is recalled at T + 10, the state read
    at T + 9, the step before the recall starts) has its dependency input at lag t from there.
    """
    hs = hidden_states(model, batch) if hs is None else hs
    S = batch.x.shape[0]
    t = task.memory_step(length, S)
    task_lag = min(task.lag(length), t)
    lags = curve_lags(t, task_lag)
    read = [_read_input(hs[t], batch.x[t - k], task.input_kind) for k in lags]
    return {"lags": lags, "scores": [r["score"] for r in read], "chance": [r["chance"] for r in read],
            "kind": task.input_kind, "step": t, "task_lag": task_lag}


def _one_hot(x: torch.Tensor) -> bool:
    """Whether every step's input in x (S, B, I) is one-hot or all zero: entries 0 or 1, summing to at most 1."""
    return bool(((x == 0) | (x == 1)).all() and (x.sum(dim=-1) <= 1).all())


def input_readout(h: torch.Tensor, x: torch.Tensor, kind: str | None = None) -> dict:
    """One lag of ``memory_curve`` with its chance level: ``readout_score``'s dict for the input x (B, I) read
    back from h (B, H). kind None decides from x as ``memory_curve`` does (SYMBOLS when one-hot or all zero)."""
    return _read_input(h, x, kind or (SYMBOLS if _one_hot(x[None]) else VALUES))
