"""Deep stacks, orthogonality kept through training, Henaff and forget-gate inits, TBPTT(k1, k2).

References: torch's nn.RNN/LSTM/GRU(num_layers=N) and their *Cell loops with
retain_grad, in float64; the formulas of the papers; an explicit loop of the
TBPTT(k1, k2) schedule under plain autograd.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradlab import comparison, diagnostics
from gradlab.cells import RecurrentNet, henaff_matrix
from gradlab.cli import app
from gradlab.config import ConfigError, options, validate
from gradlab.tasks import TASKS, Batch
from gradlab.training import build_model, gradient_profiles, train, train_step

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}
WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
STACKS = {"vanilla": lambda i, h, n: nn.RNN(i, h, num_layers=n, nonlinearity="tanh"),
          "lstm": lambda i, h, n: nn.LSTM(i, h, num_layers=n), "gru": lambda i, h, n: nn.GRU(i, h, num_layers=n)}
CELLS = {"vanilla": lambda i, h: nn.RNNCell(i, h, nonlinearity="tanh"), "lstm": nn.LSTMCell, "gru": nn.GRUCell}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    yield
    torch.set_num_threads(threads)


def ks_uniform(samples, lo, hi) -> float:
    """Kolmogorov-Smirnov distance of the samples from U[lo, hi]."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    cdf = (x - lo) / (hi - lo)
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max()))


def ks_bound(n, alpha_coefficient=1.63):  # the 1% critical value of the KS statistic
    return alpha_coefficient / math.sqrt(n)


# ---------------------------------------------------------------------------
# Orthogonality kept through training

def adam_steps(net, dtype, steps=200):
    """``steps`` real training steps (train_step, Adam lr 0.01) on the adding task, T=10."""
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for step in range(steps):
        batch = TASKS["adding"].generate(8, 10, torch.Generator().manual_seed(step)).to("cpu", dtype)
        train_step(net, TASKS["adding"], batch, opt, {"kind": "none"}, None, "skip")
    return net.weight_hh.detach()


@pytest.mark.parametrize("init", [None, "henaff"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (F64, 1e-10)])
def test_constrained_recurrence_stays_orthogonal_through_200_adam_steps(dtype, tol, init):
    eye = torch.eye(16, dtype=dtype)
    net = RecurrentNet("orthogonal", 2, 16, 1, constrain=True, init=init, seed=0, dtype=dtype)
    u0 = net.weight_hh.detach().clone()
    u = adam_steps(net, dtype)
    assert (u.T @ u - eye).abs().max() < tol
    assert (u - u0).abs().max() > 0.05  # it did train: U moved well away from its init
    free = adam_steps(RecurrentNet("orthogonal", 2, 16, 1, seed=0, dtype=dtype), dtype)
    assert (free.T @ free - eye).abs().max() > 1e-3  # without the constraint the same steps leave O(n)


def test_constrained_gradient_reaches_the_parametrization_through_the_engine():
    """U = B·exp(tril(X) - tril(X)ᵀ); the engine's ∂L/∂U flows on into X: against torch's nn.RNN
    fed the U of that formula from an independent leaf copy of X."""
    T, B, H = 7, 3, 5
    net = RecurrentNet("orthogonal", 2, H, 1, constrain=True, init="henaff", seed=1, dtype=F64)
    layer = net.layers[0]
    param = layer.parametrizations.weight_hh
    with torch.no_grad():
        param.original.add_(0.3 * torch.randn(H, H, generator=torch.Generator().manual_seed(0), dtype=F64))
    x = torch.randn(T, B, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    hs, _ = net(x, net.initial_state(B, dtype=F64))
    hs.square().sum().backward()

    leaf = param.original.detach().clone().requires_grad_()
    skew = leaf.tril() - leaf.tril().T
    u = param[0].base @ torch.linalg.matrix_exp(skew)
    torch.testing.assert_close(u, net.weight_hh, **TOL)
    ref = nn.RNN(2, H).double()
    weights = {"weight_ih_l0": layer.weight_ih.detach(), "weight_hh_l0": u,
               "bias_ih_l0": layer.bias_ih.detach(), "bias_hh_l0": layer.bias_hh.detach()}
    out, _ = torch.func.functional_call(ref, weights, (x,))
    out.square().sum().backward()
    assert param.original.grad.abs().max() > 1e-3
    torch.testing.assert_close(param.original.grad, leaf.grad, **TOL)


def test_constrained_weight_trains_as_a_recurrent_parameter():
    net = RecurrentNet("orthogonal", 2, 6, 1, constrain=True, layers=2, seed=0)
    groups = net.parameter_groups()
    originals = [layer.parametrizations.weight_hh.original for layer in net.layers]
    assert all(any(o is p for p in groups["recurrent"]) for o in originals)
    grouped = [id(p) for ps in groups.values() for p in ps]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # each parameter in exactly one group


# ---------------------------------------------------------------------------
# Henaff's initialisation

@pytest.mark.parametrize("n", [64, 7])
def test_henaff_matrix_is_block_diagonal_rotations(n):
    u = henaff_matrix(n, torch.Generator().manual_seed(0))
    blocks = torch.zeros(n, n, dtype=torch.bool)
    for i in range(0, n - 1, 2):
        blocks[i:i + 2, i:i + 2] = True
    if n % 2:
        blocks[-1, -1] = True
        assert u[-1, -1] == 1.0
    assert (u[~blocks] == 0).all()
    torch.testing.assert_close(u.T @ u, torch.eye(n, dtype=F64), **TOL)
    i = torch.arange(0, n - 1, 2)
    angle = torch.atan2(u[i, i + 1], u[i, i])  # block [[cos s, sin s], [-sin s, cos s]]
    skew = torch.zeros(n, n, dtype=F64)  # A: blocks [[0, s], [-s, 0]] (expRNN's henaff_init_)
    skew[i, i + 1], skew[i + 1, i] = angle, -angle
    torch.testing.assert_close(u, torch.linalg.matrix_exp(skew), **TOL)


def test_henaff_angles_are_uniform_on_minus_pi_to_pi():
    u = henaff_matrix(2000, torch.Generator().manual_seed(3))
    i = torch.arange(0, 2000, 2)
    angle = torch.atan2(u[i, i + 1], u[i, i]).numpy()  # (1000,)
    assert ks_uniform(angle, -math.pi, math.pi) < ks_bound(1000)
    assert ks_uniform(angle, -math.pi, 0.0) > 0.3  # a half-range draw (as one expRNN variant has) is told apart


def test_henaff_init_is_the_orthogonal_cells_option():
    off_block = torch.ones(10, 10, dtype=torch.bool)
    for i in range(0, 10, 2):
        off_block[i:i + 2, i:i + 2] = False
    net = RecurrentNet("orthogonal", 2, 10, 1, init="henaff", seed=4)
    assert net.weight_hh[off_block].abs().max() == 0
    torch.testing.assert_close(net.weight_hh.T @ net.weight_hh, torch.eye(10), atol=1e-6, rtol=0)
    haar = RecurrentNet("orthogonal", 2, 10, 1, seed=4).weight_hh.detach()
    assert haar[off_block].abs().max() > 0.1  # the default init is not block-diagonal
    with pytest.raises(ValueError, match="only the orthogonal cell"):
        RecurrentNet("vanilla", 2, 10, 1, init="henaff")


# ---------------------------------------------------------------------------
# Forget-gate bias

@pytest.mark.parametrize("cell, gate", [("lstm", 1), ("gru", 1)])  # f of (i, f, g, o); z of (r, z, n)
def test_constant_forget_bias_sets_that_gate_and_nothing_else(cell, gate):
    H = 6
    net, plain = RecurrentNet(cell, 3, H, 1, forget_bias=1.5, seed=2), RecurrentNet(cell, 3, H, 1, seed=2)
    block = slice(gate * H, (gate + 1) * H)
    assert (net.bias_ih[block] == 1.5).all() and (net.bias_hh[block] == 0).all()  # sum: exactly 1.5
    rest = torch.ones_like(net.bias_ih, dtype=torch.bool)
    rest[block] = False
    assert torch.equal(net.bias_ih[rest], plain.bias_ih[rest]) and torch.equal(net.bias_hh[rest], plain.bias_hh[rest])
    for name in ("weight_ih", "weight_hh"):
        assert torch.equal(getattr(net, name), getattr(plain, name))


def test_chrono_lstm_bias_follows_tallec_and_ollivier():
    """b_f ~ log(U[1, T_max - 1]), b_i = -b_f (Tallec & Ollivier 2018)."""
    H, t_max = 1000, 50
    net = RecurrentNet("lstm", 2, H, 1, forget_bias="chrono", t_max=t_max, seed=0)
    b = (net.bias_ih + net.bias_hh).detach().double()
    b_i, b_f = b[:H], b[H:2 * H]
    assert torch.equal(b_i, -b_f)
    u = b_f.exp().numpy()
    assert u.min() >= 1 - 1e-6 and u.max() <= t_max - 1 + 1e-4
    assert ks_uniform(u, 1, t_max - 1) < ks_bound(H)
    assert ks_uniform(b_f.numpy(), 0, math.log(t_max - 1)) > 0.1  # log-uniform, not uniform in the bias
    plain = RecurrentNet("lstm", 2, H, 1, seed=0)
    assert torch.equal(net.bias_ih[2 * H:], plain.bias_ih[2 * H:])  # g and o keep torch's init
    assert torch.equal(net.weight_hh, plain.weight_hh)


def test_chrono_gru_sets_the_update_gate_from_the_task_lag():
    """GRU: z (torch's keep gate) gets log(U[1, T_max - 1]); build_model takes T_max = task.lag(length)."""
    cfg = {"model": {"cell": "gru", "hidden": 400, "nonlinearity": None, "skip": 2, "engine": "scan",
                     "forget_bias": "chrono"}, "task": {"name": "adding", "length": 50}, "seed": 0}
    task = TASKS["adding"]
    t_max = task.lag(50)
    net = build_model(cfg, task, torch.device("cpu"), torch.float32)
    H = 400
    u = (net.bias_ih[H:2 * H] + net.bias_hh[H:2 * H]).detach().double().exp().numpy()
    assert u.max() <= t_max - 1 + 1e-4 and u.max() > 0.9 * (t_max - 1)
    assert ks_uniform(u, 1, t_max - 1) < ks_bound(H)
    plain = RecurrentNet("gru", task.input_size, H, 1, seed=0)
    assert torch.equal(net.bias_ih[:H], plain.bias_ih[:H])  # r keeps its init: a GRU has no input gate


# ---------------------------------------------------------------------------
# Deep recurrent networks against torch's own stacks

def stack(cell, layers, n_in, H, engine, seed=0):
    net = RecurrentNet(cell, n_in, H, 2, layers=layers, engine=engine, seed=seed, dtype=F64)
    ref = STACKS[cell](n_in, H, layers).double()
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            for name in WEIGHTS:
                getattr(ref, f"{name}_l{i}").copy_(getattr(layer, name))
    return net, ref


@pytest.mark.parametrize("engine", ["scan", "autograd"])
@pytest.mark.parametrize("cell", list(STACKS))
def test_three_layer_stack_matches_torch_module(cell, engine):
    T, B, n_in, H, L = 9, 3, 4, 5, 3
    net, ref = stack(cell, L, n_in, H, engine)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, n_in, generator=gen, dtype=F64)
    h0 = torch.randn(L, B, H, generator=gen, dtype=F64)
    c0 = torch.randn(L, B, H, generator=gen, dtype=F64)
    xa, h0a, c0a, xb, h0b, c0b = (t.clone().requires_grad_() for t in (x, h0, c0, x, h0, c0))
    lstm = cell == "lstm"
    state = [(h0a[i], c0a[i]) for i in range(L)] if lstm else [h0a[i] for i in range(L)]
    hs, final = net(xa, state)
    out, ref_final = ref(xb, (h0b, c0b) if lstm else h0b)
    torch.testing.assert_close(hs, out, **TOL)
    final_h = torch.stack([f[0] for f in final]) if lstm else torch.stack(final)
    torch.testing.assert_close(final_h, ref_final[0] if lstm else ref_final, **TOL)
    w = torch.randn(T, B, H, generator=gen, dtype=F64)
    v = torch.randn(L, B, H, generator=gen, dtype=F64)
    ((hs * w).sum() + (final_h * v).sum() + (torch.stack([f[1] for f in final]).sum() if lstm else 0)).backward()
    ((out * w).sum() + ((ref_final[0] if lstm else ref_final) * v).sum()
     + (ref_final[1].sum() if lstm else 0)).backward()
    for i, layer in enumerate(net.layers):
        for name in WEIGHTS:
            torch.testing.assert_close(getattr(layer, name).grad, getattr(ref, f"{name}_l{i}").grad, **TOL)
    for ours, theirs in [(xa, xb), (h0a, h0b)] + ([(c0a, c0b)] if lstm else []):
        torch.testing.assert_close(ours.grad, theirs.grad, **TOL)


def test_skip_stack_engines_agree():
    T, B, H = 11, 2, 4
    x = torch.randn(T, B, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    grads = {}
    for engine in ("scan", "autograd"):
        net = RecurrentNet("skip", 3, H, 1, layers=2, skip=3, engine=engine, seed=1, dtype=F64)
        hs, final = net(x, net.initial_state(B, dtype=F64))
        assert len(final) == 2 and final[1].shape == (3, B, H)
        (hs.square().sum() + final[1].sum()).backward()
        grads[engine] = [p.grad for p in net.parameters()]
    for a, b in zip(grads["scan"], grads["autograd"], strict=True):
        torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------------------
# TBPTT(k1, k2) and per-layer profiles against an explicit loop under autograd

def reference(net, task, batch, k1, k2):
    """The TBPTT(k1, k2) schedule written out with torch's *Cell modules and retain_grad.

    Update for new steps [a, b): run from step 0 to t0 = max(0, a - (k2 - k1)) without a
    graph, then over [t0, b) with one; loss = the new steps' losses / the sequence's loss
    count. Returns (∂/∂x summed over the updates (S, B, I), profiles (L, S): Σ_b ‖∂L_j/∂h_t^(l)‖
    summed over the updates j).
    """
    cells = []
    for layer in net.layers:
        cell = CELLS[net.cell](layer.weight_ih.shape[1], net.hidden).double()
        with torch.no_grad():
            for name in WEIGHTS:
                getattr(cell, name).copy_(getattr(layer, name))
        cells.append(cell)
    lstm = net.cell == "lstm"
    x = batch.x.detach().clone().requires_grad_()
    S, B = x.shape[:2]
    zero = torch.zeros(B, net.hidden, dtype=F64)
    profiles = torch.zeros(len(cells), S, dtype=F64)
    n_loss = batch.loss_mask.sum()

    def step(states, x_t, keep):
        inp, out = x_t, []
        for i, (cell, s) in enumerate(zip(cells, states)):
            s = cell(inp, s)
            h = s[0] if lstm else s
            if keep is not None:
                h.retain_grad()
                keep[i].append(h)
            inp = h
            out.append(s)
        return out, inp

    for a in range(0, S, k1):
        b, t0 = min(a + k1, S), max(0, a - (k2 - k1))
        if not batch.loss_mask[a:b].any():
            continue
        states = [(zero, zero) if lstm else zero for _ in cells]
        with torch.no_grad():
            for t in range(t0):
                states, _ = step(states, x[t], None)
        kept, loss = [[] for _ in cells], 0
        for t in range(t0, b):
            states, top = step(states, x[t], kept)
            if t >= a:
                out = net.readout(top)[None]  # (1, B, O)
                loss = loss + (task.step_loss(out, batch.y[t:t + 1]) * batch.loss_mask[t:t + 1]).sum() / n_loss
        loss.backward()
        for i in range(len(cells)):
            profiles[i, t0:b] += torch.stack([h.grad.norm(dim=-1).sum() for h in kept[i]])
    net.zero_grad(set_to_none=True)
    return x.grad, profiles


def with_leaf_input(batch):
    return Batch(batch.x.clone().requires_grad_(), batch.y, batch.loss_mask, batch.score_mask)


@pytest.mark.parametrize("S, k1, k2", [(12, 4, 6), (12, 3, 7), (10, 3, 5), (12, 4, 4), (12, 2, 12), (12, 5, 20)])
def test_tbptt_k1_k2_gradient_reaches_exactly_its_window(S, k1, k2):
    """Loss at the last step only: the input gradient is non-zero from t0 = max(0, a - (k2 - k1))
    on, a = the last update's first new step, and exactly zero before; when the loss step ends
    a full update (S % k1 == 0) it reaches exactly k2 inputs back, the loss step included."""
    task = TASKS["adding"]
    net = RecurrentNet("lstm", 2, 6, 1, seed=0, dtype=F64)
    batch = with_leaf_input(task.generate(4, S, torch.Generator().manual_seed(0)).to("cpu", F64))
    row = train_step(net, task, batch, torch.optim.SGD(net.parameters(), lr=0.0), {"kind": "none"},
                     {"k1": k1, "k2": k2}, "skip")
    assert row["updates"] == 1
    reach = batch.x.grad.abs().sum(dim=(1, 2))  # (S,)
    a = (S - 1) // k1 * k1
    t0 = max(0, a - (k2 - k1))
    assert torch.all(reach[:t0] == 0) and torch.all(reach[t0:] > 0)
    if S % k1 == 0 and S >= k2:
        assert int((reach > 0).sum()) == k2
    expected, _ = reference(net, task, batch, k1, k2)
    torch.testing.assert_close(batch.x.grad, expected, **TOL)


@pytest.mark.parametrize("cell, layers, k1, k2", [("lstm", 3, 3, 5), ("gru", 2, 4, 9), ("vanilla", 3, None, None),
                                                  ("lstm", 1, 4, 4)])
def test_updates_and_per_layer_profiles_follow_the_schedule(cell, layers, k1, k2):
    """Copy (a loss at every step): the summed input gradient of all updates and every layer's
    profile, against the explicit loop with retain_grad on each layer's h_t."""
    task, T = TASKS["copy"], 3
    S = task.sequence_length(T)
    net = RecurrentNet(cell, task.input_size, 5, task.output_size, layers=layers, seed=3, dtype=F64)
    batch = with_leaf_input(task.generate(3, T, torch.Generator().manual_seed(1)).to("cpu", F64))
    window = None if k1 is None else {"k1": k1, "k2": k2}
    row = train_step(net, task, batch, torch.optim.SGD(net.parameters(), lr=0.0), {"kind": "none"}, window, "skip")
    expected_x, expected_profiles = reference(net, task, batch, k1 or S, k2 or S)
    assert row["updates"] == math.ceil(S / (k1 or S))
    torch.testing.assert_close(batch.x.grad, expected_x, **TOL)
    profiles = gradient_profiles(net, task, batch, window)
    assert profiles.shape == (layers, S)
    torch.testing.assert_close(profiles, expected_profiles, **TOL)


def test_depth_ratio_is_the_bottom_over_the_top_gradient():
    p = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [2.0, 2.0, 2.0]])
    assert diagnostics.depth_ratio(p) == pytest.approx(1.0)
    assert diagnostics.depth_ratio(np.array([[0.1, 0.1], [1.0, 1.0]])) == pytest.approx(0.1)
    assert diagnostics.depth_ratio(np.zeros((2, 3))) is None


# ---------------------------------------------------------------------------
# End to end: train() with each option, validation, labels

def tiny(cell="lstm", length=8, task="adding", **model):
    cfg = {"name": "t", "task": {"name": task, "length": length, "eval_size": 16},
           "model": {"cell": cell, "hidden": 6, "nonlinearity": None, "skip": 2, "engine": "scan", **model},
           "train": {"steps": 6, "batch_size": 4, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": None, "eval_every": 3, "on_nonfinite": "skip"},
           "diagnostics": {}, "seed": 3, "device": "cpu", "dtype": "float32", "threads": 1}
    return cfg


def test_train_a_stack_records_the_gradient_through_depth():
    out = train(tiny(layers=3))
    profile, evals = out["profile"], [r for r in out["rows"] if r["kind"] == "eval"]
    assert profile["grad_norm_layers"].shape == (3, 3, 8)  # (E, L, S)
    assert np.array_equal(profile["grad_norm"], profile["grad_norm_layers"][:, 0])  # the verdicts' profile: layer 0
    for e, r in enumerate(evals):
        assert r["depth_ratio"] == pytest.approx(diagnostics.depth_ratio(profile["grad_norm_layers"][e]), rel=1e-5)
        assert {"spectral_radius_f", "spectral_radius_f_l1", "sigma_max_o_l2"} <= set(r)
    assert out["summary"]["depth_ratio"] == evals[-1]["depth_ratio"]
    assert "sigma_max_i_l2" in out["summary"]
    assert "grad_norm_layers" not in train(tiny())["profile"]  # one layer: the file is as before


def test_train_constrained_orthogonal_keeps_unit_singular_values():
    summary = train(tiny("orthogonal", constrain=True, init="henaff"))["summary"]
    assert summary["sigma_max"] == pytest.approx(1.0, abs=1e-5)
    assert summary["spectral_radius"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("cell, bias", [("lstm", "chrono"), ("gru", "chrono"), ("lstm", 1.0)])
def test_train_with_a_forget_bias(cell, bias):
    summary = train(tiny(cell, forget_bias=bias))["summary"]
    assert summary["status"] == "ok" and math.isfinite(summary["final_loss"])


def test_train_with_tbptt_k1_k2_updates_once_per_k1_steps_with_a_loss():
    cfg = tiny(task="copy", length=4)  # S = 24, a loss at every step
    cfg["train"]["tbptt"] = {"k1": 5, "k2": 8}
    out = train(cfg)
    assert {r["updates"] for r in out["rows"] if r["kind"] == "train"} == {5}  # ceil(24 / 5)


def expand_errors(data):
    with pytest.raises(ConfigError) as e:
        validate(data, "c.yaml")
    return "\n".join(e.value.problems)


@pytest.mark.parametrize("data, needles", [
    ({"model": {"layers": 0}}, ["model.layers", "at least 1"]),
    ({"model": {"init": "henaf", "cell": "orthogonal"}}, ["model.init", "did you mean 'henaff'"]),
    ({"model": {"init": "henaff", "cell": "lstm"}}, ["model.init", "only the orthogonal cell"]),
    ({"model": {"constrain": "yes", "cell": "orthogonal"}}, ["model.constrain", "true or false"]),
    ({"model": {"constrain": True, "cell": "vanilla"}}, ["model.constrain", "only the orthogonal cell"]),
    ({"model": {"forget_bias": "chrono", "cell": "vanilla"}}, ["model.forget_bias", "lstm and gru"]),
    ({"model": {"forget_bias": "big", "cell": "lstm"}}, ["model.forget_bias", "a number or chrono"]),
    ({"train": {"tbptt": {"k1": 5, "k2": 3}}}, ["train.tbptt", "k2", "at least k1"]),
    ({"train": {"tbptt": {"k1": 5}}}, ["train.tbptt", "k2: missing"]),
    ({"train": {"tbptt": {"k1": 2, "k2": 4, "k": 1}}}, ["train.tbptt", "no key 'k'"]),
    ({"train": {"tbptt": {"k1": 0, "k2": 4}}}, ["train.tbptt", "k1", "at least 1"]),
    ({"grid": {"train.tbptt": [4, {"k1": 3, "k2": 2}]}}, ["grid.train.tbptt[1]", "at least k1"]),
])
def test_new_keys_are_validated(data, needles):
    text = expand_errors(data)
    for needle in needles:
        assert needle in text, (needle, text)


def test_tbptt_k1_k2_resolves_labels_and_compares():
    runs = validate({"grid": {"train.tbptt": [None, 5, {"k1": 5, "k2": 10}, {"k1": 4, "k2": 4}]}})
    assert [r.config["train"]["tbptt"] for r in runs] == [None, 5, {"k1": 5, "k2": 10}, 4]
    assert [r.id.split("_seed")[0] for r in runs] == ["tbptt=full", "tbptt=5", "tbptt=5-10", "tbptt=4"]
    labels = [comparison.config_columns(r.config)["tbptt"] for r in runs]
    assert labels == [None, 5, "5/10", 4]
    table = comparison.compare(__import__("pandas").DataFrame(
        [{**comparison.config_columns(r.config), "status": "ok", "final_loss": 0.1, "solved": False,
          "steps_to_solve": None, "diverged": False, "baseline_loss": 0.2, "verdict": "healthy", "horizon": 3,
          "grad_norm_max": 1.0, "suggested_clip": 1.0, "wall_seconds": 1.0, "run_dir": str(i)}
         for i, r in enumerate(runs)]))
    assert sorted(map(str, (r["tbptt"] for r in comparison.to_records(table)))) == ["4", "5", "5/10", "None"]


def test_ls_lists_every_option():
    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0
    for key in options():
        assert key in result.output, key
