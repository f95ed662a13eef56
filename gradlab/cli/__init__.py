"""The command line: the commands, each a thin layer over the library.

Only this package touches the terminal and imports typer and rich: ``render.py``
holds what the commands show (tables, PASS/FAIL lines, progress bars, the
``--format`` outputs), ``errors.py`` the exit codes and the one-line errors
(exit 2 for bad input, never a traceback).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import sys
import threading
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
    reach_view,
    sweep_with_progress,
    write_or_print,
)
from gradlab.vocabulary import (
    CELL_NAMES,
    CONFIG_FILE,
    ENV_FILE,
    EXECUTORS,
    METRICS_FILE,
    PROFILE_FILE,
    SUMMARY_FILE,
)

app = typer.Typer(
    help="gradlab: see vanishing and exploding gradients in recurrent networks and compare the remedies.",
    no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
FORMATS = ("table", "markdown", "csv", "json")


def comparison_table(dirs: list[Path], by: str | None, only: set[str] | None = None):
    """The seed-aggregated table of the runs under ``dirs`` (``only``: just the runs with these hashes).

    Damaged run directories are skipped with one line each on stderr, and so are the notes on
    what the grouping added or pools; returns (table, damaged)."""
    from gradlab.comparison import compare, group_columns, load_frame

    damaged = []
    frame = load_frame(dirs, damaged)
    if only is not None:  # a sweep's own runs, and its own damaged ones
        from gradlab.results import run_hash

        damaged = [d for d in damaged if run_hash(d.path.parent.name) in only]
        frame = frame[frame["run_hash"].isin(only)].reset_index(drop=True) if not frame.empty else frame
    print_skipped(damaged)
    if frame.empty:
        fail(f"no finished runs under {', '.join(map(str, dirs))}" + (" that can be read" if damaged else ""))
    try:
        columns, notes = group_columns(frame, [c.strip() for c in by.split(",")] if by else None)
    except ValueError as e:
        fail(str(e))
    if not by:  # a tuned experiment's rows name each arm's chosen values, also where every arm chose alike
        from gradlab.tuning import tuned_columns

        tuned = tuned_columns([doc for d in dirs for _, doc in selections(d)])
        columns += [c for c in tuned if c in frame.columns and c not in columns]
    for note in notes:
        err_console.print(f"note: {note}", soft_wrap=True)
    return compare(frame, columns), damaged


def print_skipped(left_out: list) -> None:
    """One ``skipped: <path>: <problem>; <what is left out>`` line on stderr per damaged thing: every
    command prints them here (``gradlab.readers.Skipped``, ``gradlab.results.Damaged``)."""
    for s in left_out:
        err_console.print(f"skipped: {s}", markup=False, highlight=False, soft_wrap=True)


RUN_FILES = (CONFIG_FILE, ENV_FILE, METRICS_FILE, SUMMARY_FILE, PROFILE_FILE)


def left_out_text(left_out: list) -> str:
    """What ``print_skipped`` named, counted by kind: "2 damaged run directories", "1 selection.json"."""
    kinds: dict[str, int] = {}
    for s in left_out:
        path = Path(s.path)
        kind = "run" if path.name in RUN_FILES else path.name if path.suffix else f"{path.name} folder"
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} damaged run director{'y' if n == 1 else 'ies'}" if kind == "run" else f"{n} {kind}"
                     for kind, n in kinds.items())


def fail_damaged(damaged: list) -> None:
    """A gate must not pass on a subset of its results: with anything left out, --check fails (exit 1)."""
    if not damaged:
        return
    if all(Path(d.path).name in RUN_FILES for d in damaged):
        err_console.print(f"FAIL: {left_out_text(damaged)} (listed above): the check cannot pass on part of "
                          "the runs", soft_wrap=True)
    else:
        err_console.print(f"FAIL: left out (listed above): {left_out_text(damaged)}: the check cannot pass on "
                          "part of the results", soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def check_jobs(jobs: int, executor: str) -> None:
    """``--jobs`` within what the local executor can start (``workers.max_jobs``: 4 per core); Ray's
    cluster schedules its own tasks and ignores it."""
    from gradlab.workers import max_jobs

    if executor == "local" and jobs > max_jobs():
        fail(f"--jobs {jobs}: at most {max_jobs()} on this machine (4 per core, {os.cpu_count() or 1} cores); "
             "each job is a worker process training one run")


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
    wide: bool = typer.Option(False, "--wide", help="Every figure in the terminal table, not the compact set."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train every run of an experiment's grid and print the comparison.

    Re-running the same command skips finished runs and re-runs failed ones.

    Example: gradlab run configs/quickstart.yaml --jobs 2 --set train.steps=500
    """
    if fmt_name not in FORMATS:
        fail(f"--format: unknown format {fmt_name!r}; valid: {', '.join(FORMATS)}")
    if executor not in EXECUTORS:
        fail(f"--executor: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        fail(f"--address {address}: only the ray executor joins a cluster; add --executor ray")
    check_jobs(jobs, executor)
    shard_spec = parse_shard(shard)
    if executor == "local" and jobs > 1 and not dry_run:  # the workers' torch loads while the config is checked
        from gradlab.workers import start_server

        start_server()
    experiment = load_config(config, set_)
    if check and not experiment.expect:
        fail(f"--check: {config} has no expect: list")
    if experiment.tune is not None:  # each arm at its own best values: selection runs first
        from gradlab.cli.tuned import run_tuned

        return run_tuned(experiment, config, out, set_, shard, shard_spec, dry_run=dry_run, jobs=jobs, force=force,
                         executor=executor, address=address, fmt_name=fmt_name, check=check, wide=wide, quiet=quiet)
    from gradlab.sweeps import plan, run_dir, select

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
    train_and_show(experiment, runs, todo, done, out, set_, jobs=jobs, force=force, executor=executor,
                   address=address, fmt_name=fmt_name, check=check, wide=wide, quiet=quiet)


def train_and_show(experiment, runs, todo, done, out: Path, set_: list[str], *, jobs, force, executor, address,
                   fmt_name, check, wide, quiet, preflighted: bool = False) -> None:
    """``run``'s sweep of ``runs`` (``todo`` of them not done) into ``out``, its table, its checks, its exit code."""
    from gradlab.sweeps import experiment_damaged, experiment_lock, preflight, record_experiment

    name = experiment.name
    problems = [] if preflighted else preflight(runs, executor)
    if problems:
        fail(problems)
    from gradlab.sweeps import ExecutorUnavailable

    sweep_id = None
    if todo or experiment_damaged(out, name):  # a finished archive may be read-only: nothing to run, nothing written
        with experiment_lock(out, name):
            sweep_id = record_experiment(out, experiment, set_, runs)
    if not todo:
        err_console.print(f"0 to run, {len(done)} already done in {out / name}", soft_wrap=True)
    if len(todo) > 1 and jobs > 1 and executor == "local":
        # The driver now mostly waits (for the fork server, then for its workers): the comparison it
        # prints at the end imports pandas and scipy (about 1 s) meanwhile, not after the last run.
        threading.Thread(target=importlib.import_module, args=("gradlab.comparison",), daemon=True).start()
    try:
        outcomes = sweep_with_progress(name, runs, out, quiet or fmt_name != "table", jobs=jobs, force=force,
                                       executor=executor, address=address, sweep_id=sweep_id)
    except ExecutorUnavailable as e:
        fail(str(e))
    failed = [o for o in outcomes if o.status == "failed"]
    elsewhere = sum(o.status == "elsewhere" for o in outcomes)
    if elsewhere:
        err_console.print(f"{elsewhere} of {len(runs)} runs were trained meanwhile by another gradlab run on "
                          f"{out / name} (it held their lock); their results are included", soft_wrap=True)
    from gradlab.results import run_hash
    from gradlab.workers import one_line

    # exactly this sweep's runs: earlier sweeps into the folder (other --set values) are compare's to show
    own = {run_hash(r.id) for r in runs} | {run_hash(o.dir.name) for o in outcomes}
    table, damaged = comparison_table([out / name], None, only=own)
    checks = evaluate_checks(out / name, None, only=own) if check else None
    title = f"{name}: {len(runs)} runs in {out / name}" + "".join(f" --set {x}" for x in set_)
    emit(table, fmt_name, None, title=title, checks=checks, wide=wide, selections=selections(out / name))
    for o in failed:  # one line each (workers.one_line; an older run's error may have more)
        err_console.print(f"failed: {o.run.id}: {one_line(o.error or '')} (traceback in {o.dir / 'error.txt'})",
                          soft_wrap=True)
    checks_failed = checks is not None and not all(c["passed"] for c in checks)
    if failed:
        err_console.print(f"{len(failed)} of {len(runs)} runs failed")
    if failed or checks_failed:
        raise typer.Exit(EXIT_FAILED)
    if check:
        fail_damaged(damaged)


def evaluate_checks(directory: Path, expect: Path | None, only: set[str] | None = None) -> list[dict]:
    """Expectations from ``--expect CONFIG`` or those ``gradlab run`` stored with the results."""
    from gradlab.expectations import check_results

    entries = None
    if expect is not None:
        from gradlab.config import load_experiment

        entries = read_config(load_experiment, expect).expect
        if not entries:
            fail(f"{expect}: the config has no expect: list")
    try:
        checks = check_results(directory, entries, only=only)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise  # a damaged results file: user_errors names it and says what to do
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
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise  # a damaged results file: user_errors names it and says what to do
    except ValueError as e:
        fail(str(e))


@app.command()
@user_errors
def compare(
    directories: list[Path] = typer.Argument(..., help="A results directory (searched recursively), or two: "
                                             "BASELINE CANDIDATE to diff."),
    by: str | None = typer.Option(None, "--by", help="Comma-separated grouping columns "
                                  "(default: task,length,cell,clip,tbptt and every other key the grid varies); a key "
                                  "that changes the baseline (task, variant, length) is added, with a note."),
    fmt_name: str = typer.Option("table", "--format", "-f", help="One of: " + ", ".join(FORMATS) + "."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when an expectation fails, or (two directories) "
                               "the candidate regresses."),
    expect: Path | None = typer.Option(None, "--expect", help="Take the expectations from this config "
                                       "instead of those stored with the results (two directories: checked "
                                       "on the candidate)."),
    wide: bool = typer.Option(False, "--wide", help="Every figure in the terminal table, not the compact set."),
    reach: bool = typer.Option(False, "--reach", help="The data's dependency horizon from a task.window grid: "
                               "the smallest window whose loss is within the full sequence's seed interval."),
):
    """Aggregate the runs under a directory over seeds, or diff two result sets.

    \b
    Example: gradlab compare results/ --format markdown --by cell,clip
    Example: gradlab compare results/quickstart --check
    Example: gradlab compare baseline/ candidate/ --check --format markdown
    Example: gradlab compare results/reach --reach
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
    if reach:
        return compare_reach(directories, by, fmt_name, output, check or expect is not None)
    if len(directories) == 2:
        return compare_two(*directories, by, fmt_name, output, check, expect)
    table, damaged = comparison_table([directories[0]], by)
    checks = evaluate_checks(directories[0], expect) if check or expect else None
    emit(table, fmt_name, output, checks=checks, wide=wide, selections=selections(directories[0]))
    if check and not all(c["passed"] for c in checks):
        raise typer.Exit(EXIT_FAILED)
    if check:
        fail_damaged(damaged)


def compare_reach(directories: list[Path], by: str | None, fmt_name: str, output: Path | None, checked: bool):
    """``compare --reach``: the data's dependency horizon of each set of groups that differ only in
    ``task.window`` (``gradlab.reach``); exit 2 when the runs hold no window grid."""
    from gradlab.comparison import load_frame
    from gradlab.reach import horizons, render

    if len(directories) != 1:
        fail("--reach takes one results directory")
    if checked:
        fail("--reach does not take --check or --expect (check the runs with gradlab compare DIR --check)")
    damaged = []
    frame = load_frame(directories, damaged)
    print_skipped(damaged)
    if frame.empty:
        fail(f"no finished runs under {directories[0]}")
    try:
        records = horizons(frame, [c.strip() for c in by.split(",")] if by else None)
    except ValueError as e:
        fail(f"{directories[0]}: {e}")
    if fmt_name == "table":
        out_console.print(reach_view(records, title=f"the data's reach: {directories[0]}"))
    else:
        write_or_print(render(records, fmt_name), output)


def selections(directory: Path) -> list:
    """The tuned experiments' choices under ``directory`` (``tuning.selections``), for ``emit``."""
    from gradlab.tuning import selections as found

    return found(directory)


def compare_two(base_dir: Path, cand_dir: Path, by: str | None, fmt_name: str, output: Path | None, check: bool,
                expect: Path | None):
    """The diff of two result sets, group by group; ``--expect`` is checked on the candidate."""
    from gradlab.comparison import cell_text, compare, diff, diff_keys, group_columns, load_frame, to_records

    damaged = []
    frames = [load_frame([d], damaged) for d in (base_dir, cand_dir)]
    print_skipped(damaged)
    for d, frame in zip((base_dir, cand_dir), frames):
        if frame.empty:
            fail(f"no finished runs under {d}")
    # group by each set's own grid axes; a key that differs only between the sets is the change under test
    columns, changes = diff_keys(*frames, [c.strip() for c in by.split(",")] if by else None)
    try:
        # what each side needs so that no group pools baselines; both sides line up on all of it
        needed = [group_columns(frame, columns) for frame in frames]
        columns = list(dict.fromkeys(c for cols, _ in needed for c in cols if all(c in f.columns for f in frames)))
        for note in dict.fromkeys(n for _, notes in needed for n in notes):
            err_console.print(f"note: {note}", soft_wrap=True)
        table = diff(compare(frames[0], columns), compare(frames[1], columns), columns,
                     base_runs=frames[0], cand_runs=frames[1])
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
    if check:
        fail_damaged(damaged)


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
        left_out = []
        text = markdown_book(directory, output, left_out=left_out)
        print_skipped(left_out)
        if text is None:
            fail(f"no experiments (folders with experiment.json written by gradlab run) under {directory}")
        write_atomic(output, text)
        out_console.print(str(output))
        if check:
            from gradlab.expectations import check_results

            if not all(c["passed"] for c in check_results(directory)):
                raise typer.Exit(EXIT_FAILED)
            fail_damaged(left_out)
        return
    output = output or Path("report.html")

    _, damaged = comparison_table([directory], None)  # the skipped runs named, or exit 2 when none is left
    checks = evaluate_checks(directory, expect) if check or expect else stored_checks(directory)
    write_atomic(output, html_report(directory, checks, title=f"gradlab report: {directory}"))
    out_console.print(str(output))
    if check and not all(c["passed"] for c in checks):
        raise typer.Exit(EXIT_FAILED)
    if check:
        fail_damaged(damaged)


@app.command()
@user_errors
def validate(configs: list[Path] = typer.Argument(..., help="Experiment YAML files."),
             set_: list[str] = typer.Option([], "--set", help="Override a key: dotted.path=value.")):
    """Check configs without training: every problem, located, at once.

    Example: gradlab validate configs/*.yaml
    """
    from gradlab.config import ConfigError, load_experiment

    problems = []
    for path in configs:
        try:
            experiment = load_experiment(path, set_)
            runs = f"{len(experiment.runs)} runs"
            if experiment.tune is not None:
                from gradlab.tuning import plan

                selection, reported = plan(experiment).cost
                runs = f"{selection + reported} runs ({selection} to select, {reported} to report)"
            out_console.print(f"ok: {path}: {experiment.name}, {runs}")
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

    Over several experiments, each gets its own folder OUTPUT/<experiment>/. A damaged run
    directory is left out with one line on stderr naming the file; exit 2 when nothing is left.

    Example: gradlab plot results/quickstart -o plots/
    """
    if not directory.is_dir():
        fail(f"{directory}: no such directory")
    from gradlab.plots import draw

    drawing = draw(directory, output or directory / "plots")
    print_skipped(drawing.skipped)
    if not drawing.written:
        fail(f"no finished runs to plot under {directory}")
    for path in drawing.written:
        out_console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def export(
    directory: Path = typer.Argument(..., help="Results directory, searched recursively."),
    tensorboard: Path = typer.Option(..., "--tensorboard", help="TensorBoard log directory to write "
                                     "(one run per result: EXPERIMENT/RUN_ID; needs gradlab[tensorboard])."),
):
    """Write every run's metrics and gradient-through-time profiles as TensorBoard event files.

    Scalars train/... and eval/... (one per metrics.csv column) at each step, and the
    profile as the image gradient_through_time at each evaluation. Exporting again
    replaces a run's earlier export.

    \b
    Example: gradlab export results/quickstart --tensorboard runs/
    Example: gradlab export results/ --tensorboard runs/ && tensorboard --logdir runs/
    """
    if not directory.is_dir():
        fail(f"{directory}: no such directory")
    from gradlab.export import TensorBoardMissing, export_tensorboard

    left_out = []
    try:
        written = export_tensorboard(directory, tensorboard, left_out)
    except TensorBoardMissing as e:
        fail(str(e))
    print_skipped(left_out)
    if not written:
        fail(f"no finished runs to export under {directory}")
    for path in written:
        out_console.print(str(path), markup=False, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def bench(
    cells: str = typer.Option(",".join(CELL_NAMES), "--cells", help="Comma-separated cells."),
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
                extra = ", ".join(f"{k}={p.default}" for k, p in entry.params.items())
            elif title == "task":
                extra = entry.kind
            elif title == "cell":
                extra = entry.recurrence
            rows.append((key, extra, entry.description))
        headers = (title, "parameters" if title == "clip" else "", "description")
        out_console.print(catalogue_table(f"{title}s", headers, rows, caption))
    from gradlab.config import options

    rows = [(key, values, description) for key, (values, description) in options().items()]
    out_console.print(catalogue_table("options (remedies set by a config key)", ("key", "values", "description"),
                                      rows))


def main() -> None:
    """The ``gradlab`` command (and ``python -m gradlab``).

    The interpreter's last garbage collections, as it exits, traverse every object that torch,
    torch._dynamo, pandas and scipy created at import: about 0.75 s on a 2-core machine, as long as a
    short run. A command writes and closes its files before it returns, so what is still alive at
    exit is frozen (``gc.freeze``) and those collections skip it. Only the command does this: a
    library user importing ``gradlab.cli`` keeps the collections (and the finalizers they run).
    """
    atexit.register(gc.freeze)
    app(prog_name="gradlab")
