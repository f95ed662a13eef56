"""Gradient diagnostics: summarise a run's gradients and name what happened to them.

Three kinds of evidence, each a pure function of numbers the training loop records:

- the *gradient-through-time profile* p[t] = Σ_b ‖∂L/∂h_t^(b)‖ over the S steps of
  a sequence (``profile_summary``): how much of the loss's gradient reaches each
  time lag k = S-1-t. Back-propagating k steps multiplies by k Jacobians
  ∂h_{i}/∂h_{i-1}, so the gradient shrinks or grows roughly geometrically in k
  (Hochreiter 1991, diploma thesis; Bengio, Simard & Frasconi 1994,
  IEEE TNN 5(2)). Plotted against the lag it is the picture that shows a
  vanishing gradient, which the learning curve alone cannot tell from a hard task.
- the recurrent matrix's spectrum (``recurrent_spectrum``): Pascanu, Mikolov &
  Bengio 2013 (arXiv:1211.5063, §2.1) show that a largest singular value below
  1/γ (γ bounds the nonlinearity's derivative: 1 for tanh) is sufficient for the
  long-term gradient to vanish, and above it necessary for it to explode.
- the pre-clip global gradient norm of every step (``detect_spikes``,
  ``suggest_clip``): an exploding gradient shows as sudden norm spikes of orders
  of magnitude, the "cliffs" of Pascanu et al. 2013 (their geometric
  interpretation), or as NaN/inf. Which jump counts as a spike (50 times the
  running median of the last 50 norms) is gradlab's own rule, set from measured
  runs (``Thresholds``), not the paper's.

``verdict`` raises two independent flags from them, ``exploding`` (the norm series)
and ``vanishing`` (the profile), with the figures behind each, and a label naming
the flags that hold (``vanishing+exploding`` when both do). Its thresholds are the
fields of ``Thresholds`` (configurable; ``DEFAULTS`` holds the documented defaults).

This module imports numpy only; ``recurrent_spectrum`` imports torch when called,
so results can be analysed without torch installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradlab.vocabulary import verdict_label


@dataclass(frozen=True)
class Thresholds:
    """The documented defaults behind every verdict; a config's ``diagnostics:`` section overrides them."""

    # A lag is "reached" while the gradient there is at least this fraction of the profile's peak:
    # two decades down, that lag's share of the update is drowned by the short lags' (Bengio 1994).
    horizon_fraction: float = 0.01
    # Vanishing when the gradient at the task's dependency is below this fraction of the peak. Measured
    # (adding T=30-100, temporal order): runs that learned, or were learning, the dependency had
    # ratios of 4e-2 to 0.9; tanh, orthogonal and plateaued LSTM runs 8e-5 down to 0.
    vanishing_ratio: float = 1e-3
    # A spike is a pre-clip norm this many times the running median (gradlab's rule; Pascanu et al. 2013
    # describe the jumps, not a threshold). Measured (Adam, 2000-3000 steps):
    # healthy runs peaked at 20x (a GRU or LSTM leaving the baseline plateau; an IRNN's first steps);
    # explosions at 230x to 6e7x (tanh RNN at lr 1e-2, LSTM on copy, IRNN at lr 1e-2, and a GRU that had
    # solved temporal order whose loss jumped from 0.002 to 1.2 with a 1e4x spike). 50 sits between.
    spike_factor: float = 50.0
    # The running median is over the last this many finite norms: enough to be stable against
    # batch noise and to hold the pre-explosion level through an episode of high norms, short
    # enough to follow the level's drift over training (norms fall 10x as a loss converges).
    spike_window: int = 50
    # Not a threshold: how many of the top Lyapunov exponents of the forward dynamics each evaluation
    # measures (gradlab.lyapunov; at most the hidden size). 0, the default: not measured. Opt-in because it
    # costs about 12 training steps per evaluation (benchmarks/lyapunov.py: 8 sequences, k 4 or 8, lstm
    # H=64, T=100): 12% of a run at eval_every 100, over the 10% the other figures keep to.
    lyapunov: int = 0


DEFAULTS = Thresholds()

# The resolution of a Lyapunov exponent per step (gradlab.lyapunov: "near 0" and the chaos flag's margin). The QR
# estimate after T steps carries an error of order c/T from the starting frame (c = log of Q_0's overlap with the
# limiting directions, O(1) for a random Q_0: measured 0.8 to 2.3 on the non-normal test in tests/test_lyapunov.py)
# and gradlab evaluates on T = 50 to 200 steps, so 0.01 is about the estimator's resolution at T = 100; a direction
# with |λ| < 0.01 grows or shrinks by less than e over 100 steps: it neither vanishes nor explodes on a task's horizon.
LYAPUNOV_TOL = 0.01
# The chaos flag's margin over `steps` averaged steps is max(LYAPUNOV_TOL, LYAPUNOV_ERROR / steps) (``is_chaotic``):
# the estimate's c/T error with c = 2.3, the largest constant measured above, so a contracting network is not read
# chaotic at a short length. Measured (gradlab.watch, a relu rnn with U = [[0.9, 3], [0, 0.9]], true λ₁ = log 0.9 =
# -0.105, from a state away from its fixed point): +0.077 over 18 averaged steps (T = 20), -0.012 over 45 (T = 50),
# -0.089 over 360 (T = 400); 2.3 / 18 = 0.128 covers the first. Beyond 230 steps LYAPUNOV_TOL is the margin. It is a
# measured margin, not a bound: a strongly non-normal map grows for a while before it contracts (a Jordan block's
# t·a^t), so its finite-T estimate exceeds λ₁ by about log(that growth) / T; with U = [[0.9, 10], [0, 0.9]] it
# read +0.143 over 18 steps (margin 0.128: flagged, and the gradient over those steps does grow 30-fold) and
# +0.075 over 27 (margin 0.085: not).
LYAPUNOV_ERROR = 2.3



# ---------------------------------------------------------------------------
# The gradient-through-time profile.

def profile_summary(profile, dependency: int, horizon_fraction: float = DEFAULTS.horizon_fraction) -> dict:
    """Summaries of one profile p (S,), p[t] = Σ_b ‖∂L/∂h_t^(b)‖, indexed by lag k = S-1-t.

    - ``peak``: max p (None if no entry is finite).
    - ``decay_rate``: the least-squares slope of ln p against the lag k, per step,
      fitted over the finite, positive entries (None if fewer than 2). exp(rate) is
      the average per-step factor of back-propagation: for h_t = a·h_{t-1} it is
      exactly ln a; negative means vanishing, positive exploding (Pascanu 2013
      §2.1), and it is comparable with ln(spectral radius). Zeros (cut by
      truncated BPTT, dead ReLU units, or a float32 gradient below 1.2e-38, flushed)
      are left out of the fit.
    - ``dependency_ratio``: p[dependency] / peak, the share of the peak gradient
      reaching the task's earliest relevant input; 0 if the peak is 0; inf if
      that entry is inf (an overflowed gradient reaches it: not vanishing); None
      if it is NaN (unknown).
    - ``horizon``: the largest lag k with p[S-1-k] ≥ horizon_fraction · peak, over
      the whole sequence: a profile that dips and recovers (a skip cell's comb, a
      loss at several steps) is credited with the farthest lag it reaches. An inf
      entry (the gradient overflowed on its way back) reaches, whatever the peak;
      a NaN one does not count. None if no lag reaches (the peak is not positive
      and no entry is inf).

    With the loss at the last step only (adding, temporal order) p is one curve
    decaying (or growing) away from the loss. With a loss at every step (copy)
    each p[t] also holds the direct terms of the losses near t, so p is flatter;
    the figures then describe the sum and ``decay_rate`` is an average trend, not
    a per-step factor: read ``dependency_ratio`` and ``horizon`` alongside.
    """
    p = np.asarray(profile, dtype=np.float64)  # (S,)
    S = p.shape[0]
    lags = (S - 1) - np.arange(S)  # (S,) lag of step t
    finite = np.isfinite(p)
    peak = float(p[finite].max()) if finite.any() else None
    usable = finite & (p > 0)
    decay_rate = _slope(lags[usable], np.log(p[usable])) if usable.sum() >= 2 else None
    dep = p[dependency]
    if math.isnan(dep):
        dependency_ratio = None
    elif math.isinf(dep):
        dependency_ratio = math.inf
    else:  # dep finite, so the peak is too
        dependency_ratio = float(dep / peak) if peak > 0 else 0.0
    reached = np.isposinf(p)  # (S,)
    if peak is not None and peak > 0:
        reached |= finite & (p >= horizon_fraction * peak)
    horizon = int(lags[reached].max()) if reached.any() else None
    return {"peak": peak, "decay_rate": decay_rate, "dependency_ratio": dependency_ratio, "horizon": horizon}


def depth_ratio(profiles) -> float | None:
    """The gradient through depth: Σ_t p^(0)[t] / Σ_t p^(L-1)[t] for the profiles (L, S) of a stack.

    p^(l)[t] = Σ_b ‖∂L/∂h_t^(l,b)‖ at layer l (bottom first). The loss reads the top
    layer; reaching layer 0 multiplies by L-1 more Jacobians ∂h^(l+1)/∂h^(l), so
    like the profile through time the ratio shrinks or grows geometrically with
    depth: below 1 the gradient fades on its way down to the input (vanishing
    through depth), above 1 it grows. None if the top's sum is 0 or not finite.
    """
    p = np.asarray(profiles, dtype=np.float64)  # (L, S)
    bottom, top = p[0].sum(), p[-1].sum()
    if not (math.isfinite(top) and top > 0 and math.isfinite(bottom)):
        return None
    return float(bottom / top)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y against x (both (n,), n ≥ 2 distinct x)."""
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


# ---------------------------------------------------------------------------
# The recurrent matrix.

def recurrent_spectrum(weight_hh, gates: tuple[str, ...] = ("",)) -> dict:
    """Spectral radius (max |eigenvalue|) and largest singular value of the recurrent matrix.

    weight_hh: (G·H, H), torch's layout, the G gate blocks stacked in torch's order;
    gates: their names, as the recurrence's registry entry gives them (``recurrences.RECURRENCES``).
    One block (``gates=("",)``): keys ``spectral_radius`` and ``sigma_max``. Gated
    cells: the same two figures for the H×H block of each gate, keyed by gate,
    LSTM (i, f, g, o) -> ``spectral_radius_i`` … ``sigma_max_o``, GRU (r, z, n).
    σ_max < 1/γ suffices for the long-term gradient through that block to vanish
    and σ_max > 1/γ is necessary for it to explode (Pascanu et al. 2013 §2.1; γ = 1
    for tanh, 1/4 for the sigmoid); the spectral radius is the long-run growth
    factor of powers of the block. A matrix with a non-finite entry gives NaN.
    Computed in float64 on the CPU; imports torch (only this function needs it).
    """
    import torch

    w = torch.as_tensor(weight_hh).detach().to("cpu", torch.float64)
    if not gates or w.ndim != 2 or w.shape[0] != len(gates) * w.shape[1]:
        raise ValueError(f"expected a ({len(gates)}·H, H) matrix for the gates {gates}, "
                         f"got shape {tuple(w.shape)}")
    finite = bool(torch.isfinite(w).all())
    out = {}
    for name, block in zip(gates, w.split(w.shape[1])):
        suffix = f"_{name}" if name else ""
        radius = torch.linalg.eigvals(block).abs().max().item() if finite else math.nan
        sigma = torch.linalg.matrix_norm(block, ord=2).item() if finite else math.nan
        out["spectral_radius" + suffix], out["sigma_max" + suffix] = radius, sigma
    return out


# ---------------------------------------------------------------------------
# The norm series: spikes, a clipping threshold, the verdict.

def spike_ratios(norms, window: int = DEFAULTS.spike_window) -> np.ndarray:
    """Each norm over the running median of the norms before it; NaN where there is no ratio.

    norms: (N,) pre-clip global norms in step order. The reference of a norm is
    the median of the ``window`` finite norms before it. The first ``window``
    finite norms lack that history: the i-th (0 ≤ i < window) is measured against
    the smaller of the median of the i norms before it (none for the first) and
    the median of the first ``window`` norms. So a jump there is a spike as later
    on (``[1]*10 + [100]*40``: steps 10-19, until the hundreds are half of the
    history), and so is an explosion in the very first steps, before any calm
    history (an IRNN at lr 1e-2 jumped from 56 to 1e8 at step 2; an IRNN under SGD
    at lr 0.1 starts at 16 and 650 against a level of 0.3 from step 15 on).
    Non-finite entries are left out of the medians and get no ratio: they are
    counted apart.
    """
    x = np.asarray(norms, dtype=np.float64)  # (N,)
    ratios = np.full(x.shape, np.nan)
    where = np.flatnonzero(np.isfinite(x))
    finite = x[where]  # (F,)
    if len(finite) == 0:
        return ratios
    first = np.median(finite[:window])
    refs = np.full(finite.shape, first)  # (F,)
    for i in range(1, min(window, len(finite))):  # the first window: the smaller of the two references
        refs[i] = min(np.median(finite[:i]), first)
    if len(finite) > window:
        windows = np.lib.stride_tricks.sliding_window_view(finite, window)  # (F-window+1, window)
        refs[window:] = np.median(windows, axis=1)[:-1]  # the window that ends just before each norm
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios[where] = finite / refs
    return ratios


def detect_spikes(norms, spike_factor: float = DEFAULTS.spike_factor,
                  window: int = DEFAULTS.spike_window) -> np.ndarray:
    """Indices into ``norms`` of the spikes: norms above ``spike_factor`` × the running median.

    The running median is over the previous ``window`` finite norms (in the first
    ``window`` steps see ``spike_ratios``: ``[1]*10 + [100]*40`` flags steps 10 to
    19, until the hundreds are half of the history), so it follows a level that drifts
    over training and a steady exponential blow-up keeps being flagged. Exploding
    gradients appear as sudden jumps of the norm by orders of magnitude (Pascanu et
    al. 2013 §3); the rule that names a jump a spike, and its defaults, are gradlab's
    own (see ``Thresholds``).
    """
    ratios = spike_ratios(norms, window)
    return np.flatnonzero(np.nan_to_num(ratios, nan=0.0) > spike_factor)


def suggest_clip(pre_clip_norms) -> float | None:
    """A global-norm clipping threshold for this run: the median of its finite pre-clip norms.

    Pascanu et al. 2013 §3.2 set the threshold from "the average norm over a
    sufficiently large number of updates" and found half to ten times it still
    converges. The median is that average for the ordinary steps: unlike the mean,
    the spikes that clipping is there to cut cannot move it. Clipping there
    rescales the larger half of the ordinary steps; the safe range goes up to ten
    times it, where only outliers are cut ("choose the highest threshold which
    helps"). None if no norm is finite.
    """
    x = np.asarray(pre_clip_norms, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def is_vanishing(dependency_ratio, thresholds: Thresholds = DEFAULTS) -> bool | None:
    """The vanishing flag: the gradient reaching the dependency is below ``vanishing_ratio`` of the
    profile's peak (Bengio et al. 1994; Hochreiter 1991); None when the ratio is unknown (no profile,
    or NaN at the dependency: ``profile_summary``). An inf ratio (an overflow reaches it) is not vanishing."""
    if dependency_ratio is None or np.isnan(dependency_ratio):  # numpy's NaN too
        return None
    return bool(dependency_ratio < thresholds.vanishing_ratio)


def is_chaotic(lyapunov_max, steps: int | None = None) -> bool | None:
    """The forward dynamics' own explosion flag: the top Lyapunov exponent above the estimate's error per step,
    ``chaos_margin(steps)``.

    Mikhaeil, Monfared & Durstewitz (NeurIPS 2022, Theorem 1) prove that the gradients of an RNN whose
    dynamics are chaotic (λ₁ > 0) diverge with the length of the sequence, and that stable or cyclic
    dynamics keep them bounded: λ₁ > 0 needs no spike rule. The two signals differ in what they see:
    λ₁ is measured at an evaluation on the model's own dynamics (a spike may never occur in a run
    that stops early, or be clipped away before anyone sees it); a spike is measured at every training
    step and catches what the evaluation inputs do not drive (a single bad batch).
    steps: how many steps the exponent was averaged over (``lyapunov.averaged_steps``: the sequence less the
    transient); None: unknown, the margin is LYAPUNOV_TOL. None when λ₁ was not
    measured (``diagnostics.lyapunov: 0``, the default) or is NaN (a non-finite trajectory: the
    non-finite steps flag that run); -inf (a saturated state) is not chaotic.
    """
    if lyapunov_max is None or (isinstance(lyapunov_max, float) and math.isnan(lyapunov_max)):
        return None
    return bool(lyapunov_max > chaos_margin(steps))


def chaos_margin(steps: int | None = None) -> float:
    """How far above 0 λ₁ must be to count as chaotic, per step: max(LYAPUNOV_TOL, LYAPUNOV_ERROR / steps) for an
    exponent averaged over ``steps`` steps (the QR estimate's c/T error; at the definitions), LYAPUNOV_TOL when
    steps is None (not known)."""
    if steps is None:
        return LYAPUNOV_TOL
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (the steps the exponent was averaged over), got {steps}")
    return max(LYAPUNOV_TOL, LYAPUNOV_ERROR / steps)


def verdict(norms, nonfinite_steps: int, profile, dependency: int,
            thresholds: Thresholds = DEFAULTS, chaotic: bool | None = None) -> tuple[str, dict]:
    """The run's two gradient flags, ``exploding`` and ``vanishing``, each on its own evidence, and their label.

    norms: (N,) the pre-clip global norms, one per step in order (NaN where a step
    was non-finite); nonfinite_steps: how many steps had a non-finite loss or
    gradient; profile: (S,) the gradient-through-time profile at the final
    evaluation — the trained model, not the initial one — or None;
    dependency: the time index of the task's earliest relevant input.

    - ``exploding`` (True/False): any non-finite step, any spike (``detect_spikes``), or chaotic
      forward dynamics at an evaluation (``chaotic``: ``is_chaotic`` of λ₁, when measured; None: not).
    - ``vanishing`` (True/False; None without a profile, or with NaN at the dependency):
      the profile's ``dependency_ratio`` < ``vanishing_ratio`` (``is_vanishing``): the
      gradient reaching the dependency is negligible against the peak (Bengio et
      al. 1994; Hochreiter 1991). Truncated BPTT with a window shorter than the lag
      gives a ratio of exactly 0 and so this flag: the gradient is cut, not decayed.

    The flags are independent because the two happen together: a run can spike and
    still carry no gradient to the dependency. The committed ``horizon_by_cell`` tanh
    RNN (adding, T = 50, 2 seeds) had 1-2 spikes (up to 105× the running median) while its
    horizon fell from 7-8 steps to 1 and its dependency ratio to 2e-11-7e-11: a vanishing
    gradient that one label, exploding first, named only ``exploding``.

    The label (``vocabulary.verdict_label``): ``vanishing+exploding`` when both hold,
    else the one that holds, else ``healthy``; without a profile the vanishing flag is
    not measured, so a run that did not explode is ``not exploding``, never ``healthy``.

    Figures: exploding, vanishing (the flags); behind exploding nonfinite_steps, chaotic,
    spikes (count) and spike_ratio_max (the largest norm over its running median);
    behind vanishing, from the profile, dependency_ratio, with decay_rate, horizon and
    dependency_lag (None without a profile).
    """
    spikes = len(detect_spikes(norms, thresholds.spike_factor, thresholds.spike_window))
    ratios = spike_ratios(norms, thresholds.spike_window)
    ratios = ratios[np.isfinite(ratios)]
    figures = {"nonfinite_steps": int(nonfinite_steps), "spikes": spikes,
               "spike_ratio_max": float(ratios.max()) if len(ratios) else None,
               "decay_rate": None, "dependency_ratio": None, "horizon": None, "dependency_lag": None}
    if profile is not None:
        summary = profile_summary(profile, dependency, thresholds.horizon_fraction)
        figures.update({k: v for k, v in summary.items() if k != "peak"})
        figures["dependency_lag"] = len(profile) - 1 - dependency
    figures["chaotic"] = chaotic
    figures["exploding"] = nonfinite_steps > 0 or spikes > 0 or chaotic is True
    figures["vanishing"] = is_vanishing(figures["dependency_ratio"], thresholds)
    return verdict_label(figures["exploding"], figures["vanishing"]), figures


class ExplosionWatch:
    """The exploding flag of the steps so far, for each evaluation of a run: fed one step at a time.

    ``add(norm, nonfinite)`` after every training step (norm NaN for a step with no
    update, as ``verdict``'s norms), ``add_lyapunov(λ₁, steps)`` at each evaluation that measured it;
    ``exploding()`` is then ``verdict``'s flag on the steps so far — any non-finite step, any
    spike, or chaotic dynamics at an evaluation so far (``chaotic``) — so at the last step it
    equals the run's. Each call checks only the steps since the last against the ``window``
    finite norms before them, whose ratios (``spike_ratios``) more steps never
    change; while fewer than ``window`` finite norms exist the first window's
    reference still moves, so all of them are checked again.
    """

    def __init__(self, thresholds: Thresholds = DEFAULTS):
        self.factor, self.window = thresholds.spike_factor, thresholds.spike_window
        self._nonfinite = False
        self._spiked = False        # a spike among the steps checked, final once _settled
        self._settled = False       # window finite norms were seen: the checked steps' ratios are final
        self._checked: list = []    # the steps checked, all of them until _settled, then the last window finite
        self._new: list = []        # steps added since the last check
        self.chaotic: bool | None = None  # λ₁ > chaos_margin at an evaluation so far; None: never measured

    def add(self, norm: float, nonfinite: bool = False) -> None:
        self._new.append(norm)
        self._nonfinite |= bool(nonfinite)

    def add_lyapunov(self, lyapunov_max, steps: int | None = None) -> None:
        """An evaluation's λ₁ (None when not measured), averaged over ``steps`` steps: chaotic once any evaluation
        was (``is_chaotic``)."""
        if (now := is_chaotic(lyapunov_max, steps)) is not None:
            self.chaotic = bool(self.chaotic) or now

    def exploding(self) -> bool:
        if self._new and not (self._spiked and self._settled):  # a settled spike stays a spike
            history = self._checked
            x = np.asarray(history + self._new, dtype=np.float64)  # (h + n,)
            ratios = spike_ratios(x, self.window)
            if self._settled:  # the history is window finite norms: the new steps' references are exact
                ratios = ratios[len(history):]
            self._spiked = bool((np.nan_to_num(ratios, nan=0.0) > self.factor).any())  # all again if unsettled
            finite = x[np.isfinite(x)]
            if len(finite) >= self.window:
                self._settled = True
                self._checked = finite[-self.window:].tolist()
            else:
                self._checked = x.tolist()
        self._new = []
        return self._nonfinite or self._spiked or self.chaotic is True
