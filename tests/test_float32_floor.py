"""A profile's zeros at a float floor are never shown as a measured 0.

Before issue 22 a per-sample ‖∂L/∂h_t‖ was reduced in float32 with subnormals flushed, so a norm below 1.1e-19
read 0. A run whose env.json lacks ``norms: float64`` and whose profile falls to 0 through tiny values shows its
dependency ratio as an upper bound. A float32 run recorded since reduces in float64, but its gradient entries
below 1.2e-38 are flushed to 0 before that: its bound is at that floor. A float64 run recorded since, or a run
whose zeros follow large values (a truncation window), keeps its 0. Hand-built run directories, the bound
checked by hand.
"""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gradlab import readers, results, training
from gradlab.cells import RecurrentNet
from gradlab.cli import app
from gradlab.tasks import TASKS
from gradlab.vocabulary import FLOAT32_FLOOR, NORMS_FLOAT64, NORMS_KEY

runner = CliRunner()
HIDDEN, STEPS = 64, 500
PEAK = 0.5
FADING = np.array([0, 0, 0, 0, 3e-17, 2e-15, 1e-12, 1e-8, 1e-4, PEAK], dtype=np.float32)  # (S,) the floor's zeros
WINDOW = np.array([0, 0, 0, 0, 0, 0, 2e-3, 1e-2, 5e-2, PEAK], dtype=np.float32)  # zeros beyond a tbptt window


def write(root, name, profile, env, seed=0, dtype="float32", tbptt=None, ratio_rows=False):
    """A finished run; ``profile`` (S,) is stored in its own dtype; ``ratio_rows``: its evaluation rows carry the
    profile's dependency ratio, as training writes them."""
    config = {"name": name, "task": {"name": "adding", "length": len(profile), "eval_size": 500, "variant": None},
              "model": {"cell": "vanilla", "hidden": HIDDEN, "layers": 1},
              "train": {"steps": STEPS, "batch_size": 64, "optimizer": "adam", "lr": 0.01,
                        "clip": {"kind": "none"}, "tbptt": tbptt, "eval_every": 250},
              "device": "cpu", "dtype": dtype, "threads": 1, "seed": seed}
    summary = {"status": "ok", "final_loss": 0.2, "baseline_loss": 1 / 6, "solved": False, "steps_to_solve": None,
               "diverged": False, "steps_done": STEPS, "verdict": "vanishing", "horizon": 1, "horizon_init": 1,
               "dependency_ratio": float(profile[0] / PEAK), "dependency_lag": len(profile) - 1,
               "clip_rate": 0.0, "suggested_clip": 1.0, "grad_norm_max": 1.0}
    rows = [{"kind": "train", "step": s, "loss": 0.1} for s in (1, STEPS)]
    rows += [{"kind": "eval", "step": s, **({"dependency_ratio": summary["dependency_ratio"]} if ratio_rows else {})}
             for s in (0, 250, 500)]
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
    assert f"<{HAND_BOUND:.4g}" in wide and "float32 arithmetic made of a tiny gradient" in " ".join(wide.split())
    csv = runner.invoke(app, ["compare", str(tmp_path / "old"), "-f", "csv"]).stdout.splitlines()
    header, values = csv[0].split(","), csv[1].split(",")
    assert values[header.index("dependency_ratio_bound")] == "True"


def test_export_leaves_out_the_zero_ratios_of_a_run_cut_at_the_floor_and_keeps_a_measured_zero(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "results"
    write(root, "old", FADING, {"torch": "2.13.0"}, ratio_rows=True)
    write(root, "new", FADING.astype(np.float64), {"torch": "2.13.0", NORMS_KEY: NORMS_FLOAT64}, dtype="float64",
          ratio_rows=True)
    out = runner.invoke(app, ["export", str(root), "--tensorboard", str(tmp_path / "tb")])
    assert out.exit_code == 0, out.output
    seen = {}
    for name in ("old", "new"):
        [run_dir] = (tmp_path / "tb" / name).iterdir()
        events = EventAccumulator(str(run_dir)).Reload()
        tag = "eval/dependency_ratio"
        seen[name] = [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []
    assert seen == {"old": [], "new": [0.0, 0.0, 0.0]}  # float32's zeros are its floor's; float64's are measured


def test_the_same_profile_of_a_float64_run_recorded_in_float64_is_a_measured_zero(tmp_path):
    """dtype float64, norms reduced and stored in float64: a 0 is below float64's floor, 128 · 8 · 2.2e-308."""
    write(tmp_path, "new", FADING.astype(np.float64), {"torch": "2.13.0", NORMS_KEY: NORMS_FLOAT64}, dtype="float64")
    row = compare_json(tmp_path / "new")
    assert row["dependency_ratio_bound"] is False and row["dependency_ratio_median"] == 0.0
    wide = runner.invoke(app, ["compare", str(tmp_path / "new"), "--wide"], terminal_width=250).stdout
    assert "<" not in wide and "float32 arithmetic made of a tiny gradient" not in " ".join(wide.split())


def test_a_float32_run_whose_zeros_follow_a_truncation_window_keeps_its_zero(tmp_path):
    run = write(tmp_path, "tbptt", WINDOW, {"torch": "2.13.0"})
    assert readers.check_run(run)["floor"] is None
    row = compare_json(tmp_path / "tbptt")
    assert row["dependency_ratio_bound"] is False and row["dependency_ratio_median"] == 0.0


def test_the_group_median_is_a_bound_when_one_run_is(tmp_path):
    write(tmp_path, "mixed", FADING, {"torch": "2.13.0"}, seed=0, dtype="float64")  # an old run: norms in float32
    write(tmp_path, "mixed", FADING.astype(np.float64), {NORMS_KEY: NORMS_FLOAT64}, seed=1, dtype="float64")
    write(tmp_path, "mixed", FADING.astype(np.float64), {NORMS_KEY: NORMS_FLOAT64}, seed=2, dtype="float64")
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


# float32's smallest normal (2**-126): a float32 backward flushes gradient entries below it to 0
FLOAT32_TINY = 1.1754943508222875e-38


def test_a_new_float32_run_cut_at_its_gradients_floor_shows_that_bound(tmp_path):
    """Reduced in float64 but computed in float32: each of 128 samples lost less than sqrt(64) entries of 1.2e-38."""
    run = write(tmp_path, "new32", FADING.astype(np.float64), {NORMS_KEY: NORMS_FLOAT64})
    floor = readers.check_run(run)["floor"]
    assert floor["final"] and floor["cut_below"] == FLOAT32_TINY
    assert floor["dependency_ratio_bound"] == pytest.approx(128 * 8 * FLOAT32_TINY / PEAK, rel=1e-12)
    row = compare_json(tmp_path / "new32")
    assert row["dependency_ratio_bound"] is True and row["dependency_ratio_median"] == floor["dependency_ratio_bound"]


def test_the_bound_holds_for_what_a_float32_backward_flushes():
    g = torch.full((128, HIDDEN), 2 * 0.99 * FLOAT32_TINY)  # (B, H): a backward's entries, halved below
    true = torch.linalg.vector_norm(g.double() / 2, dim=-1).sum().item()  # what they become
    torch.set_flush_denormal(True)  # as training.torch_settings runs a backward on the CPU
    try:
        assert (g / 2 == 0).all()  # every entry just under the smallest normal: read 0 in float32
    finally:
        torch.set_flush_denormal(False)
    assert true == pytest.approx(128 * math.sqrt(HIDDEN) * 0.99 * FLOAT32_TINY)
    assert 0 < true < 128 * math.sqrt(HIDDEN) * FLOAT32_TINY  # below what the bound adds


def test_a_float64_run_stored_in_float32_is_cut_at_the_storage_floor(tmp_path):
    """A float64 run written while profile.npz still held float32: a sum below 1.4e-45 read 0."""
    smallest = float(np.finfo(np.float32).smallest_subnormal)
    run = write(tmp_path, "stored32", np.array([0, 2e-44, 1e-30, PEAK], dtype=np.float32),
                {NORMS_KEY: NORMS_FLOAT64}, dtype="float64")
    floor = readers.check_run(run)["floor"]
    assert floor["cut_below"] == smallest == 2.0**-149
    assert floor["dependency_ratio_bound"] == pytest.approx(smallest / PEAK, rel=1e-6)


def windows_holding(k1, k2):
    """(S,) how many of training's TBPTT updates back-propagate through each step: counted from chunk_losses."""
    net = RecurrentNet("gru", 10, 4, 10, seed=0)
    batch = TASKS["copy"].generate(2, 10, torch.Generator().manual_seed(0))  # S = 30, a loss at every step
    S = batch.x.shape[0]
    assert S == 30 and batch.loss_mask.all()
    count = np.zeros(S, dtype=int)
    for t0, _, _, hs in training.chunk_losses(net, TASKS["copy"], batch, {"k1": k1, "k2": k2}):
        count[t0:t0 + hs.shape[0]] += 1
    return count


@pytest.mark.parametrize("k1, k2", [(2, 5), (3, 6), (4, 5), (5, 5), (1, 3)])
def test_overlapping_tbptt_windows_count_every_update_holding_a_step(tmp_path, k1, k2):
    """Under TBPTT(k1, k2 > k1) a profile's p[t] adds one sum of 128 samples per update whose window holds t
    (training.gradient_profiles): up to ceil(k2 / k1) of them, each of which could have lost the floor."""
    windows = windows_holding(k1, k2).max()
    assert windows == math.ceil(k2 / k1)
    run = write(tmp_path, f"tbptt{k1}_{k2}", FADING, {"torch": "2.13.0"}, tbptt={"k1": k1, "k2": k2})
    bound = readers.check_run(run)["floor"]["dependency_ratio_bound"]
    assert bound == pytest.approx(windows * 128 * 8 * FLOAT32_FLOOR / PEAK, rel=1e-12)
