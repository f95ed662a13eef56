"""The long-term share of the recurrent weights' gradient (issue 23, point 4) against an independent reference.

Pascanu, Mikolov & Bengio 2013 §2 (eq. 3-5): ∂L/∂U = Σ_k (the term of U's immediate use at step k). The
reference builds the unrolled graph with torch's own ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` (skip:
the registry's step, torch has no such cell), in float64, with U at the steps k ≤ cut one leaf copy and at
k > cut another: their .grad are G_long and G_short, by autograd, with no split written by hand.
gradlab's engine (``recurrences.scan``) and autograd path (``recurrences.unroll``) must give the same two
parts from the backward that records the profile, and the same share.
"""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from gradlab import recurrences
from gradlab.cells import RecurrentNet
from gradlab.diagnostics import Thresholds
from gradlab.recurrences import Probe, long_term_share
from gradlab.tasks import TASKS, Batch
from gradlab.training import diagnose, gradient_profiles, gradient_profiles_and_shares, train

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}
PATHS = {"engine": recurrences.scan, "autograd": recurrences.unroll}
TORCH_CELLS = {"rnn": lambda i, h: nn.RNNCell(i, h, nonlinearity="tanh"), "lstm": nn.LSTMCell, "gru": nn.GRUCell}
SKIP_K = 3
# T = 37: three chunks of the engine's sweep (CHUNK = 16), so a cut can straddle one
T, B, N_IN, H = 37, 3, 2, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(rec, seed=0, zero_state=False):
    """x (T, B, N_IN), a random (or zero) initial state, params in torch's layouts, float64."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=F64)
    g = len(recurrences.RECURRENCES[rec].gates)
    params = [r(g * H, N_IN, scale=N_IN ** -0.5), r(g * H, H, scale=1.2 * H ** -0.5), r(g * H, scale=0.3),
              r(g * H, scale=0.3)]
    if rec == "skip":
        params.append(r(H, H, scale=0.5 * H ** -0.5))
    shape = {"skip": (SKIP_K, B, H)}.get(rec, (B, H))
    draw = (lambda: torch.zeros(shape, dtype=F64)) if zero_state else (lambda: r(*shape, scale=0.5))
    state = (draw(), draw()) if rec == "lstm" else draw()
    return r(T, B, N_IN), state, params


def loss_of(kind, hs):
    """A loss at the last step only (adding's shape) or at every step (copy's), random weights."""
    w = torch.randn(hs.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    return (hs[-1] * w[-1]).sum() if kind == "last" else (hs * w).sum() + (hs ** 2).mean()


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def reference_parts(rec, x, state, params, cut, loss, window=None):
    """(G_long, G_short) by autograd on the graph cut at ``cut``: one leaf copy of each recurrent weight
    for the steps k ≤ cut, another for k > cut. window: the state detached before every step t > 0
    with t % window == 0 (truncated BPTT, as ``unroll`` defines it)."""
    recurrent = recurrences.RECURRENCES[rec].recurrent
    copies = [[params[i].detach().clone().requires_grad_() for i in recurrent] for _ in range(2)]  # long, short
    hs = []
    if rec == "skip":
        past = tuple(state.unbind(0))
    else:
        cell = TORCH_CELLS[rec](N_IN, H).double()
        h = state
    for t in range(x.shape[0]):
        u = copies[0] if t <= cut else copies[1]
        if window and t > 0 and t % window == 0 and rec == "skip":
            past = detach(past)
        elif window and t > 0 and t % window == 0:
            h = detach(h)
        if rec == "skip":
            h_t, past = recurrences.skip_step(x[t], past, [params[0], u[0], params[2], params[3], u[1]], torch.tanh)
        else:
            weights = {"weight_ih": params[0], "weight_hh": u[0], "bias_ih": params[2], "bias_hh": params[3]}
            h = functional_call(cell, weights, (x[t], h))
            h_t = h[0] if rec == "lstm" else h
        hs.append(h_t)
    loss_of(loss, torch.stack(hs)).backward()
    return [[torch.zeros_like(c) if c.grad is None else c.grad for c in part] for part in copies]


def gradlab_parts(path, rec, x, state, params, cut, loss, window=None):
    """(G_long, G_short) a Probe with ``cut`` receives, and the recurrent weights' own .grad."""
    leaves = [p.detach().clone().requires_grad_() for p in params]
    probe = Probe(cut)
    hs, _ = PATHS[path](rec, "tanh", x, state, leaves, window=window, probe=probe)
    loss_of(loss, hs).backward()
    assert probe.norms is not None and probe.norms.shape == (T, B)  # the profile, from the same backward
    return [list(probe.long_term), list(probe.short_term)], [leaves[i].grad for i in
                                                            recurrences.RECURRENCES[rec].recurrent]


def share_of(parts):
    """The share written out from its definition, in float64."""
    a, b = (math.sqrt(sum(float((g ** 2).sum()) for g in part)) for part in parts)
    return a / (a + b)


def assert_parts(got, want):
    for part_got, part_want in zip(got, want, strict=True):
        for g, w in zip(part_got, part_want, strict=True):
            torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("loss", ["last", "every"])
@pytest.mark.parametrize("cut", [0, 20, 36])
@pytest.mark.parametrize("rec", ["rnn", "lstm", "gru", "skip"])
@pytest.mark.parametrize("path", PATHS)
def test_share_equals_autograd_on_a_graph_cut_at_the_lag(path, rec, cut, loss):
    """cut 20 splits the sweep's middle chunk [16, 32); 36 = T - 1: every use is long-term."""
    x, state, params = make(rec, seed=cut)
    want = reference_parts(rec, x, state, params, cut, loss)
    got, grads = gradlab_parts(path, rec, x, state, params, cut, loss)
    assert_parts(got, want)
    assert long_term_share(*got) == pytest.approx(share_of(want), abs=1e-10)
    assert 0 < share_of(want) <= 1  # a random initial state: the step-0 term is not 0
    for g_long, g_short, g in zip(*got, grads, strict=True):  # the two parts add up to U's gradient
        torch.testing.assert_close(g_long + g_short, g, **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cut, share", [(-1, 0.0), (-5, 0.0), (T - 1, 1.0), (T + 10, 1.0)])
def test_a_cut_outside_the_window_puts_everything_on_one_side(path, cut, share):
    x, state, params = make("gru", seed=4)
    got, grads = gradlab_parts(path, "gru", x, state, params, cut, "every")
    assert long_term_share(*got) == share
    empty = got[0] if share == 0 else got[1]
    assert all(torch.count_nonzero(g) == 0 for g in empty)
    torch.testing.assert_close(got[0][0] + got[1][0], grads[0], **TOL)


@pytest.mark.parametrize("rec", ["rnn", "lstm", "gru", "skip"])
@pytest.mark.parametrize("path", PATHS)
def test_dependency_at_step_0_with_the_zero_state_has_no_long_term_part(path, rec):
    """d = 0: U's only use at a step ≤ 0 multiplies h_{-1} = 0 (the zero initial state), so G_long = 0
    exactly and the share is 0 - as the reference says too (with a random state it is not: above)."""
    x, state, params = make(rec, seed=9, zero_state=True)
    want = reference_parts(rec, x, state, params, 0, "last")
    got, _ = gradlab_parts(path, rec, x, state, params, 0, "last")
    assert_parts(got, want)
    assert all(torch.count_nonzero(g) == 0 for g in want[0] + got[0])
    assert long_term_share(*got) == 0.0


@pytest.mark.parametrize("rec", ["rnn", "lstm", "gru", "skip"])
@pytest.mark.parametrize("path", PATHS)
def test_truncation_inside_the_forward(path, rec):
    """window 5 (truncated BPTT inside one forward): the split is by step, whatever window a term is in."""
    x, state, params = make(rec, seed=2)
    want = reference_parts(rec, x, state, params, 12, "every", window=5)
    got, _ = gradlab_parts(path, rec, x, state, params, 12, "every", window=5)
    assert_parts(got, want)
    assert long_term_share(*got) == pytest.approx(share_of(want), abs=1e-10)


@pytest.mark.parametrize("rec", ["rnn", "lstm", "gru", "skip"])
@pytest.mark.parametrize("path", PATHS)
def test_a_gradient_penalty_keeps_the_record_of_the_gradient_it_differentiates(path, rec):
    """backward(create_graph=True) records the parts, as for the profile; the penalty's later backward
    through that graph does not overwrite them."""
    x, state, params = make(rec, seed=6)
    want = reference_parts(rec, x, state, params, 20, "every")
    leaves = [p.detach().clone().requires_grad_() for p in params]
    probe = Probe(20)
    hs, _ = PATHS[path](rec, "tanh", x, state, leaves, probe=probe)
    grads = torch.autograd.grad(loss_of("every", hs), leaves, create_graph=True)
    sum((g ** 2).sum() for g in grads).backward()
    assert_parts([list(probe.long_term), list(probe.short_term)], want)


# ---------------------------------------------------------------------------
# through training: gradient_profiles_and_shares and diagnose

S, NB = 24, 5


def regression_batch(seed=0):
    """Random inputs and targets; the loss at the last step and at two earlier ones."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(S, NB, 2, generator=gen, dtype=F64)
    y = torch.randn(S, NB, generator=gen, dtype=F64)
    mask = torch.zeros(S, NB, dtype=torch.bool)
    mask[[6, 15, S - 1]] = True
    return Batch(x, y, mask, mask)


def reference_net(net, batch, cut, window):
    """Per layer (G_long, G_short) of ``net``'s loss, by autograd on torch's cells, each layer's weight_hh
    two leaf copies split at ``cut``; the state detached at every window boundary (TBPTT(k, k))."""
    rec, task = net.recurrence, TASKS["adding"]
    x, per_layer = batch.x, []
    for layer in net.layers:
        cell = TORCH_CELLS[rec](x.shape[-1], net.hidden).double()
        copies = [layer.weight_hh.detach().clone().requires_grad_() for _ in range(2)]
        zeros = torch.zeros(NB, net.hidden, dtype=F64)
        h, hs = ((zeros, zeros) if rec == "lstm" else zeros), []
        for t in range(S):
            if window and t > 0 and t % window == 0:
                h = detach(h)
            weights = {"weight_ih": layer.weight_ih.detach(), "weight_hh": copies[t > cut],
                       "bias_ih": layer.bias_ih.detach(), "bias_hh": layer.bias_hh.detach()}
            h = functional_call(cell, weights, (x[t], h))
            hs.append(h[0] if rec == "lstm" else h)
        x = torch.stack(hs)
        per_layer.append(copies)
    out = nn.functional.linear(x, net.readout.weight.detach(), net.readout.bias.detach())
    loss = (task.step_loss(out, batch.y) * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    return [[[c.grad] for c in copies] for copies in per_layer]


@pytest.mark.parametrize("window", [None, 8, 5])
@pytest.mark.parametrize("engine", ["scan", "autograd"])
@pytest.mark.parametrize("cell", ["vanilla", "lstm", "gru"])
def test_training_backward_gives_the_share_of_each_update(cell, engine, window):
    """TBPTT(k, k): each update's split is summed. Window 5 is shorter than the lag from the last loss
    (23) to the cut (10): the long-term part then comes from the loss at step 6 alone, within its window."""
    net = RecurrentNet(cell, 2, 4, 1, engine=engine, seed=1, dtype=F64)
    batch, cut = regression_batch(), 10
    want = reference_net(net, batch, cut, window)[0]
    profiles, shares = gradient_profiles_and_shares(net, TASKS["adding"], batch, window, cut)
    assert shares == [pytest.approx(share_of(want), abs=1e-10)]
    assert 0 < shares[0] < 1
    torch.testing.assert_close(profiles, gradient_profiles(net, TASKS["adding"], batch, window), **TOL)
    assert all(p.grad is None for p in net.parameters())  # no update, .grad cleared as before


def test_a_window_that_holds_no_loss_near_the_cut_gives_no_long_term_share():
    """The loss at the last step only, a window of 6 and the cut at 4: no update both carries a loss and
    back-propagates to a step ≤ 4, so the truncated gradient has no long-term part at all."""
    net = RecurrentNet("lstm", 2, 4, 1, seed=1, dtype=F64)
    b = regression_batch()
    mask = torch.zeros_like(b.loss_mask)
    mask[-1] = True
    batch = Batch(b.x, b.y, mask, mask)
    want = reference_net(net, batch, 4, 6)[0]
    assert torch.count_nonzero(want[0][0]) == 0 and torch.count_nonzero(want[1][0]) > 0
    assert gradient_profiles_and_shares(net, TASKS["adding"], batch, 6, 4)[1] == [0.0]
    assert gradient_profiles_and_shares(net, TASKS["adding"], batch, None, 4)[1][0] > 0  # full BPTT reaches


@pytest.mark.parametrize("engine", ["scan", "autograd"])
@pytest.mark.parametrize("cell", ["vanilla", "gru"])
def test_a_stack_records_each_layer(cell, engine):
    """diagnose's row: layer 0's share as ``long_term_share``, layer 1's as ``long_term_share_l1``; split after
    the step past the dependency (U's first use on a state that holds its input)."""
    net = RecurrentNet(cell, 2, 4, 1, engine=engine, seed=2, layers=2, dtype=F64)
    batch, dependency = regression_batch(seed=3), 9
    want = reference_net(net, batch, dependency + 1, None)
    row, _ = diagnose(net, TASKS["adding"], batch, None, dependency, Thresholds())
    assert row["long_term_share"] == pytest.approx(share_of(want[0]), abs=1e-10)
    assert row["long_term_share_l1"] == pytest.approx(share_of(want[1]), abs=1e-10)
    assert row["long_term_share"] != pytest.approx(row["long_term_share_l1"], abs=1e-6)  # not one number twice


def test_a_run_records_the_share_at_each_evaluation_and_the_last_in_its_summary():
    cfg = {"name": "t", "task": {"name": "adding", "length": 8, "eval_size": 32},
           "model": {"cell": "lstm", "hidden": 8, "nonlinearity": None, "skip": 2, "engine": "scan"},
           "train": {"steps": 4, "batch_size": 4, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": None, "eval_every": 2, "on_nonfinite": "skip"},
           "diagnostics": {}, "seed": 3, "device": "cpu", "dtype": "float32", "threads": 1}
    out = train(cfg)
    evals = [r for r in out["rows"] if r["kind"] == "eval"]
    assert len(evals) == 3 and all(0 < r["long_term_share"] < 1 for r in evals)
    assert out["summary"]["long_term_share"] == evals[-1]["long_term_share"]


# ---------------------------------------------------------------------------
# the normalisation

def test_the_share_is_a_fraction_where_the_ratio_to_the_total_is_not():
    """Parts that cancel: ‖G_long‖ / ‖G‖ is 1/0 here (and above 1 for a near-cancellation); the share is
    ‖G_long‖ / (‖G_long‖ + ‖G_short‖) = 1/2."""
    g = torch.tensor([[3.0, 4.0]], dtype=F64)
    assert long_term_share([g], [-g]) == 0.5
    assert long_term_share([g], [-0.9 * g]) == pytest.approx(1 / 1.9)  # ‖G_long‖ / ‖G‖ would be 10
    # over several recurrent weights (skip): the norm of both together, sqrt(5² + 12²) = 13 against 5
    assert long_term_share([g, torch.tensor([12.0], dtype=F64)],
                           [torch.tensor([5.0], dtype=F64)]) == pytest.approx(13 / 18, abs=1e-15)


def test_the_share_is_undefined_where_nothing_reached_u_and_saturates_on_an_overflow():
    zero, one = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)
    inf, nan = torch.tensor([math.inf, 0.0], dtype=F64), torch.tensor([math.nan, 0.0], dtype=F64)
    assert long_term_share([zero], [zero]) is None
    # a NaN in one recurrent weight's part beside an inf in another's: unknown, not a share of 1 (hypot(nan, inf)
    # is inf)
    assert long_term_share([one, nan], [inf]) is None and long_term_share([inf, nan], [one]) is None
    assert long_term_share([nan], [one]) is None and long_term_share([one], [nan]) is None
    assert long_term_share([inf], [inf]) is None
    assert long_term_share([inf], [one]) == 1.0 and long_term_share([one], [inf]) == 0.0
    big = torch.tensor([1e200, 1e200], dtype=F64)  # squares overflow float64: the norm is scaled
    assert long_term_share([big], [big / 3]) == pytest.approx(0.75)
