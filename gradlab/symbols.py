"""Tasks on symbol sequences: recall after a delay (copy, memorisation), the order of two or three
symbols among distractors (temporal order), the first symbol at the end (permutation).

Classification tasks, inputs one-hot; from Arjovsky et al. 2016 and Pascanu et al. 2013 (after
Hochreiter & Schmidhuber 1997). Registered in ``gradlab.tasks``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gradlab.task import SOLVED_ACCURACY, Batch, Task, _first_step, _last_step_mask
from gradlab.vocabulary import SYMBOLS

COPY_SYMBOLS = 10  # how many symbols are to be remembered
BLANK, DELIMITER = 0, 9  # data symbols are the classes 1..8


def _recall_batch(symbols: torch.Tensor, S: int, blank: int, marker: tuple[int, int], recall: int,
                  classes: int) -> Batch:
    """A recall sequence (copy, memorisation): the K ``symbols`` (K, B) first, blanks, the ``marker``
    (step, symbol) that calls for them, and the symbols as the targets from step ``recall`` on, where
    they are scored; every step counts in the loss (blank targets elsewhere)."""
    K, B = symbols.shape
    seq = torch.full((S, B), blank, dtype=torch.long, device=symbols.device)  # (S, B)
    seq[:K] = symbols
    seq[marker[0]] = marker[1]
    y = torch.full((S, B), blank, dtype=torch.long, device=symbols.device)
    y[recall:] = symbols
    score_mask = torch.zeros(S, B, dtype=torch.bool, device=symbols.device)
    score_mask[recall:] = True
    loss_mask = torch.ones(S, B, dtype=torch.bool, device=symbols.device)
    return Batch(F.one_hot(seq, classes).float(), y, loss_mask, score_mask)


def _symbol_at(batch: Batch, steps: torch.Tensor | int) -> torch.Tensor:
    """(B,) the class of each sequence's one-hot input at ``steps`` ((B,) step indices, or one for all)."""
    cols = torch.arange(batch.x.shape[1], device=batch.x.device)
    return batch.x[steps, cols].argmax(dim=-1)


def _symbol_target(batch: Batch, symbols: range) -> tuple[torch.Tensor, str] | None:
    """(B,) the class of the one-hot input at step 0, kind SYMBOLS; None unless every sequence's is
    one-hot and among ``symbols`` (a step hidden to zeros or a blank is no dependency input)."""
    one_hot = bool((batch.x[0].sum(dim=-1) == 1).all())
    labels = _symbol_at(batch, 0)
    inside = bool(((labels >= symbols.start) & (labels < symbols.stop)).all())
    return (labels, SYMBOLS) if one_hot and inside else None


class Recall:
    """What a recall task's (copy, memorisation) state must hold: the K symbols of steps 0..K-1, from
    the step before the recall starts on. Its memory target is the FIRST of them: the oldest, the one
    the state carries the longest, the dependency the gradient profile is judged at (``dependency``
    0); one class per sequence keeps the score one accuracy against one chance level, where all K
    at once would need K readouts or a class per K-tuple (8^10 for copy). The others, at shorter
    lags, are the memory curve's (``gradlab.memory.memory_curve``)."""

    input_kind: ClassVar[str] = SYMBOLS
    recalled: ClassVar[int]  # K, the symbols recalled: each task sets it
    data_symbols: ClassVar[range]  # the classes a symbol to recall is drawn from
    blank_symbol: ClassVar[int]  # the input class of the steps that hold nothing (copy 0, memorisation 5)

    def blank(self) -> torch.Tensor:
        """(I,) the task's own blank symbol, one-hot: what its sequence shows between the symbols and
        the marker, so a hidden symbol reads as one never given."""
        return F.one_hot(torch.tensor(self.blank_symbol), self.input_size).float()

    def memory_target(self, batch: Batch, length: int) -> tuple[torch.Tensor, str] | None:
        """(B,) the class of the input at step 0, the first symbol recalled; None where it is not a
        data symbol (hidden: blanked or zeroed)."""
        return _symbol_target(batch, self.data_symbols)

    def memory_step(self, length: int, steps: int | None = None) -> int:
        """T + K - 1: the last step before the first recall target (copy: the delimiter's step;
        memorisation: the blank before the go marker), after which no input names a symbol."""
        return length + self.recalled - 1


@dataclass(frozen=True)
class Copy(Recall, Task):
    """Copying memory problem (Arjovsky et al. 2016, arXiv:1511.06464 §4.1; its code
    ``memory_problem.py``); after Hochreiter & Schmidhuber 1997.

    ``length`` is the delay T; a sequence has S = T + 20 steps. Input: 10 symbols
    drawn from the 8 data classes 1..8, T-1 blanks (0), the delimiter (9), 10
    blanks, one-hot over 10 classes. Target: blank for the first T+10 steps, then
    the 10 symbols. The loss is the cross-entropy averaged over all S steps; the
    accuracy is judged on the 10 recall steps.
    """

    recalled: ClassVar[int] = COPY_SYMBOLS
    data_symbols: ClassVar[range] = range(1, 9)
    blank_symbol: ClassVar[int] = BLANK

    def sequence_length(self, length: int) -> int:
        return length + 2 * COPY_SYMBOLS

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        T, B, K, dev = length, batch, COPY_SYMBOLS, generator.device
        S = self.sequence_length(T)
        symbols = torch.randint(1, 9, (K, B), generator=generator, device=dev)  # (K, B)
        return _recall_batch(symbols, S, BLANK, (K + T - 1, DELIMITER), T + K, self.input_size)

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
    input_kind: ClassVar[str] = SYMBOLS

    def blank(self) -> torch.Tensor:
        """(I,) a zero vector: the task has no blank symbol (every step holds an A, a B or a distractor),
        and any symbol would be one it reads, so a hidden step names none."""
        return torch.zeros(self.input_size)

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

    def memory_target(self, batch: Batch, length: int) -> tuple[torch.Tensor, str] | None:
        """(B,) the class (A = 0, B = 1) of the first A/B symbol, the oldest input the class depends on,
        held until the last step; None when a sequence has no A/B symbol left (hidden)."""
        relevant = batch.x[..., :2].sum(dim=-1) > 0  # (S, B): one-hot classes 0 (A) and 1 (B)
        if not (relevant.sum(dim=0) == len(self.starts)).all():  # one hidden: the first left is not the first
            return None
        return _symbol_at(batch, _first_step(relevant)), SYMBOLS

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

    input_kind: ClassVar[str] = SYMBOLS

    def blank(self) -> torch.Tensor:
        """(I,) a zero vector: the task has no blank symbol (every step holds a symbol of 0..99),
        and any symbol would be one it reads, so a hidden step names none."""
        return torch.zeros(self.input_size)

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

    def memory_target(self, batch: Batch, length: int) -> tuple[torch.Tensor, str] | None:
        """(B,) the class of the first symbol (0 or 1), the target itself, held until the last step;
        None where it is not 0 or 1 (hidden)."""
        return _symbol_target(batch, range(2))

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


MEMO_VALUES, MEMO_POSITIONS = 5, 10  # Pascanu's n_values, n_pos
MEMO_BLANK, MEMO_GO = 5, 6  # input classes: symbols 0..4, blank 5, go 6; output classes: symbols 0..4, blank 5


@dataclass(frozen=True)
class Memorization(Recall, Task):
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

    recalled: ClassVar[int] = MEMO_POSITIONS
    data_symbols: ClassVar[range] = range(MEMO_VALUES)
    blank_symbol: ClassVar[int] = MEMO_BLANK

    def sequence_length(self, length: int) -> int:
        return length + 2 * MEMO_POSITIONS

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        T, B, K, dev = length, batch, MEMO_POSITIONS, generator.device
        S = self.sequence_length(T)
        symbols = torch.randint(0, MEMO_VALUES, (K, B), generator=generator, device=dev)  # (K, B)
        return _recall_batch(symbols, S, MEMO_BLANK, (T + K, MEMO_GO), T + K, self.input_size)

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
