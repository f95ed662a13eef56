"""Tasks: layouts recomputed by hand from x, baselines against Monte-Carlo, evaluate() at both ends."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from gradlab.tasks import TASKS, VARIANTS, Batch, Task, catalogue, resolve

ALL = catalogue()  # every task and variant by label: adding, adding[hochreiter], ...
VARIABLE_LENGTH = {"adding[hochreiter]", "adding[pascanu]"}  # one S per batch, drawn in a range
# regression tasks whose accuracy is the fraction of sequences within a tolerance
TOLERANCE = {"multiplication", "adding[hochreiter]", "adding[pascanu]"}
PIXEL_INPUTS = {"digits", "digits[permuted]", "digits[rows]"}  # pixel intensities, not one-hot symbols


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def perfect_output(task, batch):
    """(S, B, O) outputs that predict every target exactly."""
    if task.kind == "regression":
        return batch.y.unsqueeze(-1).clone()
    return 50.0 * F.one_hot(batch.y, task.output_size).float()


# ---------------------------------------------------------------------------
# Registry, shapes, validation


@pytest.mark.parametrize("name", sorted(ALL))
def test_registry_entry_is_complete(name):
    task = ALL[name]
    assert task.label == name and (task.variant is None) == (name in TASKS)
    assert task.description and "\n" not in task.description
    assert task.kind in ("regression", "classification")
    assert task.output_size == 1 if task.kind == "regression" else task.output_size > 1


@pytest.mark.parametrize("name", sorted(ALL))
def test_shapes_and_dtypes(name):
    task = ALL[name]
    length, B = max(30, task.min_length), 5
    b = task.generate(B, length, gen())
    S = b.x.shape[0]
    if name in VARIABLE_LENGTH:
        assert length <= S <= task.sequence_length(length)  # the longest S
    else:
        assert S == task.sequence_length(length)
    assert b.x.shape == (S, B, task.input_size) and b.x.dtype == torch.float32
    assert b.y.shape == b.loss_mask.shape == b.score_mask.shape == (S, B)
    assert b.y.dtype == (torch.float32 if task.kind == "regression" else torch.int64)
    assert b.loss_mask.dtype == b.score_mask.dtype == torch.bool
    if task.kind == "classification" and name not in PIXEL_INPUTS:
        assert torch.equal(b.x.sum(-1), torch.ones(S, B))  # one-hot inputs
        assert int(b.y.max()) < task.output_size


@pytest.mark.parametrize("name", sorted(ALL))
def test_length_below_minimum_is_rejected(name):
    task = ALL[name]
    for seed in range(5):
        b = task.generate(3, task.min_length, gen(seed))  # the minimum itself works
        assert task.min_length <= b.x.shape[0] <= task.sequence_length(task.min_length)
    with pytest.raises(ValueError, match=rf"{re.escape(name)}' needs length >= {task.min_length}"):
        task.generate(3, task.min_length - 1, gen())


# ---------------------------------------------------------------------------
# Labels recomputed independently, one sequence at a time


def test_adding_labels():
    task, T, B = TASKS["adding"], 9, 200
    b = task.generate(B, T, gen(1))
    for i in range(B):
        marks = [t for t in range(T) if b.x[t, i, 1].item() == 1.0]
        assert len(marks) == 2 and all(b.x[t, i, 1].item() in (0.0, 1.0) for t in range(T))
        assert 0 <= marks[0] < T // 2 <= marks[1] < T
        target = sum(b.x[t, i, 0].item() for t in marks)
        assert b.y[-1, i].item() == pytest.approx(target, abs=1e-6)
        assert all(b.y[t, i].item() == 0.0 for t in range(T - 1))
        assert 0.0 <= b.x[:, i, 0].min() and b.x[:, i, 0].max() < 1.0
    expected_mask = torch.zeros(T, B, dtype=torch.bool)
    expected_mask[-1] = True
    assert torch.equal(b.loss_mask, expected_mask) and torch.equal(b.score_mask, expected_mask)


def test_adding_markers_cover_both_halves():
    T = 7  # odd: the second half [3, 7) is the longer one
    b = TASKS["adding"].generate(4000, T, gen(2))
    first = b.x[: T // 2, :, 1].argmax(0)
    second = b.x[T // 2 :, :, 1].argmax(0) + T // 2
    assert set(first.tolist()) == set(range(T // 2))
    assert set(second.tolist()) == set(range(T // 2, T))


def test_copy_layout():
    task, T, B = TASKS["copy"], 6, 50
    b = task.generate(B, T, gen(3))
    S = T + 20
    assert task.sequence_length(T) == S
    sym = b.x.argmax(-1)  # (S, B) input symbols
    for i in range(B):
        inputs = [sym[t, i].item() for t in range(S)]
        targets = [b.y[t, i].item() for t in range(S)]
        assert all(1 <= s <= 8 for s in inputs[:10])
        assert inputs[10 : 10 + T - 1] == [0] * (T - 1)
        assert inputs[T + 9] == 9
        assert inputs[T + 10 :] == [0] * 10
        assert targets[: T + 10] == [0] * (T + 10)
        assert targets[T + 10 :] == inputs[:10]
    assert b.loss_mask.all()
    assert b.score_mask[T + 10 :].all() and not b.score_mask[: T + 10].any()


def test_copy_uses_all_eight_data_symbols():
    b = TASKS["copy"].generate(500, 3, gen(4))
    assert set(b.y[-10:].flatten().tolist()) == set(range(1, 9))


def test_temporal_order_labels():
    task, L, B = TASKS["temporal_order"], 40, 300
    b = task.generate(B, L, gen(5))
    sym = b.x.argmax(-1)
    w = L // 10
    names = {"AA": 0, "AB": 1, "BA": 2, "BB": 3}
    for i in range(B):
        seq = [sym[t, i].item() for t in range(L)]
        marked = [t for t in range(L) if seq[t] in (0, 1)]
        assert len(marked) == 2
        p0, p1 = marked
        assert w <= p0 < 2 * w and L // 2 <= p1 < L // 2 + w
        assert all(2 <= s <= 5 for t, s in enumerate(seq) if t not in marked)
        pair = "AB"[seq[p0]] + "AB"[seq[p1]]
        assert b.y[-1, i].item() == names[pair]
        assert all(b.y[t, i].item() == 0 for t in range(L - 1))
    assert b.loss_mask[-1].all() and not b.loss_mask[:-1].any()
    assert torch.equal(b.loss_mask, b.score_mask)


def test_temporal_order_positions_cover_their_ranges():
    L = 40
    b = TASKS["temporal_order"].generate(3000, L, gen(6))
    ab = b.x[:, :, :2].sum(-1)  # (L, B): 1 where A or B
    p0 = ab[: L // 2].argmax(0)
    p1 = ab[L // 2 :].argmax(0) + L // 2
    assert set(p0.tolist()) == set(range(4, 8))
    assert set(p1.tolist()) == set(range(20, 24))
    assert set(b.x.argmax(-1).flatten().tolist()) == set(range(6))


def test_temporal_order_3bit_labels():
    task, L, B = TASKS["temporal_order_3bit"], 40, 300
    b = task.generate(B, L, gen(30))
    sym = b.x.argmax(-1)
    ranges = [range(4, 8), range(12, 16), range(24, 28)]  # [0.1L, 0.2L), [0.3L, 0.4L), [0.6L, 0.7L)
    for i in range(B):
        seq = [sym[t, i].item() for t in range(L)]
        marked = [t for t in range(L) if seq[t] in (0, 1)]
        assert len(marked) == 3 and all(t in r for t, r in zip(marked, ranges))
        assert all(2 <= s <= 5 for t, s in enumerate(seq) if t not in marked)
        word = "".join("AB"[seq[t]] for t in marked)  # e.g. "BAB"
        assert b.y[-1, i].item() == int(word.replace("A", "0").replace("B", "1"), 2)
        assert all(b.y[t, i].item() == 0 for t in range(L - 1))
    assert b.loss_mask[-1].all() and not b.loss_mask[:-1].any()
    assert torch.equal(b.loss_mask, b.score_mask)


def test_temporal_order_3bit_positions_cover_their_ranges():
    L = 40
    b = TASKS["temporal_order_3bit"].generate(3000, L, gen(31))
    ab = b.x[:, :, :2].sum(-1)  # (L, B): 1 where A or B
    for lo, hi in [(4, 8), (12, 16), (24, 28)]:
        assert set((ab[lo:hi].argmax(0) + lo).tolist()) == set(range(lo, hi))
        assert (ab[lo:hi].sum(0) == 1).all()
    assert int(ab.sum(0).max()) == 3


def test_multiplication_labels():
    task, T, B = TASKS["multiplication"], 9, 200
    b = task.generate(B, T, gen(32))
    for i in range(B):
        marks = [t for t in range(T) if b.x[t, i, 1].item() == 1.0]
        assert len(marks) == 2 and all(b.x[t, i, 1].item() in (0.0, 1.0) for t in range(T))
        assert 0 <= marks[0] < T // 2 <= marks[1] < T
        target = b.x[marks[0], i, 0].item() * b.x[marks[1], i, 0].item()
        assert b.y[-1, i].item() == pytest.approx(target, abs=1e-6)
        assert all(b.y[t, i].item() == 0.0 for t in range(T - 1))
    assert b.loss_mask[-1].all() and not b.loss_mask[:-1].any()


def test_permutation_labels():
    task, L, B = TASKS["permutation"], 12, 300
    b = task.generate(B, L, gen(33))
    sym = b.x.argmax(-1)
    for i in range(B):
        seq = [sym[t, i].item() for t in range(L)]
        assert seq[0] in (0, 1) and all(2 <= s <= 99 for s in seq[1:])
        assert b.y[-1, i].item() == seq[0]
        assert all(b.y[t, i].item() == 0 for t in range(L - 1))
    assert b.loss_mask[-1].all() and not b.loss_mask[:-1].any()
    big = task.generate(2000, L, gen(34)).x.argmax(-1)
    assert set(big[1:].flatten().tolist()) == set(range(2, 100))


def test_memorization_layout_follows_pascanu():
    task, T, B = TASKS["memorization"], 6, 50
    b = task.generate(B, T, gen(35))
    S = T + 20
    assert task.sequence_length(T) == S and b.x.shape[-1] == 7 and task.output_size == 6
    sym = b.x.argmax(-1)
    blank, go = 5, 6
    for i in range(B):
        inputs = [sym[t, i].item() for t in range(S)]
        targets = [b.y[t, i].item() for t in range(S)]
        assert all(0 <= s <= 4 for s in inputs[:10])
        assert inputs[10 : T + 10] == [blank] * T
        assert inputs[T + 10] == go  # the go marker sits on the first recall step
        assert inputs[T + 11 :] == [blank] * 9
        assert targets[: T + 10] == [blank] * (T + 10)
        assert targets[T + 10 :] == inputs[:10]
    assert b.loss_mask.all()
    assert b.score_mask[T + 10 :].all() and not b.score_mask[: T + 10].any()
    assert set(task.generate(500, 3, gen(36)).y[-10:].flatten().tolist()) == set(range(5))


def hochreiter_marks(x, i, T):
    """(X1 position, X2 position) that explain the two marks of sequence i under Hochreiter's rule."""
    S = x.shape[0]
    marks = [t for t in range(S) if x[t, i, 1].item() == 1.0]
    assert len(marks) == 2
    for p1, p2 in (marks, marks[::-1]):
        unmarked = [t for t in range(S) if t != p1][: T // 2 - 1]  # the first T/2 - 1 still unmarked
        if p1 < 10 and p2 in unmarked:
            return p1, p2
    raise AssertionError(f"marks {marks} do not follow Hochreiter's rule")


@pytest.mark.parametrize("T", [11, 24, 60])
def test_adding_hochreiter_labels(T):
    task, B = VARIANTS["adding"]["hochreiter"], 300
    b = task.generate(B, T, gen(37 + T))
    S = b.x.shape[0]
    assert T <= S <= T + T // 10
    for i in range(B):
        p1, p2 = hochreiter_marks(b.x, i, T)
        markers = [b.x[t, i, 1].item() for t in range(S)]
        expected = [1.0 if t in (p1, p2) else -1.0 if t in (0, S - 1) else 0.0 for t in range(S)]
        assert markers == expected
        values = b.x[:, i, 0]
        assert -1.0 <= values.min() and values.max() <= 1.0
        if 0 in (p1, p2):
            assert values[0].item() == 0.0  # "X1 is set to zero" where the first pair is marked
        target = 0.5 + (values[p1].item() + values[p2].item()) / 4
        assert b.y[-1, i].item() == pytest.approx(target, abs=1e-6)
        assert all(b.y[t, i].item() == 0.0 for t in range(S - 1))
    assert b.loss_mask[-1].all() and not b.loss_mask[:-1].any()


def test_adding_hochreiter_marks_cover_their_ranges_and_zero_the_first_pair():
    T = 30
    b = VARIANTS["adding"]["hochreiter"].generate(4000, T, gen(38))
    marked = b.x[:, :, 1] == 1.0  # (S, B)
    first = marked.float().argmax(0)
    last = b.x.shape[0] - 1 - marked.flip(0).float().argmax(0)
    assert set(first.tolist()) == set(range(10))  # the earlier mark: X1's range, or X2 before it
    assert set(last.tolist()) == set(range(1, T // 2))  # at most the (T/2 - 1)-th unmarked step
    at_zero = marked[0]
    assert 0 < at_zero.sum() and (b.x[0, at_zero, 0] == 0.0).all() and (b.x[0, ~at_zero, 0] != 0.0).all()


@pytest.mark.parametrize("name, extra", [("hochreiter", 10), ("pascanu", 9)])
def test_variable_length_variants_draw_one_length_per_batch_over_the_whole_range(name, extra):
    task, T = VARIANTS["adding"][name], 100
    lengths = {task.generate(2, T, gen(seed)).x.shape[0] for seed in range(300)}
    assert lengths == set(range(T, T + extra + 1))  # Hochreiter: [T, T + T/10]; Pascanu: T + randint(T/10)
    assert task.sequence_length(T) == T + extra


def test_adding_pascanu_labels():
    task, T, B = VARIANTS["adding"]["pascanu"], 30, 300
    b = task.generate(B, T, gen(39))
    S = b.x.shape[0]
    w = S // 10
    assert T <= S < T + T // 10
    for i in range(B):
        marks = [t for t in range(S) if b.x[t, i, 1].item() == 1.0]
        assert len(marks) == 2 and all(b.x[t, i, 1].item() in (0.0, 1.0) for t in range(S))
        assert 0 <= marks[0] < w <= marks[1] < w + 4 * S // 10  # Pascanu: [0, .1l), [.1l, .5l)
        target = (b.x[marks[0], i, 0].item() + b.x[marks[1], i, 0].item()) / 2
        assert b.y[-1, i].item() == pytest.approx(target, abs=1e-6)
        assert all(b.y[t, i].item() == 0.0 for t in range(S - 1))
    assert b.loss_mask[-1].all() and not b.loss_mask[:-1].any()


def test_adding_tcn_marks_anywhere():
    task, T = VARIANTS["adding"]["tcn"], 8
    b = task.generate(20000, T, gen(40))
    marked = b.x[:, :, 1]
    assert (marked.sum(0) == 2).all() and set(marked.flatten().tolist()) == {0.0, 1.0}
    ts = torch.arange(T).unsqueeze(1).float()
    first = (marked * ts + (1 - marked) * T).min(0).values  # the earlier mark, per sequence
    second = (marked * ts).max(0).values
    assert set(first.long().tolist()) == set(range(T - 1)) and set(second.long().tolist()) == set(range(1, T))
    pair = torch.stack([first, second]).long()
    counts = torch.bincount(pair[0] * T + pair[1], minlength=T * T).view(T, T)
    expected = 20000 / (T * (T - 1) / 2)  # every unordered pair of distinct steps equally likely
    assert counts.triu(1).sum() == 20000
    assert (counts.triu(1)[torch.ones(T, T).triu(1).bool()] - expected).abs().max() < 5 * math.sqrt(expected)
    values = torch.stack([b.x[pair[0], torch.arange(20000), 0], b.x[pair[1], torch.arange(20000), 0]])
    torch.testing.assert_close(b.y[-1], values.sum(0))


# ---------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_seed_same_batch_other_seed_other_batch(name):
    task = ALL[name]
    a, b, c = (task.generate(8, max(20, task.min_length), gen(s)) for s in (7, 7, 8))
    for f in ("x", "y", "loss_mask", "score_mask"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(a.x, c.x)
    assert not torch.equal(a.y, c.y)


# ---------------------------------------------------------------------------
# Baselines against Monte-Carlo estimates


def test_adding_baseline_matches_monte_carlo():
    task, n = TASKS["adding"], 200_000
    b = task.generate(n, 10, gen(9))
    y = b.y[-1].double()
    sq = (y - 1.0) ** 2  # the best constant predictor is E[y] = 1
    se = sq.std().item() / math.sqrt(n)
    assert abs(sq.mean().item() - task.baseline(10)) < 4 * se
    assert abs(y.mean().item() - 1.0) < 4 * y.std().item() / math.sqrt(n)
    result = task.evaluate(torch.ones(10, n, 1), b)
    assert result["loss"] == pytest.approx(sq.mean().item(), rel=1e-4)
    assert result["accuracy"] is None and not result["solved"]


@pytest.mark.parametrize("T", [1, 10, 100, 1000])
def test_copy_baseline_is_the_memoryless_cross_entropy(T):
    task, B = TASKS["copy"], 16
    b = task.generate(B, T, gen(10))
    # The best memoryless predictor: blank for sure until the recall steps, then uniform over 1..8.
    out = torch.full((T + 20, B, 10), -1e4)
    out[: T + 10, :, 0] = 0.0
    out[T + 10 :, :, 1:9] = 0.0
    result = task.evaluate(out, b)
    assert result["loss"] == pytest.approx(task.baseline(T), rel=1e-5)
    assert task.baseline(T) == pytest.approx(10 * math.log(8) / (T + 20))
    # argmax breaks the tie toward symbol 1: right on about 1/8 of the recall steps
    assert result["accuracy"] == pytest.approx((b.y[T + 10 :] == 1).float().mean().item())
    assert result["accuracy"] < 0.5 and not result["solved"]


def test_copy_baseline_published_values():
    assert TASKS["copy"].baseline(100) == pytest.approx(0.173, abs=5e-4)
    assert TASKS["copy"].baseline(1000) == pytest.approx(0.0204, abs=5e-5)


def test_temporal_order_baseline_matches_monte_carlo():
    task, n, L = TASKS["temporal_order"], 200_000, 10
    b = task.generate(n, L, gen(11))
    freq = torch.bincount(b.y[-1], minlength=4).double() / n
    se = math.sqrt(0.25 * 0.75 / n)
    assert (freq - 0.25).abs().max().item() < 4 * se  # the classes are uniform
    entropy = -(freq * freq.log()).sum().item()  # CE of the best constant predictor
    assert entropy == pytest.approx(task.baseline(L), abs=1e-3)
    result = task.evaluate(freq.log().float().expand(L, n, 4), b)
    assert result["loss"] == pytest.approx(entropy, rel=1e-4)
    assert result["accuracy"] < 0.3 and not result["solved"]


@pytest.mark.parametrize("name, n, L, classes", [("temporal_order_3bit", 200_000, 10, range(8)),
                                                ("permutation", 50_000, 2, range(2))])
def test_class_baselines_match_monte_carlo(name, n, L, classes):
    """The classes are uniform, and the best constant predictor's cross-entropy is the baseline."""
    task, k = TASKS[name], len(classes)
    b = task.generate(n, L, gen(41))
    freq = torch.bincount(b.y[-1], minlength=task.output_size).double() / n
    assert freq[k:].sum() == 0  # no other class is ever the target
    se = math.sqrt((1 / k) * (1 - 1 / k) / n)
    assert (freq[:k] - 1 / k).abs().max().item() < 4 * se
    entropy = -(freq[:k] * freq[:k].log()).sum().item()
    assert entropy == pytest.approx(task.baseline(L), abs=2e-3) and task.baseline(L) == pytest.approx(math.log(k))
    logits = freq.clamp_min(1e-30).log().float()  # (O,) the constant predictor
    result = task.evaluate(logits.expand(L, n, task.output_size), b)
    assert result["loss"] == pytest.approx(entropy, rel=1e-4)
    assert result["accuracy"] < 1.5 / k and not result["solved"]


def product_cdf(t):
    """P(U1 U2 <= t) for independent U[0, 1]: t - t ln t."""
    return t - t * math.log(t)


@pytest.mark.parametrize("name, T, mean, expected_baseline, constant_accuracy", [
    ("multiplication", 10, 1 / 4, 7 / 144, product_cdf(0.45) - product_cdf(0.05)),  # |U1U2 - 1/4| <= 0.2
    ("adding[pascanu]", 30, 1 / 2, 1 / 24, 1 - 2 * 2 * 0.3**2),  # triangular mean on [0, 1]: |y - 1/2| <= 0.2
    ("adding[tcn]", 10, 1, 1 / 6, None),
    ("adding[hochreiter]", 100, 1 / 2, (1 / 3) * (2 - 0.1 - 0.9 / 49) / 16, None),
])
def test_regression_baselines_match_monte_carlo(name, T, mean, expected_baseline, constant_accuracy):
    """The best constant predictor is E[y]; its MSE, Var(y), is the baseline (within 4 standard errors)."""
    task, n = ALL[name], 200_000
    b = task.generate(n, T, gen(42))
    y = b.y[-1].double()
    assert abs(y.mean().item() - mean) < 4 * y.std().item() / math.sqrt(n)
    sq = (y - mean) ** 2
    assert abs(sq.mean().item() - task.baseline(T)) < 4 * sq.std().item() / math.sqrt(n)
    assert task.baseline(T) == pytest.approx(expected_baseline)
    result = task.evaluate(torch.full((b.x.shape[0], n, 1), float(mean)), b)
    assert result["loss"] == pytest.approx(sq.mean().item(), rel=1e-4) and not result["solved"]
    if constant_accuracy is not None:  # Pascanu's criterion: right when the squared error is <= 0.04
        p = constant_accuracy
        assert abs(result["accuracy"] - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_hochreiter_baseline_counts_the_zeroed_first_pair():
    """At T = 12, X2 lands on the first pair with probability 0.9/5: the variance is well under 1/24."""
    task, n, T = VARIANTS["adding"]["hochreiter"], 200_000, 12
    b = task.generate(n, T, gen(43))
    sq = (b.y[-1].double() - 0.5) ** 2
    se = sq.std().item() / math.sqrt(n)
    assert task.baseline(T) == pytest.approx((1 / 3) * (2 - 0.1 - 0.18) / 16)
    assert abs(sq.mean().item() - task.baseline(T)) < 4 * se
    assert abs(sq.mean().item() - 1 / 24) > 20 * se
    marked_first = (b.x[0, :, 1] == 1.0).double().mean().item()
    assert marked_first == pytest.approx(0.1 + 0.9 / 5, abs=4 * math.sqrt(0.28 * 0.72 / n))


@pytest.mark.parametrize("T", [1, 10, 100])
def test_memorization_baseline_is_the_memoryless_cross_entropy(T):
    task, n = TASKS["memorization"], 20_000
    b = task.generate(n, T, gen(44))
    S = T + 20
    recall = b.y[T + 10 :]  # (10, n)
    freq = torch.bincount(recall.flatten(), minlength=6).double() / recall.numel()
    assert freq[5] == 0 and (freq[:5] - 0.2).abs().max() < 4 * math.sqrt(0.16 / recall.numel())
    # The best memoryless predictor: blank for sure before the recall, the symbol frequencies on it.
    out = torch.full((S, n, 6), -1e4)
    out[: T + 10, :, 5] = 0.0
    out[T + 10 :, :, :5] = freq[:5].log().float()
    result = task.evaluate(out, b)
    entropy = -(freq[:5] * freq[:5].log()).sum().item()
    assert result["loss"] == pytest.approx(10 * entropy / S, rel=1e-4)
    assert result["loss"] == pytest.approx(task.baseline(T), rel=1e-3)
    assert task.baseline(T) == pytest.approx(10 * math.log(5) / (T + 20))
    assert result["accuracy"] < 0.01 and not result["solved"]  # all 10 right by luck: (1/5)^10


# ---------------------------------------------------------------------------
# evaluate() and step_loss()


@pytest.mark.parametrize("name", sorted(ALL))
def test_perfect_predictor_is_solved(name):
    task = ALL[name]
    b = task.generate(32, max(20, task.min_length), gen(12))
    result = task.evaluate(perfect_output(task, b), b)
    assert result["loss"] == pytest.approx(0.0, abs=1e-6)
    assert result["solved"] is True
    assert result["accuracy"] == (None if task.kind == "regression" and name not in TOLERANCE else 1.0)


def test_adding_solved_threshold():
    task = TASKS["adding"]
    b = task.generate(1000, 10, gen(13))
    near = perfect_output(task, b) + 0.09  # MSE 0.0081 < 0.01
    far = perfect_output(task, b) + 0.11  # MSE 0.0121
    assert task.evaluate(near, b)["solved"] and not task.evaluate(far, b)["solved"]


def test_copy_accuracy_counts_only_the_recall_steps():
    task, T = TASKS["copy"], 5
    b = task.generate(40, T, gen(14))
    out = perfect_output(task, b)
    blanks = torch.zeros_like(b.y[T + 10 :])
    out[T + 10 :] = 50.0 * F.one_hot(blanks, 10).float()  # blanks where the symbols are due
    result = task.evaluate(out, b)
    assert result["accuracy"] == 0.0 and not result["solved"]


@pytest.mark.parametrize("name", ["multiplication", "adding[pascanu]"])
def test_pascanu_criterion_squared_error_at_most_004_on_99_percent(name):
    task, B = ALL[name], 1000
    b = task.generate(B, 20, gen(45))
    close = perfect_output(task, b) + 0.19  # squared error 0.0361 <= 0.04: every sequence right
    result = task.evaluate(close, b)
    assert result["accuracy"] == 1.0 and result["solved"]
    assert result["loss"] > 0.01  # an MSE the adding rule (< 0.01) would not call solved
    far = perfect_output(task, b) + 0.21  # 0.0441 > 0.04
    assert task.evaluate(far, b)["accuracy"] == 0.0
    for wrong, solved in [(5, True), (15, False)]:  # 99.5% and 98.5% of the sequences right
        out = perfect_output(task, b)
        out[-1, :wrong] += 0.5
        result = task.evaluate(out, b)
        assert result["accuracy"] == pytest.approx(1 - wrong / B) and result["solved"] is solved


def test_hochreiter_criterion_every_sequence_within_004():
    task, B = VARIANTS["adding"]["hochreiter"], 1000
    b = task.generate(B, 20, gen(46))
    result = task.evaluate(perfect_output(task, b) + 0.039, b)
    assert result["accuracy"] == 1.0 and result["solved"]
    assert task.evaluate(perfect_output(task, b) + 0.041, b)["accuracy"] == 0.0
    out = perfect_output(task, b)
    out[-1, 0] -= 0.05  # one sequence in a thousand wrong
    result = task.evaluate(out, b)
    assert result["accuracy"] == pytest.approx(0.999) and not result["solved"]


def test_memorization_accuracy_is_per_sequence_over_the_recall_steps():
    task, T, B = TASKS["memorization"], 4, 200
    b = task.generate(B, T, gen(47))
    out = perfect_output(task, b)
    out[: T + 10] = 50.0 * F.one_hot(torch.zeros_like(b.y[: T + 10]), 6).float()  # wrong blanks: not scored
    assert task.evaluate(out, b)["accuracy"] == 1.0
    out = perfect_output(task, b)
    wrong = (b.y[-1] + 1) % 5  # the last recall step wrong in every sequence: 9 of 10 steps right
    out[-1] = 50.0 * F.one_hot(wrong, 6).float()
    result = task.evaluate(out, b)
    assert result["accuracy"] == 0.0 and not result["solved"]
    out = perfect_output(task, b)
    out[-1, :1] = 50.0 * F.one_hot(wrong[:1], 6).float()  # one sequence in 200 wrong: 99.5% right
    result = task.evaluate(out, b)
    assert result["accuracy"] == pytest.approx(0.995) and result["solved"]
    out[-1, :3] = 50.0 * F.one_hot(wrong[:3], 6).float()  # 98.5%
    assert not task.evaluate(out, b)["solved"]


@pytest.mark.parametrize("name", sorted(ALL))
def test_step_loss_matches_torch_losses_and_is_differentiable(name):
    task = ALL[name]
    b = task.generate(6, max(12, task.min_length), gen(15))
    out = torch.randn(*b.y.shape, task.output_size, generator=gen(16), requires_grad=True)
    losses = task.step_loss(out, b.y)
    assert losses.shape == b.y.shape
    m = b.loss_mask
    if task.kind == "regression":
        reference = F.mse_loss(out[..., 0][m], b.y[m])
    else:
        reference = F.cross_entropy(out[m], b.y[m])
    mean = (losses * m).sum() / m.sum()
    torch.testing.assert_close(mean, reference)
    assert task.evaluate(out, b)["loss"] == pytest.approx(reference.item(), rel=1e-6)
    mean.backward()
    assert (out.grad[~m] == 0).all() and (out.grad[m] != 0).any()  # only the masked steps get gradient


# ---------------------------------------------------------------------------
# lag and dependency


def test_lag_and_dependency_adding():
    task, T = TASKS["adding"], 8
    b = task.generate(2000, T, gen(17))
    first = b.x[: T // 2, :, 1].argmax(0)
    assert int((T - 1 - first).max()) == task.lag(T)
    assert 0 <= task.dependency(T) < T // 2
    assert task.dependency(100) == 25


def test_lag_and_dependency_copy():
    task, T = TASKS["copy"], 7
    b = task.generate(20, T, gen(18))
    sym = b.x.argmax(-1)
    # symbol i, shown at step i, is the target at step i + lag
    for i in range(10):
        assert torch.equal(b.y[i + task.lag(T)], sym[i])
    assert torch.equal(b.y[task.dependency(T) + task.lag(T)], sym[task.dependency(T)])
    assert task.lag(T) == T + 10


def test_lag_and_dependency_temporal_order():
    task, L = TASKS["temporal_order"], 50
    b = task.generate(2000, L, gen(19))
    p0 = b.x[: L // 2, :, :2].sum(-1).argmax(0)
    assert int((L - 1 - p0).max()) == task.lag(L)
    assert p0.min() <= task.dependency(L) <= p0.max()
    assert task.dependency(100) == 15


def test_lag_and_dependency_temporal_order_3bit():
    task, L = TASKS["temporal_order_3bit"], 50
    b = task.generate(2000, L, gen(48))
    p0 = b.x[: 3 * L // 10, :, :2].sum(-1).argmax(0)  # the first A/B symbol
    assert int((L - 1 - p0).max()) == task.lag(L)
    assert p0.min() <= task.dependency(L) <= p0.max()
    assert task.dependency(100) == 15


def test_lag_and_dependency_permutation_and_memorization():
    perm, L = TASKS["permutation"], 30
    b = perm.generate(50, L, gen(49))
    assert torch.equal(b.y[perm.dependency(L) + perm.lag(L)], b.x[0].argmax(-1)) and perm.lag(L) == L - 1
    memo, T = TASKS["memorization"], 7
    b = memo.generate(20, T, gen(50))
    sym = b.x.argmax(-1)
    for i in range(10):  # symbol i, shown at step i, is the target at step i + lag
        assert torch.equal(b.y[i + memo.lag(T)], sym[i])
    assert memo.lag(T) == T + 10 and memo.dependency(T) == 0


def earliest_marks(batches):
    """(S - 1 - earliest marker step, earliest marker step) of every sequence of the adding-family batches."""
    lags, firsts = [], []
    for b in batches:
        first = (b.x[:, :, 1] == 1.0).float().argmax(0)
        lags.append(b.x.shape[0] - 1 - first)
        firsts.append(first)
    return torch.cat(lags), torch.cat(firsts)


@pytest.mark.parametrize("name, T, lag, dependency", [
    ("multiplication", 8, 7, 2), ("adding[hochreiter]", 20, 21, 5), ("adding[pascanu]", 30, 31, 1),
    ("adding[tcn]", 30, 29, 9)])
def test_lag_and_dependency_adding_family(name, T, lag, dependency):
    task = ALL[name]
    lags, firsts = earliest_marks(task.generate(200, T, gen(seed)) for seed in range(60))
    assert task.lag(T) == lag == int(lags.max())  # the longest sequence with a marker on step 0
    assert task.dependency(T) == dependency
    assert firsts.min() <= dependency <= firsts.max()
    if name == "adding[tcn]":  # the earlier of two distinct uniform steps: mean (T - 2) / 3
        se = firsts.double().std().item() / math.sqrt(firsts.numel())
        assert abs(firsts.double().mean().item() - (T - 2) / 3) < 4 * se


# ---------------------------------------------------------------------------
# Batch


def test_batch_slice_pieces_rebuild_the_batch():
    b = TASKS["copy"].generate(4, 5, gen(20))
    pieces = [b.slice(t, min(t + 7, 25)) for t in range(0, 25, 7)]
    assert [p.x.shape[0] for p in pieces] == [7, 7, 7, 4]
    for f in ("x", "y", "loss_mask", "score_mask"):
        assert torch.equal(torch.cat([getattr(p, f) for p in pieces]), getattr(b, f))
    assert isinstance(pieces[0], Batch)


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_batch_to_casts_x_and_float_targets_only(name):
    b = TASKS[name].generate(4, 10, gen(21))
    d = b.to("cpu", torch.float64)
    assert d.x.dtype == torch.float64 and torch.equal(d.x, b.x.double())
    assert d.y.dtype == (torch.float64 if b.y.is_floating_point() else torch.int64)
    assert torch.equal(d.y, b.y.to(d.y.dtype))
    assert d.loss_mask.dtype == d.score_mask.dtype == torch.bool
    assert torch.equal(d.loss_mask, b.loss_mask) and torch.equal(d.score_mask, b.score_mask)
    assert d.x.device.type == "cpu"


# ---------------------------------------------------------------------------
# Variants: resolve(), config validation, `gradlab ls`, and each new task through training


def test_resolve_finds_tasks_and_variants():
    assert resolve({"name": "copy", "length": 5}) is TASKS["copy"]  # results written before variants
    assert resolve({"name": "adding", "variant": None}) is TASKS["adding"]
    for variant, task in VARIANTS["adding"].items():
        assert resolve({"name": "adding", "variant": variant}) is task
        assert task.name == "adding" and task.variant == variant and isinstance(task, Task)
    assert list(VARIANTS["adding"]) == ["hochreiter", "pascanu", "tcn", "near"]


@pytest.mark.parametrize("cfg, message", [
    ({"name": "adding", "variant": "x"}, "unknown variant 'x' for adding; valid: hochreiter, pascanu, tcn"),
    ({"name": "adding", "variant": "pascnu"}, "unknown variant 'pascnu' for adding (did you mean 'pascanu'?)"),
    ({"name": "copy", "variant": "tcn"}, "task copy has no variants, got 'tcn'"),
    ({"name": "addng"}, "unknown task 'addng' (did you mean 'adding'?)"),
])
def test_resolve_rejects_unknown_names_with_the_choices(cfg, message):
    with pytest.raises(ValueError) as e:
        resolve(cfg)
    assert message in str(e.value)


def load_config(tmp_path, text, *overrides):
    from gradlab.config import load

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load(path, list(overrides))


@pytest.mark.parametrize("task, needles", [
    ("{name: adding, variant: x}", ["task.variant: unknown variant 'x' for adding; valid: hochreiter, pascanu, tcn"]),
    ("{name: temporal_order, variant: hochreiter}", ["task.variant: task temporal_order has no variants"]),
    ("{name: adding, variant: 3}", ["task.variant: expected a string, got 3"]),
    ("{name: adding, variant: hochreiter, length: 5}",
     ["task.length: adding[hochreiter] needs length >= 11, got 5"]),
])
def test_config_validates_the_variant(tmp_path, task, needles):
    from gradlab.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, f"task: {task}\n")
    for needle in needles:
        assert needle in str(e.value)


def test_config_grids_over_variants(tmp_path):
    _, runs = load_config(tmp_path, "task: {name: adding, length: 20}\ngrid: {task.variant: [null, hochreiter, tcn]}\n")
    assert [r.config["task"]["variant"] for r in runs] == [None, "hochreiter", "tcn"]
    assert [resolve(r.config["task"]).label for r in runs] == ["adding", "adding[hochreiter]", "adding[tcn]"]
    _, (run,) = load_config(tmp_path, "task: {name: copy}\n")
    assert run.config["task"]["variant"] is None  # the default
    _, (run,) = load_config(tmp_path, "task: {name: adding}\n", "task.variant=pascanu")
    assert resolve(run.config["task"]) is VARIANTS["adding"]["pascanu"]


def test_ls_lists_every_task_and_variant():
    from typer.testing import CliRunner

    from gradlab.cli import app

    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0
    for label in ALL:
        assert re.search(rf"│ {re.escape(label)} +│", result.output), label  # brackets not eaten as markup
    assert "U[-1,1]" in result.output


NEW = ["multiplication", "temporal_order_3bit", "permutation", "memorization",
       "adding[hochreiter]", "adding[pascanu]", "adding[tcn]"]


@pytest.mark.parametrize("label", NEW)
def test_new_tasks_train_end_to_end(label):
    from gradlab.training import train

    task = ALL[label]
    length = max(task.min_length, 12)
    cfg = {"name": "t", "task": {"name": task.name, "length": length, "eval_size": 16, "variant": task.variant},
           "model": {"cell": "gru", "hidden": 8, "nonlinearity": None, "skip": 2, "engine": "scan"},
           "train": {"steps": 6, "batch_size": 4, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": 5 if label in VARIABLE_LENGTH else None, "eval_every": 3, "on_nonfinite": "skip"},
           "diagnostics": {}, "seed": 0, "device": "cpu", "dtype": "float32", "threads": 1}
    out = train(cfg)
    summary = out["summary"]
    assert summary["baseline_loss"] == task.baseline(length) and summary["steps_done"] == 6
    assert math.isfinite(summary["final_loss"]) and not summary["diverged"]
    evals = [r for r in out["rows"] if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3, 6]
    expects_accuracy = task.kind == "classification" or label in TOLERANCE
    assert all((r["eval_accuracy"] is not None) == expects_accuracy for r in evals)
    S = out["profile"]["grad_norm"].shape[1]  # the evaluation set's one length
    assert length <= S <= task.sequence_length(length)
