"""The hand-written BPTT engine against independent references, in float64.

References: torch's own nn.RNN/LSTM/GRU (and their *Cell loops with
retain_grad for the per-step norms), the autograd reference ``recurrences.unroll``,
torch.autograd.gradcheck, and truncation written out as detached chunks.
"""

import pytest
import torch
from torch import nn

from gradlab import cells, engine, recurrences

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}

CASES = {  # name: (recurrence, nonlinearity, skip length k)
    "rnn-tanh": ("rnn", "tanh", None),
    "rnn-relu": ("rnn", "relu", None),
    "skip-k1": ("skip", "tanh", 1),
    "skip-k3": ("skip", "tanh", 3),
    "lstm": ("lstm", None, None),
    "gru": ("gru", None, None),
}
SIZES = [(1, 2, 1, 3), (5, 3, 2, 4), (13, 2, 3, 6), (37, 2, 2, 5)]  # (T, B, inputs, H); 37 > 2 chunks
LOSSES = ["last", "every", "final", "all"]
SCAN, UNROLL = recurrences.scan, recurrences.unroll


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine every parallel
    BLAS call can wait milliseconds for the second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(case, T, B, n_in, H, seed=0):
    """Random x (T, B, n_in), initial state and parameters in torch's layouts, float64."""
    rec, _, k = CASES[case]
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=F64)
    g = len(recurrences.RECURRENCES[rec].gates)
    params = [r(g * H, n_in, scale=n_in ** -0.5), r(g * H, H, scale=H ** -0.5),
              r(g * H, scale=0.3), r(g * H, scale=0.3)]
    if rec == "skip":
        params.append(r(H, H, scale=0.5 * H ** -0.5))
    state = {"lstm": lambda: (r(B, H, scale=0.5), r(B, H, scale=0.5)),
             "skip": lambda: r(k, B, H, scale=0.5)}.get(rec, lambda: r(B, H, scale=0.5))()
    return r(T, B, n_in), state, params


def parts(state):
    return list(state) if isinstance(state, tuple) else [state]


def convert(data, fn):
    """Apply fn (e.g. Tensor.float) to every tensor of (x, state, params)."""
    x, state, params = data
    return fn(x), tuple(map(fn, state)) if isinstance(state, tuple) else fn(state), [fn(p) for p in params]


def leaves(x, state, params):
    """Fresh leaf copies of everything the engine differentiates: [x, *state parts, *params]."""
    return [t.detach().clone().requires_grad_() for t in (x, *parts(state), *params)]


def split(case, ls):
    n = 2 if CASES[case][0] == "lstm" else 1
    state = tuple(ls[1:1 + n]) if n == 2 else ls[1]
    return ls[0], state, ls[1 + n:]


def loss_of(kind, hs, final):
    """A scalar loss on the last step, every step, the final state (for LSTM with c), or all of them."""
    gen = torch.Generator().manual_seed(1)

    def w(t):  # drawn in float64 whatever t's dtype, so that float32 and float64 runs share the loss
        return torch.randn(t.shape, generator=gen, dtype=F64).to(t.dtype)
    terms = []
    if kind in ("last", "all"):
        terms.append((hs[-1] * w(hs[-1])).sum())
    if kind in ("every", "all"):
        terms.append((hs * w(hs)).sum() + (hs ** 2).mean())  # random weights per step, and not linear
    if kind in ("final", "all"):
        terms += [(f * w(f)).sum() for f in parts(final)]
    return sum(terms)


def run(fn, case, data, loss="all", **kw):
    """(grads of [x, state parts, params], hs, final state, probe norms) for one forward/backward."""
    ls = leaves(*data)
    x, state, params = split(case, ls)
    rec, nl, _ = CASES[case]
    probe = recurrences.Probe()
    hs, final = fn(rec, nl, x, state, params, probe=probe, **kw)
    loss_of(loss, hs, final).backward()
    grads = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in ls]
    return grads, hs.detach(), final, probe.norms


def assert_all_close(xs, ys, **tol):
    assert len(xs) == len(ys)
    for i, (a, b) in enumerate(zip(xs, ys, strict=True)):
        torch.testing.assert_close(a, b, **(tol or TOL), msg=lambda m, i=i: f"tensor {i}: {m}")


# ---------------------------------------------------------------------------
# against the autograd reference

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", CASES)
def test_gradients_match_autograd_reference(case, size, loss):
    data = make(case, *size)
    g_ref, hs_ref, _, n_ref = run(UNROLL, case, data, loss)
    g, hs, _, n = run(SCAN, case, data, loss)
    torch.testing.assert_close(hs, hs_ref, **TOL)
    assert_all_close(g, g_ref)
    torch.testing.assert_close(n, n_ref, **TOL)
    assert all(t.abs().sum() > 0 for t in g[1:])  # every state part and parameter gets a gradient


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("T", [2, 7])
def test_final_state_passes_gradient_on_to_the_next_call(case, T):
    """scan(x[:s]), then scan(x[s:]) from its final state (not detached) == scan(x).

    Checks the gradient with respect to the final state and the initial state.
    """
    data = make(case, T, 3, 2, 4, seed=5)
    rec, nl, _ = CASES[case]
    g_whole, *_ = run(SCAN, case, data)

    def two_calls(rec, nl, x, state, params, **kw):
        s = T // 2
        hs1, mid = SCAN(rec, nl, x[:s], state, params)
        hs2, final = SCAN(rec, nl, x[s:], mid, params)
        return torch.cat([hs1, hs2]), final
    g_calls, *_ = run(two_calls, case, data)
    assert_all_close(g_calls, g_whole)


# ---------------------------------------------------------------------------
# against torch's own modules

TORCH_MODULES = {"rnn-tanh": lambda i, h: nn.RNN(i, h, nonlinearity="tanh"),
                 "rnn-relu": lambda i, h: nn.RNN(i, h, nonlinearity="relu"),
                 "lstm": lambda i, h: nn.LSTM(i, h), "gru": lambda i, h: nn.GRU(i, h)}
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def torch_module(case, params):
    n_in, H = params[0].shape[1], params[1].shape[1]
    module = TORCH_MODULES[case](n_in, H).double()
    with torch.no_grad():
        for name, p in zip(WEIGHTS, params, strict=True):
            getattr(module, name + "_l0").copy_(p)
    return module


def torch_run(case, data, loss):
    """Gradients from nn.RNN/LSTM/GRU, in the order [x, state parts, params]."""
    x, state, params = data
    module = torch_module(case, params)
    x = x.clone().requires_grad_()
    state = [s.clone().requires_grad_() for s in parts(state)]
    hs, final = module(x, tuple(s[None] for s in state) if case == "lstm" else state[0][None])
    final = tuple(f[0] for f in final) if case == "lstm" else final[0]
    loss_of(loss, hs, final).backward()
    weights = [getattr(module, n + "_l0").grad for n in WEIGHTS]
    return [x.grad, *[s.grad for s in state], *weights]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("size", SIZES[1:])
@pytest.mark.parametrize("case", TORCH_MODULES)
def test_gradients_match_torch_modules(case, size, loss):
    data = make(case, *size, seed=2)
    g, *_ = run(SCAN, case, data, loss)
    assert_all_close(g, torch_run(case, data, loss))


TWIN = {"vanilla": "rnn-tanh", "irnn": "rnn-relu", "orthogonal": "rnn-tanh", "lstm": "lstm", "gru": "gru"}


@pytest.mark.parametrize("cell", list(cells.CELLS))
@pytest.mark.parametrize("T", [3, 12])
def test_recurrent_net_engines_agree(cell, T):
    """RecurrentNet(engine="scan") == engine="autograd" (and == torch's module where one exists)."""
    B, n_in, H = 3, 2, 5
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(T, B, n_in, generator=gen, dtype=F64)
    results = {}
    for eng in ("scan", "autograd"):
        net = cells.RecurrentNet(cell, n_in, H, 2, skip=4, engine=eng, seed=7).double()
        with torch.no_grad():  # move off the special inits (identity, zero biases) so every weight is seen
            for p in net.recurrent_parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                         dtype=F64))
        probe = recurrences.Probe()
        hs, _ = net(x, net.initial_state(B, dtype=F64), probe=probe)
        net.readout(hs).square().mean().backward()
        results[eng] = ([p.grad for p in net.parameters()], probe.norms, hs.detach(), net)
    assert_all_close(results["scan"][0], results["autograd"][0])
    torch.testing.assert_close(results["scan"][1], results["autograd"][1], **TOL)
    if cell in TWIN:
        net = results["scan"][3]
        module = torch_module(TWIN[cell], net.recurrent_parameters())
        torch.testing.assert_close(module(x)[0], results["scan"][2], **TOL)


# ---------------------------------------------------------------------------
# truncated BPTT

@pytest.mark.parametrize("loss", ["every", "all"])
@pytest.mark.parametrize("window", [1, 2, 3])
@pytest.mark.parametrize("case", CASES)
def test_truncation_matches_reference(case, window, loss):
    data = make(case, 9, 2, 2, 4, seed=3)
    g_ref, _, _, n_ref = run(UNROLL, case, data, loss, window=window)
    g, _, _, n = run(SCAN, case, data, loss, window=window)
    assert_all_close(g, g_ref)
    torch.testing.assert_close(n, n_ref, **TOL)
    g_other, *_ = run(SCAN, case, data, loss, window=window + 1)
    assert not all(torch.allclose(a, b) for a, b in zip(g_other, g, strict=True))  # the window matters


@pytest.mark.parametrize("window", [7, engine.CHUNK, 23])
@pytest.mark.parametrize("case", CASES)
def test_truncation_across_sweep_chunks(case, window):
    """Windows that do and do not line up with the backward sweep's chunks of steps."""
    data = make(case, 40, 2, 2, 3, seed=16)
    g_ref, _, _, n_ref = run(UNROLL, case, data, "all", window=window, grad_transform=clamp)
    g, _, _, n = run(SCAN, case, data, "all", window=window, grad_transform=clamp)
    assert_all_close(g, g_ref)
    torch.testing.assert_close(n, n_ref, **TOL)


@pytest.mark.parametrize("case", TORCH_MODULES)
@pytest.mark.parametrize("window", [2, 4])
def test_truncation_equals_detached_chunks_of_torch_module(case, window):
    """Williams & Peng's TBPTT written out: torch's module run chunk by chunk, state detached between."""
    T, B, n_in, H = 10, 2, 3, 4
    data = make(case, T, B, n_in, H, seed=4)
    g, *_ = run(SCAN, case, data, "every", window=window)
    x, state, params = data
    module = torch_module(case, params)
    x = x.clone().requires_grad_()
    state = [s.clone().requires_grad_() for s in parts(state)]
    carry = tuple(s[None] for s in state) if case == "lstm" else state[0][None]
    outs = []
    for start in range(0, T, window):
        out, carry = module(x[start:start + window], carry)
        outs.append(out)
        carry = tuple(c.detach() for c in carry) if case == "lstm" else carry.detach()
    loss_of("every", torch.cat(outs), None).backward()
    expected = [x.grad, *[s.grad for s in state], *[getattr(module, n + "_l0").grad for n in WEIGHTS]]
    assert_all_close(g, expected)


@pytest.mark.parametrize("case", CASES)
def test_truncation_stops_gradient_at_the_last_boundary(case):
    """Loss at the last step, window 3, T = 10: nothing reaches x_t or ‖∂L/∂h_t‖ for t < 9."""
    data = make(case, 10, 2, 2, 4, seed=6)
    g, _, _, norms = run(SCAN, case, data, "last", window=3)
    dx = g[0].abs().sum(dim=(1, 2))
    assert (dx[:9] == 0).all() and dx[9] > 0
    assert (norms[:9] == 0).all() and (norms[9] > 0).all()


# ---------------------------------------------------------------------------
# grad_transform (recurrent-gradient clipping) and the probe

def clamp(t, g):
    return g.clamp(-0.05, 0.05)


def rescale(t, g):  # per sample: g <- g · min(1, c / ‖g‖)
    return g * (0.1 / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)


def rescale_in_place(t, g):
    return g.mul_((0.1 / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0))


@pytest.mark.parametrize("transform", [clamp, rescale, rescale_in_place])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("case", CASES)
def test_grad_transform_matches_reference(case, window, transform):
    data = make(case, 8, 3, 2, 4, seed=8)
    g_ref, _, _, n_ref = run(UNROLL, case, data, "all", window=window, grad_transform=transform)
    g, _, _, n = run(SCAN, case, data, "all", window=window, grad_transform=transform)
    assert_all_close(g, g_ref)
    torch.testing.assert_close(n, n_ref, **TOL)
    g_plain, *_ = run(SCAN, case, data, "all", window=window)
    assert not torch.allclose(g[-1], g_plain[-1])  # the transform did change the gradient


@pytest.mark.parametrize("case", CASES)
def test_grad_transform_sees_each_step_once_in_backward_order(case):
    data = make(case, 6, 2, 2, 3)
    seen = []
    g, *_ = run(SCAN, case, data, "all", grad_transform=lambda t, g: seen.append(t) or g)
    assert seen == list(range(5, -1, -1))
    assert_all_close(g, run(SCAN, case, data, "all")[0])


@pytest.mark.parametrize("case", ["rnn-tanh", "rnn-relu", "gru"])
def test_zeroing_one_step_blocks_everything_before_it(case):
    """h_t is the only path from earlier inputs to a last-step loss (not so for LSTM's c or skip)."""
    data = make(case, 8, 2, 2, 4, seed=9)
    g, _, _, norms = run(SCAN, case, data, "last", grad_transform=lambda t, g: g * 0 if t == 4 else g)
    dx = g[0].abs().sum(dim=(1, 2))
    assert (dx[:5] == 0).all() and (dx[5:] > 0).all()
    assert (norms[:5] == 0).all()


CELL_MODULES = {"rnn-tanh": lambda i, h: nn.RNNCell(i, h, nonlinearity="tanh"),
                "rnn-relu": lambda i, h: nn.RNNCell(i, h, nonlinearity="relu"),
                "lstm": nn.LSTMCell, "gru": nn.GRUCell}


@pytest.mark.parametrize("loss", ["last", "every", "all"])
@pytest.mark.parametrize("case", CELL_MODULES)
def test_probe_norms_match_retain_grad_on_torch_cells(case, loss):
    """‖∂L/∂h_t‖ from a plain loop of nn.*Cell with retain_grad() on every h_t."""
    T, B, n_in, H = 7, 3, 2, 5
    data = make(case, T, B, n_in, H, seed=10)
    _, _, _, norms = run(SCAN, case, data, loss)
    x, state, params = data
    cell = CELL_MODULES[case](n_in, H).double()
    with torch.no_grad():
        for name, p in zip(WEIGHTS, params, strict=True):
            getattr(cell, name).copy_(p)
    carry, hs = tuple(parts(state)) if case == "lstm" else state, []
    for t in range(T):
        carry = cell(x[t], carry)
        h = carry[0] if case == "lstm" else carry
        h.retain_grad()
        hs.append(h)
    loss_of(loss, torch.stack(hs), carry).backward()
    expected = torch.stack([h.grad.norm(dim=-1) for h in hs])
    torch.testing.assert_close(norms, expected, **TOL)


@pytest.mark.parametrize("fn", [SCAN, UNROLL])
def test_a_reused_probe_gets_fresh_norms_each_backward(fn):
    probe = recurrences.Probe()
    kept = []
    for B in (3, 5, 5):
        x, state, params = make("rnn-tanh", 4, B, 2, 3, seed=B)
        params = [p.requires_grad_() for p in params]
        hs, _ = fn("rnn", "tanh", x, state, params, probe=probe)
        hs.sum().backward()
        kept.append(probe.norms)
        assert probe.norms.shape == (4, B)
    assert kept[1] is not kept[2]


# ---------------------------------------------------------------------------
# gradcheck, forward-only use, dtypes and devices

@pytest.mark.parametrize("check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck])
@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case, check):
    """The gradient, and its derivative (create_graph=True: gradgradcheck), against finite differences
    (without truncation: a truncated gradient is not the derivative of the forward)."""
    x, state, params = make(case, 4, 2, 2, 3, seed=11)
    rec, nl, _ = CASES[case]
    inputs = [t.requires_grad_() for t in (x, *parts(state), *params)]
    n = len(parts(state))

    def f(x, *rest):
        state = tuple(rest[:n]) if n == 2 else rest[0]
        hs, final = SCAN(rec, nl, x, state, list(rest[n:]))
        return (hs, *parts(final))
    assert check(f, inputs)


@pytest.mark.parametrize("case", CASES)
def test_forward_under_no_grad_matches(case):
    x, state, params = make(case, 9, 3, 2, 4, seed=12)
    rec, nl, _ = CASES[case]
    with torch.no_grad():
        hs, final = SCAN(rec, nl, x, state, params)
    hs_ref, final_ref = UNROLL(rec, nl, x, state, params)
    assert not hs.requires_grad
    torch.testing.assert_close(hs, hs_ref, **TOL)
    assert_all_close(parts(final), parts(final_ref))
    hs_grad_mode, _ = SCAN(rec, nl, x, state, [p.requires_grad_() for p in params])
    torch.testing.assert_close(hs_grad_mode.detach(), hs, **TOL)


@pytest.mark.parametrize("case", CASES)
def test_float32_agrees_with_float64(case):
    data = make(case, 30, 4, 3, 16, seed=13)
    g64, hs64, *_ = run(SCAN, case, data)
    g32, hs32, *_ = run(SCAN, case, convert(data, torch.Tensor.float))
    assert hs32.dtype == torch.float32
    torch.testing.assert_close(hs32.double(), hs64, rtol=0, atol=1e-5)
    assert_all_close([g.double() for g in g32], g64, rtol=1e-4, atol=1e-4)


def test_only_some_inputs_require_grad():
    x, state, params = make("lstm", 6, 2, 2, 3, seed=14)
    w_hh = params[1].clone().requires_grad_()
    hs, _ = SCAN("lstm", None, x, state, [params[0], w_hh, *params[2:]])
    hs.sum().backward()
    w_ref = params[1].clone().requires_grad_()
    UNROLL("lstm", None, x, state, [params[0], w_ref, *params[2:]])[0].sum().backward()
    torch.testing.assert_close(w_hh.grad, w_ref.grad, **TOL)


def test_rejects_unknown_recurrence_and_negative_window():
    x, state, params = make("rnn-tanh", 3, 1, 1, 2)
    with pytest.raises(ValueError, match="unknown recurrence"):
        SCAN("lru", None, x, state, params)
    with pytest.raises(ValueError, match="window"):
        SCAN("rnn", "tanh", x, state, params, window=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_cpu(case):
    data = make(case, 7, 3, 2, 4, seed=15)
    on_cuda = convert(data, torch.Tensor.cuda)
    g_cpu, hs_cpu, _, n_cpu = run(SCAN, case, data, window=3, grad_transform=clamp)
    g_cuda, hs_cuda, _, n_cuda = run(SCAN, case, on_cuda, window=3, grad_transform=clamp)
    assert hs_cuda.is_cuda
    assert_all_close([g.cpu() for g in g_cuda], g_cpu)
    torch.testing.assert_close(n_cuda.cpu(), n_cpu, **TOL)


# ---------------------------------------------------------------------------
# the probe's range, a derivative of the gradient, an empty batch

def vanishing(case, T=40):
    """Data whose ∂L/∂h_t of a last-step loss falls to about 1e-40 within T steps: the recurrent
    weights times 0.1 and, for LSTM and GRU, the f/z gate shut (bias -10, so c and h are not carried)."""
    x, state, params = make(case, T, 2, 2, 4, seed=3)
    params = [p.clone() for p in params]
    params[1] *= 0.1
    if CASES[case][0] in ("lstm", "gru"):
        params[2][4:8] -= 10  # gate block 1: LSTM's f, GRU's z
    if CASES[case][0] == "skip":
        params[4] *= 0.1
    return x, state, params


@pytest.mark.parametrize("case", ["rnn-tanh", "skip-k1", "lstm", "gru"])
def test_probe_norms_below_the_float32_squares_floor(case, monkeypatch):
    """A float32 run's ‖∂L/∂h_t‖ down to 1e-34 against autograd in float64, where float32 squares
    (below 1.2e-38 for a norm below 1.1e-19) read 0: the engine reduces them in float64."""
    data = vanishing(case)
    _, _, _, n64 = run(UNROLL, case, data, "last")  # (T, B) float64 reference
    _, _, _, n32 = run(SCAN, case, convert(data, torch.Tensor.float), "last")
    assert n32.dtype == F64
    kept = n64 >= 1e-34  # float32's gradient itself is exact to its rounding while normal (above 1.2e-38)
    tiny = kept & (n64 < 1e-25)
    assert tiny.sum() >= 5  # the case does reach far below the floor
    torch.testing.assert_close(n32[kept], n64[kept], rtol=1e-5, atol=0)
    # the float32 reduction the engine used to do reads those steps as exactly 0
    monkeypatch.setattr(engine, "hidden_norms", lambda g: torch.linalg.vector_norm(g, dim=-1))
    _, _, _, old = run(SCAN, case, convert(data, torch.Tensor.float), "last")
    assert (old[tiny] == 0).all()


def test_hidden_norms_in_float64_at_both_ends_of_float32():
    """Hand values: ‖(a, a, a, a)‖ = 2a, for a at 1e-30 (squares underflow in float32) and 1e23 (overflow)."""
    for a in (1e-30, 1e-19, 3.0, 1e23):
        g = torch.full((3, 4), a, dtype=torch.float32)
        exact = 2 * torch.tensor(a, dtype=torch.float32).double()  # 2 × the float32 value of a
        torch.testing.assert_close(engine.hidden_norms(g), exact.expand(3), rtol=1e-12, atol=0)
    g = torch.tensor([[0.0, 0.0], [float("inf"), 1.0], [float("nan"), 1.0], [3.0, 4.0]])
    norms = engine.hidden_norms(g)
    assert norms[0] == 0 and norms[1] == float("inf") and norms[2].isnan() and norms[3] == 5


@pytest.mark.parametrize("case", TORCH_MODULES)
def test_a_gradient_penalty_matches_torch_modules(case):
    """loss + ‖∂loss/∂θ‖², differentiated twice, against torch's own module doing the same; the probe
    keeps ∂loss/∂h_t (the backward with create_graph), as a plain backward records it."""
    data = make(case, 6, 3, 2, 4, seed=17)

    def penalised(fn):
        ls = leaves(*data)
        x, state, params = split(case, ls)
        probe = recurrences.Probe()
        if fn is None:
            module = torch_module(case, [p.detach() for p in params])
            params = [getattr(module, n + "_l0") for n in WEIGHTS]
            ls = ls[:-4] + params
            hs, final = module(x, tuple(s[None] for s in state) if case == "lstm" else state[None])
            final = tuple(f[0] for f in final) if case == "lstm" else final[0]
        else:
            rec, nl, _ = CASES[case]
            hs, final = fn(rec, nl, x, state, params, probe=probe)
        loss = loss_of("all", hs, final)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        (loss + sum(g.square().sum() for g in grads)).backward()
        return [leaf.grad for leaf in ls], probe.norms

    expected, _ = penalised(None)
    plain = run(UNROLL, case, data, "all")[3]  # (T, B) ∂loss/∂h_t of a plain backward
    for fn in (SCAN, UNROLL):  # unroll's hooks fire again in the penalty's backward: its record is kept too
        got, norms = penalised(fn)
        assert_all_close(got, expected)
        torch.testing.assert_close(norms, plain, **TOL)


def test_a_derivative_of_the_gradient_is_refused_without_the_reference_or_with_a_transform():
    x, state, params = make("gru", 4, 2, 2, 3)
    params = [p.requires_grad_() for p in params]
    for call in (lambda: engine.scan(engine.gru, None, x, state, params),
                 lambda: SCAN("gru", None, x, state, params, grad_transform=clamp)):
        hs, _ = call()
        with pytest.raises(RuntimeError, match="create_graph=True"):
            torch.autograd.grad(hs.sum(), params, create_graph=True)


@pytest.mark.parametrize("case", CASES)
def test_an_empty_batch_runs_as_the_reference(case):
    """B = 0 (torch's modules accept it): empty outputs and norms, zero gradients, no error."""
    data = make(case, 5, 0, 2, 3)
    g_ref, hs_ref, _, n_ref = run(UNROLL, case, data)
    g, hs, _, n = run(SCAN, case, data)
    assert hs.shape == hs_ref.shape == (5, 0, 3)
    assert n.shape == n_ref.shape == (5, 0)
    assert_all_close(g, g_ref)


@pytest.mark.parametrize("case", CASES)
def test_a_gradient_penalty_under_truncation_matches_the_autograd_reference(case):
    """The same penalty with window 2, against ``unroll`` (torch autograd through the written-out steps)."""
    data = make(case, 7, 2, 2, 3, seed=18)
    rec, nl, _ = CASES[case]
    results = []
    for fn in (UNROLL, SCAN):
        ls = leaves(*data)
        x, state, params = split(case, ls)
        hs, final = fn(rec, nl, x, state, params, window=2)
        loss = loss_of("all", hs, final)
        grads = torch.autograd.grad(loss, ls, create_graph=True)
        (loss + sum(g.square().sum() for g in grads)).backward()
        results.append([leaf.grad for leaf in ls])
    assert_all_close(results[1], results[0])


def test_float64_is_used_where_the_device_has_it():
    """The decision hidden_norms and GradientMonitor take: float64 on the CPU and CUDA, scaled float32 on
    Apple's MPS, which has no float64 (no test here can run there)."""
    for device in ("cpu", "cuda", "cuda:1", torch.device("cuda", 0)):
        assert engine.has_float64(device)
    for device in ("mps", torch.device("mps"), "meta"):
        assert not engine.has_float64(device)


def test_scaled_norms_at_both_ends_of_float32():
    """Hand values as for hidden_norms, in float32 without float64: 2a to float32's rounding."""
    for a in (1e-30, 1e-19, 3.0, 1e23, 1e38):  # 2a up to float32's largest, 3.4e38
        g = torch.full((3, 4), a, dtype=torch.float32)
        exact = 2 * torch.tensor(a, dtype=torch.float32).double()
        norms = engine.scaled_norms(g)
        assert norms.dtype == torch.float32
        torch.testing.assert_close(norms.double(), exact.expand(3), rtol=1e-6, atol=0)
    g = torch.tensor([[0.0, 0.0], [float("inf"), 1.0], [float("nan"), 1.0], [3.0, 4.0], [-3.0, 4.0]])
    norms = engine.scaled_norms(g)
    assert norms[0] == 0 and norms[1] == float("inf") and norms[2].isnan() and norms[3] == 5 and norms[4] == 5


@pytest.mark.parametrize("fn", [SCAN, UNROLL])
def test_the_probe_on_a_device_without_float64(fn, monkeypatch):
    """Where float64 is refused the probe holds scaled float32 norms: still not cut at float32's squares."""
    data = vanishing("rnn-tanh")
    _, _, _, n64 = run(UNROLL, "rnn-tanh", data, "last")  # (T, B) float64 reference
    monkeypatch.setattr(engine, "has_float64", lambda device: False)
    _, _, _, n32 = run(fn, "rnn-tanh", convert(data, torch.Tensor.float), "last")
    assert n32.dtype == torch.float32
    kept = n64 >= 1e-34
    assert (kept & (n64 < 1e-25)).sum() >= 5  # far below the squares' floor, 1.1e-19
    torch.testing.assert_close(n32[kept].double(), n64[kept], rtol=1e-5, atol=0)
