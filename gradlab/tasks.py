"""Synthetic long-dependency tasks: generators, losses, memoryless baselines, success criteria.

A task turns ``(batch, length, generator)`` into a ``Batch`` of time-major
tensors and knows how to score a model's outputs on it. Each task also states
its *memoryless baseline* (the loss of the best model that ignores the long
dependency, derived from its formula) and its *lag* (how far back a gradient
must reach), which the diagnostics compare against.

Add a task by writing a small subclass of ``Task`` (``generate``, ``baseline``,
``lag``, ``dependency``, ``solved``) and an entry in ``TASKS``. A task may have
*variants* that follow other sources (``adding``: ``hochreiter``, ``pascanu``,
``tcn``), listed in ``VARIANTS``; ``resolve`` turns a config's ``task`` section
(``name`` and ``variant``) into the ``Task`` it names. A task on a real data set
lives in its own module (``gradlab.digits``), whose entries this module adds to
``TASKS`` and ``VARIANTS``; both build on ``gradlab.task`` (``Task``, ``Batch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradlab.digits import DIGITS, DIGITS_VARIANTS
from gradlab.task import (  # noqa: F401  (SOLVED_*: the criteria, also read from here)
    HOCHREITER_ABS_ERROR,
    PASCANU_SQUARED_ERROR,
    SOLVED_ACCURACY,
    SOLVED_MSE,
    Batch,
    Task,
    _last_step_mask,
)
from gradlab.yamlfile import did_you_mean


def _draw_length(length: int, extra: int, generator: torch.Generator) -> int:
    """One sequence length S uniform in [length, length + extra], shared by the whole batch.

    A batch is time-major (S, B) with a single S, so the variable-length variants draw one
    length per batch rather than one per sequence (the fixed evaluation set, one batch,
    thus has one length too)."""
    return length + int(torch.randint(0, extra + 1, (1,), generator=generator, device=generator.device))


def _marked_batch(values: torch.Tensor, markers: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                  combine) -> Batch:
    """The adding family's batch: x (S, B, 2) = (value, marker) with a 1 marking steps ``first`` and
    ``second`` (B,) of each sequence; the target, read at the last step, is combine(value1, value2)."""
    S, B = values.shape
    cols = torch.arange(B, device=values.device)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    y = torch.zeros(S, B, device=values.device)
    y[-1] = combine(values[first, cols], values[second, cols])
    mask = _last_step_mask(S, B, values.device)
    return Batch(torch.stack([values, markers], dim=-1), y, mask, mask)


def _hit_rate(out: torch.Tensor, batch: Batch, hit) -> float:
    """Regression: the fraction of scored steps whose error out - y passes ``hit`` (a sequence
    is one scored step in the adding family)."""
    error = out[..., 0] - batch.y
    return hit(error[batch.score_mask]).float().mean().item()


@dataclass(frozen=True)
class Adding(Task):
    """Adding problem, the uRNN variant (Arjovsky et al. 2016, arXiv:1511.06464 §4.2; its code
    ``adding_problem.py``), also used by IndRNN and expRNN; after Hochreiter & Schmidhuber 1997 Exp. 4.

    Two channels per step: a value ~ U[0, 1] and a marker in {0, 1}. Exactly two
    markers: one uniform in [0, T//2), one uniform in [T//2, T). The target, read
    at the last step only, is the sum of the two marked values.
    """

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        T, B, dev = length, batch, generator.device
        values = torch.rand(T, B, generator=generator, device=dev)  # (T, B)
        first, second = self.positions(T, B, generator)
        return _marked_batch(values, torch.zeros(T, B, device=dev), first, second, self.combine)

    def positions(self, T: int, B: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The two marked steps (B,) each: one uniform in [0, T//2), one uniform in [T//2, T)."""
        dev = generator.device
        first = torch.randint(0, T // 2, (B,), generator=generator, device=dev)
        second = torch.randint(T // 2, T, (B,), generator=generator, device=dev)
        return first, second

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The target from the two marked values."""
        return a + b

    def baseline(self, length: int) -> float:
        """MSE of the best constant, E[U1 + U2] = 1: Var(U1 + U2) = 2 · Var(U[0, 1]) = 2 · 1/12 = 1/6.

        (Le et al. 2015 print 0.1767; the maths gives 1/6.)
        """
        return 2 * (1 / 12)

    def lag(self, length: int) -> int:
        return length - 1  # first marker at step 0, target read at step T-1

    def dependency(self, length: int) -> int:
        return (length // 2) // 2  # the middle of the first marker's range [0, T//2)

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return loss < SOLVED_MSE


@dataclass(frozen=True)
class Multiplication(Adding):
    """Multiplication problem (Pascanu et al. 2013, arXiv:1211.5063, its code ``multiplication.py``;
    after Hochreiter & Schmidhuber 1997 Exp. 5).

    The adding layout above (values ~ U[0, 1], one marker in each half, fixed length T);
    the target is the product of the two marked values. (Pascanu's code instead draws the
    length in [T, 1.1T) and both markers in the first half, as ``adding[pascanu]`` does.)
    The accuracy is the fraction of sequences with squared error <= 0.04, Pascanu's
    criterion for regression tasks; solved when it is >= 0.99.
    """

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def baseline(self, length: int) -> float:
        """MSE of the best constant, E[U1 U2] = 1/4: Var(U1 U2) = E[U1²] E[U2²] - (E[U1] E[U2])²
        = (1/3)² - (1/2)⁴ = 1/9 - 1/16 = 7/144."""
        return (1 / 3) ** 2 - (1 / 2) ** 4

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float:
        return _hit_rate(out, batch, lambda e: e**2 <= PASCANU_SQUARED_ERROR)

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


@dataclass(frozen=True)
class AddingHochreiter(Task):
    """Adding problem as first posed (Hochreiter & Schmidhuber 1997, "Long short-term memory",
    Neural Computation 9(8), Exp. 4).

    Pairs (value ~ U[-1, 1], marker). The length S is uniform in [T, T + T//10] (one S per
    batch, see ``_draw_length``). X1 marks one of the first ten pairs; X2 one of the first
    T//2 - 1 pairs still unmarked. The marker is 1 at X1 and X2, -1 at the first and the
    final pair otherwise, 0 elsewhere. "X1 is set to zero in the rare case where the first
    pair got marked": we zero the value of the first pair whenever it is marked (by X1, or
    by X2 in the rarer case). Target at the last step: 0.5 + (X1 + X2) / 4. A sequence is
    right when its absolute error is < 0.04; solved when every evaluation sequence is
    right (Hochreiter stops training once the 2000 most recent sequences were right and
    the mean training error is < 0.01; all right implies an MSE < 0.0016).
    """

    def sequence_length(self, length: int) -> int:
        return length + length // 10

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        T, B, dev = length, batch, generator.device
        S = _draw_length(T, T // 10, generator)
        values = 2 * torch.rand(S, B, generator=generator, device=dev) - 1  # (S, B) ~ U[-1, 1]
        first = torch.randint(0, 10, (B,), generator=generator, device=dev)  # X1
        r = torch.randint(0, T // 2 - 1, (B,), generator=generator, device=dev)
        second = r + (r >= first).long()  # X2: the r-th unmarked pair, skipping X1
        values[0] = torch.where((first == 0) | (second == 0), 0.0, values[0])
        markers = torch.zeros(S, B, device=dev)
        markers[[0, -1]] = -1.0  # the first and final pair, unless marked (the final one never is)
        return _marked_batch(values, markers, first, second, lambda a, b: 0.5 + (a + b) / 4)

    def baseline(self, length: int) -> float:
        """MSE of the best constant, E[y] = 0.5: Var(0.5 + (X1 + X2)/4) = (Var X1 + Var X2) / 16.

        A marked value is U[-1, 1] (variance 1/3), or 0 where it sits on the first pair:
        P(X1 there) = 1/10, P(X2 there) = 9/10 · 1/(T//2 - 1), exclusive events. So the MSE is
        (1/3)(2 - 1/10 - 0.9/(T//2 - 1)) / 16, a little under 2 · (1/3) / 16 = 1/24.
        """
        on_first_pair = 1 / 10 + (9 / 10) / (length // 2 - 1)
        return (1 / 3) * (2 - on_first_pair) / 16

    def lag(self, length: int) -> int:
        return self.sequence_length(length) - 1  # a marker may sit on step 0 of the longest sequence

    def dependency(self, length: int) -> int:
        return 10 // 2  # the middle of X1's range, the first ten pairs

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float:
        return _hit_rate(out, batch, lambda e: e.abs() < HOCHREITER_ABS_ERROR)

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy == 1.0


@dataclass(frozen=True)
class AddingPascanu(Adding):
    """Adding problem as in Pascanu et al. 2013 (arXiv:1211.5063), its code ``addition.py``.

    Values ~ U[0, 1]. The length is S = T + randint(T//10), i.e. uniform in [T, T + T//10 - 1]
    (one S per batch, see ``_draw_length``). With w = S//10, the first marker is uniform in
    [0, w), the second in [w, w + 4S//10) (Pascanu's int(0.1 l) and int(0.4 l)): both in the
    first half. Target at the last step: the mean of the two marked values. The accuracy is
    the fraction of sequences with squared error <= 0.04 (Pascanu's criterion); solved when
    it is >= 0.99.
    """

    def sequence_length(self, length: int) -> int:
        return length + length // 10 - 1

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        B, dev = batch, generator.device
        S = _draw_length(length, length // 10 - 1, generator)
        values = torch.rand(S, B, generator=generator, device=dev)  # (S, B)
        first, second = self.positions(S, B, generator)
        return _marked_batch(values, torch.zeros(S, B, device=dev), first, second, self.combine)

    def positions(self, S: int, B: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        dev, w = generator.device, S // 10
        first = torch.randint(0, w, (B,), generator=generator, device=dev)
        second = w + torch.randint(0, 4 * S // 10, (B,), generator=generator, device=dev)
        return first, second

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) / 2

    def baseline(self, length: int) -> float:
        """MSE of the best constant, E[y] = 1/2: Var((U1 + U2)/2) = 2 · (1/12) / 4 = 1/24."""
        return 2 * (1 / 12) / 4

    def lag(self, length: int) -> int:
        return self.sequence_length(length) - 1  # first marker at step 0 of the longest sequence

    def dependency(self, length: int) -> int:
        return (length // 10) // 2  # the middle of the first marker's range [0, T//10)

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float:
        return _hit_rate(out, batch, lambda e: e**2 <= PASCANU_SQUARED_ERROR)

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


@dataclass(frozen=True)
class AddingTCN(Adding):
    """Adding problem of the TCN benchmark (Bai, Kolter & Koltun 2018, arXiv:1803.01271; its code
    ``TCN/adding_problem/utils.py``).

    As ``adding`` (values ~ U[0, 1], target the sum, fixed length T, solved at MSE < 0.01),
    but the two markers sit at two distinct steps drawn uniformly from the whole sequence
    (``np.random.choice(T, 2, replace=False)``), so the first one may also be late. Baseline
    1/6 as for ``adding`` (its README prints 0.1767, as Le et al. 2015 do).
    """

    def positions(self, T: int, B: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        dev = generator.device
        first = torch.randint(0, T, (B,), generator=generator, device=dev)
        r = torch.randint(0, T - 1, (B,), generator=generator, device=dev)
        return first, r + (r >= first).long()  # uniform over ordered pairs of distinct steps

    def dependency(self, length: int) -> int:
        """The mean of the earlier marker: for two distinct steps of {0..T-1}, E[min] = (T - 2) / 3."""
        return (length - 2) // 3


COPY_SYMBOLS = 10  # how many symbols are to be remembered
BLANK, DELIMITER = 0, 9  # data symbols are the classes 1..8


@dataclass(frozen=True)
class Copy(Task):
    """Copying memory problem (Arjovsky et al. 2016, arXiv:1511.06464 §4.1; its code
    ``memory_problem.py``); after Hochreiter & Schmidhuber 1997.

    ``length`` is the delay T; a sequence has S = T + 20 steps. Input: 10 symbols
    drawn from the 8 data classes 1..8, T-1 blanks (0), the delimiter (9), 10
    blanks, one-hot over 10 classes. Target: blank for the first T+10 steps, then
    the 10 symbols. The loss is the cross-entropy averaged over all S steps; the
    accuracy is judged on the 10 recall steps.
    """

    def sequence_length(self, length: int) -> int:
        return length + 2 * COPY_SYMBOLS

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        T, B, K, dev = length, batch, COPY_SYMBOLS, generator.device
        S = self.sequence_length(T)
        symbols = torch.randint(1, 9, (K, B), generator=generator, device=dev)  # (K, B)
        seq = torch.full((S, B), BLANK, dtype=torch.long, device=dev)
        seq[:K] = symbols
        seq[K + T - 1] = DELIMITER
        y = torch.full((S, B), BLANK, dtype=torch.long, device=dev)
        y[T + K:] = symbols
        score_mask = torch.zeros(S, B, dtype=torch.bool, device=dev)
        score_mask[T + K:] = True
        loss_mask = torch.ones(S, B, dtype=torch.bool, device=dev)
        return Batch(F.one_hot(seq, self.input_size).float(), y, loss_mask, score_mask)

    def baseline(self, length: int) -> float:
        """Arjovsky et al. 2016 §4.1: predict blanks perfectly and guess uniformly among the 8 data
        symbols on the 10 recall steps: 10 · ln 8 / (T + 20)."""
        return COPY_SYMBOLS * math.log(8) / self.sequence_length(length)

    def lag(self, length: int) -> int:
        return length + COPY_SYMBOLS  # symbol i at step i is recalled at step T + 10 + i

    def dependency(self, length: int) -> int:
        return 0  # the first symbol

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


@dataclass(frozen=True)
class TemporalOrder(Task):
    """Temporal order problem (Pascanu et al. 2013, arXiv:1211.5063, its code ``tempOrder.py`` and
    ``tempOrder3bit.py``; after Hochreiter & Schmidhuber 1997 Exp. 6a and 6b).

    One-hot over 6 symbols: A (0), B (1) and four distractors (2..5). With w = L // 10, an
    A or B is placed at p_k ∈ [s_k·L//10, s_k·L//10 + w) for each start s_k in ``starts``
    (tenths of L; Pascanu's integer ranges int(s_k·0.1·L) + randint(int(0.1·L))); every
    other step holds a distractor, uniform among the four. The class of the A/B sequence,
    read at the last step, is the binary number it spells with A = 0, B = 1, the first
    symbol most significant: (AA, AB, BA, BB) = (0, 1, 2, 3) for two symbols, 8 classes for
    three. (Pascanu's code makes the first symbol the least significant; a relabelling
    that changes nothing.)
    """

    starts: tuple[int, ...] = (1, 5)  # where the A/B ranges start, in tenths of L

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        L, B, dev = length, batch, generator.device
        w = L // 10
        cols = torch.arange(B, device=dev)
        spots = [s * L // 10 + torch.randint(0, w, (B,), generator=generator, device=dev) for s in self.starts]
        symbols = [torch.randint(0, 2, (B,), generator=generator, device=dev) for _ in self.starts]
        seq = torch.randint(2, 6, (L, B), generator=generator, device=dev)  # distractors
        y = torch.zeros(L, B, dtype=torch.long, device=dev)
        for p, v in zip(spots, symbols):
            seq[p, cols] = v
            y[-1] = 2 * y[-1] + v
        mask = _last_step_mask(L, B, dev)
        return Batch(F.one_hot(seq, self.input_size).float(), y, mask, mask)

    def baseline(self, length: int) -> float:
        """Cross-entropy of the best memoryless guess: the 2^k classes are equally likely, ln 2^k."""
        return len(self.starts) * math.log(2)

    def lag(self, length: int) -> int:
        return length - 1 - self.starts[0] * length // 10  # the earliest first symbol, read at step L-1

    def dependency(self, length: int) -> int:
        return self.starts[0] * length // 10 + (length // 10) // 2  # the middle of the first symbol's range

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


@dataclass(frozen=True)
class Permutation(Task):
    """Random permutation problem (Pascanu et al. 2013, arXiv:1211.5063, its code ``permutation.py``;
    after Hochreiter & Schmidhuber 1997 Exp. 2, where the last symbol repeats the first).

    One-hot over 100 symbols. The first symbol is 0 or 1 (equally likely), the other L-1
    are uniform over 2..99. At the last step, predict the first symbol, as a 100-way
    softmax (Pascanu's ``nout = 100``).
    """

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        L, B, dev = length, batch, generator.device
        seq = torch.randint(2, self.input_size, (L, B), generator=generator, device=dev)
        seq[0] = torch.randint(0, 2, (B,), generator=generator, device=dev)
        y = torch.zeros(L, B, dtype=torch.long, device=dev)
        y[-1] = seq[0]
        mask = _last_step_mask(L, B, dev)
        return Batch(F.one_hot(seq, self.input_size).float(), y, mask, mask)

    def baseline(self, length: int) -> float:
        """Cross-entropy of the best memoryless guess, 1/2 on each of 0 and 1: ln 2."""
        return math.log(2)

    def lag(self, length: int) -> int:
        return length - 1  # the first symbol, read at step L-1

    def dependency(self, length: int) -> int:
        return 0

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


MEMO_VALUES, MEMO_POSITIONS = 5, 10  # Pascanu's n_values, n_pos
MEMO_BLANK, MEMO_GO = 5, 6  # input classes: symbols 0..4, blank 5, go 6; output classes: symbols 0..4, blank 5


@dataclass(frozen=True)
class Memorization(Task):
    """Noiseless memorisation problem (Pascanu et al. 2013, arXiv:1211.5063, its code
    ``memorization.py`` with its defaults n_values = 5, n_pos = 10; after Hochreiter &
    Schmidhuber 1997).

    ``length`` is the delay T; a sequence has S = T + 20 steps. Input, one-hot over 7
    classes: 10 symbols uniform over 0..4, then blanks (5), except the go marker (6) at
    step T + 10. Target, over 6 classes: blank for the first T + 10 steps, then the 10
    symbols, the first of them at the go marker's step. The loss is the cross-entropy
    averaged over all S steps. A sequence is right when all 10 recall steps are right (the
    accuracy is the fraction of right sequences); solved when it is >= 0.99. (Pascanu's
    error counts a sequence wrong when any of its S steps is wrong, blanks included.)
    """

    def sequence_length(self, length: int) -> int:
        return length + 2 * MEMO_POSITIONS

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        T, B, K, dev = length, batch, MEMO_POSITIONS, generator.device
        S = self.sequence_length(T)
        symbols = torch.randint(0, MEMO_VALUES, (K, B), generator=generator, device=dev)  # (K, B)
        seq = torch.full((S, B), MEMO_BLANK, dtype=torch.long, device=dev)
        seq[:K] = symbols
        seq[T + K] = MEMO_GO
        y = torch.full((S, B), MEMO_BLANK, dtype=torch.long, device=dev)
        y[T + K:] = symbols
        score_mask = torch.zeros(S, B, dtype=torch.bool, device=dev)
        score_mask[T + K:] = True
        loss_mask = torch.ones(S, B, dtype=torch.bool, device=dev)
        return Batch(F.one_hot(seq, self.input_size).float(), y, loss_mask, score_mask)

    def baseline(self, length: int) -> float:
        """The best memoryless predictor knows the blanks (the go marker says when the recall
        starts) and guesses uniformly among the 5 symbols on the 10 recall steps: its
        cross-entropy is ln 5 there and 0 elsewhere, averaged over S: 10 · ln 5 / (T + 20)."""
        return MEMO_POSITIONS * math.log(MEMO_VALUES) / self.sequence_length(length)

    def lag(self, length: int) -> int:
        return length + MEMO_POSITIONS  # symbol i at step i is recalled at step T + 10 + i

    def dependency(self, length: int) -> int:
        return 0  # the first symbol

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float:
        """The fraction of sequences whose every recall (score_mask) step is predicted right."""
        right = (out.argmax(dim=-1) == batch.y) | ~batch.score_mask  # (S, B)
        return right.all(dim=0).float().mean().item()

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


TASKS: dict[str, Task] = {
    "adding": Adding(
        name="adding", kind="regression", input_size=2, output_size=1, min_length=2,
        description="sum of two marked values, one in each half, read at the end "
                    "(Arjovsky 2016 variant of Hochreiter 1997)"),
    "copy": Copy(
        name="copy", kind="classification", input_size=10, output_size=10, min_length=1,
        description="recall 10 symbols after a delay of T steps; length T+20 (Arjovsky 2016)"),
    "temporal_order": TemporalOrder(
        name="temporal_order", kind="classification", input_size=6, output_size=4, min_length=10,
        description="order of two A/B symbols among distractors, 4 classes "
                    "(Pascanu 2013 code; Hochreiter 1997 Exp. 6a)"),
    "temporal_order_3bit": TemporalOrder(
        name="temporal_order_3bit", kind="classification", input_size=6, output_size=8, min_length=10,
        starts=(1, 3, 6),
        description="order of three A/B symbols among distractors, 8 classes "
                    "(Pascanu 2013 code; Hochreiter 1997 Exp. 6b)"),
    "multiplication": Multiplication(
        name="multiplication", kind="regression", input_size=2, output_size=1, min_length=2,
        description="product of two marked values, one in each half, read at the end "
                    "(Pascanu 2013; Hochreiter 1997 Exp. 5)"),
    "permutation": Permutation(
        name="permutation", kind="classification", input_size=100, output_size=100, min_length=2,
        description="recall the first of L symbols (0 or 1; the rest from 2..99) at the end "
                    "(Pascanu 2013 random permutation)"),
    "memorization": Memorization(
        name="memorization", kind="classification", input_size=7, output_size=6, min_length=1,
        description="recall 10 symbols from 5 after a delay of T steps and a go marker; length T+20 "
                    "(Pascanu 2013 noiseless memorisation)"),
}

VARIANTS: dict[str, dict[str, Task]] = {
    "adding": {
        "hochreiter": AddingHochreiter(
            name="adding", variant="hochreiter", kind="regression", input_size=2, output_size=1, min_length=11,
            description="values U[-1,1], X1 in the first ten steps, target 0.5+(X1+X2)/4, length "
                        "T..1.1T, |error| < 0.04 (Hochreiter 1997 Exp. 4)"),
        "pascanu": AddingPascanu(
            name="adding", variant="pascanu", kind="regression", input_size=2, output_size=1, min_length=10,
            description="mean of two marked values in the first half, length T..1.1T, right if "
                        "squared error <= 0.04 (Pascanu 2013 code)"),
        "tcn": AddingTCN(
            name="adding", variant="tcn", kind="regression", input_size=2, output_size=1, min_length=2,
            description="sum of two marked values placed anywhere (Bai 2018 TCN benchmark)"),
    },
}
"""Variants of a task that follow other sources, chosen with ``task.variant``; absent = the task itself."""


# The data-set task lives in its own module (it builds on gradlab.task, as the tasks above do).
TASKS["digits"] = DIGITS
VARIANTS["digits"] = DIGITS_VARIANTS


def resolve(task_cfg: dict) -> Task:
    """The task a config's ``task`` section names: ``TASKS[name]``, or ``VARIANTS[name][variant]``.

    A missing ``variant`` key (configs written before variants existed) means None.
    """
    name, variant = task_cfg["name"], task_cfg.get("variant")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; valid: {', '.join(TASKS)}")
    if variant is None:
        return TASKS[name]
    choices = VARIANTS.get(name, {})
    if variant not in choices:
        if not choices:
            raise ValueError(f"task {name} has no variants, got {variant!r}; leave task.variant null")
        raise ValueError(f"unknown variant {variant!r} for {name}{did_you_mean(variant, choices)}; "
                         f"valid: {', '.join(choices)}")
    return choices[variant]


def catalogue() -> dict[str, Task]:
    """Every task and variant by its label (``adding``, ``adding[hochreiter]``, ...), for `gradlab ls`."""
    entries = {}
    for name, task in TASKS.items():
        entries[name] = task
        entries.update({v.label: v for v in VARIANTS.get(name, {}).values()})
    return entries
