"""Plots: a results tree written by hand (2 cells x 2 seeds, a run without a profile, a failed and an
unfinished run) -> the expected PNG files, valid and non-empty; missing data never crash."""

import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from gradlab import results
from gradlab.plots import Layout, load_runs, plot

S, STEPS, EVAL_EVERY = 25, 40, 10
RATE = {"vanilla": 0.6, "lstm": 0.97, "gru": 0.9}  # per-step factor of each cell's made-up profile


def config(cell: str, seed: int, clip: dict, tbptt: int | None = None) -> dict:
    return {"name": "demo", "task": {"name": "adding", "length": S, "eval_size": 100},
            "model": {"cell": cell, "hidden": 8, "nonlinearity": None, "skip": 10, "engine": "scan"},
            "train": {"steps": STEPS, "batch_size": 4, "optimizer": "adam", "lr": 0.001, "clip": clip,
                      "tbptt": tbptt, "eval_every": EVAL_EVERY, "on_nonfinite": "skip"},
            "seeds": [seed], "grid": {}, "device": "cpu", "dtype": "float32", "threads": 1, "seed": seed}


def rows(cell: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for step in range(1, STEPS + 1):
        norm = float(rng.lognormal(0.0, 0.3))
        out.append({"kind": "train", "step": step, "loss": 0.2, "grad_norm": norm,
                    "grad_norm_clipped": min(norm, 1.0), "clip_active": int(norm > 1.0),
                    "nonfinite": int(step == 7), "updates": int(step != 7)})
        if step % EVAL_EVERY == 0:
            out.append({"kind": "eval", "step": step, "eval_loss": 0.17 * RATE[cell] ** step,
                        "eval_accuracy": None, "solved": 0, "decay_rate": np.log(RATE[cell])})
    return out


def write_run(root, cell: str, seed: int, *, clip=None, profile=True, status="ok", tbptt=None):
    clip = clip or {"kind": "norm", "max_norm": 1.0}
    run_dir = root / "demo" / (f"{cell}-s{seed}-{clip['kind']}" + ("" if tbptt is None else f"-k{tbptt}"))
    summary = {"status": status, "final_loss": 0.1, "baseline_loss": 1 / 6, "dependency_lag": S - 1 - 6}
    results.save_run(run_dir, config(cell, seed, clip, tbptt), {}, rows(cell, seed), summary,
                     error="Traceback" if status == "failed" else None)
    if profile:
        steps = np.arange(EVAL_EVERY, STEPS + 1, EVAL_EVERY, dtype=np.int64)  # (E,)
        lag = (S - 1) - np.arange(S)
        grad = np.stack([RATE[cell] ** lag * (1 + 0.1 * e) for e in range(len(steps))])  # (E, S)
        if tbptt is not None:
            grad[:, lag >= tbptt] = 0.0  # no gradient crosses the window
        np.savez(run_dir / "profile.npz", step=steps, grad_norm=grad.astype(np.float32))
    return run_dir


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results"
    for cell in ("vanilla", "lstm"):
        for seed in (0, 1):
            write_run(root, cell, seed)
    write_run(root, "gru", 0, profile=False)  # metrics but no profile
    write_run(root, "gru", 1, status="failed")
    unfinished = write_run(root, "lstm", 2)
    (unfinished / results.SUMMARY).unlink()
    return root


def test_plot_writes_every_figure(tree, tmp_path):
    out = tmp_path / "plots"
    written = plot(tree, out)
    names = sorted(p.name for p in written)
    assert names == sorted(["learning_curves.png", "grad_norm.png", "grad_profile.png",
                            "profile_heatmap_lstm-s0-norm.png", "profile_heatmap_vanilla-s0-norm.png"])
    assert sorted(p.name for p in out.iterdir()) == names  # nothing written that is not returned
    for p in written:
        assert_png(p)


def test_runs_without_profiles_still_get_curves(tmp_path):
    root = tmp_path / "results"
    write_run(root, "gru", 0, profile=False)
    write_run(root, "gru", 1, profile=False, clip={"kind": "none"})
    names = sorted(p.name for p in plot(root, tmp_path / "plots"))
    assert names == ["grad_norm.png", "learning_curves.png"]


def test_runs_without_metrics_or_any_finished_run(tmp_path):
    root = tmp_path / "results"
    run_dir = write_run(root, "lstm", 0)
    (run_dir / results.METRICS).unlink()
    names = sorted(p.name for p in plot(root, tmp_path / "plots"))
    assert names == ["grad_profile.png", "profile_heatmap_lstm-s0-norm.png"]
    assert plot(tmp_path / "empty", tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_truncated_and_diverged_runs_are_drawn(tmp_path):
    root = tmp_path / "results"
    write_run(root, "lstm", 0)
    write_run(root, "lstm", 0, tbptt=5)  # profile exactly 0 beyond the window: blank on a log scale
    diverged = write_run(root, "lstm", 1, tbptt=5)
    metrics = pd.read_csv(diverged / results.METRICS)
    metrics.loc[metrics["kind"] == "eval", "eval_loss"] = np.inf
    metrics.to_csv(diverged / results.METRICS, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN or log-of-zero warnings either
        written = plot(root, tmp_path / "plots")
    assert sorted(p.name for p in written) == sorted([
        "learning_curves.png", "grad_norm.png", "grad_profile.png",
        "profile_heatmap_lstm-s0-norm.png", "profile_heatmap_lstm-s0-norm-k5.png"])
    for p in written:
        assert_png(p)


def test_panels_and_colours_name_what_differs(tmp_path):
    root = tmp_path / "results"
    for cell in ("vanilla", "lstm"):
        write_run(root, cell, 0)
        write_run(root, cell, 0, tbptt=5)
    layout = Layout(load_runs(root))
    assert layout.hue == "cell"
    assert sorted(layout.title(p) for p in layout.panels) == ["adding, T=25 — TBPTT window 5",
                                                             "adding, T=25 — full BPTT"]
    lstm_only = Layout([r for r in load_runs(root) if r.params["cell"] == "lstm"])
    assert lstm_only.hue == "tbptt"  # one cell: the colours tell the windows apart, the title names the cell
    assert [lstm_only.title(p) for p in lstm_only.panels] == ["adding, T=25 — lstm"]
    assert sorted(lstm_only.label(g) for g in lstm_only.groups) == ["TBPTT window 5", "full BPTT"]


def test_heatmaps_are_bounded(tmp_path, monkeypatch):
    import gradlab.plots

    root = tmp_path / "results"
    for cell in RATE:
        for clip in ({"kind": "none"}, {"kind": "norm", "max_norm": 1.0}):
            write_run(root, cell, 0, clip=clip)
    monkeypatch.setattr(gradlab.plots, "MAX_HEATMAPS", 3)
    heatmaps = sorted(p.name for p in plot(root, tmp_path / "plots") if p.name.startswith("profile_heatmap"))
    assert len(heatmaps) == 3
    assert {name.split("_")[2].split("-")[0] for name in heatmaps} == set(RATE)  # every cell before repeats


def test_plots_import_without_torch():
    code = "import sys, gradlab.plots; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
