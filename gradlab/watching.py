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

Besides the gradient, ``probe.summary()`` measures the module's forward dynamics on its
own inputs (issue 23 point 7): the last graph-building forward's input and initial state
are kept (detached references, no copy: one batch, replaced by the next forward; an input
modified in place afterwards is detected by its version counter and not read), and
computed from only when ``summary()`` or ``diagnose()`` asks, once per forward and weights:

- the top ``lyapunov`` Lyapunov exponents (``gradlab.lyapunov.model_spectrum``: per layer,
  each driven by the layer below, of the first ``lyapunov.SEQUENCES`` sequences; λ₁ of a
  stack is the largest layer's, as for a gradlab run), with the module's weights as they
  are when asked (after an optimizer step, the updated ones);
- the memory of the input at the dependency's lag k: how well x_{T-1-k} reads back from the
  top layer's h_{T-1} of that forward (``memory.input_readout``: a ridge readout fitted on
  half the batch, scored on the other half, with its chance level); None, with the reason
  in ``note``, for too few sequences (``memory_rows``) or without a known lag.

Cost, paid in ``summary()``, not in the forward: measured on this project's loaded 2-core
machine, one thread, an LSTM of H = 16 at T = 200 (tests/test_watch_diagnosis.py's scenario),
1.7-2.2 s for k = 4 exponents, about 20 of its training steps inside ``watch``; the first
call in a process adds torch.func's warm-up (seconds). The memory readout is one SVD of a
(B/2, H) matrix. So ask for it at the steps you look at; ``summary(forward=False)`` leaves both
out, and ``watch(module, lyapunov=0)`` the exponents.

Which lag. The backward also records the steps the loss reads directly: those where
∂L/∂output_t (the gradient the loss puts on the module's output sequence, or on its final
state for the last step) is non-zero for some sample (hooks on the outputs; exact zeros
where a loss never reads a step). Without a ``lag``, a loss that reads one step (a
classifier reading the last one) has the first step as its natural dependency (lag T - 1);
a loss that reads several (a character model, one loss per step) has none the figures can
name: each read step's own direct term enters the profile, so the horizon reaches at least
the earliest read step whatever the recurrence does, and the vanishing flag is unknown
(None, with a ``note``) until a lag is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradlab import diagnostics, lyapunov, memory, recurrences
from gradlab.diagnostics import DEFAULTS, Thresholds
from gradlab.recurrences import Probe
from gradlab.vocabulary import verdict_label

# torch's ``mode`` of the module -> (gradlab's recurrence, nonlinearity)
RECURRENCES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "LSTM": ("lstm", None),
               "GRU": ("gru", None)}
# torch's ``mode`` -> the gradlab cell it is (``cells.CELLS``), which ``diagnose`` does not suggest as a remedy:
# a relu nn.RNN is an irnn but for its initialisation, which is what the irnn entry would change
CELLS = {"RNN_TANH": "vanilla", "RNN_RELU": "irnn", "LSTM": "lstm", "GRU": "gru"}
PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # the engine's order; torch names them <name>_l<layer>
# How many Lyapunov exponents ``summary`` measures by default: the 4 to 8, at the low end because each
# costs a jvp per step and sequence (``lyapunov.METHODS``), paid when asked, not per step
LYAPUNOV = 4


def watch(module: nn.Module, *, lag: int | None = None, thresholds: Thresholds = DEFAULTS,
          lyapunov: int = LYAPUNOV) -> Watch:
    """A context manager: inside it ``module`` (nn.RNN, nn.LSTM, nn.GRU) runs on gradlab's engine.

    After ``loss.backward()``, ``probe.profile`` holds Σ_b ‖∂L/∂h_t‖ per layer and
    step, ``probe.summary()`` the horizon, decay rate, flags and the forward figures
    (Lyapunov exponents, memory), ``probe.diagnose()`` the diagnosis in ``gradlab compare``'s
    words, ``probe.plot(path)`` draws the profile. A gradient penalty (``create_graph=True``)
    works as with the fused module, more slowly; the profile is then the one of that gradient
    (see the module docstring).
    ``lag``: the lag (steps before the last one) of the dependency the task needs, for the
    dependency figures, the vanishing flag, the memory and the long-term share of the
    recurrent weights' gradient (measured in the backward only when given here). Without it:
    the first step (lag T - 1) when the loss reads one step, unknown when it reads several
    (the module docstring). ``thresholds``: as a run's ``diagnostics:`` section.
    ``lyapunov``: how many Lyapunov exponents ``summary`` measures (at most the hidden size;
    0: none).
    """
    return Watch(module, lag=lag, thresholds=thresholds, lyapunov=lyapunov)


@dataclass
class _Forward:
    """What the last graph-building forward leaves for the figures: its probes, the steps its loss reads, and
    its inputs (detached references and their version counters; ``_Watch._inputs``)."""

    probes: list[Probe]  # one per layer
    x: torch.Tensor  # (T, B, I), the module's input in the engine's layout
    hx: tuple | None  # the initial state as the module was given it (detached), None: zeros
    versions: tuple[int, ...]  # x's and hx's version counters at the forward
    last_h: torch.Tensor  # (B, H): the top layer's h_{T-1}, a detached copy
    read: torch.Tensor | None = None  # (T,) bool: ∂L/∂output_t non-zero for some sample (``read_output``)
    read_final: torch.Tensor | None = None  # () bool: ∂L/∂(final state) non-zero
    cache: dict = field(default_factory=dict)  # the Lyapunov summary, keyed by the weights' versions

    def read_output(self, g: torch.Tensor) -> None:
        """A hook on the top layer's output (T, B, H): which steps the loss reads directly (no sync)."""
        if g is None:  # an output the loss never reached: nothing read
            return
        read = g.detach().ne(0).flatten(1).any(dim=1)  # (T,)
        self.read = read if self.read is None else self.read | read

    def read_state(self, g: torch.Tensor) -> None:
        """A hook on a final state (B, H): the loss reads the last step."""
        if g is None:
            return
        read = g.detach().ne(0).any()
        self.read_final = read if self.read_final is None else self.read_final | read

    def read_steps(self) -> np.ndarray:
        """(T,) bool on the host: the steps the loss reads directly (the last also through the final state)."""
        T = self.x.shape[0]
        steps = np.zeros(T, dtype=bool) if self.read is None else self.read.cpu().numpy().copy()
        if self.read_final is not None and bool(self.read_final):
            steps[-1] = True
        return steps

    def changed(self) -> bool:
        """Whether the kept input or initial state was modified in place since the forward."""
        return _versions(self.x, self.hx) != self.versions


def _versions(x: torch.Tensor, hx) -> tuple[int, ...]:
    parts = () if hx is None else hx if isinstance(hx, tuple) else (hx,)
    return tuple(t._version for t in (x, *parts))


class Watch:
    """What ``watch`` returns; see there. Usable once at a time, any number of times in a row."""

    def __init__(self, module: nn.Module, *, lag: int | None = None, thresholds: Thresholds = DEFAULTS,
                 lyapunov: int = LYAPUNOV):
        problems = unsupported(module)
        if lag is not None and lag < 0:
            problems.append(f"lag must be >= 0 (steps before the last one), got {lag}")
        if lyapunov < 0:
            problems.append(f"lyapunov must be >= 0 (how many exponents; 0: none), got {lyapunov}")
        if problems:
            raise ValueError("gradlab.watch: " + "; ".join(problems))
        self.module, self.lag, self.thresholds, self.lyapunov = module, lag, thresholds, lyapunov
        self.recurrence, self.nonlinearity = RECURRENCES[module.mode]
        self._last: _Forward | None = None  # the last graph-building forward's
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
        x0, states = x, self._initial_states(hx, x, batched)
        T = x.shape[0]
        # with a lag, the backward also splits the recurrent weights' gradient at the dependency's step + 1, U's
        # first use on a state that holds it (as training.diagnose; recurrences.Probe)
        cut = None if self.lag is None or self.lag >= T else T - self.lag
        probes = [Probe(cut) for _ in range(m.num_layers)]
        finals = []
        for layer in range(m.num_layers):
            x, final = recurrences.scan(self.recurrence, self.nonlinearity, x, states[layer], self._params(layer, x),
                                   probe=probes[layer])  # x: (T, B, H) from here on
            finals.append(final)
        if torch.is_grad_enabled() and x.requires_grad:  # an evaluation under no_grad keeps the last profile
            self._keep(probes, x0, hx, batched, x, finals)
        out = x.transpose(0, 1).contiguous() if batched and m.batch_first else x if batched else x.squeeze(1)
        if self.recurrence == "lstm":
            h_n = (torch.stack([f[0] for f in finals]), torch.stack([f[1] for f in finals]))  # (L, B, H) each
        else:
            h_n = torch.stack(finals)  # (L, B, H)
        if not batched:
            h_n = tuple(h.squeeze(1) for h in h_n) if isinstance(h_n, tuple) else h_n.squeeze(1)
        return out, h_n

    def _keep(self, probes, x, hx, batched, out, finals) -> None:
        """Keep this forward's probes and inputs, and hook its outputs to record the steps the loss reads."""
        if hx is not None:  # as _initial_states reads it: (L, B, H) each, B = 1 for unbatched input
            hx = tuple(h.detach() if batched else h.detach().unsqueeze(1) for h in (hx if isinstance(hx, tuple)
                                                                                     else (hx,)))
        x = x.detach()
        record = _Forward(probes, x, hx, _versions(x, hx), out[-1].detach().clone())
        out.register_hook(record.read_output)
        for final in finals:
            for part in final if isinstance(final, tuple) else (final,):
                if part.requires_grad:
                    part.register_hook(record.read_state)
        self._last = record

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

    def _record(self) -> _Forward:
        if self._last is None:
            raise RuntimeError("gradlab.watch: no forward with gradients ran inside the with block")
        return self._last

    @property
    def profile(self) -> np.ndarray:
        """(num_layers, T) float64: p[l, t] = Σ_b ‖∂L/∂h_t^(l,b)‖, the total derivative, bottom layer first.

        Of the last forward inside the context that built a graph, after its backward.
        """
        probes = self._record().probes
        if any(p.norms is None for p in probes):
            raise RuntimeError("gradlab.watch: no gradient reached the module yet: call loss.backward() first")
        return torch.stack([p.norms.cpu().double().sum(dim=1) for p in probes]).numpy()  # MPS: no float64

    def summary(self, lag: int | None = None, *, forward: bool = True) -> dict:
        """The profile's figures and flags, as a gradlab run computes them (``diagnostics``), and the forward
        figures of the same forward.

        Layer 0's profile (every gradient that reaches the input passes through it):
        ``peak``, ``decay_rate`` (per step; exp(rate) is the average factor per step back),
        ``horizon`` (the largest lag still at ≥ ``horizon_fraction`` of the peak),
        ``dependency_lag`` and ``dependency_ratio`` (at ``lag``, default the one given to
        ``watch``, else the rule of the module docstring: T - 1 when the loss reads one step,
        None when it reads several), ``nonfinite_steps`` (steps whose ∂L/∂h_t is inf or NaN),
        the two flags of a run (``diagnostics.verdict``): ``exploding`` (an overflow in this
        backward, or ``chaotic``: λ₁ above the estimate's error, ``diagnostics.chaos_margin`` of
        ``lyapunov_steps``, the steps it was averaged over; None when not measured;
        one profile has no norm series, so no spikes: a ``GradientMonitor`` in the loop sees
        those) and ``vanishing`` (the dependency's
        share below ``vanishing_ratio``; None when it is NaN or the lag unknown, and when the ratio is
        only an upper bound at or above ``vanishing_ratio``: ``dependency_ratio_bound`` True, the loss
        also reads steps between the dependency and the last, whose direct terms enter the profile),
        ``verdict`` naming both (``vanishing+exploding``, ``exploding``, ``vanishing``, ``healthy``, or
        ``not exploding`` when vanishing is unknown), ``depth_ratio`` for a stack, and
        ``loss_steps``: how many steps the loss reads directly.

        Forward figures (the module docstring; the names of a run's evaluation rows): with
        ``lyapunov`` > 0, ``lyapunov_max``, ``lyapunov_near_zero``, ``lyapunov_rank_lost``, ``lyapunov_steps``
        (``lyapunov.summary`` of layer 0; ``_l<l>`` of layer l > 0, as a run's rows; the stack's λ₁
        is the largest); ``memory`` and ``memory_chance`` (the held-out score of x_{T-1-lag} from
        the top layer's h_{T-1}, and the readout's chance level). ``forward=False`` leaves them
        out (the gradient's figures only, at no cost: what a ``GradientMonitor`` given this probe
        reads). With the lag given to ``watch``, ``long_term_share`` (``_l<l>``): the share of the
        recurrent weights' gradient from their uses at steps ≥ T - lag (``recurrences.long_term_share``,
        measured in the backward).
        ``note``: what a figure that is None, or one to read with care, cannot tell; None when nothing.
        """
        record, p = self._record(), self.profile  # p: (L, T)
        T = p.shape[1]
        reads = record.read_steps()  # (T,)
        known, notes = self._dependency_lag(lag, reads), []
        # the loss also reads steps between the dependency and the last: the ratio is an upper bound
        bound = known is not None and bool(reads.sum() > 1 and reads[T - 1 - known:T - 1].any())
        measured = {}  # the forward figures, first: λ₁ > 0 is an explosion flag (diagnostics.is_chaotic)
        if forward:
            measured.update(self._lyapunov(record, notes))
            measured.update(self._memory(record, known, notes))
        nonfinite = int((~np.isfinite(p[0])).sum())
        # no norm series here, so no spikes: an overflowed ∂L/∂h_t is the run's non-finite step
        verdict, figures = diagnostics.verdict([], nonfinite, p[0], T - 1 - (known or 0), self.thresholds,
                                               chaotic=_chaotic(measured))
        if known is None:
            first = int(np.flatnonzero(reads)[0])
            figures.update(dependency_lag=None, dependency_ratio=None, vanishing=None)
            verdict = verdict_label(figures["exploding"], None)
            notes.append(f"the loss reads the output at {int(reads.sum())} of {T} steps and no lag was given: the "
                         f"horizon reaches at least lag {T - 1 - first} (the earliest step read, through its own "
                         "direct term), not how far one loss's gradient travels, and vanishing is unknown; "
                         "pass watch(module, lag=k), k the steps back from the last to the input the task needs")
        elif bound:
            # an upper bound below vanishing_ratio proves vanishing; one above it proves nothing (a contracting
            # rnn with a loss at every step reads 0.99 at lag 30, where the last step's own gradient is 1.8e-36)
            if figures["vanishing"] is False:
                figures["vanishing"] = None
                verdict = verdict_label(figures["exploding"], None)
            unknown = "" if figures["vanishing"] else (
                f"; above vanishing_ratio {self.thresholds.vanishing_ratio:g} it cannot tell whether that gradient "
                "vanishes, so vanishing is unknown (a loss at the last step only measures it)")
            notes.append(f"the loss also reads steps at or after the dependency (lag {known}) before the last: "
                         "dependency_ratio includes their shorter-range terms, an upper bound on the gradient "
                         f"that travels from the last step{unknown}")
        out = {"verdict": verdict, "peak": diagnostics.profile_summary(p[0], T - 1 - (known or 0))["peak"],
               **{k: v for k, v in figures.items() if k not in ("spikes", "spike_ratio_max")},
               "loss_steps": int(reads.sum()), "dependency_ratio_bound": bound}
        if len(p) > 1:
            out["depth_ratio"] = diagnostics.depth_ratio(p)
        out.update(self._long_term_shares(record, known))
        out.update(measured)
        out["note"] = " ".join(f"{n}." for n in notes) or None
        return out

    def chaotic(self) -> bool | None:
        """``summary()``'s ``chaotic`` flag alone (``_chaotic``: λ₁ of the last forward, at the weights as they are
        now, cached as ``summary`` caches it); None when not measured (``lyapunov=0``, an empty batch, an input
        modified in place since the forward). Raises RuntimeError as ``summary`` before a forward and backward."""
        return _chaotic(self._lyapunov(self._record(), []))

    def _dependency_lag(self, lag: int | None, reads: np.ndarray) -> int | None:
        """The dependency's lag: ``lag``, else the one given to ``watch``, else T - 1 when the loss reads at most
        one step (reads (T,) bool: ``_Forward.read_steps``), else None (unknown: the module docstring)."""
        T = len(reads)
        given = next((v for v in (lag, self.lag) if v is not None), None)
        if given is not None and not 0 <= given < T:
            raise ValueError(f"gradlab.watch: lag {given} outside the sequence: 0 <= lag < T = {T}")
        return given if given is not None else T - 1 if reads.sum() <= 1 else None

    def _long_term_shares(self, record: _Forward, lag: int | None) -> dict:
        """``long_term_share`` (``_l<l>``) of each layer, when the backward split U's gradient at this lag."""
        if lag is None or lag != self.lag or any(p.long_term is None for p in record.probes):
            return {}
        return {"long_term_share" if i == 0 else f"long_term_share_l{i}":
                recurrences.long_term_share(p.long_term, p.short_term) for i, p in enumerate(record.probes)}

    def _lyapunov(self, record: _Forward, notes: list) -> dict:
        """``lyapunov.summary`` per layer of the module driven by the kept input, once per forward and weights."""
        if not self.lyapunov:
            return {}
        keys = {k: None for k in ("lyapunov_max", "lyapunov_near_zero", "lyapunov_rank_lost", "lyapunov_steps")}
        if record.x.shape[1] == 0 or record.changed():
            why = "an empty batch" if record.x.shape[1] == 0 else "the input was modified in place since the forward"
            notes.append(f"lyapunov not measured: {why}")
            return keys
        weights = tuple(p._version for p in self.module.parameters())  # an optimizer step changes them
        if weights not in record.cache:
            record.cache.clear()
            k = min(self.lyapunov, self.module.hidden_size)  # a state has at least H dimensions
            spectra = lyapunov.model_spectrum(_Stack(self, record), record.x, k)
            figures = {}
            for i, spectrum in enumerate(spectra):
                figures.update({key if i == 0 else f"{key}_l{i}": v
                                for key, v in lyapunov.summary(spectrum).items()})
            figures["lyapunov_steps"] = lyapunov.averaged_steps(spectra)  # the chaos flag's margin depends on it
            record.cache[weights] = figures
        return record.cache[weights]

    def _memory(self, record: _Forward, lag: int | None, notes: list) -> dict:
        """``memory`` and ``memory_chance``: x_{T-1-lag} read back from the top layer's h_{T-1}, from a batch of at
        least ``memory_rows(H)`` sequences."""
        out = {"memory": None, "memory_chance": None}
        (T, B), H = record.x.shape[:2], record.last_h.shape[1]
        if lag is None:
            notes.append("memory not measured: no dependency lag")
        elif B < memory_rows(H):
            notes.append(f"memory not measured: {B} sequences, a readout of {H} units needs at least "
                         f"{memory_rows(H)} (half to fit it, more than the units, half to score it)")
        elif record.changed():
            notes.append("memory not measured: the input was modified in place since the forward")
        else:
            scored = memory.input_readout(record.last_h, record.x[T - 1 - lag])
            out.update(memory=scored["score"], memory_chance=scored["chance"])
            if scored["score"] is None:
                notes.append("memory not measured: nothing to score (a non-finite state, an input that does not "
                             "vary, or a single symbol)")
        return out

    def diagnose(self, lag: int | None = None, *, solved: bool | None = None):
        """The diagnosis of ``gradlab compare`` (``diagnosis.diagnose``: cases, text, details, remedies) on
        ``summary(lag)``'s figures (``compare_figures``): what a user's loop does not give is None (the loss
        figures; the memory ceiling, what a solver's state would score, unknown for a user's data, so the
        readout's best stands in). ``solved``: whether the model does what the task needs, by your own
        criterion (None: not known, as the probe cannot know it). Remedies are the registries'
        (``diagnosis.declared_remedies``), as gradlab config settings; the module's own cell (``CELLS``) is
        not suggested."""
        from gradlab import diagnosis

        figures = {**compare_figures(self.summary(lag)), "solved": solved}
        return diagnosis.diagnose(figures, exclude={"cell": CELLS[self.module.mode]},
                                  remedies=diagnosis.declared_remedies())

    def plot(self, path: str | Path, lag: int | None = None) -> Path:
        """Write the gradient-through-time profile (every layer, against the lag) as a PNG; return its path."""
        from gradlab import plots

        lag = self._dependency_lag(lag, self._record().read_steps())
        return plots.profile_figure(self.profile, Path(path), dependency_lag=lag,
                                    horizon_fraction=self.thresholds.horizon_fraction,
                                    title=f"{type(self.module).__name__}: gradient through time")


def memory_rows(units: int) -> int:
    """The fewest sequences ``summary`` reads a memory from: a fitting half of at least units + 2 rows. With
    fewer the ridge readout interpolates its fitting half whatever the state holds (least squares' excess
    risk, -F / (n_fit - F - 1) for F units, is finite only beyond), so the held-out score and its chance
    level scatter by whole units of R² (measured: -4.4 and -2.9 at 8 rows for 32 units) and tell nothing."""
    return max(memory.MIN_ROWS, 2 * (units + 2))


def compare_figures(summary: dict) -> dict:
    """A probe's ``summary`` as the figures ``diagnosis.diagnose`` reads, under a ``gradlab compare`` record's
    names (``<figure>_median``) and as one run's: the flags ``exploding`` and ``vanishing`` themselves (None:
    not measured, which a count over runs could not say), no ``runs`` (not a group of seeds)."""
    return {"verdict": summary["verdict"], "exploding": summary["exploding"], "vanishing": summary["vanishing"],
            "horizon_median": summary["horizon"], "dependency_lag": summary["dependency_lag"],
            "dependency_ratio_median": summary["dependency_ratio"],
            "dependency_ratio_bound": summary.get("dependency_ratio_bound", False),
            "memory_median": summary.get("memory"), "memory_chance_median": summary.get("memory_chance"),
            "memory_ceiling_median": None, "lyapunov_max_median": summary.get("lyapunov_max"),
            "long_term_share_median": summary.get("long_term_share"),
            # what flagged this one run exploding, for the diagnosis to say (no spikes: one profile has no norms)
            "chaotic": summary.get("chaotic"), "nonfinite_steps": summary.get("nonfinite_steps"),
            # a user's loop: no loss against a baseline, no solved criterion, no divergence rule
            **dict.fromkeys(("final_loss_mean", "baseline_loss", "loss_ratio_iqm", "solved", "solved_rate",
                             "diverged", "steps_to_solve_median"))}


def _chaotic(measured: dict) -> bool | None:
    """``diagnostics.is_chaotic`` of the stack: of its λ₁, the largest layer's (``lyapunov.model_spectrum``),
    averaged over ``lyapunov_steps``; None when no layer's was measured."""
    steps = measured.get("lyapunov_steps")
    flags = [diagnostics.is_chaotic(v, steps) for k, v in measured.items() if k.startswith("lyapunov_max")]
    return None if all(f is None for f in flags) else any(flags)


class _Stack:
    """The watched module as ``lyapunov.model_spectrum`` reads a ``RecurrentNet``: its recurrence, layers (each
    with ``recurrent_parameters``), parameters, and ``initial_state``, here the forward's own (zeros when it
    was given none)."""

    def __init__(self, watch: Watch, record: _Forward):
        self.recurrence, self.nonlinearity = watch.recurrence, watch.nonlinearity
        self.module, self.hx, self.lstm = watch.module, record.hx, watch.recurrence == "lstm"
        self.layers = [_Layer(watch, layer, record.x) for layer in range(watch.module.num_layers)]

    def parameters(self):
        return self.module.parameters()

    def initial_state(self, batch: int, *, device=None, dtype=None):
        """The first ``batch`` sequences' initial state per layer (a list for a stack), as the forward had it."""
        L, H = len(self.layers), self.module.hidden_size
        parts = ((torch.zeros(L, batch, H),) * (2 if self.lstm else 1) if self.hx is None
                 else tuple(h[:, :batch] for h in self.hx))
        parts = tuple(h.to(device=device, dtype=dtype) for h in parts)
        states = [tuple(h[i] for h in parts) if self.lstm else parts[0][i] for i in range(L)]
        return states[0] if L == 1 else states


class _Layer:
    def __init__(self, watch: Watch, layer: int, like: torch.Tensor):
        self._params = lambda: watch._params(layer, like)

    def recurrent_parameters(self) -> list[torch.Tensor]:
        return self._params()


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
