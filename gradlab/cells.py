"""Recurrent cells: their parameters, initialisation, and a reference step under autograd.

Every cell stores its weights under torch's names (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh``, gate blocks stacked in torch's order) so that a cell can
be checked against ``torch.nn.RNN/LSTM/GRU`` by copying weights across. Four
*recurrences* serve the six cells:

- ``rnn``  h_t = act(W x_t + b_ih + U h_{t-1} + b_hh)            (vanilla, irnn, orthogonal)
- ``skip`` h_t = act(W x_t + b_ih + U h_{t-1} + b_hh + S h_{t-k}) (skip)
- ``lstm`` torch.nn.LSTM's equations, gates (i, f, g, o)
- ``gru``  torch.nn.GRU's equations, gates (r, z, n)

State shapes: rnn/gru (B, H); lstm a pair (h, c) of (B, H); skip (k, B, H), the
last k hidden states, oldest first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

GATES = {"rnn": 1, "skip": 1, "lstm": 4, "gru": 3}
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


@dataclass(frozen=True)
class Cell:
    """A registry entry: which recurrence, which nonlinearity, how to initialise."""

    recurrence: str
    nonlinearity: str | None
    init: Callable[[nn.Module, torch.Generator], None]
    description: str


def init_uniform(net: nn.Module, gen: torch.Generator) -> None:
    """torch's default for nn.RNN/LSTM/GRU: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(net.hidden)
    for p in net.recurrent_parameters():
        nn.init.uniform_(p, -bound, bound, generator=gen)


def init_irnn(net: nn.Module, gen: torch.Generator) -> None:
    """Le, Jaitly & Hinton 2015 (arXiv:1504.00941) §3: U = I, biases 0, W ~ N(0, 0.001^2)."""
    nn.init.normal_(net.weight_ih, 0.0, 0.001, generator=gen)
    with torch.no_grad():
        net.weight_hh.copy_(torch.eye(net.hidden))
        net.bias_ih.zero_()
        net.bias_hh.zero_()


def init_orthogonal(net: nn.Module, gen: torch.Generator) -> None:
    """Saxe et al. 2014 / Arjovsky et al. 2016: U a random orthogonal matrix, the rest as torch."""
    init_uniform(net, gen)
    nn.init.orthogonal_(net.weight_hh, generator=gen)


CELLS: dict[str, Cell] = {
    "vanilla": Cell("rnn", "tanh", init_uniform, "tanh RNN, torch's default uniform init (Elman 1990)"),
    "irnn": Cell("rnn", "relu", init_irnn, "ReLU RNN with identity recurrence, zero bias (Le et al. 2015)"),
    "orthogonal": Cell("rnn", "tanh", init_orthogonal,
                       "RNN with orthogonal recurrent init (Saxe et al. 2014; Arjovsky et al. 2016)"),
    "skip": Cell("skip", "tanh", init_uniform,
                 "tanh RNN that also reads h[t-k]: a shortcut through time (Chang 2017; Campos 2018)"),
    "lstm": Cell("lstm", None, init_uniform,
                 "long short-term memory, torch.nn.LSTM's equations (Hochreiter & Schmidhuber 1997)"),
    "gru": Cell("gru", None, init_uniform, "gated recurrent unit, torch.nn.GRU's equations (Cho et al. 2014)"),
}


class RecurrentNet(nn.Module):
    """One recurrent layer and a linear readout.

    ``forward`` returns all hidden states (T, B, H) and the final state; the
    caller applies ``readout`` where the task has a target.
    """

    def __init__(self, cell: str, input_size: int, hidden: int, output_size: int, *,
                 nonlinearity: str | None = None, skip: int = 10, engine: str = "scan",
                 seed: int = 0):
        super().__init__()
        spec = CELLS[cell]
        self.cell, self.recurrence, self.hidden, self.engine = cell, spec.recurrence, hidden, engine
        self.nonlinearity = nonlinearity or spec.nonlinearity
        self.skip = skip
        g = GATES[spec.recurrence]
        self.weight_ih = nn.Parameter(torch.empty(g * hidden, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g * hidden, hidden))
        self.bias_ih = nn.Parameter(torch.empty(g * hidden))
        self.bias_hh = nn.Parameter(torch.empty(g * hidden))
        if spec.recurrence == "skip":
            self.weight_skip = nn.Parameter(torch.empty(hidden, hidden))
        self.readout = nn.Linear(hidden, output_size)
        gen = torch.Generator().manual_seed(seed)
        spec.init(self, gen)
        bound = 1.0 / math.sqrt(hidden)  # nn.Linear's default, drawn from our generator
        nn.init.uniform_(self.readout.weight, -bound, bound, generator=gen)
        nn.init.uniform_(self.readout.bias, -bound, bound, generator=gen)

    def recurrent_parameters(self) -> list[nn.Parameter]:
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        if self.recurrence == "skip":
            names.append("weight_skip")
        return [getattr(self, n) for n in names]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-group gradient norms: input, recurrent, readout."""
        recurrent = [self.weight_hh, self.bias_hh] + ([self.weight_skip] if self.recurrence == "skip" else [])
        return {"input": [self.weight_ih, self.bias_ih], "recurrent": recurrent,
                "readout": list(self.readout.parameters())}

    def initial_state(self, batch: int, *, device=None, dtype=None):
        z = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        if self.recurrence == "lstm":
            return (z(batch, self.hidden), z(batch, self.hidden))
        if self.recurrence == "skip":
            return z(self.skip, batch, self.hidden)
        return z(batch, self.hidden)

    def forward(self, x, state, *, window=None, grad_transform=None, probe=None):
        """x (T, B, I) -> hidden states (T, B, H), final state.

        window: cut the backward through the recurrence every ``window`` steps
        (as if the state were detached there). grad_transform(t, g) -> g:
        applied to the total ∂L/∂h_t (B, H) before it flows further back.
        probe: a ``Probe`` that receives ‖∂L/∂h_t‖ per step and sample.
        """
        params = self.recurrent_parameters()
        if self.engine == "autograd":
            return unroll(self.recurrence, self.nonlinearity, x, state, params,
                          window=window, grad_transform=grad_transform, probe=probe)
        from gradlab import engine  # the fast hand-written BPTT (imported lazily: it is large)
        return engine.scan(self.recurrence, self.nonlinearity, x, state, params,
                           window=window, grad_transform=grad_transform, probe=probe)


class Probe:
    """Receives the per-step hidden-gradient norms during the backward pass.

    After ``loss.backward()``, ``norms`` is a (T, B) tensor: ‖∂L/∂h_t‖ for each
    step t and sample b, the total derivative through the recurrence.
    """

    def __init__(self):
        self.norms: torch.Tensor | None = None


# ---------------------------------------------------------------------------
# Reference path: the cells unrolled step by step under autograd.

def rnn_step(x_t, h, p, act):
    w_ih, w_hh, b_ih, b_hh = p
    return act(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh)


def skip_step(x_t, h, h_skip, p, act):
    w_ih, w_hh, b_ih, b_hh, w_skip = p
    return act(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh + h_skip @ w_skip.T)


def lstm_step(x_t, state, p):
    """torch.nn.LSTM's step (its documentation's equations), gates (i, f, g, o)."""
    w_ih, w_hh, b_ih, b_hh = p
    h, c = state
    i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(x_t, h, p):
    """torch.nn.GRU's step: r, z gates; n = tanh(W_in x + b_in + r * (U_n h + b_hn))."""
    w_ih, w_hh, b_ih, b_hh = p
    gi, gh = x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    ir, iz, in_ = gi.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (1 - z) * n + z * h


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def unroll(recurrence, nonlinearity, x, state, params, *, window=None, grad_transform=None, probe=None):
    """The autograd reference: x (T, B, I) -> (hs (T, B, H), final state).

    Slow (one autograd node per operation per step) but obviously correct; the
    engine is tested against it.
    """
    act = ACTIVATIONS.get(nonlinearity)
    T = x.shape[0]
    hs = []
    norms = {}  # this forward's (T, B) probe tensor, made fresh by its first hook
    if recurrence == "skip":
        past = list(state.unbind(0))  # the last k states, oldest first
    for t in range(T):
        if window and t > 0 and t % window == 0:  # truncation: cut the recurrence here
            state = _detach(state)
            if recurrence == "skip":
                past = [p.detach() for p in past]
        if recurrence == "rnn":
            state = h = rnn_step(x[t], state, params, act)
        elif recurrence == "skip":
            h = skip_step(x[t], past[-1], past[0], params, act)
            past = past[1:] + [h]
        elif recurrence == "lstm":
            state = lstm_step(x[t], state, params)
            h = state[0]
        else:
            state = h = gru_step(x[t], state, params)
        if h.requires_grad and (grad_transform or probe):
            h.register_hook(_hidden_hook(t, T, grad_transform, probe, norms))
        hs.append(h)
    if recurrence == "skip":
        state = torch.stack(past)
        # the final state is a view of hs' last k entries: keep them linked for autograd
    return torch.stack(hs), state


def _hidden_hook(t, T, grad_transform, probe, norms):
    def hook(g):  # g: total ∂L/∂h_t, (B, H)
        if grad_transform is not None:
            g = grad_transform(t, g)
        if probe is not None:
            # a fresh tensor per forward: a reused Probe never overwrites (or mis-shapes) earlier norms
            if "norms" not in norms:
                norms["norms"] = g.new_zeros(T, g.shape[0])
            probe.norms = norms["norms"]
            probe.norms[t] = g.detach().norm(dim=-1)
        return g
    return hook
