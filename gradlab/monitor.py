"""A gradient monitor for any training loop: ``GradientMonitor(model)``, ``monitor.step()`` after backward.

It records what a gradlab run records of its gradients, for a model gradlab did
not build: every step the global gradient norm before clipping (call ``step()``
between ``loss.backward()`` and the clip), the norm of each parameter group, and
the count of non-finite gradient entries. ``suggested_clip()`` and ``verdict()``
are ``diagnostics.suggest_clip`` and ``diagnostics.verdict`` on that norm series,
with a run's thresholds (``diagnostics.DEFAULTS``): a spike is a norm above
``spike_factor`` × the running median of the previous ``spike_window`` finite
norms (fewer in the first steps; gradlab's rule, ``diagnostics.spike_ratios``), the
suggested threshold is the median of the finite norms. The monitor sees only the
norms, never ∂L/∂h_t through time, so it raises the exploding flag and leaves the
vanishing flag unmeasured (None): its verdict is ``exploding`` or ``not exploding``,
never ``healthy``. ``gradlab.watch`` measures the profile of a recurrent module; given
one, ``GradientMonitor(model, watch=probe)`` with the probe's ``with`` block around the
loop's forward and backward, the monitor's vanishing flag is the probe's on its last
profile (``probe.summary(forward=False)``: the dependency ratio at the probe's lag), and
its verdict names both flags as a gradlab run's does (``healthy`` only then): exploding
on the whole norm series, an overflow in that profile, or the probe's ``chaotic`` flag (λ₁ of its
last forward, ``probe.chaotic()``: measured when the monitor's summary is asked, as the probe's own
summary measures it, unless ``watch(module, lyapunov=0)``), vanishing on the last backward,
as a run's on its final evaluation: so the monitor's flags are the probe's, or more (its spikes).
Until that probe has a profile, vanishing is None with a note saying so; where the probe cannot
tell (no lag given and a loss at several steps, or an upper-bound ratio above the threshold),
vanishing stays None with the probe's note.

Cost per step: one ``torch._foreach_norm`` over the gradients, a few sums, one
transfer of a handful of numbers to the host (a device sync on CUDA); the
non-finite entries are counted only in a step whose norm is not finite (a
finite norm has none). The norms are float64: torch reduces float32 gradients in
float32 without scaling (torch 2.13: a gradient of 1e23s has norm inf, one of 1e-30s
norm 0), so a parameter whose float32 norm is not finite or too small to trust
(``_trusted_below``) is reduced again in float64 — only in such a step; on a device
without float64 (Apple's MPS, ``engine.has_float64``) scaled instead (``engine.scaled_norms``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradlab import diagnostics
from gradlab.diagnostics import DEFAULTS, Thresholds
from gradlab.engine import has_float64, scaled_norms
from gradlab.vocabulary import NOT_EXPLODING, verdict_label

GROUPINGS = ("module", "parameter")
UNMEASURED_NOTE = (f"vanishing not measured: the monitor sees the global norms, not the gradient through time "
                   f"(so {NOT_EXPLODING!r}, not healthy); gradlab.watch(module) measures it")


class GradientMonitor:
    """Per-step gradient norms of ``model`` and a run's spike rule, verdict and suggested clip on them.

    group_by: ``"module"`` (default) groups the parameters by the top-level
    submodule their name starts with (``lstm.weight_hh_l0`` -> ``lstm``; a
    parameter of the model itself is its own group); ``"parameter"``: one group per
    parameter, by its full name. Each group g is the column ``grad_norm_<g>``.
    writer: an optional ``torch.utils.tensorboard.SummaryWriter``; each step adds
    ``train/grad_norm``, ``train/grad_norm_<g>``, ``train/nonfinite`` (and
    ``train/loss`` when ``step`` is given one).
    watch: an optional ``gradlab.watch`` probe of a recurrent module of ``model``, whose profile gives the
    vanishing flag (the module docstring).
    """

    def __init__(self, model: nn.Module, *, group_by: str = "module", thresholds: Thresholds = DEFAULTS,
                 writer=None, watch=None):
        if group_by not in GROUPINGS:
            raise ValueError(f"group_by {group_by!r}: expected one of {', '.join(GROUPINGS)}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("GradientMonitor: the model has no parameters that require grad")
        self.params = [p for _, p in named]
        keys = [n.split(".")[0] if group_by == "module" else n for n, _ in named]
        self.groups = list(dict.fromkeys(keys))
        self._group_of = torch.tensor([self.groups.index(k) for k in keys])  # (P,) each parameter's group
        self.thresholds, self.writer, self.watch = thresholds, writer, watch
        self.rows: list[dict] = []

    def step(self, loss: float | torch.Tensor | None = None) -> dict:
        """Record the current gradients (call it after backward, before clipping); returns the row.

        Row: ``step`` (1, 2, ...), ``loss`` when given, ``grad_norm`` (global,
        pre-clip), ``grad_norm_<group>``, ``nonfinite`` (gradient entries that are
        inf or NaN). A parameter without a gradient counts as zero.
        """
        grads = [p.grad for p in self.params]
        present = [j for j, g in enumerate(grads) if g is not None]
        squares = torch.zeros(len(self.params), dtype=torch.float64)  # (P,) ‖g_p‖²
        if present:
            norms = _norms([grads[j] for j in present])  # (len(present),) float64, on the host
            squares[present] = norms * norms
        # summed per group (index_add, not a 0/1 matrix product: 0·inf would make NaN of every group)
        group_norms = torch.zeros(len(self.groups), dtype=torch.float64).index_add_(0, self._group_of, squares).sqrt()
        total = math.sqrt(squares.sum().item())
        nonfinite = 0 if math.isfinite(total) else sum(int((~torch.isfinite(grads[j])).sum()) for j in present)
        row = {"step": len(self.rows) + 1}
        if loss is not None:
            row["loss"] = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        row.update({"grad_norm": total, **{f"grad_norm_{g}": v for g, v in zip(self.groups, group_norms.tolist())},
                    "nonfinite": nonfinite})
        self.rows.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, row["step"])
        return row

    def norms(self) -> list[float]:
        """The pre-clip global norms in step order, NaN where a step was non-finite (as a run's)."""
        return [r["grad_norm"] if math.isfinite(r["grad_norm"]) else math.nan for r in self.rows]

    def spikes(self) -> list[int]:
        """The steps whose norm is a spike (``diagnostics.detect_spikes`` with the monitor's thresholds)."""
        found = diagnostics.detect_spikes(self.norms(), self.thresholds.spike_factor, self.thresholds.spike_window)
        return [self.rows[i]["step"] for i in found]

    def suggested_clip(self) -> float | None:
        """A global-norm clipping threshold: the median of the finite pre-clip norms so far (None before any)."""
        return diagnostics.suggest_clip(self.norms())

    def verdict(self) -> str:
        """``exploding`` (a non-finite step, or a spike) or ``not exploding``, never ``healthy``: the norms
        cannot tell whether the gradient vanishes through time (``summary()["vanishing"]`` is None). With a
        ``watch`` probe, the label of both flags, the vanishing one from its profile."""
        return self.summary()["verdict"]

    def summary(self) -> dict:
        """steps, verdict, the flags ``exploding`` (bool) and ``vanishing`` (None: not measured here) with
        a ``note`` saying so, the figures behind exploding (nonfinite_steps, spikes, spike_ratio_max),
        grad_norm_max, suggested_clip: the keys of a run's summary.json that the norm series gives. With a
        ``watch`` probe, vanishing and the figures behind it (horizon, decay_rate, dependency_lag,
        dependency_ratio) are its last profile's, ``chaotic`` its λ₁'s (which exploding includes), and ``note``
        the probe's (None when it has nothing to say)."""
        norms = self.norms()
        nonfinite_steps = sum(1 for n in norms if math.isnan(n))
        verdict, figures = diagnostics.verdict(norms, nonfinite_steps, None, 0, self.thresholds)
        exploding, vanishing, note, profile = figures["exploding"], figures["vanishing"], UNMEASURED_NOTE, {}
        if self.watch is not None:
            exploding, vanishing, note, profile = self._profile_flags(exploding)
            verdict = verdict_label(exploding, vanishing)
        return {"steps": len(self.rows), "verdict": verdict, "exploding": exploding,
                "vanishing": vanishing, "note": note, **profile,
                **{k: figures[k] for k in ("nonfinite_steps", "spikes", "spike_ratio_max")},
                "grad_norm_max": max((n for n in norms if math.isfinite(n)), default=None),
                "suggested_clip": diagnostics.suggest_clip(norms)}

    def _profile_flags(self, exploding: bool) -> tuple[bool, bool | None, str | None, dict]:
        """(exploding, vanishing, note, the profile's figures) with the ``watch`` probe's last profile."""
        try:
            s = self.watch.summary(forward=False)
        except RuntimeError as e:  # no forward with gradients, or no backward yet, inside its with block
            return exploding, None, f"vanishing not measured yet: {e}", {}
        figures = {k: s[k] for k in ("horizon", "decay_rate", "dependency_lag", "dependency_ratio")}
        # the probe's chaos flag too (λ₁ of its last forward, cached per forward and weights; None with lyapunov=0),
        # so the two never contradict: summary(forward=False) leaves λ₁ out
        figures["chaotic"] = self.watch.chaotic()
        return exploding or s["exploding"] is True or figures["chaotic"] is True, s["vanishing"], s["note"], figures

    def frame(self):
        """The rows as a pandas DataFrame, one row per step."""
        import pandas as pd

        return pd.DataFrame(self.rows)


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """‖g‖ of each gradient as a float64 tensor on the host: (len(grads),).

    One fused ``_foreach_norm`` in the gradients' dtype, then, for the few whose result
    cannot be trusted (not finite, or below ``_trusted_below``: float32 squares lost to
    underflow could matter), the same in float64, which holds every float32 square; on a
    device without float64, ``engine.scaled_norms`` in float32, which loses none either.
    """
    norms = torch._foreach_norm(grads)  # fused kernels, per device and dtype
    if len({n.device for n in norms}) > 1:  # a model spread over devices
        norms = [n.cpu() for n in norms]
    host = torch.stack(norms).cpu().to(torch.float64)  # to the host first: MPS has no float64
    redo = [i for i, (g, n) in enumerate(zip(grads, host.tolist(), strict=True))
            if g.dtype != torch.float64 and (n < _trusted_below(g) or n == math.inf)]
    wide = [i for i in redo if has_float64(grads[i].device)]
    if wide:
        again = torch._foreach_norm([grads[i] for i in wide], dtype=torch.float64)
        host[wide] = torch.stack([n.cpu() for n in again])
    for i in redo:
        if i not in wide:
            host[i] = scaled_norms(grads[i].reshape(-1)).cpu().double()
    return host


# The dtype torch sums a gradient's squares in, where it is not the gradient's own: half precision is
# accumulated in float32 (torch 2.13: the norm of 10,000 float16 entries of 1e-3 is 0.1, though each
# square, 1e-6, is below float16's smallest normal 6.1e-5).
ACCUMULATES_IN = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _trusted_below(g: torch.Tensor) -> float:
    """The norm under which g's reduction may have lost squares to underflow beyond its rounding:
    n squares each below the accumulating dtype's ``tiny`` can be lost, so sqrt(n · tiny / eps) in
    that dtype (``ACCUMULATES_IN``); and a result below g's own smallest normal, which it is rounded
    to, has lost digits to subnormals (float16: below 6.1e-5)."""
    acc = torch.finfo(ACCUMULATES_IN.get(g.dtype, g.dtype))
    return max(math.sqrt(g.numel() * acc.tiny / acc.eps), torch.finfo(g.dtype).tiny)
