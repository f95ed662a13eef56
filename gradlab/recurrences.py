"""Recurrences: the equations of one recurrent layer, as a registry, and the two ways to run them.

Four *recurrences* serve the cells of ``gradlab.cells``:

- ``rnn``  h_t = act(W x_t + b_ih + U h_{t-1} + b_hh)            (vanilla, irnn, orthogonal)
- ``skip`` h_t = act(W x_t + b_ih + U h_{t-1} + b_hh + S h_{t-k}) (skip)
- ``lstm`` torch.nn.LSTM's equations, gates (i, f, g, o)
- ``gru``  torch.nn.GRU's equations, gates (r, z, n)

State shapes: rnn/gru (B, H); lstm a pair (h, c) of (B, H); skip (k, B, H), the
last k hidden states, oldest first. Each entry of ``RECURRENCES`` carries its gate
names, its step under autograd (``unroll``, the obviously correct reference) and
its kernel in ``gradlab.engine`` (``scan``, the fast hand-written BPTT).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradlab import engine

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class Probe:
    """Receives the per-step hidden-gradient norms during the backward pass, and with a ``cut`` the
    long- and short-term parts of the recurrent weights' gradient.

    After ``loss.backward()``, ``norms`` is a (T, B) tensor: ‖∂L/∂h_t‖ for each step t and
    sample b, the total derivative through the recurrence; float64 (float32, scaled, on a
    device without float64: ``engine.hidden_norms``), on the gradient's device.

    cut: a step of this forward (0 = its first step; any integer: below 0 no step is long-term, from
    T - 1 on every step is). With it, the backward also splits the gradient of each recurrent weight U
    (the registry entry's ``recurrent``: weight_hh, and skip's weight_skip) by where U is used
    (Pascanu, Mikolov & Bengio 2013, §2, eq. 3-5: ∂L/∂U = Σ_t Σ_{k≤t} (∂L_t/∂h_t)(∂h_t/∂h_k)(∂⁺h_k/∂U)):
    ``long_term`` holds Σ_{k ≤ cut} of the terms of U's immediate use at step k (for an Elman cell
    δ_k h_{k-1}ᵀ, δ_k = ∂L/∂a_k), ``short_term`` Σ_{k > cut}, one tensor per recurrent weight (its
    shape), their sum U's gradient from this forward. With the loss at step t, term k has lag t - k.
    ``training.diagnose`` cuts at the dependency's step d + 1, U's first use on a state that holds x_d:
    the long-term part is the terms at lags ≥ the dependency's lag - 1 (skip's S first reads such a
    state at d + K; its terms are split at the same step, an approximation the docs state).
    Both are computed in the same backward as ``norms`` (``engine.scan``: two accumulators where there
    was one; ``unroll``: U used through two views); no cut (None), no cost. ``long_term_share``
    reduces them.
    """

    def __init__(self, cut: int | None = None):
        self.norms: torch.Tensor | None = None
        self.cut = cut
        self.long_term: tuple[torch.Tensor, ...] | None = None
        self.short_term: tuple[torch.Tensor, ...] | None = None


def long_term_share(long_term, short_term) -> float | None:
    """‖G_long‖_F / (‖G_long‖_F + ‖G_short‖_F) ∈ [0, 1], over all the recurrent weights together.

    long_term, short_term: sequences of tensors, G_long's and G_short's parts (``Probe``), reduced in
    float64 on the host. The share of the gradient's mass before the two parts add up: ‖G_long‖ / ‖G‖
    can exceed 1 (‖G‖ < ‖G_long‖ when the parts point apart and cancel) and is undefined where they
    cancel exactly, while by the triangle inequality ‖G‖ ≤ ‖G_long‖ + ‖G_short‖, so this one is a
    fraction. None where undefined: both parts 0 (no gradient reached U), a NaN in either, or both
    infinite; an infinite part against a finite one takes it all (1 or 0).
    """
    norms = [[_frobenius(g) for g in part] for part in (long_term, short_term)]
    if any(math.isnan(n) for part in norms for n in part):  # before hypot: hypot(nan, inf) is inf
        return None
    a, b = (math.hypot(*part) for part in norms)
    if (math.isinf(a) and math.isinf(b)) or a + b == 0:
        return None
    return 1.0 if math.isinf(a) else 0.0 if math.isinf(b) else a / (a + b)


def _frobenius(g: torch.Tensor) -> float:
    """‖g‖_F in float64 on the host, scaled (``engine.scaled_norms``): a float64 run's exploded entries
    (above 1e154) would overflow a plain sum of squares."""
    return engine.scaled_norms(g.detach().cpu().double().reshape(1, -1))[0].item()


# ---------------------------------------------------------------------------
# The steps under autograd, and the registry.

def rnn_step(x_t, h, p, act):
    """h_t = act(W x_t + b_ih + U h_{t-1} + b_hh); the state is h_t."""
    w_ih, w_hh, b_ih, b_hh = p
    h = act(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
    return h, h


def skip_step(x_t, past, p, act):
    """The rnn step plus S h_{t-k}; the state ``past`` is a tuple of the last k states, oldest first."""
    w_ih, w_hh, b_ih, b_hh, w_skip = p
    h = act(x_t @ w_ih.T + b_ih + past[-1] @ w_hh.T + b_hh + past[0] @ w_skip.T)
    return h, past[1:] + (h,)


def lstm_step(x_t, state, p, act=None):
    """torch.nn.LSTM's step (its documentation's equations), gates (i, f, g, o); the state is (h, c)."""
    w_ih, w_hh, b_ih, b_hh = p
    h, c = state
    i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


def gru_step(x_t, h, p, act=None):
    """torch.nn.GRU's step: r, z gates; n = tanh(W_in x + b_in + r * (U_n h + b_hn)); the state is h_t."""
    w_ih, w_hh, b_ih, b_hh = p
    gi, gh = x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    ir, iz, in_ = gi.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    h = (1 - z) * n + z * h
    return h, h


def _same(state):
    return state


@dataclass(frozen=True)
class Recurrence:
    """A registry entry: everything about one recurrence the rest of gradlab needs.

    gates: the blocks stacked in weight_ih (G·H, I) and weight_hh (G·H, H), in torch's order; ("",)
    for one block (diagnostics names each block's spectrum after its gate). step(x_t (B, I), state,
    params, act) -> (h_t (B, H), state): one step under autograd, the reference ``unroll`` runs. scan:
    its kernel in ``engine`` (the fast hand-written BPTT), or None: a cell on it runs only with
    ``engine: autograd``, which validation tells. initial_state(zeros, B, H, skip): the zero state.
    forget_gate: the gate whose bias sets how much of the old state is kept (``forget_bias``), or None.
    extra: (H, H) parameters beyond torch's four. to_steps/from_steps: the state as ``step`` carries it,
    and back (skip's (k, B, H) as a tuple of k states, so each step links to the one it reads).
    recurrent: the indices in ``params`` of the recurrent weights, those that multiply an earlier state,
    whose gradient a ``Probe`` with a cut splits into long- and short-term parts: weight_hh (all its gate
    blocks), and skip's weight_skip too, since S h_{t-k} carries the state forward as U h_{t-1} does
    (the skip cell's shortcut for the long-term gradient; the "recurrent" group of
    ``RecurrentNet.parameter_groups`` holds both).
    """

    gates: tuple[str, ...]
    step: Callable
    scan: Callable | None
    initial_state: Callable
    forget_gate: str | None = None
    extra: tuple[str, ...] = ()
    to_steps: Callable = _same
    from_steps: Callable = _same
    recurrent: tuple[int, ...] = (1,)


RECURRENCES: dict[str, Recurrence] = {
    "rnn": Recurrence(("",), rnn_step, engine.elman, lambda z, B, H, k: z(B, H)),
    "skip": Recurrence(("",), skip_step, engine.skip, lambda z, B, H, k: z(k, B, H), extra=("weight_skip",),
                       to_steps=lambda s: tuple(s.unbind(0)), from_steps=torch.stack, recurrent=(1, 4)),
    # torch's GRU is h_t = (1 - z)·n + z·h_{t-1}: z plays the forget gate's part
    "lstm": Recurrence(("i", "f", "g", "o"), lstm_step, engine.lstm, lambda z, B, H, k: (z(B, H), z(B, H)),
                       forget_gate="f"),
    "gru": Recurrence(("r", "z", "n"), gru_step, engine.gru, lambda z, B, H, k: z(B, H), forget_gate="z"),
}


def _recurrence(name: str | Recurrence) -> Recurrence:
    if isinstance(name, Recurrence):  # an entry itself (gradlab.lyapunov takes test-only entries)
        return name
    if name not in RECURRENCES:
        raise ValueError(f"unknown recurrence {name!r}; available: {', '.join(RECURRENCES)}")
    return RECURRENCES[name]


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def scan(recurrence, nonlinearity, x, state, params, *, window=None, grad_transform=None, probe=None):
    """The fast path: the recurrence's hand-written BPTT (``engine.scan`` with its kernel), x (T, B, I) ->
    (hs (T, B, H), final state); the same semantics as ``unroll``."""
    kernel = _recurrence(recurrence).scan
    if kernel is None:
        raise ValueError(f"the {recurrence} recurrence has no hand-written BPTT; use engine autograd")
    return engine.scan(kernel, nonlinearity, x, state, params, window=window, grad_transform=grad_transform,
                       probe=probe, reference=functools.partial(unroll, recurrence, nonlinearity))


def unroll(recurrence, nonlinearity, x, state, params, *, window=None, grad_transform=None, probe=None):
    """The autograd reference: x (T, B, I) -> (hs (T, B, H), final state).

    Slow (one autograd node per operation per step) but obviously correct; the
    engine is tested against it. With a ``probe.cut``, the steps ≤ cut use the recurrent weights
    through one view and the later steps through another (``_split_weights``): each view's hook
    records its gradient, the long- and short-term parts, and the total flows on to the weight.
    """
    rec = _recurrence(recurrence)
    act = ACTIVATIONS.get(nonlinearity)
    T = x.shape[0]
    hs = []
    norms = {"traced": set()}  # this forward's (T, B) probe tensor, made fresh by its first hook; the
    # steps a backward with create_graph=True recorded
    cut = getattr(probe, "cut", None)
    early, late = (params, params) if cut is None else _split_weights(rec, params, probe)
    state = rec.to_steps(state)
    for t in range(T):
        if window and t > 0 and t % window == 0:  # truncation: cut the recurrence here
            state = _detach(state)
        h, state = rec.step(x[t], state, late if cut is None or t > cut else early, act)
        if h.requires_grad and (grad_transform or probe):
            h.register_hook(_hidden_hook(t, T, grad_transform, probe, norms))
        hs.append(h)
    # skip: the final state is made of hs' last k entries, linked to them for autograd
    return torch.stack(hs), rec.from_steps(state)


def _split_weights(rec, params, probe):
    """(params of the steps ≤ probe.cut, params of the later ones): the same except that each recurrent
    weight is a fresh view in each, whose hook records its gradient into probe.long_term/short_term.

    The two parts are zeros until a hook fires (a view no step used stays 0: a cut before the first
    step or after the last), made fresh per forward, so a reused Probe never mixes two forwards. A
    backward with create_graph=True keeps its record, as ``_hidden_hook`` does.
    """
    record = {"traced": set(), "parts": [[torch.zeros_like(params[i]) for i in rec.recurrent] for _ in "ls"]}
    early, late = list(params), list(params)
    for j, i in enumerate(rec.recurrent):
        if not params[i].requires_grad:
            continue
        for part, steps in enumerate((early, late)):
            steps[i] = params[i].view_as(params[i])
            steps[i].register_hook(_weight_hook(part, j, probe, record))
    return early, late


def _weight_hook(part, j, probe, record):
    def hook(g):  # g: the gradient of recurrent weight j through its view for ``part`` (0 long, 1 short)
        if (part, j) in record["traced"]:
            return
        if torch.is_grad_enabled():
            record["traced"].add((part, j))
        # a copy: autograd may keep g itself as the weight's .grad and add a later backward into it in place
        record["parts"][part][j] = g.detach().clone()
        probe.long_term, probe.short_term = (tuple(p) for p in record["parts"])
    return hook


def _hidden_hook(t, T, grad_transform, probe, norms):
    def hook(g):  # g: total ∂L/∂h_t, (B, H)
        if grad_transform is not None:
            g = grad_transform(t, g)
        # a backward with create_graph=True (its hooks run with grad mode on) keeps its record: a later
        # backward through its graph (a gradient penalty's) fires this hook again, with the penalty's
        # gradient; engine.scan keeps it the same way (engine._record)
        if probe is not None and t not in norms["traced"]:
            if torch.is_grad_enabled():
                norms["traced"].add(t)
            n = engine.hidden_norms(g.detach())  # (B,) float64: no float32 floor at 1e-19
            # a fresh tensor per forward: a reused Probe never overwrites (or mis-shapes) earlier norms
            if "norms" not in norms:
                norms["norms"] = n.new_zeros(T, n.shape[0])
            probe.norms = norms["norms"]
            probe.norms[t] = n
        return g
    return hook
