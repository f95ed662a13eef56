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
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradlab import engine

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class Probe:
    """Receives the per-step hidden-gradient norms during the backward pass.

    After ``loss.backward()``, ``norms`` is a (T, B) tensor: ‖∂L/∂h_t‖ for each step t and
    sample b, the total derivative through the recurrence; float64 (float32, scaled, on a
    device without float64: ``engine.hidden_norms``), on the gradient's device.
    """

    def __init__(self):
        self.norms: torch.Tensor | None = None


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
    """

    gates: tuple[str, ...]
    step: Callable
    scan: Callable | None
    initial_state: Callable
    forget_gate: str | None = None
    extra: tuple[str, ...] = ()
    to_steps: Callable = _same
    from_steps: Callable = _same


RECURRENCES: dict[str, Recurrence] = {
    "rnn": Recurrence(("",), rnn_step, engine.elman, lambda z, B, H, k: z(B, H)),
    "skip": Recurrence(("",), skip_step, engine.skip, lambda z, B, H, k: z(k, B, H), extra=("weight_skip",),
                       to_steps=lambda s: tuple(s.unbind(0)), from_steps=torch.stack),
    # torch's GRU is h_t = (1 - z)·n + z·h_{t-1}: z plays the forget gate's part
    "lstm": Recurrence(("i", "f", "g", "o"), lstm_step, engine.lstm, lambda z, B, H, k: (z(B, H), z(B, H)),
                       forget_gate="f"),
    "gru": Recurrence(("r", "z", "n"), gru_step, engine.gru, lambda z, B, H, k: z(B, H), forget_gate="z"),
}


def _recurrence(name: str) -> Recurrence:
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
    engine is tested against it.
    """
    rec = _recurrence(recurrence)
    act = ACTIVATIONS.get(nonlinearity)
    T = x.shape[0]
    hs = []
    norms = {"traced": set()}  # this forward's (T, B) probe tensor, made fresh by its first hook; the
    # steps a backward with create_graph=True recorded
    state = rec.to_steps(state)
    for t in range(T):
        if window and t > 0 and t % window == 0:  # truncation: cut the recurrence here
            state = _detach(state)
        h, state = rec.step(x[t], state, params, act)
        if h.requires_grad and (grad_transform or probe):
            h.register_hook(_hidden_hook(t, T, grad_transform, probe, norms))
        hs.append(h)
    # skip: the final state is made of hs' last k entries, linked to them for autograd
    return torch.stack(hs), rec.from_steps(state)


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
