"""The command line: the only module that touches the terminal.

Exit codes: 0 success, 1 some runs failed, 2 bad input (config, arguments,
paths). User errors print one line per problem, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(
    help="gradlab: see vanishing and exploding gradients in recurrent networks and compare the remedies.",
    no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped output has no terminal width; give tables room instead of rich's 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
FORMATS = ("table", "markdown", "csv", "json")


def fail(problems: list[str] | str, code: int = EXIT_BAD_INPUT):
    """Print each problem on its own line to stderr and exit."""
    for p in [problems] if isinstance(problems, str) else problems:
        err_console.print(f"error: {p}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(command):
    """Errors of the user's environment (unwritable --out, full disk, Ctrl-C) as one line, not a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OSError as e:
            fail(f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}")
        except KeyboardInterrupt:
            fail("interrupted: finished runs are kept; the same command finishes the rest", code=130)
    return wrapper


def load_config(path: Path, sets: list[str]):
    from gradlab.config import ConfigError, load_experiment

    try:
        return load_experiment(path, sets)
    except ConfigError as e:
        fail(e.problems)


def rich_table(table, title: str | None = None) -> Table:
    """A compact terminal view: grouping columns that never vary go into the title."""
    from gradlab.comparison import METRICS, cell_text, fmt, to_records

    records = to_records(table)
    groups = [c for c in table.columns if c not in METRICS]
    constant = [c for c in groups if len({cell_text(c, r[c]) for r in records}) == 1]
    if len(constant) == len(groups):  # keep at least one column to name the rows
        constant = constant[:-1]
    shown = [c for c in groups if c not in constant]
    heading = ", ".join(f"{c}={cell_text(c, records[0][c])}" for c in constant)
    t = Table(title=" · ".join(x for x in (title, heading) if x), header_style="bold")
    for col in shown:
        t.add_column(col)
    show_failed = any(r["failed"] for r in records)
    for col in ["runs"] + (["failed"] if show_failed else []) + ["solved", "eval loss", "± std", "baseline",
                                                                 "steps to solve", "diverged", "horizon@init",
                                                                 "horizon",
                                                                 "clip≈"]:
        t.add_column(col, justify="right")
    t.add_column("verdicts")
    for r in records:
        t.add_row(*(cell_text(c, r[c]) for c in shown), str(r["runs"]), *([str(r["failed"])] if show_failed else []),
                  f"{r['solved_rate']:.0%}", fmt(r["final_loss_mean"]), fmt(r["final_loss_std"]),
                  fmt(r["baseline_loss"]), fmt(r["steps_to_solve_median"]), str(r["diverged"]),
                  fmt(r["horizon_init_median"]), fmt(r["horizon_median"]), fmt(r["suggested_clip"]), fmt(r["verdicts"]))
    return t


def emit(table, fmt_name: str, output: Path | None, title: str | None = None) -> None:
    """Print the comparison (or write it to ``output``) in the chosen format."""
    from gradlab.comparison import render

    if fmt_name == "table":
        if output:
            fail("--output needs --format markdown, csv or json")
        out_console.print(rich_table(table, title))
        return
    text = render(table, fmt_name)
    if output:
        from gradlab.results import write_atomic

        write_atomic(output, text)
    else:
        sys.stdout.write(text)


def comparison_table(dirs: list[Path], by: str | None):
    from gradlab.comparison import compare, load_frame

    frame = load_frame(dirs)
    if frame.empty:
        fail(f"no finished runs under {', '.join(map(str, dirs))}")
    try:
        return compare(frame, [c.strip() for c in by.split(",")] if by else None)
    except ValueError as e:
        fail(str(e))


def parse_shard(text: str | None):
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        fail(f"--shard {text}: expected i/n, e.g. 1/4")
    if not 1 <= i <= n:
        fail(f"--shard {text}: need 1 <= i <= n")
    return i, n


@app.command()
@user_errors
def run(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results directory."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: dotted.path=value (repeatable)."),
    jobs: int = typer.Option(os.cpu_count() or 1, "--jobs", "-j", min=1,
                             help="Runs at once, each in its own process (default: the number of cores)."),
    force: bool = typer.Option(False, "--force", help="Re-run runs that already finished."),
    executor: str = typer.Option("local", "--executor", help="local (worker processes) or ray "
                                 "(one Ray task per run; needs gradlab[ray])."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start a "
                                       "local Ray instance)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would run and what is already done."),
    shard: str | None = typer.Option(None, "--shard", help="i/n: run only every n-th run, starting at "
                                        "the i-th (1-based), to split a sweep across CI jobs."),
    fmt_name: str = typer.Option("table", "--format", "-f", help="Table format printed at the end: "
                                 + ", ".join(FORMATS) + "."),
    check: bool = typer.Option(False, "--check", help="Evaluate the config's expect: list; exit 1 if one fails."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train every run of an experiment's grid and print the comparison.

    Re-running the same command skips finished runs and re-runs failed ones.

    Example: gradlab run configs/quickstart.yaml --jobs 2 --set train.steps=500
    """
    if fmt_name not in FORMATS:
        fail(f"--format: unknown format {fmt_name!r}; valid: {', '.join(FORMATS)}")
    from gradlab.sweeps import EXECUTORS

    if executor not in EXECUTORS:
        fail(f"--executor: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    shard_spec = parse_shard(shard)
    experiment = load_config(config, set_)
    if check and not experiment.expect:
        fail(f"--check: {config} has no expect: list")
    from gradlab.sweeps import plan, preflight, record_experiment, select

    name, runs = experiment.name, select(experiment.runs, shard_spec)
    if dry_run:
        todo, done = plan(name, runs, out, force)
        for r in runs:
            out_console.print(f"{'done' if r in done else 'run '}  {out / name / r.id}", markup=False,
                              highlight=False)
        out_console.print(f"{len(todo)} to run, {len(done)} already done", markup=False)
        return
    problems = preflight(runs)
    if problems:
        fail(problems)
    from gradlab.sweeps import ExecutorUnavailable

    record_experiment(out, experiment)
    try:
        outcomes = sweep_with_progress(name, runs, out, quiet or fmt_name != "table", jobs=jobs, force=force,
                                       executor=executor, address=address)
    except ExecutorUnavailable as e:
        fail(str(e))
    failed = [o for o in outcomes if o.status == "failed"]
    table = comparison_table([out / name], None)
    emit(table, fmt_name, None, title=f"{name}: {len(runs)} runs in {out / name}")
    for o in failed:
        err_console.print(f"failed: {o.run.id}: {o.error} (traceback in {o.dir / 'error.txt'})",
                          markup=False, highlight=False)
    checks_failed = False
    if check:
        checks = evaluate_checks(out / name, None)
        print_checks(checks)
        checks_failed = not all(c["passed"] for c in checks)
    if failed:
        err_console.print(f"{len(failed)} of {len(runs)} runs failed", markup=False)
    if failed or checks_failed:
        raise typer.Exit(EXIT_FAILED)


def sweep_with_progress(name, runs, out, quiet, **options):
    """The sweep with one bar for the whole sweep (in training steps) and one per running run."""
    from gradlab.sweeps import run_sweep

    if quiet:
        return run_sweep(name, runs, out, **options)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
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


def evaluate_checks(directory: Path, expect: Path | None) -> list[dict]:
    """Expectations from ``--expect CONFIG`` or those ``gradlab run`` stored with the results."""
    from gradlab.expectations import check_results

    entries = None
    if expect is not None:
        from gradlab.config import ConfigError, load_experiment

        try:
            entries = load_experiment(expect).expect
        except ConfigError as e:
            fail(e.problems)
        if not entries:
            fail(f"{expect}: the config has no expect: list")
    try:
        checks = check_results(directory, entries)
    except ValueError as e:
        fail(str(e))
    if not checks:
        fail(f"no expectations for the runs under {directory}: add an expect: list to the config "
             "(gradlab run stores it with the results) or pass --expect CONFIG")
    return checks


def print_checks(checks: list[dict]) -> None:
    from gradlab.reports import check_lines

    for ok, text in check_lines(checks):
        mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        err_console.print(f"{mark} ", end="")
        err_console.print(text, markup=False, highlight=False, soft_wrap=True)
    passed = sum(c["passed"] for c in checks)
    err_console.print(f"expectations: {passed}/{len(checks)} passed", markup=False)


@app.command()
@user_errors
def compare(
    directories: list[Path] = typer.Argument(..., help="A results directory (searched recursively), or two: "
                                             "BASELINE CANDIDATE to diff."),
    by: str | None = typer.Option(None, "--by", help="Comma-separated grouping columns "
                                  "(default: task,length,cell,clip,tbptt and every other key the grid varies)."),
    fmt_name: str = typer.Option("table", "--format", "-f", help="One of: " + ", ".join(FORMATS) + "."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when an expectation fails (one directory) or "
                               "the candidate regresses (two directories)."),
    expect: Path | None = typer.Option(None, "--expect", help="Take the expectations from this config "
                                       "instead of those stored with the results."),
):
    """Aggregate the runs under a directory over seeds, or diff two result sets.

    Example: gradlab compare results/ --format markdown --by cell,clip
    Example: gradlab compare results/quickstart --check
    Example: gradlab compare baseline/ candidate/ --check --format markdown
    """
    if fmt_name not in FORMATS:
        fail(f"--format: unknown format {fmt_name!r}; valid: {', '.join(FORMATS)}")
    if len(directories) > 2:
        fail("compare takes one results directory, or two (BASELINE CANDIDATE) to diff")
    for d in directories:
        if not d.is_dir():
            fail(f"{d}: no such directory")
    if len(directories) == 2:
        return compare_two(*directories, by, fmt_name, output, check)
    table = comparison_table([directories[0]], by)
    checks = evaluate_checks(directories[0], expect) if check or expect else None
    if checks is None or fmt_name in ("table", "csv"):
        emit(table, fmt_name, output)
    else:
        from gradlab.reports import json_document, markdown_report

        text = (json.dumps(json_document(table, checks), indent=2) + "\n" if fmt_name == "json"
                else markdown_report(table, checks))
        write_or_print(text, output)
    if checks is not None:
        if fmt_name in ("table", "csv"):
            print_checks(checks)
        if check and not all(c["passed"] for c in checks):
            raise typer.Exit(EXIT_FAILED)


def write_or_print(text: str, output: Path | None) -> None:
    if output:
        from gradlab.results import write_atomic

        write_atomic(output, text)
    else:
        sys.stdout.write(text)


def compare_two(base_dir: Path, cand_dir: Path, by: str | None, fmt_name: str, output: Path | None, check: bool):
    """The diff of two result sets, group by group."""
    from gradlab.comparison import DEFAULT_BY, compare, diff, load_frame, varying_columns
    from gradlab.reports import json_document, markdown_report

    frames = [load_frame([d]) for d in (base_dir, cand_dir)]
    for d, frame in zip((base_dir, cand_dir), frames):
        if frame.empty:
            fail(f"no finished runs under {d}")
    # group by each set's own grid axes; a key that differs only between the sets is the change under test
    axes = [c for f in frames for c in varying_columns(f)]
    columns = [c.strip() for c in by.split(",")] if by else DEFAULT_BY + list(dict.fromkeys(axes))
    try:
        table = diff(compare(frames[0], columns), compare(frames[1], columns), columns)
    except ValueError as e:
        fail(str(e))
    if fmt_name == "json":
        write_or_print(json.dumps(json_document(None, None, table), indent=2) + "\n", output)
    elif fmt_name == "markdown":
        write_or_print(markdown_report(None, None, table, columns, title=f"{cand_dir} against {base_dir}"), output)
    elif fmt_name == "csv":
        write_or_print(table.to_csv(index=False), output)
    else:
        if output:
            fail("--output needs --format markdown, csv or json")
        out_console.print(diff_rich_table(table, columns, f"{cand_dir} against {base_dir}"))
    bad = table[table["status"].isin(["regression", "missing"])]
    for _, row in bad.iterrows():
        group = ", ".join(f"{c}={row[c]}" for c in columns)
        err_console.print(f"{row['status'].upper()}: {group}: {row['reasons']}", markup=False, highlight=False,
                          soft_wrap=True)
    if check and len(bad):
        raise typer.Exit(EXIT_FAILED)


def diff_rich_table(table, columns, title) -> Table:
    from gradlab.comparison import cell_text, fmt, to_records

    t = Table(title=title, header_style="bold")
    for col in columns + ["status", "solved", "eval loss", "steps to solve", "verdict", "why"]:
        t.add_column(col)
    styles = {"regression": "red", "missing": "red", "new": "yellow", "ok": "green"}
    for r in to_records(table):
        pair = lambda m, r=r: f"{fmt(r[m + '_base'])} → {fmt(r[m + '_candidate'])}"  # noqa: E731
        t.add_row(*(cell_text(c, r[c]) for c in columns), f"[{styles[r['status']]}]{r['status']}[/]",
                  pair("solved_rate"), pair("final_loss_mean"), pair("steps_to_solve_median"), pair("verdict"),
                  r["reasons"] or "")
    return t


@app.command()
@user_errors
def report(
    directory: Path = typer.Argument(..., help="Results directory, searched recursively."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The file to write "
                                       "(default: report.html, or DIRECTORY/README.md for markdown)."),
    fmt_name: str = typer.Option("html", "--format", "-f", help="html: one self-contained page; markdown: "
                                 "a section per experiment with its claims, table, plots, machine and time."),
    check: bool = typer.Option(False, "--check", help="Include the expectations and exit 1 when one fails."),
    expect: Path | None = typer.Option(None, "--expect", help="Take the expectations from this config "
                                       "(html only; markdown uses each experiment's own)."),
):
    """Write a report: one self-contained HTML page, or a Markdown results book.

    Example: gradlab report results/quickstart -o report.html

    Example: gradlab report results/ --format markdown   (results/README.md; plots beside the runs)
    """
    if not directory.is_dir():
        fail(f"{directory}: no such directory")
    if fmt_name not in ("html", "markdown"):
        fail(f"--format: unknown format {fmt_name!r}; valid: html, markdown")
    from gradlab.reports import html_report, markdown_book
    from gradlab.results import write_atomic

    if fmt_name == "markdown":
        output = output or directory / "README.md"
        text = markdown_book(directory, output)
        if text is None:
            fail(f"no experiments (folders with experiment.json written by gradlab run) under {directory}")
        write_atomic(output, text)
        out_console.print(str(output), markup=False, highlight=False)
        if check:
            from gradlab.expectations import check_results

            if not all(c["passed"] for c in check_results(directory)):
                raise typer.Exit(EXIT_FAILED)
        return
    output = output or Path("report.html")

    table = comparison_table([directory], None)
    checks = evaluate_checks(directory, expect) if check or expect else None
    write_atomic(output, html_report(directory, table, checks, title=f"gradlab report: {directory}"))
    out_console.print(str(output), markup=False, highlight=False)
    if check and not all(c["passed"] for c in checks):
        raise typer.Exit(EXIT_FAILED)


@app.command()
@user_errors
def validate(configs: list[Path] = typer.Argument(..., help="Experiment YAML files."),
             set_: list[str] = typer.Option([], "--set", help="Override a key: dotted.path=value.")):
    """Check configs without training: every problem, located, at once.

    Example: gradlab validate configs/*.yaml
    """
    from gradlab.config import ConfigError, load

    problems = []
    for path in configs:
        try:
            name, runs = load(path, set_)
            out_console.print(f"ok: {path}: {name}, {len(runs)} runs", markup=False, highlight=False)
        except ConfigError as e:
            problems += e.problems
    if problems:
        fail(problems)


@app.command()
@user_errors
def plot(
    directory: Path = typer.Argument(..., help="Results directory, searched recursively."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder for the PNGs "
                                          "(default: DIRECTORY/plots)."),
):
    """Draw learning curves, gradient norms and the gradient-through-time profiles as PNGs.

    Example: gradlab plot results/quickstart -o plots/
    """
    if not directory.is_dir():
        fail(f"{directory}: no such directory")
    from gradlab.plots import plot as draw

    written = draw(directory, output or directory / "plots")
    if not written:
        fail(f"no finished runs to plot under {directory}")
    for path in written:
        out_console.print(str(path), markup=False, highlight=False)


@app.command()
@user_errors
def bench(
    cells: str = typer.Option("vanilla,irnn,orthogonal,skip,lstm,gru", "--cells", help="Comma-separated cells."),
    length: int = typer.Option(200, "--length", min=1, help="Sequence length T."),
    batch: int = typer.Option(64, "--batch", min=1, help="Batch size B."),
    hidden: int = typer.Option(128, "--hidden", min=1, help="Hidden units H."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    repeats: int = typer.Option(15, "--repeats", min=3, help="Timed steps per contender (median reported)."),
    memory: str | None = typer.Option(None, "--memory", help="Also report the peak memory of one step at "
                                      "these comma-separated lengths, e.g. 500,2000."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Time one training step of every cell: gradlab's engine vs torch's fused module vs an autograd loop.

    One thread, float32; the contenders alternate in one process and the medians are
    compared, so the ratios hold on a noisy machine (> 1: gradlab is faster).

    Example: gradlab bench --length 200 --batch 64 --hidden 128 --json
    """
    from gradlab.bench import bench as run_bench
    from gradlab.bench import peak_memory
    from gradlab.cells import CELLS

    names = [c.strip() for c in cells.split(",") if c.strip()]
    unknown = [c for c in names if c not in CELLS]
    if unknown:
        fail(f"--cells: unknown cell(s) {', '.join(unknown)}; valid: {', '.join(CELLS)}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(f"--device {device}: torch sees no CUDA device")
    rows = run_bench(names, length=length, batch=batch, hidden=hidden, device=device, repeats=repeats)
    lengths = [int(x) for x in memory.split(",")] if memory else []
    for row in rows:
        for T in lengths:
            for engine in ("scan", "fused", "autograd"):
                if engine == "fused" and row["fused_ms"] is None:
                    continue
                row[f"peak_mib_{engine}_T{T}"] = round(peak_memory(row["cell"], T, batch, hidden, device,
                                                                   engine=engine) / 2**20, 1)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    t = Table(title=f"one training step, T={length} B={batch} H={hidden}, {device}, 1 thread (median ms)",
              header_style="bold")
    for col in rows[0]:
        t.add_column(col, justify="left" if col == "cell" else "right")
    for row in rows:
        t.add_row(*(("–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)) for v in row.values()))
    out_console.print(t)


@app.command("ls")
def list_catalogue():
    """List the tasks, cells, clipping rules and remedy options a config can name.

    Example: gradlab ls
    """
    from gradlab.cells import CELLS
    from gradlab.remedies import CLIPS
    from gradlab.tasks import catalogue

    for title, registry in (("task", catalogue()), ("cell", CELLS), ("clip", CLIPS)):
        caption = escape("name[variant]: set task.name and task.variant") if title == "task" else None
        t = Table(title=f"{title}s", header_style="bold", title_justify="left", caption=caption,
                  caption_justify="left")
        t.add_column(title)
        t.add_column("parameters" if title == "clip" else "")
        t.add_column("description")
        for key, entry in registry.items():
            extra = ""
            if title == "clip":
                extra = ", ".join(f"{k}={v}" for k, v in entry.params.items())
            elif title == "task":
                extra = entry.kind
            elif title == "cell":
                extra = entry.recurrence
            t.add_row(escape(key), extra, escape(entry.description))  # literal brackets: adding[tcn], h[t-k]
        out_console.print(t)
    from gradlab.config import OPTIONS

    t = Table(title="options (remedies set by a config key)", header_style="bold", title_justify="left")
    for col in ("key", "values", "description"):
        t.add_column(col)
    for key, (values, description) in OPTIONS.items():
        t.add_row(key, escape(values), escape(description))
    out_console.print(t)

