"""The true ∂L/∂h_t inside a user's own ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU``: ``watch(module)``.

torch's fused modules keep the hidden states' gradients inside their kernel:
``retain_grad()`` on the output gives only the direct term ∂L/∂output_t, not the
total derivative through the recurrence (for a loss at the last step it is 0 at
every earlier step), and the way around it, rewriting the model as a ``*Cell``
loop with hooks, is several times slower. Inside ``with watch(module) as probe:``
the module's forward runs on gradlab's engine (``recurrences.scan``), which has
torch's equations and weight layout (gate blocks i, f, g, o and r, z, n), with
the module's own Parameters: the outputs are the module's to float tolerance,
its parameters receive the gradients autograd gives through the module, and the
engine's backward sweep records ‖∂L/∂h_t‖ of every layer, step and sample as it
goes (``recurrences.Probe``), at no extra cost.

The norms are reduced in float64 (``engine.hidden_norms``): a float32 module's
‖∂L/∂h_t‖ is recorded down to the float32 gradient's own floor (entries below 1.2e-38
are flushed inside ``watch`` on the CPU), not cut to 0 below 1.1e-19 by float32 squares.

Supported: any ``num_layers``, ``batch_first`` or not, batched (B, ·) and
unbatched input, an empty batch, ``bias=False``, nn.RNN with tanh or relu, an initial state
``h0`` (``(h0, c0)`` for the LSTM), inter-layer dropout in eval mode, and a derivative
of the gradient (``torch.autograd.grad(..., create_graph=True)``, e.g. a gradient
penalty), as the fused module: that backward re-runs the layer as an autograd loop
(as slow as a ``*Cell`` loop), and the profile is the one of the gradient taken with
``create_graph``, not of the later backward through it. Refused with
one ``ValueError``: ``bidirectional``, ``proj_size``, a ``PackedSequence`` input,
and inter-layer dropout in training mode (its random masks cannot be the fused
kernel's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradlab import diagnostics, recurrences
from gradlab.diagnostics import DEFAULTS, Thresholds
from gradlab.recurrences import Probe

# torch's ``mode`` of the module -> (gradlab's recurrence, nonlinearity)
RECURRENCES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "LSTM": ("lstm", None),
               "GRU": ("gru", None)}
PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # the engine's order; torch names them <name>_l<layer>


def watch(module: nn.Module, *, lag: int | None = None, thresholds: Thresholds = DEFAULTS) -> Watch:
    """A context manager: inside it ``module`` (nn.RNN, nn.LSTM, nn.GRU) runs on gradlab's engine.

    After ``loss.backward()``, ``probe.profile`` holds Σ_b ‖∂L/∂h_t‖ per layer and
    step, ``probe.summary()`` the horizon, decay rate and verdict, ``probe.plot(path)``
    draws it. A gradient penalty (``create_graph=True``) works as with the fused module,
    more slowly; the profile is then the one of that gradient (see the module docstring).
    ``lag``: the lag (steps before the last one) of the dependency the task needs, for
    the dependency figures and the vanishing verdict (default: the first step, lag
    T - 1). ``thresholds``: as a run's ``diagnostics:`` section.
    """
    return Watch(module, lag=lag, thresholds=thresholds)


class Watch:
    """What ``watch`` returns; see there. Usable once at a time, any number of times in a row."""

    def __init__(self, module: nn.Module, *, lag: int | None = None, thresholds: Thresholds = DEFAULTS):
        problems = unsupported(module)
        if problems:
            raise ValueError("gradlab.watch: " + "; ".join(problems))
        self.module, self.lag, self.thresholds = module, lag, thresholds
        self.recurrence, self.nonlinearity = RECURRENCES[module.mode]
        self._probes: list[Probe] | None = None  # the last graph-building forward's, one per layer
        self._restore = None

    def __enter__(self) -> Watch:
        if self._restore is not None:
            raise RuntimeError("gradlab.watch: this probe is already active")
        m = self.module
        own = vars(m).get("forward")  # an instance attribute the user set, to put back; usually None
        cpu = any(p.device.type == "cpu" for p in m.parameters())
        flushing = flushes_denormals()
        if cpu:
            # vanishing gradients are subnormal floats, which x86 handles many times slower
            torch.set_flush_denormal(True)
        m.forward = self._forward

        def restore():
            if own is None:
                del m.forward
            else:
                m.forward = own
            if cpu:
                torch.set_flush_denormal(flushing)
        self._restore = restore
        return self

    def __exit__(self, *exc) -> bool:
        restore, self._restore = self._restore, None
        restore()
        return False  # an exception inside goes on, after the module is restored

    # -- the forward on the engine ------------------------------------------------------------

    def _forward(self, input, hx=None):
        """The module's forward (same arguments, same outputs and shapes), on ``recurrences.scan``."""
        m = self.module
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise ValueError("gradlab.watch: PackedSequence input is not supported; pad the batch "
                             "(nn.utils.rnn.pad_packed_sequence) or call the module outside watch")
        if m.dropout > 0 and m.num_layers > 1 and m.training:
            raise ValueError(f"gradlab.watch: dropout={m.dropout} between layers in training mode is not "
                             "supported (its random masks are not the fused kernel's); use module.eval() "
                             "or dropout=0")
        batched = input.dim() == 3
        if input.dim() not in (2, 3) or input.shape[-1] != m.input_size:
            raise ValueError(f"gradlab.watch: expected input of shape (T, B, {m.input_size}) or "
                             f"(T, {m.input_size}) (batch_first: (B, T, {m.input_size})), got {tuple(input.shape)}")
        # (T, B, I); unbatched input is (T, I) whatever batch_first says, as in torch
        x = input.transpose(0, 1) if batched and m.batch_first else input if batched else input.unsqueeze(1)
        states = self._initial_states(hx, x, batched)
        probes = [Probe() for _ in range(m.num_layers)]
        finals = []
        for layer in range(m.num_layers):
            x, final = recurrences.scan(self.recurrence, self.nonlinearity, x, states[layer], self._params(layer, x),
                                   probe=probes[layer])  # x: (T, B, H) from here on
            finals.append(final)
        if torch.is_grad_enabled() and x.requires_grad:  # an evaluation under no_grad keeps the last profile
            self._probes = probes
        out = x.transpose(0, 1).contiguous() if batched and m.batch_first else x if batched else x.squeeze(1)
        if self.recurrence == "lstm":
            h_n = (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))  # (L, B, H) each
        else:
            h_n = torch.stack(finals)  # (L, B, H)
        if not batched:
            h_n = tuple(h.squeeze(1) for h in h_n) if isinstance(h_n, tuple) else h_n.squeeze(1)
        return out, h_n

    def _params(self, layer: int, x: torch.Tensor) -> list[torch.Tensor]:
        """Layer ``layer``'s Parameters in the engine's order; zeros for the biases of ``bias=False``."""
        m, gates = self.module, len(recurrences.RECURRENCES[self.recurrence].gates)
        return [getattr(m, f"{name}_l{layer}") if hasattr(m, f"{name}_l{layer}")
                else x.new_zeros(gates * m.hidden_size) for name in PARAMS]

    def _initial_states(self, hx, x, batched):
        """One engine state per layer: (B, H), or (h, c) for the LSTM; zeros when hx is None."""
        m, B = self.module, x.shape[1]
        shape = (m.num_layers, B, m.hidden_size)
        parts = hx if isinstance(hx, tuple) else (hx,)
        if hx is None:
            parts = (x.new_zeros(shape),) * (2 if self.recurrence == "lstm" else 1)
        elif not batched:
            parts = tuple(h.unsqueeze(1) for h in parts)
        if len(parts) != (2 if self.recurrence == "lstm" else 1) or any(tuple(h.shape) != shape for h in parts):
            want = "(h0, c0), each" if self.recurrence == "lstm" else "h0"
            got = [tuple(h.shape) for h in parts]
            raise ValueError(f"gradlab.watch: expected {want} of shape {shape} (without B for unbatched input), "
                             f"got {got}")
        if self.recurrence == "lstm":
            return [(parts[0][i], parts[1][i]) for i in range(m.num_layers)]
        return list(parts[0].unbind(0))

    # -- what it measured ---------------------------------------------------------------------

    @property
    def profile(self) -> np.ndarray:
        """(num_layers, T) float64: p[l, t] = Σ_b ‖∂L/∂h_t^(l,b)‖, the total derivative, bottom layer first.

        Of the last forward inside the context that built a graph, after its backward.
        """
        if self._probes is None:
            raise RuntimeError("gradlab.watch: no forward with gradients ran inside the with block")
        if any(p.norms is None for p in self._probes):
            raise RuntimeError("gradlab.watch: no gradient reached the module yet: call loss.backward() first")
        return torch.stack([p.norms.cpu().double().sum(dim=1) for p in self._probes]).numpy()  # MPS: no float64

    def summary(self, lag: int | None = None) -> dict:
        """The profile's figures and verdict, as a gradlab run computes them (``diagnostics``).

        Layer 0's profile (every gradient that reaches the input passes through it):
        ``peak``, ``decay_rate`` (per step; exp(rate) is the average factor per step back),
        ``horizon`` (the largest lag still at ≥ ``horizon_fraction`` of the peak),
        ``dependency_lag`` and ``dependency_ratio`` (at ``lag``, default the one given to
        ``watch``, else T - 1), ``nonfinite_steps`` (steps whose ∂L/∂h_t is inf or NaN),
        the two flags of a run (``diagnostics.verdict``): ``exploding`` (here only an
        overflow in this backward: one profile has no norm series, so no spikes; a
        ``GradientMonitor`` in the loop sees those) and ``vanishing`` (the dependency's
        share below ``vanishing_ratio``; None when it is NaN), ``verdict`` naming
        both (``vanishing+exploding``, ``exploding``, ``vanishing`` or ``healthy``), and
        ``depth_ratio`` for a stack.
        """
        p = self.profile  # (L, T)
        T = p.shape[1]
        lag = next((v for v in (lag, self.lag) if v is not None), T - 1)
        if not 0 <= lag < T:
            raise ValueError(f"gradlab.watch: lag {lag} outside the sequence: 0 <= lag < T = {T}")
        nonfinite = int((~np.isfinite(p[0])).sum())
        # no norm series here, so no spikes: an overflowed ∂L/∂h_t is the run's non-finite step
        verdict, figures = diagnostics.verdict([], nonfinite, p[0], T - 1 - lag, self.thresholds)
        out = {"verdict": verdict, "peak": diagnostics.profile_summary(p[0], T - 1 - lag)["peak"],
               **{k: v for k, v in figures.items() if k not in ("spikes", "spike_ratio_max")}}
        if len(p) > 1:
            out["depth_ratio"] = diagnostics.depth_ratio(p)
        return out

    def plot(self, path: str | Path, lag: int | None = None) -> Path:
        """Write the gradient-through-time profile (every layer, against the lag) as a PNG; return its path."""
        from gradlab import plots

        figures = self.summary(lag)
        return plots.profile_figure(self.profile, Path(path), dependency_lag=figures["dependency_lag"],
                                    horizon_fraction=self.thresholds.horizon_fraction,
                                    title=f"{type(self.module).__name__}: gradient through time")


def unsupported(module) -> list[str]:
    """What ``watch`` cannot run of this module's settings; [] when it can."""
    if not isinstance(module, nn.RNNBase) or getattr(module, "mode", None) not in RECURRENCES:
        return [f"expected an nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}"]
    problems = []
    if module.bidirectional:
        problems.append("bidirectional=True is not supported")
    if getattr(module, "proj_size", 0):
        problems.append(f"proj_size={module.proj_size} is not supported")
    return problems


def flushes_denormals() -> bool:
    """Whether this thread flushes subnormal floats to zero now (torch can set it, not read it).

    2^-140 is a float32 subnormal; with denormals-are-zero it reads as 0, so halving it gives 0.
    """
    return (torch.full((1,), 2.0 ** -140) * 0.5).item() == 0.0
