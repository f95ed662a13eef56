"""gradlab.GradientMonitor: its norms against torch's, and a run's spike rule, verdict and clip on them."""

import math

import pytest
import torch
from torch import nn

import gradlab
from gradlab.training import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(2, 6)
        self.head = nn.Linear(6, 1)
        self.scale = nn.Parameter(torch.ones(1))  # a parameter of the model itself: its own group

    def forward(self, x):  # x: (T, B, 2)
        return self.head(self.lstm(x)[0][-1]) * self.scale


def batch(step):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(5, 4, 2, generator=gen), torch.randn(4, 1, generator=gen)


def backward(model, step, factor=1.0):
    model.zero_grad()
    x, y = batch(step)
    loss = nn.functional.mse_loss(model(x), y)
    (loss * factor).backward()
    return loss


def test_the_norms_are_torch_norms_by_module_and_by_parameter():
    torch.manual_seed(0)
    model = Model()
    by_module, by_param = gradlab.GradientMonitor(model), gradlab.GradientMonitor(model, group_by="parameter")
    backward(model, 0)
    row, param_row = by_module.step(), by_param.step()
    reference = nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()  # the global pre-clip norm
    assert row["grad_norm"] == pytest.approx(reference, rel=1e-6) == param_row["grad_norm"]
    lstm = torch.cat([p.grad.flatten() for p in model.lstm.parameters()]).norm().item()
    assert row["grad_norm_lstm"] == pytest.approx(lstm, rel=1e-6)
    assert row["grad_norm_scale"] == pytest.approx(model.scale.grad.abs().item(), rel=1e-6)
    assert set(row) == {"step", "grad_norm", "grad_norm_lstm", "grad_norm_head", "grad_norm_scale", "nonfinite"}
    assert param_row["grad_norm_head.weight"] == pytest.approx(model.head.weight.grad.norm().item(), rel=1e-6)
    assert row["step"] == 1 and row["nonfinite"] == 0


def test_an_injected_spike_and_a_nan_are_flagged():
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = gradlab.GradientMonitor(model)
    for step in range(1, 81):
        factor = 1e4 if step == 60 else 1.0  # the spike: this step's gradient 10^4 times the usual
        loss = backward(model, step, factor)
        if step == 70:
            model.head.weight.grad[0, 0] = float("nan")
        monitor.step(loss)
        if step == 50:
            # no spike yet, but the norms never say "healthy": the vanishing flag is not measured here
            assert monitor.verdict() == "not exploding" and monitor.spikes() == []
            assert monitor.summary()["exploding"] is False and monitor.summary()["vanishing"] is None
        if step not in (60, 70):
            optimizer.step()
    assert monitor.spikes() == [60]
    assert monitor.verdict() == "exploding"
    summary = monitor.summary()
    assert summary["exploding"] is True and summary["vanishing"] is None and "not measured" in summary["note"]
    assert summary["nonfinite_steps"] == 1 and summary["spikes"] == 1 and summary["spike_ratio_max"] > 1000
    frame = monitor.frame()
    assert len(frame) == 80 and list(frame["step"]) == list(range(1, 81))
    assert frame.loc[69, "nonfinite"] == 1 and math.isnan(frame.loc[69, "grad_norm"])
    assert math.isnan(frame.loc[69, "grad_norm_head"]) and math.isfinite(frame.loc[69, "grad_norm_lstm"])
    assert frame["nonfinite"].drop(index=69).eq(0).all()
    finite = frame["grad_norm"].dropna()
    assert monitor.suggested_clip() == pytest.approx(finite.median())  # the NaN step left out


def run_config():
    """A tiny gradlab run whose norms spike: an IRNN trained with SGD at lr 0.1."""
    return {"name": "t", "task": {"name": "adding", "length": 10, "eval_size": 16},
            "model": {"cell": "irnn", "hidden": 8, "nonlinearity": None, "skip": 2, "engine": "scan"},
            "train": {"steps": 150, "batch_size": 8, "optimizer": "sgd", "lr": 0.1, "clip": {"kind": "none"},
                      "tbptt": None, "eval_every": 150, "on_nonfinite": "skip"},
            "diagnostics": {}, "seed": 0, "device": "cpu", "dtype": "float32", "threads": 1}


def test_the_verdict_spikes_and_suggested_clip_are_a_gradlab_runs():
    out = train(run_config())
    run = out["summary"]
    assert run["spikes"] >= 1 and run["exploding"] is True
    # replay the run's pre-clip norms through a monitor: one parameter whose gradient has that norm
    weight = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    monitor = gradlab.GradientMonitor(nn.ParameterList([weight]))
    for row in out["rows"]:
        if row["kind"] == "train":
            weight.grad = torch.tensor([row["grad_norm"]], dtype=torch.float64)
            monitor.step()
    summary = monitor.summary()
    for key in ("spikes", "spike_ratio_max", "nonfinite_steps", "suggested_clip", "grad_norm_max"):
        assert summary[key] == pytest.approx(run[key], rel=1e-12), key
    # the monitor raises the run's exploding flag; it never measures the vanishing one
    assert summary["exploding"] == run["exploding"] and summary["vanishing"] is None
    assert monitor.verdict() == "exploding" and run["verdict"] in ("exploding", "vanishing+exploding")


def test_the_monitor_writes_to_a_summary_writer(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = Model()
    with SummaryWriter(tmp_path) as writer:
        monitor = gradlab.GradientMonitor(model, writer=writer)
        for step in range(1, 4):
            monitor.step(backward(model, step))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/grad_norm", "train/grad_norm_lstm",
                                             "train/grad_norm_head", "train/grad_norm_scale", "train/nonfinite"}
    logged = [(e.step, e.value) for e in events.Scalars("train/grad_norm")]
    assert logged == [(r["step"], pytest.approx(r["grad_norm"], rel=1e-6)) for r in monitor.rows]


def test_bad_arguments():
    with pytest.raises(ValueError, match="group_by 'layer': expected one of module, parameter"):
        gradlab.GradientMonitor(Model(), group_by="layer")
    with pytest.raises(ValueError, match="no parameters that require grad"):
        gradlab.GradientMonitor(nn.ReLU())


@pytest.mark.parametrize("scale", [1e23, 1e-30, 1e-19])
def test_norms_beyond_float32_squares_are_finite_and_exact(scale):
    """float32 gradients of 1e23s (squares overflow) and 1e-30s (squares underflow): the norms are
    the hand values a·sqrt(n), and nothing is counted as non-finite."""
    model = nn.Linear(3, 2)  # weight (2, 3), bias (2,)
    monitor = gradlab.GradientMonitor(model, group_by="parameter")
    a = torch.tensor(scale, dtype=torch.float32).double().item()  # the float32 value of scale
    model.weight.grad = torch.full((2, 3), scale)
    model.bias.grad = torch.full((2,), -2 * scale)
    row = monitor.step()
    assert row["grad_norm_weight"] == pytest.approx(a * math.sqrt(6), rel=1e-6)
    assert row["grad_norm_bias"] == pytest.approx(2 * a * math.sqrt(2), rel=1e-6)
    assert row["grad_norm"] == pytest.approx(a * math.sqrt(6 + 8), rel=1e-6)
    assert row["nonfinite"] == 0 and monitor.summary()["nonfinite_steps"] == 0


def test_nonfinite_counts_the_inf_and_nan_entries_only():
    model = nn.Linear(3, 2)
    monitor = gradlab.GradientMonitor(model)
    model.weight.grad = torch.tensor([[1e23, float("inf"), 1.0], [float("nan"), -float("inf"), 1e-30]])
    model.bias.grad = torch.tensor([1e23, 0.0])
    row = monitor.step()
    assert row["nonfinite"] == 3 and math.isnan(row["grad_norm"])


@pytest.mark.parametrize("scale", [1e23, 1e-30, 1e-19])
def test_on_a_device_without_float64_the_norms_are_scaled_and_exact(scale, monkeypatch):
    """The retry of a norm float32 cannot hold, where float64 is refused (Apple's MPS): the decision says no
    float64 on this device, and the same hand values come from float32 scaled by the largest entry."""
    from gradlab import monitor as module

    monkeypatch.setattr(module, "has_float64", lambda device: False)
    model = nn.Linear(3, 2)
    monitor = gradlab.GradientMonitor(model, group_by="parameter")
    a = torch.tensor(scale, dtype=torch.float32).double().item()
    model.weight.grad = torch.full((2, 3), scale)
    model.bias.grad = torch.full((2,), -2 * scale)
    real = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda grads, *args, dtype=None: real(grads, *args) if dtype is None
                        else pytest.fail("a float64 reduction on a device without float64"))
    row = monitor.step()
    assert row["grad_norm_weight"] == pytest.approx(a * math.sqrt(6), rel=1e-6)
    assert row["grad_norm_bias"] == pytest.approx(2 * a * math.sqrt(2), rel=1e-6)


def test_half_precision_norms_are_redone_only_below_what_float32_accumulation_keeps(monkeypatch):
    """torch sums float16 and bfloat16 squares in float32: a float16 gradient of norm ~1 is trusted (no float64
    pass), while one below float16's smallest normal (6.1e-5, where its result is rounded to a subnormal), or a
    bfloat16 one of 1e-30s (squares below float32's), is reduced again; each against float64 by hand."""
    real, calls = torch._foreach_norm, []

    def counting(grads, *args, **kwargs):
        calls.append(kwargs.get("dtype"))
        return real(grads, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting)
    cases = [(torch.float16, 0.03, [None]), (torch.float16, 1e-6, [None, torch.float64]),
             (torch.bfloat16, 1e-30, [None, torch.float64])]
    for dtype, scale, passes in cases:
        model = nn.Linear(100, 10).to(dtype)  # 1,010 entries
        monitor = gradlab.GradientMonitor(model, group_by="parameter")
        model.weight.grad = torch.full((10, 100), scale, dtype=dtype)
        model.bias.grad = None  # counts as zero
        calls.clear()
        row = monitor.step()
        a = model.weight.grad[0, 0].double().item()  # scale as dtype holds it
        assert calls == passes, (dtype, scale)
        assert row["grad_norm"] == pytest.approx(a * math.sqrt(1000), rel=1e-3 if passes == [None] else 1e-12)


def test_given_a_watch_probe_the_verdict_names_the_vanishing_flag_of_its_last_profile():
    """The probe's flag on its last backward (the reference: the probe's own summary), the exploding flag
    on the whole norm series; unknown (None) with the probe's note until it has a profile, or where it cannot
    tell (no lag, a loss at every step); ``healthy`` only when the profile says so."""
    torch.manual_seed(0)
    model = Model()
    x, y = batch(0)
    for lag, reads_every_step, expected in ((4, False, "healthy"), (None, True, "not exploding")):
        probe = gradlab.watch(model.lstm, lag=lag, lyapunov=0)
        monitor = gradlab.GradientMonitor(model, watch=probe)
        assert monitor.summary()["vanishing"] is None and "not measured yet" in monitor.summary()["note"]
        model.zero_grad()
        with probe:
            out = model.lstm(x)[0]  # (T, B, 6)
            loss = (model.head(out) - y).pow(2).mean() if reads_every_step else nn.functional.mse_loss(model(x), y)
            loss.backward()
        monitor.step(loss)
        s, own = monitor.summary(), probe.summary(forward=False)
        assert monitor.verdict() == expected and s["vanishing"] == own["vanishing"] and s["note"] == own["note"]
        assert s["exploding"] is False and s["horizon"] == own["horizon"]
    assert "no lag was given" in s["note"]


def test_given_a_watch_probe_of_chaotic_dynamics_the_monitor_and_the_probe_agree():
    """A tanh nn.RNN of gain 3 (weights N(0, 9/H): chaotic, λ₁ > 0) with no spike in the norm series: the probe
    says exploding by its top Lyapunov exponent (its full summary), and the monitor given it says the same, never
    ``not exploding``; with lyapunov=0 neither measures λ₁ and both say not exploding."""
    H, T, B = 16, 40, 8
    torch.manual_seed(0)
    rnn = nn.RNN(1, H).to(torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.randn(H, H, dtype=torch.float64) * 3.0 / H ** 0.5)
    x = 0.1 * torch.randn(T, B, 1, dtype=torch.float64)
    for k, chaotic in ((2, True), (0, None)):
        probe = gradlab.watch(rnn, lag=5, lyapunov=k)
        monitor = gradlab.GradientMonitor(rnn, watch=probe)
        rnn.zero_grad()
        with probe:
            rnn(x)[0][-1].sum().backward()
        monitor.step()
        own, s = probe.summary(), monitor.summary()
        assert own["chaotic"] is chaotic and s["chaotic"] is chaotic and s["spikes"] == 0
        assert s["exploding"] is own["exploding"] is (chaotic is True)
        assert monitor.verdict() == own["verdict"]
