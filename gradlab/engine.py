"""The fast path: back-propagation through time written out by hand.

``scan`` runs one recurrent layer over a sequence. Each recurrence is a
``torch.autograd.Function`` whose forward loops over time *without* building an
autograd graph and whose backward is BPTT written out (Werbos 1990,
"Backpropagation through time: what it does and how to do it"; Williams &
Zipser 1995): one backward sweep over t computes ∂L/∂h_t and the gradient of
every pre-activation, then each weight gradient is a single large matmul over
all T·B rows. The sweep holds the total ∂L/∂h_t of every step, so the per-step
gradient norms (``cells.Probe``) and a per-step transform (recurrent-gradient
clipping) cost next to nothing here, where a fused ``nn.RNN``/``nn.LSTM`` cannot
expose them at all.

Semantics are exactly those of the autograd reference ``cells.unroll`` (tested
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
  It may modify g in place or return a new tensor.
- ``probe``: after backward, ``probe.norms`` (T, B) holds ‖∂L/∂h_t‖, recorded
  *after* grad_transform, as ``cells.unroll``'s hooks record it.

Performance notes (CPU, one thread; see REFERENCE §6): torch's tanh runs at
about a third of sigmoid's speed here, so on CPU tanh(a) is computed as
2·sigmoid(2a) - 1 with the factor 2 folded into the matmuls (exact in floating
point). Element-wise derivative factors that do not depend on the backward
recursion are computed for all steps at once before the sweep, so the sweep
itself does one matmul and two or three fused element-wise ops per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

aten = torch.ops.aten


def scan(recurrence, nonlinearity, x, state, params, *, window=None, grad_transform=None, probe=None):
    """Run a recurrence over x (T, B, I) -> (hs (T, B, H), final state).

    recurrence: "rnn" | "skip" | "lstm" | "gru"; nonlinearity "tanh" | "relu"
    for rnn and skip. params: [weight_ih, weight_hh, bias_ih, bias_hh] in
    torch's layouts (+ weight_skip (H, H) for skip). state: rnn/gru (B, H),
    lstm (h, c), skip (k, B, H) the last k states, oldest first. The final
    state has the same structure as ``state``.
    """
    opts = _Options(nonlinearity, window or None, grad_transform, probe)
    if recurrence == "rnn":
        hs = _ElmanScan.apply(x, state.unsqueeze(0), *params, None, opts)
        return hs, hs[-1]
    if recurrence == "skip":
        hs = _ElmanScan.apply(x, state, *params, opts)
        return hs, _skip_final_state(state, hs, opts.window)
    if recurrence == "lstm":
        hs, c = _LSTMScan.apply(x, state[0], state[1], *params, opts)
        return hs, (hs[-1], c)
    if recurrence == "gru":
        hs = _GRUScan.apply(x, state, *params, opts)
        return hs, hs[-1]
    raise ValueError(f"unknown recurrence {recurrence!r}; available: rnn, skip, lstm, gru")


@dataclass(frozen=True)
class _Options:
    nonlinearity: str | None
    window: int | None
    grad_transform: Callable | None
    probe: object | None


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


def _record(probe, dh):
    """probe.norms = ‖∂L/∂h_t‖ per step and sample, from dh (T, B, H)."""
    if probe is not None:
        probe.norms = torch.linalg.vector_norm(dh, dim=-1)


def _fast_tanh(x) -> bool:
    """On CPU, tanh is about 3x slower than sigmoid: use tanh(a) = 2·sigmoid(2a) - 1 there."""
    return x.device.type == "cpu"


def _tanh_from_doubled_(a):
    """In place: a holds 2·pre; leaves tanh(pre) = 2·sigmoid(2·pre) - 1."""
    return a.sigmoid_().mul_(2).sub_(1)


def _grad_or_none(needed: bool, fn):
    return fn() if needed else None


def _linear_grads(need, dout, inp, weight):
    """Gradients of out = inp @ weight.T + b over all steps at once: (d_inp, d_weight, d_b).

    dout (T·B, G) may be a strided view; need = (inp, weight, bias) flags.
    """
    return (dout @ weight if need[0] else None,
            dout.t() @ inp if need[1] else None,
            dout.sum(0) if need[2] else None)


def _clone(t):
    return None if t is None else t.clone()


# ---------------------------------------------------------------------------
# rnn and skip: h_t = act(W x_t + b_ih + U h_{t-1} + b_hh [+ S h_{t-k}])
# (torch.nn.RNN's equation; the skip term as in Chang 2017 / Campos 2018)

class _ElmanScan(torch.autograd.Function):
    """Elman recurrence; with ``w_skip`` it also reads h_{t-k}, k = state.shape[0]."""

    @staticmethod
    def forward(ctx, x, state, w_ih, w_hh, b_ih, b_hh, w_skip, opts):
        T, B, _ = x.shape
        k, H = state.shape[0], w_hh.shape[0]
        fast = opts.nonlinearity == "tanh" and _fast_tanh(x)
        s = 2.0 if fast else 1.0  # pre-activations are computed times s
        hbuf = x.new_empty(k + T, B, H)  # hbuf[k + t] = h_t; hbuf[:k] = initial state (times -k..-1)
        hbuf[:k] = state
        # the input term of every step in one matmul, written where h_t will be
        torch.addmm(b_ih + b_hh, x.reshape(T * B, -1), w_ih.t(), beta=s, alpha=s,
                    out=hbuf[k:].view(T * B, H))
        for t in range(T):
            a = hbuf[k + t].addmm_(hbuf[k + t - 1], w_hh.t(), alpha=s)  # (B, H)
            if w_skip is not None:
                a.addmm_(hbuf[t], w_skip.t(), alpha=s)  # reads h_{t-k}
            if fast:
                _tanh_from_doubled_(a)
            elif opts.nonlinearity == "tanh":
                a.tanh_()
            else:
                a.relu_()
        hs = hbuf[k:]
        ctx.save_for_backward(x, w_ih, w_hh, w_skip, hs)
        ctx.hbuf, ctx.opts = hbuf, opts
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs):
        x, w_ih, w_hh, w_skip, hs = ctx.saved_tensors
        hbuf, opts = ctx.hbuf, ctx.opts
        T, B, H = hs.shape
        k = hbuf.shape[0] - T
        dh = hs.new_zeros(k + T, B, H)  # dh[k + t] = ∂L/∂h_t; dh[:k] -> initial state
        if d_hs is not None:
            dh[k:] = d_hs
        dpre = torch.empty_like(hs)  # (T, B, H) ∂L/∂(pre-activation)
        act_backward = _act_backward(opts.nonlinearity)
        for t in range(T - 1, -1, -1):
            g = _accept_total(dh[k + t], t, opts.grad_transform)
            act_backward(g, hs[t], dpre[t])
            if not _cut(t, 1, opts.window):
                dh[k + t - 1].addmm_(dpre[t], w_hh)
            if w_skip is not None and not _cut(t, k, opts.window):
                dh[t].addmm_(dpre[t], w_skip)
        _record(opts.probe, dh[k:])
        need = ctx.needs_input_grad
        dp = dpre.view(T * B, H)
        d_x, d_w_ih, d_b = _linear_grads((need[0], need[2], need[4] or need[5]), dp,
                                         x.reshape(T * B, -1), w_ih)
        _, d_w_hh, _ = _linear_grads((False, need[3], False), dp, hbuf[k - 1:k - 1 + T].view(T * B, H), w_hh)
        _, d_w_skip, _ = _linear_grads((False, need[6], False), dp, hbuf[:T].view(T * B, H), w_skip)
        d_x = None if d_x is None else d_x.view(x.shape)
        return d_x, dh[:k], d_w_ih, d_w_hh, d_b, _clone(d_b), d_w_skip, None


def _act_backward(nonlinearity):
    """(grad, output, out) -> out = grad · act'(pre), computed from the activation's output."""
    if nonlinearity == "relu":
        return lambda g, h, out: aten.threshold_backward.grad_input(g, h, 0, grad_input=out)
    return lambda g, h, out: aten.tanh_backward.grad_input(g, h, grad_input=out)  # g·(1 - h²)


# ---------------------------------------------------------------------------
# LSTM, torch.nn.LSTM's equations (gates i, f, g, o):
#   i, f, o = σ(·), g = tanh(·) of W x_t + b_ih + U h_{t-1} + b_hh
#   c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)

class _LSTMScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, opts):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        fast = _fast_tanh(x)
        w_in, w_rec, bias = w_ih, w_hh, b_ih + b_hh
        if fast:  # g's pre-activation doubled: one sigmoid serves all four gates
            w_in, w_rec, bias = (_double_rows(p, 2 * H, 3 * H) for p in (w_in, w_rec, bias))
        gates = torch.addmm(bias, x.reshape(T * B, -1), w_in.t()).view(T, B, 4 * H)
        hbuf = x.new_empty(T + 1, B, H)  # hbuf[t + 1] = h_t, hbuf[0] = h0
        cbuf = x.new_empty(T + 1, B, H)  # cbuf[t + 1] = c_t, cbuf[0] = c0
        tanh_c = x.new_empty(T, B, H)
        hbuf[0], cbuf[0] = h0, c0
        for t in range(T):
            a = gates[t].addmm_(hbuf[t], w_rec.t())  # (B, 4H) pre-activations
            i, f, g, o = a.unflatten(1, (4, H)).unbind(1)
            if fast:
                a.sigmoid_()
                g.mul_(2).sub_(1)
            else:
                a[:, :2 * H].sigmoid_()
                g.tanh_()
                o.sigmoid_()
            torch.mul(f, cbuf[t], out=cbuf[t + 1]).addcmul_(i, g)
            if fast:
                _tanh_from_doubled_(torch.mul(cbuf[t + 1], 2, out=tanh_c[t]))
            else:
                torch.tanh(cbuf[t + 1], out=tanh_c[t])
            torch.mul(o, tanh_c[t], out=hbuf[t + 1])
        hs = hbuf[1:]
        ctx.save_for_backward(x, w_ih, w_hh, hs)
        ctx.gates, ctx.hbuf, ctx.cbuf, ctx.tanh_c, ctx.opts = gates, hbuf, cbuf, tanh_c, opts
        return hs, cbuf[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs, d_c_last):
        x, w_ih, w_hh, hs = ctx.saved_tensors
        hbuf, opts = ctx.hbuf, ctx.opts
        T, B, H = hs.shape
        fac = _lstm_factors(ctx.gates, ctx.cbuf, ctx.tanh_c)  # (T, B, 5, H)
        dc_from_h = aten.tanh_backward(ctx.gates[..., 3 * H:], ctx.tanh_c)  # ∂h_t/∂c_t = o·tanh'(c_t)
        ctx.gates = ctx.cbuf = ctx.tanh_c = None  # free them before the sweep
        dh = hs.new_zeros(T + 1, B, H)  # dh[t + 1] = ∂L/∂h_t; dh[0] -> h0
        if d_hs is not None:
            dh[1:] = d_hs
        dc = hs.new_empty(B, H)  # ∂L/∂c_t
        dc_carry = d_c_last if d_c_last is not None else hs.new_zeros(B, H)  # from step t+1, through f
        for t in range(T - 1, -1, -1):
            g = _accept_total(dh[t + 1], t, opts.grad_transform)
            torch.addcmul(dc_carry, g, dc_from_h[t], out=dc)
            fac[t, :, :4].mul_(dc.unsqueeze(1))  # -> [∂c_{t-1} through f, ∂i, ∂f, ∂g]
            fac[t, :, 4].mul_(g)  # -> ∂o
            if _cut(t, 1, opts.window):
                dc_carry = hs.new_zeros(B, H)
            else:
                dh[t].addmm_(fac[t, :, 1:].flatten(1), w_hh)
                dc_carry = fac[t, :, 0]
        _record(opts.probe, dh[1:])
        need = ctx.needs_input_grad
        dgates = fac.view(T * B, 5 * H)[:, H:]  # (T·B, 4H) ∂L/∂(pre-activation), gates i, f, g, o
        d_x, d_w_ih, d_b = _linear_grads((need[0], need[3], need[5] or need[6]), dgates,
                                         x.reshape(T * B, -1), w_ih)
        _, d_w_hh, _ = _linear_grads((False, need[4], False), dgates, hbuf[:-1].view(T * B, H), w_hh)
        d_x = None if d_x is None else d_x.view(x.shape)
        return d_x, dh[0], dc_carry.clone(), d_w_ih, d_w_hh, d_b, _clone(d_b), None


def _double_rows(p, lo, hi):
    """A copy of p with rows lo:hi times 2 (exact in floating point)."""
    p = p.clone()
    p[lo:hi] *= 2
    return p


def _lstm_factors(gates, cbuf, tanh_c):
    """Local derivatives of every step, laid out so the sweep needs two products per step.

    (T, B, 5, H): [f, g·σ'(i), c_{t-1}·σ'(f), i·tanh'(g), tanh(c_t)·σ'(o)]. Times
    ∂L/∂c_t (first four) and ∂L/∂h_t (last) they give ∂L/∂c_{t-1} through f and
    the pre-activation gradients of gates i, f, g, o, those four contiguous in
    each row, ready for the matmuls.
    """
    T, B, H4 = gates.shape
    i, f, g, o = gates.unflatten(2, (4, H4 // 4)).unbind(2)
    fac = gates.new_empty(T, B, 5, H4 // 4)
    fac[:, :, 0] = f
    aten.sigmoid_backward.grad_input(g, i, grad_input=fac[:, :, 1])
    aten.sigmoid_backward.grad_input(cbuf[:-1], f, grad_input=fac[:, :, 2])
    aten.tanh_backward.grad_input(i, g, grad_input=fac[:, :, 3])
    aten.sigmoid_backward.grad_input(tanh_c, o, grad_input=fac[:, :, 4])
    return fac


# ---------------------------------------------------------------------------
# GRU, torch.nn.GRU's equations (gates r, z, n):
#   r, z = σ(W_{r,z} x_t + b_i{r,z} + U_{r,z} h_{t-1} + b_h{r,z})
#   n = tanh(W_n x_t + b_in + r ⊙ (U_n h_{t-1} + b_hn)),   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

class _GRUScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, opts):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        fast = _fast_tanh(x)
        s = 2.0 if fast else 1.0  # n's pre-activation is computed times s
        x2 = x.reshape(T * B, -1)
        rz = torch.addmm(b_ih[:2 * H] + b_hh[:2 * H], x2, w_ih[:2 * H].t()).view(T, B, 2 * H)
        npre = torch.addmm(b_ih[2 * H:], x2, w_ih[2 * H:].t(), beta=s, alpha=s).view(T, B, H)
        hn = x.new_empty(T, B, H)  # s·(U_n h_{t-1} + b_hn)
        h_minus_n = x.new_empty(T, B, H)  # h_{t-1} - n_t
        hbuf = x.new_empty(T + 1, B, H)  # hbuf[t + 1] = h_t, hbuf[0] = h0
        hbuf[0] = h0
        u_rz, u_n, b_hn = w_hh[:2 * H].t(), w_hh[2 * H:].t() * s, b_hh[2 * H:] * s
        for t in range(T):
            h = hbuf[t]
            r, z = rz[t].addmm_(h, u_rz).sigmoid_().unflatten(1, (2, H)).unbind(1)
            n = npre[t].addcmul_(r, torch.addmm(b_hn, h, u_n, out=hn[t]))
            if fast:
                _tanh_from_doubled_(n)
            else:
                n.tanh_()
            torch.addcmul(n, z, torch.sub(h, n, out=h_minus_n[t]), out=hbuf[t + 1])
        hs = hbuf[1:]
        ctx.save_for_backward(x, w_ih, w_hh, hs)
        ctx.rz, ctx.n, ctx.hn, ctx.h_minus_n, ctx.hbuf, ctx.opts = rz, npre, hn, h_minus_n, hbuf, opts
        ctx.scale = s
        return hs

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs):
        x, w_ih, w_hh, hs = ctx.saved_tensors
        hbuf, opts = ctx.hbuf, ctx.opts
        T, B, H = hs.shape
        z = ctx.rz[..., H:]
        fac, d_npre = _gru_factors(ctx.rz, ctx.n, ctx.hn, ctx.h_minus_n, ctx.scale)
        ctx.n = ctx.hn = ctx.h_minus_n = None
        dh = hs.new_zeros(T + 1, B, H)  # dh[t + 1] = ∂L/∂h_t; dh[0] -> h0
        if d_hs is not None:
            dh[1:] = d_hs
        for t in range(T - 1, -1, -1):
            g = _accept_total(dh[t + 1], t, opts.grad_transform)
            fac[t].mul_(g.unsqueeze(1))  # -> [∂r, ∂z pre-activations, ∂(U_n h + b_hn)]
            if not _cut(t, 1, opts.window):
                dh[t].addcmul_(g, z[t]).addmm_(fac[t].flatten(1), w_hh)
        _record(opts.probe, dh[1:])
        d_npre.mul_(dh[1:])  # ∂L/∂(n's pre-activation), (T, B, H)
        need = ctx.needs_input_grad
        d_gh = fac.view(T * B, 3 * H)  # ∂L/∂(U h + b_hh), gates r, z, n
        d_gi = torch.cat([d_gh[:, :2 * H], d_npre.view(T * B, H)], dim=1)  # ∂L/∂(W x + b_ih)
        d_x, d_w_ih, d_b_ih = _linear_grads((need[0], need[2], need[4]), d_gi, x.reshape(T * B, -1), w_ih)
        _, d_w_hh, d_b_hh = _linear_grads((False, need[3], need[5]), d_gh, hbuf[:-1].view(T * B, H), w_hh)
        d_x = None if d_x is None else d_x.view(x.shape)
        return d_x, dh[0], d_w_ih, d_w_hh, d_b_ih, d_b_hh, None


def _gru_factors(rz, n, hn, h_minus_n, scale):
    """Local derivatives of every step: ∂L/∂(each pre-activation) = ∂L/∂h_t times these.

    Returns fac (T, B, 3, H) = [Dn·hn·σ'(r), (h_{t-1} - n)·σ'(z), Dn·r] for the
    r, z pre-activations and U_n h + b_hn, and Dn (T, B, H) = (1 - z)·tanh'(n)
    for n's pre-activation. hn arrives times ``scale``.
    """
    T, B, H2 = rz.shape
    r, z = rz.unflatten(2, (2, H2 // 2)).unbind(2)
    fac = rz.new_empty(T, B, 3, H2 // 2)
    d_n = torch.neg(z).add_(1)
    aten.tanh_backward.grad_input(d_n, n, grad_input=d_n)
    aten.sigmoid_backward.grad_input(h_minus_n, z, grad_input=fac[:, :, 1])
    torch.mul(d_n, r, out=fac[:, :, 2])
    torch.mul(d_n, hn, out=fac[:, :, 0])
    aten.sigmoid_backward.grad_input(fac[:, :, 0], r, grad_input=fac[:, :, 0])
    if scale != 1:
        fac[:, :, 0].mul_(1 / scale)
    return fac, d_n
