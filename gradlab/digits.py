"""A real data set: handwritten digits read pixel by pixel, with a lag the config can stretch.

scikit-learn's ``load_digits()`` (a copy of the test part of the UCI "optical
recognition of handwritten digits" set: 1797 images of 8x8 pixels, values 0..16,
10 classes) ships inside the scikit-learn wheel, so it loads with no network. Read
one pixel per step it is a 64-step sequence classification, the small analogue of
the pixel MNIST of Le, Jaitly & Hinton 2015 §4.3 (784 steps; also Arjovsky et al.
2016, the TCN benchmark), on data nobody here made.

The images are split once into a training and a test part (``split``: stratified
by class, seeded, fixed). A training batch samples the training part with the
run's generator; the evaluation set is the test part, the same for every run. The
entries (``DIGITS``, ``DIGITS_VARIANTS``) are registered by ``gradlab.tasks``;
scikit-learn is imported on first use only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from gradlab.task import Batch, Task, _last_step_mask

SIDE = 8  # the images are SIDE x SIDE
PIXELS = SIDE * SIDE
CLASSES = 10
MAX_VALUE = 16  # load_digits' pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap)
TEST_FRACTION = 0.25  # train_test_split's default: 1347 training, 450 test images
SPLIT_SEED = 0  # train_test_split(random_state=...)
PERMUTATION_SEED = 0  # digits[permuted]: np.random.RandomState(0).permutation(64), a stream NumPy keeps frozen
SOLVED_ACCURACY = 0.9  # test accuracy; logistic regression on the 64 pixels scores 0.969 (README, Tasks)


@dataclass(frozen=True)
class Split:
    """The fixed train/test split: pixels (N, 64) float32 in [0, 1], row-major; labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@functools.lru_cache(maxsize=1)
def split() -> Split:
    """The images, scaled to [0, 1], split stratified by class with ``SPLIT_SEED`` (loaded once per process)."""
    from sklearn.datasets import load_digits  # here, not at the top: only a digits run pays for the import
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / MAX_VALUE).astype(np.float32)  # (1797, 64), row-major pixels
    train_x, test_x, train_y, test_y = train_test_split(x, data.target, test_size=TEST_FRACTION,
                                                        stratify=data.target, random_state=SPLIT_SEED)
    return Split(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (train_x, train_y.astype(np.int64),
                                                                       test_x, test_y.astype(np.int64))))


@functools.lru_cache(maxsize=1)
def permutation() -> torch.Tensor:
    """(64,) the fixed pixel order of ``digits[permuted]``: step t reads pixel permutation()[t]."""
    return torch.from_numpy(np.random.RandomState(PERMUTATION_SEED).permutation(PIXELS))


@dataclass(frozen=True)
class Digits(Task):
    """Digits read pixel by pixel (Le, Jaitly & Hinton 2015 §4.3, pixel MNIST, on sklearn's 8x8 digits).

    One scalar per step, the pixels in row-major order scaled to [0, 1] (``permuted``:
    in one fixed random order, Le et al.'s permuted MNIST; ``rows``: 8 steps of 8
    pixels, one image row per step, the easy control). ``length`` is the number of
    steps S: the image fills the first 64 (rows: 8) and the rest, up to S, are blank
    (zero), so the same data tests a dependency of any length. The class is read at
    the last step, with cross-entropy. The first pixel, at step 0, is the lag of
    S - 1 steps the gradient profile is judged at (``dependency`` 0); that corner
    pixel is 0 in every image, the top row's middle pixels (steps 2-5) carry ink.
    Training batches draw images uniformly, with replacement, from the training part;
    the evaluation set is the first ``eval_size`` images of the test part (all 450
    with the default 1000). Solved at test accuracy >= 0.9.
    """

    step_pixels: int = 1  # pixels read per step: 1, or SIDE for rows
    permuted: bool = False

    def generate(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        self.check_length(length)
        data, dev = split(), generator.device
        picks = torch.randint(0, data.train_y.shape[0], (batch,), generator=generator, device=dev)  # (B,)
        return self.sequences(data.train_x.to(dev)[picks], data.train_y.to(dev)[picks], length)

    def evaluation_set(self, size: int, length: int, generator: torch.Generator) -> Batch:
        """The test part's first ``size`` images (all of them when ``size`` >= 450), whatever the generator."""
        self.check_length(length)
        data, dev = split(), generator.device
        return self.sequences(data.test_x[:size].to(dev), data.test_y[:size].to(dev), length)

    def sequences(self, pixels: torch.Tensor, labels: torch.Tensor, length: int) -> Batch:
        """pixels (B, 64), labels (B,) -> the batch of S = ``length`` steps: the image first, blanks after."""
        B, dev = labels.shape[0], labels.device
        if self.permuted:
            pixels = pixels[:, permutation().to(dev)]
        steps = PIXELS // self.step_pixels
        x = torch.zeros(length, B, self.input_size, device=dev)  # (S, B, I)
        x[:steps] = pixels.view(B, steps, self.step_pixels).transpose(0, 1)
        y = torch.zeros(length, B, dtype=torch.long, device=dev)
        y[-1] = labels
        mask = _last_step_mask(length, B, dev)
        return Batch(x, y, mask, mask)

    def baseline(self, length: int) -> float:
        """Cross-entropy of the memoryless predictor, the training part's class prior p: H(p) = -Σ_c p_c ln p_c.

        (On the stratified test part its cross-entropy differs from H(p) by under 1e-3.)
        """
        p = torch.bincount(split().train_y, minlength=CLASSES).double() / split().train_y.shape[0]
        return -sum(q * math.log(q) for q in p.tolist() if q > 0)

    def lag(self, length: int) -> int:
        return length - 1  # the first pixel (row) at step 0, the class read at step S-1

    def dependency(self, length: int) -> int:
        return 0  # the first pixel (row)

    has_dependency_input: ClassVar[bool] = False  # gradlab.memory.memory returns {}

    def blank(self) -> torch.Tensor:
        """(I,) 0 pixels (a row of them for ``rows``): the ink-free background, what the blank steps after
        the image already show, so a hidden pixel reads as one with no ink."""
        return torch.zeros(self.input_size)

    def memory_target(self, batch: Batch, length: int) -> None:
        """None: no single input is the dependency. The class is the target itself, a function of
        all 64 pixels, so the one input to read back from the last state does not exist, and
        decoding the class from it is what the model's own readout does (the eval accuracy).
        What applies instead is the memory curve (``gradlab.memory.memory_curve``): how well the
        pixel (row) read k steps before the last step is decoded from the last state, for a range
        of lags k; pixels that are the same in every image (the corners, the blank steps after 64)
        have nothing to decode and score None."""
        return None

    def solved(self, loss: float, accuracy: float | None) -> bool:
        return accuracy >= SOLVED_ACCURACY


def _digits(variant: str | None, description: str, step_pixels: int = 1, permuted: bool = False) -> Digits:
    steps = PIXELS // step_pixels
    return Digits(name="digits", variant=variant, kind="classification", input_size=step_pixels,
                  output_size=CLASSES, min_length=steps, default_length=steps, description=description,
                  step_pixels=step_pixels, permuted=permuted)


DIGITS = _digits(None, "8x8 digits (sklearn load_digits) read a pixel a step, class at the end; "
                                "length >= 64 adds blanks (Le 2015 pixel MNIST)")
DIGITS_VARIANTS = {
    "permuted": _digits("permuted", "digits with the 64 pixels in one fixed random order "
                                    "(Le 2015 permuted MNIST)", permuted=True),
    "rows": _digits("rows", "digits read one 8-pixel row per step, 8 steps; length >= 8 adds blank rows "
                            "(the easy control)", step_pixels=SIDE),
}
