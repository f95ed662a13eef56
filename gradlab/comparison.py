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

from gradlab import results

DEFAULT_BY = ["task", "length", "cell", "clip", "tbptt"]
# The version of every JSON document compare prints: the --check/diff object's "schema" and each
# object of the plain list. New keys keep it; a key that changes meaning or disappears bumps it.
SCHEMA = "gradlab.compare/1"
COUNTS = ("runs", "failed", "diverged")  # integers, also as <count>_base, _candidate, _delta of a diff
# Metric columns of the comparison table, in order; ``runs`` counts every run of the group.
METRICS = ["runs", "failed", "solved_rate", "final_loss_mean", "final_loss_std", "baseline_loss",
           "steps_to_solve_median", "diverged", "verdict", "verdicts", "horizon_init_median", "horizon_median",
           "grad_norm_max", "suggested_clip"]


def config_columns(cfg: dict) -> dict:
    """A resolved run config as flat grouping columns: task, length, cell, clip (a label), tbptt, lr, ..."""
    row = {"experiment": cfg.get("name"), "task": cfg["task"]["name"], "length": cfg["task"]["length"]}
    row.update({k: v for k, v in cfg["task"].items() if k not in ("name", "length")})
    row.update(cfg["model"])
    row.update({k: v for k, v in cfg["train"].items()})
    row["clip"] = results.clip_label(cfg["train"]["clip"])
    row["tbptt"] = results.tbptt_label(cfg["train"].get("tbptt"))  # null, the window k, or "k1/k2"
    row.update({k: cfg[k] for k in ("seed", "device", "dtype", "threads") if k in cfg})
    return row


def flatten(record: dict) -> dict:
    """One run record -> one flat row: config columns first, then summary columns."""
    summary = record["summary"]
    row = config_columns(record["config"])
    row.update({"status": summary.get("status"), "final_loss": summary.get("final_loss"),
                "solved": bool(summary.get("solved", False)), "steps_to_solve": summary.get("steps_to_solve"),
                "diverged": bool(summary.get("diverged", False)), "baseline_loss": summary.get("baseline_loss"),
                "verdict": summary.get("verdict"), "horizon_init": summary.get("horizon_init"),
                "horizon": summary.get("horizon"),
                "grad_norm_max": summary.get("grad_norm_max"), "suggested_clip": summary.get("suggested_clip"),
                "wall_seconds": summary.get("wall_seconds"), "run_dir": record["dir"]})
    return row


SUMMARY_COLUMNS = ["status", "final_loss", "solved", "steps_to_solve", "diverged", "baseline_loss", "verdict",
                   "horizon_init", "horizon", "grad_norm_max", "suggested_clip", "wall_seconds", "run_dir"]


def load_frame(roots: list[Path]) -> pd.DataFrame:
    """Every finished run under the given directories, one row each."""
    rows, seen = [], set()
    for root in roots:
        for d in results.find_runs(root):
            record = results.load_run(d)
            # the run id's hash is the resolved config's identity; its readable part can differ for
            # one run (grid key order), so a run copied into two shards or stored twice counts once
            key = (record["config"].get("name"), results.run_hash(record["id"]))
            if key in seen:
                continue
            seen.add(key)
            rows.append(flatten(record))
    return pd.DataFrame(rows)


def _aggregate(g: pd.DataFrame) -> pd.Series:
    ok = g[g["status"] == "ok"]
    loss = pd.to_numeric(ok["final_loss"], errors="coerce")
    solved_steps = pd.to_numeric(ok.loc[ok["solved"], "steps_to_solve"], errors="coerce").dropna()
    return pd.Series({
        "runs": len(g),
        "failed": int((g["status"] != "ok").sum()),
        "solved_rate": float(ok["solved"].sum()) / len(g),
        "final_loss_mean": loss.mean() if len(loss) else None,
        "final_loss_std": loss.std(ddof=1) if len(loss) > 1 else None,
        "baseline_loss": pd.to_numeric(g["baseline_loss"], errors="coerce").dropna().iloc[0]
        if g["baseline_loss"].notna().any() else None,
        "steps_to_solve_median": solved_steps.median() if len(solved_steps) else None,
        "diverged": int(ok["diverged"].sum()),
        **_verdicts(ok),
        # .get: frames from before the column existed (or built by hand) lack it
        "horizon_init_median": _median(ok.get("horizon_init", pd.Series(dtype=float))),
        "horizon_median": _median(ok["horizon"]),
        "grad_norm_max": pd.to_numeric(ok["grad_norm_max"], errors="coerce").max() if len(ok) else None,
        "suggested_clip": _median(ok["suggested_clip"]),
    })


def _median(column: pd.Series):
    values = pd.to_numeric(column, errors="coerce").dropna()
    return values.median() if len(values) else None


def _verdicts(ok: pd.DataFrame) -> dict:
    """The most common verdict (ties: the worse one) and the mix, e.g. ``2 vanishing, 1 healthy``."""
    counts = ok["verdict"].dropna().value_counts()
    if counts.empty:
        return {"verdict": None, "verdicts": None}
    severity = {"exploding": 0, "vanishing": 1, "healthy": 2}
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], severity.get(kv[0], 3)))
    return {"verdict": ranked[0][0], "verdicts": ", ".join(f"{n} {v}" for v, n in ranked)}


def varying_columns(frame: pd.DataFrame) -> list[str]:
    """Config columns (beyond DEFAULT_BY) whose value differs between runs: the grid's other axes."""
    ignore = set(DEFAULT_BY) | set(SUMMARY_COLUMNS) | {"seed", "device", "threads", "experiment"}
    return [c for c in frame.columns if c not in ignore
            and frame[c].map(lambda v: json.dumps(v, sort_keys=True, default=str)).nunique() > 1]


def compare(frame: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Group runs and aggregate over seeds. Raises ValueError for an unknown ``by`` column.

    By default the groups are DEFAULT_BY plus every other config column that
    varies between the runs, so each grid point is its own group.
    """
    by = list(by or DEFAULT_BY + varying_columns(frame))
    unknown = [c for c in by if c not in frame.columns]
    if unknown:
        valid = [c for c in frame.columns if c not in ("run_dir",)]
        raise ValueError(f"unknown --by column(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    keys = frame[by].astype(object).where(frame[by].notna(), "null")  # group on None too (tbptt: null)
    grouped = frame.groupby([keys[c] for c in by], sort=False, dropna=False)
    table = grouped[frame.columns.tolist()].apply(_aggregate).reset_index()
    table[by] = table[by].astype(object).where(table[by] != "null", None)
    table = table.sort_values(by, key=lambda s: s.map(lambda v: (v is None, str(v) if not
                                                                isinstance(v, (int, float)) else f"{v:020.6f}")))
    return table.reset_index(drop=True)


def _clean(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalar -> python
        return _clean(v.item())
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return v
    return v


def to_records(table: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN -> None, numpy scalars -> python, counts as ints."""
    out = []
    for row in table.to_dict(orient="records"):
        rec = {k: _clean(v) for k, v in row.items()}
        for k, v in rec.items():
            if k.removesuffix("_base").removesuffix("_candidate").removesuffix("_delta") in COUNTS \
                    and isinstance(v, float):
                rec[k] = int(v)
        if isinstance(rec.get("tbptt"), (int, float)):  # a window k; TBPTT(k1, k2) stays "k1/k2"
            rec["tbptt"] = int(rec["tbptt"])
        out.append(rec)
    return out


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
    """``fmt`` with the column's meaning: a missing tbptt window is full BPTT."""
    return "full" if column == "tbptt" and _clean(v) is None else fmt(v)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    cell = lambda text: str(text).replace("|", "\\|")  # a | inside a cell would split it  # noqa: E731
    lines = ["| " + " | ".join(map(cell, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in to_records(table):
        lines.append("| " + " | ".join(cell(cell_text(c, rec[c])) for c in cols) + " |")
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
        return json.dumps([{"schema": SCHEMA, **r} for r in to_records(table)], indent=2) + "\n"
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
DIFF_METRICS = ["runs", "failed", "solved_rate", "final_loss_mean", "steps_to_solve_median", "diverged", "verdict"]


def _num(v):
    v = _clean(v)
    return None if v is None else float(v)


def _regressions(base: dict, cand: dict, tol: dict) -> list[str]:
    """Why a candidate group is worse than its baseline group, one reason each."""
    why = []
    if cand["solved_rate"] < base["solved_rate"] - tol["solved_rate"]:
        why.append(f"solved_rate {base['solved_rate']:.2f} -> {cand['solved_rate']:.2f}")
    b, c, ref = _num(base["final_loss_mean"]), _num(cand["final_loss_mean"]), _num(base["baseline_loss"]) or 0.0
    if b is not None and (c is None or (c > b * (1 + tol["final_loss"]) and c - b > tol["final_loss_floor"] * ref)):
        why.append(f"final_loss_mean {fmt(b)} -> {fmt(c)}")
    b, c = _num(base["steps_to_solve_median"]), _num(cand["steps_to_solve_median"])
    if b is not None and c is not None and c > b * (1 + tol["steps_to_solve"]):
        why.append(f"steps_to_solve_median {fmt(b)} -> {fmt(c)}")
    if base["verdict"] == "healthy" and cand["verdict"] in ("vanishing", "exploding"):
        why.append(f"verdict healthy -> {cand['verdict']}")
    for count, name in (("diverged", "diverged"), ("failed", "failed runs")):
        # rates, not counts: the sets may differ in seeds (1 of 2 diverged is worse than 2 of 10)
        b, c = base[count] or 0, cand[count] or 0
        if c * base["runs"] > b * cand["runs"]:
            why.append(f"{name} {b}/{base['runs']} -> {c}/{cand['runs']}")
    return why


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


def diff(base: pd.DataFrame, cand: pd.DataFrame, by: list[str], tolerances: dict | None = None) -> pd.DataFrame:
    """Line up two comparison tables on ``by`` and mark regressions of the candidate.

    One row per group in either table: the grouping columns, ``<metric>_base``,
    ``<metric>_candidate`` and ``<metric>_delta`` for the numbers, ``status``
    (``ok``, ``regression``, ``missing`` from the candidate, ``new`` in it) and
    ``reasons``.
    """
    tol = {**TOLERANCES, **(tolerances or {})}
    key = lambda rec: tuple(json.dumps(rec[c], default=str) for c in by)  # noqa: E731
    base_rows = {key(r): r for r in to_records(base)}
    cand_rows = {key(r): r for r in to_records(cand)}
    rows = []
    for k in list(base_rows) + [k for k in cand_rows if k not in base_rows]:
        b, c = base_rows.get(k), cand_rows.get(k)
        row = {col: (b or c)[col] for col in by}
        for m in DIFF_METRICS:
            row[f"{m}_base"] = b[m] if b else None
            row[f"{m}_candidate"] = c[m] if c else None
            if m != "verdict":
                vb, vc = (_num(b[m]) if b else None), (_num(c[m]) if c else None)
                row[f"{m}_delta"] = vc - vb if vb is not None and vc is not None else None
        if b is None:
            row["status"], reasons = "new", []
        elif c is None:
            row["status"], reasons = "missing", ["group missing from the candidate"]
        else:
            reasons = _regressions(b, c, tol)
            row["status"] = "regression" if reasons else "ok"
        row["reasons"] = "; ".join(reasons)
        rows.append(row)
    return pd.DataFrame(rows)
