"""The Lyapunov spectrum (``gradlab.lyapunov``) against independent references, in float64.

References: ``torch.autograd.functional.jacobian`` of each registry step (the state flattened by
torch's own pytree), closed forms for linear recurrences (log|a_i| of a diagonal map, log of the
eigenvalue moduli of a non-normal one, log|det| for the sum), the bound ‖J‖ ≤ ‖U‖ of a tanh rnn, two
trajectories started 1e-10 apart, and ``recurrences.unroll`` for the input of a stack's upper layer.
"""

import math

import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradlab import cells, lyapunov, recurrences
from gradlab.recurrences import ACTIVATIONS, RECURRENCES, Recurrence

F64 = torch.float64
IDENTITY = lambda z: z  # noqa: E731  (a linear rnn: h_t = W x_t + b + U h_{t-1})
SKIP_K = 2  # the skip recurrence's k: its state is the 2 last hidden states


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def gen(seed):
    return torch.Generator().manual_seed(seed)


def orthogonal(n, seed):
    return torch.linalg.qr(torch.randn(n, n, generator=gen(seed), dtype=F64))[0]


def rnn_params(U, inputs=1, seed=0):
    """rnn params (W, U, b_ih, b_hh) with U given, W random, biases 0."""
    H = U.shape[0]
    return [torch.randn(H, inputs, generator=gen(seed), dtype=F64), U, torch.zeros(H, dtype=F64),
            torch.zeros(H, dtype=F64)]


def layer_params(name, inputs, H, seed=1):
    layer = cells.RecurrentLayer(name, inputs, H).to(F64)
    cells.init_uniform(layer, gen(seed))
    return [p.detach() for p in layer.recurrent_parameters()]


def random_state(name, B, H, seed=2):
    g = gen(seed)
    return RECURRENCES[name].initial_state(lambda *shape: torch.randn(*shape, generator=g, dtype=F64), B, H, SKIP_K)


def reference_jacobians(name, x_t, state, params, act=torch.tanh):
    """Per sample ∂s_t/∂s_{t-1} (B, D, D) by torch.autograd.functional.jacobian of the batched step, the
    state flattened by torch's pytree; and the largest entry that couples two samples (must be 0)."""
    rec = RECURRENCES[name]
    leaves, spec = tree_flatten(rec.to_steps(state))
    sizes = [leaf.shape[1] for leaf in leaves]

    def step(flat):  # (B, D) -> (B, D)
        _, new = rec.step(x_t, tree_unflatten(list(flat.split(sizes, dim=1)), spec), params, act)
        return torch.cat(tree_flatten(new)[0], dim=1)

    full = torch.autograd.functional.jacobian(step, torch.cat(leaves, dim=1))  # (B, D, B, D)
    B = full.shape[0]
    blocks = torch.stack([full[b, :, b, :] for b in range(B)])
    eye = torch.eye(B, dtype=torch.bool)
    across = full.permute(0, 2, 1, 3)[~eye].abs().max() if B > 1 else torch.tensor(0.0)
    new_state = rec.from_steps(rec.step(x_t, rec.to_steps(state), params, act)[1])
    return blocks, float(across), new_state


# ---------------------------------------------------------------------------
# The Jacobian of every registry entry.

# every recurrence with every activation (the gated ones ignore it): relu's Jacobian, diag(1[a > 0]) U,
# is checked for rnn and skip as tanh's is
@pytest.mark.parametrize("method", ["jacobian", "jvp"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("name", list(RECURRENCES))
def test_step_jacobian_equals_autograd_for_every_recurrence(name, activation, method):
    B, inputs, H = 3, 2, 4
    params, state = layer_params(name, inputs, H), random_state(name, B, H)
    x_t = torch.randn(B, inputs, generator=gen(3), dtype=F64)
    ref, across, _ = reference_jacobians(name, x_t, state, params, ACTIVATIONS[activation])
    got = lyapunov.step_jacobian(name, activation, x_t, state, params, method=method)
    assert across == 0.0  # the step never couples samples: per-sample blocks are the whole Jacobian
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["jacobian", "jvp"])
@pytest.mark.parametrize("name", list(RECURRENCES))
def test_spectrum_is_the_qr_method_on_autograd_jacobians(name, method):
    """A few steps from the identity frame, k = D: the exponents equal the QR method written out on
    the reference Jacobians along the reference trajectory."""
    T, B, inputs, H = 4, 2, 2, 3
    params, state = layer_params(name, inputs, H), random_state(name, B, H)
    x = torch.randn(T, B, inputs, generator=gen(4), dtype=F64)
    D = lyapunov.step_jacobian(name, "tanh", x[0], state, params).shape[-1]
    q, total, s = torch.eye(D, dtype=F64).expand(B, D, D), torch.zeros(B, D, dtype=F64), state
    for t in range(T):
        J, _, s = reference_jacobians(name, x[t], s, params)
        q, r = torch.linalg.qr(J @ q)
        total += torch.diagonal(r, dim1=-2, dim2=-1).abs().log()
    expected = (total / T).mean(0).sort(descending=True).values
    got = lyapunov.spectrum(name, "tanh", x, state, params, D, seed=None, method=method).exponents
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# Linear recurrences: closed forms.

def test_diagonal_linear_recurrence_gives_log_abs_a_exactly():
    a = torch.tensor([0.9, -0.5, 1.2, 0.3, -1.05], dtype=F64)
    x = torch.randn(20, 3, 1, generator=gen(0), dtype=F64)  # inputs do not change a linear map's J
    state0 = torch.randn(3, 5, generator=gen(1), dtype=F64)
    params = rnn_params(torch.diag(a))
    exact = a.abs().log().sort(descending=True).values
    # the identity frame: J Q = diag(a) Q stays diagonal, so every R is diag(|a|) up to signs
    got = lyapunov.spectrum("rnn", IDENTITY, x, state0, params, 5, seed=None).exponents
    assert torch.allclose(got, exact, rtol=0, atol=1e-14)
    # the top 2 from the identity's first 2 columns would be those of a[:2] (0.9, 0.5): a random frame
    # finds the top 2 of all, to the estimator's c/T (c = log of the frame's overlap, measured 1.2 at
    # T = 20; 3/T is half the gap to the third), and its k = D exponents sum to log|det| exactly
    T = 100
    x = torch.randn(T, 3, 1, generator=gen(0), dtype=F64)
    top = lyapunov.spectrum("rnn", IDENTITY, x, state0, params, 2).exponents
    assert torch.allclose(top, exact[:2], rtol=0, atol=3 / T)
    full = lyapunov.spectrum("rnn", IDENTITY, x, state0, params, 5).exponents
    assert abs(float(full.sum()) - float(a.abs().log().sum())) < 1e-12


def test_non_normal_linear_recurrence_matches_eigenvalue_moduli_in_the_limit():
    """U upper triangular with a large off-diagonal: its singular values (5.1, 0.09) are far from its
    eigenvalue moduli (0.9, 0.5), to which the exponents converge as T grows.

    Tolerance from 1/T: with U = V Λ V⁻¹ and a random frame, (1/T) log‖Uᵀq‖ = log|λ₁| + e/T with
    |e| ≤ log κ(V) + log(1/|c|), c the frame's component along the top direction; κ(V) ≈ 25 here
    (eigenvectors 0.08 rad apart), and |c| > e⁻⁴ unless the frame is within 2 % of the wrong one:
    |e| < log 25 + 4 ≈ 7.2. λ₂ = log|det U| - λ₁ exactly (k = D). Measured: |e| between 0.8 and 2.3
    for seeds 0-3, the same at T = 100, 250, 1000 (so the error is c/T, not a bias).
    """
    U = torch.tensor([[0.9, 5.0], [0.0, 0.5]], dtype=F64)
    T = 200
    x = torch.zeros(T, 1, 1, dtype=F64)
    got = lyapunov.spectrum("rnn", IDENTITY, x, torch.zeros(1, 2, dtype=F64), rnn_params(U), 2).exponents
    eig = torch.linalg.eigvals(U).abs().log().sort(descending=True).values
    sv = torch.linalg.svdvals(U).log()
    kappa = float(torch.linalg.cond(torch.linalg.eig(U)[1]))
    tol = (math.log(kappa) + 4) / T
    assert torch.allclose(got, eig, rtol=0, atol=tol)
    assert (got - sv).abs().min() > 10 * tol  # not the singular values: a normal-matrix shortcut fails
    assert abs(float(got.sum()) - math.log(0.45)) < 1e-12  # log|det U|, exactly


# ---------------------------------------------------------------------------
# tanh rnn: contracting and chaotic.

def separation_growth(U, state0, steps):
    """How much two tanh trajectories (no input) started 1e-10 apart separate in ``steps`` steps."""
    a, b = state0, state0 + 1e-10 * torch.randn(state0.shape, generator=gen(9), dtype=F64)
    d0 = (a - b).norm()
    for _ in range(steps):
        a, b = torch.tanh(a @ U.T), torch.tanh(b @ U.T)
    return float((a - b).norm() / d0)


def test_tanh_rnn_small_weights_all_negative_large_gain_positive():
    H, B = 16, 4
    state0 = torch.randn(B, H, generator=gen(2), dtype=F64)
    # small: ‖J_t‖ = ‖diag(tanh') U‖ ≤ ‖U‖ = 0.5, so every exponent ≤ log 0.5 at any T (each |R_ii| ≤ ‖J‖)
    small = 0.5 * orthogonal(H, 1)
    x = torch.randn(50, B, 1, generator=gen(3), dtype=F64)
    got = lyapunov.spectrum("rnn", "tanh", x, state0, rnn_params(small), H).exponents
    assert (got < 0).all() and got[0] <= math.log(0.5) + 1e-12
    assert separation_growth(small, state0, 40) < 0.5 ** 40 * 1.0001
    # large gain, no input: a chaotic autonomous network (Engelken et al. 2020's regime)
    large = 3.0 * orthogonal(H, 1)
    x = torch.zeros(250, B, 1, dtype=F64)
    got = lyapunov.spectrum("rnn", "tanh", x, state0, rnn_params(large), 4, transient=50).exponents
    assert got[0] > 10 / 200  # well above the estimator's ≈ 2/T (measured 0.14)
    assert got[0] > got[-1]
    assert separation_growth(large, state0, 60) > 1e3  # independent: nearby trajectories do part


# ---------------------------------------------------------------------------
# A stack: per layer, driven by the layer below.

@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_model_spectrum_is_each_layer_driven_by_the_one_below(cell):
    T, B, inputs, H, k = 12, 3, 2, 3, 2
    model = cells.RecurrentNet(cell, inputs, H, 1, layers=2, seed=5)  # float32
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    x = torch.randn(T, B, inputs, generator=gen(6))
    got = lyapunov.model_spectrum(model, x, k)
    # references: each layer's params in float64; layer 1 driven by layer 0's states from unroll
    p0, p1 = ([p.detach().to(F64) for p in layer.recurrent_parameters()] for layer in model.layers)
    rec = model.recurrence
    zero = RECURRENCES[rec].initial_state(lambda *s: torch.zeros(*s, dtype=F64), B, H, None)
    hs0, _ = recurrences.unroll(rec, None, x.to(F64), zero, p0)
    assert len(got) == 2
    for layer, inputs, params in ((got[0], x, p0), (got[1], hs0, p1)):
        ref = lyapunov.spectrum(rec, None, inputs, zero, params, k)
        assert torch.allclose(layer.exponents, ref.exponents, rtol=0, atol=1e-12)
        assert layer.rank_lost == ref.rank_lost == 0
    assert not torch.allclose(got[0].exponents, got[1].exponents)  # the layers differ: a mix-up would show
    assert model.training and all(bool((p.grad == 7.0).all()) for p in model.parameters())


def test_stack_spectrum_is_the_union_of_the_layers():
    """The whole stack's state (both layers) as one test-only recurrence: its top exponents equal the
    union of the layers' (the block-triangular argument of ``model_spectrum``), to the estimator's c/T."""
    T, transient, B, inputs, H = 300, 50, 2, 2, 3
    model = cells.RecurrentNet("gru", inputs, H, 1, layers=2, seed=5, dtype=F64)
    p0, p1 = ([p.detach() for p in layer.recurrent_parameters()] for layer in model.layers)

    def both(x_t, state, params, act):
        h0, s0 = recurrences.gru_step(x_t, state[0], p0)
        h1, s1 = recurrences.gru_step(h0, state[1], p1)
        return h1, (s0, s1)

    stack = Recurrence(("",), both, None, lambda z, B, H, k: (z(B, H), z(B, H)))
    x = torch.randn(T, B, inputs, generator=gen(7), dtype=F64)
    zero = torch.zeros(B, H, dtype=F64)
    whole = lyapunov.spectrum(stack, None, x, (zero, zero), p0, 2 * H, transient=transient).exponents
    layers = lyapunov.model_spectrum(model, x, H, transient=transient)
    union = torch.cat([layer.exponents for layer in layers]).sort(descending=True).values
    # the two estimates share the trajectory, so they differ by their frames' c/(T - transient) only:
    # both frames are random and drawn at the transient (no QR before it), each within 4/(T - transient)
    # of the limit unless it lies within 2 % of the wrong subspace (the non-normal test's argument);
    # measured: c ≈ 3 for the largest difference
    assert torch.allclose(whole, union, rtol=0, atol=2 * 4 / (T - transient))
    assert abs(float(whole.sum() - union.sum())) < 1e-9  # log|det| of a block-triangular J: exact


# ---------------------------------------------------------------------------
# Inputs and the summary.

def test_bad_k_and_transient_are_refused_with_the_range():
    params = rnn_params(torch.eye(3, dtype=F64))
    x, s = torch.zeros(5, 1, 1, dtype=F64), torch.zeros(1, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        lyapunov.spectrum("rnn", "tanh", x, s, params, 4)
    with pytest.raises(ValueError, match=r"transient must be in \[0, T\) = \[0, 5\)"):
        lyapunov.spectrum("rnn", "tanh", x, s, params, 2, transient=5)
    with pytest.raises(ValueError, match="unknown recurrence 'nope'"):
        lyapunov.spectrum("nope", "tanh", x, s, params, 2)


def test_summary_counts_near_zero_and_takes_the_max():
    e = torch.tensor([0.3, 0.005, -0.009, -0.02, -1.0], dtype=F64)
    assert lyapunov.summary(e) == {"lyapunov_max": 0.3, "lyapunov_near_zero": 2, "lyapunov_rank_lost": None}
    assert lyapunov.summary(e, tol=0.05)["lyapunov_near_zero"] == 3
    assert math.isnan(lyapunov.summary(torch.tensor([float("nan"), 0.0]))["lyapunov_max"])
    # a stack's layers: the union of their exponents, their rank_lost summed; -inf a plain float
    layers = [lyapunov.Spectrum(e[:2], 3), lyapunov.Spectrum(torch.tensor([float("-inf")], dtype=F64), 4)]
    assert lyapunov.summary(layers) == {"lyapunov_max": 0.3, "lyapunov_near_zero": 1, "lyapunov_rank_lost": 7}
    low = lyapunov.summary(layers[1])
    assert low["lyapunov_max"] == float("-inf") and type(low["lyapunov_max"]) is float


# ---------------------------------------------------------------------------
# Dead relu units, saturation, non-finite states.

def relu_rnn_with_a_blank_prefix(prefix, T=300, B=4, inputs=3, H=8):
    """A relu rnn with zero biases from h = 0, driven by nonnegative inputs (pixel intensities, like
    digits') that are 0 for ``prefix`` steps. Through the prefix every unit is off (relu'(0) = 0):
    J_t = 0 and every direction is erased. After it W, U ≥ 0 keep every unit on, so J_t = U: the
    exponents are log|eigenvalues of U| (U = 0.5 I + a positive matrix: not normal)."""
    U = 0.5 * torch.eye(H, dtype=F64) + 0.1 * torch.rand(H, H, generator=gen(4), dtype=F64)
    params = rnn_params(U, inputs)
    params[0] = params[0].abs()
    x = torch.rand(T, B, inputs, generator=gen(5), dtype=F64)
    x[:prefix] = 0
    return x, torch.zeros(B, H, dtype=F64), params


def test_dead_relu_prefix_is_not_minus_inf_for_ever():
    """Before: QR through the prefix filled the erased columns with identity columns, units still off
    at the next step, so λ = -inf whatever the transient. Now: from any transient the spectrum equals
    the one started after the prefix (the state there is 0 either way) and log|eig U|, each to its
    random frame's (log κ(V) + 4)/(T - P) (the non-normal test's argument), and every erased direction
    is counted: all k of all B sequences at each prefix step after the transient, none after."""
    P, k = 30, 3
    x, zero, params = relu_rnn_with_a_blank_prefix(P)
    T, B = x.shape[:2]
    U = params[1]
    eig = torch.linalg.eigvals(U).abs().log().sort(descending=True).values[:k]
    tol = (math.log(float(torch.linalg.cond(torch.linalg.eig(U)[1]))) + 4) / (T - P)
    after = lyapunov.spectrum("rnn", "relu", x[P:], zero, params, k, transient=0)
    assert after.rank_lost == 0 and torch.allclose(after.exponents, eig, rtol=0, atol=tol)
    for transient, skipped in ((0, 0), (None, 10), (20, 20)):  # None: min(10, T // 10) = 10 < P
        through = lyapunov.spectrum("rnn", "relu", x, zero, params, k, transient=transient)
        assert torch.allclose(through.exponents, eig, rtol=0, atol=tol)
        assert torch.allclose(through.exponents, after.exponents, rtol=0, atol=2 * tol)
        assert through.rank_lost == B * k * (P - skipped)
    # Q_0 is drawn at t = transient, after a trajectory run without QR: exactly the spectrum from there
    at = lyapunov.spectrum("rnn", "relu", x, zero, params, k, transient=P)
    assert torch.allclose(at.exponents, after.exponents, rtol=0, atol=1e-12) and at.rank_lost == 0


def test_renewed_directions_keep_the_frame_orthonormal():
    B, D, k = 3, 6, 4
    q = torch.linalg.qr(torch.randn(B, D, k, generator=gen(0), dtype=F64))[0]
    lost = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    new = lyapunov._renew(q, lost, gen(1))
    eye = torch.eye(k, dtype=F64).expand(B, k, k)
    assert torch.allclose(new.transpose(-2, -1) @ new, eye, rtol=0, atol=1e-13)
    keep = ~lost[:, None, :].expand(B, D, k)
    assert torch.equal(new[keep], q[keep])  # the directions still carried are untouched
    assert ((new - q).abs().amax(dim=1) > 1e-3)[lost].all()  # the erased ones are new


def test_saturated_tanh_reads_strongly_negative_and_nan_stays_nan():
    """Weights ×1000 saturate every unit (tanh' = 0 exactly for |a| > 19): no explosion in λ₁, which
    reads far below any finite-gain network's (‖J‖ ≤ ‖U‖ bounds λ₁ by log‖U‖ only from above, so the
    reference is the gradient itself: tanh' of the trajectory, 0 at most steps)."""
    params = [p * 1000 for p in layer_params("rnn", 3, 16)]
    x = torch.randn(100, 4, 3, generator=gen(6), dtype=F64)
    zero = torch.zeros(4, 16, dtype=F64)
    got = lyapunov.spectrum("rnn", "tanh", x, zero, params, 4)
    hs, _ = recurrences.unroll("rnn", "tanh", x, zero, params)
    off = float((1 - hs[10:] ** 2 == 0).double().mean())  # units with tanh' = 0 exactly, after the transient
    assert off > 0.8
    assert got.exponents[0] < math.log(1e-4)  # a perturbation shrinks 10⁴-fold per step at least
    assert got.rank_lost > 0.8 * off * 4 * 4 * 90  # most of the (sequence, direction, step) erased
    summary = lyapunov.summary(got)
    assert summary["lyapunov_max"] < -9 and summary["lyapunov_near_zero"] == 0
    # a non-finite state is never "renewed" into a finite answer
    nan = lyapunov.spectrum("rnn", "tanh", x, torch.full((4, 16), float("nan"), dtype=F64),
                            layer_params("rnn", 3, 16), 4)
    assert torch.isnan(nan.exponents).all() and nan.rank_lost == 0
    assert math.isnan(lyapunov.summary(nan)["lyapunov_max"])


# ---------------------------------------------------------------------------
# Devices and cost.

def test_a_device_without_float64_computes_on_the_cpu(monkeypatch):
    """MPS has no float64: the work moves to the cpu. Checked on the cpu by telling the code the
    params' device has none: it must ask (engine.has_float64, with the params' device) and still give
    the same float64 numbers on the cpu."""
    asked = []

    def no_float64(device):
        asked.append(torch.device(device))
        return False

    model = cells.RecurrentNet("gru", 2, 3, 1, seed=5)
    x = torch.randn(20, 3, 2, generator=gen(6))
    expected = lyapunov.model_spectrum(model, x, 2)
    monkeypatch.setattr(lyapunov.engine, "has_float64", no_float64)
    got = lyapunov.model_spectrum(model, x, 2)
    params = layer_params("gru", 2, 3)
    single = lyapunov.spectrum("gru", None, x, torch.zeros(3, 3, dtype=F64), params, 2)
    assert asked and all(d == next(model.parameters()).device for d in asked)
    for result in (*got, single):
        assert result.exponents.device.type == "cpu" and result.exponents.dtype == F64
    assert torch.equal(got[0].exponents, expected[0].exponents)


def test_model_spectrum_uses_the_first_sequences():
    model = cells.RecurrentNet("lstm", 2, 3, 1, seed=5)
    x = torch.randn(20, 12, 2, generator=gen(7))
    default = lyapunov.model_spectrum(model, x, 2)[0]
    zero = RECURRENCES["lstm"].initial_state(lambda *s: torch.zeros(*s, dtype=F64), lyapunov.SEQUENCES, 3, None)
    params = [p.detach() for p in model.layers[0].recurrent_parameters()]
    ref = lyapunov.spectrum("lstm", None, x[:, :lyapunov.SEQUENCES], zero, params, 2)
    assert lyapunov.SEQUENCES == 8 and torch.allclose(default.exponents, ref.exponents, rtol=0, atol=1e-12)
    every = lyapunov.model_spectrum(model, x, 2, sequences=None)[0]
    assert not torch.allclose(every.exponents, default.exponents)  # the other 4 sequences count there
    with pytest.raises(ValueError, match="sequences must be at least 1"):
        lyapunov.model_spectrum(model, x, 2, sequences=0)
