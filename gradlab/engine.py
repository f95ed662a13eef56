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

Performance notes (CPU, one thread; see REFERENCE §6). The input term W x_t + b
of all steps is one matmul before the loop; each step then does the recurrent
matmul in place on its slice (``addmm_``) and a few in-place element-wise ops
on per-step views made once (``unbind``), so no step allocates. torch's tanh
runs at about a third of sigmoid's speed here, so on CPU tanh(a) is computed
as 2·sigmoid(2a) - 1 with the factor 2 folded into the matmuls (exact in
floating point); LSTM does this for its g gate on every device, so one
sigmoid serves all four gates. Local derivative factors that do not depend on
the backward recursion (σ', tanh' and friends) are formed outside the sweep —
for all steps at once (GRU) or at the end of each forward step while its data
is in cache (LSTM) — so the sweep does one matmul and two to four fused
element-wise ops per step. Weight and bias gradients are then one matmul each
over all T·B rows (a ones column appended to x gives the bias).

Memory is linear in T: the forward keeps hs and the per-step factors, about
2 (rnn), 7 (LSTM) and 6 (GRU) tensors of size (T, B, H); the backward adds the
∂L/∂h_t buffer and the pre-activation gradients.
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
    if window is not None and window < 0:
        raise ValueError(f"window must be a positive number of steps, or None/0 for full BPTT; got {window}")
    if x.shape[0] == 0:
        raise ValueError("x has no time steps")
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *_parts(state), *params))
    opts = _Options(nonlinearity, window or None, grad_transform, probe, train)
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
    train: bool  # can a backward pass follow? (else LSTM's forward skips its derivative factors)


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


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


class _Tanh:
    """tanh in place, fed scale · pre-activation.

    On CPU torch's tanh runs at about a third of sigmoid's speed, so there the
    caller computes 2a (the factor folded into its matmuls) and gets
    tanh(a) = 2·sigmoid(2a) - 1, exact up to rounding; elsewhere scale is 1.
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


def _affine_grads(inp, dout, with_bias):
    """(∂L/∂W, ∂L/∂b) of out = inp @ W.T + b, summed over all T·B rows, in one matmul.

    inp (N, I), dout (N, G), possibly a strided view. A ones column appended to
    inp yields the bias gradient in the same pass over dout. inp.T @ dout is
    never slower than dout.T @ inp here, and ten times faster when inp is
    skinny (the input term, I = 2: MKL, one thread).
    """
    if with_bias:
        inp = torch.cat([inp, inp.new_ones(inp.shape[0], 1)], dim=1)
    d = inp.t() @ dout  # (I [+ 1], G)
    if with_bias:
        return d[:-1].t().contiguous(), d[-1]
    return d.t().contiguous(), None


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
        torch.addmm(b_ih + b_hh, x.reshape(T * B, -1), w_ih.t(), beta=s, alpha=s,
                    out=hbuf[k:].view(T * B, H))
        h = hbuf.unbind(0)
        u, u_skip = w_hh.t(), None if w_skip is None else w_skip.t()
        for t in range(T):
            a = h[k + t].addmm_(h[k + t - 1], u, alpha=s)  # (B, H)
            if u_skip is not None:
                a.addmm_(h[t], u_skip, alpha=s)  # reads h_{t-k}
            act(a)
        ctx.save_for_backward(x, w_ih, w_hh, w_skip, hbuf)  # hs' base: in-place edits of hs are caught
        ctx.opts = opts
        return hbuf[k:]

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs):
        x, w_ih, w_hh, w_skip, hbuf = ctx.saved_tensors
        opts = ctx.opts
        T, B, H = d_hs.shape
        k = hbuf.shape[0] - T
        hs = hbuf[k:]
        dh = _grad_buffer(d_hs, k)  # dh[k + t] = ∂L/∂h_t; dh[:k] -> initial state
        dpre = torch.empty_like(hs)  # (T, B, H) ∂L/∂(pre-activation)
        dh_, dpre_, h_ = dh.unbind(0), dpre.unbind(0), hs.unbind(0)
        act_backward = _act_backward(opts.nonlinearity)
        for t in range(T - 1, -1, -1):
            g = _accept_total(dh_[k + t], t, opts.grad_transform)
            act_backward(g, h_[t], dpre_[t])
            if not _cut(t, 1, opts.window):
                dh_[k + t - 1].addmm_(dpre_[t], w_hh)
            if w_skip is not None and not _cut(t, k, opts.window):
                dh_[t].addmm_(dpre_[t], w_skip)
        _record(opts.probe, dh[k:])
        need = ctx.needs_input_grad
        dp = dpre.view(T * B, H)
        d_x = (dp @ w_ih).view(x.shape) if need[0] else None
        d_w_ih, d_b = _affine_grads(x.reshape(T * B, -1), dp, with_bias=need[4] or need[5])
        d_w_hh, _ = _affine_grads(hbuf[k - 1:k - 1 + T].view(T * B, H), dp, with_bias=False)
        d_w_skip = None if w_skip is None else _affine_grads(hbuf[:T].view(T * B, H), dp, False)[0]
        return d_x, dh[:k], d_w_ih, d_w_hh, d_b, _clone(d_b), d_w_skip, None


# ---------------------------------------------------------------------------
# LSTM, torch.nn.LSTM's equations (gates i, f, g, o):
#   i, f, o = σ(·), g = tanh(·) of W x_t + b_ih + U h_{t-1} + b_hh
#   c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)

class _LSTMScan(torch.autograd.Function):
    """The forward also turns each step's gates into the local derivatives the sweep needs.

    Buffer ``fac`` (T, B, 5, H): blocks 1-4 first hold step t's pre-activations,
    then its gates i, f, g, o; when gradients are needed the step ends by
    rewriting the row, while it is still in cache, as
    [f, g·σ'(i), c_{t-1}·σ'(f), i·tanh'(g), tanh(c_t)·σ'(o)]: times ∂L/∂c_t
    these give ∂L/∂c_{t-1} through f and the pre-activation gradients of i, f,
    g; the last, times ∂L/∂h_t, that of o. The backward leaves ``fac`` intact
    (retain_graph works).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, opts):
        T, B = x.shape[:2]
        H = w_hh.shape[1]
        # g's rows doubled, so that one sigmoid serves all four gates: tanh(a) = 2·σ(2a) - 1
        w_in, w_rec, bias = (_double_rows(p, 2 * H, 3 * H) for p in (w_ih, w_hh, b_ih + b_hh))
        fac = x.new_empty(T, B, 5, H)
        torch.addmm(bias, x.reshape(T * B, -1), w_in.t(), out=fac.view(T * B, 5 * H)[:, H:])
        hbuf = x.new_empty(T + 1, B, H)  # hbuf[t + 1] = h_t, hbuf[0] = h0
        hbuf[0] = h0
        dc_from_h = x.new_empty(T, B, H) if opts.train else None  # ∂h_t/∂c_t = o·tanh'(c_t)
        c_prev, c, tc, tmp = c0.clone(), x.new_empty(B, H), x.new_empty(B, H), x.new_empty(B, H)
        tanh, minus_one = _Tanh(x), x.new_full((), -1.0)
        a_, h_ = fac.view(T, B, 5 * H)[:, :, H:].unbind(0), hbuf.unbind(0)
        f0_, i_, f_, g_, o_ = (fac[:, :, j].unbind(0) for j in range(5))
        u = w_rec.t()
        for t in range(T):
            i, f, g, o = i_[t], f_[t], g_[t], o_[t]
            a_[t].addmm_(h_[t], u).sigmoid_()  # (B, 4H)
            _twice_minus_one_(g, minus_one)
            torch.mul(f, c_prev, out=c).addcmul_(i, g)
            tanh.into(c, tc)
            torch.mul(o, tc, out=h_[t + 1])
            if opts.train:  # the gates -> the local derivatives, in place
                aten.sigmoid_backward.grad_input(g, i, grad_input=tmp)
                aten.tanh_backward.grad_input(i, g, grad_input=g)
                i.copy_(tmp)
                f0_[t].copy_(f)
                aten.sigmoid_backward.grad_input(c_prev, f, grad_input=f)
                aten.tanh_backward.grad_input(o, tc, grad_input=dc_from_h[t])
                aten.sigmoid_backward.grad_input(tc, o, grad_input=o)
            c_prev, c = c, c_prev
        ctx.save_for_backward(x, w_ih, w_hh, hbuf, fac, dc_from_h)
        ctx.opts = opts
        return hbuf[1:], c_prev

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs, d_c_last):
        x, w_ih, w_hh, hbuf, fac, dc_from_h = ctx.saved_tensors
        opts = ctx.opts
        T, B, H = d_hs.shape
        dh = _grad_buffer(d_hs, 1)  # dh[t + 1] = ∂L/∂h_t; dh[0] -> h0
        dgates = d_hs.new_empty(T, B, 4, H)  # ∂L/∂(pre-activations i, f, g, o)
        dc3 = d_hs.new_empty(B, 1, H)
        dc = dc3[:, 0]  # ∂L/∂c_t, (B, H)
        carry = d_c_last  # ∂L/∂c_t through c_{t+1} (autograd materialises unused outputs' grads as 0)
        through_f = d_hs.new_empty(B, H)
        dh_, dcfh_, f_ = dh.unbind(0), dc_from_h.unbind(0), fac[:, :, 0].unbind(0)
        by_dc_, by_dh_ = fac[:, :, 1:4].unbind(0), fac[:, :, 4].unbind(0)
        d_ifg_, d_o_, d_all_ = dgates[:, :, :3].unbind(0), dgates[:, :, 3].unbind(0), dgates.unbind(0)
        for t in range(T - 1, -1, -1):
            g = _accept_total(dh_[t + 1], t, opts.grad_transform)
            torch.addcmul(carry, g, dcfh_[t], out=dc)
            torch.mul(by_dc_[t], dc3, out=d_ifg_[t])
            torch.mul(by_dh_[t], g, out=d_o_[t])
            if _cut(t, 1, opts.window):
                carry = d_hs.new_zeros(B, H)
            else:
                dh_[t].addmm_(d_all_[t].flatten(1), w_hh)
                carry = torch.mul(f_[t], dc, out=through_f)
        _record(opts.probe, dh[1:])
        need = ctx.needs_input_grad
        dgates = dgates.view(T * B, 4 * H)
        d_x = (dgates @ w_ih).view(x.shape) if need[0] else None
        d_w_ih, d_b = _affine_grads(x.reshape(T * B, -1), dgates, with_bias=need[5] or need[6])
        d_w_hh, _ = _affine_grads(hbuf[:-1].view(T * B, H), dgates, with_bias=False)
        return d_x, dh[0], carry.clone(), d_w_ih, d_w_hh, d_b, _clone(d_b), None


def _double_rows(p, lo, hi):
    """A copy of p with rows lo:hi times 2 (exact in floating point)."""
    p = p.clone()
    p[lo:hi] *= 2
    return p


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
        x2 = x.reshape(T * B, -1)
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
        ctx.save_for_backward(x, w_ih, w_hh, hbuf, rz, npre, hn, h_minus_n)
        ctx.opts, ctx.scale = opts, s
        return hbuf[1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hs):
        x, w_ih, w_hh, hbuf, rz, n, hn, h_minus_n = ctx.saved_tensors
        opts, hs = ctx.opts, hbuf[1:]
        T, B, H = hs.shape
        fac, d_npre = _gru_factors(rz, n, hn, h_minus_n, ctx.scale)
        del n, hn, h_minus_n
        dh = _grad_buffer(d_hs, 1)  # dh[t + 1] = ∂L/∂h_t; dh[0] -> h0
        dh_, dh3_ = dh.unbind(0), dh.unsqueeze(2).unbind(0)
        fac_, d_gh_, z_ = fac.unbind(0), fac.view(T, B, 3 * H).unbind(0), rz[..., H:].unbind(0)
        for t in range(T - 1, -1, -1):
            g = _accept_total(dh_[t + 1], t, opts.grad_transform)
            fac_[t].mul_(dh3_[t + 1])  # -> [∂r, ∂z pre-activations, ∂(U_n h + b_hn)]
            if not _cut(t, 1, opts.window):
                dh_[t].addcmul_(g, z_[t]).addmm_(d_gh_[t], w_hh)
        _record(opts.probe, dh[1:])
        d_npre.mul_(dh[1:])  # ∂L/∂(n's pre-activation), (T, B, H)
        d_x, d_w_ih, d_w_hh, d_b_ih, d_b_hh = _gru_weight_grads(ctx.needs_input_grad, x, w_ih, hbuf,
                                                                fac, d_npre)
        return d_x, dh[0], d_w_ih, d_w_hh, d_b_ih, d_b_hh, None


def _gru_factors(rz, n, hn, h_minus_n, scale):
    """Local derivatives of every step: ∂L/∂(each pre-activation) = ∂L/∂h_t times these.

    Returns fac (T, B, 3, H) = [Dn·hn·σ'(r), (h_{t-1} - n)·σ'(z), Dn·r] for the
    r, z pre-activations and U_n h + b_hn, and Dn (T, B, H) = (1 - z)·tanh'(n)
    for n's pre-activation. hn arrives times ``scale``.
    """
    T, B, H2 = rz.shape
    r, z = rz.view(T, B, 2, H2 // 2).unbind(2)
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


def _gru_weight_grads(need, x, w_ih, hbuf, fac, d_npre):
    """(d_x, d_w_ih, d_w_hh, d_b_ih, d_b_hh) from the swept pre-activation gradients."""
    T, B, _, H = fac.shape
    d_gh = fac.view(T * B, 3 * H)  # ∂L/∂(U h + b_hh), gates r, z, n
    d_rz, d_n = d_gh[:, :2 * H], d_npre.view(T * B, H)  # ∂L/∂(W x + b_ih) is [d_rz, d_n]
    x2 = x.reshape(T * B, -1)
    d_x = torch.addmm(d_n @ w_ih[2 * H:], d_rz, w_ih[:2 * H]).view(x.shape) if need[0] else None
    with_bias = need[4] or need[5]
    d_w_rz, d_b_rz = _affine_grads(x2, d_rz, with_bias)
    d_w_n, d_b_n = _affine_grads(x2, d_n, with_bias)
    d_w_hh, _ = _affine_grads(hbuf[:-1].view(T * B, H), d_gh, with_bias=False)
    d_w_ih = torch.cat([d_w_rz, d_w_n])
    if not with_bias:
        return d_x, d_w_ih, d_w_hh, None, None
    d_b_ih = torch.cat([d_b_rz, d_b_n])
    d_b_hh = torch.cat([d_b_rz, fac[:, :, 2].sum((0, 1))])
    return d_x, d_w_ih, d_w_hh, d_b_ih, d_b_hh
