"""The command line: the commands, each a thin layer over the library.

Only this package touches the terminal and imports typer and rich: ``render.py``
holds what the commands show (tables, PASS/FAIL lines, progress bars, the
``--format`` outputs), ``errors.py`` the exit codes and the one-line errors
(exit 2 for bad input, never a traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from gradlab.cli.errors import EXIT_FAILED, fail, load_config, read_config, user_errors
from gradlab.cli.render import (
    bench_table,
    catalogue_table,
    emit,
    emit_diff,
    err_console,
    out_console,
    sweep_with_progress,
)

app = typer.Typer(
    help="gradlab: see vanishing and exploding gradients in recurrent networks and compare the remedies.",
    no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
FORMATS = ("table", "markdown", "csv", "json")


def report_incomplete(dirs: list[Path]) -> None:
    """One line on stderr per run directory whose summary promises files it lacks (without its config,
    compare cannot read it and leaves it out)."""
    from gradlab.results import CONFIG, incomplete_runs

    for d in dirs:
        for run_dir, missing in incomplete_runs(d):
            left_out = ", left out" if CONFIG in missing else ""
            err_console.print(f"warning: {run_dir}: incomplete run (no {', '.join(missing)}){left_out}; "
                              "gradlab run redoes it", soft_wrap=True)


def comparison_table(dirs: list[Path], by: str | None):
    from gradlab.comparison import compare, load_frame

    report_incomplete(dirs)
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
    if address is not None and executor != "ray":
        fail(f"--address {address}: only the ray executor joins a cluster; add --executor ray")
    shard_spec = parse_shard(shard)
    experiment = load_config(config, set_)
    if check and not experiment.expect:
        fail(f"--check: {config} has no expect: list")
    from gradlab.sweeps import experiment_lock, plan, preflight, record_experiment, run_dir, select

    name, runs = experiment.name, select(experiment.runs, shard_spec)
    todo, done = plan(name, runs, out, force)
    if dry_run:
        for r in runs:
            out_console.print(f"{'done' if r in done else 'run '}  {run_dir(out, name, r)}", markup=False,
                              highlight=False)
        out_console.print(f"{len(todo)} to run, {len(done)} already done", markup=False)
        return
    if not runs:  # more CI shards than runs: a valid, empty job
        err_console.print(f"--shard {shard}: no runs in this shard ({config} has {len(experiment.runs)}); "
                          "nothing to do", markup=False, highlight=False, soft_wrap=True)
        if fmt_name == "json":
            sys.stdout.write("[]\n")
        return
    problems = preflight(runs, executor)
    if problems:
        fail(problems)
    from gradlab.sweeps import ExecutorUnavailable

    if todo:  # a finished archive may be read-only: nothing to run, nothing written
        with experiment_lock(out, name):
            record_experiment(out, experiment)
    else:
        err_console.print(f"0 to run, {len(done)} already done in {out / name}", soft_wrap=True)
    try:
        outcomes = sweep_with_progress(name, runs, out, quiet or fmt_name != "table", jobs=jobs, force=force,
                                       executor=executor, address=address)
    except ExecutorUnavailable as e:
        fail(str(e))
    failed = [o for o in outcomes if o.status == "failed"]
    elsewhere = sum(o.status == "elsewhere" for o in outcomes)
    if elsewhere:
        err_console.print(f"{elsewhere} of {len(runs)} runs were trained meanwhile by another gradlab run on "
                          f"{out / name} (it held their lock); their results are included", soft_wrap=True)
    table = comparison_table([out / name], None)
    checks = evaluate_checks(out / name, None) if check else None
    emit(table, fmt_name, None, title=f"{name}: {len(runs)} runs in {out / name}", checks=checks)
    for o in failed:
        err_console.print(f"failed: {o.run.id}: {o.error} (traceback in {o.dir / 'error.txt'})")
    checks_failed = checks is not None and not all(c["passed"] for c in checks)
    if failed:
        err_console.print(f"{len(failed)} of {len(runs)} runs failed")
    if failed or checks_failed:
        raise typer.Exit(EXIT_FAILED)


def evaluate_checks(directory: Path, expect: Path | None) -> list[dict]:
    """Expectations from ``--expect CONFIG`` or those ``gradlab run`` stored with the results."""
    from gradlab.expectations import check_results

    entries = None
    if expect is not None:
        from gradlab.config import load_experiment

        entries = read_config(load_experiment, expect).expect
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


def stored_checks(directory: Path) -> list[dict] | None:
    """The expectations ``gradlab run`` stored with the results, evaluated; None when there are none."""
    from gradlab.expectations import check_results

    try:
        return check_results(directory) or None
    except ValueError as e:
        fail(str(e))


@app.command()
@user_errors
def compare(
    directories: list[Path] = typer.Argument(..., help="A results directory (searched recursively), or two: "
                                             "BASELINE CANDIDATE to diff."),
    by: str | None = typer.Option(None, "--by", help="Comma-separated grouping columns "
                                  "(default: task,length,cell,clip,tbptt and every other key the grid varies)."),
    fmt_name: str = typer.Option("table", "--format", "-f", help="One of: " + ", ".join(FORMATS) + "."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when an expectation fails, or (two directories) "
                               "the candidate regresses."),
    expect: Path | None = typer.Option(None, "--expect", help="Take the expectations from this config "
                                       "instead of those stored with the results (two directories: checked "
                                       "on the candidate)."),
):
    """Aggregate the runs under a directory over seeds, or diff two result sets.

    \b
    Example: gradlab compare results/ --format markdown --by cell,clip
    Example: gradlab compare results/quickstart --check
    Example: gradlab compare baseline/ candidate/ --check --format markdown
    """
    if fmt_name not in FORMATS:
        fail(f"--format: unknown format {fmt_name!r}; valid: {', '.join(FORMATS)}")
    if fmt_name == "table" and output:
        fail("--output needs --format markdown, csv or json")
    if len(directories) > 2:
        fail("compare takes one results directory, or two (BASELINE CANDIDATE) to diff")
    for d in directories:
        if not d.is_dir():
            fail(f"{d}: no such directory")
    if len(directories) == 2:
        return compare_two(*directories, by, fmt_name, output, check, expect)
    table = comparison_table([directories[0]], by)
    checks = evaluate_checks(directories[0], expect) if check or expect else None
    emit(table, fmt_name, output, checks=checks)
    if check and not all(c["passed"] for c in checks):
        raise typer.Exit(EXIT_FAILED)


def compare_two(base_dir: Path, cand_dir: Path, by: str | None, fmt_name: str, output: Path | None, check: bool,
                expect: Path | None):
    """The diff of two result sets, group by group; ``--expect`` is checked on the candidate."""
    from gradlab.comparison import cell_text, compare, diff, diff_keys, load_frame, to_records

    report_incomplete([base_dir, cand_dir])
    frames = [load_frame([d]) for d in (base_dir, cand_dir)]
    for d, frame in zip((base_dir, cand_dir), frames):
        if frame.empty:
            fail(f"no finished runs under {d}")
    # group by each set's own grid axes; a key that differs only between the sets is the change under test
    columns, changes = diff_keys(*frames, [c.strip() for c in by.split(",")] if by else None)
    try:
        table = diff(compare(frames[0], columns), compare(frames[1], columns), columns)
    except ValueError as e:
        fail(str(e))
    checks = evaluate_checks(cand_dir, expect) if expect else None
    emit_diff(table, columns, changes, checks, fmt_name, output, title=f"{cand_dir} against {base_dir}")
    bad = [r for r in to_records(table) if r["status"] in ("regression", "missing")]
    for r in bad:
        group = ", ".join(f"{c}={cell_text(c, r[c])}" for c in columns)
        err_console.print(f"{r['status'].upper()}: {group}: {r['reasons']}", soft_wrap=True)
    if check and (bad or (checks is not None and not all(c["passed"] for c in checks))):
        raise typer.Exit(EXIT_FAILED)


@app.command()
@user_errors
def report(
    directory: Path = typer.Argument(..., help="Results directory, searched recursively."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The file to write "
                                       "(default: report.html, or DIRECTORY/README.md for markdown)."),
    fmt_name: str = typer.Option("html", "--format", "-f", help="html: one self-contained page; markdown: "
                                 "a section per experiment with its claims, table, plots, machine and time."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when an expectation fails."),
    expect: Path | None = typer.Option(None, "--expect", help="Take the expectations from this config "
                                       "(html only; markdown uses each experiment's own)."),
):
    """Write a report: one self-contained HTML page, or a Markdown results book.

    The expectations (stored with the results, or from --expect) are always shown with
    PASS or FAIL; --check only decides the exit code.

    \b
    Example: gradlab report results/quickstart -o report.html
    Example: gradlab report results/ --format markdown   (writes results/README.md)
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
        out_console.print(str(output))
        if check:
            from gradlab.expectations import check_results

            if not all(c["passed"] for c in check_results(directory)):
                raise typer.Exit(EXIT_FAILED)
        return
    output = output or Path("report.html")

    table = comparison_table([directory], None)
    checks = evaluate_checks(directory, expect) if check or expect else stored_checks(directory)
    write_atomic(output, html_report(directory, table, checks, title=f"gradlab report: {directory}"))
    out_console.print(str(output))
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
            out_console.print(f"ok: {path}: {name}, {len(runs)} runs")
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
        out_console.print(str(path))


@app.command()
@user_errors
def bench(
    cells: str = typer.Option("vanilla,irnn,orthogonal,skip,lstm,gru", "--cells", help="Comma-separated cells."),
    length: int = typer.Option(200, "--length", min=1, help="Sequence length T."),
    batch: int = typer.Option(64, "--batch", min=1, help="Batch size B."),
    hidden: int = typer.Option(128, "--hidden", min=1, help="Hidden units H."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    repeats: int = typer.Option(15, "--repeats", min=3, help="Timed steps per contender (median reported)."),
    memory: str | None = typer.Option(None, "--memory", help="Also report the peak memory of one step at "
                                      "these comma-separated lengths, e.g. 500,2000."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of rows, each with schema "
                                 "gradlab.bench/1) instead of a table."),
):
    """Time one training step of every cell: gradlab's engine vs torch's fused module vs an autograd loop.

    One thread, float32; the contenders alternate in one process and the medians are
    compared, so the ratios hold on a noisy machine (> 1: gradlab is faster).

    Example: gradlab bench --length 200 --batch 64 --hidden 128 --json
    """
    from gradlab.bench import SCHEMA, peak_memory
    from gradlab.bench import bench as run_bench
    from gradlab.cells import CELLS

    names = [c.strip() for c in cells.split(",") if c.strip()]
    unknown = [c for c in names if c not in CELLS]
    if unknown or not names:
        fail(f"--cells {cells}: {'unknown cell(s) ' + ', '.join(unknown) if unknown else 'no cell named'}; "
             f"valid: {', '.join(CELLS)}")
    check_device(device)
    lengths = [x.strip() for x in memory.split(",")] if memory else []
    if not all(x.isdigit() and int(x) > 0 for x in lengths):
        fail(f"--memory {memory}: expected comma-separated sequence lengths >= 1, e.g. 500,2000")
    rows = run_bench(names, length=length, batch=batch, hidden=hidden, device=device, repeats=repeats)
    for row in rows:
        for T in map(int, lengths):
            for engine in ("scan", "fused", "autograd"):  # None: torch has no fused module for the cell
                row[f"peak_mib_{engine}_T{T}"] = None if engine == "fused" and row["fused_ms"] is None else \
                    round(peak_memory(row["cell"], T, batch, hidden, device, engine=engine) / 2**20, 1)
    if as_json:
        sys.stdout.write(json.dumps([{"schema": SCHEMA, **row} for row in rows], indent=2) + "\n")
        return
    out_console.print(bench_table(rows, f"one training step, T={length} B={batch} H={hidden}, {device}, "
                                        "1 thread (median ms)"))


def check_device(device: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` of a device torch sees, or a one-line error."""
    if device == "cpu":
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        fail(f"--device {device}: expected cpu, cuda or cuda:N")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        fail(f"--device {device}: torch sees no CUDA device")
    if device != "cuda" and int(device[5:]) >= count:
        fail(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


@app.command("ls")
def list_catalogue():
    """List the tasks, cells, clipping rules and remedy options a config can name.

    Example: gradlab ls
    """
    from gradlab.cells import CELLS
    from gradlab.remedies import CLIPS
    from gradlab.tasks import catalogue

    for title, registry in (("task", catalogue()), ("cell", CELLS), ("clip", CLIPS)):
        caption = "name[variant]: set task.name and task.variant" if title == "task" else None
        rows = []
        for key, entry in registry.items():
            extra = ""
            if title == "clip":
                extra = ", ".join(f"{k}={v}" for k, v in entry.params.items())
            elif title == "task":
                extra = entry.kind
            elif title == "cell":
                extra = entry.recurrence
            rows.append((key, extra, entry.description))
        headers = (title, "parameters" if title == "clip" else "", "description")
        out_console.print(catalogue_table(f"{title}s", headers, rows, caption))
    from gradlab.config import OPTIONS

    rows = [(key, values, description) for key, (values, description) in OPTIONS.items()]
    out_console.print(catalogue_table("options (remedies set by a config key)", ("key", "values", "description"),
                                      rows))

