"""What a person reads of a comparison: the columns, their labels, each cell's text and the legend.

The terminal (``gradlab compare``, ``gradlab run``), the HTML report and the
results book all show these views of ``comparison.compare``'s table, so their
labels are the same everywhere; Markdown, CSV and JSON outputs keep every
column under its own name (the README maps labels to names). The compact
view fits 100 columns: the grouping columns that vary, then

========================  =======================================================
label                     columns
========================  =======================================================
failed, diverged          failed, diverged: shown when any is not 0
solved                    solved / runs, solved_ci_low–solved_ci_high (Wilson 95%)
loss ÷ baseline           loss_ratio_iqm with loss_ratio_min–loss_ratio_max, or
                          [loss_ratio_ci_low, loss_ratio_ci_high] from 5 runs on
horizon                   horizon_init_median→horizon_median
dep. ratio (wide)         dependency_ratio_median, ``<`` before an upper bound
                          (dependency_ratio_bound: a run recorded at float32's floor)
clipped                   clip_rate_mean
verdicts                  verdicts (2V = 2 vanishing, 1VE = 1 vanishing+exploding;
                          in words where ``letters`` is off: the HTML report)
flags (wide)              exploding_runs, vanishing_runs: ``2E 1V``, each flag
                          counted on its own over the finished runs
========================  =======================================================

Under the table, each group's diagnosis (``diagnosis_lines``, ``gradlab.diagnosis``): the case its
figures support, citing them, and what to try next; ``--wide`` adds the evidence line by line.

No number is ever cut: cells are whole tokens that rich may move to a new line
but never shortens. Torch-free.
"""

from __future__ import annotations

from gradlab import statistics
from gradlab.comparison import cell_text, diagnosed, fmt, ratio_cell, to_records
from gradlab.diagnosis import REMEDIES_SHOWN, remedy_text
from gradlab.vocabulary import BOTH, EXPLODING, HEALTHY, METRICS, NOT_EXPLODING, VANISHING, VERDICTS

LETTERS = {BOTH: "VE", EXPLODING: "E", VANISHING: "V", HEALTHY: "H", NOT_EXPLODING: "N"}
assert set(LETTERS) == set(VERDICTS)  # every label has its letters
# NOT_EXPLODING only where a table shows it: a run with a profile always has its vanishing flag
LETTERS_LEGEND = "verdicts: " + ", ".join(f"{letter} {v}" for v, letter in LETTERS.items() if v != NOT_EXPLODING)
LABELS = {"runs": "runs", "failed": "failed", "diverged": "diverged", "solved": "solved",
          "loss_ratio": "loss ÷ baseline", "horizon": "horizon",
          "dependency_ratio": "dep. ratio", "clip_rate": "clipped", "verdicts": "verdicts",
          "flags": "flags",
          "final_loss_mean": "eval loss", "final_loss_std": "± std", "baseline_loss": "baseline",
          "steps_to_solve_median": "steps to solve", "suggested_clip": "clip≈", "grad_norm_max": "max ‖g‖"}


def num(v, digits: int = 3) -> str:
    """3 significant digits: enough to tell 0.698 from 0.693, short enough for 80 columns."""
    if v is None:
        return "–"
    v = float(v)
    if v != v:
        return "–"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def percent(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def solved_text(r: dict) -> str:
    """``1/2 (9–91%)``: solved runs of all runs, and the Wilson 95% interval of the rate."""
    if r["solved_ci_low"] is None:
        return f"{r['solved']}/{r['runs']}"
    return f"{r['solved']}/{r['runs']} ({percent(r['solved_ci_low'])[:-1]}–{percent(r['solved_ci_high'])})"


def ratio_text(r: dict) -> str:
    """``0.497 (0.0007–0.99)``: the IQM over seeds with the min–max below 5 runs, or
    ``0.42 [0.31, 0.55]`` with its 95% bootstrap interval from 5 runs on."""
    if r["loss_ratio_iqm"] is None:
        return "–"
    text = num(r["loss_ratio_iqm"])
    if r["loss_ratio_ci_low"] is not None:
        return f"{text} [{num(r['loss_ratio_ci_low'])}, {num(r['loss_ratio_ci_high'])}]"
    if r["loss_ratio_min"] != r["loss_ratio_max"]:
        return f"{text} ({num(r['loss_ratio_min'])}–{num(r['loss_ratio_max'])})"
    return text


def horizon_text(r: dict) -> str:
    """``7.5→3.5``: the median horizon at the first evaluation and at the end."""
    if r.get("horizon_init_median") is None:
        return fmt(r["horizon_median"])
    return f"{fmt(r['horizon_init_median'])}→{fmt(r['horizon_median'])}"


def clip_text(r: dict) -> str:
    """The share of training steps whose update the clipping rule changed: ``never`` says a remedy did not act."""
    rate = r.get("clip_rate_mean")
    if r.get("clip") == "none" or rate is None:
        return "–"
    if rate == 0:
        return "never"
    return "<1%" if rate < 0.005 else percent(rate)


def verdicts_text(r: dict, letters: bool = True) -> str:
    """The whole verdict mix: ``1E 1H`` (compact) or ``1 exploding, 1 healthy``; a tie stays a tie."""
    if not r["verdicts"]:
        return "–"
    if not letters:
        return r["verdicts"]
    parts = [p.split(" ", 1) for p in r["verdicts"].split(", ")]
    return " ".join(f"{n}{LETTERS.get(v, v)}" for n, v in parts)


def flags_text(r: dict) -> str:
    """How many runs carry each flag: ``2E 1V`` (2 exploding, 1 vanishing; a run may carry both), ``–`` for none."""
    counts = [(r.get(f"{flag}_runs"), LETTERS[flag]) for flag in (EXPLODING, VANISHING)]
    return " ".join(f"{n}{letter}" for n, letter in counts if n) or "–"


COMPACT = {"solved": solved_text, "loss_ratio": ratio_text, "horizon": horizon_text, "clip_rate": clip_text,
           "verdicts": verdicts_text}
WIDE = {"solved": solved_text, "final_loss_mean": lambda r: fmt(r["final_loss_mean"]),
        "final_loss_std": lambda r: fmt(r["final_loss_std"]), "baseline_loss": lambda r: fmt(r["baseline_loss"]),
        "loss_ratio": ratio_text, "steps_to_solve_median": lambda r: fmt(r["steps_to_solve_median"]),
        "horizon": horizon_text, "dependency_ratio": ratio_cell, "clip_rate": clip_text,
        "suggested_clip": lambda r: fmt(r["suggested_clip"]),
        "grad_norm_max": lambda r: fmt(r["grad_norm_max"]),
        "flags": flags_text,
        "verdicts": verdicts_text}  # letters here too: the flags' columns beside them leave no room for words


# Said under every table with a group whose dependency ratio is a bound (readers.float32_floor).
FLOOR_LEGEND = ("some runs' profiles fall to a 0 that float32 arithmetic made of a tiny gradient (below 1.1e-19 "
                "in runs of an older gradlab, 1.2e-38 in float32 runs): their group's dependency ratio "
                "(--wide: dep. ratio <x) is an upper bound")


def legend(records: list[dict], wide: bool = False, letters: bool = True) -> str:
    """What the figures mean, for the table's caption: which interval each column shows."""
    shown = [r["loss_ratio_ci_low"] is not None for r in records if r["loss_ratio_iqm"] is not None]
    small = statistics.MIN_RUNS_FOR_INTERVAL
    if shown and all(shown):
        spread = "[95% bootstrap interval]"
    elif not any(shown):
        spread = f"(min–max of the runs; no interval below {small} runs)"
    else:
        spread = (f"[95% bootstrap interval] from {small} runs, else (min–max of the runs; also when a run "
                  "diverged)")
    parts = ["solved: k/n (Wilson 95% interval)",
             f"loss ÷ baseline: final eval loss over the task's memoryless baseline (1 = no better than "
             f"guessing), interquartile mean over runs {spread}",
             "horizon: steps back the gradient reaches, median, first evaluation→end",
             "clipped: share of training steps whose update the clip changed"]
    if wide:
        parts.append("flags: how many finished runs carry each flag, 2E 1V = 2 exploding and 1 vanishing (a run "
                     "may carry both)")
    if letters:
        unmeasured = any(NOT_EXPLODING in (r.get("verdicts") or "") for r in records)
        parts.append(LETTERS_LEGEND + (f", {LETTERS[NOT_EXPLODING]} {NOT_EXPLODING}" if unmeasured else ""))
    if any(r.get("dependency_ratio_bound") for r in records):
        parts.append(FLOOR_LEGEND)
    return " · ".join(parts)


def view(table, wide: bool = False, letters: bool = True) -> tuple[list[str], list[str], list[list[str]], list[str],
                                                                   str]:
    """The human view of a comparison table: (group columns shown, constant "key=value" for the
    title, rows of cell texts, metric labels, legend). Group columns that hold one value are
    moved to the title; at least one stays to name the rows. ``letters``: verdicts as ``2V``
    (compact), else in words."""
    records = to_records(table)
    shown, constant = _split(table, records)
    heading = [f"{c}={cell_text(c, records[0][c])}" for c in constant] if records else []
    metrics = dict(WIDE if wide else COMPACT)
    if not letters:
        metrics["verdicts"] = lambda r: verdicts_text(r, letters=False)
    # compact: "solved k/n" already counts the runs
    counted = (["runs"] if wide else []) + [c for c in ("failed", "diverged") if any(r[c] for r in records)]
    labels = [LABELS[c] for c in counted] + [LABELS[m] for m in metrics]
    rows = [[cell_text(c, r[c]) for c in shown] + [str(r[c]) for c in counted] + [f(r) for f in metrics.values()]
            for r in records]
    return shown, heading, rows, labels, legend(records, wide, letters)


def _split(table, records: list[dict]) -> tuple[list[str], list[str]]:
    """(the group columns that vary, which name the rows; those holding one value, for the title):
    at least one column names the rows."""
    groups = [c for c in table.columns if c not in METRICS]
    constant = [c for c in groups if len({cell_text(c, r[c]) for r in records}) == 1]
    if len(constant) == len(groups):
        constant = constant[:-1]
    return [c for c in groups if c not in constant], constant


def diagnoses(table) -> list[tuple[str, dict]]:
    """Each group's name as the rows show it (``cell=vanilla``, the varying group columns) and its
    diagnosis (``comparison.diagnosed``: cases, text, details, remedies)."""
    records = to_records(table)
    shown, _ = _split(table, records)
    return [(", ".join(f"{c}={cell_text(c, r[c])}" for c in shown), r["diagnosis"])
            for r in diagnosed(records, table)]


def diagnosis_lines(table, wide: bool = False) -> list[tuple[str, str]]:
    """The diagnosis under a terminal table, as (text, kind) lines (kind: ``case``, ``try``, ``detail``): per
    group ``cell=vanilla: <text>`` (the terminal wraps it at spaces, never cuts it), then ``try: <remedies>``
    (the first REMEDIES_SHOWN, ``+N more``; all with ``wide``), then with ``wide`` the evidence."""
    lines = []
    for name, d in diagnoses(table):
        lines.append((f"{name}: {d['text']}" if name else d["text"], "case"))
        if d["remedies"]:
            lines.append((f"  try: {remedy_text(d['remedies'], None if wide else REMEDIES_SHOWN)}", "try"))
        if wide:
            lines += [(f"  · {detail}", "detail") for detail in d["details"]]
    return lines


def diagnosis_markdown(table, quote=str) -> str:
    """The diagnoses as a Markdown list: ``- **cell=vanilla**: <text>. Try: `model.cell: lstm`, ...``; ``quote``
    wraps each setting (``reports.code``)."""
    items = []
    for name, d in diagnoses(table):
        item = f"- **{name}**: {d['text']}" if name else f"- {d['text']}"
        if d["remedies"]:
            item += ". Try: " + ", ".join(quote(s) for s in d["remedies"])
        items.append(item)
    return "**Diagnosis**\n\n" + "\n".join(items) + "\n" if items else ""


def diff_view(table, columns: list[str]) -> tuple[list[str], list[str], list[list[str]]]:
    """A diff (``comparison.diff``) as (constant "key=value" for the title, labels, rows): base→candidate
    per figure, with the probability that a candidate run beats a base run and the test's p-value.
    Grouping columns that hold one value go to the title; ``diverged`` only when any run diverged. The
    reasons of a regression are not a column: the CLI prints them below, one line per group."""
    records = to_records(table)
    constant = [c for c in columns if len({cell_text(c, r[c]) for r in records}) == 1][:len(columns) - 1]
    shown = [c for c in columns if c not in constant]
    heading = [f"{c}={cell_text(c, records[0][c])}" for c in constant] if records else []
    diverged = any(r["diverged_base"] or r["diverged_candidate"] for r in records)
    labels = [*shown, "status", "solved", "loss ÷ baseline", "P(better)", "p"] + (["diverged"] if diverged else []) \
        + ["verdicts"]
    rows = []
    for r in records:
        better = num(r["p_better"])
        if r["p_better_ci_low"] is not None:
            better += f" [{num(r['p_better_ci_low'])}, {num(r['p_better_ci_high'])}]"
        row = [*(cell_text(c, r[c]) for c in shown), r["status"],
               f"{_count(r, 'solved', 'base')}→{_count(r, 'solved', 'candidate')}",
               f"{num(r['loss_ratio_iqm_base'])}→{num(r['loss_ratio_iqm_candidate'])}", better, num(r["p_loss"])]
        if diverged:
            row.append(f"{_count(r, 'diverged', 'base')}→{_count(r, 'diverged', 'candidate')}")
        row.append(f"{_letters(r['verdicts_base'])}→{_letters(r['verdicts_candidate'])}")
        rows.append(row)
    return heading, labels, rows


def _count(r: dict, column: str, side: str) -> str:
    return "–" if r[f"runs_{side}"] is None else f"{r[f'{column}_{side}']}/{r[f'runs_{side}']}"


def _letters(verdicts) -> str:
    return verdicts_text({"verdicts": verdicts}).replace(" ", "")  # 2E1H: one token beside its arrow


def diff_legend() -> str:
    return ("P(better): probability that a candidate run's loss ÷ baseline is below a base run's "
            "[95% bootstrap interval from 5 runs a side] · p: two-sided Mann–Whitney U test of the loss "
            "ratios; a regression is 'supported' when p < 0.05 (at 2 against 2 runs p cannot go below 0.33) · "
            + LETTERS_LEGEND)
