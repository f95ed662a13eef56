"""gradlab.watch on torch's own nn.RNN/LSTM/GRU, against independent references in float64.

References: the fused module itself (outputs, final states, parameter gradients by
plain autograd), and for the profile an nn.RNNCell/LSTMCell/GRUCell loop with the
module's weights copied in and ``retain_grad`` on every hidden state, whose .grad is
the total ∂L/∂h_t.
"""

import pytest
import torch
from torch import nn

import gradlab
from gradlab import diagnostics
from gradlab.watching import flushes_denormals

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}
MODULES = {  # name: (module class, its kwargs, the cell class of the reference loop, its kwargs)
    "rnn-tanh": (nn.RNN, {}, nn.RNNCell, {}),
    "rnn-relu": (nn.RNN, {"nonlinearity": "relu"}, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, {}, nn.LSTMCell, {}),
    "gru": (nn.GRU, {}, nn.GRUCell, {}),
}
T, B, IN, H = 9, 3, 2, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make(name, layers, batch_first, seed=0):
    cls, kwargs, _, _ = MODULES[name]
    torch.manual_seed(seed)
    return cls(IN, H, num_layers=layers, batch_first=batch_first, **kwargs).to(F64)


def inputs(batch_first, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, IN, generator=gen, dtype=F64)  # (T, B, IN)
    return x.transpose(0, 1).contiguous() if batch_first else x


def loss_of(out, where, batch_first):
    """A nonlinear loss of the top layer's outputs at the last step or at every step."""
    seq = out.transpose(0, 1) if batch_first else out  # (T, B, H)
    v = torch.linspace(-1, 1, H, dtype=out.dtype)
    picked = seq[-1:] if where == "last" else seq
    return torch.tanh(picked @ v).pow(2).sum()


def cell_loop_profile(name, module, x, where, batch_first, steps=T):
    """The reference: (L, steps) Σ_b ‖∂L/∂h_t^(l)‖ from a *Cell loop, retain_grad on every h_t^(l)."""
    _, _, cell_cls, cell_kwargs = MODULES[name]
    seq = x.transpose(0, 1) if batch_first else x  # (T, B, IN)
    hidden = []  # [layer][t] -> h_t^(l)
    for layer in range(module.num_layers):
        cell = cell_cls(seq.shape[-1], H, **cell_kwargs).to(F64)
        with torch.no_grad():
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, p).copy_(getattr(module, f"{p}_l{layer}"))
        h = torch.zeros(B, H, dtype=F64)
        c = torch.zeros(B, H, dtype=F64)
        hs = []
        for t in range(steps):
            if isinstance(cell, nn.LSTMCell):
                h, c = cell(seq[t], (h, c))
            else:
                h = cell(seq[t], h)
            h.retain_grad()
            hs.append(h)
        hidden.append(hs)
        seq = torch.stack(hs)  # the next layer's input
    loss_of(seq, where, False).backward()
    return torch.stack([torch.stack([h.grad.norm(dim=-1).sum() for h in hs]) for hs in hidden]).numpy()


@pytest.mark.parametrize("where", ["last", "every"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", list(MODULES))
def test_watch_matches_the_module_and_a_cell_loop(name, layers, batch_first, where):
    m, x = make(name, layers, batch_first), inputs(batch_first)
    out_ref, h_ref = m(x)
    loss_of(out_ref, where, batch_first).backward()
    grads_ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()

    with gradlab.watch(m) as probe:
        out, h = m(x)
        loss_of(out, where, batch_first).backward()
    torch.testing.assert_close(out, out_ref, **TOL)
    for a, b in zip(h if isinstance(h, tuple) else [h], h_ref if isinstance(h_ref, tuple) else [h_ref]):
        torch.testing.assert_close(a, b, **TOL)
    for p, g in zip(m.parameters(), grads_ref):
        torch.testing.assert_close(p.grad, g, **TOL)
    assert probe.profile.shape == (layers, T)
    torch.testing.assert_close(torch.from_numpy(probe.profile),
                               torch.from_numpy(cell_loop_profile(name, m, x, where, batch_first)), **TOL)
    assert (probe.profile > 0).all()

    # outside the context the module is torch's again, bit for bit
    assert "forward" not in vars(m)
    out_after, _ = m(x)
    assert torch.equal(out_after, out_ref)


def test_the_fused_retain_grad_gives_only_the_direct_term_and_watch_the_total():
    m, x = make("lstm", 1, False), inputs(False)
    out, _ = m(x)
    out.retain_grad()
    loss_of(out, "last", False).backward()
    direct = out.grad.norm(dim=-1).sum(dim=1)  # (T,)
    assert (direct[:-1] == 0).all() and direct[-1] > 0
    with gradlab.watch(m) as probe:
        loss_of(m(x)[0], "last", False).backward()
    assert (probe.profile[0, :-1] > 0).all()
    assert probe.profile[0, -1] == pytest.approx(direct[-1].item(), rel=1e-12)


@pytest.mark.parametrize("name", ["rnn-tanh", "lstm", "gru"])
def test_an_initial_state_and_unbatched_input(name):
    m = make(name, 2, False)
    gen = torch.Generator().manual_seed(3)
    h0 = torch.randn(2, B, H, generator=gen, dtype=F64, requires_grad=True)
    hx = (h0, torch.randn(2, B, H, generator=gen, dtype=F64, requires_grad=True)) if name == "lstm" else h0
    x = inputs(False)
    out_ref, _ = m(x, hx)
    loss_of(out_ref, "every", False).backward()
    h0_grad = h0.grad.clone()
    h0.grad = None
    with gradlab.watch(m):
        out, _ = m(x, hx)
        loss_of(out, "every", False).backward()
        unbatched, h1 = m(x[:, 0], tuple(h[:, 0] for h in hx) if name == "lstm" else hx[:, 0])
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(h0.grad, h0_grad, **TOL)  # the gradient reaches the initial state
    torch.testing.assert_close(unbatched, out_ref[:, 0], **TOL)
    assert (h1[0] if name == "lstm" else h1).shape == (2, H)


@pytest.mark.parametrize("name", list(MODULES))
def test_a_module_without_biases(name):
    cls, kwargs, _, _ = MODULES[name]
    torch.manual_seed(0)
    m, x = cls(IN, H, num_layers=2, bias=False, **kwargs).to(F64), inputs(False)
    out_ref, _ = m(x)
    loss_of(out_ref, "every", False).backward()
    grads_ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    with gradlab.watch(m):
        out, _ = m(x)
        loss_of(out, "every", False).backward()
    torch.testing.assert_close(out, out_ref, **TOL)
    for p, g in zip(m.parameters(), grads_ref):
        torch.testing.assert_close(p.grad, g, **TOL)


def test_the_module_is_restored_after_an_exception_inside():
    m, x = make("gru", 2, True), inputs(True)
    before, _ = m(x)
    with pytest.raises(KeyError), gradlab.watch(m):
        m(x)
        raise KeyError("the user's bug")
    assert "forward" not in vars(m)
    assert torch.equal(m(x)[0], before)


def test_denormals_are_flushed_inside_and_the_setting_restored():
    m, x = make("rnn-tanh", 1, False), inputs(False)
    for setting in (False, True):
        torch.set_flush_denormal(setting)
        try:
            with gradlab.watch(m):
                assert flushes_denormals()
                m(x)
            assert flushes_denormals() == setting
        finally:
            torch.set_flush_denormal(False)


def test_unsupported_settings_raise_one_clear_error():
    with pytest.raises(ValueError, match="bidirectional=True is not supported"):
        gradlab.watch(nn.LSTM(IN, H, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size=2 is not supported"):
        gradlab.watch(nn.LSTM(IN, H, proj_size=2))
    with pytest.raises(ValueError, match="expected an nn.RNN, nn.LSTM or nn.GRU, got Linear"):
        gradlab.watch(nn.Linear(IN, H))
    m = nn.GRU(IN, H, num_layers=2, dropout=0.5).to(F64)
    x = inputs(False)
    with gradlab.watch(m), pytest.raises(ValueError, match="dropout=0.5 between layers in training mode"):
        m(x)
    m.eval()  # no dropout in eval mode: supported, and equal
    with gradlab.watch(m):
        torch.testing.assert_close(m(x)[0], type(m).forward(m, x)[0], **TOL)
    packed = nn.utils.rnn.pack_padded_sequence(x, [T] * B)
    with gradlab.watch(m), pytest.raises(ValueError, match="PackedSequence input is not supported"):
        m(packed)
    assert "forward" not in vars(m)


def test_summary_reuses_the_run_diagnostics_and_names_a_vanishing_and_an_exploding_gradient(tmp_path):
    torch.manual_seed(0)
    m = nn.RNN(1, 4).to(F64)
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.1)  # a contracting recurrence: the gradient dies within a few steps
    x = torch.randn(40, 2, 1, dtype=F64)
    with gradlab.watch(m, lag=30) as probe:
        m(x)[0][-1].sum().backward()
    p = probe.profile[0]
    figures = diagnostics.profile_summary(p, 40 - 1 - 30)
    s = probe.summary()
    assert s["verdict"] == "vanishing" and s["dependency_lag"] == 30
    assert s["dependency_ratio"] == figures["dependency_ratio"] < diagnostics.DEFAULTS.vanishing_ratio
    assert (s["horizon"], s["decay_rate"], s["peak"]) == (figures["horizon"], figures["decay_rate"], figures["peak"])
    assert probe.summary(lag=1)["verdict"] == "healthy"  # a dependency one step back is reached
    assert probe.summary(lag=None)["dependency_lag"] == 30  # the lag given to watch
    with pytest.raises(ValueError, match="lag 40 outside the sequence"):
        probe.summary(lag=40)
    path = probe.plot(tmp_path / "profile.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with torch.no_grad():
        m.weight_hh_l0.fill_(float("inf"))
    with gradlab.watch(m) as probe:
        m(x)[0][-1].sum().backward()
    s = probe.summary()
    assert s["verdict"] == "exploding" and s["nonfinite_steps"] > 0 and s["dependency_lag"] == 39


def test_the_profile_needs_a_forward_and_a_backward_and_survives_a_no_grad_evaluation():
    m, x = make("lstm", 1, False), inputs(False)
    with gradlab.watch(m) as probe:
        with pytest.raises(RuntimeError, match="no forward with gradients"):
            _ = probe.profile
        out, _ = m(x)
        with pytest.raises(RuntimeError, match="call loss.backward"):
            _ = probe.profile
        loss_of(out, "last", False).backward()
        with torch.no_grad():
            m(x)
    assert probe.profile.shape == (1, T)


@pytest.mark.parametrize("name", ["rnn-tanh", "lstm", "gru"])
def test_a_float32_profile_far_below_the_float32_squares_floor(name):
    """A float32 module's vanishing profile, down to 1e-30, against the float64 cell loop: float32
    squares would read every step below 1.1e-19 as 0."""
    torch.manual_seed(5)
    m = MODULES[name][0](IN, H, **MODULES[name][1])
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.1)
        if name != "rnn-tanh":
            m.bias_ih_l0[H:2 * H] -= 10  # LSTM's f, GRU's z shut: nothing carried past the recurrence
    x = inputs(False, seed=2).repeat(4, 1, 1).float()  # (4T, B, IN): 36 steps
    with gradlab.watch(m) as probe:
        loss_of(m(x)[0], "last", False).backward()
    ref = cell_loop_profile(name, m.to(F64), x.double(), "last", False, steps=x.shape[0])[0]  # (4T,)
    got = probe.profile[0]
    kept = ref >= 1e-30
    assert (kept & (ref < 1e-25)).sum() >= 3 and (got[~kept] < 1e-29).all()
    torch.testing.assert_close(torch.from_numpy(got[kept]), torch.from_numpy(ref[kept]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", list(MODULES))
def test_a_gradient_penalty_inside_watch_is_the_fused_modules(name, layers):
    """loss + ‖∂loss/∂θ‖² (create_graph=True) differentiated again: the fused module's gradients; the
    profile is that of ∂loss/∂h_t, as a plain backward records it."""
    m, x = make(name, layers, False), inputs(False)

    def penalised():
        loss = loss_of(m(x)[0], "every", False)
        grads = torch.autograd.grad(loss, list(m.parameters()), create_graph=True)
        (loss + sum(g.square().sum() for g in grads)).backward()
        got = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        return got

    expected = penalised()
    with gradlab.watch(m) as probe:
        got = penalised()
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(torch.from_numpy(probe.profile),
                               torch.from_numpy(cell_loop_profile(name, m, x, "every", False)), **TOL)


@pytest.mark.parametrize("name", list(MODULES))
def test_an_empty_batch_runs_as_in_the_module(name):
    m = make(name, 2, True)
    x = torch.zeros(0, T, IN, dtype=F64, requires_grad=True)  # batch_first, B = 0
    out_ref, _ = m(x)
    with gradlab.watch(m) as probe:
        out, h = m(x)
        out.sum().backward()
    assert out.shape == out_ref.shape == (0, T, H)
    assert (h[0] if isinstance(h, tuple) else h).shape == (2, 0, H)
    assert probe.profile.shape == (2, T) and (probe.profile == 0).all()
