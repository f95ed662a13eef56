"""Clipping rules, Pascanu's Ω and weight decay, each against a direct implementation of its formula."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradlab.cells import RecurrentNet
from gradlab.config import ConfigError, load
from gradlab.remedies import CLIPS, clip_gradients, decay_groups, make_clipper, omega, resolve_clip
from gradlab.tasks import TASKS
from gradlab.training import train, train_step

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fake_params(seed, scale=1.0, shapes=((4, 3), (5,), (2, 2))):
    """Parameters (float64) holding random weights and random gradients."""
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=F64)) for s in shapes]
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g, dtype=F64)
    return params


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def total_norm(arrays):
    return math.sqrt(sum(float((a ** 2).sum()) for a in arrays))


# ---------------------------------------------------------------------------
# Clipping rules after backward

@pytest.mark.parametrize("max_norm", [0.5, 2.0, 100.0])
def test_param_norm_clips_each_tensor_on_its_own(max_norm):
    params = fake_params(0)
    before = [p.grad.numpy().copy() for p in params]
    norm, after = clip_gradients(params, resolve_clip({"kind": "param_norm", "max_norm": max_norm}))
    expected = [g * min(1.0, max_norm / np.linalg.norm(g)) for g in before]  # tf.clip_by_norm, per variable
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-12)
    assert norm.item() == pytest.approx(total_norm(before), rel=1e-12)
    assert after.item() == pytest.approx(total_norm(expected), rel=1e-12)
    if max_norm == 0.5:  # every tensor is clipped to exactly max_norm, not the global norm
        assert all(np.linalg.norm(p.grad.numpy()) == pytest.approx(0.5) for p in params)


def percentile(values, q):
    """Linear interpolation between order statistics (numpy's default 'linear' method), by hand."""
    xs = sorted(values)
    rank = q / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (rank - lo) * (xs[hi] - xs[lo])


def test_autoclip_threshold_is_the_percentile_of_the_history_including_now():
    """pseeth/autoclip: grad_history.append(norm); clip_value = np.percentile(grad_history, p)."""
    clipper = make_clipper(resolve_clip({"kind": "autoclip", "percentile": 25}))
    scales = [1.0, 3.0, 0.5, 10.0, 2.0, 0.1, 4.0]
    history, clipped = [], []
    for i, s in enumerate(scales):
        params = fake_params(i, s)
        before = [p.grad.clone() for p in params]
        g = total_norm(before)
        history.append(g)
        threshold = percentile(history, 25)
        norm, after = clipper(params)
        factor = min(1.0, threshold / g)
        clipped.append(factor < 1)
        for p, b in zip(params, before):
            torch.testing.assert_close(p.grad, b * factor, rtol=1e-12, atol=0)
        assert norm.item() == pytest.approx(g, rel=1e-12)
        assert after.item() == pytest.approx(min(g, threshold), rel=1e-12)
    assert clipper.state["history"] == pytest.approx(history, rel=1e-12)
    assert clipped == [False, True, False, True, True, False, True]  # the first: threshold = its own norm


def test_autoclip_ignores_a_nonfinite_norm():
    clipper = make_clipper(resolve_clip("autoclip"))
    clipper(fake_params(0))
    bad = fake_params(1)
    bad[0].grad[0, 0] = float("nan")
    norm, _ = clipper(bad)
    assert math.isnan(norm.item()) and len(clipper.state["history"]) == 1
    clipper(fake_params(2, 5.0))
    assert all(math.isfinite(h) for h in clipper.state["history"])


def agc_reference(weights, grads, lam, eps=1e-3):
    """Brock et al. 2021: per unit (row of a (out, in) matrix; a vector is one unit), by loops."""
    out = []
    for w, g in zip(weights, grads):
        g = g.copy()
        rows = [slice(None)] if w.ndim <= 1 else range(w.shape[0])
        for i in rows:
            w_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g[i])
            max_norm = lam * max(w_norm, eps)
            if g_norm > max_norm:
                g[i] = g[i] * max_norm / g_norm
        out.append(g)
    return out


@pytest.mark.parametrize("lam", [0.01, 0.3, 5.0])
def test_agc_is_unitwise_relative_to_the_weights(lam):
    params = fake_params(3, 0.5, shapes=((6, 4), (6,), (3, 3), (2,)))
    with torch.no_grad():
        params[0][2].mul_(1e-6)  # a unit whose weight norm is below eps: the 1e-3 floor applies
        params[1].mul_(0.0)      # a zero vector: max_norm = λ·1e-3
    weights = [p.detach().numpy().copy() for p in params]
    before = [p.grad.numpy().copy() for p in params]
    clip_gradients(params, resolve_clip({"kind": "agc", "clipping": lam}))
    for p, e in zip(params, agc_reference(weights, before, lam)):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-12, atol=1e-15)
    changed = [not np.allclose(p.grad.numpy(), b) for p, b in zip(params, before)]
    assert any(changed) and (lam < 1 or not all(changed))


def test_agc_leaves_the_readout_alone():
    net = RecurrentNet("lstm", 3, 5, 2, seed=0).double()
    g = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.grad = 10 * torch.randn(p.shape, generator=g, dtype=F64)
    readout_before = [p.grad.clone() for p in net.readout.parameters()]
    weights = [p.detach().numpy().copy() for p in net.recurrent_parameters()]
    grads = [p.grad.numpy().copy() for p in net.recurrent_parameters()]
    make_clipper(resolve_clip("agc"), net)(net.parameters())
    for p, b in zip(net.readout.parameters(), readout_before):
        assert torch.equal(p.grad, b)
    for p, e in zip(net.recurrent_parameters(), agc_reference(weights, grads, 0.01)):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-12)


def zclip_reference(norms, alpha, z_thresh, warmup):
    """bluorion-com/ZClip, ZClip.step in its default mode (zscore, adaptive_scaling), without
    max_grad_norm: the norm each step is clipped to (None: not clipped) and the statistics after it."""
    buffer, mean, var, out = [], None, None, []
    for g in norms:
        if mean is None:
            buffer.append(g)
            if len(buffer) >= warmup:
                mean = sum(buffer) / len(buffer)
                var = sum((x - mean) ** 2 for x in buffer) / len(buffer)
            out.append((None, mean, var))
            continue
        std = var ** 0.5
        z = (g - mean) / (std + 1e-6)
        clip = mean + (z_thresh * std) / (z / z_thresh) if z > z_thresh else None
        eff = g if clip is None else clip
        mean = alpha * mean + (1 - alpha) * eff
        var = alpha * var + (1 - alpha) * (eff - mean) ** 2
        out.append((clip, mean, var))
    return out


def test_zclip_warmup_then_ema_of_the_clipped_norm():
    scales = [1.0, 1.2, 0.9, 1.1, 50.0, 1.0, 1.05, 30.0, 0.95]
    grads = [fake_params(10 + i, s) for i, s in enumerate(scales)]
    norms = [total_norm([p.grad for p in ps]) for ps in grads]
    reference = zclip_reference(norms, 0.9, 2.0, 3)
    clipper = make_clipper(resolve_clip({"kind": "zclip", "alpha": 0.9, "z_thresh": 2.0, "warmup": 3}))
    clipped_steps = []
    for i, (params, (clip, mean, var)) in enumerate(zip(grads, reference)):
        before = [p.grad.clone() for p in params]
        norm, after = clipper(params)
        factor = 1.0 if clip is None else clip / norms[i]
        for p, b in zip(params, before):
            torch.testing.assert_close(p.grad, b * factor, rtol=1e-12, atol=0)
        assert after.item() == pytest.approx(norms[i] * factor, rel=1e-12)
        if mean is not None:
            assert clipper.state["mean"] == pytest.approx(mean, rel=1e-12)
            assert clipper.state["var"] == pytest.approx(var, rel=1e-12)
        if clip is not None:
            clipped_steps.append(i)
    assert clipped_steps == [4, 7]  # never during warm-up; the two spikes after it
    # hand-checked: after the 3 warm-up norms the statistics are their mean and population variance
    n0, n1, n2 = norms[:3]
    m = (n0 + n1 + n2) / 3
    assert reference[2][1] == pytest.approx(m) and reference[2][2] == pytest.approx(
        ((n0 - m) ** 2 + (n1 - m) ** 2 + (n2 - m) ** 2) / 3)
    # and the first spike is clipped to μ + z_thr²·σ/z, then μ moves toward that, not toward the spike
    std = math.sqrt(reference[3][2])
    z = (norms[4] - reference[3][1]) / (std + 1e-6)
    assert reference[4][0] == pytest.approx(reference[3][1] + 4.0 * std / z)
    assert reference[4][1] == pytest.approx(0.9 * reference[3][1] + 0.1 * reference[4][0])


# ---------------------------------------------------------------------------
# Recurrent clipping: ∂L/∂h_t at every step, against tensor hooks on torch's own cells

def clip_reference(mode, c):
    if mode == "value":
        return lambda g: g.clamp(-c, c)
    return lambda g: torch.stack([gb * min(1.0, c / gb.norm().item()) for gb in g])  # per sample


def hooked_loop(net, x, w, hook):
    """torch.nn.RNNCell/LSTMCell with net's weights, unrolled, a hook on every h_t: grads of the weights."""
    n_in, H = net.weight_ih.shape[1], net.hidden
    cell = nn.LSTMCell(n_in, H) if net.cell == "lstm" else nn.RNNCell(n_in, H, nonlinearity=net.nonlinearity)
    cell = cell.double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(net, name))
    B = x.shape[1]
    state = (torch.zeros(B, H, dtype=F64),) * 2 if net.cell == "lstm" else torch.zeros(B, H, dtype=F64)
    hs = []
    for t in range(x.shape[0]):
        state = cell(x[t], state)
        h = state[0] if net.cell == "lstm" else state
        h.register_hook(hook)
        hs.append(h)
    (torch.stack(hs) * w).sum().backward()
    return [getattr(cell, n).grad for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


@pytest.mark.parametrize("engine", ["scan", "autograd"])
@pytest.mark.parametrize("cell", ["vanilla", "lstm"])
@pytest.mark.parametrize("mode, c", [("value", 0.05), ("norm", 0.15)])
def test_recurrent_clip_matches_hooks_on_torch_cells(engine, cell, mode, c):
    T, B, n_in, H = 9, 3, 2, 4
    g = torch.Generator().manual_seed(5)
    net = RecurrentNet(cell, n_in, H, 1, engine=engine, seed=2).double()
    x, w = torch.randn(T, B, n_in, generator=g, dtype=F64), torch.randn(T, B, H, generator=g, dtype=F64)
    clipper = make_clipper(resolve_clip({"kind": "recurrent", "threshold": c, "mode": mode}), net)
    hs, _ = net(x, net.initial_state(B, dtype=F64), grad_transform=clipper.grad_transform)
    (hs * w).sum().backward()
    ref = hooked_loop(net, x, w, clip_reference(mode, c))
    for name, r in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), ref):
        torch.testing.assert_close(getattr(net, name).grad, r, rtol=1e-10, atol=1e-12)
    plain = hooked_loop(net, x, w, lambda g: g)
    assert not torch.allclose(plain[1], ref[1])  # the clip did bite
    norm, after = clipper(net.parameters())  # its after-backward stage changes nothing
    assert norm.item() == after.item()
    torch.testing.assert_close(net.weight_hh.grad, ref[1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Pascanu's Ω

def omega_reference(hs, deltas, W, nonlinearity, bound=1e-20):
    """Pascanu's code (pascanur/trainingRNNs RNN.py): the mean over unmasked (t, b) of
    (‖δ_t J_t‖²/‖δ_t‖² − 1)², J_t = ∂h_t/∂h_{t-1} = diag(act'(a_t)) U written as a matrix."""
    terms = []
    for t in range(hs.shape[0]):
        for b in range(hs.shape[1]):
            d, h = deltas[t, b], hs[t, b]
            if d.dot(d) < bound:
                continue
            act_grad = 1 - h ** 2 if nonlinearity == "tanh" else (h > 0).double()
            v = d @ (torch.diag(act_grad) @ W)
            terms.append((v.dot(v) / d.dot(d) - 1) ** 2)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_omega_and_its_gradient_match_the_formula(nonlinearity):
    g = torch.Generator().manual_seed(1)
    T, B, H = 5, 3, 4
    hs = torch.randn(T, B, H, generator=g, dtype=F64).tanh()
    deltas = torch.randn(T, B, H, generator=g, dtype=F64)
    deltas[1, 2] = 0.0   # a vanished step: masked out
    deltas[3, 0] = 1e-12  # ‖δ‖² = 1.6e-23 < 1e-20: masked too
    W = torch.randn(H, H, generator=g, dtype=F64, requires_grad=True)
    W_ref = W.detach().clone().requires_grad_(True)
    ours = omega(hs, deltas, W, nonlinearity)
    ref = omega_reference(hs, deltas, W_ref, nonlinearity)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(W.grad, W_ref.grad, rtol=1e-10, atol=1e-14)
    assert W.grad.abs().sum() > 0


def test_omega_jacobian_is_the_cells_own():
    """diag(1 − h_t²) U is ∂h_t/∂h_{t-1} of torch's RNNCell (so Ω is about the real recurrence)."""
    g = torch.Generator().manual_seed(2)
    cell = nn.RNNCell(2, 4).double()
    x, h_prev = torch.randn(2, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda h: cell(x[None], h[None])[0], h_prev)
    h = cell(x[None], h_prev[None])[0].detach()
    torch.testing.assert_close(J, torch.diag(1 - h ** 2) @ cell.weight_hh.detach(), rtol=1e-12, atol=1e-14)


def test_train_step_adds_alpha_times_omega_gradient_to_U():
    task, alpha = TASKS["adding"], 3.0
    batch = task.generate(4, 10, torch.Generator().manual_seed(0)).to("cpu", F64)
    net = RecurrentNet("vanilla", 2, 6, 1, seed=4).double()
    # reference: the loss, δ_t = ∂L/∂h_t and h_t from an unrolled torch RNNCell with net's weights
    cell = nn.RNNCell(2, 6).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(net, name))
    h, hs = torch.zeros(4, 6, dtype=F64), []
    for t in range(batch.x.shape[0]):
        h = cell(batch.x[t], h)
        h.retain_grad()
        hs.append(h)
    out = net.readout(torch.stack(hs))
    loss = (task.step_loss(out, batch.y) * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    deltas = torch.stack([h.grad for h in hs])
    W = cell.weight_hh.detach().clone().requires_grad_(True)
    ref = omega_reference(torch.stack(hs).detach(), deltas, W, "tanh")
    ref.backward()

    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    row = train_step(net, task, batch, opt, {"kind": "none"}, None, "skip", omega=alpha)
    torch.testing.assert_close(net.weight_hh.grad, cell.weight_hh.grad + alpha * W.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(net.weight_ih.grad, cell.weight_ih.grad, rtol=1e-9, atol=1e-12)  # U only
    assert row["omega"] == pytest.approx(ref.item(), rel=1e-9)
    assert row["grad_norm"] == pytest.approx(total_norm([p.grad for p in net.parameters()]), rel=1e-9)


# ---------------------------------------------------------------------------
# Weight decay

@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_weight_decay_is_the_gradient_of_an_explicit_l2_term(optimizer):
    """decay_groups + torch's weight_decay λ == the loss + (λ/2)·(‖W_ih‖² + ‖U‖²), nothing on biases/readout."""
    lam, task = 0.3, TASKS["adding"]
    a, b = RecurrentNet("vanilla", 2, 5, 1, seed=0).double(), RecurrentNet("vanilla", 2, 5, 1, seed=0).double()
    opt_a = optimizer(decay_groups(a, lam), lr=0.05)
    opt_b = optimizer(b.parameters(), lr=0.05)
    for step in range(3):
        batch = task.generate(4, 8, torch.Generator().manual_seed(step)).to("cpu", F64)
        train_step(a, task, batch, opt_a, {"kind": "none"}, None, "skip")
        opt_b.zero_grad()
        hs, _ = b(batch.x, b.initial_state(4, dtype=F64))
        loss = (task.step_loss(b.readout(hs), batch.y) * batch.loss_mask).sum() / batch.loss_mask.sum()
        (loss + lam / 2 * (b.weight_ih.square().sum() + b.weight_hh.square().sum())).backward()
        opt_b.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=name)
    assert not torch.allclose(a.weight_hh, RecurrentNet("vanilla", 2, 5, 1, seed=0).double().weight_hh)


def test_decay_groups_pick_the_input_and_recurrent_weights():
    net = RecurrentNet("skip", 2, 5, 1, seed=0)
    decayed, rest = decay_groups(net, 0.1)
    assert decayed["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(net.weight_ih), id(net.weight_hh), id(net.weight_skip)}
    assert len(decayed["params"]) + len(rest["params"]) == len(list(net.parameters()))
    deep = RecurrentNet("lstm", 2, 5, 1, layers=2)
    expected = {id(getattr(layer, n)) for layer in deep.layers for n in ("weight_ih", "weight_hh")}
    assert {id(p) for p in decay_groups(deep, 0.1)[0]["params"]} == expected
    ortho = RecurrentNet("orthogonal", 2, 5, 1, constrain=True)  # U's norm is fixed: no decay on it
    assert [id(p) for p in decay_groups(ortho, 0.1)[0]["params"]] == [id(ortho.weight_ih)]


# ---------------------------------------------------------------------------
# They plug into training and configs

def tiny_config(cell="vanilla", **train):
    cfg = {"name": "t", "task": {"name": "adding", "length": 8, "eval_size": 32},
           "model": {"cell": cell, "hidden": 8, "nonlinearity": None, "skip": 2, "engine": "scan"},
           "train": {"steps": 8, "batch_size": 4, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": None, "eval_every": 4, "on_nonfinite": "skip", "omega": 0.0, "weight_decay": 0.0},
           "diagnostics": {}, "seed": 3, "device": "cpu", "dtype": "float32", "threads": 1}
    cfg["train"].update(train)
    return cfg


@pytest.mark.parametrize("clip", [{"kind": "param_norm", "max_norm": 0.05}, {"kind": "autoclip", "percentile": 10.0},
                                  {"kind": "agc", "clipping": 0.001},
                                  {"kind": "zclip", "alpha": 0.5, "z_thresh": 0.1, "warmup": 2}])
def test_each_rule_trains_end_to_end_and_clips(clip):
    out = train(tiny_config(clip=clip))
    rows = [r for r in out["rows"] if r["kind"] == "train"]
    assert len(rows) == 8 and all(math.isfinite(r["loss"]) for r in rows)
    assert out["summary"]["clip_rate"] > 0  # the rule was active at least once
    assert all(r["grad_norm_clipped"] <= r["grad_norm"] * (1 + 1e-6) for r in rows)


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_recurrent_clip_trains_and_the_profile_sees_it(mode):
    c = 1e-4
    out = train(tiny_config(clip={"kind": "recurrent", "threshold": c, "mode": mode}))
    free = train(tiny_config())
    assert out["rows"] != free["rows"]
    # profile: Σ_b ‖∂L/∂h_t‖ over the 32 probe sequences, each clipped to c (norm) or c·sqrt(H) (value)
    bound = 32 * c * (math.sqrt(8) if mode == "value" else 1.0)
    assert out["profile"]["grad_norm"].max() <= bound * (1 + 1e-5)
    assert free["profile"]["grad_norm"].max() > bound


def test_omega_and_weight_decay_train_end_to_end():
    out = train(tiny_config(clip={"kind": "norm", "max_norm": 1.0}, omega=2.0, weight_decay=0.5, tbptt=4))
    rows = [r for r in out["rows"] if r["kind"] == "train"]
    assert all(r["omega"] > 0 and math.isfinite(r["omega"]) for r in rows)
    assert "omega" not in [r for r in train(tiny_config())["rows"] if r["kind"] == "train"][0]


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def problems_of(path):
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.problems


BAD = [
    ("train: {clip: {kind: autoclip, percentile: 0}}\n", "clip autoclip.percentile: must be in (0, 100]"),
    ("train: {clip: {kind: autoclip, percentile: 101}}\n", "clip autoclip.percentile: must be in (0, 100]"),
    ("train: {clip: {kind: agc, clipping: 0}}\n", "clip agc.clipping: must be positive"),
    ("train: {clip: {kind: zclip, alpha: 1.0}}\n", "clip zclip.alpha: must be between 0 and 1"),
    ("train: {clip: {kind: zclip, warmup: 2.5}}\n", "clip zclip.warmup: expected an integer"),
    ("train: {clip: {kind: zclip, warmup: 0}}\n", "clip zclip.warmup: must be at least 1"),
    ("train: {clip: {kind: zclip, z_thresh: -1}}\n", "clip zclip.z_thresh: must be positive"),
    ("train: {clip: {kind: recurrent, mode: clamp}}\n", "clip recurrent.mode: unknown recurrent clip mode 'clamp'"),
    ("train: {clip: {kind: recurrent, threshold: fast}}\n", "clip recurrent.threshold: expected a number"),
    ("train: {clip: {kind: param_norm, max_norm: 0}}\n", "clip param_norm.max_norm: must be positive"),
    ("train: {omega: -1}\n", "train.omega: must be zero or positive"),
    ("train: {weight_decay: lots}\n", "train.weight_decay: expected a number"),
    ("model: {cell: lstm}\ntrain: {omega: 2}\n", "train.omega: only for one layer of the vanilla, irnn, orthogonal"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_remedy_settings_are_located_errors(tmp_path, text, message):
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith(str(tmp_path / "c.yaml"))


def test_every_bad_clip_parameter_is_its_own_line(tmp_path):
    text = "train:\n  clip: {kind: zclip, alpha: 2, warmup: -1, zthresh: 3}\n"
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 3 and all(p.startswith(f"{tmp_path / 'c.yaml'}:2: train.clip: ") for p in problems)
    assert "did you mean 'z_thresh'" in problems[0]


def test_remedies_resolve_and_grid(tmp_path):
    text = ("train: {omega: 2, weight_decay: 0.001}\n"
            "grid:\n  train.clip: [{kind: zclip, warmup: 5}, {kind: recurrent, threshold: 1, mode: norm}, agc]\n"
            "  train.weight_decay: [0, 0.01]\n")
    _, runs = load(write(tmp_path, text))
    assert len(runs) == 6
    clips = {r.overrides["train.clip"] if isinstance(r.overrides["train.clip"], str) else
             r.overrides["train.clip"]["kind"]: r.config["train"]["clip"] for r in runs}
    assert clips["zclip"] == {"kind": "zclip", "alpha": 0.97, "z_thresh": 2.5, "warmup": 5}
    assert isinstance(clips["zclip"]["warmup"], int)
    assert clips["recurrent"] == {"kind": "recurrent", "threshold": 1.0, "mode": "norm"}
    assert clips["agc"] == {"kind": "agc", "clipping": 0.01}
    assert all(r.config["train"]["omega"] == 2 for r in runs)
    assert len({r.id for r in runs}) == 6


def test_every_rule_is_described_and_validated():
    for kind, rule in CLIPS.items():
        assert all(param.check(param.default) is None for param in rule.params.values()), kind  # valid defaults
        assert resolve_clip(kind)["kind"] == kind
        if kind != "none":
            assert any(str(year) in rule.description for year in range(1990, 2030)), kind
