"""Figures of the runs found on disk: learning curves, gradient norms, the vanishing picture.

``draw(root, out)`` reads every finished, successful run under ``root``, writes
PNGs to ``out`` (a folder ``out/<experiment>`` each when ``root`` holds several
experiments) and returns what it wrote and the damaged files it left out;
``plot(root, out)`` returns only the paths:

- ``learning_curves.png``  eval loss over training, median over seeds, min–max band, baseline dashed
- ``grad_norm.png``        pre-clip global gradient norm over training (log scale), clip threshold dotted
- ``grad_profile.png``     ‖∂L/∂h‖ against the lag, normalised to its peak: the vanishing picture
- ``long_term_share.png`` the share of the recurrent weights' gradient from lags at or beyond the dependency,
  over training (log scale): Bengio et al. 1994's drowned long-term component
- ``memory_curve.png``     memory against lag at the end of training: how well x_{t-k} reads back from h_t,
  the chance level dotted, the task's lag marked (``gradlab.memory.run_curve``)
- ``lyapunov_max.png``     the top Lyapunov exponent λ₁ over training, 0 marked (above: chaotic, gradients
  diverge); only for runs with ``diagnostics.lyapunov``
- ``profile_heatmap_<run id>.png``  that profile over training for a representative run per group
- ``selection_curve.png``  a tuned experiment's metric against each tuned value, per arm (``gradlab.tuning``)

A figure no run has the data for (runs made before it was recorded, or without its switch) is not
written. Runs that differ only by seed form a group. A cell has the same colour in every
figure of every experiment; the first other key that differs (clip, tbptt, lr,
...) sets the line style, and the keys after it, with task and length, make one
panel each. A line that lies on one drawn before it gets markers and says so in
the legend (a clip that never fired gives the same curves as no clip). A damaged
run is left out and named (``gradlab.readers``), never a crash, and no figure is written outside
``out`` whatever the names and links in the results folder. Like ``comparison``, this
module reads only files and never imports torch; it draws on its own figures
(``matplotlib.figure.Figure``, no pyplot), so it neither needs a display nor
changes the caller's matplotlib backend.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradlab import results, tuning
from gradlab.diagnostics import DEFAULTS
from gradlab.readers import Skipped, experiment_folder, outside, skipped
from gradlab.vocabulary import (
    CELL_NAMES,
    CURVE_PLOT,
    FULL_BPTT,
    HEATMAP_FILE,
    MAIN_PLOTS,
    MEMORY_CURVE,
    SYMBOLS,
    VALUES,
    config_columns,
)

# each cell keeps its tab10 colour (its place in CELL_NAMES) in every figure; a cell not listed takes the
# next free colour
CELL_PALETTE = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["tab20"].colors[1::2]
OTHER_PALETTE = matplotlib.colormaps["Dark2"].colors  # colours by clip, lr, ...: never mistaken for a cell
STYLES = ("-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # for lines that lie on one drawn before
IDENTICAL_RTOL = 1e-6  # float32 round-off: runs whose remedy never acted match to the bit or nearly
OVERLAP_RTOL = 0.01  # closer than 1% everywhere: on a log axis the lines cover each other
HUE_ORDER = ("cell", "clip", "tbptt")  # the first of these that differs colours the lines, the next styles them
NOT_GROUPED = ("seed",)  # runs differing only in these are one group
NOT_PARAMS = ("experiment", "device", "threads")  # config columns that do not make a run a different line
MAX_HEATMAPS = 12  # one heatmap per group, at most this many: a sweep of 36 groups stays browsable
DPI = 120
GROUP = "group"  # the gid of a group's line: the legend lists them first, then the reference lines
TITLE_CHARS = 50  # a panel title wraps at this many characters: neighbouring titles never overlap


@dataclass
class Run:
    """One finished run and what plotting needs from its directory."""

    id: str
    params: dict  # flat config: task, length, cell, clip (label), tbptt, lr, ...
    summary: dict
    config: dict
    metrics: pd.DataFrame | None
    profile: dict | None  # {"step": (E,), "grad_norm": (E, S)}
    experiment: tuple = ()  # (folder, name): the experiment it belongs to
    floor: dict | None = None  # readers.float32_floor: its profile's zeros may be float32's floor, not 0


@dataclass
class Drawing:
    """What ``draw`` wrote, and the damaged files it left out."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def draw(root: Path, out: Path) -> Drawing:
    """Write every figure the runs under ``root`` have data for, one folder ``out/<experiment>`` per
    experiment when there are several (else ``out`` itself); damaged runs are left out and listed, and
    so is an experiment whose folder would resolve outside ``out`` (a link planted in it)."""
    root, out = Path(root), Path(out)
    runs, left_out = load_runs(root)
    drawing = Drawing(skipped=left_out)
    for folder, exp_runs in experiments(runs, root).items():
        if problem := outside(out / folder, out):
            drawing.skipped.append(Skipped(out / folder, f"{problem}; the experiment's figures are left out"))
            continue
        drawing.written += draw_experiment(exp_runs, out / folder)
        selection = results.read_selection(exp_runs[0].experiment[0])  # a tuned experiment: its selection curve
        if selection is not None and (fig := tuning.curve_figure(selection)) is not None:
            drawing.written.append(save(fig, out / folder / CURVE_PLOT))
    return drawing


def plot(root: Path, out: Path) -> list[Path]:
    """The paths ``draw(root, out)`` wrote (damaged runs are left out; ``draw`` names them)."""
    return draw(root, out).written


def draw_experiment(runs: list[Run], out: Path) -> list[Path]:
    """The figures of one experiment's runs, written to ``out``."""
    if not runs:
        return []
    layout = Layout(runs)
    written = []
    builders = (learning_curves, grad_norm, grad_profile, long_term_share, memory_against_lag, lyapunov_max)
    for name, build in zip(MAIN_PLOTS, builders, strict=True):
        fig = build(layout)
        if fig is not None:
            written.append(save(fig, out / name))
    for group, run in heatmap_runs(layout):
        written.append(save(heatmap(layout, group, run), out / HEATMAP_FILE.format(run_id=run.id)))
    return written


def save(fig: Figure, path: Path) -> Path:
    """The figure as a PNG, written atomically: a full disk leaves the old file or none, never half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    try:
        results.write_atomic(path, buf.getvalue())
    except OSError as e:  # name the PNG, not the temporary file (or no file) the error came from
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    return path


# ---------------------------------------------------------------------------
# Reading runs: every damaged file becomes one Skipped (gradlab.readers), never an exception.

def load_runs(root: Path) -> tuple[list[Run], list[Skipped]]:
    """Every finished run under ``root`` with status ok, and the damaged files found on the way.

    A run is damaged as every command finds it (``results.scan_runs``, ``gradlab.readers.check_run``):
    a damaged file leaves the whole run out, as ``compare`` leaves it out of the table. A run without
    a profile (made by hand; training always writes one) has its curves drawn.
    """
    records, damaged = results.scan_runs(root, keep=True)
    runs = []
    for r in records:
        if r["summary"].get("status") != "ok":  # a failed run is a result, not damage
            continue
        d = Path(r["dir"])
        runs.append(Run(r["id"], flat_params(r["config"]), r["summary"], r["config"], r["metrics"], r["profile"],
                        (experiment_folder(d, Path(root)), r["config"].get("name")), r.get("floor")))
    return runs, [skipped(d) for d in damaged]


def experiments(runs: list[Run], root: Path) -> dict[Path, list[Run]]:
    """Runs by experiment (folder and config name), each under the sub-folder its figures go to:
    ``.`` for a single experiment, else the folder relative to ``root`` (and the name, when a folder
    holds runs of several names)."""
    by_key: dict[tuple, list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.experiment, []).append(r)
    if len(by_key) == 1:
        return {Path("."): runs}
    names_in = {}
    for folder, name in by_key:
        names_in.setdefault(folder, set()).add(name)
    out = {}
    for (folder, name), exp_runs in sorted(by_key.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        rel = Path(folder).relative_to(root) if Path(folder).is_relative_to(root) else Path(Path(folder).name)
        if len(names_in[folder]) > 1 or rel == Path("."):
            rel = rel / str(name or "runs")
        out[rel] = exp_runs
    return out


def flat_params(cfg: dict) -> dict:
    """The config columns that make a run what it is (``config_columns``, clip as its label), hashable:
    a list or mapping as JSON text."""
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v
            for k, v in config_columns(cfg).items() if k not in NOT_PARAMS}


# ---------------------------------------------------------------------------
# Layout: groups, panels, a colour per cell (or hue value), a line style per value of the next key.

def _order(value) -> tuple:
    """Sort key for config values of one key (or a tuple of keys): None first, numbers by size, then text."""
    if isinstance(value, tuple):
        return tuple(_order(v) for v in value)
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def cell_colors(cells) -> dict[str, tuple]:
    """Each cell's colour: its place in the registry (CELL_NAMES) in tab10, the same in every figure;
    cells not in the registry take the colours after them, in name order."""
    cells = {str(c) for c in cells}
    names = list(CELL_NAMES) + sorted(cells - set(CELL_NAMES))
    return {c: CELL_PALETTE[i % len(CELL_PALETTE)] for i, c in enumerate(names) if c in cells}  # in that order


def _assign(values, choices) -> dict:
    """Distinct values (in sort order) -> choices in turn, so the mapping depends on the values only."""
    distinct = sorted({str(v): v for v in values}.items(), key=lambda kv: _order(kv[1]))
    return {s: choices[i % len(choices)] for i, (s, _) in enumerate(distinct)}


def _bundles(keys: list[str], runs: list[Run]) -> list[tuple[str, ...]]:
    """``keys`` with the keys that vary together (one value of each always with the same value of the
    other, e.g. init=henaff with constrain=True) bundled: one colour or line style, not one per key."""
    def together(a, b):
        pairs = {(str(r.params.get(a)), str(r.params.get(b))) for r in runs}
        return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})

    bundles: list[list[str]] = []
    for k in keys:
        match = next((b for b in bundles if together(b[0], k)), None)
        if match:
            match.append(k)
        else:
            bundles.append([k])
    return [tuple(b) for b in bundles]


class Layout:
    """Runs grouped by config (seeds pooled), groups placed in panels, a colour per hue value (one per cell,
    the same everywhere) and a line style per value of the next key that varies."""

    def __init__(self, runs: list[Run]):
        keys = [k for k in dict.fromkeys(k for r in runs for k in r.params) if k not in NOT_GROUPED]
        varying = [k for k in keys if k not in ("task", "length")
                   and len({str(r.params.get(k)) for r in runs}) > 1]
        bundles = _bundles([k for k in HUE_ORDER if k in varying] + [k for k in varying if k not in HUE_ORDER],
                           runs)
        self.hue_keys = bundles[0] if bundles else ("cell",)
        self.style_keys = bundles[1] if len(bundles) > 1 else ()
        self.hue, self.style = self.hue_keys[0], (self.style_keys or (None,))[0]
        # the cell is named in every title: as the hue, or in the panel when it is the same throughout
        self.panel_keys = ["task", "length"] + (["cell"] if self.hue != "cell" else []) \
            + [k for b in bundles[2:] for k in b]
        groups: dict[tuple, list[Run]] = {}
        for r in runs:
            groups.setdefault(tuple(str(r.params.get(k)) for k in keys), []).append(r)
        self.colors = cell_colors(r.params.get("cell") for r in runs) if self.hue == "cell" else \
            _assign([self.value(r, self.hue_keys) for r in runs], OTHER_PALETTE)
        self.styles = _assign([self.value(r, self.style_keys) for r in runs], STYLES)
        self.groups = sorted(groups.values(), key=lambda g: (
            _order(self.value(g[0], tuple(self.panel_keys))), self.hue_rank(g[0]),
            _order(self.value(g[0], self.style_keys))))
        self.panels = list(dict.fromkeys(self.panel_of(g) for g in self.groups))
        self.panel_params = {self.panel_of(g): g[0].params for g in reversed(self.groups)}  # raw values

    def hue_rank(self, run: Run) -> tuple:
        """Where a run's lines come in a panel and its legend: cells in registry order, else by value."""
        if self.hue == "cell":
            return list(self.colors).index(str(run.params.get("cell"))), _order(self.value(run, self.hue_keys[1:]))
        return 0, _order(self.value(run, self.hue_keys))

    @staticmethod
    def value(run: Run, keys: tuple[str, ...]) -> tuple:
        return tuple(run.params.get(k) for k in keys)

    def panel_of(self, group: list[Run]) -> tuple:
        return tuple(str(group[0].params.get(k)) for k in self.panel_keys)

    def in_panel(self, panel: tuple) -> list[list[Run]]:
        return [g for g in self.groups if self.panel_of(g) == panel]

    def label(self, group: list[Run]) -> str:
        p = group[0].params
        return ", ".join(describe(k, p.get(k)) for k in self.hue_keys + self.style_keys)

    def color(self, group: list[Run]):
        if self.hue == "cell":
            return self.colors[str(group[0].params.get("cell"))]
        return self.colors[str(self.value(group[0], self.hue_keys))]

    def linestyle(self, group: list[Run]):
        return self.styles[str(self.value(group[0], self.style_keys))]

    def title(self, panel: tuple) -> str:
        p = self.panel_params[panel]
        extra = [describe(k, p.get(k)) for k in self.panel_keys[2:]]
        return f"{p['task']}, T={p['length']}" + (f" — {', '.join(extra)}" if extra else "")

    def figure(self, n_panels: int) -> tuple[Figure, list]:
        ncols = min(n_panels, 3)
        nrows = math.ceil(n_panels / ncols)
        fig = new_figure((5.6 * ncols + 1.8, 4.2 * nrows))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.flat[n_panels:]:
            ax.set_visible(False)
        return fig, list(axes.flat[:n_panels])


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure of its own, drawn by Agg: no pyplot, so no global backend or figure list is touched."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def describe(key: str, value) -> str:
    """A config value as a reader says it: ``lstm``, ``clip norm(1.0)``, ``full BPTT``, ``lr=0.01``."""
    if key == "cell":
        return str(value)
    if key == "clip":
        return "no clipping" if value == "none" else f"clip {value}"
    if key == "tbptt":
        if isinstance(value, str) and "/" in value:  # TBPTT(k1, k2)
            return "TBPTT k1/k2 = " + value
        return f"{FULL_BPTT} BPTT" if value is None else f"TBPTT window {value}"
    return f"{key}={value}"


def _overlap(x, y, x0, y0) -> str | None:
    """How the line (x, y) lies on (x0, y0): "identical to", "within 1% of", or None (it can be seen)."""
    x, y, x0, y0 = (np.asarray(a, dtype=np.float64) for a in (x, y, x0, y0))
    if x.shape != x0.shape or not np.array_equal(x, x0):
        return None
    for rtol, words in ((IDENTICAL_RTOL, "identical to"), (OVERLAP_RTOL, f"within {OVERLAP_RTOL:.0%} of")):
        if np.allclose(y, y0, rtol=rtol, atol=0, equal_nan=True):
            return words
    return None


def draw_groups(ax, layout: Layout, series: list[tuple[list, object, object]], lw: float = 1.8) -> None:
    """One line per group from ``series`` = [(group, x, y)]. A line that lies on one drawn before it would
    hide it: it is drawn thinner, with markers at shifted places, and its label names the line it covers."""
    drawn, repeats = [], 0
    for group, x, y in series:
        label, style = layout.label(group), {"lw": lw}
        cover = next(((how, lab) for x0, y0, lab in drawn if (how := _overlap(x, y, x0, y0))), None)
        if cover is None:
            drawn.append((x, y, label))
        else:
            every = max(1, len(x) // 8)
            style = {"lw": lw / 2, "marker": MARKERS[repeats % len(MARKERS)], "mfc": "none", "ms": 6,
                     "markevery": ((repeats * max(1, every // 3)) % every, every)}
            label = textwrap.fill(f"{label} ({cover[0]} {cover[1]})", 40)
            repeats += 1
        ax.plot(x, y, color=layout.color(group), ls=layout.linestyle(group), label=label, gid=GROUP, **style)


def readable_log(axis) -> None:
    """A log axis spanning less than two powers of ten gets plain ticks (1-2-5 steps, or evenly spaced
    values) labelled ``0.65``, instead of a single tick or ``6×10⁻¹`` labels on minor ticks."""
    lo, hi = sorted(axis.get_view_interval())
    if axis.get_scale() != "log" or not (lo > 0 and np.isfinite(hi)):
        return
    if math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1 >= 2:
        return  # two decade ticks or more: the default labels read well
    locator = ticker.LogLocator(subs=(1.0, 2.0, 5.0))
    if sum(lo <= t <= hi for t in locator.tick_values(lo, hi)) < 3:
        locator = ticker.MaxNLocator(nbins=5, min_n_ticks=3)
    axis.set_major_locator(locator)
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _finish(fig: Figure, axes, title: str) -> Figure:
    handles = {}
    for ax in axes:
        ax.title.set_text(textwrap.fill(ax.get_title(), TITLE_CHARS))
        ax.autoscale_view()
        readable_log(ax.yaxis)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    handles = dict(sorted(handles.items(), key=lambda kv: kv[1].get_gid() != GROUP))  # stable: groups first
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 10)))  # ~10 characters per inch
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=9)
    return fig


def _by_step(series: dict[str, pd.Series]) -> pd.DataFrame:
    """{run id: values indexed by step} -> (steps, runs), inf as NaN: a diverged seed drops out."""
    return pd.concat(series, axis=1).sort_index().replace([np.inf, -np.inf], np.nan)


# ---------------------------------------------------------------------------
# The figures: each returns a Figure (None when no run has the data), ``draw`` writes them.

def learning_curves(layout: Layout) -> Figure | None:
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        baseline, series = None, []
        for group in layout.in_panel(panel):
            curves = {r.id: _column(r, "eval", "eval_loss") for r in group}
            curves = {k: v for k, v in curves.items() if v is not None}
            baseline = baseline or next((r.summary.get("baseline_loss") for r in group), None)
            if not curves:
                continue
            df = _by_step(curves)
            series.append((group, df.index, df.median(axis=1)))
            ax.fill_between(df.index, df.min(axis=1), df.max(axis=1), color=layout.color(group), alpha=0.2, lw=0)
        draw_groups(ax, layout, series)
        drawn = drawn or bool(series)
        if baseline is not None:
            ax.axhline(baseline, color="black", ls="--", lw=1, label="memoryless baseline")
        ax.set(title=layout.title(panel), xlabel="training step", ylabel="evaluation loss (log scale)")
        ax.set_yscale("log")
    if not drawn:
        return None
    return _finish(fig, axes, "Learning curves: median over seeds (line) and min–max (band)")


def grad_norm(layout: Layout) -> Figure | None:
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        series, thresholds = [], set()
        for group in layout.in_panel(panel):
            norms = {r.id: _column(r, "train", "grad_norm", skip_nonfinite=True) for r in group}
            norms = {k: v for k, v in norms.items() if v is not None}
            if not norms:
                continue
            median = _by_step(norms).median(axis=1)
            smooth = median.rolling(max(1, len(median) // 100), center=True, min_periods=1).median()
            ax.plot(median.index, median, color=layout.color(group), ls=layout.linestyle(group), lw=0.5,
                    alpha=0.35)
            series.append((group, smooth.index, smooth))
            clip = group[0].config.get("train", {}).get("clip", {})
            if isinstance(clip, dict) and clip.get("kind") == "norm" and clip.get("max_norm") is not None:
                thresholds.add(clip["max_norm"])
        draw_groups(ax, layout, series)
        drawn = drawn or bool(series)
        for t in sorted(thresholds):  # black: a threshold is not a group's line (its label names the value)
            ax.axhline(t, color="black", ls=":", lw=1.5, label="norm-clipping threshold (max_norm)")
        ax.set(title=layout.title(panel), xlabel="training step", ylabel="‖g‖ before clipping (log scale)")
        ax.set_yscale("log", nonpositive="mask")
    if not drawn:
        return None
    return _finish(fig, axes, "Global gradient norm before clipping, median over seeds "
                              "(thin: every step; thick: running median)")


# Beside a run recorded with float32 norms whose profile reached 0 through the floor (readers.float32_floor).
FLOOR_NOTE = "below float32's floor, read as 0"


def grad_profile(layout: Layout) -> Figure | None:
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        dep_lag, groups, series = None, layout.in_panel(panel), []
        for group in groups:
            profiles = [r.profile["grad_norm"] for r in group if r.profile is not None]
            if not profiles:
                continue
            final = _median([_normalised(p[-1]) for p in profiles])  # (S,)
            first = _median([_normalised(p[0]) for p in profiles])
            lags = np.arange(len(final))
            ax.plot(lags, first[::-1], color=layout.color(group), ls=layout.linestyle(group), lw=0.9, alpha=0.5)
            series.append((group, lags, final[::-1]))
            dep_lag = dep_lag or next((r.summary.get("dependency_lag") for r in group), None)
        draw_groups(ax, layout, series)
        drawn = drawn or bool(series)
        ax.plot([], [], color="black", lw=1.8, label="thick: end of training")
        ax.plot([], [], color="black", lw=0.9, alpha=0.5, label="thin, faint: first evaluation")
        fraction = groups[0][0].config.get("diagnostics", {}).get("horizon_fraction", DEFAULTS.horizon_fraction)
        ax.axhline(fraction, color="gray", ls=":", lw=1, label=f"horizon threshold ({fraction:g} of peak)")
        if dep_lag is not None:
            ax.axvline(dep_lag, color="black", ls="-.", lw=1, label="lag of the task's dependency")
        if any(r.floor for group in groups for r in group):
            # a line that ends early may have hit the floor; two short lines keep the legend narrow
            ax.plot([], [], ls="none", label=f"a line that ends early:\n{FLOOR_NOTE}")
        ax.set(title=layout.title(panel), xlabel="lag k (steps before the last step)",
               ylabel=r"$\Vert\partial L/\partial h_{T-k}\Vert$ / its peak (log scale)")
        ax.set_yscale("log", nonpositive="mask")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if not drawn:
        return None
    return _finish(fig, axes, "Gradient through time, normalised to its peak, median over seeds "
                              "(a line falling to the right = vanishing gradient)")


def _over_training(layout: Layout, column: str) -> tuple[Figure, list, list[bool]]:
    """A panel per ``layout`` panel with each group's eval-row ``column`` over training: median over seeds
    (``draw_groups``) and min–max band, as the learning curves. Returns the figure, its axes and, per
    panel, whether any group had the column (±inf read as missing: a seed whose figure was not a number)."""
    fig, axes = layout.figure(len(layout.panels))
    had = []
    for ax, panel in zip(axes, layout.panels):
        series = []
        for group in layout.in_panel(panel):
            values = {r.id: _column(r, "eval", column) for r in group}
            values = {k: v for k, v in values.items() if v is not None}
            if not values:
                continue
            df = _by_step(values)
            if not df.notna().any().any():
                continue
            series.append((group, df.index, df.median(axis=1)))
            ax.fill_between(df.index, df.min(axis=1), df.max(axis=1), color=layout.color(group), alpha=0.2, lw=0)
        draw_groups(ax, layout, series)
        had.append(bool(series))
    return fig, axes, had


def long_term_share(layout: Layout) -> Figure | None:
    """Layer 0's ``long_term_share`` over training (Bengio et al. 1994; Pascanu et al. 2013 §2: the long-term
    part of ∂L/∂U drowned by the short-term ones). Log scale: it falls exponentially with the lag where the
    gradient vanishes; an exact 0 (a TBPTT window shorter than the lag) cannot be drawn there and says so."""
    fig, axes, had = _over_training(layout, "long_term_share")
    if not any(had):
        return None
    for ax, panel in zip(axes, layout.panels):
        values = np.concatenate([line.get_ydata() for line in ax.get_lines()] or [np.zeros(0)]).astype(float)
        if (values > 0).any():
            ax.set_yscale("log", nonpositive="mask")
            if (values == 0).any():
                ax.plot([], [], ls="none", label="a gap: a share of exactly 0")
        ax.set(title=layout.title(panel), xlabel="training step",
               ylabel="long-term share of ‖∂L/∂U‖" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    return _finish(fig, axes, "Share of the recurrent weights' gradient from lags at or beyond the dependency "
                              "(layer 0), median over seeds (line) and min–max (band)")


def lyapunov_max(layout: Layout) -> Figure | None:
    """λ₁ (``lyapunov_max``, per step, natural log) over training, 0 marked: above it the forward dynamics
    are chaotic and the loss gradients diverge (Mikhaeil, Monfared & Durstewitz 2022). Only runs with
    ``diagnostics.lyapunov`` have it."""
    fig, axes, had = _over_training(layout, "lyapunov_max")
    if not any(had):
        return None
    for ax, panel in zip(axes, layout.panels):
        ax.axhline(0, color="black", ls=":", lw=1.2, label="λ₁ = 0: above, chaotic (gradients diverge)")
        ax.set(title=layout.title(panel), xlabel="training step", ylabel="λ₁ (per step, natural log)")
    return _finish(fig, axes, "Top Lyapunov exponent λ₁ of the forward dynamics on the evaluation inputs (layer 0), "
                              "median over seeds (line) and min–max (band); above 0 the gradients diverge "
                              "(Mikhaeil, Monfared & Durstewitz 2022)")


@dataclass
class Curve:
    """A run's memory against lag as its summary holds it (``gradlab.memory.run_curve``)."""

    scores: pd.Series  # indexed by lag
    chance: pd.Series
    kind: str | None
    task_lag: int | None


def recorded_curve(run: Run) -> Curve | None:
    """The run's recorded memory curve, or None when it has none (a run made before it was recorded) or its
    entry is not the lists ``run_curve`` writes (a hand-edited summary: left out of the figure)."""
    c = run.summary.get(MEMORY_CURVE)
    if not isinstance(c, dict):
        return None
    lags, scores, chance = (c.get(k) for k in ("lags", "scores", "chance"))
    if not (all(isinstance(v, list) for v in (lags, scores, chance)) and len(lags) == len(scores) == len(chance)):
        return None
    if not all(_is_number(k) for k in lags) or not all(v is None or _is_number(v) for v in scores + chance):
        return None
    index = pd.Index([float(k) for k in lags])
    task_lag = c.get("task_lag")
    return Curve(pd.Series([np.nan if v is None else float(v) for v in scores], index=index, dtype=float),
                 pd.Series([np.nan if v is None else float(v) for v in chance], index=index, dtype=float),
                 c.get("kind") if isinstance(c.get("kind"), str) else None,
                 task_lag if _is_number(task_lag) else None)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


MEMORY_UNITS = {VALUES: "held-out R²", SYMBOLS: "held-out accuracy"}


def memory_against_lag(layout: Layout) -> Figure | None:
    """Memory against lag at the end of training: per group the median over seeds of the held-out score of
    x_{t-k} read back from h_t (``gradlab.memory.run_curve``), its chance level dotted in the group's colour,
    the task's lag dash-dotted. Log lag axis with whole-step ticks."""
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        series, task_lag, kinds = [], None, set()
        for group in layout.in_panel(panel):
            curves = {r.id: c for r in group if (c := recorded_curve(r)) is not None}
            if not curves:
                continue
            scores = pd.concat({k: c.scores for k, c in curves.items()}, axis=1).sort_index()  # (lags, runs)
            chance = pd.concat({k: c.chance for k, c in curves.items()}, axis=1).sort_index()
            if not scores.notna().any().any():  # nothing scored at any lag (a diverged state): no line
                continue
            lags = scores.index.to_numpy()
            ax.plot(lags, chance.median(axis=1), color=layout.color(group), ls=":", lw=1.2)
            series.append((group, lags, scores.median(axis=1).to_numpy()))
            kinds |= {c.kind for c in curves.values()}
            task_lag = task_lag if task_lag is not None else next(
                (c.task_lag for c in curves.values() if c.task_lag is not None), None)
        draw_groups(ax, layout, series)
        drawn = drawn or bool(series)
        if series:
            ax.plot([], [], color="black", ls=":", lw=1.2, label="dotted: chance level (a state that holds nothing)")
        if task_lag is not None:
            ax.axvline(task_lag, color="black", ls="-.", lw=1, label="lag of the task's dependency")
        unit = MEMORY_UNITS.get(next(iter(kinds)), "held-out score") if len(kinds) == 1 else "held-out score"
        ax.set(title=layout.title(panel), xlabel="lag k (steps before the readout step t; log scale)",
               ylabel=f"{unit} of $x_{{t-k}}$ from $h_t$")
        if series:
            _lag_axis(ax)
    if not drawn:
        return None
    return _finish(fig, axes, "Memory against lag at the end of training: how well the input k steps back reads "
                              "from the state, median over seeds (a ridge readout; Alain & Bengio 2016)")


def _lag_axis(ax) -> None:
    """The x axis of ``ax`` on a log scale of whole lags labelled as numbers (1, 2, 5, 10, 20, ...), not 10⁰
    and 10¹ only."""
    ax.set_xscale("log")
    axis = ax.xaxis
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0f}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def heatmap_runs(layout: Layout) -> list[tuple[list[Run], Run]]:
    """One run per group (its lowest-seed run with a profile), every hue value before any repeats."""
    chosen, seen = [], {}
    for group in layout.groups:
        with_profile = sorted((r for r in group if r.profile is not None), key=lambda r: str(r.params.get("seed")))
        if with_profile:
            hue = str(layout.value(group[0], layout.hue_keys))
            seen[hue] = seen.get(hue, -1) + 1
            chosen.append((seen[hue], group, with_profile[0]))
    chosen.sort(key=lambda c: c[0])  # round-robin over hue values; sort is stable within a round
    return [(group, run) for _, group, run in chosen[:MAX_HEATMAPS]]


def heatmap(layout: Layout, group: list[Run], run: Run) -> Figure:
    steps, g = run.profile["step"], np.asarray(run.profile["grad_norm"], dtype=np.float64)  # (E,), (E, S)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(g > 0, np.log10(g), np.nan)[:, ::-1]  # (E, S) by lag; no gradient -> blank
    lag_edges = np.arange(g.shape[1] + 1) - 0.5
    fig = new_figure((8, 5))
    ax = fig.subplots()
    mesh = ax.pcolormesh(lag_edges, _edges(steps), np.ma.masked_invalid(logs), cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="log10 ‖∂L/∂h‖ (summed over the diagnostic batch)")
    dep_lag = run.summary.get("dependency_lag")
    if dep_lag is not None:
        ax.axvline(dep_lag, color="red", ls="-.", lw=1.2, label="lag of the task's dependency")
        ax.legend(loc="upper right", fontsize=8)
    p = run.params
    keys = [*layout.panel_keys[2:], *layout.hue_keys, *layout.style_keys]
    extras = [describe(k, p.get(k)) for k in keys if k != "cell"]
    what = f"{p.get('cell')} on {p['task']}, T={p['length']}" + (f" — {', '.join(extras)}" if extras else "")
    blank = "blank: no gradient" + ("" if run.floor is None else f", or {FLOOR_NOTE}")
    ax.set(title=textwrap.fill(f"{what}, seed {p.get('seed')}:", 70)
           + f"\ngradient reaching each lag over training ({blank})",
           xlabel="lag k (steps before the last step)", ylabel="training step of the evaluation")
    for axis in (ax.xaxis, ax.yaxis):  # lags and steps are whole numbers
        axis.set_major_locator(ticker.MaxNLocator(integer=True))
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each eval step (midpoints between neighbours) for pcolormesh."""
    s = np.asarray(steps, dtype=np.float64)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _median(profiles: list[np.ndarray]) -> np.ndarray:
    """Median over seeds of (S,) profiles; NaN where no seed has a value (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: a lag no seed reached
        return np.nanmedian(np.stack(profiles), axis=0)


def _normalised(profile: np.ndarray) -> np.ndarray:
    p = np.asarray(profile, dtype=np.float64)
    peak = np.nanmax(np.where(np.isfinite(p), p, np.nan)) if np.isfinite(p).any() else np.nan
    return p / peak if peak > 0 else np.full_like(p, np.nan)


def _column(run: Run, kind: str, column: str, skip_nonfinite: bool = False) -> pd.Series | None:
    """One metric of a run's ``kind`` rows, indexed by step; None when it was not recorded."""
    m = run.metrics
    if m is None or column not in m.columns:
        return None
    rows = m[m["kind"] == kind]
    if skip_nonfinite and "nonfinite" in rows.columns:
        rows = rows[rows["nonfinite"] != 1]  # a skipped step's norm is not a norm
    values = pd.to_numeric(rows[column], errors="coerce")
    values.index = pd.to_numeric(rows["step"], errors="coerce")
    return values if values.notna().any() else None


def profile_figure(profiles, path, *, dependency_lag: int | None = None,
                   horizon_fraction: float = DEFAULTS.horizon_fraction, title: str = "Gradient through time"):
    """One model's gradient-through-time profile: Σ_b ‖∂L/∂h_{T-1-k}‖ against the lag k, a line per layer.

    profiles: (L, T), bottom layer first, as ``gradlab.watch`` measures it. Absolute
    values on a log scale (the layers share the axis, so the gradient through depth
    shows too), the horizon threshold of layer 0's peak dotted, the dependency's lag
    dash-dotted. path: a file name or a binary file object; returned as given.
    """
    p = np.asarray(profiles, dtype=np.float64)  # (L, T)
    fig = Figure(figsize=(7, 4.2))  # no pyplot: no global backend touched
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.86)  # fixed: a layout engine doubles the time
    lags = np.arange(p.shape[1])
    for layer, row in enumerate(p):
        ax.plot(lags, row[::-1], lw=1.6, label=f"layer {layer}" + (" (reads the input)" if layer == 0 else ""))
    finite = p[0][np.isfinite(p[0])]
    if len(finite) and finite.max() > 0:
        ax.axhline(horizon_fraction * finite.max(), color="gray", ls=":", lw=1,
                   label=f"horizon threshold ({horizon_fraction:g} of layer 0's peak)")
    if dependency_lag is not None:
        ax.axvline(dependency_lag, color="black", ls="-.", lw=1, label="lag of the dependency")
    ax.set(title=title, xlabel="lag k (steps before the last step)",
           ylabel=r"$\sum_b \Vert\partial L/\partial h_{T-1-k}\Vert$ (log scale)")
    if (np.isfinite(p) & (p > 0)).any():
        ax.set_yscale("log", nonpositive="mask")
    else:  # a diverged run's evaluation: NaN or inf everywhere, nothing a log axis can hold
        ax.text(0.5, 0.5, "no finite gradient at this evaluation", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=8)
    if isinstance(path, (str, Path)):
        return save(fig, Path(path))
    fig.savefig(path, dpi=DPI, format="png")
    return path
