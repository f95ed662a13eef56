"""Fault injection: signals to a sweep's driver and to its process group, two sweeps on one folder, killed
helper processes, a full disk, a read-only results archive, damaged run directories.

Each test provokes the fault for real where the machine allows it (signals, SIGKILL, a second process,
a small tmpfs and a read-only mount when running as root) and checks what the user is promised: the
exit code, one line on stderr and no traceback, no process left behind, every saved run whole, and a
re-run that ends with the results of an uninterrupted sweep, byte for byte.
GRADLAB_FAULT_TRIALS=n repeats each signal trial n times, and GRADLAB_FAULT_LOG=FILE appends one JSON
line per trial (signal, exit code, seconds to exit, runs saved): the README's figures.
"""

import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradlab import results
from gradlab.cli import app
from gradlab.config import load
from gradlab.sweeps import finished_as, run_sweep
from gradlab.workers import SIGNALS

runner = CliRunner()
TRIALS = int(os.environ.get("GRADLAB_FAULT_TRIALS", "1"))
SWEEP = """\
name: faults
task: {name: adding, length: 10, eval_size: 16}
model: {hidden: 8}
train: {steps: STEPS, batch_size: 8, eval_every: 10}
seeds: [0, 1]
grid:
  model.cell: [vanilla, gru]
"""


def config(tmp_path: Path, steps: int = 20) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(SWEEP.replace("STEPS", str(steps)))
    return path


def start(path: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``gradlab run`` in its own session, so its process group and every descendant can be found.

    With the signals the tests send at their default disposition: a suite started under ``nohup`` ignores
    SIGHUP, one started with ``&`` from a non-interactive shell ignores SIGINT (POSIX), a child inherits
    that, and gradlab rightly leaves an ignored signal ignored, so such a test would wait for ever."""
    return subprocess.Popen([sys.executable, "-m", "gradlab", "run", str(path), "--out", str(out), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
                            preexec_fn=_default_signals)


def _default_signals() -> None:
    for s in SIGNALS:  # the signals a sweep handles (gradlab.workers), the ones these tests send
        signal.signal(s, signal.SIG_DFL)


class Gate:
    """Holds every run of a ``gradlab run`` started with ``env=gate.env`` just before it trains, until
    ``release()`` (or the end of the ``with``): the test waits for ``held()`` (the runs that reached the
    gate), an event, instead of guessing how long training takes (``tests/gate/sitecustomize.py``)."""

    def __init__(self, where: Path):
        where.mkdir()
        self.dir, self.lock = where, open(where / "gate", "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        path = os.pathsep.join(p for p in (str(Path(__file__).parent / "gate"), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "GRADLAB_TEST_GATE": str(where)}

    def held(self) -> list[str]:
        """``<run id>.<pid>`` of each run a process has brought to the gate, in no particular order."""
        return [p.name.removesuffix(".started") for p in self.dir.glob("*.started")]

    def release(self) -> None:
        self.lock.close()  # closing drops the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def session(sid: int) -> list[str]:
    """Live processes of session ``sid`` (zombies left to a non-reaping init do not count), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()  # state ppid pgrp session ...
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
    return found


def left_behind(sid: int, within: float = 30.0) -> list[str]:
    """The processes of session ``sid`` still alive after they had ``within`` seconds to exit: a bound on
    a hang (they go in under a second), not a measure."""
    deadline = time.monotonic() + within
    while (alive := session(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of ``pid``, oldest first."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                start_time = int(fields[19])
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((start_time, int(stat.parent.name), cmd))
    return [(p, cmd) for _, p, cmd in sorted(found)]


def fork_servers(pid: int) -> list[int]:
    """The multiprocessing fork server ``pid`` started (Linux: its workers are forked from it)."""
    return [p for p, cmd in children(pid) if "forkserver import main" in cmd]


def spawned(pid: int) -> list[int]:
    """The worker processes of the sweep driven by ``pid``, oldest first: its spawned children, or the
    children of its fork server."""
    return [p for p, cmd in children(pid) if "spawn_main" in cmd] + [
        p for server in fork_servers(pid) for p, _ in children(server)]


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the sweep did not get there in time"
        time.sleep(0.02)


def snapshot(root: Path) -> dict[str, dict]:
    """Every run's metrics.csv and summary (less its timings) and profile, by run id."""
    found = {}
    for d in results.find_runs(root):
        summary = results.read_json(d / "summary.json")
        found[d.name] = {"metrics": (d / "metrics.csv").read_bytes(), "profile": results.read_profile(d),
                         "summary": {k: v for k, v in summary.items() if k not in ("wall_seconds", "steps_per_second")}}
    return found


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for run_id in a:
        assert a[run_id]["metrics"] == b[run_id]["metrics"], run_id  # byte-identical
        assert a[run_id]["summary"] == b[run_id]["summary"], run_id
        np.testing.assert_array_equal(a[run_id]["profile"]["grad_norm"], b[run_id]["profile"]["grad_norm"])


def assert_whole(root: Path, killed: int | None = None) -> None:
    """Every directory that looks finished is a whole, successful run; nothing half-written is left.

    ``killed``: the pid of a driver that got SIGKILL, which nothing can clean up after. A write it
    was staging may leave its ``.tmp`` files, but only in a directory without ``summary.json`` (no
    run), each named for that driver, now dead (``results.stale_temporary``), for the next write
    there to remove.
    """
    assert not results.incomplete_runs(root)
    for d in results.find_runs(root):
        assert results.read_json(d / "summary.json")["status"] == "ok", d
    left = list(root.rglob("*.tmp"))
    if killed is not None:
        assert all(not results.is_finished(p.parent) and f".{killed}." in p.name and results.stale_temporary(p)
                   for p in left), left
    else:
        assert not left


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted sweep, trained in this process (serially: ``--jobs 2`` gives the same bytes)."""
    tmp = tmp_path_factory.mktemp("reference")
    name, runs = load(config(tmp))
    run_sweep(name, runs, tmp / "out", jobs=1)
    return snapshot(tmp / "out")


KILLS = [("SIGINT", "driver", 130, 2), ("SIGTERM", "driver", 143, 2), ("SIGINT", "group", 130, 2),
         ("SIGTERM", "group", 143, 2), ("SIGKILL", "driver", -9, 2), ("SIGINT", "group", 130, 1)]


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("sig,target,code,jobs", KILLS)
def test_a_signal_ends_the_sweep_at_once_keeping_every_saved_run(tmp_path, reference, sig, target, code, jobs,
                                                                   trial):
    path, out = config(tmp_path), tmp_path / "out"
    proc = start(path, out, "--jobs", str(jobs))
    # a random moment: while the workers start or the first runs train (k = 0), or just after the k-th run
    # is stored, while the next ones are stored or train
    rng = random.Random(f"{sig}{target}{jobs}{trial}")
    k = rng.randrange(4)
    if k == 0 and jobs > 1:
        wait_for(lambda: len(spawned(proc.pid)) >= 2 or proc.poll() is not None)
    wait_for(lambda: len(list(out.rglob("summary.json"))) >= k or proc.poll() is not None)
    time.sleep(rng.uniform(0, 2.5 if k == 0 else 0.3))
    signalled = time.monotonic()
    (os.killpg if target == "group" else os.kill)(proc.pid, getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    seconds = time.monotonic() - signalled  # logged for the README's figures, never asserted: machines differ
    stderr = stderr.decode()
    finished = len(results.find_runs(out)) == 4  # the signal came after the sweep: it may exit 0 (or die)
    assert proc.returncode == code or (finished and proc.returncode in (0, -getattr(signal, sig))), stderr
    assert left_behind(proc.pid) == []  # workers, resource tracker: none outlives the sweep
    assert "Traceback" not in stderr
    if proc.returncode == code and sig != "SIGKILL":
        [line] = stderr.splitlines()  # one line saying what was kept
        assert line.startswith(f"error: interrupted by {sig}: "), line
        if "in flight" in line:  # during the sweep: its counts are true
            assert int(line.split(": ")[2].split()[0]) == len(results.find_runs(out))
    assert_whole(out, killed=proc.pid if sig == "SIGKILL" else None)
    saved = snapshot(out)
    if os.environ.get("GRADLAB_FAULT_LOG"):
        with open(os.environ["GRADLAB_FAULT_LOG"], "a") as log:
            log.write(json.dumps({"signal": sig, "to": target, "jobs": jobs, "exit": proc.returncode,
                                  "seconds": round(seconds, 2), "saved": len(saved)}) + "\n")
    for run_id in saved:  # what was saved is what an uninterrupted sweep gives
        assert saved[run_id]["metrics"] == reference[run_id]["metrics"]
    again = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"])
    assert again.exit_code == 0, again.output
    assert_whole(out)  # the re-run removed what a killed write had staged
    assert_same(snapshot(out), reference)


def test_a_sweep_with_nothing_left_to_train_removes_what_a_killed_record_left(tmp_path):
    """A driver killed while it wrote experiment.json after its last run leaves the record's .tmp; the next
    sweep finds every run done, records nothing, and must still remove it (found by a kill -9 trial)."""
    name, runs = load(config(tmp_path, steps=2))
    out = tmp_path / "out"
    run_sweep(name, runs, out, jobs=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid no live process has (until the system reuses it)
    stale = out / name / f".experiment.json.{dead.pid}.abc123.tmp"
    stale.write_text("{")
    outcomes = run_sweep(name, runs, out, jobs=1)
    assert {o.status for o in outcomes} == {"skipped"} and not stale.exists()
    assert_whole(out)


def test_two_sweeps_on_one_folder_train_each_run_once(tmp_path, reference):
    path, out = config(tmp_path), tmp_path / "out"
    procs = [start(path, out, "--jobs", jobs) for jobs in ("2", "1")]  # the parallel and the serial path
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()
        assert "error" not in stderr.decode() and "Traceback" not in stderr.decode()
    sweeps = results.read_json(out / "faults" / "experiment.json")["sweeps"]
    assert sum(s["trained"] for s in sweeps) == 4  # every run trained exactly once, by one of the two
    assert_whole(out)
    assert_same(snapshot(out), reference)


def test_a_run_another_process_holds_is_waited_for_and_a_dead_holder_is_taken_over(tmp_path, reference):
    name, runs = load(config(tmp_path))
    out = tmp_path / "out"
    lock = results.run_lock(out / name, runs[0].id)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(60)", str(lock)],
                              stdout=subprocess.PIPE)
    holder.stdout.readline()  # it holds the lock
    assert results.lock(lock) is None
    events = []

    def on_event(event, run, **info):
        if event == "elsewhere":
            events.append(run.id)
            holder.kill()  # the holder dies without writing: its lock is free at once

    outcomes = run_sweep(name, runs, out, jobs=1, on_event=on_event)
    holder.wait()
    assert events == [runs[0].id]
    assert [o.status for o in outcomes] == ["ok"] * 4  # the held run was trained here after its holder died
    assert_same(snapshot(out), reference)


@pytest.mark.parametrize("sig,code,jobs", [("SIGTERM", 143, 2), ("SIGINT", 130, 1), ("SIGHUP", 129, 2)])
def test_a_signal_does_not_wait_for_the_runs_in_flight(tmp_path, sig, code, jobs):
    """"At once" without a clock: the runs in flight are held at the gate and never finish while it is
    closed, so a sweep that waited for them would never exit (the timeout only bounds that hang)."""
    path, out = config(tmp_path), tmp_path / "out"
    with Gate(tmp_path / "gate") as gate:
        proc = start(path, out, "--jobs", str(jobs), env=gate.env)
        wait_for(lambda: len(gate.held()) >= jobs or proc.poll() is not None)
        os.kill(proc.pid, getattr(signal, sig))
        _, stderr = proc.communicate(timeout=120)
        assert left_behind(proc.pid) == []  # the held workers were killed, not waited for
    assert proc.returncode == code, stderr.decode()
    assert stderr.decode() == (f"error: interrupted by {sig}: 0 runs saved, {jobs} run{'s' * (jobs > 1)} in flight "
                               f"not saved, {4 - jobs} runs not started; the same command finishes the rest\n")
    assert not results.find_runs(out)
    assert_whole(out)


def test_killed_helper_processes_fail_no_run_and_print_nothing(tmp_path, reference):
    path, out = config(tmp_path), tmp_path / "out"
    with Gate(tmp_path / "gate") as gate:  # the sweep is held with both workers' first runs in flight
        proc = start(path, out, "--jobs", "2", env=gate.env)
        wait_for(lambda: len(gate.held()) >= 2 or proc.poll() is not None)
        helpers = [p for p, cmd in children(proc.pid) if "resource_tracker" in cmd]
        assert helpers, children(proc.pid)
        for pid in helpers:
            os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and stderr.decode() == "", stderr.decode()
    assert len(results.find_runs(out)) == 4
    assert_whole(out)
    assert_same(snapshot(out), reference)


def test_a_killed_fork_server_fails_only_the_runs_its_workers_had_in_flight(tmp_path):
    """The workers end with the server they were forked from (as with a killed driver); the driver
    records their runs as failed, starts a new server and goes on, and a re-run completes the sweep."""
    path, out = config(tmp_path), tmp_path / "out"
    with Gate(tmp_path / "gate") as gate:
        proc = start(path, out, "--jobs", "2", env=gate.env)
        wait_for(lambda: len(gate.held()) >= 2 or proc.poll() is not None)  # both workers hold their first run
        servers = fork_servers(proc.pid)
        if not servers:
            gate.release()
            proc.communicate(timeout=300)
            pytest.skip("the workers are spawned here, not forked from a server")
        os.kill(servers[0], signal.SIGKILL)
        wait_for(lambda: len(gate.held()) >= 4 or proc.poll() is not None)  # new workers took the other two
    _, stderr = proc.communicate(timeout=300)
    stderr = stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    failed = [line for line in stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("a worker process died" in line for line in failed), stderr
    assert stderr.splitlines()[-1] == "2 of 4 runs failed"
    assert len(results.find_runs(out)) == 4  # every run is recorded: the others trained in new workers
    assert left_behind(proc.pid) == []
    again = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "2", "-q"])
    assert again.exit_code == 0, again.output
    assert_whole(out)


@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """A tmpfs of ``size`` at ``where`` (needs root); None where the machine does not allow mounting."""
    where.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_names_the_file_and_loses_nothing_already_written(tmp_path, reference):
    path = config(tmp_path)
    with small_filesystem(tmp_path / "disk", "256k") as disk:
        if disk is None:
            pytest.skip("no tmpfs here (mounting needs root); the in-process ENOSPC test below still runs")
        out = disk / "out"
        assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
        before = snapshot(out)
        with contextlib.suppress(OSError):  # fill the disk to the last block
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        # room for experiment.json's new version and a file or two of a run: the run's files cannot all fit
        os.truncate(disk / "filler", (disk / "filler").stat().st_size - 3 * 4096)
        result = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q", "--force"])
        assert result.exit_code == 2, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {out}/") and line.endswith(": No space left on device"), line
        assert "Traceback" not in result.output
        assert_same(snapshot(out), before)  # the earlier results are whole and unchanged
        assert not [p for p in out.rglob("*.tmp")]


def test_a_run_that_cannot_be_stored_is_recorded_as_failed_where_the_disk_allows(tmp_path, monkeypatch):
    """ENOSPC injected in-process into the first write of a metrics.csv (the tmpfs test needs root)."""
    write, hits = results._write_synced, []

    def full_for_metrics(fd, text):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".metrics.csv." in name and not hits:
            os.close(fd)
            hits.append(name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name
        write(fd, text)

    monkeypatch.setattr(results, "_write_synced", full_for_metrics)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config(tmp_path)), "--out", str(out), "-j", "1", "-q"])
    assert result.exit_code == 2
    metrics = Path(hits[0]).parent / "metrics.csv"
    assert result.stderr == f"error: {metrics}: No space left on device\n"
    assert results.read_json(metrics.parent / "summary.json") == {
        "status": "failed", "error": f"could not store the results: {metrics}: No space left on device"}
    assert not results.incomplete_runs(out) and not list(out.rglob("*.tmp"))


@contextlib.contextmanager
def read_only(tree: Path):
    """``tree`` made read-only: a read-only bind mount over it for root (whom permissions do not stop),
    file modes otherwise."""
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(tree), str(tree)], capture_output=True).returncode != 0:
            pytest.skip("root cannot bind-mount here, and file modes do not stop root")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(tree)], check=True)
            yield
        finally:
            subprocess.run(["umount", "-l", str(tree)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [tree, *tree.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_a_read_only_finished_archive_runs_nothing_and_exits_0(tmp_path):
    path, out = config(tmp_path), tmp_path / "out"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
    with read_only(out):
        with pytest.raises(OSError):
            (out / "probe").write_text("x")
        result = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("0 to run, 4 already done")


def test_a_run_missing_a_file_its_summary_promises_is_not_done_and_compare_says_so(tmp_path):
    path, out = config(tmp_path, steps=2), tmp_path / "out"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
    damaged = results.find_runs(out)[0]
    (damaged / "config.json").unlink()
    compare = runner.invoke(app, ["compare", str(out), "-f", "json"])
    assert compare.exit_code == 0
    assert sum(r["runs"] for r in json.loads(compare.stdout)) == 3
    assert compare.stderr == f"skipped: {damaged / 'config.json'}: missing\n"
    dry = runner.invoke(app, ["run", str(path), "--out", str(out), "--dry-run"])
    assert f"run   {damaged}" in dry.stdout and "1 to run, 3 already done" in dry.stdout
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
    assert not results.incomplete_runs(out) and len(results.find_runs(out)) == 4


def test_a_cleanup_leaves_a_live_process_temporary_files_alone(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = run_dir / f".metrics.csv.{live.pid}.k2j4h1.tmp"  # another live process's write in progress
        dead = run_dir / ".metrics.csv.abcd1234.tmp"  # an older gradlab's, left by a killed write
        theirs.write_text("x")
        dead.write_text("x")
        results.save_run(run_dir, {}, {}, [{"kind": "train", "step": 1}], {"status": "ok"})
        assert theirs.exists() and not dead.exists()
    finally:
        live.kill()
        live.wait()
    assert results.stale_temporary(theirs)


WORKER_ALONE = """\
import multiprocessing, os, sys
from gradlab.config import load
from gradlab.workers import worker_main
name, runs = load(sys.argv[1])
ours, theirs = multiprocessing.Pipe()
ours.send(runs[0])
ours.close()  # the driver is gone (kill -9): the run is in the pipe, nobody will read the worker's messages
worker_main(theirs, os.getppid())
"""


def test_a_worker_whose_driver_is_gone_ends_without_a_word(tmp_path):
    """What a worker does in the moment between a ``kill -9`` of its driver and its own end: a send on
    the closed pipe ends it quietly (it printed a BrokenPipeError traceback onto the caller's stderr)."""
    proc = subprocess.run([sys.executable, "-c", WORKER_ALONE, str(config(tmp_path))], capture_output=True,
                          text=True, timeout=300)
    assert proc.stderr == "" and proc.stdout == "" and proc.returncode == 1, proc.stderr


def test_a_child_of_the_fork_server_cut_off_by_the_driver_s_death_prints_nothing(tmp_path):
    """The fork server's children report an error through ``sys.excepthook`` (multiprocessing.forkserver);
    the server installs ``quiet_when_orphaned``: a child whose read from the dead driver failed, and whose
    parent (the server) is gone, prints nothing; any other error keeps its traceback."""
    code = """\
import os, sys, types
sys.modules["gradlab.preload"] = types.SimpleNamespace(SERVER=os.getpid())  # this process plays the server
from gradlab.workers import quiet_when_orphaned
r, w = os.pipe()
if os.fork() == 0:  # the server's child
    os.close(w)
    os.read(r, 1)  # returns once the server is gone (its end of the pipe closed)
    try:
        raise EOFError("Ran out of input")  # what unpickling the process object raises
    except EOFError:
        quiet_when_orphaned(*sys.exc_info())
    try:
        raise ValueError("a real bug")
    except ValueError:
        quiet_when_orphaned(*sys.exc_info())
    os._exit(0)
os._exit(0)  # the server dies; its child is reparented
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    # the child writes after its parent exited: wait for its stderr (the pipe closes when it exits)
    assert "EOFError" not in proc.stderr and "ValueError: a real bug" in proc.stderr, proc.stderr


SLOW_SERVER = """\
import os, sys, types
dead_r, dead_w = os.pipe()  # EOF once this process, the driver, has closed its files: it is ending
go_r, go_w = os.pipe()
if os.fork() == 0:  # the fork server: it outlives the driver here, as on a throttled machine
    sys.modules["gradlab.preload"] = types.SimpleNamespace(SERVER=os.getpid())
    from gradlab.workers import quiet_when_orphaned  # the server imports it: its parent is the driver
    os.close(dead_w)
    os.close(go_r)
    child = os.fork()
    if child == 0:  # the server's child, reading from the driver
        def hook(error):
            try:
                raise error
            except Exception:
                quiet_when_orphaned(*sys.exc_info())
        hook(EOFError("while the driver lives"))  # a genuine error: printed
        sys.stderr.flush()
        os.write(go_w, b"x")  # the driver may end now
        os.read(dead_r, 1)  # returns once the driver is ending or gone
        hook(EOFError("cut off by the driver's end"))  # the server still lives and is its parent: quiet
        hook(ValueError("a real bug"))
        sys.stderr.flush()
        os._exit(0)
    os.waitpid(child, 0)  # the server lives until its child is done
    os._exit(0)
os.close(dead_r)
os.close(go_w)
os.read(go_r, 1)
os._exit(0)  # the driver ends, its server does not
"""


def test_a_child_cut_off_by_the_driver_s_end_prints_nothing_though_the_server_outlives_the_driver():
    """The hook decides on what /proc shows (the driver exiting or gone, the server no longer its child),
    not by waiting for the server to die: here the server lives on (as a throttled one may for seconds),
    and the hook printed the EOFError after giving up a 5 s wait. A genuine error is printed, at once."""
    proc = subprocess.run([sys.executable, "-c", SLOW_SERVER], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "EOFError: while the driver lives" in proc.stderr, proc.stderr
    assert "cut off" not in proc.stderr and "ValueError: a real bug" in proc.stderr, proc.stderr


def test_concurrent_force_sweeps_do_not_retrain_what_the_other_trained_after_they_began(tmp_path, reference):
    """--force re-trains the runs finished when the sweep began; a run another --force sweep finishes
    after that is fresh. A holds its first run at the gate while B trains the other three; then A goes
    on and takes B's three as done, and B takes A's first: each run trained once (it was 7 of 4)."""
    path, out = config(tmp_path), tmp_path / "out"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
    def rewritten() -> int:  # runs whose summary.json is not the first sweep's (a rename gives a new inode)
        return sum(finished_as(out / "faults" / run) not in (None, was) for run, was in first.items())

    first = {d.name: finished_as(d) for d in results.find_runs(out)}
    with Gate(tmp_path / "gate") as gate:
        a = start(path, out, "--jobs", "1", "--force", env=gate.env)
        wait_for(lambda: len(gate.held()) >= 1 or a.poll() is not None)  # A holds its first run's lock
        b = start(path, out, "--jobs", "1", "--force")
        wait_for(lambda: rewritten() >= 3 or b.poll() is not None)  # B trained the other three
    for proc in (a, b):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in stderr.decode(), stderr.decode()
    sweeps = results.read_json(out / "faults" / "experiment.json")["sweeps"]
    assert sum(s["trained"] for s in sweeps) == 4 + 4  # the first sweep's 4, then each run once more
    assert rewritten() == 4
    assert_whole(out)
    assert_same(snapshot(out), reference)


def test_a_hash_collision_never_makes_a_run_look_done(tmp_path, monkeypatch):
    """Every config hashing alike (``identity_hash`` patched): the second run finds the first's directory
    under its hash, holding another config. It must not be skipped as done: one located line, exit 2."""
    monkeypatch.setattr("gradlab.config.config_hash", lambda identity: "d" * 16)
    path, out = config(tmp_path, steps=2), tmp_path / "out"
    one = ["--set", "seeds=[0]", "--out", str(out), "-j", "1", "-q"]
    for _ in range(2):  # while training, then at once when it plans again
        result = runner.invoke(app, ["run", str(path), *one])
        assert result.exit_code == 2, result.output
        [line] = result.stderr.splitlines()
        [trained] = results.find_runs(out)
        assert line == (f"error: {trained}: holds another run's config under the hash {'d' * 16} of "
                        f"cell=gru_seed=0_{'d' * 16} (a hash collision): move that directory out of the folder, "
                        "then run again"), line
    assert "cell=vanilla" in trained.name


def test_a_killed_driver_s_experiment_temporaries_are_removed_by_the_next_sweep(tmp_path):
    path, out = config(tmp_path, steps=2), tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        folder = out / "faults"
        (folder / "selection").mkdir(parents=True)
        stale = [folder / f".experiment.json.{dead.stdout.strip()}.k2j4h1.tmp",
                 folder / "selection" / f".tune.json.{dead.stdout.strip()}.a8d7f0.tmp"]
        theirs = folder / f".selection.json.{live.pid}.x0x0x0.tmp"  # a live process's write in progress
        for p in [*stale, theirs]:
            p.write_text("{")
        assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
        assert not any(p.exists() for p in stale) and theirs.exists()
    finally:
        live.communicate(b"")


def test_a_damaged_experiment_json_is_kept_aside_and_run_writes_it_again(tmp_path):
    path, out = config(tmp_path, steps=2), tmp_path / "out"
    one = ["--set", "seeds=[0]", "--out", str(out), "-j", "1", "-q"]
    assert runner.invoke(app, ["run", str(path), *one]).exit_code == 0
    record = out / "faults" / "experiment.json"
    damages = ['{"name": "faults", "sweeps": [', '["not", "an", "object"]', '{"sweeps": {"a": 1}}']
    for i, damage in enumerate(damages):
        record.write_text(damage)
        compare = runner.invoke(app, ["compare", str(out), "--check"])
        assert compare.exit_code in (1, 2) and "Traceback" not in compare.output
        if damage.endswith("["):  # the readers' advice: what run does below
            assert "gradlab run writes it again (keeping this one as experiment.json.damaged)" in compare.stderr
        again = runner.invoke(app, ["run", str(path), *one, "--set", "seeds=[0, 1]"])  # two new runs to train
        assert again.exit_code == 0, again.output
        assert (out / "faults" / "experiment.json.damaged").read_text() == damage  # the latest, as the advice says
        # the earlier ones kept, oldest first (each overwrote the one before)
        assert [(out / "faults" / f"experiment.json.damaged.{n}").read_text() for n in range(1, i + 1)] == damages[:i]
        doc = results.read_json(record)
        assert doc["name"] == "faults" and len(doc["sweeps"]) == 1 and doc["sweeps"][0]["trained"] == 2
        assert len(results.find_runs(out)) == 4  # no run lost
        for run in results.find_runs(out):
            if "seed=1" in run.name:
                shutil.rmtree(run)  # so the next round has runs to train again
    record.write_text("{")
    nothing = runner.invoke(app, ["run", str(path), *one])  # nothing to train: the damaged record is replaced too
    assert nothing.exit_code == 0, nothing.output
    assert results.read_json(record)["name"] == "faults"
    assert (out / "faults" / "experiment.json.damaged").read_text() == "{"
    assert sorted(p.name for p in (out / "faults").glob("experiment.json.damaged*")) == [
        "experiment.json.damaged", *(f"experiment.json.damaged.{n}" for n in range(1, len(damages) + 1))]
    assert (out / "faults" / f"experiment.json.damaged.{len(damages)}").read_text() == damages[-1]
    assert runner.invoke(app, ["compare", str(out)]).exit_code == 0


def test_absurd_jobs_are_refused_before_any_process_starts(tmp_path):
    import multiprocessing

    from gradlab.workers import max_jobs

    result = runner.invoke(app, ["run", str(config(tmp_path)), "--out", str(tmp_path / "out"), "--jobs", "1000000"])
    assert result.exit_code == 2
    assert result.stderr == (f"error: --jobs 1000000: at most {max_jobs()} on this machine (4 per core, "
                             f"{os.cpu_count()} cores); each job is a worker process training one run\n")
    assert not (tmp_path / "out").exists() and not multiprocessing.active_children()
    with pytest.raises(ValueError, match="at most"):
        run_sweep("faults", load(config(tmp_path))[1], tmp_path / "out", jobs=max_jobs() + 1)


def test_an_error_names_the_file_it_writes_not_its_temporary_name(tmp_path):
    tree = tmp_path / "archive"
    tree.mkdir()
    path, out = config(tmp_path, steps=2), tmp_path / "out"
    one = ["--set", "seeds=[0]", "--out", str(out), "-j", "1", "-q"]
    assert runner.invoke(app, ["run", str(path), *one]).exit_code == 0
    with read_only(tree):
        with pytest.raises(OSError) as caught:
            results.write_json(tree / "x.json", {})
        result = runner.invoke(app, ["compare", str(out), "-f", "json", "-o", str(tree / "table.json")])
    assert caught.value.filename == str(tree / "x.json")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {tree / 'table.json'}: ") and ".tmp" not in line, line


CXX_ERROR = """[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: \
you tried to allocate 8 GB
Exception raised from alloc_cpu at ../c10/core/impl/alloc_cpu.cpp:117 (most recent call first):
""" + "".join(f"frame #{i}: c10::something{i}() + 0x{i:x} (0x7f in libc10.so)\n" for i in range(25))


def test_a_failed_run_s_line_is_one_line_and_its_error_txt_keeps_the_backtrace(tmp_path, monkeypatch):
    def broken(cfg, progress=None, rows=None):
        raise RuntimeError(CXX_ERROR)

    monkeypatch.setattr("gradlab.training.train", broken)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config(tmp_path, steps=2)), "--set", "seeds=[0]", "--out", str(out),
                                 "-j", "1", "-q"])
    assert result.exit_code == 1
    first = "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: " \
            "you tried to allocate 8 GB"
    lines = result.stderr.splitlines()
    assert lines[-1] == "2 of 2 runs failed" and len(lines) == 3, lines
    for run in out.glob("faults/*/"):
        assert f"failed: {run.name}: {first} (traceback in {run / 'error.txt'})" in lines
        assert results.read_json(run / "summary.json")["error"] == first
        assert "frame #24: c10::something24()" in (run / "error.txt").read_text()  # nothing lost


@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGKILL", -9)])
def test_the_ray_executor_keeps_the_exit_codes_and_leaves_no_ray_process(tmp_path, sig, code):
    """SIGTERM exited 1 with Ray's C++ stack dump (``ray.init`` took the handler); after a ``kill -9`` Ray's
    agents lingered 60 to 120 s. Held at the gate, a Ray worker has a run in flight when the signal comes."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'gradlab[ray]')")
    path, out = config(tmp_path), tmp_path / "out"
    with Gate(tmp_path / "gate") as gate:
        proc = start(path, out, "--executor", "ray", env=gate.env)
        wait_for(lambda: gate.held() or proc.poll() is not None)
        os.kill(proc.pid, getattr(signal, sig))
        _, stderr = proc.communicate(timeout=120)
        assert left_behind(proc.pid) == []
    stderr = stderr.decode()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "received" not in stderr, stderr
    if sig == "SIGTERM":
        assert stderr.splitlines()[-1].startswith("error: interrupted by SIGTERM: 0 runs saved, "), stderr
    assert not results.find_runs(out)
