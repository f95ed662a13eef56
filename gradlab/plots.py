"""Figures of the runs found on disk: learning curves, gradient norms, the vanishing picture.

``plot(root, out)`` reads every finished, successful run under ``root`` and
writes PNGs to ``out``:

- ``learning_curves.png``  eval loss over training, median over seeds, min–max band, baseline dashed
- ``grad_norm.png``        pre-clip global gradient norm over training (log scale), clip threshold dotted
- ``grad_profile.png``     ‖∂L/∂h‖ against the lag, normalised to its peak: the vanishing picture
- ``profile_heatmap_<run id>.png``  that profile over training for a representative run per group

Runs that differ only by seed form a group. The figure's colours (one per
*hue*: the cell when cells differ, else the first config key that differs) are
the same in every figure; the other keys that differ, with task and length, make
one panel each. Like ``comparison``, this module reads only files and never
imports torch; matplotlib draws off-screen (Agg), so no display is needed.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: draw to files, never to a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gradlab import results  # noqa: E402
from gradlab.diagnostics import DEFAULTS  # noqa: E402

PROFILE = "profile.npz"
HUE_ORDER = ("cell", "clip", "tbptt")  # the first of these that differs colours the lines
NOT_GROUPED = ("seed",)  # runs differing only in these are one group
MAX_HEATMAPS = 12  # one heatmap per group, at most this many: a sweep of 36 groups stays browsable
DPI = 120


@dataclass
class Run:
    """One finished run and what plotting needs from its directory."""

    id: str
    params: dict  # flat config: task, length, cell, clip (label), tbptt, lr, ...
    summary: dict
    config: dict
    metrics: pd.DataFrame | None
    profile: dict | None  # {"step": (E,), "grad_norm": (E, S)}


def plot(root: Path, out: Path) -> list[Path]:
    """Write every figure the runs under ``root`` have data for; return the paths written."""
    runs = load_runs(root)
    if not runs:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layout = Layout(runs)
    written = [learning_curves(layout, out / "learning_curves.png"),
               grad_norm(layout, out / "grad_norm.png"),
               grad_profile(layout, out / "grad_profile.png")]
    written += heatmaps(layout, out)
    return [p for p in written if p is not None]


# ---------------------------------------------------------------------------
# Reading runs.

def load_runs(root: Path) -> list[Run]:
    """Every finished run under ``root`` with status ok; missing metrics or profile become None."""
    runs = []
    for d in results.find_runs(root):
        record = results.load_run(d)
        if record["summary"].get("status") != "ok":
            continue
        metrics = pd.read_csv(d / results.METRICS) if (d / results.METRICS).is_file() else None
        profile = None
        if (d / PROFILE).is_file():
            with np.load(d / PROFILE) as npz:
                profile = {"step": npz["step"], "grad_norm": npz["grad_norm"]}  # (E,), (E, S)
            profile = profile if profile["grad_norm"].size else None
        runs.append(Run(record["id"], flat_params(record["config"]), record["summary"], record["config"],
                        metrics, profile))
    return runs


def flat_params(cfg: dict) -> dict:
    """The config keys that make a run what it is, flat and hashable (clip as its label)."""
    flat = {"task": cfg["task"]["name"], "length": cfg["task"]["length"]}
    flat.update({k: v for k, v in cfg["task"].items() if k not in ("name", "length")})
    for section in ("model", "train"):
        for k, v in cfg.get(section, {}).items():
            flat[k] = results.clip_label(v) if k == "clip" else results.tbptt_label(v) if k == "tbptt" else v
    flat.update({k: cfg[k] for k in ("dtype", "seed") if k in cfg})
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in flat.items()}


class Layout:
    """Runs grouped by config (seeds pooled), groups placed in panels, a colour per hue value."""

    def __init__(self, runs: list[Run]):
        keys = [k for k in dict.fromkeys(k for r in runs for k in r.params) if k not in NOT_GROUPED]
        varying = [k for k in keys if k not in ("task", "length")
                   and len({str(r.params.get(k)) for r in runs}) > 1]
        self.hue = next((k for k in HUE_ORDER if k in varying), varying[0] if varying else "cell")
        # the cell is named in every title: as the hue, or in the panel when it is the same throughout
        self.panel_keys = ["task", "length"] + (["cell"] if self.hue != "cell" else []) \
            + [k for k in varying if k != self.hue]
        groups: dict[tuple, list[Run]] = {}
        for r in runs:
            groups.setdefault(tuple(str(r.params.get(k)) for k in keys), []).append(r)
        self.groups = sorted(groups.values(), key=lambda g: (self.panel_of(g), str(g[0].params.get(self.hue))))
        hues = list(dict.fromkeys(str(g[0].params.get(self.hue)) for g in self.groups))
        palette = plt.get_cmap("tab10" if len(hues) <= 10 else "tab20").colors
        self.colors = {h: palette[i % len(palette)] for i, h in enumerate(hues)}
        self.panels = list(dict.fromkeys(self.panel_of(g) for g in self.groups))
        self.panel_params = {self.panel_of(g): g[0].params for g in reversed(self.groups)}  # raw values

    def panel_of(self, group: list[Run]) -> tuple:
        return tuple(str(group[0].params.get(k)) for k in self.panel_keys)

    def in_panel(self, panel: tuple) -> list[list[Run]]:
        return [g for g in self.groups if self.panel_of(g) == panel]

    def label(self, group: list[Run]) -> str:
        return describe(self.hue, group[0].params.get(self.hue))

    def color(self, group: list[Run]):
        return self.colors[str(group[0].params.get(self.hue))]

    def title(self, panel: tuple) -> str:
        p = self.panel_params[panel]
        extra = [describe(k, p.get(k)) for k in self.panel_keys[2:]]
        return f"{p['task']}, T={p['length']}" + (f" — {', '.join(extra)}" if extra else "")

    def figure(self, n_panels: int):
        ncols = min(n_panels, 3)
        nrows = math.ceil(n_panels / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols + 1.8, 4.2 * nrows),
                                 squeeze=False, layout="constrained")
        for ax in axes.flat[n_panels:]:
            ax.set_visible(False)
        return fig, list(axes.flat[:n_panels])


def describe(key: str, value) -> str:
    """A config value as a reader says it: ``lstm``, ``clip norm(1.0)``, ``full BPTT``, ``lr=0.01``."""
    if key == "cell":
        return str(value)
    if key == "clip":
        return "no clipping" if value == "none" else f"clip {value}"
    if key == "tbptt":
        if isinstance(value, str) and "/" in value:  # TBPTT(k1, k2)
            return "TBPTT k1/k2 = " + value
        return "full BPTT" if value is None else f"TBPTT window {value}"
    return f"{key}={value}"


def _finish(fig, axes, path: Path, title: str) -> Path:
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 10)))  # ~10 characters per inch
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=9)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _by_step(series: dict[str, pd.Series]) -> pd.DataFrame:
    """{run id: values indexed by step} -> (steps, runs), inf as NaN: a diverged seed drops out."""
    return pd.concat(series, axis=1).sort_index().replace([np.inf, -np.inf], np.nan)


# ---------------------------------------------------------------------------
# The figures.

def learning_curves(layout: Layout, path: Path) -> Path | None:
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        baseline = None
        for group in layout.in_panel(panel):
            curves = {r.id: _column(r, "eval", "eval_loss") for r in group}
            curves = {k: v for k, v in curves.items() if v is not None}
            baseline = baseline or next((r.summary.get("baseline_loss") for r in group), None)
            if not curves:
                continue
            df = _by_step(curves)
            color = layout.color(group)
            ax.plot(df.index, df.median(axis=1), color=color, label=layout.label(group))
            ax.fill_between(df.index, df.min(axis=1), df.max(axis=1), color=color, alpha=0.2, lw=0)
            drawn = True
        if baseline is not None:
            ax.axhline(baseline, color="black", ls="--", lw=1, label="memoryless baseline")
        ax.set(title=layout.title(panel), xlabel="training step", ylabel="evaluation loss (log scale)")
        ax.set_yscale("log")
    if not drawn:
        plt.close(fig)
        return None
    return _finish(fig, axes, path, "Learning curves: median over seeds (line) and min–max (band)")


def grad_norm(layout: Layout, path: Path) -> Path | None:
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        for group in layout.in_panel(panel):
            norms = {r.id: _column(r, "train", "grad_norm", skip_nonfinite=True) for r in group}
            norms = {k: v for k, v in norms.items() if v is not None}
            if not norms:
                continue
            median = _by_step(norms).median(axis=1)
            smooth = median.rolling(max(1, len(median) // 100), center=True, min_periods=1).median()
            color = layout.color(group)
            ax.plot(median.index, median, color=color, lw=0.5, alpha=0.35)
            ax.plot(smooth.index, smooth, color=color, lw=1.8, label=layout.label(group))
            clip = group[0].config["train"].get("clip", {})
            if clip.get("kind") == "norm":  # in the group's colour only when the colours tell clips apart
                ax.axhline(clip["max_norm"], color=color if layout.hue == "clip" else "black", ls=":", lw=1.5)
                ax.plot([], [], color="gray", ls=":", label="norm-clipping threshold")
            drawn = True
        ax.set(title=layout.title(panel), xlabel="training step", ylabel="‖g‖ before clipping (log scale)")
        ax.set_yscale("log", nonpositive="mask")
    if not drawn:
        plt.close(fig)
        return None
    return _finish(fig, axes, path, "Global gradient norm before clipping, median over seeds "
                                    "(thin: every step; thick: running median)")


def grad_profile(layout: Layout, path: Path) -> Path | None:
    fig, axes = layout.figure(len(layout.panels))
    drawn = False
    for ax, panel in zip(axes, layout.panels):
        dep_lag, groups = None, layout.in_panel(panel)
        for group in groups:
            profiles = [r.profile["grad_norm"] for r in group if r.profile is not None]
            if not profiles:
                continue
            color = layout.color(group)
            final = _median([_normalised(p[-1]) for p in profiles])  # (S,)
            first = _median([_normalised(p[0]) for p in profiles])
            lags = np.arange(len(final))
            ax.plot(lags, final[::-1], color=color, lw=1.8, label=layout.label(group))
            ax.plot(lags, first[::-1], color=color, lw=1, ls="--", alpha=0.6)
            dep_lag = dep_lag or next((r.summary.get("dependency_lag") for r in group), None)
            drawn = True
        ax.plot([], [], color="gray", lw=1.8, label="end of training")
        ax.plot([], [], color="gray", lw=1, ls="--", label="first evaluation")
        fraction = groups[0][0].config.get("diagnostics", {}).get("horizon_fraction", DEFAULTS.horizon_fraction)
        ax.axhline(fraction, color="gray", ls=":", lw=1, label=f"horizon threshold ({fraction:g} of peak)")
        if dep_lag is not None:
            ax.axvline(dep_lag, color="black", ls="-.", lw=1, label="lag of the task's dependency")
        ax.set(title=layout.title(panel), xlabel="lag k (steps before the last step)",
               ylabel=r"$\Vert\partial L/\partial h_{T-k}\Vert$ / its peak (log scale)")
        ax.set_yscale("log", nonpositive="mask")
    if not drawn:
        plt.close(fig)
        return None
    return _finish(fig, axes, path, "Gradient through time, normalised to its peak, median over seeds "
                                    "(a line falling to the right = vanishing gradient)")


def heatmaps(layout: Layout, out: Path) -> list[Path]:
    """One heatmap per group (its lowest-seed run with a profile), every hue before any repeats."""
    chosen, seen = [], {}
    for group in layout.groups:
        with_profile = sorted((r for r in group if r.profile is not None), key=lambda r: str(r.params.get("seed")))
        if with_profile:
            hue = str(group[0].params.get(layout.hue))
            seen[hue] = seen.get(hue, -1) + 1
            chosen.append((seen[hue], group, with_profile[0]))
    chosen.sort(key=lambda c: c[0])  # round-robin over hue values; sort is stable within a round
    return [heatmap(layout, group, run, out / f"profile_heatmap_{run.id}.png")
            for _, group, run in chosen[:MAX_HEATMAPS]]


def heatmap(layout: Layout, group: list[Run], run: Run, path: Path) -> Path:
    steps, g = run.profile["step"], np.asarray(run.profile["grad_norm"], dtype=np.float64)  # (E,), (E, S)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(g > 0, np.log10(g), np.nan)[:, ::-1]  # (E, S) by lag; no gradient -> blank
    lag_edges = np.arange(g.shape[1] + 1) - 0.5
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    mesh = ax.pcolormesh(lag_edges, _edges(steps), np.ma.masked_invalid(logs), cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="log10 ‖∂L/∂h‖ (summed over the diagnostic batch)")
    dep_lag = run.summary.get("dependency_lag")
    if dep_lag is not None:
        ax.axvline(dep_lag, color="red", ls="-.", lw=1.2, label="lag of the task's dependency")
        ax.legend(loc="upper right", fontsize=8)
    p = run.params
    extras = [describe(k, p.get(k)) for k in [*layout.panel_keys[2:], layout.hue] if k != "cell"]
    what = f"{p.get('cell')} on {p['task']}, T={p['length']}" + (f" — {', '.join(extras)}" if extras else "")
    ax.set(title=f"{what}, seed {p.get('seed')}:\ngradient reaching each lag over training (blank: no gradient)",
           xlabel="lag k (steps before the last step)", ylabel="training step of the evaluation")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


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
    if m is None or column not in m.columns or "kind" not in m.columns:
        return None
    rows = m[m["kind"] == kind]
    if skip_nonfinite and "nonfinite" in rows.columns:
        rows = rows[rows["nonfinite"] != 1]  # a skipped step's norm is not a norm
    values = pd.to_numeric(rows[column], errors="coerce")
    values.index = rows["step"]
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
    fig, ax = plt.subplots(figsize=(7, 4.2))
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
    ax.set_yscale("log", nonpositive="mask")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path
