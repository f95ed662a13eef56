"""The digits task: the split, the baseline, the pixel orders and the stretched layout, checked against
scikit-learn's data read independently; validation of lengths and variants; a real run on rows."""

import contextlib
import io
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from gradlab import digits
from gradlab.tasks import TASKS, VARIANTS, resolve

PIXEL, PERMUTED, ROWS = TASKS["digits"], VARIANTS["digits"]["permuted"], VARIANTS["digits"]["rows"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def raw():
    """load_digits' own arrays: pixels (1797, 64) in 0..16, labels (1797,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target


def rows_of(x) -> set:
    """Each image (row of an (N, 64) array, scaled back to 0..16) as a hashable tuple."""
    return {tuple(r) for r in np.rint(np.asarray(x) * 16).astype(int).tolist()}


# ---------------------------------------------------------------------------
# The split


def test_split_is_disjoint_and_covers_the_data(raw):
    pixels, _ = raw
    s = digits.split()
    assert s.train_x.shape == (1347, 64) and s.test_x.shape == (450, 64)
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert 0 <= s.train_x.min() and s.train_x.max() == 1  # scaled from 0..16
    assert len(rows_of(pixels)) == 1797  # no image repeats in the data, so rows identify images
    train, test = rows_of(s.train_x), rows_of(s.test_x)
    assert len(train) == 1347 and len(test) == 450
    assert not train & test
    assert train | test == rows_of(pixels / 16)


def test_split_keeps_each_image_with_its_label(raw):
    pixels, labels = raw
    label_of = {tuple(p): int(c) for p, c in zip(pixels.astype(int).tolist(), labels)}
    s = digits.split()
    for x, y in ((s.train_x, s.train_y), (s.test_x, s.test_y)):
        assert [label_of[tuple(p)] for p in np.rint(x.numpy() * 16).astype(int).tolist()] == y.tolist()


def test_split_is_stratified(raw):
    _, labels = raw
    s = digits.split()
    total, test = Counter(labels.tolist()), Counter(s.test_y.tolist())
    assert set(test) == set(range(10))
    for c, n in total.items():  # each class's share of the test part is a quarter, to one image
        assert abs(test[c] - n / 4) <= 1, (c, test[c], n)


FINGERPRINT = """
import hashlib
from gradlab import digits
s = digits.split()
parts = [s.train_x, s.train_y, s.test_x, s.test_y, digits.permutation()]
print(hashlib.sha1(b"".join(p.numpy().tobytes() for p in parts)).hexdigest())
"""


def test_another_process_imports_sklearn_only_for_the_task_and_makes_the_same_split():
    """One fresh process (each costs seconds): `gradlab ls` and the other modules leave scikit-learn
    unimported; the split and the permutation it then makes hash as this process's do."""
    code = ("import sys, gradlab.cli, gradlab.config, gradlab.training\n"
            "from typer.testing import CliRunner\n"
            "assert CliRunner().invoke(gradlab.cli.app, ['ls']).exit_code == 0\n"
            "print('sklearn' in sys.modules)\n" + FINGERPRINT + "print('sklearn' in sys.modules)\n")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    digits.split.cache_clear()  # here, made again from scratch
    digits.permutation.cache_clear()
    scope = {}
    with contextlib.redirect_stdout(io.StringIO()) as here:
        exec(FINGERPRINT, scope)
    assert there == ["False", here.getvalue().strip(), "True"]


def test_split_and_permutation_are_pinned():
    """Recorded once (scikit-learn 1.9.1, NumPy 2.4): a change in either library's random stream fails here."""
    assert digits.split().test_y[:12].tolist() == [2, 0, 4, 9, 4, 1, 2, 4, 6, 7, 9, 1]
    assert digits.permutation()[:10].tolist() == [45, 29, 43, 61, 34, 33, 31, 40, 26, 62]


# ---------------------------------------------------------------------------
# The baseline, the lag, the success criterion


def test_baseline_is_the_entropy_of_the_training_prior():
    counts = Counter(digits.split().train_y.tolist())
    n = sum(counts.values())
    entropy = -sum(k / n * math.log(k / n) for k in counts.values())
    for task in (PIXEL, PERMUTED, ROWS):
        for length in (task.min_length, 200):
            assert task.baseline(length) == pytest.approx(entropy, rel=1e-12)
    assert entropy < math.log(10) and entropy == pytest.approx(math.log(10), abs=1e-3)  # a near-uniform prior


def test_the_prior_on_the_test_part_scores_as_the_baseline_says():
    """The docstring's claim: the training prior's cross-entropy on the test labels is H(prior) to 1e-3."""
    s = digits.split()
    prior = torch.bincount(s.train_y, minlength=10).double() / len(s.train_y)
    cross = -prior.log()[s.test_y].mean().item()
    assert abs(cross - PIXEL.baseline(64)) < 1e-3


def test_lag_dependency_and_success():
    for task, length in ((PIXEL, 64), (PERMUTED, 100), (ROWS, 8), (ROWS, 30)):
        assert task.lag(length) == length - 1 and task.dependency(length) == 0
    assert PIXEL.solved(0.3, 0.9) and not PIXEL.solved(0.3, 0.89)


# ---------------------------------------------------------------------------
# Layouts: pixel order, rows, stretched lengths


def test_pixel_sequence_reads_the_image_row_major_then_blanks():
    s, length = digits.split(), 100
    b = PIXEL.evaluation_set(5, length, gen())
    assert b.x.shape == (length, 5, 1) and b.y.shape == (length, 5)
    assert torch.equal(b.x[:64, :, 0], s.test_x[:5].T)  # step t: pixel t = (row t // 8, column t % 8)
    assert torch.equal(b.x[64:], torch.zeros(length - 64, 5, 1))
    assert torch.equal(b.y[-1], s.test_y[:5]) and not b.y[:-1].any()
    last = torch.zeros(length, 5, dtype=torch.bool)
    last[-1] = True
    assert torch.equal(b.loss_mask, last) and torch.equal(b.score_mask, last)


def test_rows_read_one_image_row_per_step(raw):
    images = digits.split().test_x[:3].view(3, 8, 8)  # (B, row, column)
    b = ROWS.evaluation_set(3, 20, gen())
    assert b.x.shape == (20, 3, 8)
    for r in range(8):
        assert torch.equal(b.x[r], images[:, r])
    assert not b.x[8:].any()
    pixel = PIXEL.evaluation_set(3, 64, gen())
    assert torch.equal(b.x[:8].transpose(0, 1).reshape(3, 64), pixel.x[:, :, 0].T)  # the same pixels, 8 a step


def test_permuted_reads_the_same_pixels_in_one_fixed_order():
    perm = digits.permutation()
    assert sorted(perm.tolist()) == list(range(64)) and perm.tolist() != list(range(64))
    digits.permutation.cache_clear()
    assert torch.equal(digits.permutation(), perm)  # made again, the same
    plain, permuted = PIXEL.generate(6, 70, gen(3)), PERMUTED.generate(6, 70, gen(3))  # same images drawn
    assert torch.equal(permuted.x[:64], plain.x[:64][perm])
    assert torch.equal(permuted.y, plain.y) and not permuted.x[64:].any()


def test_training_batches_sample_the_training_part_with_the_seed():
    s = digits.split()
    a, b, c = PIXEL.generate(200, 64, gen(7)), PIXEL.generate(200, 64, gen(7)), PIXEL.generate(200, 64, gen(8))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert rows_of(a.x[:, :, 0].T) <= rows_of(s.train_x)


def test_the_evaluation_set_is_the_test_part_whatever_the_seed():
    s = digits.split()
    full = PIXEL.evaluation_set(1000, 64, gen(1))
    assert full.x.shape[1] == 450 and torch.equal(full.x[:64, :, 0], s.test_x.T)
    assert torch.equal(PIXEL.evaluation_set(1000, 64, gen(2)).x, full.x)
    assert torch.equal(PIXEL.evaluation_set(100, 64, gen(1)).x, full.x[:, :100])


# ---------------------------------------------------------------------------
# Config: default lengths, validation


def load_config(tmp_path, text, *overrides):
    from gradlab.config import load

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load(path, list(overrides))


def test_each_variant_defaults_to_its_own_length(tmp_path):
    _, runs = load_config(tmp_path, "task: {name: digits}\ngrid: {task.variant: [null, permuted, rows]}\n")
    assert [r.config["task"]["length"] for r in runs] == [64, 64, 8]
    _, runs = load_config(tmp_path, "task: {name: digits, length: 80}\ngrid: {task.variant: [null, rows]}\n")
    assert [r.config["task"]["length"] for r in runs] == [80, 80]  # a stated length applies to every variant
    _, (run,) = load_config(tmp_path, "task: {name: digits}\n", "task.length=70")
    assert run.config["task"]["length"] == 70
    _, runs = load_config(tmp_path, "grid: {task: [{name: digits, variant: rows}, {name: adding}]}\n")
    assert [r.config["task"]["length"] for r in runs] == [8, 50]  # adding keeps the config default
    _, runs = load_config(tmp_path, "task: {name: digits}\ngrid: {task.length: [64, 128]}\n")
    assert [r.config["task"]["length"] for r in runs] == [64, 128]


@pytest.mark.parametrize("text, line", [
    ("task:\n  name: digits\n  length: 32\n", "c.yaml:3: task.length: digits needs length >= 64, got 32"),
    ("task:\n  name: digits\n  variant: rows\n  length: 4\n",
     "c.yaml:4: task.length: digits[rows] needs length >= 8, got 4"),
    ("task:\n  name: digits\n  variant: permutd\n",
     "c.yaml:3: task.variant: unknown variant 'permutd' for digits (did you mean 'permuted'?); valid: permuted, rows"),
    ("task:\n  name: digit\n", "c.yaml:2: task.name: unknown task 'digit' (did you mean 'digits'?)"),
])
def test_bad_lengths_and_variants_are_located_one_liners(tmp_path, text, line):
    from typer.testing import CliRunner

    from gradlab.cli import app

    (tmp_path / "c.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    problems = [x for x in result.output.splitlines() if "c.yaml:" in x]
    assert len(problems) == 1 and line in problems[0].replace(str(tmp_path) + "/", ""), result.output


# ---------------------------------------------------------------------------
# A real run through the normal training path


def test_a_tiny_lstm_beats_the_baseline_on_rows(tmp_path, monkeypatch):
    from gradlab.training import train

    evaluated, real = [], digits.Digits.evaluation_set

    def spy(self, size, length, generator):
        batch = real(self, size, length, generator)
        evaluated.append(batch.x.shape[1])
        return batch

    monkeypatch.setattr(digits.Digits, "evaluation_set", spy)

    _, (run,) = load_config(tmp_path, "task: {name: digits, variant: rows}\nmodel: {cell: lstm, hidden: 16}\n"
                                      "train: {steps: 150, batch_size: 32, lr: 0.02, eval_every: 150}\n")
    assert resolve(run.config["task"]) is ROWS and run.config["task"]["length"] == 8
    summary = train(run.config)["summary"]
    assert summary["baseline_loss"] == pytest.approx(ROWS.baseline(8))
    assert summary["final_loss"] < 0.5 * summary["baseline_loss"]
    assert summary["final_accuracy"] > 0.6  # chance: 0.1
    assert evaluated == [450]  # scored on the test part, all 450 images
