"""What a task is: a ``Batch`` of time-major sequences and the ``Task`` interface every entry of
``gradlab.tasks.TASKS`` implements (generate, score, memoryless baseline, lag, success criterion).

The synthetic tasks (``gradlab.adding``, ``gradlab.symbols``) and the data-set task (``gradlab.digits``) build on it,
and ``gradlab.tasks`` registers them all, so the registry imports its entries, never the reverse. ``hide`` and
``Windowed`` are ``task.window``: any task with its inputs older than k steps before the readout hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gradlab.vocabulary import VALUES

SOLVED_MSE = 0.01  # adding: "solved" below this eval MSE (uRNN / IndRNN / expRNN convention)
SOLVED_ACCURACY = 0.99  # classification: Pascanu 2013 asks < 1% error on fresh sequences
# Pascanu 2013 code (RNN.py, 'lastLinear'): a regression sequence is wrong when its squared error is > .04
PASCANU_SQUARED_ERROR = 0.04
HOCHREITER_ABS_ERROR = 0.04  # Hochreiter & Schmidhuber 1997 Exp. 4: right when |error| < 0.04


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
    ``dependency``, ``solved`` and ``memory_target`` (and ``memory_step`` when the
    state is not read at the last step).
    """

    # the input at one step, as gradlab.memory.memory_curve decodes it: real VALUES, or one-hot SYMBOLS
    input_kind: ClassVar[str] = VALUES
    # whether the task declares one dependency input (``memory_target``); False: none exists (digits),
    # so gradlab.memory.memory returns {} rather than a score of None (declared, hidden in this batch)
    has_dependency_input: ClassVar[bool] = True

    name: str
    description: str  # one line with its source, shown by `gradlab ls`
    kind: str  # "regression" | "classification"
    input_size: int
    output_size: int  # regression: 1; classification: the number of classes
    min_length: int  # the shortest `length` the definition allows
    variant: str | None = None  # a key of VARIANTS[name]; None for the task itself
    default_length: int | None = None  # task.length when a config gives none; None = the config's default

    @property
    def label(self) -> str:
        """``name``, or ``name[variant]`` for a variant: how `gradlab ls` and errors call it."""
        return self.name if self.variant is None else f"{self.name}[{self.variant}]"

    def sequence_length(self, length: int) -> int:
        """S, the number of time steps of a sequence made for ``length`` (the longest S, for a task
        whose length varies from batch to batch)."""
        return length

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        """A fresh batch of ``batch`` sequences, drawn from ``generator`` on its device."""
        raise NotImplementedError

    def evaluation_set(self, size: int, length: int, generator: torch.Generator) -> Batch:
        """The fixed held-out set a run is evaluated on: ``size`` fresh sequences from ``generator``
        (a data-set task returns its test part instead)."""
        return self.generate(size, length, generator)

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

    def memory_target(self, batch: Batch, length: int) -> tuple[torch.Tensor, str] | None:
        """What the hidden state at ``memory_step`` must hold for the task to be solvable, read from
        ``batch`` itself: (target, kind), target (B,) or (B, d) floats for kind VALUES, (B,) int64
        class labels for SYMBOLS (scored by ``gradlab.memory.readout_score``); None when the task
        has no single dependency input (say why in the subclass) or the batch does not hold it
        (a sequence whose dependency input was hidden)."""
        raise NotImplementedError

    def memory_ceiling(self, length: int) -> float | None:
        """The score (``gradlab.memory.readout_score``) of the declared input read back from a state
        that holds exactly the task's target, linearly, and nothing else: what a solver that keeps
        only the answer scores. 1 where the declared input is a function of the target (a symbol the
        answer names); below 1 where it is not (adding: v1 from v1 + v2, R² 1/2), so a memory there
        is read against it, not against 1. None when the task declares no dependency input."""
        return 1.0 if self.has_dependency_input else None

    def memory_step(self, length: int, steps: int | None = None) -> int:
        """The time index of the step whose hidden state ``memory`` reads: by default the last one,
        where the target is read. ``steps``: the batch's S (a task whose length varies from batch to
        batch has no other way to know it); None = ``sequence_length(length)``."""
        return (self.sequence_length(length) if steps is None else steps) - 1

    def blank(self) -> torch.Tensor:
        """(I,) the input a step hidden by ``task.window`` shows (``Windowed``): what the task itself puts
        where there is nothing to read. Each family says what that is (``gradlab.adding``, ``gradlab.symbols``,
        ``gradlab.digits``); by default a zero vector, an input that names no value and no symbol."""
        return torch.zeros(self.input_size)

    def check_length(self, length: int) -> None:
        if length < self.min_length:
            raise ValueError(f"task {self.label!r} needs length >= {self.min_length}, got {length}")

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


def _first_step(mask: torch.Tensor) -> torch.Tensor | None:
    """mask (S, B) bool -> (B,) the first step where each sequence's mask holds; None when one never does."""
    if not mask.any(dim=0).all():
        return None
    return mask.int().argmax(dim=0)  # argmax returns the first of equal maxima


def _last_step_mask(S: int, B: int, device) -> torch.Tensor:
    mask = torch.zeros(S, B, dtype=torch.bool, device=device)
    mask[-1] = True
    return mask


def readout_steps(batch: Batch) -> torch.Tensor:
    """(B,) the step each sequence's answer is first judged at: its first ``score_mask`` step; S for a
    sequence with none (read nowhere; ``hide`` leaves it whole).

    The score mask, not the loss mask: a recall task (copy, memorisation) puts blank targets in the
    loss at every step from step 0 on, so its first loss step would hide nothing; its first scored
    step is where the first symbol is recalled, the step ``Task.lag`` measures from. Where a task
    reads one step (every other task) the two masks are the same."""
    scored = batch.score_mask
    S = scored.shape[0]
    first = scored.int().argmax(dim=0)  # argmax returns the first of equal maxima
    return torch.where(scored.any(dim=0), first, torch.full_like(first, S))


def hide(batch: Batch, window: int, blank: torch.Tensor) -> Batch:
    """``batch`` with every input more than ``window`` steps before its sequence's readout
    (``readout_steps``) replaced by ``blank`` (I,); targets and masks unchanged.

    The convention, the one ``Task.lag`` counts in: with the readout at step r, window k keeps the
    steps r - k .. r (the readout step and the k before it) and every later step, and hides steps
    0 .. r - k - 1. So an input at distance d = r - s from the readout is kept iff d <= k, and a
    window equal to a task's lag keeps every input the target depends on, one step less hides the
    earliest one (where it sits at its extreme). Per sequence: r is each sequence's own.
    """
    S = batch.x.shape[0]
    steps = torch.arange(S, device=batch.x.device)[:, None]  # (S, 1)
    read = batch.score_mask.any(dim=0)[None, :]  # (1, B): a sequence read nowhere keeps every input
    hidden = (steps < (readout_steps(batch) - window)[None, :]) & read  # (S, B)
    x = torch.where(hidden[..., None], blank.to(batch.x.device, batch.x.dtype), batch.x)  # (S, B, I)
    return Batch(x, batch.y, batch.loss_mask, batch.score_mask)


@dataclass(frozen=True)
class Windowed:
    """A task whose inputs older than ``window`` steps before the readout are hidden (``hide``),
    in its training batches and its evaluation set alike: ``task.window: k`` (``gradlab.tasks.resolve``).

    A grid over the window measures the data's own reach (``gradlab.reach``): how far back an input
    must be seen for a model to do as well as on the whole sequence. Every other fact (lag, baseline,
    dependency, scoring, the memory target, which reads a hidden input as absent) is the task's own;
    the lag stays the task's, the distance the unhidden data spans.
    """

    task: Task
    window: int

    def __getattr__(self, name: str):
        if name == "task" or name.startswith("__"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        return hide(self.task.generate(batch, length, generator), self.window, self.task.blank())

    def evaluation_set(self, size: int, length: int, generator: torch.Generator) -> Batch:
        return hide(self.task.evaluation_set(size, length, generator), self.window, self.task.blank())
