"""Recurrent cells: the registry of cells, their parameters and initialisation, and the network of them.

Every cell stores its weights under torch's names (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh``, gate blocks stacked in torch's order) so that a cell can
be checked against ``torch.nn.RNN/LSTM/GRU`` by copying weights across. A cell
entry names its recurrence (``gradlab.recurrences``: rnn for vanilla, irnn and
orthogonal; skip; lstm; gru), its initialisation, the options it accepts and
its fused torch twin. A stack of layers (``layers > 1``) has a list of the
recurrence's states, bottom layer first.

Remedies that live in the parameters (each cited where it is defined):
``init="henaff"`` (Henaff et al. 2016), ``constrain=True`` (U kept orthogonal
through training), ``forget_bias`` (a constant, or chrono: Tallec & Ollivier
2018), and ``layers`` (a deep recurrent network).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from gradlab.defaults import ModelConfig
from gradlab.recurrences import RECURRENCES, scan, unroll
from gradlab.vocabulary import EXPLODING, FORGETS, UNREACHED


@dataclass(frozen=True)
class Cell:
    """A registry entry: its recurrence (a key of RECURRENCES), nonlinearity, initialisation, the options
    it accepts (keys of REFUSALS; validation and ``RecurrentNet`` refuse the others; any other model key
    applies to every cell), and its fused torch
    twin for ``bench``: (input_size, hidden) -> an nn.RNN/LSTM/GRU with the same equations, or None."""

    recurrence: str
    nonlinearity: str | None
    init: Callable[[nn.Module, torch.Generator], None]
    description: str
    options: frozenset = frozenset()
    fused: Callable[[int, int], nn.Module] | None = None
    # the cases of a diagnosis (gradlab.vocabulary.CASES) choosing this cell treats: gradlab.diagnosis proposes
    # ``model.cell: <name>`` for them (its DECLARED copy is kept equal to these by a test)
    addresses: frozenset = frozenset()


def init_uniform(layer: nn.Module, gen: torch.Generator) -> None:
    """torch's default for nn.RNN/LSTM/GRU: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(layer.hidden)
    for p in layer.recurrent_parameters():
        nn.init.uniform_(p, -bound, bound, generator=gen)


def init_irnn(layer: nn.Module, gen: torch.Generator) -> None:
    """Le, Jaitly & Hinton 2015 (arXiv:1504.00941) §3: U = I, biases 0, W ~ N(0, 0.001^2)."""
    nn.init.normal_(layer.weight_ih, 0.0, 0.001, generator=gen)
    with torch.no_grad():
        layer.weight_hh.copy_(torch.eye(layer.hidden))
        layer.bias_ih.zero_()
        layer.bias_hh.zero_()


def init_orthogonal(layer: nn.Module, gen: torch.Generator) -> None:
    """Saxe et al. 2014 / Arjovsky et al. 2016: U a random orthogonal matrix, the rest as torch."""
    init_uniform(layer, gen)
    nn.init.orthogonal_(layer.weight_hh, generator=gen)


def henaff_matrix(n: int, gen: torch.Generator) -> torch.Tensor:
    """Henaff, Szlam & LeCun 2016 (arXiv:1602.06662) orthogonal init: (n, n) float64.

    U = exp(A), A block-diagonal skew-symmetric with 2×2 blocks [[0, s_i], [-s_i, 0]],
    s_i ~ U[-π, π] for i < n // 2 (an odd n keeps a last 1 on the diagonal): a
    rotation by a random angle in each plane (e_2i, e_2i+1), so every eigenvalue lies
    on the unit circle at a uniformly random phase — the "clock" of their copy-task
    solution. As expRNN implements it (Lezcano-Casado & Martínez-Rubio 2019, code
    ``initialization.henaff_init_``, which draws A and uses exp(A)); exp of one block
    is [[cos s, sin s], [-sin s, cos s]], written here in closed form.
    """
    s = torch.empty(n // 2, dtype=torch.float64).uniform_(-math.pi, math.pi, generator=gen)  # (n//2,)
    u = torch.eye(n, dtype=torch.float64)
    i = torch.arange(0, 2 * (n // 2), 2)
    u[i, i], u[i, i + 1] = s.cos(), s.sin()
    u[i + 1, i], u[i + 1, i + 1] = -s.sin(), s.cos()
    return u


def init_henaff(layer: nn.Module, gen: torch.Generator) -> None:
    """The orthogonal cell with U from ``henaff_matrix`` instead of a Haar-random orthogonal matrix."""
    init_uniform(layer, gen)
    with torch.no_grad():
        layer.weight_hh.copy_(henaff_matrix(layer.hidden, gen))


INITS = {"henaff": init_henaff}  # model.init: replaces the cell's own initialisation

def init_forget_bias(layer: nn.Module, value: float | str, gen: torch.Generator, t_max: int | None = None) -> None:
    """Set the forget-gate bias b_f = bias_ih_f + bias_hh_f of every unit (LSTM f, GRU z).

    torch keeps two bias vectors whose sum acts; the value goes into ``bias_ih``'s
    block and ``bias_hh``'s block is zeroed, so the sum is exactly b_f. The other
    gates keep their initialisation.

    - a number c: b_f = c (Gers, Schmidhuber & Cummins 2000 introduced the forget gate
      with a positive bias; Jozefowicz, Zaremba & Sutskever 2015 recommend c = 1).
    - ``"chrono"`` (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?",
      arXiv:1804.11188, "chrono initialization"): b_f ~ log(U[1, T_max - 1]) per unit and, for the LSTM,
      b_i = -b_f. A unit keeping σ(b_f) = u/(1+u) of its state per step forgets with
      time constant 1/(1 - σ(b_f)) = 1 + u, so the units' memory spans are spread
      over [2, T_max], the range of dependencies expected. GRU: the same argument
      for torch's z, which plays f's role; it has no separate input gate.
      ``t_max`` is required (T_max - 1 below 1 gives b_f = 0).
    """
    gates = RECURRENCES[layer.recurrence].gates
    H, f = layer.hidden, gates.index(RECURRENCES[layer.recurrence].forget_gate)
    if value == "chrono":
        if t_max is None:
            raise ValueError("chrono forget-gate init needs t_max, the longest expected dependency")
        b = torch.empty(H, dtype=torch.float64).uniform_(1.0, max(t_max - 1.0, 1.0), generator=gen).log()
    else:
        b = torch.full((H,), float(value), dtype=torch.float64)
    with torch.no_grad():
        layer.bias_ih[f * H:(f + 1) * H] = b
        layer.bias_hh[f * H:(f + 1) * H] = 0.0
        if value == "chrono" and "i" in gates:  # a separate input gate: LSTM's
            layer.bias_ih[:H] = -b  # the input gate, block 0 of (i, f, g, o)
            layer.bias_hh[:H] = 0.0


RNN_OPTIONS = frozenset({"omega"})  # Pascanu's Ω is defined for h_t = act(W x_t + U h_(t-1) + b)
CELLS: dict[str, Cell] = {
    "vanilla": Cell("rnn", "tanh", init_uniform, "tanh RNN, torch's default uniform init (Elman 1990)",
                    RNN_OPTIONS, functools.partial(nn.RNN, nonlinearity="tanh")),
    # U = I: where the ReLU is active the step Jacobian is I, so ∂L/∂h_t passes back unchanged (Le et al. 2015 §3)
    "irnn": Cell("rnn", "relu", init_irnn, "ReLU RNN with identity recurrence, zero bias (Le et al. 2015)",
                 RNN_OPTIONS, functools.partial(nn.RNN, nonlinearity="relu"), frozenset({UNREACHED})),
    "orthogonal": Cell("rnn", "tanh", init_orthogonal,
                       "RNN with orthogonal recurrent init (Saxe et al. 2014; Arjovsky et al. 2016)",
                       RNN_OPTIONS | {"nonlinearity", "init", "constrain"},
                       # every singular value of U is 1: the linear part of a step neither shrinks nor
                       # grows the gradient (Saxe et al. 2014; Arjovsky et al. 2016 §2)
                       functools.partial(nn.RNN, nonlinearity="tanh"), frozenset({UNREACHED})),
    # a path k times shorter to the lag: k-fold fewer Jacobians to shrink the gradient (Chang et al. 2017)
    "skip": Cell("skip", "tanh", init_uniform,
                 "tanh RNN that also reads h[t-k]: a shortcut through time (Chang 2017; Campos 2018)",
                 addresses=frozenset({UNREACHED})),
    "lstm": Cell("lstm", None, init_uniform,
                 "long short-term memory, torch.nn.LSTM's equations (Hochreiter & Schmidhuber 1997)",
                 # the additive cell state carries the gradient (the constant error carousel, Hochreiter &
                 # Schmidhuber 1997 §4) and the forget gate decides what the state keeps (Gers et al. 2000)
                 frozenset({"forget_bias"}), nn.LSTM, frozenset({UNREACHED, FORGETS})),
    "gru": Cell("gru", None, init_uniform, "gated recurrent unit, torch.nn.GRU's equations (Cho et al. 2014)",
                # h_t = (1 - z) n + z h_(t-1): an update gate near 1 keeps the state and its gradient (Cho 2014)
                frozenset({"forget_bias"}), nn.GRU, frozenset({UNREACHED, FORGETS})),
}


def _cells(names: list[str]) -> str:
    return f"the {names[0]} cell" if len(names) == 1 else f"the {', '.join(names)} cells"


def _and(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# What a cell that does not accept an option is told, from the cells that do (validation says it,
# located, before any run; RecurrentNet says it too): option -> (the accepting cells -> message).
REFUSALS = {
    "nonlinearity": lambda c: f"only {_cells(c)} take{'s' * (len(c) == 1)} a nonlinearity",
    "init": lambda c: f"only {_cells(c)} take{'s' * (len(c) == 1)} an init option",
    "constrain": lambda c: f"only {_cells(c)} can be kept orthogonal",
    "forget_bias": lambda c: f"only {_and(c)} ha{'s' if len(c) == 1 else 've'} a forget gate",
    "omega": lambda c: (f"only for one layer of {_cells(c)} "
                        f"(Pascanu's Ω is defined for h_t = act(W x_t + U h_(t-1) + b))"),
}


@dataclass(frozen=True)
class OptionRemedy:
    """A model option (a key of REFUSALS) as a remedy: the ``setting`` a config gives it and the cases of a
    diagnosis it ``addresses`` (gradlab.vocabulary.CASES); gradlab.diagnosis proposes it to the cells taking it."""

    setting: str
    addresses: frozenset


# The options that are remedies; the rest (nonlinearity) are not. A new one is one entry here.
OPTION_REMEDIES = {
    # the orthogonal cell's rotation-block init, whose phases act as a clock holding the symbols (Henaff 2016 §4)
    "init": OptionRemedy("model.init: henaff", frozenset({FORGETS})),
    # U kept orthogonal through training, so its norm is 1 throughout, not only at init (Arjovsky 2016)
    "constrain": OptionRemedy("model.constrain: true", frozenset({UNREACHED, EXPLODING})),
    # memory spans spread over [2, T_max] (Tallec & Ollivier 2018): the state keeps, and passes back, long lags
    "forget_bias": OptionRemedy("model.forget_bias: chrono", frozenset({UNREACHED, FORGETS})),
    # Ω keeps ‖∂L/∂h_t‖ from shrinking step to step (Pascanu et al. 2013 §3.3, who suggest α 2-4)
    "omega": OptionRemedy("train.omega: 2", frozenset({UNREACHED})),
}


def takers(option: str) -> list[str]:
    """The cells whose entries accept ``option`` (a key of REFUSALS), in registry order."""
    return [name for name, c in CELLS.items() if option in c.options]


def refusal(option: str) -> str:
    """The one message for a cell that does not accept ``option`` (a key of REFUSALS): which cells do."""
    return REFUSALS[option](takers(option))


def recurrence_problem(cell: str, engine: str = "autograd") -> str | None:
    """Why ``cell`` cannot run on ``engine``: an unknown recurrence, or one without a hand-written
    BPTT under engine scan; None when it can."""
    name = CELLS[cell].recurrence
    if name not in RECURRENCES:
        return f"cell {cell!r} has an unknown recurrence {name!r}; valid: {', '.join(RECURRENCES)}"
    if engine == "scan" and RECURRENCES[name].scan is None:
        return f"the {name} recurrence of cell {cell!r} has no hand-written BPTT; use model.engine: autograd"
    return None


class RecurrentLayer(nn.Module):
    """One recurrent layer's parameters, under torch's names and in torch's layouts.

    weight_ih (G·H, I), weight_hh (G·H, H), bias_ih and bias_hh (G·H,), G gate
    blocks stacked in torch's order; the skip recurrence adds weight_skip (H, H).
    """

    def __init__(self, recurrence: str, input_size: int, hidden: int):
        super().__init__()
        self.recurrence, self.hidden = recurrence, hidden
        g = len(RECURRENCES[recurrence].gates)
        self.weight_ih = nn.Parameter(torch.empty(g * hidden, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g * hidden, hidden))
        self.bias_ih = nn.Parameter(torch.empty(g * hidden))
        self.bias_hh = nn.Parameter(torch.empty(g * hidden))
        for name in RECURRENCES[recurrence].extra:
            setattr(self, name, nn.Parameter(torch.empty(hidden, hidden)))

    def names(self) -> list[str]:
        return ["weight_ih", "weight_hh", "bias_ih", "bias_hh", *RECURRENCES[self.recurrence].extra]

    def recurrent_parameters(self) -> list[torch.Tensor]:
        """The engine's params, in its order; a constrained weight_hh is the tensor its parametrization makes."""
        return [getattr(self, n) for n in self.names()]

    def leaf(self, name: str) -> nn.Parameter:
        """The trained Parameter behind ``name``: the parametrization's ``original`` when constrained."""
        if parametrize.is_parametrized(self, name):
            return getattr(self.parametrizations, name).original
        return getattr(self, name)


class RecurrentNet(nn.Module):
    """``layers`` recurrent layers of one cell, stacked, and a linear readout of the top one.

    Layer l's hidden states are layer l+1's inputs (a deep RNN in the sense of
    Graves, Mohamed & Hinton 2013 and Pascanu et al. 2014, "How to construct deep
    recurrent neural networks": the stacked kind, as ``torch.nn.RNN(num_layers=N)``).
    ``forward`` returns the top layer's hidden states (T, B, H) and the final
    state; the caller applies ``readout`` where the task has a target.
    ``net.weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (``weight_skip``)
    are layer 0's, as for a one-layer net; ``net.layers[l]`` holds layer l's.

    Options, each a remedy from the literature:

    - ``init="henaff"`` (orthogonal cell): U from ``henaff_matrix`` (Henaff et al. 2016).
    - ``constrain=True`` (orthogonal cell): U stays orthogonal through training.
      U = B·exp(A), torch's ``parametrizations.orthogonal`` with the matrix_exp map
      and its default trivialization: the base B is the initial U, A =
      tril(X) - tril(X)ᵀ is skew-symmetric, trained through X, and starts at 0.
      This is expRNN's exponential map (Lezcano-Casado & Martínez-Rubio 2019,
      arXiv:1901.08428) moved to the initial point (Lezcano-Casado 2019,
      "Trivializations for gradient-based optimization on manifolds"): the
      differential of exp at 0 is the identity, so training starts along the
      Riemannian gradient, and B keeps the chosen init (Haar or Henaff) exactly.
      matrix_exp rather than cayley: the Cayley map never reaches an orthogonal
      matrix with eigenvalue -1 relative to B and needs a linear solve; rather
      than householder: a product of H reflections built one after the other,
      for no gain in exactness. The engine receives the U the parametrization
      computes, and U's gradient flows on into X by autograd, outside the
      engine's Function. U is recomputed once per forward (one H×H matrix_exp).
    - ``forget_bias`` (lstm, gru): a number or ``"chrono"``, see ``init_forget_bias``;
      ``t_max`` is chrono's T_max.
    - ``dtype``: the parameters' dtype. Initial values are always drawn in float32
      (so a seed gives the same numbers in either dtype); the constraint's base B
      is made orthogonal in the final dtype (to 1e-15 in float64, not 1e-7).

    ``skip``, ``engine``, ``layers``, ``constrain`` left at None take ``gradlab.defaults.ModelConfig``'s
    defaults, where a config's defaults live.
    """

    def __init__(self, cell: str, input_size: int, hidden: int, output_size: int, *,
                 nonlinearity: str | None = None, skip: int | None = None, engine: str | None = None,
                 seed: int = 0, layers: int | None = None, init: str | None = None, constrain: bool | None = None,
                 forget_bias: float | str | None = None, t_max: int | None = None, dtype=None):
        skip, engine, layers, constrain = (getattr(ModelConfig, k) if v is None else v for k, v in (
            ("skip", skip), ("engine", engine), ("layers", layers), ("constrain", constrain)))
        super().__init__()
        spec = CELLS[cell]
        _check_options(cell, layers, engine, nonlinearity, init, constrain, forget_bias)
        self.cell, self.recurrence, self.hidden, self.engine = cell, spec.recurrence, hidden, engine
        self.nonlinearity = nonlinearity or spec.nonlinearity
        self.skip = skip
        self.layers = nn.ModuleList(RecurrentLayer(spec.recurrence, input_size if i == 0 else hidden, hidden)
                                    for i in range(layers))
        self.readout = nn.Linear(hidden, output_size)
        gen = torch.Generator().manual_seed(seed)
        for layer in self.layers:  # layer by layer from one generator; one layer draws what it always drew
            (INITS[init] if init else spec.init)(layer, gen)
            if forget_bias is not None:
                init_forget_bias(layer, forget_bias, gen, t_max)
        bound = 1.0 / math.sqrt(hidden)  # nn.Linear's default, drawn from our generator
        nn.init.uniform_(self.readout.weight, -bound, bound, generator=gen)
        nn.init.uniform_(self.readout.bias, -bound, bound, generator=gen)
        if dtype is not None:
            self.to(dtype)
        if constrain:
            for layer in self.layers:
                with torch.no_grad():  # torch keeps a base it finds orthogonal to rtol 1e-5: make it exact here
                    layer.weight_hh.copy_(orthonormalize(layer.weight_hh))
                parametrizations.orthogonal(layer, "weight_hh", orthogonal_map="matrix_exp")

    weight_ih = property(lambda self: self.layers[0].weight_ih)
    weight_hh = property(lambda self: self.layers[0].weight_hh)
    bias_ih = property(lambda self: self.layers[0].bias_ih)
    bias_hh = property(lambda self: self.layers[0].bias_hh)
    weight_skip = property(lambda self: self.layers[0].weight_skip)

    def recurrent_parameters(self) -> list[torch.Tensor]:
        """Every layer's engine params (``RecurrentLayer.recurrent_parameters``), bottom layer first."""
        return [p for layer in self.layers for p in layer.recurrent_parameters()]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-group gradient norms: input (every layer's weight_ih and
        bias_ih: what feeds it from below), recurrent (weight_hh, bias_hh, weight_skip), readout."""
        groups = {"input": [], "recurrent": [], "readout": list(self.readout.parameters())}
        for layer in self.layers:
            groups["input"] += [layer.weight_ih, layer.bias_ih]
            groups["recurrent"] += [layer.leaf(n) for n in layer.names() if n not in ("weight_ih", "bias_ih")]
        return groups

    def initial_state(self, batch: int, *, device=None, dtype=None):
        """Zeros: one layer's state for a one-layer net, a list of them (bottom first) for a stack."""
        z = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        make = RECURRENCES[self.recurrence].initial_state
        states = [make(z, batch, self.hidden, self.skip) for _ in self.layers]
        return states[0] if len(self.layers) == 1 else states

    def forward(self, x, state, *, window=None, grad_transform=None, probe=None):
        """x (T, B, I) -> the top layer's hidden states (T, B, H), final state.

        state: as ``initial_state`` makes it; the final state has the same form.
        window: cut the backward through the recurrence every ``window`` steps
        (as if the state were detached there), in every layer. grad_transform(t, g)
        -> g: applied to the total ∂L/∂h_t (B, H) of every layer before it flows
        further back (once per step and layer, the top layer first).
        probe: a ``Probe`` that receives ‖∂L/∂h_t‖ per step and sample of layer 0,
        or a list with a Probe (or None) per layer, bottom first.
        """
        stacked = len(self.layers) > 1
        probes = list(probe) if isinstance(probe, (list, tuple)) else [probe]
        probes += [None] * (len(self.layers) - len(probes))
        finals = []
        for layer, s, p in zip(self.layers, state if stacked else [state], probes, strict=True):
            x, final = self._layer(layer, x, s, window, grad_transform, p)  # x: (T, B, H) from here on
            finals.append(final)
        return x, (finals if stacked else finals[0])

    def _layer(self, layer, x, state, window, grad_transform, probe):
        run = unroll if self.engine == "autograd" else scan
        return run(self.recurrence, self.nonlinearity, x, state, layer.recurrent_parameters(),
                   window=window, grad_transform=grad_transform, probe=probe)


def orthonormalize(u: torch.Tensor) -> torch.Tensor:
    """The Q of u = QR with diag(R) > 0: for a nearly orthogonal u, the orthogonal matrix next to it."""
    q, r = torch.linalg.qr(u)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def _check_options(cell: str, layers: int, engine: str, nonlinearity, init, constrain: bool, forget_bias) -> None:
    """The options' preconditions (config validation reports the same, located, before any run)."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    if problem := recurrence_problem(cell, engine):
        raise ValueError(problem)
    options = CELLS[cell].options
    if nonlinearity is not None and "nonlinearity" not in options:
        raise ValueError(f"nonlinearity {nonlinearity!r}: {refusal('nonlinearity')}, not {cell}")
    if init is not None and (init not in INITS or "init" not in options):
        raise ValueError(f"init {init!r}: {refusal('init')} ({', '.join(INITS)})")
    if constrain and "constrain" not in options:
        raise ValueError(f"constrain: {refusal('constrain')}, not {cell}")
    if forget_bias is not None and "forget_bias" not in options:
        raise ValueError(f"forget_bias: {refusal('forget_bias')}, not {cell}")
