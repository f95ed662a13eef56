"""Plots: results trees written by hand (cells x seeds, a run without a profile, a failed and an unfinished
run, damaged files) -> the expected PNG files, and figures a reader can compare: checked on the matplotlib
objects (colours, line styles, markers, legend handles, tick values, title boxes), not only on the files."""

import errno
import json
import os
import subprocess
import sys
import warnings

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from typer.testing import CliRunner

import gradlab.plots
from gradlab import results
from gradlab.cli import app
from gradlab.plots import (
    CELL_NAMES,
    CELL_PALETTE,
    Layout,
    cell_colors,
    draw,
    experiments,
    grad_norm,
    grad_profile,
    heatmap,
    heatmap_runs,
    learning_curves,
    load_runs,
    plot,
)

S, STEPS, EVAL_EVERY = 25, 40, 10
RATE = {"vanilla": 0.6, "lstm": 0.97, "gru": 0.9}  # per-step factor of each cell's made-up profile
runner = CliRunner()


def config(cell: str, seed: int, clip: dict, tbptt: int | None = None, name: str = "demo", length: int = S,
           **train) -> dict:
    return {"name": name, "task": {"name": "adding", "length": length, "eval_size": 100},
            "model": {"cell": cell, "hidden": 8, "nonlinearity": None, "skip": 10, "engine": "scan"},
            "train": {"steps": STEPS, "batch_size": 4, "optimizer": "adam", "lr": 0.001, "clip": clip,
                      "tbptt": tbptt, "eval_every": EVAL_EVERY, "on_nonfinite": "skip", **train},
            "seeds": [seed], "grid": {}, "device": "cpu", "dtype": "float32", "threads": 1, "seed": seed}


def rows(cell: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = [{"kind": "eval", "step": 0, "eval_loss": 0.17, "eval_accuracy": None, "solved": 0,
            "decay_rate": np.log(RATE[cell])}]  # the initialisation, as training evaluates it
    for step in range(1, STEPS + 1):
        norm = float(rng.lognormal(0.0, 0.3))
        out.append({"kind": "train", "step": step, "loss": 0.2, "grad_norm": norm,
                    "grad_norm_clipped": min(norm, 1.0), "clip_active": int(norm > 1.0),
                    "nonfinite": int(step == 7), "updates": int(step != 7)})
        if step % EVAL_EVERY == 0:
            out.append({"kind": "eval", "step": step, "eval_loss": 0.17 * RATE[cell] ** step,
                        "eval_accuracy": None, "solved": 0, "decay_rate": np.log(RATE[cell])})
    return out


def write_run(root, cell: str, seed: int, *, clip=None, profile=True, status="ok", tbptt=None, experiment="demo",
              length=S, **train):
    """A run directory as gradlab writes it; ``train`` sets more train keys (lr=0.1, log_every=3, ...)."""
    clip = clip or {"kind": "norm", "max_norm": 1.0}
    extra = "".join(f"-{k}{v}" for k, v in train.items())
    run_dir = root / experiment / (f"{cell}-s{seed}-{clip['kind']}" + ("" if tbptt is None else f"-k{tbptt}")
                                   + extra)
    summary = {"status": status, "final_loss": 0.1, "baseline_loss": 1 / 6, "dependency_lag": length - 1 - 6}
    cfg = config(cell, seed, clip, tbptt, experiment.split("/")[-1], length, **train)
    results.save_run(run_dir, cfg, {}, rows(cell, seed), summary, error="Traceback" if status == "failed" else None)
    if profile:
        steps = np.arange(EVAL_EVERY, STEPS + 1, EVAL_EVERY, dtype=np.int64)  # (E,)
        lag = (length - 1) - np.arange(length)
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


def group_lines(fig):
    """Every line of a group (those the legend lists first) in the figure's panels."""
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gradlab.plots.GROUP]


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
    drawing = draw(tree, out)
    names = sorted(p.name for p in drawing.written)
    assert names == sorted(["learning_curves.png", "grad_norm.png", "grad_profile.png",
                            "profile_heatmap_lstm-s0-norm.png", "profile_heatmap_vanilla-s0-norm.png"])
    assert sorted(p.name for p in out.iterdir()) == names  # nothing written that is not returned, no .tmp left
    for p in drawing.written:
        assert_png(p)
    # a run without a profile is whole (compare reads it too): its curves are drawn; the failed run is a result
    assert drawing.skipped == []


def test_runs_without_profiles_still_get_curves(tmp_path):
    root = tmp_path / "results"
    write_run(root, "gru", 0, profile=False)
    write_run(root, "gru", 1, profile=False, clip={"kind": "none"})
    names = sorted(p.name for p in plot(root, tmp_path / "plots"))  # the list-returning form other modules call
    assert names == ["grad_norm.png", "learning_curves.png"]


def test_runs_without_metrics_or_any_finished_run(tmp_path):
    root = tmp_path / "results"
    run_dir = write_run(root, "lstm", 0)
    (run_dir / results.METRICS).unlink()
    drawing = draw(root, tmp_path / "plots")  # damaged as compare finds it: the whole run is left out
    assert drawing.written == [] and drawing.skipped == [(run_dir / results.METRICS, "missing")]
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
        write_run(root, cell, 0, profile=False)
        write_run(root, cell, 0, tbptt=5, profile=False)
    runs, _ = load_runs(root)
    layout = Layout(runs)
    assert (layout.hue, layout.style) == ("cell", "tbptt")  # colour by cell, line style by window: one panel
    assert [layout.title(p) for p in layout.panels] == ["adding, T=25"]
    assert sorted(layout.label(g) for g in layout.groups) == ["lstm, TBPTT window 5", "lstm, full BPTT",
                                                             "vanilla, TBPTT window 5", "vanilla, full BPTT"]
    lstm_only = Layout([r for r in runs if r.params["cell"] == "lstm"])
    assert lstm_only.hue == "tbptt"  # one cell: the colours tell the windows apart, the title names the cell
    assert [lstm_only.title(p) for p in lstm_only.panels] == ["adding, T=25 — lstm"]
    assert sorted(lstm_only.label(g) for g in lstm_only.groups) == ["TBPTT window 5", "full BPTT"]


def test_keys_that_vary_together_share_one_line_style(tmp_path):
    # batch 8 only ever with lr 0.01 (as init=henaff with constrain=True in the orthogonal-RNN studies):
    # one line style for the pair, not a style and two panels
    root = tmp_path / "results"
    write_run(root, "lstm", 0, profile=False, lr=0.01, batch_size=8)
    write_run(root, "lstm", 0, profile=False, lr=0.1, batch_size=16)
    write_run(root, "gru", 0, profile=False, lr=0.1, batch_size=16)
    layout = Layout(load_runs(root)[0])
    assert (layout.hue_keys, layout.style_keys) == (("cell",), ("batch_size", "lr"))  # in the config's order
    assert [layout.title(p) for p in layout.panels] == ["adding, T=25"]
    assert sorted(layout.label(g) for g in layout.groups) == ["gru, batch_size=16, lr=0.1",
                                                             "lstm, batch_size=16, lr=0.1",
                                                             "lstm, batch_size=8, lr=0.01"]


def test_cell_palette_follows_registry():
    from gradlab.cells import CELLS  # imports torch: plots holds the names itself, this keeps the two equal

    assert CELL_NAMES == tuple(CELLS)
    colors = cell_colors(["zeta", "gru", "alpha", "vanilla"])  # unknown cells: the next free colours, by name
    assert colors == {"vanilla": CELL_PALETTE[0], "gru": CELL_PALETTE[5], "alpha": CELL_PALETTE[len(CELLS)],
                      "zeta": CELL_PALETTE[len(CELLS) + 1]}
    assert list(colors) == ["vanilla", "gru", "alpha", "zeta"]  # the order of the lines and the legend


def test_a_cell_has_one_colour_in_every_figure_and_experiment(tmp_path):
    for cells, clips in ((("lstm", "gru"), ("none",)), (("gru", "vanilla"), ("none", "norm"))):
        root = tmp_path / "-".join(cells + clips)
        for cell in cells:
            for clip in clips:
                write_run(root, cell, 0, clip={"kind": clip, "max_norm": 1.0} if clip == "norm" else {"kind": clip})
        layout = Layout(load_runs(root)[0])
        figures = [learning_curves(layout), grad_norm(layout), grad_profile(layout)]
        for fig in figures:
            for line in group_lines(fig):  # "gru, no clipping", or "gru (identical to lstm)": same norms
                cell = line.get_label().split(",")[0].split()[0]
                assert to_rgba(line.get_color()) == to_rgba(CELL_PALETTE[CELL_NAMES.index(cell)]), line.get_label()
        if len(clips) == 2:  # the other key that varies: one line style per value, the same for every cell
            for line in group_lines(figures[0]):
                own = line.get_label().split(" (identical")[0]  # a clip that never fired: identical curves
                assert line.get_linestyle() == ("--" if own.endswith("clip norm(1.0)") else "-"), own


def test_the_legend_shows_each_line_as_drawn(tmp_path):
    root = tmp_path / "results"
    for cell in ("vanilla", "lstm"):
        for tbptt in (None, 5):
            write_run(root, cell, 0, tbptt=tbptt, lr=0.01)
            write_run(root, cell, 0, tbptt=tbptt, lr=0.1)  # lr makes two panels: one legend for both
    layout = Layout(load_runs(root)[0])
    assert len(layout.panels) == 2
    for fig in (learning_curves(layout), grad_norm(layout), grad_profile(layout)):
        legend = fig.legends[0]
        drawn = [line for ax in fig.axes for line in ax.get_lines()]
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            same = [line for line in drawn if line.get_label() == text.get_text()]
            assert same, text.get_text()
            for line in same:  # every line of that label looks like its legend entry
                assert to_rgba(line.get_color(), line.get_alpha()) == to_rgba(handle.get_color(), handle.get_alpha())
                assert (line.get_linestyle(), line.get_marker()) == (handle.get_linestyle(), handle.get_marker())
        looks = {(to_rgba(line.get_color()), line.get_linestyle()) for line in group_lines(fig)}
        for line in drawn:  # a line the legend does not name is a group's thin companion, in the group's look
            if line.get_label().startswith("_") and len(line.get_xdata()):
                assert (to_rgba(line.get_color()), line.get_linestyle()) in looks, line
        groups = {line.get_label() for line in group_lines(fig)}
        first = [t.get_text() in groups for t in legend.get_texts()]
        assert sum(first) >= 4 and first == sorted(first, reverse=True)  # the groups, then reference lines


def test_curves_that_lie_on_each_other_stay_visible(tmp_path):
    # a clip that never fires: the same seed gives the same curves as no clip
    root = tmp_path / "results"
    for clip in ({"kind": "none"}, {"kind": "norm", "max_norm": 1.0}, {"kind": "value", "clip_value": 0.5}):
        write_run(root, "lstm", 0, clip=clip)
    write_run(root, "gru", 1, clip={"kind": "none"})  # a different curve: drawn plainly
    layout = Layout(load_runs(root)[0])
    assert layout.style == "clip"
    for fig in (learning_curves(layout), grad_norm(layout), grad_profile(layout)):
        lines = {line.get_label(): line for line in group_lines(fig)}
        plain = [lab for lab, line in lines.items() if line.get_marker() in ("None", None, "")]
        marked = {lab: line for lab, line in lines.items() if lab not in plain}
        assert sorted(plain) == ["gru, no clipping", "lstm, no clipping"], sorted(lines)
        assert len(marked) == 2 and all("identical to lstm, no clipping" in lab.replace("\n", " ") for lab in marked)
        assert len({line.get_marker() for line in marked.values()}) == 2  # each its own marker
        assert all(line.get_linewidth() < lines["lstm, no clipping"].get_linewidth() for line in marked.values())


def test_nearly_identical_curves_are_marked_but_not_called_identical(tmp_path):
    root = tmp_path / "results"
    write_run(root, "lstm", 0, clip={"kind": "none"}, profile=False)
    close = write_run(root, "lstm", 0, profile=False)
    metrics = pd.read_csv(close / results.METRICS)
    metrics["eval_loss"] *= 1.003  # 0.3% apart: on a log axis one line covers the other
    metrics.to_csv(close / results.METRICS, index=False)
    labels = [line.get_label().replace("\n", " ") for line in group_lines(learning_curves(
        Layout(load_runs(root)[0])))]
    assert labels == ["no clipping", "clip norm(1.0) (within 1% of no clipping)"]


def test_several_experiments_get_one_folder_each(tmp_path):
    root = tmp_path / "results"
    for experiment in ("adding-cells", "long/adding-cells", "clipping"):
        write_run(root, "lstm", 0, experiment=experiment, profile=False)
        (root / experiment / "experiment.json").write_text(json.dumps({"name": experiment.split("/")[-1]}))
    runs, _ = load_runs(root)
    assert sorted(map(str, experiments(runs, root))) == ["adding-cells", "clipping", "long/adding-cells"]
    clipping_runs, _ = load_runs(root / "clipping")
    assert list(experiments(clipping_runs, root / "clipping")) == [gradlab.plots.Path(".")]
    out = tmp_path / "plots"
    written = plot(root / "long", out)  # one experiment under root: OUT directly, as the results book expects
    assert sorted(p.relative_to(out).as_posix() for p in written) == ["grad_norm.png", "learning_curves.png"]
    # one folder, two config names (runs made by hand): a sub-folder per name
    write_run(root, "gru", 0, experiment="mixed", profile=False)
    other = write_run(root, "gru", 1, experiment="mixed", profile=False)
    cfg = json.loads((other / results.CONFIG).read_text())
    results.write_json(other / results.CONFIG, {**cfg, "name": "other"})
    runs, _ = load_runs(root / "mixed")
    assert sorted(map(str, experiments(runs, root / "mixed"))) == ["mixed", "other"]


def test_titles_do_not_overlap(tmp_path):
    root = tmp_path / "results"
    for tbptt in (None, 5):
        for lr in (0.0123456, 0.1):
            for decay in (0.00012345, 0.001):  # omega varies with weight_decay: both in the panel's title
                write_run(root, "lstm", 0, tbptt=tbptt, lr=lr, weight_decay=decay, omega=decay * 2e4, profile=False)
    write_run(root, "gru", 0, lr=0.1, weight_decay=0.001, omega=20.0, profile=False)
    layout = Layout(load_runs(root)[0])
    fig = learning_curves(layout)
    assert len(fig.axes) >= 3 and max(len(layout.title(p)) for p in layout.panels) > 60  # titles that wrap
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    boxes.append(fig._suptitle.get_window_extent(renderer))
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert not a.overlaps(b), (a, b)


def test_heatmap_and_profile_ticks_are_whole_lags(tmp_path):
    root = tmp_path / "results"
    write_run(root, "lstm", 0, length=20)  # 20 lags: matplotlib's own ticks would be 0, 2.5, 5, ...
    layout = Layout(load_runs(root)[0])
    (group, run), = heatmap_runs(layout)
    for fig in (heatmap(layout, group, run), grad_profile(layout)):
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = sorted(ax.get_xlim())
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks


def test_a_log_axis_under_a_decade_is_labelled_readably(tmp_path):
    root = tmp_path / "results"
    write_run(root, "lstm", 0, profile=False)  # eval loss 0.126 -> 0.05 and the baseline 0.167: under a decade
    fig = learning_curves(Layout(load_runs(root)[0]))
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi / lo < 10
    shown = [(t.get_position()[1], t.get_text()) for t in ax.yaxis.get_ticklabels() if t.get_text()]
    shown += [(t.get_position()[1], t.get_text()) for t in ax.yaxis.get_ticklabels(minor=True) if t.get_text()]
    shown = [(y, text) for y, text in shown if lo <= y <= hi]
    assert len(shown) >= 3, shown  # not a single tick
    for y, text in shown:  # plain numbers, each the value at its place: no 6×10⁻² on the minor ticks
        assert float(text) == pytest.approx(y, rel=1e-2), (y, text)


def damage_three_ways(root):
    """Six runs, five damaged: an empty metrics.csv, a truncated profile.npz, a metrics.csv cut short,
    a missing config.json and a summary.json cut short."""
    intact = write_run(root, "lstm", 0)
    empty = write_run(root, "lstm", 1)
    (empty / results.METRICS).write_text("")
    truncated = write_run(root, "vanilla", 0)
    data = (truncated / results.PROFILE).read_bytes()
    (truncated / results.PROFILE).write_bytes(data[:len(data) // 2])
    short = write_run(root, "vanilla", 1)
    text = (short / results.METRICS).read_text().splitlines(keepends=True)
    (short / results.METRICS).write_text("".join(text[:15]))  # stopped writing after step 12 of 40
    no_config = write_run(root, "gru", 0)
    (no_config / results.CONFIG).unlink()
    cut = write_run(root, "gru", 1)
    (cut / results.SUMMARY).write_text('{"status": "ok", "fin')
    return intact, {cut / results.SUMMARY: "truncated or corrupt JSON: Unterminated string starting at: "
                                          "line 1 column 18 (char 17)",
                    empty / results.METRICS: "empty file",
                    truncated / results.PROFILE: "truncated or corrupt (File is not a zip file)",
                    short / results.METRICS: "12 of 40 steps (cut short)",
                    no_config / results.CONFIG: "missing"}


def test_damaged_runs_are_named_one_line_each_and_the_rest_is_drawn(tmp_path, monkeypatch):
    monkeypatch.setattr(gradlab.plots, "MAX_HEATMAPS", 1)  # the heatmaps add time, not checks
    root = tmp_path / "results"
    intact, damage = damage_three_ways(root)
    out = tmp_path / "plots"
    result = runner.invoke(app, ["plot", str(root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and result.exception is None
    assert sorted(result.stderr.splitlines()) == sorted(f"skipped: {path}: {why}" for path, why in damage.items())
    assert {p.name for p in out.iterdir()} >= {"learning_curves.png", "grad_profile.png"}
    layout = Layout(load_runs(root)[0])  # what is drawn: the intact run (a damaged one is left out whole)
    assert [r.id for g in layout.groups for r in g] == ["lstm-s0-norm"]
    # nothing left: exit 2, the damage and one error line, still no traceback
    run_dirs = {intact, *(p.parent for p in damage)}
    cut = next(p.parent for p in damage if p.name == results.SUMMARY)
    for run_dir in run_dirs:
        (run_dir / results.CONFIG).unlink(missing_ok=True)
    result = runner.invoke(app, ["plot", str(root), "-o", str(tmp_path / "none")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 6 + 1 and lines[-1] == f"error: no finished runs to plot under {root}", lines
    assert sorted(lines[:-1]) == sorted([f"skipped: {cut / results.SUMMARY}: {damage[cut / results.SUMMARY]}"] + [
        f"skipped: {d / results.CONFIG}: missing" for d in sorted(run_dirs - {cut})])


def cut_mid_row(path):
    path.write_bytes(path.read_bytes()[:-3])


def twice(path):
    text = path.read_text()
    path.write_text(text + "".join(text.splitlines(keepends=True)[1:3]))


def bad_shape(path):
    np.savez(path, step=np.arange(3), grad_norm=np.ones((4, S)))


@pytest.mark.parametrize("name, damage, reason", [
    (results.METRICS, lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"), "0 of 40 steps (cut short)"),
    (results.METRICS, cut_mid_row, "cut short in the middle of a row"),
    (results.METRICS, twice, "eval step 0 appears twice"),
    (results.METRICS, lambda p: p.write_text("".join(line for line in p.read_text().splitlines(keepends=True)
                                                     if not line.startswith("eval,20,"))),
     "4 of 5 evaluations (rows missing)"),
    (results.METRICS, lambda p: p.write_bytes(b"\x00\xff\xfe\n"), "not readable CSV"),
    (results.PROFILE, bad_shape, "grad_norm of shape (4, 25) for step of shape (3,): not (E, S) for (E,)"),
    (results.PROFILE, lambda p: p.write_bytes(b""), "truncated or corrupt (No data left in file)"),
    (results.CONFIG, lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    (results.CONFIG, lambda p: p.write_text('{"model": {}}'), "no task.name and task.length"),
    (results.SUMMARY, lambda p: p.write_bytes(b'{"status": "\xff"}'), "corrupt: not UTF-8 text"),
])
def test_every_kind_of_damage_is_one_named_problem(tmp_path, name, damage, reason):
    run_dir = write_run(tmp_path / "results", "lstm", 0)
    damage(run_dir / name)
    _, skipped = load_runs(tmp_path / "results")
    assert len(skipped) == 1 and skipped[0].path == run_dir / name and skipped[0].reason.startswith(reason), skipped


def test_a_complete_run_is_not_called_cut_short(tmp_path):
    # a run stopped at its first non-finite step (steps_done) and a lean metrics.csv (log_every) are whole
    root = tmp_path / "results"
    stopped = write_run(root, "lstm", 0, on_nonfinite="stop")
    summary = json.loads((stopped / results.SUMMARY).read_text())
    metrics = pd.read_csv(stopped / results.METRICS)
    results.write_atomic(stopped / results.METRICS, metrics[metrics["step"] <= 20].to_csv(index=False))
    results.write_json(stopped / results.SUMMARY, {**summary, "steps_done": 20})
    lean = write_run(root, "lstm", 1, log_every=3)
    metrics = pd.read_csv(lean / results.METRICS)
    keep = (metrics["kind"] == "eval") | (metrics["step"] % 3 == 0)  # the last kept training step: 39 of 40
    results.write_atomic(lean / results.METRICS, metrics[keep].to_csv(index=False))
    runs, skipped = load_runs(root)
    assert skipped == [] and all(r.metrics is not None for r in runs)
    results.write_json(stopped / results.SUMMARY, {**summary, "steps_done": 30})
    results.write_atomic(lean / results.METRICS, metrics[keep].iloc[:-1].to_csv(index=False))  # last eval lost
    _, skipped = load_runs(root)
    assert [str(s) for s in skipped] == [
        f"{stopped / results.METRICS}: 20 of 30 steps (cut short)",
        f"{lean / results.METRICS}: evaluations end before step 40 (the last at step 30; cut short)"]


def test_a_full_disk_leaves_no_half_png_and_names_the_file(tmp_path, monkeypatch):
    tree = tmp_path / "results"
    write_run(tree, "lstm", 0, profile=False)
    out = tmp_path / "plots"
    plot(tree, out)
    before = (out / "learning_curves.png").read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:  # a file on a disk that fills after half the bytes
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: FullDisk(real_fdopen(fd, *args, **kwargs)))
    with pytest.raises(OSError) as e:
        plot(tree, out)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out / "learning_curves.png")
    assert (out / "learning_curves.png").read_bytes() == before  # the old figure, whole
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]
    result = runner.invoke(app, ["plot", str(tree), "-o", str(tmp_path / "new")])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"error: {tmp_path / 'new' / 'learning_curves.png'}: " \
                                             "No space left on device"
    assert not (tmp_path / "new").exists() or not list((tmp_path / "new").iterdir())


def test_plots_leave_the_backend_and_pyplot_alone(tmp_path):
    tree = tmp_path / "results"
    write_run(tree, "lstm", 0, length=6)
    code = ("import sys, matplotlib, gradlab.plots; from pathlib import Path; "
            f"written = gradlab.plots.plot(Path({str(tree)!r}), Path({str(tmp_path / 'out')!r})); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules, 'torch' in sys.modules, len(written))")
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["svg", "False", "False", "4"], done.stderr


def test_heatmaps_are_bounded(tmp_path, monkeypatch):
    root = tmp_path / "results"
    for cell in RATE:
        for clip in ({"kind": "none"}, {"kind": "norm", "max_norm": 1.0}):
            write_run(root, cell, 0, clip=clip)
    monkeypatch.setattr(gradlab.plots, "MAX_HEATMAPS", 3)
    chosen = heatmap_runs(Layout(load_runs(root)[0]))
    assert len(chosen) == 3
    assert {run.params["cell"] for _, run in chosen} == set(RATE)  # every cell before repeats


# ---------------------------------------------------------------------------
# Issue 23's figures: the long-term share and λ₁ over training, memory against lag at the end


CURVE_LAGS = [1, 2, 4, 9, 24]  # a run's recorded lags (memory.curve_lags at t = 24: the adding task's lag among them)


def diagnosed_run(root, cell, seed, *, lyapunov=True, share=True, curve=True, **kw):
    """``write_run`` with the figures training records: eval rows' ``long_term_share`` and ``lyapunov_max``
    (made-up, different for every cell and seed) and the summary's ``memory_curve``."""
    run_dir = write_run(root, cell, seed, **kw)
    metrics = pd.read_csv(run_dir / results.METRICS)
    evals = metrics["kind"] == "eval"
    steps = metrics.loc[evals, "step"].to_numpy(dtype=float)
    r = RATE[cell] + 0.01 * seed
    if share:
        metrics.loc[evals, "long_term_share"] = r ** (25 + steps / 10)
    if lyapunov:
        metrics.loc[evals, "lyapunov_max"] = np.log(r) + 0.002 * steps * (seed + 1)
    results.write_atomic(run_dir / results.METRICS, metrics.to_csv(index=False))
    if curve:
        summary = json.loads((run_dir / results.SUMMARY).read_text())
        scores = [r ** k for k in CURVE_LAGS[:-1]] + [None]  # a lag with nothing to score: null
        chance = [-0.01 * (k + seed) for k in CURVE_LAGS]
        summary["memory_curve"] = {"lags": CURVE_LAGS, "scores": scores, "chance": chance, "kind": "values",
                                   "step": 24, "task_lag": 24}
        results.write_json(run_dir / results.SUMMARY, summary)
    return run_dir


def _eval_medians(root, cell, column):
    """{step: the median over the cell's runs of ``column``}, read from the metrics files with the csv module."""
    import csv
    import statistics

    by_step = {}
    for path in sorted(root.rglob(results.METRICS)):
        if not path.parent.name.startswith(f"{cell}-"):
            continue
        for row in csv.DictReader(path.open()):
            if row["kind"] == "eval" and row.get(column):
                by_step.setdefault(int(row["step"]), []).append(float(row[column]))
    return {step: statistics.median(v) for step, v in sorted(by_step.items())}


def _curve_medians(root, cell, key):
    """{lag: the median over the cell's runs of the summary's memory_curve[key], nulls left out}."""
    import statistics

    by_lag = {}
    for path in sorted(root.rglob(results.SUMMARY)):
        if path.parent.name.startswith(f"{cell}-"):
            curve = json.loads(path.read_text())["memory_curve"]
            for lag, v in zip(curve["lags"], curve[key]):
                by_lag.setdefault(lag, [])
                if v is not None:
                    by_lag[lag].append(v)
    return {lag: statistics.median(v) if v else None for lag, v in by_lag.items()}


DIAGNOSIS_PLOTS = ["long_term_share.png", "memory_curve.png", "lyapunov_max.png"]


@pytest.fixture
def diagnosed(tmp_path):
    root = tmp_path / "results"
    for cell in ("vanilla", "lstm"):
        for seed in (0, 1, 2):
            diagnosed_run(root, cell, seed)
    return root


def test_the_diagnosis_figures_are_written_and_in_the_report_order(diagnosed, tmp_path):
    drawing = draw(diagnosed, tmp_path / "plots")
    names = [p.name for p in drawing.written]
    assert names[:6] == ["learning_curves.png", "grad_norm.png", "grad_profile.png", *DIAGNOSIS_PLOTS]
    for p in drawing.written:
        assert_png(p)
    assert drawing.skipped == []


def _line_data(line):
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


@pytest.mark.parametrize("figure, column", [(gradlab.plots.long_term_share, "long_term_share"),
                                            (gradlab.plots.lyapunov_max, "lyapunov_max")])
def test_figures_over_training_draw_each_groups_median_in_its_cells_colour(diagnosed, figure, column):
    fig = figure(Layout(load_runs(diagnosed)[0]))
    lines = {line.get_label(): line for line in group_lines(fig)}
    assert sorted(lines) == ["lstm", "vanilla"]
    for cell, line in lines.items():
        assert to_rgba(line.get_color()) == to_rgba(CELL_PALETTE[CELL_NAMES.index(cell)])
        want = _eval_medians(diagnosed, cell, column)  # from the files, not from gradlab's reading of them
        x, y = _line_data(line)
        assert x.tolist() == list(want) and len(want) == STEPS // EVAL_EVERY + 1
        np.testing.assert_allclose(y, list(want.values()), rtol=1e-12)
    ax = fig.axes[0]
    if column == "lyapunov_max":  # the line at 0, and a linear axis: λ₁ is negative here
        zero = [line for line in ax.get_lines() if line.get_label().startswith("λ₁ = 0")]
        assert len(zero) == 1 and set(zero[0].get_ydata()) == {0} and ax.get_yscale() == "linear"
    else:
        assert ax.get_yscale() == "log"  # shares of 1e-4 to 1e-2: decades apart


def test_memory_against_lag_draws_median_scores_chance_and_the_tasks_lag(diagnosed):
    fig = gradlab.plots.memory_against_lag(Layout(load_runs(diagnosed)[0]))
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in group_lines(fig)}
    assert sorted(lines) == ["lstm", "vanilla"]
    for cell, line in lines.items():
        colour = to_rgba(CELL_PALETTE[CELL_NAMES.index(cell)])
        assert to_rgba(line.get_color()) == colour
        want = _curve_medians(diagnosed, cell, "scores")
        x, y = _line_data(line)
        assert x.tolist() == CURVE_LAGS
        np.testing.assert_allclose(y[:-1], [want[k] for k in CURVE_LAGS[:-1]], rtol=1e-12)
        assert np.isnan(y[-1]) and want[CURVE_LAGS[-1]] is None  # no seed had a score there: a gap, not 0
        chance = [other for other in ax.get_lines() if other.get_linestyle() == ":"
                  and to_rgba(other.get_color()) == colour and len(other.get_xdata())]
        assert len(chance) == 1  # the group's chance level, dotted in its colour
        cx, cy = _line_data(chance[0])
        assert cx.tolist() == CURVE_LAGS
        np.testing.assert_allclose(cy, list(_curve_medians(diagnosed, cell, "chance").values()), rtol=1e-12)
    marks = [line for line in ax.get_lines() if line.get_label() == "lag of the task's dependency"]
    assert len(marks) == 1 and set(marks[0].get_xdata()) == {24}
    assert ax.get_xscale() == "log" and "R²" in ax.get_ylabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(text.startswith("dotted: chance level") for text in legend)


def test_the_lag_axis_is_labelled_in_whole_steps(diagnosed):
    fig = gradlab.plots.memory_against_lag(Layout(load_runs(diagnosed)[0]))
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    shown = [(t.get_position()[0], t.get_text()) for t in ax.xaxis.get_ticklabels() if t.get_text()]
    shown = [(x, text) for x, text in shown if lo <= x <= hi]
    assert len(shown) >= 3, shown  # 1, 2, 5, 10, 20: not only 10⁰ and 10¹
    for x, text in shown:
        assert float(x).is_integer() and int(text) == x, (x, text)


def test_the_diagnosis_figures_keep_their_text_inside_the_figure(tmp_path):
    root = tmp_path / "results"
    for cell in ("vanilla", "lstm"):
        for lr in (0.01, 0.1):  # two panels, and a legend beside them
            diagnosed_run(root, cell, 0, lr=lr, tbptt=5)
            diagnosed_run(root, cell, 0, lr=lr)
    layout = Layout(load_runs(root)[0])
    assert len(layout.panels) == 2
    for build in (gradlab.plots.long_term_share, gradlab.plots.memory_against_lag, gradlab.plots.lyapunov_max):
        fig = build(layout)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        inside = fig.bbox.padded(1)
        texts = [fig._suptitle, *fig.legends, *(a for ax in fig.axes for a in
                                                (ax.title, ax.xaxis.label, ax.yaxis.label))]
        for artist in texts:
            box = artist.get_window_extent(renderer)
            assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (build.__name__, artist)
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes] + [fig._suptitle.get_window_extent(renderer)]
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[:i]), build.__name__


def test_each_diagnosis_figure_is_skipped_when_no_run_has_its_data(tmp_path):
    old = tmp_path / "old"  # runs from before the figures were recorded
    write_run(old, "lstm", 0)
    write_run(old, "gru", 0)
    names = {p.name for p in draw(old, tmp_path / "old-plots").written}
    assert not names & set(DIAGNOSIS_PLOTS) and {"learning_curves.png", "grad_profile.png"} <= names
    # λ₁ is opt-in (diagnostics.lyapunov): without it the other two are drawn
    partial = tmp_path / "partial"
    diagnosed_run(partial, "lstm", 0, lyapunov=False)
    write_run(partial, "gru", 0)  # an old run beside a new one: drawn where it has data, no error
    drawing = draw(partial, tmp_path / "partial-plots")
    names = {p.name for p in drawing.written}
    assert names & set(DIAGNOSIS_PLOTS) == {"long_term_share.png", "memory_curve.png"} and drawing.skipped == []
    layout = Layout(load_runs(partial)[0])
    assert [line.get_label() for line in group_lines(gradlab.plots.memory_against_lag(layout))] == ["lstm"]
    # a figure recorded as empty everywhere (a diverged run's NaN λ₁, written as an empty cell) is not drawn
    nan = tmp_path / "nan"
    run_dir = diagnosed_run(nan, "lstm", 0)
    metrics = pd.read_csv(run_dir / results.METRICS)
    metrics["lyapunov_max"] = np.nan
    results.write_atomic(run_dir / results.METRICS, metrics.to_csv(index=False))
    assert gradlab.plots.lyapunov_max(Layout(load_runs(nan)[0])) is None
    summary = json.loads((run_dir / results.SUMMARY).read_text())  # a diverged state: no lag had a score
    curve = summary["memory_curve"]
    curve = {**curve, "scores": [None] * len(curve["lags"]), "chance": [None] * len(curve["lags"])}
    results.write_json(run_dir / results.SUMMARY, {**summary, "memory_curve": curve})
    assert gradlab.plots.memory_against_lag(Layout(load_runs(nan)[0])) is None


@pytest.mark.parametrize("curve", [[1, 2], {"lags": [1, 2], "scores": [0.5], "chance": [0, 0]},
                                   {"lags": ["1", 2], "scores": [0.5, 0.1], "chance": [0, 0]},
                                   {"lags": [1, 2], "scores": [0.5, True], "chance": [0, 0]},
                                   {"lags": [1, 2], "chance": [0, 0]}])
def test_a_malformed_memory_curve_is_left_out_of_its_figure(tmp_path, curve):
    root = tmp_path / "results"
    run_dir = diagnosed_run(root, "lstm", 0)
    diagnosed_run(root, "gru", 0)
    summary = json.loads((run_dir / results.SUMMARY).read_text())
    results.write_json(run_dir / results.SUMMARY, {**summary, "memory_curve": curve})  # edited by hand
    runs, skipped = load_runs(root)
    assert skipped == []  # not damage: the run's other figures are drawn
    assert [line.get_label() for line in group_lines(gradlab.plots.memory_against_lag(Layout(runs)))] == ["gru"]


def test_a_share_of_exactly_zero_is_named_not_hidden(tmp_path):
    root = tmp_path / "results"
    run_dir = diagnosed_run(root, "lstm", 0, tbptt=5)  # a window shorter than the lag carries no long-term part
    metrics = pd.read_csv(run_dir / results.METRICS)
    metrics.loc[metrics["step"] >= 20, "long_term_share"] = 0.0
    results.write_atomic(run_dir / results.METRICS, metrics.to_csv(index=False))
    fig = gradlab.plots.long_term_share(Layout(load_runs(root)[0]))
    assert fig.axes[0].get_yscale() == "log"
    assert "a gap: a share of exactly 0" in [t.get_text() for t in fig.legends[0].get_texts()]
    metrics["long_term_share"] = 0.0  # nothing above 0: a linear axis, the line drawn at 0
    results.write_atomic(run_dir / results.METRICS, metrics.to_csv(index=False))
    fig = gradlab.plots.long_term_share(Layout(load_runs(root)[0]))
    [line] = group_lines(fig)
    assert fig.axes[0].get_yscale() == "linear" and set(line.get_ydata()) == {0.0}


def test_memory_units_name_the_kinds_tasks_declare():
    from gradlab.tasks import catalogue
    from gradlab.vocabulary import SYMBOLS, VALUES

    assert set(gradlab.plots.MEMORY_UNITS) == {VALUES, SYMBOLS} >= {t.input_kind for t in catalogue().values()}


def test_a_sweep_draws_the_diagnosis_figures_and_the_book_shows_them(tmp_path):
    """End to end: what training records (a run's eval rows and summary) is what the figures read, and the
    Markdown report inlines them after the gradient profile."""
    import yaml

    cfg = {"name": "figs", "task": {"name": "adding", "length": 8, "eval_size": 40},
           "model": {"cell": "vanilla", "hidden": 4}, "train": {"steps": 4, "batch_size": 4, "eval_every": 2},
           "diagnostics": {"lyapunov": 2}, "seeds": [0, 1], "grid": {"model.cell": ["vanilla", "gru"]}}
    path = tmp_path / "figs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ran = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "-q", "-j", "1"])
    assert ran.exit_code == 0, ran.output
    for summary in (tmp_path / "out").rglob(results.SUMMARY):
        curve = json.loads(summary.read_text())["memory_curve"]
        assert curve["lags"] == [1, 2, 3, 4, 5, 6, 7] and curve["task_lag"] == 7 and len(curve["chance"]) == 7
    book = runner.invoke(app, ["report", str(tmp_path / "out"), "--format", "markdown"])
    assert book.exit_code == 0, book.output
    text = (tmp_path / "out" / "README.md").read_text()
    shown = [text.index(f"![{name[:-4].replace('_', ' ')}](figs/plots/{name})")
             for name in ("grad_profile.png", *DIAGNOSIS_PLOTS)]
    assert shown == sorted(shown)
    layout = Layout(load_runs(tmp_path / "out")[0])
    for build in (gradlab.plots.long_term_share, gradlab.plots.memory_against_lag, gradlab.plots.lyapunov_max):
        assert sorted(line.get_label() for line in group_lines(build(layout))) == ["gru", "vanilla"]
