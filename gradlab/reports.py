"""Reports a reviewer reads: Markdown for ``$GITHUB_STEP_SUMMARY``, versioned JSON, one HTML page.

Everything here renders what ``comparison`` and ``expectations`` computed from
the results on disk; nothing is recomputed and torch is never imported.
"""

from __future__ import annotations

import base64
import html
import os
import re
import tempfile
from pathlib import Path

import pandas as pd

from gradlab import comparison, readers, results, tuning
from gradlab.checks import is_number
from gradlab.comparison import SCHEMA, cell_text, fmt, to_markdown, to_records
from gradlab.vocabulary import CURVE_PLOT, EXPERIMENT_FILE, MAIN_PLOTS, SELECTION_FILE


def json_document(table: pd.DataFrame | None, checks: list[dict] | None = None,
                  diff_table: pd.DataFrame | None = None, changes: dict | None = None) -> dict:
    """The JSON of ``compare --check`` and of a diff (plain ``compare`` prints only the group list).

    ``changes``: the diff's change under test, ``{column: [base value, candidate value]}``.
    """
    doc = {"schema": SCHEMA}
    if table is not None:
        doc["groups"] = comparison.diagnosed(to_records(table), table)
    if checks is not None:
        doc["expectations"] = checks
        doc["passed"] = all(c["passed"] for c in checks)
    if diff_table is not None:
        doc["diff"] = to_records(diff_table)
        doc["regressions"] = int(diff_table["status"].isin(["regression", "missing"]).sum())
        doc["changes"] = {k: list(v) for k, v in (changes or {}).items()}
    return doc


def code(text) -> str:
    """``text`` as a Markdown code span, so ``<2*baseline_loss*0.9`` is not read as emphasis;
    the fence is one backtick longer than any run of backticks inside (CommonMark 6.1)."""
    text = str(text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _observed(check: dict, quote=str) -> str:
    """``solved_rate = 0.5 (want >= 0.66)``; an expression shows its value: ``(want < 0.5 * baseline_loss = 0.083)``.

    ``quote`` wraps the values and the comparison (``code`` for Markdown)."""
    want = quote(f"{check['op']} {check['expr']}")
    if isinstance(check["expected"], (int, float)) and fmt(check["expected"]) != check["expr"]:
        want += f" = {quote(fmt(check['expected']))}"
    elif isinstance(check["expected"], str) and check["expected"] != check["expr"]:
        want += f" {quote(check['expected'])}"
    return f"{check['column']} = {quote(fmt(check['observed']))} (want {want})"


def check_lines(checks: list[dict], quote=str) -> list[tuple[bool, str]]:
    """One (passed, text) line per expectation and failing group, for terminals and Markdown.

    ``quote`` wraps what the user wrote and what was observed: the expectation, the
    group, the values (``code`` for Markdown, where ``*`` and ``_`` would be emphasis)."""
    lines = []
    for c in checks:
        head = f"{quote(c['experiment'])}: {quote(c['expectation'])}"
        if not c["matched"]:
            lines.append((False, f"{head}: no group matches"))
            continue
        lines.append((c["passed"], head))
        for g in c["groups"]:
            group = ", ".join(f"{k}={cell_text(k, v)}" for k, v in g["group"].items())
            lines.append((g["passed"], f"  {quote(group)}: " + "; ".join(_observed(x, quote) for x in g["checks"])))
    return lines


def applied_to(check: dict, quote=str) -> str:
    """``quickstart: the expectations of gradlab run configs/quickstart.yaml, on its 6 runs``."""
    source = f"the expectations of {quote(check['sweep'])}" if check.get("sweep") else "the expectations"
    return (f"{quote(check['experiment'])}: {source}, on {'its ' if check.get('sweep') else ''}"
            f"{check.get('runs', '?')} runs")


def check_sections(checks: list[dict], quote=str) -> list[tuple[str, list[dict]]]:
    """The checks in runs of one experiment and sweep, each under its ``applied_to`` line."""
    sections: list[tuple[str, list[dict]]] = []
    for c in checks:
        head = applied_to(c, quote)
        if not sections or sections[-1][0] != head:
            sections.append((head, []))
        sections[-1][1].append(c)
    return sections


DIFF_SHOWN = ["solved_rate", "final_loss_mean", "steps_to_solve_median"]  # base, candidate and delta each


def fmt_delta(v) -> str:
    """A signed difference, 4 significant digits: ``+0.5``, ``-0.01234``, ``+125``; ``–`` for none."""
    v = comparison._clean(v)
    if v is None:
        return "–"
    return f"{int(v):+d}" if float(v).is_integer() and abs(v) < 1e6 else f"{v:+.4g}"


def diverged_text(rec: dict, side: str) -> str:
    """``1/2``: the diverged runs of one side against its runs (regressions compare these rates)."""
    return "–" if rec[f"runs_{side}"] is None else f"{rec[f'diverged_{side}']}/{rec[f'runs_{side}']}"


def change_text(changes: dict) -> str:
    """``clip: norm(1.0) → none; lr: 0.01 → 0.02``, the change under test of a diff."""
    return "; ".join(f"{k}: {cell_text(k, b)} → {cell_text(k, c)}" for k, (b, c) in changes.items())


def _diff_markdown(diff_table: pd.DataFrame, by: list[str]) -> str:
    rows = []
    for rec in to_records(diff_table):
        row = {c: rec[c] for c in by}
        row["status"] = f"**{rec['status'].upper()}**" if rec["status"] in ("regression", "missing") else rec["status"]
        for m in DIFF_SHOWN:
            row.update({f"{m}_base": fmt(rec[f"{m}_base"]), f"{m}_candidate": fmt(rec[f"{m}_candidate"]),
                        f"{m}_delta": fmt_delta(rec[f"{m}_delta"])})
        row.update({"diverged_base": diverged_text(rec, "base"), "diverged_candidate": diverged_text(rec, "candidate"),
                    "verdict_base": rec["verdict_base"], "verdict_candidate": rec["verdict_candidate"],
                    "reasons": rec["reasons"]})
        rows.append(row)
    return to_markdown(pd.DataFrame(rows, dtype=object))


def markdown_report(table: pd.DataFrame | None, checks: list[dict] | None = None,
                    diff_table: pd.DataFrame | None = None, by: list[str] | None = None,
                    title: str = "gradlab comparison", changes: dict | None = None) -> str:
    """A Markdown page that fits $GITHUB_STEP_SUMMARY: expectations first, then the tables.

    Expressions, groups and observed values are code spans, never Markdown."""
    parts = [f"## {title}\n"]
    if checks is not None:
        passed = sum(c["passed"] for c in checks)
        parts.append(f"**Expectations: {passed}/{len(checks)} passed**\n")
        for head, section in check_sections(checks, quote=code):
            parts.append(f"{head}:\n")
            for ok, text in check_lines(section, quote=code):
                indent = text.startswith("  ")
                mark = "PASS" if ok else "FAIL"
                parts.append(("  - " if indent else "- ") + f"{'✅' if ok else '❌'} {mark} {text.strip()}")
            parts.append("")
    if diff_table is not None:
        bad = int(diff_table["status"].isin(["regression", "missing"]).sum())
        parts.append(f"**Diff against the baseline: {bad} regression(s)**\n")
        if changes:
            parts.append(f"Change under test: {code(change_text(changes))}\n")
        parts.append(_diff_markdown(diff_table, by or comparison.DEFAULT_BY))
    if table is not None:
        from gradlab.tables import diagnosis_markdown

        parts.append(to_markdown(table))
        parts.append(diagnosis_markdown(table, quote=code))
    return "\n".join(parts)


# ---------------------------------------------------------------------------
# One self-contained HTML page.

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
.wide { overflow-x: auto; max-width: 100%; } .legend { color: #555; font-size: 13px; max-width: 60em; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #cf222e; font-weight: bold; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
"""


def _html_view(table: pd.DataFrame) -> str:
    """The compact view, with the terminal's labels (``tables.view``), and its legend."""
    from gradlab.tables import view

    shown, heading, rows, labels, legend = view(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown + labels)
    kinds = ["text"] * len(shown) + ["text" if label == "verdicts" else "num" for label in labels]
    body = "".join("<tr>" + "".join(f"<td class=\"{k}\">{html.escape(cell)}</td>" for k, cell in zip(kinds, row))
                   + "</tr>" for row in rows)
    constant = f"<p>{html.escape(', '.join(heading))}</p>" if heading else ""
    return (f"{constant}<table class=\"comparison\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p class=\"legend\">{html.escape(legend)}</p>{_html_diagnoses(table)}")


def _html_diagnoses(table: pd.DataFrame) -> str:
    """Each group's diagnosis (``tables.diagnoses``): the case in words, what to try, the evidence folded."""
    from gradlab.tables import diagnoses

    items = []
    for name, d in diagnoses(table):
        head = f"<b>{html.escape(name)}</b>: " if name else ""
        tries = (f"<br>try: {', '.join(f'<code>{html.escape(s)}</code>' for s in d['remedies'])}"
                 if d["remedies"] else "")
        evidence = "".join(f"<li>{html.escape(x)}</li>" for x in d["details"])
        items.append(f"<li class=\"diagnosis\">{head}{html.escape(d['text'])}{tries}"
                     f"<details><summary>evidence</summary><ul>{evidence}</ul></details></li>")
    return f"<h3>Diagnosis</h3><ul class=\"diagnoses\">{''.join(items)}</ul>" if items else ""


def _html_table(table: pd.DataFrame) -> str:
    """Every column under its own name (as Markdown, CSV and JSON hold them), in a scrolling box."""
    cols = list(table.columns)
    text_cols = {"task", "cell", "clip", "verdict", "verdicts", "experiment"}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for rec in to_records(table):
        cells = "".join(f"<td class=\"{'text' if c in text_cols else 'num'}\">{html.escape(cell_text(c, rec[c]))}</td>"
                        for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return (f"<details><summary>every column</summary><div class=\"wide\"><table class=\"full\"><thead>"
            f"<tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></details>")


def _html_checks(checks: list[dict]) -> str:
    passed = sum(c["passed"] for c in checks)
    parts = [f"<h3>Expectations: {passed}/{len(checks)} passed</h3>"]
    for head, section in check_sections(checks):
        parts.append(f"<p>{html.escape(head)}:</p><ul class=\"expectations\">")
        for ok, text in check_lines(section):
            cls, mark = ("pass", "PASS") if ok else ("fail", "FAIL")
            parts.append(f"<li><span class=\"{cls}\">{mark}</span> {html.escape(text.strip())}</li>")
        parts.append("</ul>")
    return "".join(parts)


def _html_images(images: list[Path]) -> str:
    parts = []
    for path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        name = html.escape(path.stem.replace("_", " "))
        parts.append(f"<figure><img alt=\"{name}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{name}</figcaption></figure>")
    return "".join(parts)


def html_report(root: Path, checks: list[dict] | None = None, title: str = "gradlab report",
                damaged: list | None = None) -> str:
    """Per experiment under ``root``: its comparison (the terminal's compact view, then every column),
    its expectations with PASS/FAIL, and its diagnostic plots inlined as PNG data; a contents list
    when there are several. One self-contained page that fits 1200 px. ``damaged``: gets the run
    directories left out (``comparison.load_frame``)."""
    from gradlab.plots import plot

    frame = comparison.load_frame([root], damaged if damaged is not None else [])
    names = list(dict.fromkeys(frame["experiment"].fillna(""))) if not frame.empty else []
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>Results under <code>{html.escape(str(root))}</code>.</p>"]
    if len(names) > 1:
        parts.append("<nav><h2>Contents</h2><ul>" + "".join(
            f"<li><a href=\"#exp-{i}\">{html.escape(n or '(unnamed)')}</a></li>" for i, n in enumerate(names))
            + "</ul></nav>")
    for i, name in enumerate(names):
        runs = frame[frame["experiment"].fillna("") == name]
        parts.append(f"<section id=\"exp-{i}\"><h2>{html.escape(name or '(unnamed)')}</h2>")
        own = [c for c in (checks or []) if c["experiment"] in (name, str(root))] if checks is not None else None
        if own:
            parts.append(_html_checks(own))
        table = comparison.compare(runs)
        parts.append("<h3>Comparison (aggregated over seeds)</h3>" + _html_view(table) + _html_table(table))
        folders = {Path(d).parent for d in runs["run_dir"]}
        parts += [_html_selection(doc) for f in sorted(folders) if (doc := results.read_selection(f))]
        with tempfile.TemporaryDirectory() as tmp:
            images = [p for folder in sorted(folders) for p in plot(folder, Path(tmp) / folder.name)]
            if images:
                parts.append("<h3>Diagnostics</h3>" + _html_images(images))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_selection(doc: dict) -> str:
    """A tuned experiment's choice per arm (``tuning.choice_rows``) as an HTML table with its caption."""
    rows = tuning.choice_rows(doc)
    head = "".join(f"<th>{k}</th>" for k in ("arm", "chosen", "selection curve", "notes"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in ("arm", "chosen", "curve", "notes"))
                   + "</tr>" for r in rows)
    return (f"<h3>Each arm at its own best values</h3><table><tr>{head}</tr>{body}</table>"
            f"<p><em>{html.escape(tuning.caption(doc))}</em></p>")


# ---------------------------------------------------------------------------
# A results book: one Markdown page over many experiments (results/README.md).


def _machine(frame: pd.DataFrame, sweeps: list[dict]) -> str:
    """``2 CPUs (x86_64), torch 2.13.0+cpu, 1 thread per run; 12 min 3 s wall-clock with --jobs 2``."""
    env = _env(Path(frame["run_dir"].iloc[0])) if len(frame) else {}
    sweeps = [s for s in sweeps if "seconds" in s]  # recorded sweeps that trained
    wall = sum(s["seconds"] for s in sweeps)
    train = pd.to_numeric(frame.get("wall_seconds"), errors="coerce").sum()
    jobs = sorted({s.get("jobs") for s in sweeps if s.get("jobs")})
    machine = sweeps[-1].get("machine", "?") if sweeps else "?"
    device = env.get("cuda_device") or f"{env.get('cpu_count', '?')}-core {machine} CPU"
    text = (f"{device}, {env.get('platform', '?')}, torch {env.get('torch', '?')}, "
            f"{env.get('threads', '?')} thread(s) per run; ")
    if sweeps:
        text += (f"{_duration(wall)} wall-clock in {len(sweeps)} sweep(s) with --jobs "
                 f"{'/'.join(map(str, jobs))}; ")
    return text + f"{_duration(train)} of training summed over runs"


def _recorded(sweeps: list) -> list[dict]:
    """The sweep records of an experiment as a report sums them: objects, ``seconds`` and ``jobs`` numbers
    (a damaged record's other values are dropped, never summed with text)."""
    return [{k: v for k, v in s.items() if k not in ("seconds", "jobs") or is_number(v)}
            for s in sweeps if isinstance(s, dict)]


def _env(run_dir: Path) -> dict:
    """A run's ``env.json`` (checked for a successful run; a failed run's may be damaged: then none)."""
    try:
        return readers.read_json(run_dir / results.ENV)
    except readers.Damaged:
        return {}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def markdown_view(table: pd.DataFrame) -> str:
    """The compact view (``tables.view``, the terminal's labels, verdicts in words) as Markdown, with its legend."""
    from gradlab.tables import view

    shown, heading, rows, labels, legend = view(table, letters=False)
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, shown + labels)) + " |", "|" + "|".join("---" for _ in shown + labels) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    head = f"{code(', '.join(heading))}\n\n" if heading else ""
    return head + "\n".join(lines) + f"\n\n*{legend}*\n"


def markdown_book(root: Path, out_file: Path, title: str = "gradlab results",
                  left_out: list | None = None) -> str | None:
    """Every experiment under ``root`` (a folder with ``experiment.json``) as one section:
    what it shows (its config's header comment), its claims PASS/FAIL, the comparison
    aggregated over seeds, its plots (written to ``<experiment>/plots/``), a
    hand-written ``NOTES.md`` if the folder has one, and the machine and time it took.
    Image links are relative to ``out_file``'s folder. None when no experiment has runs.

    A damaged run is left out as every command leaves it out, a damaged ``experiment.json`` leaves out
    its experiment, and a ``plots`` folder that resolves outside its experiment its plots: each is
    appended to ``left_out`` (``gradlab.readers.Skipped``), once. Plots are written only inside ``root``
    as resolved: an experiment linked in from elsewhere is read, and its plots left out (links to read
    are followed, never to write)."""
    from gradlab.expectations import check_results
    from gradlab.plots import draw

    root = Path(root)
    found: dict[str, object] = {}  # each skipped line once: the table and the plots read the same runs
    studies = sorted({p.parent for p in results.files_named(root, EXPERIMENT_FILE)})
    summary, sections = [], []
    for study in studies:
        try:
            doc = readers.experiment_record(study / EXPERIMENT_FILE)
        except readers.Damaged as e:
            found.setdefault(str(e), readers.Skipped(e.path, f"{e.reason}; the experiment is left out"))
            continue
        name = doc.get("name") or study.name
        damaged = []
        frame = comparison.load_frame([study], damaged)
        for d in damaged:
            found.setdefault(str(d), readers.skipped(d))
        if frame.empty:
            continue
        table = comparison.compare(frame)
        try:
            checks = check_results(study, frame=frame)
        except readers.Damaged as e:  # an experiment.json in a folder under this one
            found.setdefault(str(e), readers.Skipped(e.path, f"{e.reason}; the experiment is left out"))
            continue
        passed = sum(c["passed"] for c in checks)
        anchor = name.lower().replace(" ", "-")
        verdict = "no claims" if not checks else ("PASS" if passed == len(checks) else "FAIL")
        selection = results.read_selection(study)  # a tuned study: its selection sweeps count in its time
        sweeps = _recorded((selection or {}).get("sweeps", []) + doc.get("sweeps", []))
        summary.append(f"| [{name}](#{anchor}) | {verdict} ({passed}/{len(checks)}) | {len(frame)} | "
                       f"{_duration(sum(s.get('seconds', 0) for s in sweeps))} |")
        parts = [f"## {name}\n"]
        about = (doc.get("about") or "").splitlines()
        command = about.pop(0) if about and about[0].startswith("gradlab ") else None  # the config's first line
        if about:
            parts.append("\n".join(about) + "\n")
        if doc.get("source"):
            parts.append(f"Config: `{doc['source']}` · results: `{study.as_posix()}`"
                         + (f" · re-run: `{command}`" if command else "") + "\n")
        if checks:
            parts.append(f"**Claims: {passed}/{len(checks)} PASS**\n")
            for c in checks:
                mark = "PASS" if c["passed"] else "FAIL"
                parts.append(f"- {'✅' if c['passed'] else '❌'} **{mark}** {c.get('claim') or ''} "
                             f"{code(c['expectation'])}".replace("  ", " "))
                for ok, text in check_lines([c], quote=code)[1:]:
                    parts.append(f"  - {'PASS' if ok else 'FAIL'} {text.strip()}")
            parts.append("")
        parts.append(markdown_view(table))
        if selection:
            parts.append(f"Each arm at its own best values, chosen on selection seeds (`{SELECTION_FILE}`):\n\n"
                         + tuning.markdown(selection))
        notes = study / "NOTES.md"
        if notes.is_file():
            parts.append(notes.read_text(errors="replace").strip() + "\n")
        images = []
        # inside its experiment (no plots link) and inside the folder the user gave (no linked experiment)
        if problem := readers.outside(study / "plots", study) or readers.outside(study / "plots", root):
            found.setdefault(str(study / "plots"), readers.Skipped(study / "plots",
                                                                   f"{problem}; the experiment's plots are left out"))
        else:
            drawing = draw(study, study / "plots")
            images = drawing.written
            for s in drawing.skipped:
                found.setdefault(str(s), s)
        rel = {p.name: os.path.relpath(p, Path(out_file).parent) for p in images}
        parts += [f"![{n[:-4].replace('_', ' ')}]({rel[n]})\n" for n in (*MAIN_PLOTS, CURVE_PLOT) if n in rel]
        others = [n for n in rel if n not in (*MAIN_PLOTS, CURVE_PLOT)]
        if others:
            parts.append("Gradient heatmaps: " + ", ".join(f"[{n[:-4]}]({rel[n]})" for n in others) + "\n")
        parts.append(f"*Machine and time:* {_machine(frame, sweeps)}.\n")
        sections.append("\n".join(parts))
    head = [f"# {title}\n", "Generated by `gradlab report " + root.as_posix() + " --format markdown -o "
            + Path(out_file).as_posix() + "` from the result sets below; do not edit by hand "
            "(findings go in each study's `NOTES.md`).\n",
            "| study | claims | runs | wall-clock |", "|---|---|---|---|", *summary, ""]
    if left_out is not None:
        left_out += list(found.values())
    if not sections:
        return None
    return "\n".join(head + sections)
