"""Runs recorded with float32 gradient norms (before issue 22): their floor zeros are never shown as a measured 0.

A per-sample ‖∂L/∂h_t‖ was reduced in float32 with subnormals flushed, so a norm below 1.1e-19 read 0. A run
whose env.json lacks ``norms: float64`` and whose profile falls to 0 through tiny values shows its dependency
ratio as an upper bound; the same run recorded in float64, or a float32 run whose zeros follow large values
(a truncation window), keeps its 0. Hand-built run directories, the bound checked by hand.
"""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gradlab import readers, results, training
from gradlab.cli import app
from gradlab.vocabulary import FLOAT32_FLOOR, NORMS_FLOAT64, NORMS_KEY

runner = CliRunner()
HIDDEN, STEPS = 64, 500
PEAK = 0.5
FADING = np.array([0, 0, 0, 0, 3e-17, 2e-15, 1e-12, 1e-8, 1e-4, PEAK], dtype=np.float32)  # (S,) the floor's zeros
WINDOW = np.array([0, 0, 0, 0, 0, 0, 2e-3, 1e-2, 5e-2, PEAK], dtype=np.float32)  # zeros beyond a tbptt window


def write(root, name, profile, env, seed=0):
    config = {"name": name, "task": {"name": "adding", "length": len(profile), "eval_size": 500, "variant": None},
              "model": {"cell": "vanilla", "hidden": HIDDEN, "layers": 1},
              "train": {"steps": STEPS, "batch_size": 64, "optimizer": "adam", "lr": 0.01,
                        "clip": {"kind": "none"}, "tbptt": None, "eval_every": 250},
              "device": "cpu", "dtype": "float32", "threads": 1, "seed": seed}
    summary = {"status": "ok", "final_loss": 0.2, "baseline_loss": 1 / 6, "solved": False, "steps_to_solve": None,
               "diverged": False, "steps_done": STEPS, "verdict": "vanishing", "horizon": 1, "horizon_init": 1,
               "dependency_ratio": float(profile[0] / PEAK), "dependency_lag": len(profile) - 1,
               "clip_rate": 0.0, "suggested_clip": 1.0, "grad_norm_max": 1.0}
    rows = [{"kind": "train", "step": s, "loss": 0.1} for s in (1, STEPS)]
    rows += [{"kind": "eval", "step": s} for s in (0, 250, 500)]
    grad = np.stack([profile] * 3)  # (E, S)
    path = root / name / f"cell=vanilla_seed={seed}_{seed:016x}"
    results.save_run(path, config, env, rows, summary,
                     profile={"step": np.array([0, 250, 500]), "grad_norm": grad})
    return path


def compare_json(root):
    out = runner.invoke(app, ["compare", str(root), "-f", "json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.stdout)
    return row


# the bound by hand: 128 of the 500 evaluation sequences, each losing less than sqrt(64) entries of 1.1e-19
HAND_BOUND = 0.0 + 128 * 8 * 1.0842021724855044e-19 / PEAK


def test_a_float32_run_cut_at_the_floor_shows_its_dependency_ratio_as_an_upper_bound(tmp_path):
    write(tmp_path, "old", FADING, {"torch": "2.13.0"})
    row = compare_json(tmp_path / "old")
    assert row["dependency_ratio_bound"] is True
    assert row["dependency_ratio_median"] == pytest.approx(HAND_BOUND, rel=1e-12)
    md = runner.invoke(app, ["compare", str(tmp_path / "old"), "-f", "markdown"]).stdout
    assert f"<{HAND_BOUND:.4g}" in md
    wide = runner.invoke(app, ["compare", str(tmp_path / "old"), "--wide"], terminal_width=250).stdout
    assert f"<{HAND_BOUND:.4g}" in wide and "recorded in float32" in wide
    csv = runner.invoke(app, ["compare", str(tmp_path / "old"), "-f", "csv"]).stdout.splitlines()
    header, values = csv[0].split(","), csv[1].split(",")
    assert values[header.index("dependency_ratio_bound")] == "True"


def test_the_same_profile_recorded_in_float64_is_a_measured_zero(tmp_path):
    write(tmp_path, "new", FADING, {"torch": "2.13.0", NORMS_KEY: NORMS_FLOAT64})
    row = compare_json(tmp_path / "new")
    assert row["dependency_ratio_bound"] is False and row["dependency_ratio_median"] == 0.0
    wide = runner.invoke(app, ["compare", str(tmp_path / "new"), "--wide"], terminal_width=250).stdout
    assert "<" not in wide and "recorded in float32" not in wide


def test_a_float32_run_whose_zeros_follow_a_truncation_window_keeps_its_zero(tmp_path):
    run = write(tmp_path, "tbptt", WINDOW, {"torch": "2.13.0"})
    assert readers.check_run(run)["floor"] is None
    row = compare_json(tmp_path / "tbptt")
    assert row["dependency_ratio_bound"] is False and row["dependency_ratio_median"] == 0.0


def test_the_group_median_is_a_bound_when_one_run_is(tmp_path):
    write(tmp_path, "mixed", FADING, {"torch": "2.13.0"}, seed=0)
    write(tmp_path, "mixed", FADING, {NORMS_KEY: NORMS_FLOAT64}, seed=1)
    write(tmp_path, "mixed", FADING, {NORMS_KEY: NORMS_FLOAT64}, seed=2)
    row = compare_json(tmp_path / "mixed")
    assert row["dependency_ratio_bound"] is True and row["dependency_ratio_median"] == 0.0  # median of 0, 0, bound


def test_the_bound_holds_for_what_float32_flushed_and_new_runs_record_float64():
    torch.set_flush_denormal(True)
    try:
        g = torch.full((128, HIDDEN), 0.99 * FLOAT32_FLOOR)  # (B, H): every entry just under the floor
        assert torch.linalg.vector_norm(g, dim=-1).sum().item() == 0.0  # the float32 reduction read 0
    finally:
        torch.set_flush_denormal(False)
    true = torch.linalg.vector_norm(g.double(), dim=-1).sum().item()  # what it was
    assert 0 < true / PEAK < HAND_BOUND and true == pytest.approx(128 * math.sqrt(HIDDEN) * 0.99 * FLOAT32_FLOOR)
    env = training.environment({"device": "cpu", "threads": 1, "seed": 0, "dtype": "float32"})
    assert env[NORMS_KEY] == NORMS_FLOAT64
