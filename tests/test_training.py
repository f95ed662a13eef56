"""Cells, clipping, truncated BPTT and the training loop, against independent references."""

import math

import pytest
import torch
from torch import nn

from gradlab.cells import RecurrentNet
from gradlab.remedies import clip_gradients, resolve_clip
from gradlab.tasks import TASKS, Batch
from gradlab.training import train, train_step

TORCH_MODULES = {"vanilla": lambda i, h: nn.RNN(i, h, nonlinearity="tanh"),
                 "irnn": lambda i, h: nn.RNN(i, h, nonlinearity="relu"),
                 "orthogonal": lambda i, h: nn.RNN(i, h, nonlinearity="tanh"),
                 "lstm": lambda i, h: nn.LSTM(i, h), "gru": lambda i, h: nn.GRU(i, h)}


def torch_twin(net: RecurrentNet):
    """torch's own module carrying the same weights, in float64."""
    ref = TORCH_MODULES[net.cell](net.weight_ih.shape[1], net.hidden).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(net, name))
    return ref


@pytest.mark.parametrize("cell", list(TORCH_MODULES))
@pytest.mark.parametrize("T, B, H", [(1, 1, 1), (7, 3, 5), (20, 4, 16)])
def test_reference_cells_match_torch_modules(cell, T, B, H):
    torch.manual_seed(T * 100 + H)
    net = RecurrentNet(cell, 3, H, 1, engine="autograd", seed=1).double()
    if cell == "irnn":  # identity recurrence + tiny input weights: perturb so the test sees every weight
        with torch.no_grad():
            for p in net.recurrent_parameters():
                p.add_(0.1 * torch.randn_like(p))
    ref = torch_twin(net)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    state = (net.initial_state(B, dtype=torch.float64))
    hs, final = net(x, state)
    out, ref_final = ref(x, (state[0][None], state[1][None]) if cell == "lstm" else state[None])
    torch.testing.assert_close(hs, out, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(hs)
    (hs * w).sum().backward()
    (out * w).sum().backward()
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        torch.testing.assert_close(getattr(net, name).grad, getattr(ref, f"{name}_l0").grad,
                                   rtol=1e-10, atol=1e-12)


def test_skip_cell_reference_matches_a_hand_written_loop():
    """h_t = tanh(W x_t + b_ih + U h_{t-1} + b_hh + S h_{t-k}), state = the last k hidden states."""
    torch.manual_seed(0)
    k, T, B, H = 3, 9, 2, 4
    net = RecurrentNet("skip", 2, H, 1, skip=k, engine="autograd", seed=3).double()
    x = torch.randn(T, B, 2, dtype=torch.float64)
    h0 = torch.randn(k, B, H, dtype=torch.float64)
    hs, final = net(x, h0)
    past = list(h0)
    for t in range(T):
        h = torch.tanh(x[t] @ net.weight_ih.T + net.bias_ih + past[-1] @ net.weight_hh.T + net.bias_hh
                       + past[-k] @ net.weight_skip.T)
        past.append(h)
        torch.testing.assert_close(hs[t], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, torch.stack(past[-k:]))


def test_initialisations_follow_their_papers():
    irnn = RecurrentNet("irnn", 2, 50, 1, seed=0)
    assert torch.equal(irnn.weight_hh, torch.eye(50))
    assert irnn.bias_ih.abs().sum() == 0 and irnn.bias_hh.abs().sum() == 0
    assert 0.0005 < irnn.weight_ih.std().item() < 0.002  # N(0, 0.001²) on 100 draws
    ortho = RecurrentNet("orthogonal", 2, 32, 1, seed=0)
    torch.testing.assert_close(ortho.weight_hh.T @ ortho.weight_hh, torch.eye(32), atol=1e-5, rtol=0)
    a, b = RecurrentNet("lstm", 2, 8, 1, seed=5), RecurrentNet("lstm", 2, 8, 1, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def fake_grads(seed, scale):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in [(4, 3), (5,), (2, 2)]]
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g)
    return params


@pytest.mark.parametrize("max_norm, scale", [(1.0, 10.0), (1.0, 0.01), (0.3, 1.0)])
def test_norm_clip_matches_torch(max_norm, scale):
    ours, ref = fake_grads(0, scale), fake_grads(0, scale)
    norm, after = clip_gradients(ours, resolve_clip({"kind": "norm", "max_norm": max_norm}))
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(norm, ref_norm)
    for p, q in zip(ours, ref):  # torch adds 1e-6 to the norm in its scale factor, hence rtol 1e-5
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)
    assert after.item() == pytest.approx(min(norm.item(), max_norm), rel=1e-6)


def test_value_clip_matches_torch():
    ours, ref = fake_grads(1, 2.0), fake_grads(1, 2.0)
    norm, after = clip_gradients(ours, resolve_clip({"kind": "value", "clip_value": 0.5}))
    torch.nn.utils.clip_grad_value_(ref, 0.5)
    for p, q in zip(ours, ref):
        assert torch.equal(p.grad, q.grad)
    assert after < norm


def adding_batch(T=12, B=4, seed=0):
    return TASKS["adding"].generate(B, T, torch.Generator().manual_seed(seed))


def test_clipping_acts_on_the_gradient_after_backward():
    """The update must be the clipped gradient (the TCN repository clipped before backward: a no-op)."""
    net = RecurrentNet("vanilla", 2, 8, 1, seed=0)
    with torch.no_grad():
        net.weight_hh.mul_(5.0)  # make the gradient large
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    row = train_step(net, TASKS["adding"], adding_batch(), opt, {"kind": "norm", "max_norm": 0.1}, None, "skip")
    assert row["grad_norm"] > 0.1 and row["clip_active"] == 1
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before)))
    assert step.item() == pytest.approx(0.1, rel=1e-5)  # lr 1: the step is the clipped gradient


@pytest.mark.parametrize("S, k", [(12, 4), (10, 3), (12, 12), (12, None)])
def test_tbptt_gradient_reaches_exactly_the_last_window(S, k):
    """With the loss at the last step, inputs before the last chunk get exactly zero gradient."""
    batch = adding_batch(T=S)
    x = batch.x.clone().requires_grad_(True)
    batch = Batch(x, batch.y, batch.loss_mask, batch.score_mask)
    net = RecurrentNet("lstm", 2, 6, 1, seed=0)
    train_step(net, TASKS["adding"], batch, torch.optim.SGD(net.parameters(), lr=0.0),
               {"kind": "none"}, k, "skip")
    reach = x.grad.abs().sum(dim=(1, 2))  # (S,)
    start = ((S - 1) // k) * k if k else 0  # first step of the chunk that holds the loss
    assert torch.all(reach[:start] == 0)
    assert torch.all(reach[start:] > 0)


def test_tbptt_updates_once_per_chunk_with_a_loss():
    net = RecurrentNet("gru", 10, 8, 10, seed=0)
    copy = TASKS["copy"].generate(3, 5, torch.Generator().manual_seed(0))  # S = 25, loss at every step
    row = train_step(net, TASKS["copy"], copy, torch.optim.Adam(net.parameters()), {"kind": "none"}, 10, "skip")
    assert row["updates"] == 3
    net = RecurrentNet("gru", 2, 8, 1, seed=0)
    row = train_step(net, TASKS["adding"], adding_batch(T=25), torch.optim.Adam(net.parameters()),
                     {"kind": "none"}, 10, "skip")
    assert row["updates"] == 1  # adding's loss sits in the last chunk only


def tiny_config(**train):
    cfg = {"name": "t", "task": {"name": "adding", "length": 8, "eval_size": 32},
           "model": {"cell": "lstm", "hidden": 8, "nonlinearity": None, "skip": 2, "engine": "scan"},
           "train": {"steps": 12, "batch_size": 4, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": None, "eval_every": 4, "on_nonfinite": "skip"},
           "diagnostics": {}, "seed": 3, "device": "cpu", "dtype": "float32", "threads": 1}
    cfg["train"].update(train)
    return cfg


def test_summary_holds_what_the_issue_names():
    out = train(tiny_config())
    summary, rows, env = out["summary"], out["rows"], out["env"]
    for key in ("final_loss", "baseline_loss", "solved", "steps_to_solve", "diverged", "wall_seconds",
                "steps_per_second"):
        assert key in summary
    assert summary["baseline_loss"] == pytest.approx(1 / 6)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 4, 8, 12]
    assert out["profile"]["grad_norm"].shape == (4, 8) and list(out["profile"]["step"]) == [0, 4, 8, 12]
    assert env["torch"] == torch.__version__ and env["seed"] == 3


def test_the_environment_records_what_picks_the_float_kernels(monkeypatch):
    """torch's SIMD level and MKL's pinned branch (MKL_CBWR): either changes a float32 run's last digits."""
    from gradlab.training import environment

    monkeypatch.delenv("MKL_CBWR", raising=False)
    env = environment(tiny_config())
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["mkl_cbwr"] is None
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert environment(tiny_config())["mkl_cbwr"] == "AVX2"


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_gradient_follows_the_policy_and_keeps_metrics(policy, monkeypatch):
    import gradlab.training as training

    real = training.clip_gradients
    calls = {"n": 0}

    def poisoned(params, clip):  # a NaN enters the gradient at the 5th update
        calls["n"] += 1
        params = list(params)
        if calls["n"] == 5:
            params[0].grad[0, 0] = float("nan")
        return real(params, clip)

    monkeypatch.setattr(training, "clip_gradients", poisoned)
    out = train(tiny_config(on_nonfinite=policy))
    summary, rows = out["summary"], out["rows"]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[4]["nonfinite"] == 1 and summary["nonfinite_steps"] == 1
    if policy == "skip":
        assert len(train_rows) == 12 and not summary["diverged"]
        assert math.isfinite(summary["final_loss"])  # the poisoned update was dropped
    else:
        assert len(train_rows) == 5 and summary["diverged"] and summary["diverged_step"] == 5
        assert summary["exploding"] is True and summary["verdict"] in ("exploding", "vanishing+exploding")
        # the metrics up to the stop are kept, evaluated once more, with the flag the stop raised
        assert rows[-1]["kind"] == "eval" and rows[-1]["exploding"] == 1


def test_a_skipped_update_records_its_real_norms():
    """The norms of a dropped (non-finite) update are what was computed, never a stand-in 0.0."""
    net = RecurrentNet("vanilla", 2, 8, 1, seed=0)
    net.weight_hh.register_hook(lambda g: torch.full_like(g, math.inf))  # the recurrent gradient overflows
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    row = train_step(net, TASKS["adding"], adding_batch(), opt, {"kind": "none"}, None, "skip")
    assert row["nonfinite"] == 1 and row["updates"] == 0
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))  # the update was dropped
    assert row["grad_norm"] == math.inf and row["grad_norm_clipped"] == math.inf
    assert row["grad_norm_recurrent"] == math.inf
    for group in ("input", "readout"):  # finite: the norm of the gradients left in .grad
        grads = torch.cat([p.grad.double().flatten() for p in net.parameter_groups()[group]])
        assert row[f"grad_norm_{group}"] == pytest.approx(torch.linalg.vector_norm(grads).item(), rel=1e-5)
        assert row[f"grad_norm_{group}"] > 0


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_recurrent_clip_counts_the_updates_it_changed(mode):
    """The recurrent rule acts inside backward, where no pre-clip norm exists: an update counts as
    clipped exactly when some total ∂L/∂h_t went past the threshold. The largest one is read from the
    autograd reference (hooks on an unrolled loop); the count from the engine's training step."""
    batch = adding_batch(T=12, B=4, seed=3)
    x, y = batch.x.double(), batch.y.double()
    reference = RecurrentNet("vanilla", 2, 8, 1, engine="autograd", seed=0).double()
    seen = []  # every total ∂L/∂h_t (B, H), as the hook receives it
    hs, _ = reference(x, reference.initial_state(4, dtype=torch.float64),
                      grad_transform=lambda t, g: seen.append(g.detach().clone()) or g)
    loss = (TASKS["adding"].step_loss(reference.readout(hs), y) * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    largest = max(float(g.abs().max()) if mode == "value" else float(g.norm(dim=-1).max()) for g in seen)
    for threshold, expected in ((largest * 0.9, 1), (largest * 1.1, 0)):
        model = RecurrentNet("vanilla", 2, 8, 1, seed=0).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        clip = {"kind": "recurrent", "threshold": threshold, "mode": mode}
        step_batch = Batch(x, y, batch.loss_mask, batch.score_mask)
        row = train_step(model, TASKS["adding"], step_batch, opt, clip, None, "skip")
        assert row["clip_active"] == expected


@pytest.mark.parametrize("seed, first", [(0, 2), (3, 13)])
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_run_that_overflows_and_stays_so_is_diverged_under_either_policy(policy, seed, first):
    # the IRNN at SGD lr 10 overflows at step `first` and never recovers: skip drops every update
    # from there on and ends at a finite loss (~5e19, ~1e37), stop ends the run there
    cfg = {**tiny_config(optimizer="sgd", lr=10.0, steps=20, eval_every=20, batch_size=32, on_nonfinite=policy),
           "task": {"name": "adding", "length": 20, "eval_size": 100}, "seed": seed}
    cfg["model"] = {**cfg["model"], "cell": "irnn", "hidden": 16}
    summary = train(cfg)["summary"]
    dropped = 20 - first + 1 if policy == "skip" else 1
    assert summary["nonfinite_steps"] == dropped and math.isfinite(summary["final_loss"])
    assert summary["steps_done"] == (20 if policy == "skip" else first) and summary["diverged"]


def test_divergence_is_a_non_finite_loss_or_most_updates_lost_after_the_first_non_finite():
    from gradlab.training import diverged

    assert diverged(math.nan, [0] * 10, 10) and diverged(math.inf, [0] * 10, 10)
    assert not diverged(1.0, [0] * 10, 10)
    assert diverged(1.0, [0, 0, 0, 0, 1, 1, 0, 1, 1, 0], 10)  # skip: 4 of the 6 batches from step 5 dropped
    assert not diverged(1.0, [0, 0, 0, 0, 1, 1, 0, 1, 0, 0], 10)  # 3 of 6, half: it trained on
    assert diverged(1.0, [0] * 9 + [1], 10)  # the last update non-finite: nothing shows it recovered
    assert diverged(1.0, [0, 0, 0, 0, 0, 0, 0, 1], 10)  # stop at step 8: 1 dropped, 2 never made


def test_a_run_restores_the_callers_threads_and_denormal_mode():
    from gradlab.config import Run
    from gradlab.sweeps import train_run
    from gradlab.training import flushes_denormals

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.set_flush_denormal(False)
    seen = []

    def progress(step, steps):  # inside the run: its own settings
        seen.append((torch.get_num_threads(), flushes_denormals()))
        if step == 3:
            raise KeyboardInterrupt  # a run ended from outside restores them too

    try:
        train(tiny_config())
        assert (torch.get_num_threads(), flushes_denormals()) == (2, False)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(), progress=progress)
        assert seen == [(1, True)] * 3 and (torch.get_num_threads(), flushes_denormals()) == (2, False)
        torch.set_flush_denormal(True)
        train(tiny_config())
        assert flushes_denormals()  # a caller that flushes keeps flushing
        failed = train_run(Run("r", tiny_config(), {}), progress=lambda step, steps: 1 / 0)
        assert failed["error"].startswith("ZeroDivisionError") and failed["env"]["threads"] == 1  # the run's
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def test_flushes_denormals_reads_the_mode():
    assert torch.set_flush_denormal(True)  # this machine supports the mode (x86 with SSE3, or AArch64)
    try:
        from gradlab.training import flushes_denormals

        assert flushes_denormals()
        torch.set_flush_denormal(False)
        assert not flushes_denormals()
        assert torch.tensor([1e-323], dtype=torch.float64).item() > 0  # a subnormal survives
    finally:
        torch.set_flush_denormal(False)


def test_a_float64_run_stores_the_profile_its_summary_was_computed_from(tmp_path):
    """The gradient of a 300-step vanilla RNN fades to ~1e-75: below float32's smallest subnormal (1.4e-45),
    which a float32 profile.npz read as 0 while the summary's dependency ratio said 6e-57."""
    from gradlab import diagnostics, readers, results
    from gradlab.vocabulary import PROFILE_FILE

    cfg = {**tiny_config(steps=1, eval_every=1, batch_size=2), "dtype": "float64"}
    cfg["task"] = {"name": "adding", "length": 300, "eval_size": 8}
    cfg["model"] = {"cell": "vanilla", "hidden": 4, "engine": "scan"}
    out = train(cfg)
    last = out["profile"]["grad_norm"][-1]  # (S,) as stored
    assert last.dtype == "float64" and (last > 0).all() and (last < 1e-45).any()  # float32 would hold 0s
    stored = diagnostics.profile_summary(last, TASKS["adding"].dependency(300))
    assert stored["dependency_ratio"] == out["summary"]["dependency_ratio"] < 1e-45  # the same numbers, exactly
    results.save_run(tmp_path / "run", cfg, out["env"], out["rows"], out["summary"], profile=out["profile"])
    read = readers.read_profile(tmp_path / "run" / PROFILE_FILE)["grad_norm"][-1]
    assert read.dtype == "float64" and (read == last).all()  # as the readers see it
