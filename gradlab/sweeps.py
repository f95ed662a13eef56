"""Run every point of an experiment's grid, in parallel, and store each result on disk.

Workers only train: each returns its run's summary, metric rows and
environment (or its error and traceback) to the driver, and the driver writes
the run directory. So an executor needs no shared filesystem, and a worker
that dies leaves nothing half-written.

Resuming: a run whose directory holds a successful ``summary.json`` and every
file it promises is done and skipped (a directory belongs to a run by the hash
of its resolved config, the end of the run id; see ``run_dir``); failed and
interrupted runs are run again, and so are runs whose ``config.json`` is damaged. A
directory of the run's hash that holds another run's whole config (a hash collision) is
never taken for the run: the sweep stops with ``RunCollision``. A run that raises is
recorded as failed, with what it had computed, and the sweep goes on; so does a sweep whose worker
process dies (a segfault, an out-of-memory kill): the run it was training is
recorded as failed.

Concurrent sweeps on one folder: the driver trains a run only while it holds
the run's lock (``results.lock``); a run another live process holds is left to
it and waited for at the end, so no run is trained twice.

Signals: SIGINT, SIGTERM and SIGHUP end the sweep at once (``Interrupted``): the runs
stored so far stay, the workers are killed, the runs in flight are not stored.
Workers ignore these signals (the driver ends them) and exit when the driver is
gone, even after a ``kill -9``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradlab import results
from gradlab.config import Run, holds_run, legacy_dirs
from gradlab.vocabulary import EXPERIMENT_FILE, EXPERIMENT_LOCK, SELECTION_DIR
from gradlab.workers import SIGNALS, lost, max_jobs, run_parallel, train_run


@dataclass
class Outcome:
    run: Run
    dir: Path
    status: str            # ok | failed | skipped (done before) | elsewhere (trained meanwhile by another process)
    summary: dict | None
    error: str | None = None


def preflight(runs: list[Run], executor: str = "local") -> list[str]:
    """Problems that would fail every run on this machine, found before any training.

    Only the local executor trains here: Ray's workers run on the cluster's nodes
    (a CPU-only head node can drive GPU workers) and each run checks its own device.
    """
    cuda = sorted({r.config["device"] for r in runs if r.config["device"].startswith("cuda")})
    if executor != "local" or not cuda:  # a CPU sweep's driver need not import torch for this
        return []
    import torch

    problems = []
    for device in cuda:
        if not torch.cuda.is_available():
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
    path = Path(out) / experiment.name / EXPERIMENT_FILE
    sweeps = read_experiment(path).get("sweeps", [])
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

    path = Path(out) / name / EXPERIMENT_FILE
    doc = read_experiment(path) or {"name": name}
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


def read_experiment(path: Path) -> dict:
    """``experiment.json`` at ``path`` as a dict whose ``sweeps`` is a list of dicts; {} when there is none.

    A damaged one (cut short, not UTF-8, or JSON of another shape) is moved aside to
    ``experiment.json.damaged`` (``results.DAMAGED``; see ``set_aside``), kept for whoever wants its
    history, and {} returned: the sweep writes a new record and every run stays. So the readers' advice
    ("gradlab run writes it again", ``cli.errors``) holds. Call it holding ``experiment_lock``.
    """
    if not path.exists():
        return {}
    if not experiment_damaged(path.parent.parent, path.parent.name):
        return results.read_json(path)
    set_aside(path)
    return {}


def set_aside(path: Path) -> None:
    """Move the damaged ``path`` to ``<path>.damaged``, and the one an earlier sweep set aside there to
    ``<path>.damaged.N``, N one past the highest there: none is overwritten, the latest keeps the name the
    readers' advice gives (``cli.errors``), the numbered ones are oldest first. Call it holding
    ``experiment_lock`` (a crash between the two moves leaves the damaged file in place, for the next)."""
    kept = path.with_name(path.name + results.DAMAGED)
    if os.path.lexists(kept):
        numbers = [int(p.suffix[1:]) for p in path.parent.glob(f"{kept.name}.*") if p.suffix[1:].isdigit()]
        os.replace(kept, kept.with_name(f"{kept.name}.{max(numbers, default=0) + 1}"))
    os.replace(path, kept)


def experiment_damaged(out: Path, name: str) -> bool:
    """``<out>/<name>/experiment.json`` exists and ``read_experiment`` would move it aside: ``gradlab run``
    then rewrites it even with nothing to train."""
    path = Path(out) / name / EXPERIMENT_FILE
    if not os.path.lexists(path):
        return False
    try:  # damaged as the readers find it (results.experiment_problem), so their advice holds
        return results.experiment_problem(results.json_object(path)) is not None
    except results.Damaged:
        return True


class RunCollision(Exception):
    """A directory named for a run (its hash) holds the config of another run: a hash collision, which
    must never make a run look done. The message names the directory and says what to do."""


def run_dir(out: Path, name: str, run: Run) -> Path:
    """``<out>/<name>/<run id>``, or the directory an earlier sweep gave the same resolved config.

    The id's readable part depends on the grid (key order; a value set in the
    grid or in the base config), its hash only on the resolved config: a
    directory with the same hash is this run's, a finished one first. So
    reordering a grid neither re-trains a run nor stores it twice. A directory whose config.json is
    damaged is the run's to redo; one holding another run's whole config is a hash collision
    (``config.holds_run``), and raises ``RunCollision``.
    """
    root = Path(out) / name
    own = root / run.id
    digest = results.run_hash(run.id)
    others = sorted(p for p in root.glob(f"*_{digest}") if p != own and p.is_dir()) if digest != run.id else []
    candidates = [own, *others, *legacy_dirs(root, run)]  # and an older gradlab's 8-digit name for it
    for p in candidates:
        if p.is_dir() and holds_run(p, run) is False:
            raise RunCollision(f"{p}: holds another run's config under the hash {digest} of {run.id} (a hash "
                               "collision): move that directory out of the folder, then run again")
    finished = [p for p in candidates if is_done(p, run)]
    return (finished or [p for p in candidates if p.is_dir()] or [own])[0]


def is_done(path: Path, run: Run) -> bool:
    """``run``, successful, with every file its summary promises (a damaged directory is run again)."""
    return (results.is_finished(path) and results.read_json(path / results.SUMMARY).get("status") == "ok"
            and not results.missing_files(path) and holds_run(path, run) is True)


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
        (done if not force and is_done(run_dir(out, name, run), run) else todo).append(run)
    return todo, done


class ExecutorUnavailable(Exception):
    """The chosen executor cannot start here (e.g. Ray is not installed)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP ended the sweep: the runs stored before it are kept, those in flight are not.

    A KeyboardInterrupt, so code that handles Ctrl-C handles SIGTERM and SIGHUP alike; ``signum``
    gives the exit code (128 + signum) and the counts what was kept.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.saved, self.in_flight, self.not_started = signum, 0, 0, 0



class _Signals:
    """While a sweep runs (main thread only): SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` once, except inside
    ``shield()`` (storing a run), whose end they wait for; a signal the process ignored stays ignored."""

    def __init__(self):
        self.signum, self.raised, self.shielded, self.old = None, False, False, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)

    def reinstall(self) -> None:
        """Take the signals back after a library replaced the handlers (``ray.init`` installs its own,
        which print a C++ stack dump and exit 1 on SIGTERM)."""
        for s in self.old:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        if not self.shielded:
            self._raise()

    def _raise(self):
        if self.signum is not None and not self.raised:  # a second signal does not cut the cleanup short
            self.raised = True
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def shield(self):
        self.shielded = True
        try:
            yield
        finally:
            self.shielded = False
        self._raise()


@dataclass
class _Sweep:
    """One sweep's state: which runs this process holds the lock of, what it stored, what others hold."""

    name: str
    out: Path
    force: bool
    notify: object
    signals: _Signals
    seen: dict = field(default_factory=dict)       # --force: run id -> its finished summary when the sweep began
    outcomes: dict = field(default_factory=dict)   # run id -> Outcome
    locks: dict = field(default_factory=dict)      # run id -> open lock file: the runs in flight
    elsewhere: list = field(default_factory=list)  # runs another live process holds
    saved: int = 0

    def claim(self, run: Run) -> Path | None:
        """Lock ``run`` and return its directory to train it into; None when another process holds it
        (kept in ``elsewhere``) or has finished it since ``plan`` (stored as an ``elsewhere`` outcome)."""
        lock = results.lock(results.run_lock(self.out / self.name, run.id))
        if lock is None:
            self.elsewhere.append(run)
            self.notify("elsewhere", run)
            return None
        path = run_dir(self.out, self.name, run)
        if is_done(path, run) and (not self.force or finished_as(path) != self.seen.get(run.id)):
            # done, and with --force done anew since this sweep began (another --force sweep): fresh
            lock.close()
            self.outcomes[run.id] = Outcome(run, path, "elsewhere", results.read_json(path / results.SUMMARY))
            self.notify("done", run, outcome=self.outcomes[run.id])
            return None
        self.locks[run.id] = lock
        return path

    def store(self, run: Run, path: Path, payload: dict) -> Outcome:
        """Write a trained run (a signal meanwhile waits for the end of it) and release its lock."""
        with self.signals.shield():
            try:
                outcome = store(run, path, payload)
            finally:
                self.locks.pop(run.id).close()
            self.saved += 1
            self.outcomes[run.id] = outcome
        self.notify("done", run, outcome=outcome)
        return outcome

    def wait_elsewhere(self) -> list[Run]:
        """Wait until the other processes release the runs they held; return those runs to look at again
        (done by then: an ``elsewhere`` outcome; if the other process died or was stopped: trained here)."""
        runs, self.elsewhere = self.elsewhere, []
        for run in runs:
            results.lock(results.run_lock(self.out / self.name, run.id), wait=True).close()
        return runs

    def release(self) -> None:
        for lock in self.locks.values():
            lock.close()
        self.locks.clear()


def finished_as(path: Path) -> tuple | None:
    """Which write of ``path``'s summary.json is there: (directory, inode, mtime); a rewrite (an atomic
    rename) gives another inode. --force re-trains the runs finished when the sweep began, not the
    ones another --force sweep on the folder has trained since (``_Sweep.claim``)."""
    try:
        st = (path / results.SUMMARY).stat()
    except OSError:
        return None
    return str(path), st.st_ino, st.st_mtime_ns


def store(run: Run, path: Path, payload: dict) -> Outcome:
    """Write a run's directory. If that fails (a full disk), the run is recorded as failed where the
    disk still allows and has no earlier record, and the error, naming the file, goes on up."""
    try:
        results.save_run(path, run.config, payload["env"], payload["rows"], payload["summary"],
                         error=payload["traceback"], profile=payload.get("profile"))
    except OSError as e:
        if not results.is_finished(path):
            error = f"could not store the results: {e.filename}: {e.strerror}"
            with contextlib.suppress(OSError):
                results.save_run(path, run.config, {}, [], {"status": "failed", "error": error}, error=error)
        raise
    status = "failed" if payload["error"] else "ok"
    return Outcome(run, path, status, payload["summary"], payload["error"])


@contextlib.contextmanager
def experiment_lock(out: Path, name: str):
    """Hold while reading and rewriting ``experiment.json``: two sweeps on one folder keep both records.

    Its holder first removes the experiment folder's ``.tmp`` files that a killed writer left
    (``results.remove_stale_temporaries``; a run directory's go with the run's next write)."""
    folder = Path(out) / name
    with contextlib.closing(results.lock(folder / EXPERIMENT_LOCK, wait=True)):
        for where in (folder, folder / SELECTION_DIR):
            results.remove_stale_temporaries(where)
        yield


def run_sweep(name: str, runs: list[Run], out: Path, *, jobs: int = 1, force: bool = False,
              executor: str = "local", address: str | None = None, on_event=None,
              sweep_id: str | None = None, record: bool = True) -> list[Outcome]:
    """Train every run not already done, ``jobs`` at a time; return one Outcome per run.

    executor ``local``: ``jobs`` worker processes on this machine. ``ray``: one Ray
    task per run (one CPU each, one GPU for a CUDA run) on the cluster at
    ``address`` or on a local Ray instance; results come back to this process,
    which writes them.

    A run another process is training (it holds the run's lock) is left to it;
    once the rest is done the sweep waits for it and takes its result (outcome
    ``elsewhere``), or trains it if that process stopped without finishing it.
    SIGINT, SIGTERM or SIGHUP raise ``Interrupted`` (with what was kept) after killing the
    workers; the runs stored before it are whole, those in flight not written.

    on_event(event, run, **info) reports progress to the caller: ``step``
    (step, steps) while a run trains, ``done`` (outcome) when it is stored or
    found already done, ``elsewhere`` when another process holds it. Training
    itself never prints. ``sweep_id``: the entry ``record_experiment`` made in
    ``experiment.json``, which gets this sweep's timing; ``record=False``: no
    ``experiment.json`` is written (a tuned experiment's selection runs; see gradlab.tuning).
    """
    notify = on_event or (lambda *a, **k: None)
    if executor == "local" and jobs > max_jobs():
        raise ValueError(f"jobs={jobs}: at most {max_jobs()} (4 per core)")
    started = time.monotonic()
    todo, done = plan(name, runs, out, force)
    if not todo:  # nothing to record, so no experiment_lock below: a killed writer's .tmp files go here
        for where in (Path(out) / name, Path(out) / name / SELECTION_DIR):
            results.remove_stale_temporaries(where)  # only a dead writer's; a read-only folder keeps them
    seen = {r.id: finished_as(run_dir(out, name, r)) for r in todo} if force else {}
    for run in done:
        path = run_dir(out, name, run)
        notify("done", run, outcome=Outcome(run, path, "skipped", results.read_json(path / results.SUMMARY)))
    with _Signals() as signals:
        sweep = _Sweep(name, Path(out), force, notify, signals, seen)
        try:
            waiting = todo
            while waiting:  # a second round only for the runs other processes held
                if executor == "ray":  # nothing left: no Ray import, no cluster started or joined
                    _run_ray(waiting, address, sweep)
                elif jobs <= 1 or len(waiting) <= 1:
                    _run_serial(waiting, sweep)
                else:
                    run_parallel(waiting, jobs, sweep)
                waiting = sweep.wait_elsewhere()
            outcomes = {o.run.id: o for o in sweep.outcomes.values()}
            if todo and record:
                with signals.shield(), experiment_lock(out, name):
                    record_sweep(out, name, [outcomes[r.id] for r in todo if outcomes[r.id].status != "elsewhere"],
                                 time.monotonic() - started, jobs, executor, sweep_id)
        except Interrupted as e:
            e.saved, e.in_flight = sweep.saved, len(sweep.locks)
            e.not_started = len(todo) - len(sweep.outcomes) - e.in_flight
            raise
        finally:
            sweep.release()
    for run in done:
        path = run_dir(out, name, run)
        outcomes[run.id] = Outcome(run, path, "skipped", results.read_json(path / results.SUMMARY))
    return [outcomes[r.id] for r in runs]


def _run_serial(waiting: list[Run], sweep: _Sweep) -> None:
    for run in waiting:
        path = sweep.claim(run)
        if path is not None:
            payload = train_run(run, lambda s, n, run=run: sweep.notify("step", run, step=s, steps=n))
            sweep.store(run, path, payload)


RAY_RETRIES = 3  # re-submissions of a run whose worker process or node was lost


def _run_ray(waiting: list[Run], address: str | None, sweep: _Sweep) -> None:
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable("the ray executor needs Ray: pip install 'gradlab[ray]'") from None
    ours = not ray.is_initialized()
    watchdog = None
    if ours:
        watchdog = RayWatchdog.start() if address is None else None  # a local instance: ours to clean up
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        sweep.signals.reinstall()
        if watchdog:
            watchdog.adopt()
    # max_retries re-runs a task whose worker died; exceptions inside training are caught
    # by train_run and come back as a failed payload, so they are never retried
    remote = ray.remote(max_retries=RAY_RETRIES, num_cpus=1)(train_run)
    refs = {}
    try:
        for run in waiting:
            path = sweep.claim(run)
            if path is not None:
                gpus = 1 if run.config["device"].startswith("cuda") else 0
                refs[remote.options(num_gpus=gpus).remote(run)] = (run, path)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)  # a timeout: signals get a turn
            if watchdog:
                watchdog.watch()  # the worker processes Ray started meanwhile
            for ref in ready:
                run, path = refs.pop(ref)
                try:
                    payload = ray.get(ref)
                except Exception as e:  # lost beyond the retries
                    payload = lost(e)
                sweep.store(run, path, payload)
    except BaseException as e:  # interrupted: cancel what is left and leave no Ray process of ours behind
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if ours:
            with contextlib.suppress(Exception):
                ray.shutdown()
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted) and sweep.signals.signum:
            # ray.wait runs the handler in C++ and raises a bare KeyboardInterrupt for what it raised
            raise Interrupted(sweep.signals.signum) from None
        raise


# The watchdog's program: read "pid start-time" lines until the driver's end of the pipe closes (its exit,
# even by kill -9), then kill each listed process that is still the same one (its start time matches). A
# line it cannot read (the last one, cut by the kill) is skipped: the others are still killed.
RAY_WATCHDOG = """\
import os, signal, sys
listed = []
for line in sys.stdin:
    fields = line.split()
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
        listed.append(fields)
for pid, start in listed:
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[19] == start:
                os.kill(int(pid), signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
"""


class RayWatchdog:
    """Ends the processes of the local Ray instance a sweep started when its driver ends, however it ends.

    ``ray.init`` without an address starts a head node from the driver: its direct children (GCS, raylet,
    log monitor, dashboard and runtime-env agents), whose children are the agents and the workers. The
    raylet and GCS end with the driver, but after a ``kill -9`` of the driver the agents wait on the dead
    GCS for 60 to 120 s before they exit (measured with Ray 2.60). This process, started before Ray, is
    told (``watch``) the pids of the driver's children that ``ray.init`` started (``adopt``: not there
    before it) and of their descendants, and kills them once the driver is gone: a pipe it reads closes
    when the driver exits (Ray stays up between sweeps of one process, as ``ray.init`` left it). No other
    process of the driver's is listed: used as a library (a notebook, pytest), the caller's own children
    outlive it as they would without gradlab. A clean exit has shut Ray down already (its ``atexit``): what
    is listed is gone, or another process by then, and nothing is killed. Linux only (/proc); elsewhere
    Ray's own clean-up is all there is.
    """

    def __init__(self, process, before: set):
        self.process, self.before, self.ray, self.told = process, before, set(), set()

    @classmethod
    def start(cls) -> RayWatchdog | None:
        """Start the watchdog, and note the driver's children before ``ray.init`` (call it just before)."""
        import subprocess
        import sys

        if not sys.platform.startswith("linux"):
            return None
        from gradlab.workers import _starting

        with _starting():  # it ignores the sweep's signals from its first instruction: a Ctrl-C to the group
            process = subprocess.Popen([sys.executable, "-c", RAY_WATCHDOG], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        watchdog = cls(process, children(os.getpid(), process_table()))
        cls.started.append(watchdog)  # referenced: a collected pipe would close, and the watchdog end Ray
        return watchdog

    started: list = []  # the watchdogs of this process: each lives until the driver ends (a pipe kept open)

    def adopt(self) -> None:
        """Just after ``ray.init``: the driver's children it started are Ray's; tell the watchdog about them."""
        self.ray = children(os.getpid(), process_table()) - self.before  # the watchdog is in ``before``
        self.watch()

    def watch(self) -> None:
        """Tell the watchdog about Ray's processes (``adopt``) it does not know yet: the workers and agents
        the head node's processes started meanwhile."""
        new = [p for p in descendants(self.ray, process_table()) if p not in self.told]
        if new:
            with contextlib.suppress(OSError):
                self.process.stdin.write("".join(f"{pid} {start}\n" for pid, start in new))
                self.process.stdin.flush()
            self.told.update(new)


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live process (zombies left out), from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()  # state ppid ... starttime (the 20th)
            if fields[0] != "Z":
                table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def children(pid: int, table: dict) -> set[tuple[int, str]]:
    """(pid, start time) of the live children of ``pid``."""
    return {(p, start) for p, (parent, start) in table.items() if parent == pid}


def descendants(roots: set[tuple[int, str]], table: dict) -> list[tuple[int, str]]:
    """(pid, start time) of each of ``roots`` still the same process (its start time) and of every live
    descendant of those."""
    found = [(p, start) for p, start in roots if table.get(p, (None, None))[1] == start]
    frontier = {p for p, _ in found}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier}
        found += [(p, table[p][1]) for p in sorted(frontier)]
    return found
