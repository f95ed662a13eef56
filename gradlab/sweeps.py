"""Run every point of an experiment's grid, in parallel, and store each result on disk.

Workers only train: each returns its run's summary, metric rows and
environment (or its error and traceback) to the driver, and the driver writes
the run directory. So an executor needs no shared filesystem, and a worker
that dies leaves nothing half-written.

Resuming: a run whose directory holds a successful ``summary.json`` is done
and skipped (a directory belongs to a run by the hash of its resolved config,
the end of the run id; see ``run_dir``); failed and interrupted runs are run
again. A run that raises is recorded as failed, with what it had computed,
and the sweep goes on; so does a sweep whose worker process dies (a segfault,
an out-of-memory kill): the runs it had in flight are recorded as failed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from gradlab import results
from gradlab.config import Run

PROGRESS_INTERVAL = 0.2  # seconds between a worker's progress messages


@dataclass
class Outcome:
    run: Run
    dir: Path
    status: str            # ok | failed | skipped
    summary: dict | None
    error: str | None = None


def preflight(runs: list[Run], executor: str = "local") -> list[str]:
    """Problems that would fail every run on this machine, found before any training.

    Only the local executor trains here: Ray's workers run on the cluster's nodes
    (a CPU-only head node can drive GPU workers) and each run checks its own device.
    """
    if executor != "local":
        return []
    import torch

    problems = []
    for device in sorted({r.config["device"] for r in runs}):
        if device.startswith("cuda") and not torch.cuda.is_available():
            problems.append(f"device: {device} requested, but torch {torch.__version__} sees no CUDA device")
    return problems


def record_experiment(out: Path, experiment, overrides: list[str] = (), runs: list[Run] | None = None) -> str:
    """Record a sweep in ``<out>/<name>/experiment.json`` before it trains; return the sweep's id.

    The file keeps the experiment's name and its latest expectations, config file and header
    comment (for ``report``), and one entry per sweep that wrote into the folder: its config
    file, ``--set`` overrides, expectations and the hashes of its runs (so ``compare --check``
    applies each sweep's expectations to that sweep's runs), then its timing (``record_sweep``).
    The same command again (a resume) re-uses the last entry, so one with nothing to train adds none.
    """
    from gradlab.expectations import EXPERIMENT_FILE

    path = Path(out) / experiment.name / EXPERIMENT_FILE
    old = results.read_json(path) if path.exists() else {}
    sweeps = old.get("sweeps", [])
    entry = {"source": experiment.source, "set": list(overrides), "expect": experiment.expect,
             "runs": sorted({results.run_hash(r.id) for r in (runs if runs is not None else experiment.runs)})}
    last = sweeps[-1] if sweeps else {}
    if last.get("id") and all(last.get(k) == v for k, v in entry.items()):
        return last["id"]  # the same command again (a resume): record_sweep times it as its own sweep
    entry = {"id": f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{len(sweeps)}",
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}
    results.write_json(path, {"name": experiment.name, "expect": experiment.expect, "source": experiment.source,
                              "about": experiment.about, "sweeps": [*sweeps, entry]})
    return entry["id"]


def record_sweep(out: Path, name: str, outcomes: list[Outcome], seconds: float, jobs: int, executor: str,
                 sweep_id: str | None = None) -> None:
    """Add one sweep's wall-clock time and machine to its entry in ``experiment.json``, for the report."""
    import platform

    from gradlab.expectations import EXPERIMENT_FILE

    path = Path(out) / name / EXPERIMENT_FILE
    doc = results.read_json(path) if path.exists() else {"name": name}
    sweeps = doc.setdefault("sweeps", [])
    timing = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 1),
        "trained": sum(o.status != "skipped" for o in outcomes), "failed": sum(o.status == "failed" for o in outcomes),
        "jobs": jobs, "executor": executor, "host": platform.node(), "machine": platform.machine(),
        "cpu_count": os.cpu_count()}
    entry = next((s for s in sweeps if sweep_id and s.get("id") == sweep_id), None)
    if entry is None:
        sweeps.append(timing)
    elif "seconds" in entry:  # a resume of a timed sweep: its own entry, the same command
        sweeps.append({**{k: entry[k] for k in ("source", "set", "expect", "runs") if k in entry},
                       "id": f"{entry['id']}-{len(sweeps)}", **timing})
    else:
        entry.update(timing)
    results.write_json(path, doc)


def run_dir(out: Path, name: str, run: Run) -> Path:
    """``<out>/<name>/<run id>``, or the directory an earlier sweep gave the same resolved config.

    The id's readable part depends on the grid (key order; a value set in the
    grid or in the base config), its hash only on the resolved config: a
    directory with the same hash is this run's, a finished one first. So
    reordering a grid neither re-trains a run nor stores it twice.
    """
    root = Path(out) / name
    own = root / run.id
    digest = results.run_hash(run.id)
    others = sorted(p for p in root.glob(f"*_{digest}") if p != own and p.is_dir()) if digest != run.id else []
    candidates = [own, *others]
    finished = [p for p in candidates if is_done(p)]
    return (finished or [p for p in candidates if p.is_dir()] or [own])[0]


def is_done(path: Path) -> bool:
    return results.is_finished(path) and results.read_json(path / results.SUMMARY).get("status") == "ok"


def select(runs: list[Run], shard: tuple[int, int] | None) -> list[Run]:
    """``shard=(i, n)``, 1 ≤ i ≤ n: every n-th run starting at the i-th, so n shards cover each run once."""
    if shard is None:
        return runs
    i, n = shard
    return runs[i - 1::n]


def plan(name: str, runs: list[Run], out: Path, force: bool = False) -> tuple[list[Run], list[Run]]:
    """Split runs into (to run, already done)."""
    todo, done = [], []
    for run in runs:
        (done if not force and is_done(run_dir(out, name, run)) else todo).append(run)
    return todo, done


def train_run(run: Run, progress=None) -> dict:
    """Train one run, catching everything: the payload the driver writes to disk."""
    from gradlab.training import environment, train

    rows: list[dict] = []
    try:
        return {**train(run.config, progress=progress, rows=rows), "error": None, "traceback": None}
    except Exception as e:  # a failing run is recorded; the sweep goes on
        try:
            env = environment(run.config)
        except Exception:
            env = {}
        error = f"{type(e).__name__}: {e}"
        return {"summary": {"status": "failed", "error": error}, "rows": rows, "env": env, "profile": None,
                "error": error, "traceback": traceback.format_exc()}


def store(run: Run, path: Path, payload: dict) -> Outcome:
    results.save_run(path, run.config, payload["env"], payload["rows"], payload["summary"],
                     error=payload["traceback"], profile=payload.get("profile"))
    status = "failed" if payload["error"] else "ok"
    return Outcome(run, path, status, payload["summary"], payload["error"])


def _worker(run: Run, messages) -> dict:
    """Runs in a worker process: train, reporting progress at most every PROGRESS_INTERVAL."""
    last = [0.0]

    def progress(step, steps):
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL or step == steps:
            last[0] = now
            messages.put((run.id, step, steps))

    return train_run(run, progress)


class ExecutorUnavailable(Exception):
    """The chosen executor cannot start here (e.g. Ray is not installed)."""


EXECUTORS = ("local", "ray")


def run_sweep(name: str, runs: list[Run], out: Path, *, jobs: int = 1, force: bool = False,
              executor: str = "local", address: str | None = None, on_event=None,
              sweep_id: str | None = None) -> list[Outcome]:
    """Train every run not already done, ``jobs`` at a time; return one Outcome per run.

    executor ``local``: ``jobs`` worker processes on this machine. ``ray``: one Ray
    task per run (one CPU each, one GPU for a CUDA run) on the cluster at
    ``address`` or on a local Ray instance; results come back to this process,
    which writes them.

    on_event(event, run, **info) reports progress to the caller: ``step``
    (step, steps) while a run trains, ``done`` (outcome) when it is stored or
    found already done. Training itself never prints. ``sweep_id``: the entry
    ``record_experiment`` made in ``experiment.json``, which gets this sweep's timing.
    """
    notify = on_event or (lambda *a, **k: None)
    started = time.monotonic()
    todo, done = plan(name, runs, out, force)
    outcomes = {}
    for run in done:
        path = run_dir(out, name, run)
        outcomes[run.id] = Outcome(run, path, "skipped", results.read_json(path / results.SUMMARY))
        notify("done", run, outcome=outcomes[run.id])
    if executor == "ray" and todo:  # nothing left: no Ray import, no cluster started or joined
        for outcome in _run_ray(name, todo, out, address, notify):
            outcomes[outcome.run.id] = outcome
    elif jobs <= 1 or len(todo) <= 1:
        for run in todo:
            payload = train_run(run, lambda s, n, run=run: notify("step", run, step=s, steps=n))
            outcomes[run.id] = store(run, run_dir(out, name, run), payload)
            notify("done", run, outcome=outcomes[run.id])
    else:
        for outcome in _run_parallel(name, todo, out, jobs, notify):
            outcomes[outcome.run.id] = outcome
    if todo:
        record_sweep(out, name, [outcomes[r.id] for r in todo], time.monotonic() - started, jobs, executor,
                     sweep_id)
    return [outcomes[r.id] for r in runs]


def _run_parallel(name, todo, out, jobs, notify):
    # spawn, not fork: a forked torch process can deadlock on its thread pools
    ctx = multiprocessing.get_context("spawn")
    by_id = {r.id: r for r in todo}
    waiting = list(reversed(todo))  # .pop() gives the next run in order
    with ctx.Manager() as manager:
        messages = manager.Queue()
        stop = threading.Event()

        def relay():  # worker progress -> the caller's callback, on this process's side
            while not stop.is_set():
                try:
                    run_id, step, steps = messages.get(timeout=0.1)
                except queue.Empty:
                    continue
                notify("step", by_id[run_id], step=step, steps=steps)

        relay_thread = threading.Thread(target=relay, daemon=True)
        relay_thread.start()
        try:
            while waiting:  # a fresh pool for what is left each time a worker process dies
                yield from _pool_pass(ctx, jobs, waiting, messages, name, out, notify)
        finally:
            stop.set()
            relay_thread.join()


def _pool_pass(ctx, jobs, waiting, messages, name, out, notify):
    """Train runs from ``waiting`` on one process pool until none is left or a worker process dies.

    At most ``jobs`` runs are submitted at a time, so the runs in flight are known:
    when a worker dies (segfault, out-of-memory kill, ``os._exit``) the pool breaks,
    those runs are recorded as failed, and the rest stay in ``waiting`` for a new pool.
    """
    running, broken = {}, False
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        while running or (waiting and not broken):
            while waiting and not broken and len(running) < jobs:
                run = waiting.pop()
                try:
                    running[pool.submit(_worker, run, messages)] = run
                except BrokenProcessPool:
                    waiting.append(run)
                    broken = True
            if not running:
                break
            in_flight = len(running)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                run = running.pop(f)
                try:
                    payload = f.result()
                except BrokenProcessPool as e:
                    broken = True
                    payload = _lost(e, f"a worker process died (crash, out-of-memory kill or exit) while this run "
                                       f"was one of {in_flight} in flight; runs not started yet go on in a new pool")
                except Exception as e:  # the payload could not come back
                    payload = _lost(e)
                outcome = store(run, run_dir(out, name, run), payload)
                notify("done", run, outcome=outcome)
                yield outcome


def _lost(e: BaseException, why: str = "worker lost") -> dict:
    """The payload of a run whose worker died before it could report."""
    error = f"{why}: {type(e).__name__}: {e}"
    return {"summary": {"status": "failed", "error": error}, "rows": [], "env": {}, "profile": None,
            "error": error, "traceback": traceback.format_exc()}


RAY_RETRIES = 3  # re-submissions of a run whose worker process or node was lost


def _run_ray(name, todo, out, address, notify):
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable("the ray executor needs Ray: pip install 'gradlab[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # max_retries re-runs a task whose worker died; exceptions inside training are caught
    # by train_run and come back as a failed payload, so they are never retried
    remote = ray.remote(max_retries=RAY_RETRIES, num_cpus=1)(train_run)
    refs = {}
    for run in todo:
        gpus = 1 if run.config["device"].startswith("cuda") else 0
        refs[remote.options(num_gpus=gpus).remote(run)] = run
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        run = refs[ready[0]]
        try:
            payload = ray.get(ready[0])
        except Exception as e:  # lost beyond the retries
            payload = _lost(e)
        outcome = store(run, run_dir(out, name, run), payload)
        notify("done", run, outcome=outcome)
        yield outcome
