"""The data's own reach: how far back the data matters, from a grid over ``task.window``.

The lessons gradlab follows ask "does the gradient vanish, or are there no long-range dependencies
in the data?" (issue 23). For a synthetic task the lag is known; for data a user brings it is not. A
grid over ``task.window`` answers it from the data: window k hides every input more than k steps
before the readout (``gradlab.task.hide``), so a model trained and evaluated at window k can do no
better than the data within k steps allows. The data's dependency horizon is then the smallest
window at which the model does as well as on the whole sequence:

- the reference is the group that saw the whole sequence (window null); with none, the largest
  window stands for it (a reach beyond it is not measured);
- "as well as": the window's final loss, the mean over its seeds, is at most the top of the seeds'
  95% interval of the reference: the Student's t prediction interval of one seed's loss,
  mean ± t(0.975, n-1) · s · √(1 + 1/n) over its n seeds (``interval``), where a further seed of the
  whole sequence would fall. Not the interval of the reference's *mean*: a mean of n seeds compared
  with that one exceeds it ~5% of the time at n = 3, rising to ~8% as n grows, when the window loses
  nothing at all (Gaussian losses, simulated), so a window at the true horizon would fail once in
  twenty grids whatever the seeds; against the prediction interval, 1.3% at n = 3 and falling with
  n, while a window that hides what the model needs moves the loss by far more than the seeds'
  spread (adding, T = 10: window 8 hides a fifth of the first values, +1/60 in MSE, against a
  spread of ~3e-4). One-sided: hiding inputs can never add information, so a window that does
  better than the whole sequence (a shorter effective sequence is easier to learn) has lost nothing
  the model used;
- the horizon is the smallest window from which every larger window also passes, in steps from the
  readout, counted as ``Task.lag`` counts them (window = lag keeps the earliest dependency input);
- a diverged seed (a finished run whose final loss is non-finite: gradlab writes it as null, or flagged
  ``diverged``) is never left out as if missing: a window with one is unknown (``passes`` None, and
  the note says so), not the mean of its other seeds; a window left unknown just below the horizon
  makes it "at most";
- no horizon (None), with a note saying why, when it cannot be told: the reference has fewer than
  two seeds (no interval), a diverged seed, or does not beat the memoryless baseline (its interval
  reaches the baseline: the model learned nothing a window could take away, so every window would
  pass and the "horizon" would be the model's, not the data's); or no window passes (the reach is
  beyond the largest window).

What it is not: the reach of the data *for this model and training budget*. A window the model
could have used but did not looks as good as the full sequence; a horizon is a lower bound on the
data's reach where the model is weak, and a model that beats the baseline is the least it needs.

Reading side only (``gradlab.comparison``'s frame of runs; never torch).
"""

from __future__ import annotations

import csv
import io
import json
import math

import pandas as pd
from scipy import stats

from gradlab.comparison import _clean, _groups, _numbers, cell_text, fmt, group_columns
from gradlab.vocabulary import FULL_WINDOW

SCHEMA = "gradlab.reach/1"  # each JSON row's "schema"; a key that changes meaning or disappears bumps it
LEVEL = 0.95  # the reference's prediction interval: where one more seed's loss falls (``interval``)
WINDOW = "window"  # the column of task.window (gradlab.vocabulary.config_columns)


class NoWindowGrid(ValueError):
    """The runs hold no ``task.window`` grid: there is nothing to measure the reach from."""


def interval(values: list[float]) -> tuple[float, float] | None:
    """The seeds' ``LEVEL`` interval: the Student's t prediction interval of one more seed's loss,
    mean ± t((1 + LEVEL)/2, n - 1) · s · √(1 + 1/n), s the sample standard deviation of the n
    ``values``; None for fewer than two values (one seed has no spread to build an interval from)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + LEVEL) / 2, n - 1)) * sd * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def horizons(frame: pd.DataFrame, by: list[str] | None = None) -> list[dict]:
    """One record per set of groups that differ only in ``window``, from a frame of runs
    (``comparison.load_frame``); ``by``: the grouping columns (as ``compare --by``; default: the
    compare groups). Each record: the set's other columns, ``reference`` (``full`` or the window
    standing for it), ``full_loss`` (the mean over its seeds) with the seeds' interval ``full_low``,
    ``full_high`` (``interval``) and ``full_seeds``,
    ``baseline_loss``, ``windows`` ([{window, loss, seeds, passes}], smallest first; ``passes``: the
    mean loss is at most ``full_high``), ``data_horizon`` (steps, or None) and ``note``.
    Raises NoWindowGrid when no run has a window.
    """
    if frame.empty or WINDOW not in frame.columns or frame[WINDOW].map(_clean).isna().all():
        raise NoWindowGrid("no task.window grid among these runs (every run saw the whole sequence); "
                           "run one with grid: {task.window: [...]} to measure the data's reach")
    columns, _ = group_columns(frame, [c for c in by if c != WINDOW] if by else None)
    # the variant names the task even where it does not vary (adding[near] and adding differ in lag)
    keys = [c for c in dict.fromkeys([*columns, "variant"]) if c != WINDOW and c in frame.columns]
    records = []
    for _, group in (_groups(frame, keys) if keys else [(None, frame)]):
        record = {c: _clean(group[c].iloc[0]) for c in keys}
        records.append({**record, **_horizon(group)})
    return records


def _horizon(runs: pd.DataFrame) -> dict:
    """The reach of one set of runs that differ only in window (``horizons``)."""
    losses = {}  # window (None = full) -> the finished runs' final losses, inf for a diverged one
    for _, g in _groups(runs, [WINDOW]):
        losses[_window(g[WINDOW].iloc[0])] = _final_losses(g[g["status"] == "ok"])
    windows = sorted(k for k in losses if k is not None)
    notes = []
    if None in losses:
        reference = None
    else:
        reference = windows.pop()
        notes.append(f"no full-sequence group: window {reference} stands for it (a reach beyond "
                     f"{reference} steps is not measured)")
    full = losses[reference]
    ci = interval(full) if all(math.isfinite(v) for v in full) else None
    baseline = _numbers(runs["baseline_loss"])
    out = {"reference": FULL_WINDOW if reference is None else reference,
           "full_loss": sum(full) / len(full) if full else None,
           "full_low": ci[0] if ci else None, "full_high": ci[1] if ci else None,
           "full_seeds": len(full), "baseline_loss": baseline[0] if baseline else None}
    # a window with a diverged seed is unknown (passes None): its other seeds' mean would hide the divergence
    rows = [{"window": k, "loss": sum(losses[k]) / len(losses[k]) if losses[k] else None,
             "seeds": len(losses[k]), "diverged": _diverged(losses[k]),
             "passes": None if ci is None or not losses[k] or _diverged(losses[k])
             else sum(losses[k]) / len(losses[k]) <= ci[1]}
            for k in windows]
    horizon, why = _read(full, ci, out["baseline_loss"], rows)
    return {**out, "windows": rows, "data_horizon": horizon, "note": "; ".join([why, *notes])}


def _final_losses(ok: pd.DataFrame) -> list[float]:
    """The final losses of finished runs, inf for a diverged one: gradlab writes a non-finite loss as null
    (JSON has no infinity), so a null loss of a finished run, or its ``diverged`` flag, is a divergence, not a
    missing seed."""
    out = []
    for loss, diverged in zip(ok["final_loss"], ok.get("diverged", pd.Series(False, index=ok.index)), strict=True):
        loss = _clean(loss)
        finite = isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss)
        out.append(float(loss) if finite and _clean(diverged) is not True else math.inf)
    return out


def _diverged(losses: list[float]) -> int:
    return sum(not math.isfinite(v) for v in losses)


def _window(v) -> int | None:
    """A window as the frame holds it (a column with nulls is float: 8.0) -> 8, or None (full)."""
    v = _clean(v)
    return None if v is None else int(v)


def _read(full: list[float], ci, baseline: float | None, rows: list[dict]) -> tuple[int | None, str]:
    """(the data horizon or None, the note that says what it means or why there is none)."""
    if len(full) < 2:
        return None, f"needs >= 2 seeds of the full sequence for an interval (has {len(full)})"
    if ci is None:
        return None, (f"the full sequence's loss is not finite in {_diverged(full)} of its {len(full)} seeds "
                      "(diverged): no interval, no horizon")
    if baseline is not None and ci[1] >= baseline:
        return None, (f"the full sequence's model does not beat the memoryless baseline ({fmt(ci[1])} >= "
                      f"{fmt(baseline)} at the interval's top): the grid cannot tell the data's reach")
    known = [r for r in rows if r["passes"] is not None]
    unknown = [r for r in rows if r["diverged"]]
    if not known:
        return None, "no window has a finished run" + _unknown_note(unknown)
    if not known[-1]["passes"]:
        return None, (f"no window reaches the full sequence's loss: the data reaches further back than "
                      f"{known[-1]['window']} steps" + _unknown_note(unknown))
    first = len(known) - 1
    while first > 0 and known[first - 1]["passes"]:
        first -= 1
    horizon = known[first]["window"]
    early = [r["window"] for r in known[:first] if r["passes"]]
    below = known[first - 1]["window"] if first > 0 else None
    # a window left unknown (a diverged seed) is said in the note; one between the failing window and the horizon
    # leaves the horizon an upper bound (it might have passed)
    if any(below is None or r["window"] > below for r in unknown if r["window"] < horizon):
        return horizon, (f"the data reaches at most {horizon} steps back: window {horizon} keeps what the model "
                         f"uses; a smaller one is unknown" + _unknown_note(unknown))
    if first > 0:
        why = (f"the data reaches {horizon} steps back: window {horizon} keeps what the model uses, "
               f"window {known[first - 1]['window']} loses it")
    else:
        why = f"the data reaches at most {horizon} steps back: the smallest window tried keeps what the model uses"
    if early:
        why += f" (windows {', '.join(map(str, early))} pass too, with a larger one failing between: not monotone)"
    return horizon, why + _unknown_note(unknown)


def _unknown_note(unknown: list[dict]) -> str:
    """``; window 3 unknown (1 of 3 seeds diverged)`` for each window left unknown by a diverged seed."""
    return "".join(f"; window {r['window']} unknown ({r['diverged']} of {r['seeds']} seeds diverged)"
                   for r in unknown)


# ---------------------------------------------------------------------------
# As text: flat rows (markdown, csv) and JSON rows.

def window_label(k) -> str:
    return f"loss_w{k}"


def flat_rows(records: list[dict]) -> list[dict]:
    """One flat row per record: the set's columns, the reference's figures, ``loss_w<k>`` per window,
    ``data_horizon``, ``note`` (markdown, csv and the terminal table show these)."""
    windows = sorted({r["window"] for rec in records for r in rec["windows"]})
    rows = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k not in ("windows", "data_horizon", "note")}
        by_window = {r["window"]: r["loss"] for r in rec["windows"]}
        row.update({window_label(k): by_window.get(k) for k in windows})
        row.update({"data_horizon": rec["data_horizon"], "note": rec["note"]})
        rows.append(row)
    return rows


def _strict(v):
    """JSON has no infinity: a non-finite loss (a diverged run) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def to_json(records: list[dict]) -> str:
    """A list of records, each with ``"schema": SCHEMA``; a non-finite loss is null."""
    def clean(rec: dict) -> dict:
        return {k: [clean(r) for r in v] if k == "windows" else _strict(v) for k, v in rec.items()}
    return json.dumps([{"schema": SCHEMA, **clean(rec)} for rec in records], indent=2, allow_nan=False) + "\n"


def to_markdown(records: list[dict]) -> str:
    rows = flat_rows(records)
    cols = list(rows[0]) if rows else []
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(cell_text(c, r[c])) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(records: list[dict]) -> str:
    rows = flat_rows(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def render(records: list[dict], fmt_name: str) -> str:
    """The reach view as ``json``, ``csv`` or ``markdown`` text."""
    if fmt_name == "json":
        return to_json(records)
    if fmt_name == "csv":
        return to_csv(records)
    if fmt_name == "markdown":
        return to_markdown(records)
    raise ValueError(f"unknown format {fmt_name!r}")


LEGEND = (f"data_horizon: the smallest window (steps before the readout, counted as a task's lag) from which "
          f"every window's mean loss over seeds is at most the top of the full sequence's seeds' {LEVEL:.0%} "
          "interval (Student's t, where one more seed would fall)")
