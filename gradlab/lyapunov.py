"""Lyapunov spectrum of the forward dynamics: how fast nearby states of a driven recurrence part or merge.

The state s of a recurrence is what its ``step`` carries from one step to the next, flattened per
sample: rnn and gru h (H); lstm (h, c) as 2H; skip the k last states, oldest first, as k·H. J_t =
∂s_t/∂s_{t-1} is the step Jacobian along the trajectory the inputs drive. The top k Lyapunov exponents
are the growth rates, per step and in natural log, of k-dimensional volumes under the product J_T⋯J_1,
estimated by the standard QR (Benettin) method: Q_0 orthonormal (D, k); Q̃_t = J_t Q_{t-1}; Q_t R_t =
Q̃_t; λ_i = (1/T) Σ_t log|R_t[i, i]| (Engelken, Wolf & Abbott 2020, arXiv:2006.02427, "Lyapunov spectra
of chaotic recurrent neural networks"; Vogt, Puelma Touzel, Shlizerman & Lajoie 2022, Frontiers in
Applied Mathematics and Statistics 8, arXiv:2006.14123, "On Lyapunov exponents for RNNs", who compute
it during training for rnn, lstm and gru networks driven by their inputs). J_t comes from the
registry's own ``step`` by forward-mode autodiff (``torch.func``: k jvps per step for a large state,
J materialised by jacfwd for a small one, ``METHODS``), so a new registry entry needs no edit here.
The first steps (``_default_transient``) drive the state without QR, and a direction a step erases
exactly (a dead relu unit) is replaced and counted rather than read as -inf (``spectrum``).

How the exponents relate to gradients. ∂L/∂h_t is carried back by the transposed products of the same
J_t, whose growth rates are the same exponents (the singular values of a product and of its transpose
agree). So:

- λ₁ > 0 (beyond the estimate's c/T error: ``diagnostics.is_chaotic`` with ``Spectrum.steps``): nearby
  trajectories diverge (chaos, or an unstable state); Mikhaeil, Monfared & Durstewitz
  (NeurIPS 2022, "On the difficulty of learning chaotic dynamics with recurrent neural networks") prove
  that the loss gradients of an RNN whose dynamics are chaotic diverge as the sequence grows. It is an
  explosion signal that needs no heuristic: gradlab's spike rule (``diagnostics.detect_spikes``: a
  pre-clip gradient norm 50× over its running median) is a rule on observed norms, which fires on one
  bad batch and does not fire on a norm that is large from the first step on (nothing to jump from);
  λ₁ is a property of the forward map, read without a backward pass. The two usually agree on a
  network that explodes; λ₁ > 0 without spikes is a steady explosion, spikes with λ₁ < 0 a rare batch
  (or a trajectory the evaluation inputs do not drive).
- λ₁ < 0 by a margin: the dynamics contract, every direction of the state is forgotten, and the
  gradient through the state vanishes geometrically, ‖∂h_T/∂h_t‖ ≈ e^{λ₁ (T - t)}: λ₁ is the rate
  ``diagnostics.profile_summary``'s ``decay_rate`` estimates from the measured ∂L/∂h_t (for a linear
  h_t = a·h_{t-1} both are exactly ln|a|). The profile sees the gradient of the actual loss, of h only;
  λ₁ the slowest-decaying direction of the whole state, so with the loss at the last step decay_rate
  ≤ λ₁ up to noise (a loss at every step adds direct terms that flatten the profile).
- λ₁ strongly negative, even -inf, on a network whose weights have blown up: its units saturate
  (tanh'(a) = 1 - tanh(a)² is exactly 0 in float64 for |a| > 19), so J_t ≈ 0 and every perturbation is
  erased (measured: a tanh rnn with its weights ×1000, T = 100, k = 4, reads λ₁ ≈ -11 per step and
  -inf below it, 1295 of its 1440 (sequence, step, direction) erased, ``Spectrum.rank_lost``; a
  direction erased at every step reads -inf). That is the forward map's truth (the
  saturated state forgets everything, and the gradient through it is 0), but it is not "no explosion":
  the blow-up happened on the way there, and the spike rule, which watches the gradient norms during
  training, is what catches it. So the two are read together: λ₁ > 0 or a spike is an explosion; λ₁
  -inf with many ``lyapunov_rank_lost`` events is a saturated (or dead-relu) state, whatever its cause.
- exponents near 0: directions the state keeps (an lstm cell whose forget gate is ≈ 1; an orthogonal
  rnn), along which both memories and gradients last: ``summary``'s ``lyapunov_near_zero`` counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch.func import jacfwd, jvp, vmap

from gradlab import engine
from gradlab.diagnostics import LYAPUNOV_TOL
from gradlab.recurrences import ACTIVATIONS, Recurrence, _recurrence

# ``summary``'s default for "near 0", per step: why 0.01, at its definition (also the chaos flag's margin)
NEAR_ZERO_TOL = LYAPUNOV_TOL


def _activation(nonlinearity: str | Callable | None) -> Callable | None:
    """A registry name (ACTIVATIONS), a function (tests pass the identity), or None (gated cells)."""
    return nonlinearity if callable(nonlinearity) else ACTIVATIONS.get(nonlinearity)


# ---------------------------------------------------------------------------
# The state as one vector per sample.

def _flatten(state):
    """A state as ``step`` carries it (a tensor (B, ...) or nested tuples of them) -> (flat (B, D), spec)."""
    if isinstance(state, torch.Tensor):
        return state.reshape(state.shape[0], -1), tuple(state.shape[1:])
    flats, specs = zip(*(_flatten(s) for s in state), strict=True)
    return torch.cat(flats, dim=-1), (type(state), specs)


def _size(spec) -> int:
    if isinstance(spec[0], type):
        return sum(_size(s) for s in spec[1])
    return int(torch.Size(spec).numel())


def _unflatten(flat, spec):
    """The inverse of ``_flatten``: flat (B, D) -> the state, leaves in order."""
    if not (spec and isinstance(spec[0], type)):
        return flat.reshape(flat.shape[0], *spec)
    kind, specs = spec
    parts = flat.split([_size(s) for s in specs], dim=-1)
    return kind(_unflatten(p, s) for p, s in zip(parts, specs, strict=True))


def _per_sample(rec: Recurrence, act, params, spec):
    """The step on one sample's flat state: (x (I,), s (D,)) -> s_t (D,), for torch.func to transform."""
    def one(x, s):
        _, new = rec.step(x[None], _unflatten(s[None], spec), params, act)
        return _flatten(new)[0][0]
    return one


def _trajectory(rec: Recurrence, act, x, state, params):
    """The driven trajectory: x (T, B, I) -> (the flat state before each step (T, B, D), hs (T, B, H),
    spec). The step on the whole batch, without a graph: J_t depends on the trajectory only, not on Q."""
    s, spec = _flatten(rec.to_steps(state))
    before, hs = [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            before.append(s)
            h, new = rec.step(x[t], _unflatten(s, spec), params, act)
            s = _flatten(new)[0]
            hs.append(h)
    return torch.stack(before), torch.stack(hs), spec


def _jacobians(rec: Recurrence, act, params, spec, x, s):
    """Materialised J: x (N, I), s (N, D) -> (N, D, D), ∂s_t/∂s_{t-1} of each of N samples (D jvps each:
    jacfwd, under vmap so no term couples two samples)."""
    return vmap(jacfwd(_per_sample(rec, act, params, spec), argnums=1))(x, s)


def _jvps(rec: Recurrence, act, params, spec, x, s, q):
    """J Q without J: x (B, I), s (B, D), q (B, D, k) -> (B, D, k): k jvps of the step on the whole batch
    (vmap over the columns only). The step never couples two samples (every registry entry works row
    by row; tests/test_lyapunov.py checks each against the per-sample autograd Jacobian), so the
    batch's Jacobian is block-diagonal and one jvp gives every sample's J_b q_b at once, as one matmul
    of (k·B) rows instead of B small ones (vmap over the samples too: about 1.5× slower, measured)."""
    def step(flat):  # (B, D) -> (B, D)
        return _flatten(rec.step(x, _unflatten(flat, spec), params, act)[1])[0]

    columns = q.permute(2, 0, 1).contiguous()  # (k, B, D)
    # s is a view of the whole trajectory (T, B, D): a dual view gets a tangent for its whole base
    # (measured: 16 ms of a 25 ms step at T = 100), so jvp gets a copy of its own
    return vmap(lambda v: jvp(step, (s.clone(),), (v,))[1])(columns).permute(1, 2, 0)


# How J_t Q_{t-1} is formed. jvp: k forward-mode products per step, never J itself, the work of about k
# steps; jacobian: J_t materialised for many steps in one call (D products each) and multiplied, which
# pays torch.func's per-call overhead (milliseconds: it dominates a small state) once per chunk instead
# of once per step. auto takes jacobian while D ≤ max(2k, 16), where its D products cost at most twice
# the jvp's k. Measured (``model_spectrum``, one layer, T = 100, 1 thread, a loaded 2-core machine),
# jvp / jacobian: gru H = 16, B = 8, k = 8: 0.51 / 0.09 s; gru H = 32, B = 32, k = 8: 0.73 / 1.15 s;
# lstm H = 64 (D = 128), B = 32, k = 8: 0.64 / 10.0 s. Both agree to 2e-16.
METHODS = ("auto", "jvp", "jacobian")
CHUNK_FLOATS = 2 ** 23  # the materialised Jacobians of one chunk of steps: at most 64 MB of float64


def _method(method: str, D: int, k: int) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if method == "auto":
        return "jacobian" if D <= max(2 * k, 16) else "jvp"
    return method


def _products(rec: Recurrence, act, params, spec, x, before, k: int, method: str):
    """A function t, Q (B, D, k) -> J_t Q along the trajectory (steps asked in order)."""
    T, B, D = before.shape
    if _method(method, D, k) == "jvp":
        return lambda t, q: _jvps(rec, act, params, spec, x[t], before[t], q)
    chunk, cache = max(1, CHUNK_FLOATS // (B * D * D)), {}

    def product(t, q):
        a = t - t % chunk
        if a not in cache:  # the chunk's J, (steps, B, D, D); the previous chunk is dropped
            cache.clear()
            steps = slice(a, min(a + chunk, T))
            cache[a] = _jacobians(rec, act, params, spec, x[steps].flatten(0, 1),
                                  before[steps].flatten(0, 1).clone()).unflatten(0, (-1, B))  # as _jvps
        return cache[a][t - a] @ q
    return product


def _device(params) -> torch.device:
    """Where the float64 work runs: the params' device, or the cpu for one without float64 (MPS):
    the spectrum is read once per evaluation, and float32 would floor each log|R_ii| at its eps."""
    device = params[0].device
    return device if engine.has_float64(device) else torch.device("cpu")


def _prepare(x, state, params):
    """float64 copies on ``_device(params)``, detached: nothing here reaches a parameter's .grad."""
    device = _device(params)
    f64 = lambda t: t.detach().to(device=device, dtype=torch.float64)  # noqa: E731
    return f64(x), _prepare_state(state, f64), [f64(p) for p in params]


def _prepare_state(s, f64):
    return tuple(_prepare_state(t, f64) for t in s) if isinstance(s, (tuple, list)) else f64(s)


def step_jacobian(recurrence: str | Recurrence, nonlinearity, x_t, state, params, *,
                  method: str = "jacobian") -> torch.Tensor:
    """J_t = ∂s_t/∂s_{t-1} per sample, (B, D, D) float64, as ``spectrum`` forms it: materialised
    (method "jacobian") or as J·I from the jvps (method "jvp").

    x_t (B, I); state as the model carries it (``initial_state``'s form; skip (k, B, H)); params the
    layer's ``recurrent_parameters()``. Rows and columns follow the flat state: the leaves of
    ``recurrence.to_steps(state)`` in order (lstm: h then c; skip: oldest state first).
    """
    rec, act = _recurrence(recurrence), _activation(nonlinearity)
    x_t, state, params = _prepare(x_t, state, params)
    s, spec = _flatten(rec.to_steps(state))
    B, D = s.shape
    eye = torch.eye(D, dtype=s.dtype, device=s.device).expand(B, D, D)
    return _products(rec, act, params, spec, x_t[None], s[None], D, method)(0, eye)


# ---------------------------------------------------------------------------
# The spectrum.

class Spectrum(NamedTuple):
    """What ``spectrum`` returns. exponents: (k,) float64, sorted descending; rank_lost: how many times
    (summed over sequences, steps and directions) a step erased a direction of the frame exactly and it
    was replaced (``_renew``): 0 on a network whose step Jacobians keep their rank; steps: how many steps
    the exponents were averaged over, T less the transient (the estimate's error is of order c / steps:
    ``diagnostics.is_chaotic`` takes it; None: not known, as for exponents built by hand)."""

    exponents: torch.Tensor
    rank_lost: int
    steps: int | None = None


def _default_transient(T: int) -> int:
    """min(10, T // 10): the first steps follow the starting state (usually zero), not the dynamics the
    inputs drive: an irnn from h = 0 with zero biases has every unit off (relu'(0) = 0) until an input
    arrives, and inputs that are zero for a prefix (digits' leading blank) prolong that. Skipping them
    costs nothing (no QR; the trajectory is computed anyway), and at most a tenth of the steps so that
    the estimate's c/(T - transient) stays near c/T. Measured: an untrained irnn on digits-like input
    with zero leading inputs reads λ₁ ≈ -0.007 from a frame drawn at t = 10."""
    return min(10, T // 10)


def _frame(B: int, D: int, k: int, gen: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Q_0 (B, D, k): orthonormal columns, random (Gaussian, then QR) from ``gen`` per sample, or the
    identity's first k columns (gen None; exact for a diagonal J, but blind to a direction outside
    them). Drawn on the cpu so a seed gives the same frame on any device."""
    if gen is None:
        return torch.eye(D, k, dtype=like.dtype, device=like.device).expand(B, D, k).clone()
    g = torch.randn(B, D, k, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(g)[0].to(device=like.device, dtype=like.dtype)


def _lost(d: torch.Tensor, a: torch.Tensor, D: int) -> torch.Tensor:
    """d = |diag R| (B, k), a (B, k) the norms of J_t Q's columns, D the state's size -> (B, k) bool:
    the directions this step erased, |R_ii| ≤ γ·‖(J_t Q)_i‖ with γ = 10·D·k·eps: exactly 0 (a relu unit off, tanh'
    underflowed to 0), or column i fell into the span of the others and R_ii is rounding. Householder
    QR's backward error is columnwise, ‖Δa_i‖ ≤ γ̃_{Dk}‖a_i‖ (Higham 2002, "Accuracy and Stability of
    Numerical Algorithms", Thm 19.4; γ̃_n = c·n·eps, c a small constant): measured rounding values of
    |R_ii| up to 5e-15 of the largest, which read as log ≈ -33 would each shift an exponent by 33/T. A
    direction that shrinks as a whole (‖a_i‖ small too) is contraction, not loss, and is accumulated.
    A non-finite column is never lost: NaN stays NaN."""
    return torch.isfinite(a) & (d <= a * (10 * D * d.shape[-1] * torch.finfo(d.dtype).eps))


def _renew(q: torch.Tensor, lost: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """q (B, D, k) orthonormal (torch's QR returns an orthonormal Q even where R_ii = 0, but fills the
    erased columns with the identity's, which can be units J keeps off: λ = -inf for ever); per sample,
    its lost columns (lost (B, k)) are replaced together by Gaussian directions from ``gen`` (on the
    cpu) projected off the columns still carried (twice: Gram-Schmidt's loss of orthogonality) and
    orthonormalised among themselves, so the new ones are uniform on the complement, never biased
    towards or away from the identity's axes (which the old columns, or each other, would impose)."""
    q = q.clone()
    for b in lost.any(dim=-1).nonzero().flatten().tolist():
        cols = lost[b]
        kept = q[b][:, ~cols]  # (D, k - n)
        g = torch.randn(q.shape[1], int(cols.sum()), generator=gen, dtype=torch.float64).to(q)  # (D, n)
        for _ in range(2):
            g = g - kept @ (kept.T @ g)
        q[b][:, cols] = torch.linalg.qr(g)[0]
    return q


def _run(rec: Recurrence, act, x, state, params, k: int, transient: int | None, seed: int | None,
         method: str):
    """The QR method on prepared (float64) inputs -> (Spectrum, hs (T, B, H))."""
    T = x.shape[0]
    transient = _default_transient(T) if transient is None else transient
    if not 0 <= transient < T:
        raise ValueError(f"transient must be in [0, T) = [0, {T}), got {transient}")
    before, hs, spec = _trajectory(rec, act, x, state, params)  # (T, B, D), (T, B, H)
    _, B, D = before.shape
    if not 1 <= k <= D:
        raise ValueError(f"k must be in [1, {D}] (the state's size per sample), got {k}")
    product = _products(rec, act, params, spec, x, before, k, method)
    # the trajectory runs through the transient without QR; Q_0 is drawn at t = transient. The
    # generator also draws the directions that replace erased ones (seed None: the identity frame,
    # replacements from seed 0)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    q = _frame(B, D, k, None if seed is None else gen, before)
    total, steps, rank_lost = before.new_zeros(B, k), before.new_zeros(B, k), 0
    for t in range(transient, T):
        image = product(t, q)  # J_t Q_{t-1}, (B, D, k)
        q, r = torch.linalg.qr(image)  # = Q_t R_t: (B, D, k), (B, k, k)
        d = torch.diagonal(r, dim1=-2, dim2=-1).abs()  # (B, k)
        lost = _lost(d, torch.linalg.vector_norm(image, dim=1), D)
        # a direction the step erased exactly contributes no log 0 = -inf: it is not accumulated, and a
        # fresh one carries on (counted); each column is averaged over the steps it was carried
        total += torch.where(lost, 0.0, d.log())
        steps += (~lost).to(steps.dtype)
        if lost.any():
            rank_lost += int(lost.sum())
            q = _renew(q, lost, gen)
    # each sample's column i converges to λ_i; a column erased at every step reads -inf (0 steps);
    # average the B driven trajectories, then order
    per_sample = torch.where(steps > 0, total / steps.clamp(min=1), float("-inf"))  # (B, k)
    exponents = per_sample.mean(dim=0).sort(descending=True).values  # (k,)
    return Spectrum(exponents, rank_lost, T - transient), hs


def spectrum(recurrence: str | Recurrence, nonlinearity, x, state0, params, k: int,
             transient: int | None = None, *, seed: int | None = 0, method: str = "auto") -> Spectrum:
    """The top k Lyapunov exponents, per step, natural log: ``Spectrum(exponents (k,) float64 sorted
    descending, rank_lost)``.

    recurrence: a key of RECURRENCES (or an entry); nonlinearity: a name of ACTIVATIONS, a function, or
    None; x (T, B, I): the driving inputs, each of the B sequences one trajectory, their exponents
    averaged; state0: the starting state as the model carries it (``initial_state``'s form); params:
    the layer's ``recurrent_parameters()``. transient: the trajectory runs through steps t < transient
    without QR and Q_0 is drawn at t = transient; the exponents are the mean log|R_ii| over the steps
    after. Default (None) min(10, T // 10) (``_default_transient``: why). seed: Q_0 random from it (the
    same frame on any device), or None for the identity's first k columns. method: how J_t Q is formed
    (``METHODS``; the same numbers either way, to rounding).

    A step that erases a direction of the frame exactly (J_t Q lost rank: relu units off, tanh'
    underflowed to 0) would give log 0 = -inf and, with torch's QR filling the lost column with an
    identity column that may be a unit still off, -inf for ever, whatever happened later. Instead the
    column is replaced by a fresh random direction orthogonal to the others, that step is not
    accumulated for it (each exponent is its column's mean over the steps it was carried), and the
    event counted in ``rank_lost``: a count well above 0 says the exponents describe the steps that
    keep their rank, and the remaining directions are erased outright at the others. A direction erased
    at every step reads -inf (a tanh network saturated throughout). Non-finite states (an overflowed
    trajectory) give NaN, never a replacement.
    Computed in float64 on the params' device (the cpu for one without float64: ``_device``); nothing
    is written to the parameters or their .grad.
    """
    rec = _recurrence(recurrence)
    x, state0, params = _prepare(x, state0, params)
    return _run(rec, _activation(nonlinearity), x, state0, params, k, transient, seed, method)[0]


# ``model_spectrum``'s default number of sequences: the exponents are averages over the driven
# sequences (each one trajectory, each estimating all k), so a few suffice, and the cost grows with
# them. Measured (benchmarks/lyapunov.py, 1-layer lstm H = 64, T = 100, one thread): with k = 8 the
# spectrum of 8 sequences costs ≈ 11.5 % of a run's training at eval_every 100, of 32 ≈ 21 %; after
# the rank-loss check, 8 sequences: k = 4 12.9 %, k = 8 12.2 % (per-step overhead dominates, not k).
SEQUENCES = 8


def model_spectrum(model, x, k: int, transient: int | None = None, *, sequences: int | None = SEQUENCES,
                   seed: int | None = 0, method: str = "auto") -> list[Spectrum]:
    """Per layer of a ``RecurrentNet``, bottom first: ``spectrum`` of that layer's state (the top k
    exponents and rank_lost), the layer driven by its actual input (x (T, B, I) for layer 0, the layer
    below's hidden states, computed here in float64, for the others), from ``model.initial_state``.
    sequences: how many of the B sequences (the first) drive it (``SEQUENCES``, 8; None: all).

    Per layer, not of the whole stack's state: the stack's step Jacobian is block lower-triangular
    (layer l's new state depends on the layers below through its input, never on the layers above), so
    the perturbations of the layers above l form a subspace J_t maps into itself; the exponents of a
    product of block-triangular matrices are those of the diagonal blocks' products together (the
    restriction to that invariant subspace and the quotient by it; a general property of linear
    cocycles with an invariant subbundle, from the multiplicative ergodic theorem). So the stack's
    spectrum is the union of the layers' and its λ₁ is the largest layer λ₁; per layer also says which
    layer explodes or forgets. Does not touch the model's parameters, .grad or train/eval mode.
    """
    if sequences is not None and sequences < 1:
        raise ValueError(f"sequences must be at least 1 (or None for all), got {sequences}")
    x = x[:, :sequences]
    device = _device(list(model.parameters()))
    state = model.initial_state(x.shape[1], device=device, dtype=torch.float64)
    states = state if len(model.layers) > 1 else [state]
    rec, act = _recurrence(model.recurrence), _activation(model.nonlinearity)
    out = []
    with torch.no_grad():  # a constrained weight_hh is recomputed by its parametrization: no graph
        inputs = x.detach().to(device=device, dtype=torch.float64)
        for layer, s0 in zip(model.layers, states, strict=True):
            _, s0, params = _prepare(inputs, s0, layer.recurrent_parameters())
            result, inputs = _run(rec, act, inputs, s0, params, k, transient, seed, method)
            out.append(result)
    return out


def averaged_steps(spectra: Sequence[Spectrum]) -> int | None:
    """The steps a stack's exponents were averaged over (``Spectrum.steps``): the fewest of its layers' (each
    layer runs the same T and transient, so one number), None when any is unknown. ``diagnostics.is_chaotic``
    sets the chaos flag's margin from it; a run's evaluation rows and ``gradlab.watch``'s summary record it as
    ``lyapunov_steps``."""
    steps = [s.steps for s in spectra]
    return None if not steps or any(v is None for v in steps) else min(steps)


def summary(spectra: Spectrum | Sequence[Spectrum] | torch.Tensor, tol: float = NEAR_ZERO_TOL) -> dict:
    """{"lyapunov_max": λ₁, "lyapunov_near_zero": how many |λ_i| < tol, "lyapunov_rank_lost": the
    ``Spectrum.rank_lost`` events (None for bare exponents)}.

    spectra: one ``Spectrum``, a stack's list of them (``model_spectrum``: the union of the layers',
    its λ₁ the largest), or bare exponents. tol: ``NEAR_ZERO_TOL`` (0.01 per step; why, at its
    definition). λ₁ > 0 is the explosion flag, λ₁ < 0 by a margin a contracting state, and strongly
    negative or -inf a saturated one (the module docstring). lyapunov_max is a Python float that may be
    -inf (a direction erased at every step) or NaN (a non-finite trajectory, or no exponents): a JSON
    writer must handle both (the json module writes -Infinity and NaN, which strict JSON rejects).
    """
    if isinstance(spectra, torch.Tensor):
        e, lost = spectra, None
    else:
        parts = [spectra] if isinstance(spectra, Spectrum) else list(spectra)
        e = torch.cat([p.exponents.reshape(-1) for p in parts]) if parts else torch.zeros(0)
        lost = sum(p.rank_lost for p in parts)
    e = torch.as_tensor(e, dtype=torch.float64).cpu()
    return {"lyapunov_max": float(e.max()) if e.numel() else float("nan"),
            "lyapunov_near_zero": int((e.abs() < tol).sum()),
            "lyapunov_rank_lost": lost}
