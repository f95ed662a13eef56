"""The fast path: back-propagation through time written out by hand.

``scan`` runs one recurrent layer over a sequence. Each recurrence has a kernel
here (its ``recurrences.RECURRENCES`` entry names it) around a
``torch.autograd.Function`` whose forward loops over time *without* building an
autograd graph and whose backward is BPTT written out (Werbos 1990,
"Backpropagation through time: what it does and how to do it"; Williams &
Zipser 1995): a sweep from the last step to the first computes the total
∂L/∂h_t and the gradient of every pre-activation, and the weight gradients are
matmuls over many steps at once. The sweep holds ∂L/∂h_t of every step, so
the per-step gradient norms (``recurrences.Probe``) and a per-step transform
(recurrent-gradient clipping) cost next to nothing here, where a fused
``nn.RNN``/``nn.LSTM`` cannot expose them at all.

Semantics are exactly those of the autograd reference ``recurrences.unroll`` (tested
against it and against torch's modules):

- ``window``: truncated BPTT (Williams & Peng 1990). Before every step t with
  t > 0 and t % window == 0 the recurrence is cut, as if the state were
  detached there: no gradient crosses from step t back to any step before it
  (for skip, every h_{t-k} from an earlier window is treated as detached; for
  LSTM both h and c). A final-state entry from an earlier window than the last
  step is detached too, as in ``unroll``.
- ``grad_transform(t, g) -> g``: applied to the total ∂L/∂h_t (B, H) (direct
  gradient from hs[t] plus what comes back through the recurrence) before it
  flows into step t's pre-activation, hence into the weights, x_t and h_{t-1}.
  It may modify g in place or return a new tensor; it is called once per
  step, from t = T-1 down to 0.
- ``probe``: after backward, ``probe.norms`` (T, B) holds ‖∂L/∂h_t‖, recorded *after*
  grad_transform, as ``recurrences.unroll``'s hooks record it (``hidden_norms``: in
  float64, or scaled where the device has no float64, so a norm is not cut at float32's
  squares, see there). Each backward records anew, except after one with
  create_graph=True: its record is kept (below), in both. With a ``probe.cut`` (a step),
  ``probe.long_term`` and ``probe.short_term`` hold each recurrent weight's gradient from
  the steps ≤ cut and > cut (``recurrences.Probe``): the sweep folds each chunk's rows
  into two accumulators instead of one, split at the cut (the same matmul volume), and
  the weight's gradient is their sum. Without a cut nothing changes.
- a derivative of the gradient (``backward(create_graph=True)``, e.g. a gradient
  penalty): the backward then re-runs the layer on ``reference`` (``recurrences.unroll``,
  passed by ``recurrences.scan``) under autograd and differentiates that, so the
  gradient it returns has a graph; as slow as that autograd loop. The probe keeps the
  ∂L/∂h_t of that backward (the one with create_graph), not of a later backward
  through its graph (the penalty's), as ``unroll`` does. Not with a ``grad_transform``.

How it is made fast (CPU, one thread; REFERENCE §6). Forward: the input term
W x_t + b of all steps is one matmul before the loop; each step then adds the
recurrent matmul in place on its slice (``addmm_``) and applies a few in-place
element-wise ops on per-step views made once (``unbind``): no step allocates.
torch's tanh runs at a third of sigmoid's speed on this CPU, so there tanh(a)
is computed as 2·sigmoid(2a) - 1 with the 2 folded into the matmuls. The identity
is exact in real arithmetic; in floating point its error is absolute, about one ulp
of 1 (6e-8 in float32, 1e-16 in float64), so for pre-activations near 0 (|a| below
about 1e-4 in float32) the relative error of the hidden state is large, while
torch.tanh's is not. LSTM does so for its g gate on every device, so that one
sigmoid serves all four gates. Backward: the sweep runs over chunks of
``CHUNK`` steps from the end. For each chunk, the local derivatives (σ',
tanh' and the products that do not depend on the recursion) of all its steps
are formed at once; the per-step recursion then needs one matmul and two to
four fused element-wise ops; and the chunk's share of every weight, bias and
input gradient is one matmul over its CHUNK·B rows while they are still in
cache — as fast as one matmul over all T·B rows, and no (T, B, gates·H)
gradient buffer is ever held.

Memory is linear in T: the forward keeps hs and the activations the backward
needs, 1 (rnn, skip), 7 (LSTM) and 6 (GRU) tensors of shape (T, B, H); the
backward adds one more, ∂L/∂h_t (besides autograd's own ∂L/∂hs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

aten = torch.ops.aten


def scan(kernel, nonlinearity, x, state, params, *, window=None, grad_transform=None, probe=None,
         reference=None):
    """Run one recurrence's ``kernel`` (``elman``, ``skip``, ``lstm``, ``gru``) over x (T, B, I) -> (hs (T, B, H),
    final state).

    A recurrence's registry entry (``recurrences.RECURRENCES``) names its kernel; ``recurrences.scan`` looks it up.
    nonlinearity "tanh" | "relu" for elman and skip. params: [weight_ih, weight_hh, bias_ih, bias_hh] in
    torch's layouts (+ weight_skip (H, H) for skip). state: elman/gru (B, H), lstm (h, c), skip (k, B, H)
    the last k states, oldest first. The final state has the same structure as ``state``.
    reference: the recurrence's autograd version, ``(x, state, params, window=, probe=) -> (hs, final)``
    (``recurrences.unroll``), for a derivative of the gradient (see the module docstring); None: refused.
    """
    if window is not None and window < 0:
        raise ValueError(f"window must be a positive number of steps, or None/0 for full BPTT; got {window}")
    if x.shape[0] == 0:
        raise ValueError("x has no time steps")
    return kernel(x, state, params, _Options(nonlinearity, window or None, grad_transform, probe, reference))


def elman(x, state, params, opts):
    """h_t = act(W x_t + b_ih + U h_{t-1} + b_hh); state (B, H)."""
    hs = _ElmanScan.apply(x, state.unsqueeze(0), *params, None, opts)
    return hs, hs[-1]


def skip(x, state, params, opts):
    """Elman plus S h_{t-k}; state (k, B, H), the last k states, oldest first."""
    hs = _ElmanScan.apply(x, state, *params, opts)
    return hs, _skip_final_state(state, hs, opts.window)


def lstm(x, state, params, opts):
    """torch.nn.LSTM's equations; state (h, c), each (B, H)."""
    hs, c = _LSTMScan.apply(x, state[0], state[1], *params, opts)
    return hs, (hs[-1], c)


def gru(x, state, params, opts):
    """torch.nn.GRU's equations; state (B, H)."""
    hs = _GRUScan.apply(x, state, *params, opts)
    return hs, hs[-1]


@dataclass(frozen=True)
class _Options:
    nonlinearity: str | None
    window: int | None
    grad_transform: Callable | None
    probe: object | None
    reference: Callable | None = None


def _cut(t: int, lag: int, window: int | None) -> bool:
    """Does truncation cut the connection from step t - lag into step t?

    Cut when a window boundary b (b > 0, b % window == 0) lies in (t - lag, t];
    steps before 0 (the initial state) sit in the first window.
    """
    return bool(window) and t // window > max(t - lag, 0) // window


def _skip_final_state(state, hs, window):
    """The last k states over [initial state, hs], detached as ``unroll`` leaves them."""
    T, k = hs.shape[0], state.shape[0]
    last_boundary = (T - 1) // window * window if window else 0
    entries = []
    for s in range(T - k, T):  # time of each entry; s < 0 is initial-state entry s + k
        e = state[s + k] if s < 0 else hs[s]
        if (s < 0 and last_boundary > 0) or 0 <= s < last_boundary:
            e = e.detach()
        entries.append(e)
    return torch.stack(entries)


def _accept_total(dh_t, t, transform):
    """Apply grad_transform to the total ∂L/∂h_t in place in the gradient buffer."""
    if transform is not None:
        g = transform(t, dh_t)
        if g is not dh_t:
            dh_t.copy_(g)
    return dh_t


def _record(ctx, dh, *weights):
    """probe.norms = ‖∂L/∂h_t‖ per step and sample, from dh (T, B, H), and with a cut the recurrent
    weights' long- and short-term gradients from their accumulators ``weights`` (``_LinearGrads``
    made with ``split``); not after a traced backward of the same forward recorded them (a later
    backward runs through that one's graph)."""
    probe = ctx.opts.probe
    if probe is not None and not getattr(ctx, "traced", False):
        probe.norms = hidden_norms(dh)
        if _split(ctx.opts, dh.shape[0]) is not None:
            probe.long_term, probe.short_term = (tuple(parts) for parts in zip(*(w.parts() for w in weights)))


def _split(opts, T):
    """How many leading steps' uses of the recurrent weights are long-term: probe.cut + 1 clipped to
    [0, T] (``recurrences.Probe``); None without a probe or a cut."""
    cut = getattr(opts.probe, "cut", None)
    return None if cut is None else min(max(cut + 1, 0), T)


# The device types that compute in float64. Apple's MPS has none (torch refuses a float64 tensor there),
# nor may others torch adds: a norm on such a device is scaled instead (``scaled_norms``).
FLOAT64_DEVICES = ("cpu", "cuda")


def has_float64(device: torch.device | str) -> bool:
    """Whether tensors on ``device`` may be float64 (a float64 reduction of its gradients is possible)."""
    return torch.device(device).type in FLOAT64_DEVICES


def scaled_norms(g: torch.Tensor) -> torch.Tensor:
    """‖g‖ over the last dimension without float64: g (..., H) -> (...), in float32 (or g's dtype if wider).

    Each row is divided by its largest |entry| m before squaring (the scaling of LAPACK's xNRM2), so
    its squares lie in [0, 1] with one equal to 1: none overflows, and those that underflow are below
    eps of the sum. ‖g‖ = m · ‖g / m‖, exact to float32's rounding from 1.2e-38 · sqrt(H) to 3.4e38;
    0 for a zero row, inf for a row with an inf, NaN for one with a NaN.
    """
    g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
    top = g.abs().amax(dim=-1, keepdim=True)  # (..., 1), NaN when a NaN is in the row
    scaled = torch.linalg.vector_norm(g / torch.where(top > 0, top, torch.ones_like(top)), dim=-1)  # (...)
    top = top.squeeze(-1)
    return torch.where(torch.isinf(top), top, top * scaled)


def hidden_norms(g: torch.Tensor) -> torch.Tensor:
    """‖g‖ over the last dimension, in float64: g (..., H) -> (...); float32 ``scaled_norms`` on a device
    without float64 (``has_float64``), which also keeps every square.

    torch reduces a float32 tensor in float32 without scaling (torch 2.13: the norm of
    four entries 1e-30 is 0, of four 1e23 inf), so squares below float32's smallest
    normal (1.2e-38) are lost and above 3.4e38 overflow: a norm below about 1.1e-19 read
    0 and one above 1.8e19 inf. On CUDA the reduction is done in float64 (no host sync).
    On the CPU a float64 reduction of the whole (T, B, H) gradient costs 8 times the
    float32 one (3 ms against 0.36 at T = 200, B = 64, H = 128, one thread), so the
    norms are taken in float32 and taken again in float64 where they cannot be
    trusted: not finite, or below sqrt(H · tiny / eps), under which the lost squares
    (H of them at most, each below tiny) could exceed float32's rounding of the square.
    A float64 g is reduced in float64.
    """
    if not has_float64(g.device):
        return scaled_norms(g)
    if g.dtype == torch.float64 or g.device.type != "cpu":
        return torch.linalg.vector_norm(g, dim=-1, dtype=torch.float64)
    norms = torch.linalg.vector_norm(g, dim=-1).double()  # (...)
    info = torch.finfo(g.dtype)
    redo = (norms < math.sqrt(g.shape[-1] * info.tiny / info.eps)) | torch.isinf(norms)
    if redo.any():
        norms[redo] = torch.linalg.vector_norm(g[redo], dim=-1, dtype=torch.float64)
    return norms


def _traced_backward(ctx, grads, inputs, state, params, outputs_of):
    """The backward under create_graph=True: the gradient of ``ctx.opts.reference`` re-run under autograd.

    inputs: the Function's forward arguments (tensors or None, ``opts`` left out), in order;
    state and params: those the reference takes; outputs_of(hs, final) -> the Function's
    outputs, to pair with ``grads``. Returns one gradient per forward argument.
    """
    opts = ctx.opts
    if opts.reference is None:
        raise RuntimeError("gradlab engine: a derivative of the gradient (backward with create_graph=True) "
                           "needs the recurrence's autograd reference; call recurrences.scan, not engine.scan")
    if opts.grad_transform is not None:
        raise RuntimeError("gradlab engine: a derivative of the gradient (backward with create_graph=True) "
                           "through a grad_transform (recurrent clipping) is not supported")
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    # the hooks may fire again later: the reference records into a stand-in, copied once
    probe = None if opts.probe is None else SimpleNamespace(norms=None, cut=getattr(opts.probe, "cut", None),
                                                             long_term=None, short_term=None)
    with torch.enable_grad():
        hs, final = opts.reference(inputs[0], state, params, window=opts.window, probe=probe)
        found = torch.autograd.grad(outputs_of(hs, final), [inputs[i] for i in wanted], grads,
                                    create_graph=True, allow_unused=True)
    if probe is not None and probe.norms is not None:
        opts.probe.norms = probe.norms.detach().clone()
    if probe is not None and probe.long_term is not None:
        opts.probe.long_term, opts.probe.short_term = (tuple(g.detach().clone() for g in part)
                                                       for part in (probe.long_term, probe.short_term))
    ctx.traced = True
    out = [None] * (len(inputs) + 1)  # + opts
    for i, g in zip(wanted, found, strict=True):
        out[i] = g
    return tuple(out)


class _Tanh:
    """tanh in place, fed scale · pre-activation.

    On CPU torch's tanh runs at about a third of sigmoid's speed, so there the
    caller computes 2a (the factor folded into its matmuls) and gets
    tanh(a) = 2·sigmoid(2a) - 1, accurate to about one ulp of 1 in absolute terms (not
    relative: see the module docstring); elsewhere scale is 1.
    """

    def __init__(self, like):
        self.scale = 2.0 if like.device.type == "cpu" else 1.0
        self.minus_one = like.new_full((), -1.0)

    def __call__(self, a):
        if self.scale == 1.0:
            return a.tanh_()
        return _twice_minus_one_(a.sigmoid_(), self.minus_one)

    def into(self, src, out):
        """out = tanh(src), src unscaled."""
        if self.scale == 1.0:
            return torch.tanh(src, out=out)
        return self(torch.add(src, src, out=out))


def _twice_minus_one_(s, minus_one):
    """In place s <- 2s - 1 (one kernel; a tensor -1 avoids wrapping a Python scalar per call)."""
    return torch.add(minus_one, s, alpha=2, out=s)


def _act_backward(nonlinearity):
    """(grad, output, out) -> out = grad · act'(pre), computed from the activation's output."""
    if nonlinearity == "relu":
        return lambda g, h, out: aten.threshold_backward.grad_input(g, h, 0, grad_input=out)
    return lambda g, h, out: aten.tanh_backward.grad_input(g, h, grad_input=out)  # g·(1 - h²)


class _LinearGrads:
    """∂L/∂inp, ∂L/∂W and ∂L/∂b of out = inp @ W.T + b, added up chunk by chunk of steps.

    inp (T, B, I). The gradient of out for steps s:e arrives as (e - s, B, G),
    possibly a strided view, while it is still in cache, and is folded in with
    one matmul over its (e - s)·B rows (as fast as a single matmul over all T·B
    rows from chunks of 16 steps on; no (T, B, G) buffer is needed).
    inp.T @ dout is the orientation MKL runs fast when inp is skinny (the input
    term, I = 2: ten times faster than dout.T @ inp) and never slower otherwise.
    need = (inp, weight, bias) flags. split: with a number n, ∂L/∂W is kept in two parts, the rows of
    steps [0, n) (``d_w_long_t``) and of the rest (``d_w_t``), whose sum it is (``parts``; a probe's
    cut, ``_split``); each chunk's rows go to one or the other, so the matmul volume is unchanged.
    """

    def __init__(self, inp, weight, need, split=None):
        self.inp, self.weight, self.need_w, self.split = inp, weight, need[1], split
        self.d_inp = inp.new_empty(inp.shape) if need[0] else None
        shape = (weight.shape[1], weight.shape[0])  # (I, G)
        self.d_w_t = weight.new_zeros(shape) if need[1] or split is not None else None
        self.d_w_long_t = weight.new_zeros(shape) if split is not None else None
        self.d_b = weight.new_zeros(weight.shape[0]) if need[2] else None

    def add(self, s, e, dout):
        rows = dout.reshape(-1, dout.shape[-1])  # ((e - s)·B, G)
        if self.d_inp is not None:
            torch.mm(rows, self.weight, out=self.d_inp[s:e].view(-1, self.inp.shape[-1]))
        if self.d_w_long_t is not None and s < self.split:
            n = (min(e, self.split) - s) * (rows.shape[0] // (e - s))  # the rows of the steps before the split
            inp = self.inp[s:e].reshape(-1, self.inp.shape[-1])
            self.d_w_long_t.addmm_(inp[:n].t(), rows[:n])
            if n < rows.shape[0]:
                self.d_w_t.addmm_(inp[n:].t(), rows[n:])
        elif self.d_w_t is not None:
            self.d_w_t.addmm_(self.inp[s:e].reshape(-1, self.inp.shape[-1]).t(), rows)
        if self.d_b is not None:
            self.d_b += rows.sum(0)

    def parts(self):
        """(∂L/∂W from the steps before the split, from the rest), each W's shape; with ``split`` only."""
        return self.d_w_long_t.t().contiguous(), self.d_w_t.t().contiguous()

    def result(self):
        d_w_t = self.d_w_t if self.d_w_long_t is None else self.d_w_t + self.d_w_long_t
        d_w = None if d_w_t is None or not self.need_w else d_w_t.t().contiguous()
        return self.d_inp, d_w, self.d_b


CHUNK = 16  # steps per chunk of the backward sweep (of 8, 16, 32, 64: best or tied, B=64 H=128)


def _chunks(T):
    """(start, end) of the sweep's chunks of CHUNK steps, the last chunk first."""
    for s in range((T - 1) // CHUNK * CHUNK, -1, -CHUNK):
        yield s, min(s + CHUNK, T)


def _grad_buffer(d_hs, k):
    """(k + T, B, H): k zero rows for the initial state's gradient, then a copy of ∂L/∂hs."""
    dh = d_hs.new_empty(k + d_hs.shape[0], *d_hs.shape[1:])
    dh[:k].zero_()
    dh[k:] = d_hs
    return dh


def _clone(t):
    return None if t is None else t.clone()


# ---------------------------------------------------------------------------
# rnn and skip: h_t = act(W x_t + b_ih + U h_{t-1} + b_hh [+ S h_{t-k}])
# (torch.nn.RNN's equation; the skip term as in Chang 2017 / Campos 2018)

class _ElmanScan(torch.autograd.Function):
    """Elman recurrence; with ``w_skip`` it also reads h_{t-k}, k = state.shape[0]."""

    @staticmethod
    def forward(ctx, x, state, w_ih, w_hh, b_ih, b_hh, w_skip, opts):
        T, B = x.shape[:2]
        k, H = state.shape[0], w_hh.shape[0]
        act = _Tanh(x) if opts.nonlinearity == "tanh" else torch.Tensor.relu_
        s = getattr(act, "scale", 1.0)  # pre-activations are computed times s
        hbuf = x.new_empty(k + T, B, H)  # hbuf[k + t] = h_t; hbuf[:k] = initial state (times -k..-1)
        hbuf[:k] = state
        # the input term of every step in one matmul, written where h_t will be
        torch.addmm(b_ih + b_hh, x.reshape(T * B, x.shape[-1]), w_ih.t(), beta=s, alpha=s,
                    out=hbuf[k:].view(T * B, H))
        h = hbuf.unbind(0)
        u, u_skip = w_hh.t(), None if w_skip is None else w_skip.t()
        for t in range(T):
            a = h[k + t].addmm_(h[k + t - 1], u, alpha=s)  # (B, H)
            if u_skip is not None:
                a.addmm_(h[t], u_skip, alpha=s)  # reads h_{t-k}
            act(a)
        # hbuf, hs' base: in-place edits of hs are caught; state and biases for a traced backward
        ctx.save_for_backward(x, w_ih, w_hh, w_skip, hbuf, state, b_ih, b_hh)
        ctx.opts = opts
        return hbuf[k:]

    @staticmethod
    def backward(ctx, d_hs):
        x, w_ih, w_hh, w_skip, hbuf, state, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            skip = w_skip is not None
            return _traced_backward(ctx, (d_hs,), (x, state, w_ih, w_hh, b_ih, b_hh, w_skip),
                                    state if skip else state[0], [w_ih, w_hh, b_ih, b_hh] + [w_skip] * skip,
                                    lambda hs, final: hs)
        opts, need = ctx.opts, ctx.needs_input_grad
        T, B, H = d_hs.shape
        k = hbuf.shape[0] - T
        h_ = hbuf[k:].unbind(0)
        dh = _grad_buffer(d_hs, k)  # dh[k + t] = ∂L/∂h_t; dh[:k] -> initial state
        dh_ = dh.unbind(0)
        dpre = d_hs.new_empty(CHUNK, B, H)  # ∂L/∂(pre-activation) of a chunk's steps
        dpre_ = dpre.unbind(0)
        ih = _LinearGrads(x.contiguous(), w_ih, (need[0], need[2], need[4] or need[5]))
        split = _split(opts, T)  # a probe's cut: U's (and S's) gradient in two parts
        hh = _LinearGrads(hbuf[k - 1:k - 1 + T], w_hh, (False, need[3], False), split)
        skip = _LinearGrads(hbuf[:T], w_skip, (False, need[6], False), split) if w_skip is not None else None
        act_backward = _act_backward(opts.nonlinearity)
        for s, e in _chunks(T):
            for t in range(e - 1, s - 1, -1):
                g, d = _accept_total(dh_[k + t], t, opts.grad_transform), dpre_[t - s]
                act_backward(g, h_[t], d)
                if not _cut(t, 1, opts.window):
                    dh_[k + t - 1].addmm_(d, w_hh)
                if w_skip is not None and not _cut(t, k, opts.window):
                    dh_[t].addmm_(d, w_skip)
            for acc in (ih, hh, skip):
                if acc is not None:
                    acc.add(s, e, dpre[:e - s])
        _record(ctx, dh[k:], *(acc for acc in (hh, skip) if acc is not None))
        d_x, d_w_ih, d_b = ih.result()
        d_w_skip = skip.result()[1] if skip is not None else None
        return d_x, dh[:k], d_w_ih, hh.result()[1], d_b, _clone(d_b), d_w_skip, None


# ---------------------------------------------------------------------------
# LSTM, torch.nn.LSTM's equations (gates i, f, g, o):
#   i, f, o = σ(·), g = tanh(·) of W x_t + b_ih + U h_{t-1} + b_hh
#   c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)

class _LSTMScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, opts):
        T, B = x.shape[:2]
        H = w_hh.shape[1]
        # g's rows doubled, so that one sigmoid serves all four gates: tanh(a) = 2·σ(2a) - 1
        w_in, w_rec, bias = (_double_rows(p, 2 * H, 3 * H) for p in (w_ih, w_hh, b_ih + b_hh))
        gates = torch.addmm(bias, x.reshape(T * B, x.shape[-1]), w_in.t()).view(T, B, 4 * H)
        hbuf = x.new_empty(T + 1, B, H)  # hbuf[t + 1] = h_t, hbuf[0] = h0
        cbuf = x.new_empty(T + 1, B, H)  # cbuf[t + 1] = c_t, cbuf[0] = c0
        tanh_c = x.new_empty(T, B, H)
        hbuf[0], cbuf[0] = h0, c0
        tanh, minus_one = _Tanh(x), x.new_full((), -1.0)
        a_, h_, c_, tc_ = gates.unbind(0), hbuf.unbind(0), cbuf.unbind(0), tanh_c.unbind(0)
        i_, f_, g_, o_ = (gates.view(T, B, 4, H)[:, :, j].unbind(0) for j in range(4))
        u = w_rec.t()
        for t in range(T):
            a_[t].addmm_(h_[t], u).sigmoid_()  # (B, 4H)
            _twice_minus_one_(g_[t], minus_one)
            torch.mul(f_[t], c_[t], out=c_[t + 1]).addcmul_(i_[t], g_[t])
            tanh.into(c_[t + 1], tc_[t])
            torch.mul(o_[t], tc_[t], out=h_[t + 1])
        ctx.save_for_backward(x, w_ih, w_hh, hbuf, cbuf, tanh_c, gates, h0, c0, b_ih, b_hh)
        ctx.opts = opts
        return hbuf[1:], cbuf[T].clone()

    @staticmethod
    def backward(ctx, d_hs, d_c_last):
        x, w_ih, w_hh, hbuf, cbuf, tanh_c, gates, h0, c0, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return _traced_backward(ctx, (d_hs, d_c_last), (x, h0, c0, w_ih, w_hh, b_ih, b_hh), (h0, c0),
                                    [w_ih, w_hh, b_ih, b_hh], lambda hs, final: (hs, final[1]))
        opts, need = ctx.opts, ctx.needs_input_grad
        T, B, H = d_hs.shape
        dh = _grad_buffer(d_hs, 1)  # dh[t + 1] = ∂L/∂h_t; dh[0] -> h0
        dh_ = dh.unbind(0)
        dc3 = d_hs.new_empty(B, 1, H)
        dc = dc3[:, 0]  # ∂L/∂c_t, (B, H)
        carry = d_c_last  # ∂L/∂c_t through c_{t+1} (autograd materialises unused outputs' grads as 0)
        fac, dc_from_h = d_hs.new_empty(CHUNK, B, 5, H), d_hs.new_empty(CHUNK, B, H)
        f_, by_dc_, by_dh_ = fac[:, :, 0].unbind(0), fac[:, :, :4].unbind(0), fac[:, :, 4].unbind(0)
        dgates_, dcfh_ = fac[:, :, 1:].flatten(2).unbind(0), dc_from_h.unbind(0)
        ih = _LinearGrads(x.contiguous(), w_ih, (need[0], need[3], need[5] or need[6]))
        hh = _LinearGrads(hbuf[:-1], w_hh, (False, need[4], False), _split(opts, T))
        for s, e in _chunks(T):
            _lstm_factors(gates[s:e], cbuf[s:e], tanh_c[s:e], fac[:e - s], dc_from_h[:e - s])
            for t in range(e - 1, s - 1, -1):
                g, j = _accept_total(dh_[t + 1], t, opts.grad_transform), t - s
                torch.addcmul(carry, g, dcfh_[j], out=dc)
                by_dc_[j].mul_(dc3)  # -> [∂L/∂c_{t-1} through f, ∂i, ∂f, ∂g]
                by_dh_[j].mul_(g)  # -> ∂o
                if _cut(t, 1, opts.window):
                    carry = d_hs.new_zeros(B, H)
                else:
                    dh_[t].addmm_(dgates_[j], w_hh)
                    carry = f_[j]
            carry = carry.clone()  # the next chunk reuses fac
            dgates = fac[:e - s, :, 1:].flatten(2)  # (e - s, B, 4H) ∂L/∂(pre-activations i, f, g, o)
            ih.add(s, e, dgates)
            hh.add(s, e, dgates)
        _record(ctx, dh[1:], hh)
        d_x, d_w_ih, d_b = ih.result()
        return d_x, dh[0], carry, d_w_ih, hh.result()[1], d_b, _clone(d_b), None


def _double_rows(p, lo, hi):
    """A copy of p with rows lo:hi times 2 (exact in floating point)."""
    p = p.clone()
    p[lo:hi] *= 2
    return p


def _lstm_factors(gates, c_prev, tanh_c, fac, dc_from_h):
    """Local derivatives of a chunk of steps, laid out so the sweep needs two products per step.

    fac (n, B, 5, H) <- [f, g·σ'(i), c_{t-1}·σ'(f), i·tanh'(g), tanh(c_t)·σ'(o)]:
    times ∂L/∂c_t the first four give ∂L/∂c_{t-1} through f and the
    pre-activation gradients of i, f, g, the last, times ∂L/∂h_t, that of o;
    the four gate gradients end contiguous in each row, ready for the matmuls.
    dc_from_h (n, B, H) <- o·tanh'(c_t) = ∂h_t/∂c_t.
    """
    i, f, g, o = gates.unflatten(2, (4, -1)).unbind(2)  # (n, B, H) each
    fac[:, :, 0] = f
    aten.sigmoid_backward.grad_input(g, i, grad_input=fac[:, :, 1])
    aten.sigmoid_backward.grad_input(c_prev, f, grad_input=fac[:, :, 2])
    aten.tanh_backward.grad_input(i, g, grad_input=fac[:, :, 3])
    aten.sigmoid_backward.grad_input(tanh_c, o, grad_input=fac[:, :, 4])
    aten.tanh_backward.grad_input(o, tanh_c, grad_input=dc_from_h)


# ---------------------------------------------------------------------------
# GRU, torch.nn.GRU's equations (gates r, z, n):
#   r, z = σ(W_{r,z} x_t + b_i{r,z} + U_{r,z} h_{t-1} + b_h{r,z})
#   n = tanh(W_n x_t + b_in + r ⊙ (U_n h_{t-1} + b_hn)),   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

class _GRUScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, opts):
        T, B = x.shape[:2]
        H = w_hh.shape[1]
        tanh = _Tanh(x)
        s = tanh.scale  # n's pre-activation is computed times s
        x2 = x.reshape(T * B, x.shape[-1])
        rz = torch.addmm(b_ih[:2 * H] + b_hh[:2 * H], x2, w_ih[:2 * H].t()).view(T, B, 2 * H)
        npre = torch.addmm(b_ih[2 * H:], x2, w_ih[2 * H:].t(), beta=s, alpha=s).view(T, B, H)
        hn = x.new_empty(T, B, H)  # s·(U_n h_{t-1} + b_hn)
        h_minus_n = x.new_empty(T, B, H)  # h_{t-1} - n_t
        hbuf = x.new_empty(T + 1, B, H)  # hbuf[t + 1] = h_t, hbuf[0] = h0
        hbuf[0] = h0
        rz_, n_, hn_, h_ = rz.unbind(0), npre.unbind(0), hn.unbind(0), hbuf.unbind(0)
        hmn_ = h_minus_n.unbind(0)
        r_, z_ = rz[..., :H].unbind(0), rz[..., H:].unbind(0)
        u_rz, u_n, b_hn = w_hh[:2 * H].t(), w_hh[2 * H:].t(), b_hh[2 * H:]
        for t in range(T):
            h = h_[t]
            rz_[t].addmm_(h, u_rz).sigmoid_()
            torch.addmm(b_hn, h, u_n, beta=s, alpha=s, out=hn_[t])
            n = tanh(n_[t].addcmul_(r_[t], hn_[t]))
            torch.addcmul(n, z_[t], torch.sub(h, n, out=hmn_[t]), out=h_[t + 1])
        ctx.save_for_backward(x, w_ih, w_hh, hbuf, rz, npre, hn, h_minus_n, h0, b_ih, b_hh)
        ctx.opts, ctx.scale = opts, s
        return hbuf[1:]

    @staticmethod
    def backward(ctx, d_hs):
        x, w_ih, w_hh, hbuf, rz, n, hn, h_minus_n, h0, b_ih, b_hh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return _traced_backward(ctx, (d_hs,), (x, h0, w_ih, w_hh, b_ih, b_hh), h0, [w_ih, w_hh, b_ih, b_hh],
                                    lambda hs, final: hs)
        opts, need = ctx.opts, ctx.needs_input_grad
        T, B, H = d_hs.shape
        dh = _grad_buffer(d_hs, 1)  # dh[t + 1] = ∂L/∂h_t; dh[0] -> h0
        dh_, dh3_, z_ = dh.unbind(0), dh.unsqueeze(2).unbind(0), rz[..., H:].unbind(0)
        fac = d_hs.new_empty(CHUNK, B, 4, H)  # a chunk's [Dr, Dz, Dhn, Dn], see _gru_factors
        d_gi = d_hs.new_empty(CHUNK, B, 3, H)  # a chunk's ∂L/∂(W x + b_ih), gates r, z, n
        by_dh_, d_gh_ = fac.unbind(0), fac[:, :, :3].flatten(2).unbind(0)
        ih = _LinearGrads(x.contiguous(), w_ih, (need[0], need[2], need[4]))
        hh = _LinearGrads(hbuf[:-1], w_hh, (False, need[3], need[5]), _split(opts, T))
        for s, e in _chunks(T):
            _gru_factors(rz[s:e], n[s:e], hn[s:e], h_minus_n[s:e], ctx.scale, fac[:e - s])
            for t in range(e - 1, s - 1, -1):
                g = _accept_total(dh_[t + 1], t, opts.grad_transform)
                by_dh_[t - s].mul_(dh3_[t + 1])  # -> [∂r, ∂z, ∂(U_n h + b_hn), ∂n pre-activations]
                if not _cut(t, 1, opts.window):
                    dh_[t].addcmul_(g, z_[t]).addmm_(d_gh_[t - s], w_hh)
            m = e - s
            d_gi[:m, :, :2] = fac[:m, :, :2]
            d_gi[:m, :, 2] = fac[:m, :, 3]
            ih.add(s, e, d_gi[:m].flatten(2))
            hh.add(s, e, fac[:m, :, :3].flatten(2))  # ∂L/∂(U h + b_hh), gates r, z, n
        _record(ctx, dh[1:], hh)
        d_x, d_w_ih, d_b_ih = ih.result()
        _, d_w_hh, d_b_hh = hh.result()
        return d_x, dh[0], d_w_ih, d_w_hh, d_b_ih, d_b_hh, None


def _gru_factors(rz, n, hn, h_minus_n, scale, fac):
    """Local derivatives of a chunk of steps: ∂L/∂(each pre-activation) = ∂L/∂h_t times these.

    fac (n, B, 4, H) <- [Dn·hn·σ'(r), (h_{t-1} - n)·σ'(z), Dn·r, Dn] for the r
    and z pre-activations, U_n h + b_hn and n's pre-activation, where
    Dn = (1 - z)·tanh'(n). hn arrives times ``scale``.
    """
    r, z = rz.unflatten(2, (2, -1)).unbind(2)
    d_n = fac[:, :, 3]
    torch.neg(z, out=d_n).add_(1)
    aten.tanh_backward.grad_input(d_n, n, grad_input=d_n)
    aten.sigmoid_backward.grad_input(h_minus_n, z, grad_input=fac[:, :, 1])
    torch.mul(d_n, r, out=fac[:, :, 2])
    torch.mul(d_n, hn, out=fac[:, :, 0])
    aten.sigmoid_backward.grad_input(fac[:, :, 0], r, grad_input=fac[:, :, 0])
    if scale != 1:
        fac[:, :, 0].mul_(1 / scale)
