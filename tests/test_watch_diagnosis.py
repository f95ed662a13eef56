"""gradlab.watch's forward figures and diagnosis on a user's own module (issue 23 point 7).

References, independent of gradlab: the Lyapunov exponents by the QR method written out here on
torch.autograd.functional.jacobian of torch's own nn.RNNCell/LSTMCell steps in float64; the memory
by scikit-learn's StandardScaler + Ridge + r2_score on the hidden states of the fused module run
outside watch. And the issue's scenario: an Embedding -> nn.LSTM -> Linear model at T = 200 where
watch and GradientMonitor in one loop must not contradict each other.
"""

import math

import pytest
import torch
from torch import nn

import gradlab
from gradlab import diagnostics, lyapunov, memory
from gradlab.diagnostics import DEFAULTS
from gradlab.monitor import UNMEASURED_NOTE
from gradlab.vocabulary import EXPLODING, FORGETS, NOT_EXPLODING, UNREACHED, UNTOLD
from gradlab.watching import memory_rows

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ---------------------------------------------------------------------------
# Lyapunov: the QR method by hand on autograd Jacobians of torch's cells.

def cell_step(module, layer):
    """s (D,) -> the next s, x (I,) the input: torch's *Cell with the module's layer weights; the LSTM's s is
    (h, c) concatenated, as gradlab.lyapunov flattens it."""
    lstm = isinstance(module, nn.LSTM)
    cls = nn.LSTMCell if lstm else nn.RNNCell
    size = module.input_size if layer == 0 else module.hidden_size
    cell = cls(size, module.hidden_size, **({} if lstm else {"nonlinearity": module.nonlinearity})).to(F64)
    with torch.no_grad():
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, p).copy_(getattr(module, f"{p}_l{layer}"))
    H = module.hidden_size

    def step(x, s):
        if lstm:
            h, c = cell(x[None], (s[None, :H], s[None, H:]))
            return torch.cat([h[0], c[0]])
        return cell(x[None], s[None])[0]
    return step, (lambda s: s[:H]) if lstm else (lambda s: s)


def qr_exponents(step, read_h, x, s0, k, seed=0):
    """The top k exponents (sorted) of the driven trajectories x (T, B, I) from s0 (B, D), averaged over the B
    sequences, and the layer's hidden states (T, B, H): Q_0 random orthonormal (B, D, k) from ``seed`` (the
    frame gradlab draws), drawn after min(10, T // 10) steps, then Q R = J_t Q, λ_i = mean log|R_ii|."""
    T, B, _ = x.shape
    D = s0.shape[1]
    transient = min(10, T // 10)
    q = torch.linalg.qr(torch.randn(B, D, k, generator=torch.Generator().manual_seed(seed), dtype=F64))[0]
    total, s, hs = torch.zeros(B, k, dtype=F64), s0.clone(), []
    for t in range(T):
        for b in range(B):
            if t >= transient:
                J = torch.autograd.functional.jacobian(lambda v, x_tb=x[t, b]: step(x_tb, v), s[b],
                                                       vectorize=True)  # (D, D)
                q[b], r = torch.linalg.qr(J @ q[b])
                total[b] += torch.diagonal(r).abs().log()
        with torch.no_grad():
            s = torch.stack([step(x[t, b], s[b]) for b in range(B)])
        hs.append(read_h(s.T).T)
    return (total / (T - transient)).mean(dim=0).sort(descending=True).values, torch.stack(hs)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_the_lyapunov_exponents_are_the_qr_method_on_autograd_jacobians_of_torchs_cells(kind):
    torch.manual_seed(0)
    T, B, IN, H, k = 24, lyapunov.SEQUENCES + 3, 3, 4, 3  # the first SEQUENCES sequences drive it
    m = (nn.LSTM(IN, H, num_layers=2) if kind == "lstm" else nn.RNN(IN, H, num_layers=2)).to(F64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, IN, generator=gen, dtype=F64)
    h0 = torch.randn(2, B, H, generator=gen, dtype=F64)  # the forward's own initial state is the trajectory's
    hx = (h0, torch.randn(2, B, H, generator=gen, dtype=F64)) if kind == "lstm" else h0
    with gradlab.watch(m, lag=T - 1, lyapunov=k) as probe:
        m(x, hx)[0][-1].sum().backward()
    s = probe.summary()

    n = lyapunov.SEQUENCES
    inputs, parts = x[:, :n], (hx if kind == "lstm" else (hx,))
    for layer, suffix in ((0, ""), (1, "_l1")):
        step, read_h = cell_step(m, layer)
        s0 = torch.cat([p[layer, :n] for p in parts], dim=1)  # (n, D)
        exponents, inputs = qr_exponents(step, read_h, inputs, s0, k)
        assert s[f"lyapunov_max{suffix}"] == pytest.approx(exponents[0].item(), rel=1e-9, abs=1e-12)
        assert s[f"lyapunov_near_zero{suffix}"] == int((exponents.abs() < lyapunov.NEAR_ZERO_TOL).sum())
    assert s["chaotic"] is False and s["exploding"] is False  # untrained: every exponent negative
    assert max(s["lyapunov_max"], s["lyapunov_max_l1"]) < 0


def test_a_chaotic_rnn_is_flagged_exploding_by_its_top_exponent_without_a_spike():
    """A tanh rnn of gain 3 (weights N(0, 9/H): Sompolinsky, Crisanti & Sommers 1988's chaotic regime) driven
    weakly: λ₁ > 0 by the hand-written QR method, so ``chaotic`` and ``exploding``; gain 0.3: contracting."""
    H, T, B = 16, 40, lyapunov.SEQUENCES
    for gain, chaotic in ((3.0, True), (0.3, False)):
        torch.manual_seed(0)
        m = nn.RNN(1, H).to(F64)
        with torch.no_grad():
            m.weight_hh_l0.copy_(torch.randn(H, H, dtype=F64) * gain / H ** 0.5)
        x = 0.1 * torch.randn(T, B, 1, dtype=F64)
        h0 = torch.randn(1, B, H, dtype=F64)
        with gradlab.watch(m, lag=T - 1, lyapunov=2) as probe:
            m(x, h0)[0][-1].sum().backward()
        s = probe.summary()
        step, read_h = cell_step(m, 0)
        reference = qr_exponents(step, read_h, x, h0[0], 2)[0][0].item()
        assert s["lyapunov_max"] == pytest.approx(reference, rel=1e-9)
        assert (reference > diagnostics.LYAPUNOV_TOL) is chaotic
        assert s["chaotic"] is chaotic and s["exploding"] is chaotic and (EXPLODING in s["verdict"]) is chaotic
        assert s["nonfinite_steps"] == 0  # no overflow: the flag is the forward dynamics' alone
        assert (EXPLODING in probe.diagnose().cases) is chaotic


def test_the_exponents_are_computed_once_per_forward_and_weights_and_need_an_unmodified_input(monkeypatch):
    torch.manual_seed(0)
    m = nn.GRU(2, 3).to(F64)
    x = torch.randn(12, 5, 2, dtype=F64)
    with gradlab.watch(m, lyapunov=2) as probe:
        m(x)[0][-1].sum().backward()
    first = probe.summary()["lyapunov_max"]
    calls, real = [], lyapunov.model_spectrum
    monkeypatch.setattr(lyapunov, "model_spectrum", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert probe.summary()["lyapunov_max"] == first and calls == []  # cached
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.5)  # an optimizer step would do this: the weights' version moves
    assert probe.summary()["lyapunov_max"] != first and calls == [1]
    x.mul_(2)  # the kept input is the caller's tensor: changed in place, it is no longer the forward's
    s = probe.summary()
    assert s["lyapunov_max"] is None and "modified in place" in s["note"] and calls == [1]
    assert "lyapunov_max" not in summary_of(m, x, lyapunov=0)


def summary_of(m, x, **kwargs):
    with gradlab.watch(m, **kwargs) as probe:
        m(x)[0][-1].sum().backward()
    return probe.summary()


# ---------------------------------------------------------------------------
# Memory: a delay line that stores its input, against scikit-learn on the same states.

def delay_line(H=4, eps=1e-3):
    """nn.RNN(1, H, tanh, no bias): h_t[0] = tanh(eps x_t), h_t[j] = tanh(h_{t-1}[j-1]): h_t holds x_t ... x_{t-H+1}
    (each through a few near-identity tanh at scale eps), and nothing older (the shift is nilpotent)."""
    m = nn.RNN(1, H, bias=False).to(F64)
    with torch.no_grad():
        m.weight_ih_l0.zero_()[0, 0] = eps
        m.weight_hh_l0.copy_(torch.diag(torch.ones(H - 1, dtype=F64), -1))
    return m


def sklearn_r2(h, target):
    """scikit-learn's held-out R² of a StandardScaler + Ridge(alpha=1) readout fitted on the first half."""
    pipeline = pytest.importorskip("sklearn.pipeline")
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    h, target = h.numpy(), target.numpy()
    n = len(h) // 2
    model = pipeline.make_pipeline(StandardScaler(), Ridge(alpha=memory.DEFAULT_ALPHA)).fit(h[:n], target[:n])
    return r2_score(target[n:], model.predict(h[n:]))


def test_the_memory_of_a_stored_input_is_1_and_of_one_not_stored_chance_as_scikit_learn_scores_them():
    T, B, H = 12, 200, 4
    m = delay_line(H)
    x = torch.randn(T, B, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    h_last = m(x)[0][-1].detach()  # the fused module, outside watch: (B, H)
    n_fit = B // 2
    spread = math.sqrt(2 * H / (n_fit - H) ** 2 + 4 * H / ((n_fit - H) * (B - n_fit)))  # memory.readout_score
    for lag, stored in ((2, True), (H - 1, True), (H + 2, False)):
        with gradlab.watch(m, lag=lag, lyapunov=0) as probe:
            m(x)[0][-1].sum().backward()
        s = probe.summary()
        reference = sklearn_r2(h_last, x[T - 1 - lag])
        assert s["memory"] == pytest.approx(reference, abs=1e-9)
        if stored:
            assert s["memory"] > 0.999
        else:  # within three spreads of the permutation null, which sits below 0 (overfitting H columns)
            assert abs(s["memory"] - s["memory_chance"]) < 3 * spread and s["memory_chance"] < 0
        assert s["note"] is None or "memory" not in s["note"]


@pytest.mark.parametrize("H", [4, 8, 16])
def test_the_memory_of_a_delay_line_at_the_fewest_sequences_is_scikit_learns_on_every_seed(H):
    """At B = memory_rows(H), the fewest sequences summary reads a memory from, held-out states lie a few SDs
    beyond what the fitting half shows on many seeds; none is left out of the readout as a saturated unit
    would be, so watch's memory is scikit-learn's on every seed (a bound at sqrt(n_fit - 1) SDs read the
    delay line at H = 4, which holds the input, at R² -2.76 on some seeds)."""
    T, B, lag = 12, memory_rows(H), 2
    m = delay_line(H)
    for seed in range(20):
        x = torch.randn(T, B, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)
        with gradlab.watch(m, lag=lag, lyapunov=0) as probe:
            m(x)[0][-1].sum().backward()
        reference = sklearn_r2(m(x)[0][-1].detach(), x[T - 1 - lag])
        assert probe.summary()["memory"] == pytest.approx(reference, abs=1e-8), seed


def test_the_memory_of_one_hot_symbols_is_an_accuracy_and_too_few_sequences_give_none_with_the_reason():
    """Three symbols, one-hot; units 0-2 take the input, units 3-5 the previous step's units 0-2: h_t holds
    x_{t-1}'s symbol and nothing older. Scored as memory_curve scores symbols (accuracy of a ridge
    classifier), against scikit-learn's StandardScaler + RidgeClassifier on the same states."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    T, B = 10, 120
    m = nn.RNN(3, 6, bias=False).to(F64)
    with torch.no_grad():
        m.weight_ih_l0.zero_()[:3] = torch.eye(3, dtype=F64)
        m.weight_hh_l0.zero_()[3:, :3] = torch.eye(3, dtype=F64)
    symbols = torch.randint(0, 3, (T, B), generator=torch.Generator().manual_seed(0))
    x = nn.functional.one_hot(symbols, 3).to(F64)  # (T, B, 3)
    h_last = m(x)[0][-1].detach().numpy()
    for lag in (1, 3):
        with gradlab.watch(m, lag=lag, lyapunov=0) as probe:
            m(x)[0][-1].sum().backward()
        s = probe.summary()
        target, n = symbols[T - 1 - lag].numpy(), B // 2
        ridge = make_pipeline(StandardScaler(), RidgeClassifier(alpha=memory.DEFAULT_ALPHA)).fit(h_last[:n], target[:n])
        assert s["memory"] == pytest.approx(ridge.score(h_last[n:], target[n:]), abs=1e-12)
        counts = torch.bincount(symbols[T - 1 - lag, :n], minlength=3)
        assert s["memory_chance"] == (symbols[T - 1 - lag, n:] == counts.argmax()).double().mean().item()
    assert summary_of(m, x, lag=1, lyapunov=0)["memory"] == 1.0  # held exactly
    assert summary_of(m, x, lag=3, lyapunov=0)["memory"] < 0.6  # not held: about a third right

    # too few to fit a readout of 6 units on half of them: None and why, not a number from nothing
    need = memory_rows(6)
    assert need == 16 and memory_rows(1) == memory.MIN_ROWS + 2
    with gradlab.watch(m, lag=1, lyapunov=0) as probe:
        m(x[:, :need - 1])[0][-1].sum().backward()
    s = probe.summary()
    assert s["memory"] is None and s["memory_chance"] is None
    assert f"{need - 1} sequences, a readout of 6 units needs at least {need}" in s["note"]
    assert summary_of(m, x[:, :need], lag=1, lyapunov=0)["memory"] is not None


# ---------------------------------------------------------------------------
# Which lag: what the figures can tell without one.

def test_without_a_lag_a_loss_at_one_step_reads_the_first_step_and_at_many_steps_tells_what_is_unknown():
    torch.manual_seed(0)
    m = nn.LSTM(2, 4).to(F64)
    x = torch.randn(30, 6, 2, dtype=F64)
    last = summary_of(m, x, lyapunov=0)  # the loss reads the last step only
    assert last["loss_steps"] == 1 and last["dependency_lag"] == 29 and last["vanishing"] in (True, False)

    with gradlab.watch(m, lyapunov=0) as probe:  # through the final state only: still one step read
        _, (h, c) = m(x)
        (h.sum() + c.sum()).backward()
    s = probe.summary()
    assert s["loss_steps"] == 1 and s["dependency_lag"] == 29

    with gradlab.watch(m, lyapunov=0) as probe:  # a character model: a loss at every step but the first
        out, _ = m(x)
        out[1:].pow(2).sum().backward()
    s = probe.summary()
    assert s["loss_steps"] == 29 and s["horizon"] >= 28  # step 1's own direct term reaches lag 28
    assert s["vanishing"] is None and s["dependency_ratio"] is None and s["dependency_lag"] is None
    assert s["verdict"] == NOT_EXPLODING and s["memory"] is None
    assert "29 of 30 steps and no lag was given" in s["note"] and "reaches at least lag 28" in s["note"]
    assert probe.diagnose().cases == (UNTOLD,)
    given = probe.summary(lag=10)  # a lag the user knows: the ratio is an upper bound, above vanishing_ratio
    assert given["dependency_ratio_bound"] is True and given["dependency_ratio"] > DEFAULTS.vanishing_ratio
    assert given["vanishing"] is None and "upper bound" in given["note"] and "unknown" in given["note"]


# ---------------------------------------------------------------------------
# diagnose() on constructed situations.

def test_diagnose_names_a_gradient_that_does_not_reach_and_a_state_that_does_not_hold():
    torch.manual_seed(0)
    m = nn.RNN(1, 8).to(F64)
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.1)  # contracting: nothing reaches 30 steps back, nothing is kept
    x = torch.randn(40, 64, 1, dtype=F64)
    with gradlab.watch(m, lag=30, lyapunov=0) as probe:
        m(x)[0][-1].sum().backward()
    d = probe.diagnose()
    assert d.cases == (UNREACHED,) and "lag 30" in d.text and "model.cell: lstm" in d.remedies

    # a gradient that reaches but a state that does not hold the input: an orthogonal recurrence at a small input
    # scale (nearly linear: the gradient keeps its norm over 30 steps back) sums T = 100 inputs into 8 units, so
    # the input at lag 30 is one of 100 superposed directions. Linear and with unit-variance inputs, the best
    # readout of it from h_{T-1} = Σ_k u_k x_{T-1-k} (u_k = W^k w_ih) has R² u_30ᵀ Σ⁻¹ u_30, Σ = Σ_k u_k u_kᵀ
    # (the 100 of them sum to tr(I) = 8: 0.08 on average), far below the half way to 1 the diagnosis asks
    T, H, lag = 100, 8, 30
    torch.manual_seed(0)
    m = nn.RNN(1, H, bias=False).to(F64)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.linalg.qr(torch.randn(H, H, dtype=F64))[0])
        m.weight_ih_l0.mul_(0.01 / m.weight_ih_l0.norm())
    u = [torch.linalg.matrix_power(m.weight_hh_l0.detach(), k) @ m.weight_ih_l0.detach()[:, 0] for k in range(T)]
    sigma = sum(torch.outer(v, v) for v in u)
    population = (u[lag] @ torch.linalg.solve(sigma, u[lag])).item()
    x = torch.randn(T, 256, 1, dtype=F64)
    with gradlab.watch(m, lag=lag, lyapunov=0) as probe:
        m(x)[0][-1].sum().backward()  # the loss at the last step only: the ratio is the gradient from there
    s = probe.summary()
    assert s["dependency_ratio_bound"] is False and s["dependency_ratio"] > 0.5 and s["vanishing"] is False
    assert population < 0.2 and s["memory"] < 0.3
    d = probe.diagnose()
    assert d.cases == (FORGETS,) and "model.cell: lstm" in d.remedies


def test_a_dependency_ratio_that_is_only_an_upper_bound_flags_vanishing_below_the_threshold_and_nothing_above():
    """A loss that also reads steps between the dependency and the end adds their direct terms to the profile:
    its ratio is an upper bound on the gradient from the end, which proves vanishing below vanishing_ratio and
    nothing above it."""
    torch.manual_seed(0)
    m = nn.RNN(1, 8).to(F64)
    with torch.no_grad():
        m.weight_hh_l0.mul_(0.1)  # contracting
    x = torch.randn(40, 64, 1, dtype=F64)
    with gradlab.watch(m, lag=30, lyapunov=0) as probe:
        m(x)[0][-1].sum().backward()
    from_the_end = probe.summary()["dependency_ratio"]
    assert from_the_end < 1e-20  # the gradient from the last step does not reach lag 30

    with gradlab.watch(m, lag=30, lyapunov=0) as probe:  # a loss at every step
        m(x)[0].sum().backward()
    s = probe.summary()
    assert s["dependency_ratio_bound"] is True and s["dependency_ratio"] > 0.5  # step 9's own direct term
    assert s["vanishing"] is None and s["verdict"] == NOT_EXPLODING and "upper bound" in s["note"]
    d = probe.diagnose()
    assert d.cases == (UNTOLD,) and "upper bound" in d.text and "ratio <" in d.text and d.remedies == ()

    with gradlab.watch(m, lag=30, lyapunov=0) as probe:  # the last step and, faintly, lag 4: still a bound
        out = m(x)[0]
        (out[-1].sum() + 1e-12 * out[-5].sum()).backward()
    s = probe.summary()
    assert s["dependency_ratio_bound"] is True and s["dependency_ratio"] < DEFAULTS.vanishing_ratio
    assert s["vanishing"] is True
    d = probe.diagnose()
    assert d.cases == (UNREACHED,) and "ratio <" in d.text


# ---------------------------------------------------------------------------
# The issue's scenario: watch and GradientMonitor in one loop.

class CharModel(nn.Module):
    def __init__(self, vocab=8, hidden=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):  # x: (B, T) symbols -> (B, T, vocab) logits
        return self.head(self.lstm(self.embed(x))[0])


def test_the_issue_scenario_watch_and_the_monitor_in_one_loop_agree():
    V, T, B = 8, 200, 64
    torch.manual_seed(0)
    model = CharModel(V)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    probe = gradlab.watch(model.lstm, lag=T - 1)  # the target is the first symbol, read at the last step
    alone, told = gradlab.GradientMonitor(model), gradlab.GradientMonitor(model, watch=probe)
    assert told.summary()["vanishing"] is None and "not measured yet" in told.summary()["note"]
    for _ in range(3):
        x = torch.randint(0, V, (B, T), generator=gen)
        optimizer.zero_grad()
        with probe:
            loss = nn.functional.cross_entropy(model(x)[:, -1], x[:, 0])
            loss.backward()
        alone.step(loss)
        told.step(loss)
        optimizer.step()
    s = probe.summary()
    assert s["vanishing"] is True and s["verdict"] == "vanishing" and s["horizon"] < 20 and s["loss_steps"] == 1
    # the monitor alone says what it cannot see, never "healthy"; given the probe, it names the vanishing flag
    assert alone.verdict() == NOT_EXPLODING and alone.summary()["note"] == UNMEASURED_NOTE
    assert told.verdict() == "vanishing" and told.summary()["horizon"] == s["horizon"]
    assert s["lyapunov_max"] < 0 and s["memory"] is not None and s["memory_chance"] is not None
    assert 0 <= s["long_term_share"] <= 1
    d = probe.diagnose()
    assert d.cases[0] == UNREACHED and "lag 199" in d.text and "model.cell: lstm" not in d.remedies

    # a character model: the next symbol at every step, no lag given: neither healthy nor vanishing
    char = gradlab.watch(model.lstm, lyapunov=0)
    x = torch.randint(0, V, (B, T), generator=gen)
    with char:
        logits = model(x)
        nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)).backward()
    c = char.summary()
    assert c["verdict"] == NOT_EXPLODING and c["vanishing"] is None and c["loss_steps"] == T - 1
    assert "no lag was given" in c["note"]
