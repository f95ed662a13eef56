"""``gradlab run`` of a config with a ``tune:`` section: the selection runs, the choice per arm, then the
reported runs at each arm's chosen values (the protocol is ``gradlab.tuning``'s)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from gradlab.cli.errors import EXIT_FAILED, EXIT_OK, fail
from gradlab.cli.render import err_console, out_console, sweep_with_progress
from gradlab.vocabulary import SELECTION_DIR


def run_tuned(experiment, config: Path, out: Path, set_: list[str], shard: str | None, shard_spec, *,
              dry_run: bool, jobs: int, force: bool, executor: str, address: str | None, fmt_name: str,
              check: bool, wide: bool, quiet: bool) -> None:
    """Train the selection runs not done, record each arm's choice, then train and show the reported runs."""
    from gradlab import tuning
    from gradlab.cli import train_and_show
    from gradlab.sweeps import ExecutorUnavailable, experiment_lock, plan, preflight, run_dir, select
    from gradlab.workers import one_line

    name = experiment.name
    tuned = tuning.plan(experiment)
    selection_name = f"{name}/{SELECTION_DIR}"
    selection = select(tuned.selection_runs, shard_spec)
    todo, done = plan(selection_name, selection, out, force)
    if dry_run:
        arms = tuning.choose(tuned, tuning.finished(tuned, out, name))
        reported, waiting = tuning.reported_runs(tuned, arms, shard_spec)
        report_todo, report_done = plan(name, reported, out, force)
        for r in selection:
            say(f"{'done' if r in done else 'run '}  {run_dir(out, selection_name, r)}")
        for r in reported:
            say(f"{'done' if r in report_done else 'run '}  {run_dir(out, name, r)}")
        for arm in waiting:
            say(f"wait  {arm['label']}: its {len(tuned.seeds)} reported runs once its selection runs are done")
        say(tuned.describe())
        say(f"{len(todo) + len(report_todo)} to run, {len(done) + len(report_done)} already done"
            + (f", {len(waiting) * len(tuned.seeds)} to run after the selection" if waiting else ""))
        return
    problems = preflight(selection, executor)
    if problems:
        fail(problems)
    tuning.prepare(out, name, tuned)
    started = time.monotonic()
    try:
        outcomes = sweep_with_progress(selection_name, selection, out, quiet or fmt_name != "table", jobs=jobs,
                                       force=force, executor=executor, address=address, record=False)
    except ExecutorUnavailable as e:
        fail(str(e))
    timing = None
    if todo:
        timing = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.monotonic() - started, 1),
                  "trained": sum(o.status != "skipped" for o in outcomes),
                  "failed": sum(o.status == "failed" for o in outcomes), "jobs": jobs, "executor": executor}
    arms = tuning.choose(tuned, tuning.finished(tuned, out, name))
    doc, old = tuning.document(out, name, tuned, arms, timing)
    if doc != old:  # a finished archive (read-only media too) has nothing to record: no lock, no write
        with experiment_lock(out, name):  # another shard may record its choices meanwhile: one at a time
            arms = tuning.choose(tuned, tuning.finished(tuned, out, name))
            tuning.record(out, name, tuned, arms, timing)
    broken, by_id = [arm for arm in arms if arm["failed"]], {r.id: r for r in tuned.selection_runs}
    for arm in broken:  # from the disk: this sweep's failures and another process's alike
        for f in arm["failed"]:
            where = run_dir(out, selection_name, by_id[f["run"]]) / "error.txt"
            err_console.print(f"failed: selection run {f['run']} ({arm['label']}, {tuning.values_text(f['values'])}): "
                              f"{one_line(f['error'] or '')} (traceback in {where})", soft_wrap=True, markup=False,
                              highlight=False)
    reported, waiting = tuning.reported_runs(tuned, arms, shard_spec)
    waiting = [arm for arm in waiting if not arm["failed"]]
    if waiting:
        err_console.print(f"{len(waiting)} of {len(tuned.arms)} arms wait for selection runs not done yet "
                          f"(another --shard's): run this command again once they are", soft_wrap=True)
    code = EXIT_OK
    if not reported:
        if fmt_name == "json":
            sys.stdout.write("[]\n")
    else:
        report_todo, report_done = plan(name, reported, out, force)
        try:
            train_and_show(experiment, reported, report_todo, report_done, out, set_, jobs=jobs, force=force,
                           executor=executor, address=address, fmt_name=fmt_name, check=check, wide=wide,
                           quiet=quiet, preflighted=True)
        except typer.Exit as e:
            if e.exit_code != EXIT_FAILED:
                raise
            code = EXIT_FAILED
    if broken:  # a choice made from a crash would be no choice: these arms' reported runs are not trained
        runs = sum(len(arm["failed"]) for arm in broken)
        err_console.print(f"{runs} selection run{'' if runs == 1 else 's'} failed: {len(broken)} of {len(tuned.arms)} "
                          f"arms ({', '.join(arm['label'] for arm in broken)}) have no choice and none of their "
                          f"reported runs was trained; the same command again retrains the failed runs",
                          soft_wrap=True, markup=False, highlight=False)
        code = EXIT_FAILED
    if code != EXIT_OK:
        raise typer.Exit(code)


def say(text: str) -> None:
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)
