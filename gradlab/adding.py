"""The adding family: two marked values among random ones, and a function of them read at the end.

The adding problem (Hochreiter & Schmidhuber 1997, Exp. 4) in the form the RNN benchmarks use
(Arjovsky et al. 2016), the multiplication problem (Hochreiter 1997 Exp. 5; Pascanu et al. 2013),
and the adding variants that follow other sources (Hochreiter's, Pascanu's code, the TCN benchmark's).
Regression tasks: x (S, B, 2) = (value, marker); the target is at the last step. Registered in
``gradlab.tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradlab.task import (
    HOCHREITER_ABS_ERROR,
    PASCANU_SQUARED_ERROR,
    SOLVED_ACCURACY,
    SOLVED_MSE,
    VALUES,
    Batch,
    Task,
    _first_step,
    _last_step_mask,
)


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


def _first_marked_value(batch: Batch) -> tuple[torch.Tensor, str] | None:
    """The memory target of the adding family: (B,) the value at each sequence's first step whose
    marker (channel 1) is 1, kind VALUES; None when a sequence has no marked step left (hidden).

    Why the first: it is the older of the two, the input the state must carry the longest (to the
    last step, where the target is read). What a solver's state holds may be only the running
    combination of the two values, not the first one by itself: a state that holds v1 + v2
    exactly reads v1 back linearly with R² = Var v1 / Var(v1 + v2) = 1/2 (independent values;
    ``adding``, ``adding[pascanu]``, ``adding[tcn]``; a little under for ``adding[hochreiter]``), one
    that holds v1 · v2 with R² = Cov(v1, v1 v2)² / (Var v1 · Var v1 v2) = (1/24)² / (1/12 · 7/144)
    = 3/7 (``multiplication``). So R² near 1/2 can be a solver (each task declares the figure:
    ``memory_ceiling``); R² near 0 means the state has lost the first value, whatever the gradient does.
    None unless every sequence still shows both marks."""
    marked = batch.x[..., 1] == 1  # (S, B); Hochreiter's -1 markers are not marks
    if not (marked.sum(dim=0) == 2).all():  # a mark hidden: the first one left would be the second value
        return None
    first = _first_step(marked)
    cols = torch.arange(batch.x.shape[1], device=batch.x.device)
    return batch.x[first, cols, 0], VALUES


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

    def memory_target(self, batch: Batch, length: int) -> tuple[torch.Tensor, str] | None:
        """The value at the first marked step (``_first_marked_value``), held until the last step."""
        return _first_marked_value(batch)

    def memory_ceiling(self, length: int) -> float | None:
        """R² = Var v1 / Var(v1 + v2) = 1/2: v1 read from a state holding the sum (or mean) of two
        independent equally distributed values (``_first_marked_value``)."""
        return 1 / 2

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return loss < SOLVED_MSE

    def blank(self) -> torch.Tensor:
        """(value 0, marker 0): an unmarked step that carries no value, what a hidden step shows; a hidden
        mark is no mark (``_first_marked_value`` then finds the batch's dependency input gone)."""
        return torch.zeros(self.input_size)


class PascanuScored:
    """Pascanu et al. 2013's scoring of a real-valued target: a sequence is right when its squared
    error is at most PASCANU_SQUARED_ERROR; the task is solved when SOLVED_ACCURACY of them are."""

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float:
        return _hit_rate(out, batch, lambda e: e**2 <= PASCANU_SQUARED_ERROR)

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


@dataclass(frozen=True)
class Multiplication(PascanuScored, Adding):
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

    def memory_ceiling(self, length: int) -> float | None:
        """R² = Cov(v1, v1 v2)² / (Var v1 · Var v1 v2) = (1/24)² / (1/12 · 7/144) = 3/7: v1 read
        linearly from a state holding the product (``_first_marked_value``)."""
        return 3 / 7

    def baseline(self, length: int) -> float:
        """MSE of the best constant, E[U1 U2] = 1/4: Var(U1 U2) = E[U1²] E[U2²] - (E[U1] E[U2])²
        = (1/3)² - (1/2)⁴ = 1/9 - 1/16 = 7/144."""
        return (1 / 3) ** 2 - (1 / 2) ** 4


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

    def memory_target(self, batch: Batch, length: int) -> tuple[torch.Tensor, str] | None:
        """The value at the first marked step (X1, or X2 where it comes first; ``_first_marked_value``)."""
        return _first_marked_value(batch)

    def memory_ceiling(self, length: int) -> float | None:
        """R² = Var v1 / (Var v1 + Var v2) = (1 - p0) / (2 - p0) of the first marked value v1 read from a
        state holding X1 + X2 (the target is linear in it): the second marked value never sits on the
        first pair, so it is U[-1, 1] (variance 1/3), while the first is zeroed there, with probability
        p0 = 1/10 + 9/10 / (T//2 - 1) (``baseline``), variance (1 - p0)/3; 0.44 at T = 20."""
        p0 = 1 / 10 + (9 / 10) / (length // 2 - 1)
        return (1 - p0) / (2 - p0)

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float:
        return _hit_rate(out, batch, lambda e: e.abs() < HOCHREITER_ABS_ERROR)

    def blank(self) -> torch.Tensor:
        """(value 0, marker 0), as ``Adding``'s: an unmarked step with no value (a hidden first pair loses
        its -1 marker too; a hidden mark is no mark, as ``_first_marked_value`` reads it)."""
        return torch.zeros(self.input_size)

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy == 1.0


@dataclass(frozen=True)
class AddingPascanu(PascanuScored, Adding):
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


NEAR_SPAN = 4  # adding[near]: both marks fall in the last NEAR_SPAN steps, whatever the length


@dataclass(frozen=True)
class AddingNear(Adding):
    """The short-dependency control: ``adding`` with both marks among the last ``NEAR_SPAN`` steps,
    one uniform in [T - 4, T - 2), one in [T - 2, T) (the adding layout of the last four steps), the
    rest of the sequence unmarked distractors. Whatever the length, the target depends on nothing
    older than 3 steps before the readout, so a ``task.window`` grid must find a reach of 3
    (``gradlab.reach``) where ``adding`` of the same length finds T - 1: the data decides the
    horizon, not the sequence length. Baseline 1/6 and scoring as ``adding``. (gradlab's own control,
    not from a paper: the same values and marks as Arjovsky et al. 2016's adding, only placed late.)
    """

    def positions(self, T: int, B: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The two marked steps (B,) each: one uniform in [T - 4, T - 2), one uniform in [T - 2, T)."""
        first, second = super().positions(NEAR_SPAN, B, generator)  # within [0, 4): the adding layout
        return first + T - NEAR_SPAN, second + T - NEAR_SPAN

    def lag(self, length: int) -> int:
        return NEAR_SPAN - 1  # the first mark at step T - 4 at the earliest, read at step T - 1

    def dependency(self, length: int) -> int:
        return length - NEAR_SPAN + (NEAR_SPAN // 2) // 2  # the middle of the first mark's range
