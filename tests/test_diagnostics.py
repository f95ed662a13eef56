"""Diagnostics: profile summaries against linear RNNs under torch.autograd, the spectrum against
torch.linalg/numpy, spikes and verdicts on norm series from real backward passes and by hand."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from gradlab.diagnostics import (
    DEFAULTS,
    Thresholds,
    detect_spikes,
    profile_summary,
    recurrent_spectrum,
    spike_ratios,
    suggest_clip,
    verdict,
)

S, H, B = 60, 5, 3


def linear_rnn_profile(a: float, window: int | None = None) -> np.ndarray:
    """Σ_b ‖∂L/∂h_t‖ of h_t = a·I h_{t-1} + x_t, L = Σ_b w·h_T, by autograd in float64.

    window: detach the state S - window steps before the end, as truncated BPTT does.
    """
    g = torch.Generator().manual_seed(0)
    U = (a * torch.eye(H, dtype=torch.float64)).requires_grad_()  # every h_t is then in the graph
    x = torch.randn(S, B, H, generator=g, dtype=torch.float64)
    w = torch.randn(H, generator=g, dtype=torch.float64)
    h, hs = torch.zeros(B, H, dtype=torch.float64), []
    for t in range(S):
        if window is not None and t == S - window:
            h = h.detach()
        h = h @ U.T + x[t]
        h.retain_grad()
        hs.append(h)
    (hs[-1] @ w).sum().backward()
    return np.array([0.0 if h.grad is None else h.grad.norm(dim=1).sum().item() for h in hs])


def exact_horizon(a: float, fraction: float) -> int:
    """The largest lag k whose gradient a^k (a < 1, peak 1 at k = 0) is at least fraction of the peak."""
    return max(k for k in range(S) if a**k >= fraction)


# ---------------------------------------------------------------------------
# profile_summary


def test_linear_rnn_profile_decays_as_a_to_the_lag():
    a, dependency = 0.9, 20
    p = linear_rnn_profile(a)
    s = profile_summary(p, dependency, horizon_fraction=0.01)
    assert s["decay_rate"] == pytest.approx(math.log(a), rel=1e-6)
    assert s["horizon"] == exact_horizon(a, 0.01) == 43
    assert s["dependency_ratio"] == pytest.approx(a ** (S - 1 - dependency), rel=1e-9)
    assert s["peak"] == pytest.approx(p[-1])


@pytest.mark.parametrize("fraction", [0.5, 0.1, 1e-3])
def test_horizon_follows_the_fraction(fraction):
    a = 0.8
    assert profile_summary(linear_rnn_profile(a), 0, fraction)["horizon"] == exact_horizon(a, fraction)


def test_growing_profile_has_positive_rate_and_full_horizon():
    a, dependency = 1.1, 20
    s = profile_summary(linear_rnn_profile(a), dependency)
    assert s["decay_rate"] == pytest.approx(math.log(a), rel=1e-6)
    assert s["horizon"] == S - 1
    assert s["dependency_ratio"] == pytest.approx(a ** (-dependency), rel=1e-9)  # peak at t = 0


def test_truncated_profile_is_cut_at_the_window():
    a, window = 0.95, 15
    p = linear_rnn_profile(a, window=window)
    assert (p[: S - window] == 0).all() and (p[S - window:] > 0).all()
    s = profile_summary(p, dependency=10)
    assert s["horizon"] == window - 1  # 0.95^14 ≈ 0.49 ≥ 0.01, but nothing beyond the window
    assert s["decay_rate"] == pytest.approx(math.log(a), rel=1e-6)  # zeros are left out of the fit
    assert s["dependency_ratio"] == 0.0


def test_horizon_is_the_farthest_lag_reached_when_the_profile_dips():
    p = np.array([0.5, 1e-6, 1e-6, 1e-6, 1.0])  # lags 4, 3, 2, 1, 0
    s = profile_summary(p, dependency=0, horizon_fraction=0.01)
    assert s["horizon"] == 4
    assert s["dependency_ratio"] == 0.5


def test_degenerate_profiles():
    assert profile_summary(np.zeros(5), 0) == {"peak": 0.0, "decay_rate": None, "dependency_ratio": 0.0,
                                               "horizon": None}
    s = profile_summary(np.array([np.nan, 1e-3, np.inf, 1.0]), dependency=0, horizon_fraction=1e-3)
    assert s["peak"] == 1.0 and s["dependency_ratio"] is None and s["horizon"] == 2
    assert s["decay_rate"] == pytest.approx(math.log(1e-3) / 2)  # fitted on lags 0 and 2 only


# ---------------------------------------------------------------------------
# recurrent_spectrum


def rotation(theta):
    return torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


@pytest.mark.parametrize("matrix, radius", [
    (torch.eye(4), 1.0),
    (torch.diag(torch.tensor([3.0, 0.5])), 3.0),
    (rotation(0.7), 1.0),
])
def test_spectrum_of_known_matrices(matrix, radius):
    s = recurrent_spectrum(matrix)
    assert set(s) == {"spectral_radius", "sigma_max"}
    assert s["spectral_radius"] == pytest.approx(radius, rel=1e-6)
    assert s["sigma_max"] == pytest.approx(radius, rel=1e-6)  # normal matrices: σ_max = radius


def test_spectrum_of_a_non_normal_matrix_tells_radius_from_sigma():
    s = recurrent_spectrum(torch.tensor([[0.5, 10.0], [0.0, 0.5]]))
    assert s["spectral_radius"] == pytest.approx(0.5, rel=1e-6)
    assert s["sigma_max"] == pytest.approx(np.linalg.svd([[0.5, 10.0], [0.0, 0.5]])[1][0], rel=1e-6)
    assert s["sigma_max"] > 10


def test_spectrum_matches_numpy_on_a_random_matrix():
    m = np.random.default_rng(0).normal(size=(16, 16))
    s = recurrent_spectrum(m)
    assert s["spectral_radius"] == pytest.approx(np.abs(np.linalg.eigvals(m)).max(), rel=1e-9)
    assert s["sigma_max"] == pytest.approx(np.linalg.svd(m)[1][0], rel=1e-9)


@pytest.mark.parametrize("names", ["ifgo", "rzn", "abcde"])  # any gate names, as a recurrence entry gives them
def test_spectrum_picks_out_each_gate_block(names):
    gates = len(names)
    blocks = [(k + 1.0) * rotation(0.3 * k) for k in range(gates)]  # radius = σ_max = k + 1
    blocks = [torch.block_diag(b, torch.tensor([[0.1 * (k + 1)]])) for k, b in enumerate(blocks)]  # (3, 3)
    s = recurrent_spectrum(torch.cat(blocks), gates=tuple(names))  # (gates·3, 3)
    assert len(s) == 2 * gates
    for k, name in enumerate(names):
        assert s[f"spectral_radius_{name}"] == pytest.approx(k + 1.0, rel=1e-6)
        assert s[f"sigma_max_{name}"] == pytest.approx(k + 1.0, rel=1e-6)


def test_spectrum_of_a_nonfinite_matrix_is_nan_and_bad_shapes_are_refused():
    s = recurrent_spectrum(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    assert math.isnan(s["spectral_radius"]) and math.isnan(s["sigma_max"])
    with pytest.raises(ValueError, match="gates"):
        recurrent_spectrum(torch.zeros(8, 3), gates=tuple("ifgo"))


def test_diagnostics_imports_without_torch():
    code = "import sys, gradlab.diagnostics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------------------
# Norm series: spikes, the clip suggestion


def rnn_grad_norms(radii: list[float], T: int = 30, seed: int = 0) -> np.ndarray:
    """Global gradient norm of a linear RNN's parameters, one fresh random batch per entry of radii,
    with the recurrent matrix a random orthogonal one scaled to that spectral radius."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    W = torch.randn(8, 2, generator=g, dtype=torch.float64) / 2
    out = []
    for r in radii:
        U = (r * q).requires_grad_()
        Wp = W.clone().requires_grad_()
        x = torch.randn(T, 16, 2, generator=g, dtype=torch.float64)
        h = torch.zeros(16, 8, dtype=torch.float64)
        for t in range(T):
            h = h @ U.T + x[t] @ Wp.T
        loss = ((h.sum(dim=1) - x[:, :, 0].sum(dim=0)) ** 2).mean()
        loss.backward()
        out.append(torch.cat([U.grad.flatten(), Wp.grad.flatten()]).norm().item())
    return np.array(out)


def test_steady_rnn_norms_have_no_spikes():
    norms = rnn_grad_norms([0.9] * 150)
    assert len(detect_spikes(norms)) == 0
    assert suggest_clip(norms) == pytest.approx(np.median(norms))


def test_rnn_scaled_past_radius_one_explodes_and_is_detected():
    norms = rnn_grad_norms([0.9] * 100 + [2.0] * 5)  # the recurrent matrix jumps to radius 2
    assert norms[100:].min() > 1e6 * np.median(norms[:100])  # 2^30 / 0.9^30 ≈ 2.5e10
    assert list(detect_spikes(norms)) == [100, 101, 102, 103, 104]
    assert verdict(norms, 0, None, 0)[0] == "exploding"


def test_spike_in_the_first_steps_is_caught():
    norms = np.r_[56.0, 1.4e8, np.full(60, 2.0)]  # an IRNN at lr 1e-2 blew up at step 2
    assert list(detect_spikes(norms)) == [1]


def test_running_median_follows_a_drifting_level_and_skips_nonfinite():
    drift = np.geomspace(0.01, 10.0, 1000)  # the level rises 1000x over training, 0.7% per step
    assert len(detect_spikes(drift)) == 0
    norms = drift.copy()
    norms[500] = 60 * norms[499]
    norms[300] = np.nan
    ratio = 60 * norms[499] / np.median(norms[450:500])  # ≈ 71: the window's median lags the drift
    assert spike_ratios(norms)[500] == pytest.approx(ratio)
    assert list(detect_spikes(norms, spike_factor=50)) == [500]
    assert list(detect_spikes(norms, spike_factor=ratio * 1.01)) == []
    assert np.isnan(spike_ratios(norms)[300])


def test_ratios_use_the_window_before_each_norm():
    norms = np.r_[np.ones(5), 10.0, 10.0, 10.0, 100.0]
    r = spike_ratios(norms, window=3)
    assert np.allclose(r[:3], 1.0)  # the first window: against its own median, or the ones before
    assert r[5] == 10.0 and r[6] == 10.0  # medians of (1, 1, 1) and (1, 1, 10)
    assert r[7] == 1.0 and r[8] == 10.0  # medians of (1, 10, 10) and (10, 10, 10)


def test_the_first_steps_follow_the_documented_rule():
    """In the first ``window`` norms, the smaller of the median of the norms before it and that of
    the first window: [1]*10 + [100]*40 jumps 100x at step 10 and stays flagged until the hundreds
    are half the history (the first window's median alone, 100, flagged nothing)."""
    norms = np.r_[np.ones(10), np.full(40, 100.0)]
    by_hand = [1 / 100] + [norms[i] / min(np.median(norms[:i]), 100.0) for i in range(1, 50)]
    np.testing.assert_array_equal(spike_ratios(norms), by_hand)
    assert list(detect_spikes(norms)) == list(range(10, 20))  # median of (10 ones, 10 hundreds) = 50.5
    assert verdict(norms, 0, None, 0)[0] == "exploding"
    # an explosion from the first step on (no calm history before it) against the first window's level
    early = np.r_[16.0, 650.0, np.full(48, 0.3)]
    assert list(detect_spikes(early)) == [0, 1]
    with_nan = np.r_[np.nan, 3.0, np.inf, 300.0]  # non-finite entries: no ratio, and not in the medians
    np.testing.assert_array_equal(spike_ratios(with_nan), [np.nan, 3.0 / 151.5, np.nan, 300.0 / 3.0])
    assert spike_ratios([]).shape == (0,) and spike_ratios([5.0]).tolist() == [1.0]


def test_suggest_clip_is_the_median_of_the_finite_norms():
    assert suggest_clip([1.0, 2.0, 3.0, 4.0, 1000.0, np.nan, np.inf]) == 3.0
    assert suggest_clip([2.0, 1.0]) == 1.5
    assert suggest_clip([np.nan, np.inf]) is None
    assert suggest_clip([]) is None


# ---------------------------------------------------------------------------
# Verdicts on constructed series and profiles

STEADY = 1.0 + 0.1 * np.sin(np.arange(300))  # norms without spikes
REACHING = 0.99 ** np.arange(50)[::-1]  # a profile whose gradient reaches far back: p[0] / peak ≈ 0.61
VANISHED = 0.5 ** np.arange(50)[::-1]  # p[10] / peak = 0.5^39 ≈ 1.8e-12


def spiky():
    norms = STEADY.copy()
    norms[200] = 1000.0
    return norms


def test_verdict_healthy():
    v, fig = verdict(STEADY, 0, REACHING, dependency=10)
    assert v == "healthy"
    assert fig["spikes"] == 0 and fig["nonfinite_steps"] == 0
    assert fig["dependency_ratio"] == pytest.approx(0.99**39) and fig["horizon"] == 49
    assert fig["dependency_lag"] == 39


def test_verdict_vanishing():
    v, fig = verdict(STEADY, 0, VANISHED, dependency=10)
    assert v == "vanishing"
    assert fig["dependency_ratio"] == pytest.approx(0.5**39)
    assert fig["horizon"] == exact_horizon(0.5, DEFAULTS.horizon_fraction) == 6
    assert fig["decay_rate"] == pytest.approx(math.log(0.5))


def test_verdict_exploding_on_a_spike():
    v, fig = verdict(spiky(), 0, REACHING, dependency=10)
    assert v == "exploding" and fig["spikes"] == 1
    assert fig["spike_ratio_max"] == pytest.approx(1000.0 / np.median(STEADY[150:200]))


def test_verdict_exploding_on_a_nonfinite_step():
    v, fig = verdict(STEADY, 1, REACHING, dependency=10)
    assert v == "exploding" and fig["nonfinite_steps"] == 1 and fig["spikes"] == 0


def test_exploding_and_vanishing_are_flagged_independently():
    for norms, nonfinite in ((spiky(), 0), (STEADY, 3)):
        v, fig = verdict(norms, nonfinite, VANISHED, dependency=10)
        assert v == "vanishing+exploding" and fig["exploding"] is True and fig["vanishing"] is True
    v, fig = verdict(spiky(), 0, REACHING, dependency=10)
    assert v == "exploding" and fig["exploding"] is True and fig["vanishing"] is False
    v, fig = verdict(STEADY, 0, VANISHED, dependency=10)
    assert v == "vanishing" and fig["exploding"] is False and fig["vanishing"] is True


def test_verdict_without_a_profile_never_says_healthy():
    v, fig = verdict(STEADY, 0, None, dependency=10)
    assert v == "not exploding" and fig["exploding"] is False and fig["vanishing"] is None
    v, fig = verdict(spiky(), 0, None, dependency=10)
    assert v == "exploding" and fig["exploding"] is True and fig["vanishing"] is None


def test_thresholds_are_configurable():
    assert verdict(STEADY, 0, REACHING, 10, Thresholds(vanishing_ratio=0.9))[0] == "vanishing"
    assert verdict(spiky(), 0, REACHING, 10, Thresholds(spike_factor=2000.0))[0] == "healthy"
    fig = verdict(STEADY, 0, VANISHED, 10, Thresholds(horizon_fraction=0.5))[1]
    assert fig["horizon"] == 1


@pytest.mark.parametrize("a", [0.9, 1.1])
def test_engine_probe_of_a_linear_rnn_decays_as_a_to_the_lag(a):
    """The training path end to end: gradlab's engine, Probe and gradient_profile.

    A ReLU RNN with U = a·I, zero bias and positive states is linear: h_t = a·h_{t-1}
    + W x_t, so with the loss at the last step ∂L/∂h_{T-1-k} = a^k ∂L/∂h_{T-1} exactly.
    """
    import torch

    from gradlab.cells import RecurrentNet
    from gradlab.tasks import TASKS, Batch
    from gradlab.training import gradient_profile

    S, B, H = 30, 4, 6
    net = RecurrentNet("irnn", 2, H, 1, seed=0).double()
    with torch.no_grad():
        net.weight_hh.copy_(a * torch.eye(H, dtype=torch.float64))
        net.weight_ih.fill_(0.5)  # positive inputs keep every state positive: ReLU is the identity
    x = torch.zeros(S, B, 2, dtype=torch.float64)
    x[0] = 1.0
    mask = torch.zeros(S, B, dtype=torch.bool)
    mask[-1] = True
    batch = Batch(x, torch.ones(S, B, dtype=torch.float64), mask, mask)
    profile = gradient_profile(net, TASKS["adding"], batch, None).numpy()
    lags = np.arange(S)[::-1]
    np.testing.assert_allclose(profile / profile[-1], a ** lags, rtol=1e-10)
    summary = profile_summary(profile, dependency=0, horizon_fraction=0.01)
    assert summary["decay_rate"] == pytest.approx(np.log(a), rel=1e-9)


def test_an_overflowed_gradient_reaches_and_counts():
    """An inf entry is a gradient that overflowed on its way back: it reaches, whatever the finite peak."""
    p = 0.5 ** np.arange(30.0)[::-1]  # (30,): 1 at lag 0, decaying; p[t] at lag 29 - t
    p[0] = np.inf  # lag 29
    s = profile_summary(p, dependency=0, horizon_fraction=0.01)
    assert s["horizon"] == 29  # the finite entries alone reach lag 6 (0.5**6 ≥ 0.01 > 0.5**7)
    assert s["peak"] == 1.0 and s["dependency_ratio"] == math.inf
    assert profile_summary(p, dependency=29, horizon_fraction=0.01)["dependency_ratio"] == 1.0
    zeros_and_inf = np.array([np.inf, 0.0, 0.0])  # nothing finite reaches: the inf still does
    assert profile_summary(zeros_and_inf, dependency=0)["horizon"] == 2
    assert profile_summary(np.array([np.nan, 0.0, 0.0]), dependency=0)["horizon"] is None  # NaN: unknown
    v, fig = verdict([1.0] * 10, 0, p, dependency=0)
    assert fig["horizon"] == 29 and fig["dependency_ratio"] == math.inf and v != "vanishing"
