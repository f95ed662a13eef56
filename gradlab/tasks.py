"""Synthetic long-dependency tasks: generators, losses, memoryless baselines, success criteria.

A task turns ``(batch, length, generator)`` into a ``Batch`` of time-major
tensors and knows how to score a model's outputs on it. Each task also states
its *memoryless baseline* (the loss of the best model that ignores the long
dependency, derived from its formula) and its *lag* (how far back a gradient
must reach), which the diagnostics compare against.

Add a task by writing a small subclass of ``Task`` (``generate``, ``baseline``,
``lag``, ``dependency``, ``solved``) and an entry in ``TASKS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SOLVED_MSE = 0.01  # adding: "solved" below this eval MSE (uRNN / IndRNN / expRNN convention)
SOLVED_ACCURACY = 0.99  # classification: Pascanu 2013 asks < 1% error on fresh sequences


@dataclass(frozen=True)
class Batch:
    """One batch, time-major.

    x (S, B, I) float inputs; y (S, B) targets (float for regression, int64 class
    index for classification; 0 where unused); loss_mask (S, B) bool: the steps the
    loss averages over; score_mask (S, B) bool: the steps the accuracy is judged on.
    """

    x: torch.Tensor
    y: torch.Tensor
    loss_mask: torch.Tensor
    score_mask: torch.Tensor

    def to(self, device, dtype) -> Batch:
        """Move every field to ``device``; cast x (and y when it is a float target) to ``dtype``."""
        y_dtype = dtype if self.y.is_floating_point() else self.y.dtype
        return Batch(self.x.to(device, dtype), self.y.to(device, y_dtype),
                     self.loss_mask.to(device), self.score_mask.to(device))

    def slice(self, t0: int, t1: int) -> Batch:
        """The time steps [t0, t1) of every field (a chunk for truncated BPTT)."""
        return Batch(self.x[t0:t1], self.y[t0:t1], self.loss_mask[t0:t1], self.score_mask[t0:t1])


@dataclass(frozen=True)
class Task:
    """What every task shares: its facts, its per-step loss and its evaluation.

    Each task is a subclass that supplies ``generate``, ``baseline``, ``lag``,
    ``dependency`` and ``solved``.
    """

    name: str
    description: str  # one line with its source, shown by `gradlab ls`
    kind: str  # "regression" | "classification"
    input_size: int
    output_size: int  # regression: 1; classification: the number of classes
    min_length: int  # the shortest `length` the definition allows

    def sequence_length(self, length: int) -> int:
        """S, the number of time steps of a sequence made for ``length``."""
        return length

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        """A fresh batch of ``batch`` sequences, drawn from ``generator`` on its device."""
        raise NotImplementedError

    def baseline(self, length: int) -> float:
        """The memoryless baseline: the loss of the best model that ignores the long dependency."""
        raise NotImplementedError

    def lag(self, length: int) -> int:
        """The longest distance in steps between an input the target depends on and where it is read."""
        raise NotImplementedError

    def dependency(self, length: int) -> int:
        """A time index of the earliest input the loss depends on in a typical sequence."""
        raise NotImplementedError

    def solved(self, loss: float, accuracy: float | None) -> bool:
        """The task's success criterion (REFERENCE §1)."""
        raise NotImplementedError

    def check_length(self, length: int) -> None:
        if length < self.min_length:
            raise ValueError(f"task {self.name!r} needs length >= {self.min_length}, got {length}")

    def step_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """out (S, B, O), y (S, B) -> (S, B) loss per element, differentiable.

        Regression: squared error of out[..., 0]; classification: cross-entropy of the logits.
        """
        if self.kind == "regression":
            return (out[..., 0] - y) ** 2
        logits = out.flatten(0, 1)  # (S * B, O): cross_entropy wants the classes in dim 1
        return F.cross_entropy(logits, y.flatten(), reduction="none").view_as(y)

    def accuracy(self, out: torch.Tensor, batch: Batch) -> float | None:
        """Fraction of the score_mask steps predicted right (classification); None for regression."""
        if self.kind == "regression":
            return None
        right = out.argmax(dim=-1) == batch.y
        return right[batch.score_mask].float().mean().item()

    @torch.no_grad()
    def evaluate(self, out: torch.Tensor, batch: Batch) -> dict:
        """{"loss": masked mean of step_loss, "accuracy": float | None, "solved": bool}."""
        losses = self.step_loss(out, batch.y)
        loss = losses[batch.loss_mask].double().mean().item()  # indexing, not `* mask`: 0 · inf is nan
        accuracy = self.accuracy(out, batch)
        return {"loss": loss, "accuracy": accuracy, "solved": self.solved(loss, accuracy)}


def _last_step_mask(S: int, B: int, device) -> torch.Tensor:
    mask = torch.zeros(S, B, dtype=torch.bool, device=device)
    mask[-1] = True
    return mask


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
        cols = torch.arange(B, device=dev)
        values = torch.rand(T, B, generator=generator, device=dev)  # (T, B)
        first = torch.randint(0, T // 2, (B,), generator=generator, device=dev)
        second = torch.randint(T // 2, T, (B,), generator=generator, device=dev)
        markers = torch.zeros(T, B, device=dev)
        markers[first, cols] = 1.0
        markers[second, cols] = 1.0
        y = torch.zeros(T, B, device=dev)
        y[-1] = values[first, cols] + values[second, cols]
        mask = _last_step_mask(T, B, dev)
        return Batch(torch.stack([values, markers], dim=-1), y, mask, mask)

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


TEMPORAL_CLASSES = ("AA", "AB", "BA", "BB")  # class = 2 · first + second, with A = 0, B = 1


@dataclass(frozen=True)
class TemporalOrder(Task):
    """Temporal order problem (Pascanu et al. 2013, arXiv:1211.5063, its code ``tempOrder.py``;
    after Hochreiter & Schmidhuber 1997 Exp. 6a).

    One-hot over 6 symbols: A (0), B (1) and four distractors (2..5). With w = L // 10,
    an A or B is placed at p0 ∈ [w, 2w) and another at p1 ∈ [L//2, L//2 + w) (Pascanu's
    integer ranges for [0.1L, 0.2L) and [0.5L, 0.6L)); every other step holds a
    distractor, uniform among the four. The class of the pair (first, second), one of
    AA, AB, BA, BB, is read at the last step. (Pascanu's code numbers the classes
    first + 2 · second; we use 2 · first + second, a relabelling that changes nothing.)
    """

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        L, B, dev = length, batch, generator.device
        w = L // 10
        cols = torch.arange(B, device=dev)
        p0 = w + torch.randint(0, w, (B,), generator=generator, device=dev)
        p1 = L // 2 + torch.randint(0, w, (B,), generator=generator, device=dev)
        v0 = torch.randint(0, 2, (B,), generator=generator, device=dev)
        v1 = torch.randint(0, 2, (B,), generator=generator, device=dev)
        seq = torch.randint(2, 6, (L, B), generator=generator, device=dev)  # distractors
        seq[p0, cols] = v0
        seq[p1, cols] = v1
        y = torch.zeros(L, B, dtype=torch.long, device=dev)
        y[-1] = 2 * v0 + v1
        mask = _last_step_mask(L, B, dev)
        return Batch(F.one_hot(seq, self.input_size).float(), y, mask, mask)

    def baseline(self, length: int) -> float:
        """Cross-entropy of the best memoryless guess: the 4 classes are equally likely, ln 4."""
        return math.log(len(TEMPORAL_CLASSES))

    def lag(self, length: int) -> int:
        return length - 1 - length // 10  # earliest p0 = L//10, read at step L-1

    def dependency(self, length: int) -> int:
        w = length // 10
        return w + w // 2  # the middle of p0's range [w, 2w)

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
}
