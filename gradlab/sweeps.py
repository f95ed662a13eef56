"""Run every point of an experiment's grid and store each result on disk.

A run that raises is recorded as failed (its error and traceback in its
directory, its metrics so far kept) and the sweep goes on. A run whose
directory already holds a successful ``summary.json`` is skipped, so
re-running a sweep finishes only what is missing or failed.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from gradlab import results
from gradlab.config import Run


@dataclass
class Outcome:
    run: Run
    dir: Path
    status: str            # ok | failed | skipped
    summary: dict | None
    error: str | None = None


def preflight(runs: list[Run]) -> list[str]:
    """Problems that would fail every run on this machine, found before any training."""
    import torch

    problems = []
    for device in sorted({r.config["device"] for r in runs}):
        if device.startswith("cuda") and not torch.cuda.is_available():
            problems.append(f"device: {device} requested, but torch {torch.__version__} sees no CUDA device")
    return problems


def run_dir(out: Path, name: str, run: Run) -> Path:
    return Path(out) / name / run.id


def is_done(path: Path) -> bool:
    return results.is_finished(path) and results.read_json(path / results.SUMMARY).get("status") == "ok"


def execute(run: Run, path: Path, progress=None) -> Outcome:
    """Train one run and write its directory, whatever happens inside training."""
    from gradlab.training import environment, train

    rows: list[dict] = []
    try:
        summary, rows, env = train(run.config, progress=progress, rows=rows)
    except Exception as e:  # a failing run is recorded; the sweep goes on
        error = f"{type(e).__name__}: {e}"
        summary = {"status": "failed", "error": error}
        try:
            env = environment(run.config)
        except Exception:
            env = {}
        results.save_run(path, run.config, env, rows, summary, error=traceback.format_exc())
        return Outcome(run, path, "failed", summary, error)
    results.save_run(path, run.config, env, rows, summary)
    return Outcome(run, path, "ok", summary)


def run_sweep(name: str, runs: list[Run], out: Path, *, force: bool = False, on_event=None) -> list[Outcome]:
    """Train every run not already done, in order.

    on_event(event, run, **info) reports progress to the caller: ``start``,
    ``step`` (step, steps), ``done`` (outcome); training itself never prints.
    """
    notify = on_event or (lambda *a, **k: None)
    outcomes = []
    for run in runs:
        path = run_dir(out, name, run)
        if not force and is_done(path):
            outcome = Outcome(run, path, "skipped", results.read_json(path / results.SUMMARY))
        else:
            notify("start", run)
            outcome = execute(run, path, progress=lambda s, n, run=run: notify("step", run, step=s, steps=n))
        notify("done", run, outcome=outcome)
        outcomes.append(outcome)
    return outcomes
