"""Seed-aggregated comparison of the runs found on disk.

Reads only result directories (never torch): each run becomes one row of
its config (flattened: ``task``, ``length``, ``cell``, ``clip``, ``tbptt``,
``lr``, ...) and summary; rows are grouped (by default per task, length,
cell, clip and tbptt) and aggregated over seeds.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd

from gradlab import results, statistics
from gradlab.diagnosis import diagnose
from gradlab.vocabulary import (
    FLAGS,
    FULL_BPTT,
    FULL_WINDOW,
    HEALTHY,
    MIXED,
    TEXT_METRICS,
    VERDICTS,
    config_columns,
)

DEFAULT_BY = ["task", "length", "cell", "clip", "tbptt"]
# The version of every JSON document compare prints: the --check/diff object's "schema" and each
# object of the plain list. New keys keep it; a key that changes meaning or disappears bumps it.
# 2: ``verdict`` is "mixed" on a tie (1: the worse of the tied verdicts).
# 3: two flags (issue 23): ``verdict`` may be "vanishing+exploding" and "exploding" no longer hides a
# vanishing gradient; ``exploding_runs`` and ``vanishing_runs`` count each flag over a group's runs.
# 4: each group carries ``diagnosis`` (issue 23 point 6, gradlab.diagnosis): {cases, text, details, remedies}.
SCHEMA = "gradlab.compare/4"
# integers, also as <count>_base, _candidate, _delta of a diff
COUNTS = ("runs", "failed", "solved", "diverged", "exploding_runs", "vanishing_runs")
# The table's metric columns are gradlab.vocabulary.METRICS, in order.
# Config columns that set a run's memoryless baseline loss: runs differing in one are never pooled.
BASELINE_KEYS = ["task", "variant", "length"]


def loss_ratio(summary: dict) -> float | None:
    """A run's final loss over its task's memoryless baseline: 1 = no better than guessing, 0 = perfect;
    inf for a non-finite final loss (a diverged run counts as the worst, not as missing)."""
    loss, base = summary.get("final_loss"), summary.get("baseline_loss")
    if summary.get("status") != "ok" or not isinstance(base, (int, float)) or not base > 0:
        return None
    if loss is None or not math.isfinite(loss):
        return math.inf
    return loss / base


def dependency_ratio(record: dict) -> dict:
    """A run's ``dependency_ratio`` and whether it is an upper bound: a run whose last profile was cut at
    float32's floor (``readers.float32_floor``, the record's "floor") has its bound in place of the 0 or
    near-0 it recorded."""
    floor = record.get("floor") or {}
    bound = floor.get("dependency_ratio_bound")
    return {"dependency_ratio": record["summary"].get("dependency_ratio") if bound is None else bound,
            "dependency_ratio_bound": bound is not None}


def flatten(record: dict) -> dict:
    """One run record -> one flat row: config columns first, then summary columns."""
    summary = record["summary"]
    row = config_columns(record["config"])
    row.setdefault("window", None)  # task.window: a run from before it existed saw the whole sequence
    row.update({"status": summary.get("status"), "final_loss": summary.get("final_loss"),
                "solved": bool(summary.get("solved", False)), "steps_to_solve": summary.get("steps_to_solve"),
                "diverged": bool(summary.get("diverged", False)), "baseline_loss": summary.get("baseline_loss"),
                "loss_ratio": loss_ratio(summary), "clip_rate": summary.get("clip_rate"),
                "verdict": summary.get("verdict"), "exploding": summary.get("exploding"),
                "vanishing": summary.get("vanishing"), "horizon_init": summary.get("horizon_init"),
                "horizon": summary.get("horizon"), "dependency_lag": summary.get("dependency_lag"),
                "task_lag": summary.get("task_lag"),  # runs from before it was recorded: None
                **dependency_ratio(record),
                "long_term_share": summary.get("long_term_share"), "memory": summary.get("memory"),
                "memory_chance": summary.get("memory_chance"), "memory_ceiling": summary.get("memory_ceiling"),
                "lyapunov_max": summary.get("lyapunov_max"),
                "grad_norm_max": summary.get("grad_norm_max"), "suggested_clip": summary.get("suggested_clip"),
                "wall_seconds": summary.get("wall_seconds"), "run_dir": record["dir"],
                "run_hash": results.run_hash(record["id"])})
    return row


SUMMARY_COLUMNS = ["status", "final_loss", "solved", "steps_to_solve", "diverged", "baseline_loss", "loss_ratio",
                   "clip_rate", "verdict", "exploding", "vanishing", "horizon_init", "horizon", "dependency_lag",
                   "task_lag", "dependency_ratio", "dependency_ratio_bound", "long_term_share", "memory",
                   "memory_chance", "memory_ceiling", "lyapunov_max",
                   "grad_norm_max", "suggested_clip",
                   "wall_seconds", "run_dir", "run_hash"]


def load_frame(roots: list[Path], damaged: list | None = None) -> pd.DataFrame:
    """Every finished run under the given directories, one row each.

    A damaged run directory (``results.Damaged``: a file missing, empty, truncated, corrupt or
    of the wrong shape, ``gradlab.readers.check_run``) is left out and appended to ``damaged`` when
    given; without it, raised.
    """
    rows, seen = [], set()
    for root in roots:
        records, bad = results.scan_runs(root)
        if bad and damaged is None:
            raise bad[0]
        if damaged is not None:
            damaged += bad
        for record in records:
            # the run id's hash is the resolved config's identity; its readable part can differ for
            # one run (grid key order), so a run copied into two shards or stored twice counts once
            key = (record["config"].get("name"), results.run_hash(record["id"]))
            if key in seen:
                continue
            seen.add(key)
            rows.append(flatten(record))
    return pd.DataFrame(rows)


def _numbers(column: pd.Series) -> list[float]:
    return [float(v) for v in pd.to_numeric(column, errors="coerce").dropna()]


def _aggregate(g: pd.DataFrame) -> pd.Series:
    ok = g[g["status"] == "ok"]
    loss = pd.to_numeric(ok["final_loss"], errors="coerce")
    solved_steps = pd.to_numeric(ok.loc[ok["solved"], "steps_to_solve"], errors="coerce").dropna()
    solved = int(ok["solved"].sum())
    ci_low, ci_high = statistics.wilson(solved, len(g))
    ratios = _numbers(ok["loss_ratio"]) if "loss_ratio" in ok else []
    ratio_low, ratio_high = statistics.iqm_interval(ratios)
    return pd.Series({
        "runs": len(g),
        "failed": int((g["status"] != "ok").sum()),
        "solved": solved,
        "solved_rate": solved / len(g),
        "solved_ci_low": ci_low, "solved_ci_high": ci_high,
        "final_loss_mean": loss.mean() if len(loss) else None,
        "final_loss_std": loss.std(ddof=1) if len(loss) > 1 else None,
        "baseline_loss": pd.to_numeric(g["baseline_loss"], errors="coerce").dropna().iloc[0]
        if g["baseline_loss"].notna().any() else None,
        "loss_ratio_iqm": float(statistics.iqm(ratios)) if ratios else None,
        "loss_ratio_min": min(ratios) if ratios else None,
        "loss_ratio_max": max(ratios) if ratios else None,
        "loss_ratio_ci_low": ratio_low, "loss_ratio_ci_high": ratio_high,
        "steps_to_solve_median": solved_steps.median() if len(solved_steps) else None,
        "diverged": int(ok["diverged"].sum()),
        **_verdicts(ok),
        **_flag_counts(ok),
        # .get: frames from before the column existed (or built by hand) lack it
        "horizon_init_median": _median(ok.get("horizon_init", pd.Series(dtype=float))),
        "horizon_median": _median(ok["horizon"]),
        "dependency_lag_median": _median(ok.get("dependency_lag", pd.Series(dtype=float))),
        # Task.lag, from the first scored step as task.window counts: what a data horizon is read against
        "task_lag_median": _median(ok.get("task_lag", pd.Series(dtype=float))),
        **_dependency(ok),
        # issue 23's figures of the last evaluation: runs from before they existed have none (None)
        "long_term_share_median": _median(ok.get("long_term_share", pd.Series(dtype=float))),
        "memory_median": _median(ok.get("memory", pd.Series(dtype=float))),
        # what the memory is read against: the chance level of the readout, and what a solver that keeps only
        # the answer scores (gradlab.task.Task.memory_ceiling)
        "memory_chance_median": _median(ok.get("memory_chance", pd.Series(dtype=float))),
        "memory_ceiling_median": _median(ok.get("memory_ceiling", pd.Series(dtype=float))),
        "lyapunov_max_median": _median(ok.get("lyapunov_max", pd.Series(dtype=float))),
        "clip_rate_mean": _mean(ok.get("clip_rate", pd.Series(dtype=float))),
        "grad_norm_max": pd.to_numeric(ok["grad_norm_max"], errors="coerce").max() if len(ok) else None,
        "suggested_clip": _median(ok["suggested_clip"]),
    })


def _dependency(ok: pd.DataFrame) -> dict:
    """The median dependency ratio over runs, and whether it is an upper bound: it is when a run's ratio is
    (``dependency_ratio``; the median of upper bounds bounds the median from above)."""
    ratio = pd.to_numeric(ok.get("dependency_ratio", pd.Series(float("nan"), index=ok.index)), errors="coerce")
    bounds = ok.get("dependency_ratio_bound", pd.Series(False, index=ok.index)).fillna(False).astype(bool)
    return {"dependency_ratio_median": _median(ratio),
            "dependency_ratio_bound": bool(bounds[ratio.notna()].any())}


def _median(column: pd.Series):
    values = pd.to_numeric(column, errors="coerce").dropna()
    return values.median() if len(values) else None


def _mean(column: pd.Series):
    values = pd.to_numeric(column, errors="coerce").dropna()
    return values.mean() if len(values) else None


def _verdicts(ok: pd.DataFrame) -> dict:
    """The verdict of most runs, ``mixed`` on a tie, and the whole mix, e.g. ``2 vanishing, 1 healthy``."""
    counts = ok["verdict"].dropna().value_counts()
    if counts.empty:
        return {"verdict": None, "verdicts": None}
    rank = {v: i for i, v in enumerate(VERDICTS)}
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], rank.get(kv[0], len(rank)), kv[0]))
    tie = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
    return {"verdict": MIXED if tie else ranked[0][0], "verdicts": ", ".join(f"{n} {v}" for v, n in ranked)}


def _flag_counts(ok: pd.DataFrame) -> dict:
    """``exploding_runs`` and ``vanishing_runs``: how many finished runs carry each flag (``readers.with_flags``
    gives runs recorded before the flags theirs; an unknown flag, null, counts in neither)."""
    return {f"{flag}_runs": int(ok[flag].map(lambda v: v is True or v == 1).sum()) if flag in ok else 0
            for flag in FLAGS}


def varying_columns(frame: pd.DataFrame) -> list[str]:
    """Config columns (beyond DEFAULT_BY) whose value differs between runs: the grid's other axes."""
    ignore = set(DEFAULT_BY) | set(SUMMARY_COLUMNS) | {"seed", "device", "threads", "experiment"}
    return [c for c in frame.columns if c not in ignore and _distinct(frame[c]) > 1]


def _distinct(column: pd.Series) -> int:
    return column.map(group_key).nunique()


def group_columns(frame: pd.DataFrame, by: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The columns to group on, and a note for each column added to or pooled by an explicit ``by``.

    Without ``by``: DEFAULT_BY and every other config column that varies, so each grid point
    (and each set of runs whose configs differ, e.g. after ``--set train.steps=500``) is its own
    group. An explicit ``by`` never pools runs of different baselines: a BASELINE_KEYS column
    (or, failing that, any varying column) that separates them within a group is added, with a
    note. Raises ValueError for an unknown ``by`` column.
    """
    if not by:
        return list(DEFAULT_BY + varying_columns(frame)), []
    unknown = [c for c in by if c not in frame.columns]
    if unknown:
        valid = [c for c in frame.columns if c not in ("run_dir", "run_hash")]
        raise ValueError(f"unknown --by column(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    by, notes = list(by), []
    candidates = [c for c in BASELINE_KEYS + varying_columns(frame) if c in frame.columns and c not in by]
    added = []
    for column in candidates:
        if not _mixes_baselines(frame, by + added):
            break
        if any(_distinct(g[column]) > 1 for _, g in _groups(frame, by + added)):
            added.append(column)
    if added:
        notes.append(f"--by {','.join(by)} would pool runs with different baselines; grouping by "
                     f"{', '.join(added)} too")
    by += added
    pooled = [c for c in dict.fromkeys(DEFAULT_BY + varying_columns(frame)) if c in frame.columns and c not in by
              and any(_distinct(g[c]) > 1 for _, g in _groups(frame, by))]
    if pooled:
        notes.append(f"groups pool runs that differ in {', '.join(pooled)} (add to --by to split them)")
    return by, notes


def _groups(frame: pd.DataFrame, by: list[str]):
    keys = frame[by].map(group_key)
    return frame.groupby([keys[c] for c in by], sort=False, dropna=False)


def _mixes_baselines(frame: pd.DataFrame, by: list[str]) -> bool:
    """Whether a group of ``by`` holds runs whose baseline losses differ (beyond float rounding)."""
    for _, g in _groups(frame, by):
        values = _numbers(g["baseline_loss"])
        if values and max(values) - min(values) > 1e-9 * max(abs(v) for v in values):
            return True
    return False


def _sort_key(v):
    """Numbers in numeric order, then text, then missing: −2 < −1 < 0.5 < 1, and 1e-7 < 2e-7."""
    v = _clean(v)
    if v is None:
        return (2, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def compare(frame: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Group runs and aggregate over seeds. Raises ValueError for an unknown ``by`` column.

    By default the groups are DEFAULT_BY plus every other config column that
    varies between the runs, so each grid point is its own group (``group_columns``
    adds what an explicit ``by`` leaves out but the baselines need).
    """
    if frame.empty:
        raise ValueError("no runs to compare")
    by, _ = group_columns(frame, by)
    keys = frame[by].astype(object).where(frame[by].notna(), "null")  # group on None too (tbptt: null)
    keys = keys.map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
    grouped = frame.groupby([keys[c] for c in by], sort=False, dropna=False)
    table = grouped[frame.columns.tolist()].apply(_aggregate).reset_index()
    firsts = grouped[by].first().reset_index(drop=True)  # each group's values as the runs hold them
    table[by] = firsts[by].astype(object).where(firsts[by].notna(), None)
    order = sorted(range(len(table)), key=lambda i: tuple(_sort_key(table[c].iloc[i]) for c in by))
    table = table.iloc[order].reset_index(drop=True)
    table["data_horizon"] = _data_horizons(frame, table, by)
    # what each group uses beyond its grouping columns, for its diagnosis (never proposed again); metadata, not
    # a column: no output format shows it
    table.attrs[SETTINGS] = {"by": list(by), "groups": _settings(frame, by)}
    return table


# ``compare``'s table.attrs key: {"by": the grouping columns, "groups": {group key: {column: value}}}, the config
# columns that hold one value within each group (``settings``)
SETTINGS = "settings"
NOT_SETTINGS = {*SUMMARY_COLUMNS, "seed", "experiment", "device", "threads"}


def _settings(frame: pd.DataFrame, by: list[str]) -> dict[tuple, dict]:
    """{group key (``group_key`` of each ``by`` value): {config column: its one value}} for every config column
    that holds one non-null value within the group (``model.forget_bias: chrono`` in every run of it)."""
    columns = [c for c in frame.columns if c not in NOT_SETTINGS]
    out = {}
    for _, g in _groups(frame, by):
        key = tuple(group_key(g[c].iloc[0]) for c in by)
        out[key] = {c: _clean(g[c].iloc[0]) for c in columns
                    if _distinct(g[c]) == 1 and _clean(g[c].iloc[0]) is not None}
    return out


def settings(table: pd.DataFrame, rec: dict) -> dict:
    """The config values every run of ``rec``'s group shares (``compare``'s ``_settings``); {} for a table not made
    by ``compare`` (or one whose metadata was dropped): then only the record's own grouping columns count."""
    meta = table.attrs.get(SETTINGS) if table is not None else None
    if not meta:
        return {}
    return meta["groups"].get(tuple(group_key(rec.get(c)) for c in meta["by"]), {})


def _data_horizons(frame: pd.DataFrame, table: pd.DataFrame, by: list[str]) -> list:
    """Each group's data reach (``gradlab.reach.horizons``: the set of groups that differ from it only in
    ``task.window``), for its diagnosis; None for every group outside a window grid."""
    if "window" not in by:
        return [None] * len(table)
    from gradlab import reach  # it reads this module's frame and groups: imported where it is used

    try:
        records = reach.horizons(frame, by)
    except reach.NoWindowGrid:  # --by window over runs that all saw the whole sequence
        return [None] * len(table)
    found = {}
    for rec in records:
        key = tuple(json.dumps(rec.get(c), default=str) for c in by if c != "window")
        found[key] = rec["data_horizon"]
    return [found.get(tuple(json.dumps(_clean(table[c].iloc[i]), default=str) for c in by if c != "window"))
            for i in range(len(table))]


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalar -> python
        return _clean(v.item())
    return v


def group_key(v) -> str:
    """A grouping value as one text, the same for 1.0 and 1 (a column with gaps is float) and for NaN and None."""
    v = _clean(v)
    return json.dumps(int(v) if isinstance(v, float) and v.is_integer() else v, sort_keys=True, default=str)


def _strict(v):
    """JSON has no infinity: a non-finite figure (a diverged run's loss ratio) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def to_records(table: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN -> None, numpy scalars -> python, counts as ints."""
    out = []
    for row in table.to_dict(orient="records"):
        rec = {k: _clean(v) for k, v in row.items()}
        for k, v in rec.items():
            if k.removesuffix("_base").removesuffix("_candidate").removesuffix("_delta") in COUNTS \
                    and isinstance(v, float):
                rec[k] = int(v)
        for window in ("tbptt", "window"):  # a window k (a column with nulls is float); TBPTT(k1, k2) stays "k1/k2"
            if isinstance(rec.get(window), (int, float)) and not isinstance(rec.get(window), bool):
                rec[window] = int(rec[window])
        out.append(rec)
    return out


def diagnosed(records: list[dict], table: pd.DataFrame | None = None) -> list[dict]:
    """``to_records(table)``' rows, each with its ``diagnosis`` (``gradlab.diagnosis.diagnose`` of its figures).
    What a group already uses is never proposed again: its grouping columns, and with ``table`` (``compare``'s)
    every config value its runs share (``settings``: a ``model.forget_bias: chrono`` set in every run is no
    grouping column)."""
    return [{**rec, "diagnosis": diagnose(rec, data_horizon=rec.get("data_horizon"),
                                          exclude={**settings(table, rec), **rec}).as_record()}
            for rec in records]


def fmt(v) -> str:
    """A cell for a human-readable table: 4 significant digits, '–' for missing."""
    v = _clean(v)
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def cell_text(column: str, v) -> str:
    """``fmt`` with the column's meaning: a missing tbptt window is full BPTT, a missing task window the
    full sequence (both ``full``)."""
    if column in ("tbptt", "window") and _clean(v) is None:
        return FULL_WINDOW if column == "window" else FULL_BPTT
    return fmt(v)


def ratio_cell(rec: dict) -> str:
    """The median dependency ratio, ``<`` before an upper bound (``_dependency``): ``<2.3e-16``, not 0."""
    text = fmt(rec.get("dependency_ratio_median"))
    return f"<{text}" if rec.get("dependency_ratio_bound") and text != "–" else text


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    cell = lambda text: str(text).replace("|", "\\|")  # a | inside a cell would split it  # noqa: E731
    lines = ["| " + " | ".join(map(cell, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in to_records(table):
        lines.append("| " + " | ".join(cell(ratio_cell(rec) if c == "dependency_ratio_median" else cell_text(c, rec[c]))
                                       for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """The table as CSV from the JSON-ready rows: a window stays ``3`` (pandas would write ``3.0``
    for a column with nulls), a null is an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table.columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(to_records(table))
    return buf.getvalue()


def render(table: pd.DataFrame, fmt_name: str) -> str:
    """The table as text: ``json`` (a list of group objects, each with ``schema``), ``csv`` or ``markdown``."""
    if fmt_name == "json":
        return json.dumps([{"schema": SCHEMA, **{k: _strict(v) for k, v in r.items()}}
                           for r in diagnosed(to_records(table), table)],
                          indent=2, allow_nan=False) + "\n"
    if fmt_name == "csv":
        return to_csv(table)
    if fmt_name == "markdown":
        return to_markdown(table)
    raise ValueError(f"unknown format {fmt_name!r}")


# ---------------------------------------------------------------------------
# Diff of two result sets.

# Tolerances beyond which a candidate group counts as a regression (documented in the README).
TOLERANCES = {
    "solved_rate": 0.25,     # absolute drop in the fraction of seeds solved (one seed of 2-3 is 0.33-0.5)
    "final_loss": 0.5,       # relative rise of the mean final loss ...
    "final_loss_floor": 0.01,  # ... that is also larger than this fraction of the baseline loss
    "steps_to_solve": 0.5,   # relative rise of the median steps to solve
}
DIFF_METRICS = ["runs", "failed", "solved", "solved_rate", "final_loss_mean", "loss_ratio_iqm", "steps_to_solve_median",
                "diverged", "verdict", "verdicts"]
DIFF_STATS = ["p_loss", "p_better", "p_better_ci_low", "p_better_ci_high", "p_solved", "supported"]


def _num(v):
    v = _clean(v)
    return None if v is None else float(v)


def _regressions(base: dict, cand: dict, tol: dict) -> list[tuple[str, str]]:
    """Why a candidate group is worse than its baseline group: (figure, reason) each."""
    why = []
    if cand["solved_rate"] < base["solved_rate"] - tol["solved_rate"]:
        why.append(("solved", f"solved_rate {base['solved_rate']:.2f} -> {cand['solved_rate']:.2f}"))
    b, c, ref = _num(base["final_loss_mean"]), _num(cand["final_loss_mean"]), _num(base["baseline_loss"]) or 0.0
    if b is not None and (c is None or (c > b * (1 + tol["final_loss"]) and c - b > tol["final_loss_floor"] * ref)):
        why.append(("loss", f"final_loss_mean {fmt(b)} -> {fmt(c)}"))
    b, c = _num(base["steps_to_solve_median"]), _num(cand["steps_to_solve_median"])
    if b is not None and c is not None and c > b * (1 + tol["steps_to_solve"]):
        why.append(("steps", f"steps_to_solve_median {fmt(b)} -> {fmt(c)}"))
    # shares, not mere presence: a healthy base with one exploding seed in three is no worse than itself;
    # per flag, so a vanishing+exploding run counts for both
    shares = [_flag_shares(rec) for rec in (base, cand)]
    rise = {v: shares[1][v] - shares[0][v] for v in FLAGS}
    # from a healthy base any rise (also a tie: "1 exploding, 1 healthy" is no longer healthy); from any other
    # base a rise beyond the solved rate's allowance (0.25): one more flagged seed of 4 (3/4 -> 4/4) is left to the
    # seeds, one of 3 (1/3 -> 2/3) is not, as a drop of one solved seed of 3 is not for the solved rate
    bad = [v for v in FLAGS if rise[v] > (0 if base["verdict"] == HEALTHY else tol["solved_rate"])]
    if bad:
        was, now = (f"{r['verdict']} ({r.get('verdicts') or r['verdict']})" for r in (base, cand))
        why.append(("verdict", f"verdict {was} -> {now}"))
    for count, name in (("diverged", "diverged"), ("failed", "failed runs")):
        # rates, not counts: the sets may differ in seeds (1 of 2 diverged is worse than 2 of 10)
        b, c = base[count] or 0, cand[count] or 0
        if c * base["runs"] > b * cand["runs"]:
            why.append((count, f"{name} {b}/{base['runs']} -> {c}/{cand['runs']}"))
    return why


def _flag_shares(rec: dict) -> dict[str, float]:
    """{flag: the share of a group's finished runs that carry it} (``exploding_runs``, ``vanishing_runs``)."""
    finished = (rec.get("runs") or 0) - (rec.get("failed") or 0)
    return {flag: (rec.get(f"{flag}_runs") or 0) / finished if finished else 0.0 for flag in FLAGS}


def _values(frame: pd.DataFrame, column: str) -> set[str]:
    """A column's distinct values as JSON text (lists and dicts compare too; 1.0 is 1: a column with gaps is float)."""
    if column not in frame.columns:
        return {"null"}
    whole = lambda v: int(v) if isinstance(v, float) and v.is_integer() else v  # noqa: E731
    return {json.dumps(whole(_clean(v)), default=str) for v in frame[column]}


def diff_keys(base: pd.DataFrame, cand: pd.DataFrame, by: list[str] | None = None) -> tuple[list[str], dict]:
    """The columns two result sets line up on, and the change under test between them.

    The change is every config column that holds one value within each set but
    differs between the sets ({column: (base value, candidate value)}), e.g.
    ``clip: ("norm(1.0)", "none")``. Without ``by`` the groups are DEFAULT_BY and
    each set's own grid axes, less the changed columns, so a base with clipping
    lines up with a candidate without it; an explicit ``by`` is kept as given.
    """
    ignore = set(SUMMARY_COLUMNS) | {"seed", "experiment"}
    changes = {}
    for c in dict.fromkeys([*base.columns, *cand.columns]):
        vb, vc = _values(base, c), _values(cand, c)
        if c not in ignore and len(vb) == len(vc) == 1 and vb != vc:
            changes[c] = (json.loads(vb.pop()), json.loads(vc.pop()))
    if by:
        return by, changes
    columns = list(dict.fromkeys(DEFAULT_BY + varying_columns(base) + varying_columns(cand)))
    kept = [c for c in columns if c not in changes]
    return kept or columns, changes  # nothing in common: keep every column, each group stands alone


def _group_ratios(frame: pd.DataFrame | None, by: list[str]) -> dict[tuple, list[float]]:
    """{group key as the diff writes it: the group's loss ratios}, from a frame of runs."""
    if frame is None or frame.empty:
        return {}
    out = {}
    for _, g in _groups(frame, by):
        ok = g[g["status"] == "ok"]
        out[tuple(group_key(g[c].iloc[0]) for c in by)] = _numbers(ok["loss_ratio"])
    return out


def _statistics(base: dict, cand: dict, xs: list[float], ys: list[float]) -> dict:
    """The tests of one changed group: Mann–Whitney U on the loss ratios, the probability of
    improvement with its interval, Fisher's exact test on the solved counts."""
    low, high = statistics.prob_improvement_interval(ys, xs)
    return {"p_loss": statistics.mann_whitney(ys, xs), "p_exact": statistics.exact_applies(ys, xs),
            "p_better": statistics.prob_improvement(ys, xs),
            "p_better_ci_low": low, "p_better_ci_high": high,
            "p_solved": statistics.fisher(base["solved"], base["runs"], cand["solved"], cand["runs"])}


def _supported(why: list[tuple[str, str]], stats: dict, n: int, m: int) -> tuple[bool | None, list[str]]:
    """Whether the group's regressions hold statistically, and each reason with its test."""
    reasons, verdicts = [], []
    for figure, text in why:
        p = stats["p_solved"] if figure == "solved" else stats["p_loss"] if figure == "loss" else None
        if p is None:
            reasons.append(text)
            continue
        test = "Fisher" if figure == "solved" else "Mann–Whitney"
        ok = p < statistics.ALPHA
        verdicts.append(ok)
        floor = statistics.smallest_p(n, m) if figure == "loss" and stats.get("p_exact") else None
        note = f"supported ({test} p={p:.2g})" if ok else f"not supported at {n} vs {m} runs ({test} p={p:.2g}" + (
            f", cannot go below {floor:.2g})" if floor is not None and floor >= statistics.ALPHA else ")")
        reasons.append(f"{text}, {note}")
    return (any(verdicts) if verdicts else None), reasons


def diff(base: pd.DataFrame, cand: pd.DataFrame, by: list[str], tolerances: dict | None = None,
         base_runs: pd.DataFrame | None = None, cand_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Line up two comparison tables on ``by`` and mark regressions of the candidate.

    One row per group in either table: the grouping columns, ``<metric>_base``,
    ``<metric>_candidate`` and ``<metric>_delta`` for the numbers, ``status``
    (``ok``, ``regression``, ``missing`` from the candidate, ``new`` in it) and
    ``reasons``. With the runs behind the tables (``base_runs``, ``cand_runs``), each
    group on both sides also gets its tests (DIFF_STATS): ``p_loss`` (two-sided
    Mann–Whitney U on the loss ratios), ``p_better`` (P(a candidate run's ratio is
    below a base run's)) with its interval, ``p_solved`` (Fisher's exact test), and
    ``supported``: whether a regression holds at p < 0.05.
    """
    tol = {**TOLERANCES, **(tolerances or {})}
    key = lambda rec: tuple(group_key(rec[c]) for c in by)  # noqa: E731
    base_rows = {key(r): r for r in to_records(base)}
    cand_rows = {key(r): r for r in to_records(cand)}
    base_ratios, cand_ratios = _group_ratios(base_runs, by), _group_ratios(cand_runs, by)
    rows = []
    for k in list(base_rows) + [k for k in cand_rows if k not in base_rows]:
        b, c = base_rows.get(k), cand_rows.get(k)
        row = {col: (b or c)[col] for col in by}
        for m in DIFF_METRICS:
            row[f"{m}_base"] = b.get(m) if b else None
            row[f"{m}_candidate"] = c.get(m) if c else None
            if m not in TEXT_METRICS:
                vb, vc = (_num(b.get(m)) if b else None), (_num(c.get(m)) if c else None)
                row[f"{m}_delta"] = vc - vb if vb is not None and vc is not None else None
        row.update(dict.fromkeys(DIFF_STATS))
        if b is None:
            row["status"], reasons = "new", []
        elif c is None:
            row["status"], reasons = "missing", ["group missing from the candidate"]
        else:
            why = _regressions(b, c, tol)
            if k in base_ratios and k in cand_ratios:
                tests = _statistics(b, c, base_ratios[k], cand_ratios[k])
                row.update({s: tests[s] for s in DIFF_STATS if s in tests})
                row["supported"], reasons = _supported(why, tests, len(base_ratios[k]), len(cand_ratios[k]))
            else:
                reasons = [text for _, text in why]
            row["status"] = "regression" if why else "ok"
        row["reasons"] = "; ".join(reasons)
        rows.append(row)
    return pd.DataFrame(rows)
