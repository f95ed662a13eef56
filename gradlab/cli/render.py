"""What the command line shows: the consoles, the rich tables (comparisons, diffs, ``bench``,
``ls``), the PASS/FAIL lines of expectations, the sweep's progress bars, and a comparison
or diff in the chosen ``--format`` on stdout or in an ``--output`` file.

It decides nothing about exit codes or errors (``gradlab/cli/__init__.py`` and
``errors.py`` do); with them, the only modules that import rich.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# Markup, emoji codes and highlighting off: paths, config values and run ids print as written
# ("x.yaml:100:" stays that, not "x.yaml💯"; "[red]" stays literal); styles come as Text.
PLAIN = {"markup": False, "emoji": False, "highlight": False}
# Piped output has no terminal width; give tables room instead of rich's 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 160, **PLAIN)
err_console = Console(stderr=True, **PLAIN)


def rich_table(table, title: str | None = None, wide: bool = False, width: int | None = None) -> Group:
    """The comparison as a terminal table (``tables.view``), compact by default, every figure with
    ``wide``: grouping columns that never vary go into the title, each group's diagnosis under it
    (``tables.diagnosis_lines``; ``wide``: every remedy and the evidence), the legend below. ``width``: the
    console's (default: stdout's), so a table too wide for it breaks its ranges after the dash."""
    from gradlab.tables import diagnosis_lines, view

    shown, heading, rows, labels, legend = view(table, wide)
    caption = " · ".join(x for x in (title, ", ".join(heading)) if x)
    t = _table(caption, shown + labels, rows, left=len(shown), text_labels=("verdicts",), width=width)
    if len(shown) > 1 and _needed_width(t, width or out_console.width) > (width or out_console.width):
        # still too wide: the grouping values share one column, which wraps between them
        merged = [[" ".join(row[:len(shown)]), *row[len(shown):]] for row in rows]
        t = _table(f"{caption} · group: {', '.join(shown)}", ["group", *labels], merged, left=1,
                   text_labels=("verdicts",), width=width)
    # Text wraps at spaces, never cuts a word: a figure or a setting stays whole at any width
    styles = {"case": "", "try": "cyan", "detail": "dim"}
    diagnosis = [Text(line, style=styles[kind]) for line, kind in diagnosis_lines(table, wide)]
    return Group(t, *diagnosis, Text(legend, style="dim"))


BREAKS = ("–", "→")  # where a range or a base→candidate pair may go onto a second line


def _table(title: str, labels: list[str], rows: list[list], left: int, text_labels=(), width=None) -> Table:
    """A borderless table whose cells are never cut: a column may wrap at spaces, but never below its
    longest word, so every number stays whole at any width. When even that is too wide for the console,
    ranges (``0.00044–0.00074``) and pairs (``3/3→2/2``) may break after their dash or arrow."""
    t = _build(title, labels, rows, left, text_labels)
    width = width or out_console.width
    if _needed_width(t, width) > width:
        def breakable(cell):
            if isinstance(cell, Text):
                return cell
            for mark in BREAKS:
                cell = cell.replace(mark, mark + " ")
            return cell
        t = _build(title, labels, [[breakable(c) for c in row] for row in rows], left, text_labels)
    return t


def _needed_width(t: Table, width: int) -> int:
    """The width the table takes at ``width``: rich crops a table whose columns' minimum widths (plus
    padding and rules) do not fit, so this is what tells whether every number will show whole."""
    extra = t._extra_width  # rich's rules and edges; rich has no public measure of the laid-out width
    return sum(t._calculate_column_widths(out_console, out_console.options.update_width(width - extra))) + extra


def _build(title: str, labels: list[str], rows: list[list], left: int, text_labels) -> Table:
    t = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, label in enumerate(labels):
        whole = max([len(label.split()[0])] + [len(tok) for row in rows for tok in str(row[i]).split()])
        t.add_column(label, justify="left" if i < left or label in text_labels else "right", min_width=whole)
    for row in rows:
        t.add_row(*row)
    return t


def emit(table, fmt_name: str, output: Path | None, title: str | None = None,
         checks: list[dict] | None = None, wide: bool = False, selections: list | None = None) -> None:
    """Print the comparison (or write it to ``output``; not for ``table``) in the chosen format.

    With ``checks`` (evaluated expectations), markdown and json are the one document
    that carries them (PASS/FAIL, for $GITHUB_STEP_SUMMARY); table and csv keep
    stdout to the table and list them on stderr. ``run --check`` and ``compare
    --check`` both print this. ``selections`` (``tuning.selections``): each tuned
    experiment's choice per arm, a table after the comparison (table, markdown) or
    notes on stderr (csv, json: their stdout stays one table).
    """
    from gradlab.comparison import render
    from gradlab.reports import json_document, markdown_report

    if fmt_name == "table":
        out_console.print(rich_table(table, title, wide))
        for folder, doc in selections or []:
            out_console.print(selection_table(folder, doc))
    else:
        if checks is None or fmt_name == "csv":
            text = render(table, fmt_name)
            if fmt_name == "markdown":  # with checks, markdown_report says the diagnosis
                from gradlab.reports import code
                from gradlab.tables import diagnosis_markdown

                text += "\n" + diagnosis_markdown(table, quote=code)
        elif fmt_name == "json":
            text = json.dumps(json_document(table, checks), indent=2) + "\n"
        else:
            text = markdown_report(table, checks)
        if fmt_name == "markdown" and selections:
            from gradlab.tuning import markdown

            text += "".join(f"\n#### Selection: {folder.name}\n\n{markdown(doc)}" for folder, doc in selections)
        write_or_print(text, output)
        if fmt_name in ("csv", "json"):
            print_selection_notes(selections or [])
    if checks is not None and fmt_name in ("table", "csv"):
        print_checks(checks)


def selection_table(folder: Path, doc: dict) -> Group:
    """A tuned experiment's choice per arm: the chosen values, the selection curve, edge-of-range notes."""
    from gradlab.tuning import caption, choice_rows

    rows = [[r["arm"], r["chosen"], r["curve"], Text(r["notes"], style="yellow")] for r in choice_rows(doc)]
    t = _table(f"{folder.name}: each arm at its own best values", ["arm", "chosen", "selection curve", "notes"],
               rows, left=3, text_labels=("notes",))
    return Group(t, Text(caption(doc), style="dim"))


def print_selection_notes(selections: list) -> None:
    """Where each tuned experiment's choices are, and every choice at the edge of its range, on stderr."""
    from gradlab.tuning import SELECTION_FILE, choice_rows

    for folder, doc in selections:
        err_console.print(f"note: {folder.name}: each arm at its own best values, chosen on selection seeds "
                          f"(see {folder / SELECTION_FILE})", soft_wrap=True)
        for row in choice_rows(doc):
            if row["notes"]:
                err_console.print(f"note: {row['arm']}: {row['chosen']}: {row['notes']}", soft_wrap=True)


def emit_diff(table, columns: list[str], changes, checks: list[dict] | None, fmt_name: str, output: Path | None,
              title: str) -> None:
    """The diff of two result sets in the chosen format (``output``: not for ``table``), as ``emit``."""
    from gradlab.comparison import to_csv
    from gradlab.reports import change_text, json_document, markdown_report

    if fmt_name == "json":
        write_or_print(json.dumps(json_document(None, checks, table, changes), indent=2) + "\n", output)
    elif fmt_name == "markdown":
        write_or_print(markdown_report(None, checks, table, columns, title=title, changes=changes), output)
    elif fmt_name == "csv":
        write_or_print(to_csv(table), output)
    else:
        if changes:
            out_console.print(f"change under test: {change_text(changes)}", soft_wrap=True)
        out_console.print(diff_rich_table(table, columns, title))
    if checks is not None and fmt_name in ("table", "csv"):
        print_checks(checks)


def write_or_print(text: str, output: Path | None) -> None:
    if output:
        from gradlab.results import write_atomic

        write_atomic(output, text)
    else:
        sys.stdout.write(text)


def diff_rich_table(table, columns, title, width: int | None = None) -> Group:
    """Base → candidate per figure, with the test of each changed group (``tables.diff_view``)."""
    from gradlab.tables import diff_legend, diff_view

    heading, labels, rows = diff_view(table, columns)
    styles = {"regression": "red", "missing": "red", "new": "yellow", "ok": "green"}
    at = labels.index("status")  # the status, in its colour
    rows = [[*row[:at], Text(row[at], style=styles.get(row[at], "")), *row[at + 1:]] for row in rows]
    t = _table(" · ".join(x for x in (title, ", ".join(heading)) if x), labels, rows, left=at + 1,
               text_labels=("verdicts",), width=width)
    return Group(t, Text(diff_legend(), style="dim"))


def print_checks(checks: list[dict]) -> None:
    """Each evaluated expectation as PASS or FAIL on stderr, then the count that passed."""
    from gradlab.reports import check_lines, check_sections

    for head, section in check_sections(checks):
        err_console.print(f"{head}:", soft_wrap=True)
        for ok, text in check_lines(section):
            err_console.print(Text.assemble(("PASS", "green") if ok else ("FAIL", "red"), " ", text), soft_wrap=True)
    passed = sum(c["passed"] for c in checks)
    err_console.print(f"expectations: {passed}/{len(checks)} passed")


def sweep_with_progress(name, runs, out, quiet, **options):
    """The sweep with one bar for the whole sweep (in training steps) and one per running run."""
    from gradlab.sweeps import run_sweep

    if quiet:
        return run_sweep(name, runs, out, **options)
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False) as progress:
        total_steps = sum(r.config["train"]["steps"] for r in runs)
        sweep = progress.add_task(f"{name}: 0/{len(runs)} runs", total=total_steps)
        bars, seen, finished = {}, {}, [0]

        def on_event(event, run, **info):
            if event == "step":
                if run.id not in bars:
                    bars[run.id] = progress.add_task(f"  {run.id}", total=info["steps"])
                progress.update(bars[run.id], completed=info["step"])
                progress.advance(sweep, info["step"] - seen.get(run.id, 0))
                seen[run.id] = info["step"]
            elif event == "done":
                if run.id in bars:
                    progress.remove_task(bars.pop(run.id))
                progress.advance(sweep, run.config["train"]["steps"] - seen.get(run.id, 0))
                seen[run.id] = run.config["train"]["steps"]
                finished[0] += 1
                progress.update(sweep, description=f"{name}: {finished[0]}/{len(runs)} runs")

        return run_sweep(name, runs, out, on_event=on_event, **options)


def reach_view(records: list[dict], title: str, width: int | None = None) -> Group:
    """``compare --reach``: one row per set of window groups (``gradlab.reach.flat_rows``): the set's
    columns that vary, the full sequence's loss and interval, the loss at each window, the horizon; under
    the table each set's note (why that horizon, or why none), a line each as the diagnoses are (a column
    of sentences would leave the figures no room at 100 columns); the columns every set shares go into the
    title, the legend below."""
    from gradlab.comparison import cell_text
    from gradlab.reach import LEGEND, flat_rows

    rows = flat_rows(records)
    figures = ("reference", "full_loss", "full_low", "full_high", "full_seeds", "baseline_loss",
               "data_horizon", "note")
    keys = [k for k in rows[0] if k not in figures and not k.startswith("loss_w")] if rows else []
    constant = [k for k in keys if len({cell_text(k, r[k]) for r in rows}) == 1]
    shown = [k for k in keys if k not in constant]
    windows = [k for k in (rows[0] if rows else {}) if k.startswith("loss_w")]
    labels = [*shown, "full loss (seeds' 95%)", *(f"w={k.removeprefix('loss_w')}" for k in windows), "horizon"]
    body = [[*(cell_text(k, r[k]) for k in shown),
             cell_text("", r["full_loss"])
             + ("" if r["full_high"] is None else f" ({cell_text('', r['full_low'])}–{cell_text('', r['full_high'])})")
             + ("" if r["reference"] == "full" else f" w={r['reference']}"),
             *(cell_text(k, r[k]) for k in windows), cell_text("", r["data_horizon"])] for r in rows]
    caption = " · ".join(x for x in (title, ", ".join(f"{k}={cell_text(k, rows[0][k])}" for k in constant)) if x)
    t = _table(caption, labels, body, left=len(shown), width=width)
    # Text wraps at spaces, never cuts a word: each note stays whole at any width
    notes = [Text(", ".join(f"{k}={cell_text(k, r[k])}" for k in shown) + ": " + r["note"] if shown else r["note"])
             for r in rows if r["note"]]
    return Group(t, *notes, Text(LEGEND, style="dim"))


def bench_table(rows: list[dict], title: str) -> Table:
    """``gradlab bench``'s rows, one column per key any row has; a missing number prints as –."""
    t = Table(title=title, header_style="bold")
    columns = list(dict.fromkeys(k for row in rows for k in row))  # placed by key: rows may differ
    for col in columns:
        t.add_column(col, justify="left" if col == "cell" else "right")
    for row in rows:
        t.add_row(*(("–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v))
                    for v in (row.get(c) for c in columns)))
    return t


def catalogue_table(title: str, headers: tuple[str, str, str], rows: list[tuple[str, str, str]],
                    caption: str | None = None) -> Table:
    """One registry of ``gradlab ls``, left-aligned under its title."""
    t = Table(title=title, header_style="bold", title_justify="left", caption=caption, caption_justify="left")
    for col in headers:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)  # printed as written (no markup): adding[tcn], h[t-k]
    return t
