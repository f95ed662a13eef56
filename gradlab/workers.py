"""The local executor's worker processes: ``jobs`` of them, each fed one run at a time over a pipe.

A worker trains the runs the driver sends it and sends back progress and each
run's payload; the driver stores it (see ``sweeps``). Workers ignore SIGINT,
SIGTERM and SIGHUP (``SIGNALS``), because the driver ends them when a sweep stops, and they end
with the driver even when it is killed with ``kill -9``, so no process outlives a sweep.

Start-up: on Linux the workers are forked from multiprocessing's fork server, a
process started once per driver that has imported torch and the training modules and
built an optimizer (``preload``), so a worker trains within milliseconds instead of
paying those seconds again. Not forked from the driver: a forked process whose parent
has run parallel torch ops can deadlock on the inherited thread pools; the server never
runs one. Elsewhere (macOS, Windows, where forking a process that loaded system
frameworks is unsafe) each worker is a fresh ``spawn`` interpreter that imports torch
itself. This module imports only the standard library at the top: a spawned worker
sets up its signals before it imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradlab.config import Run

# The signals that stop a sweep: Ctrl-C, the stop signal of CI runners, timeout, systemd and Kubernetes, and
# the hangup of a closed terminal or SSH session; each exits 128 + its number (130, 143, 129).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROGRESS_INTERVAL = 0.2  # seconds between a worker's progress messages


def max_jobs() -> int:
    """The most worker processes a local sweep starts: 4 per core. Each trains one run with its own
    torch (hundreds of MB), so more only thrashes, and an absurd ``--jobs`` (10**6) must not fork
    that many processes (``gradlab run`` refuses it; ``sweeps.run_sweep`` too)."""
    return 4 * (os.cpu_count() or 1)


def run_parallel(waiting: list, jobs: int, sweep) -> None:
    """Train ``waiting`` on ``jobs`` worker processes, each fed one run at a time over its own pipe.

    A worker sends progress and then the payload back on its pipe. A worker that dies
    (segfault, out-of-memory kill, ``os._exit``) closes its pipe: only the run it was
    training is recorded as failed, and a new worker takes its place. No manager
    process or shared queue: nothing outside the workers can fail a run.
    """

    ctx = context()
    left = list(reversed(waiting))  # .pop() gives the next run in order
    idle: list[Worker] = []
    busy: dict = {}  # pipe -> (worker, run, run directory)
    started: list[Worker] = []
    try:
        while left or busy:
            while left and len(busy) < jobs:
                run = left.pop()
                path = sweep.claim(run)
                if path is None:
                    continue
                worker = Worker.give(run, idle.pop() if idle else None, ctx, started)
                busy[worker.conn] = (worker, run, path)
            for conn in multiprocessing.connection.wait(list(busy), timeout=0.5):
                worker, run, path = busy[conn]
                try:
                    kind, *message = conn.recv()
                except (EOFError, OSError) as e:  # the worker process died
                    del busy[conn]
                    worker.close()
                    sweep.store(run, path, lost(e, "a worker process died (crash, out-of-memory kill or exit) "
                                                   "while training this run; the other runs go on"))
                    continue
                if kind == "step":
                    sweep.notify("step", run, step=message[0], steps=message[1])
                else:
                    del busy[conn]
                    idle.append(worker)
                    sweep.store(run, path, message[0])
        for worker in started:  # all done: ask the workers to exit, and give them a moment
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in started:
            worker.process.join(timeout=5)
    except BaseException as e:  # interrupted, or the results cannot be written: the runs in flight are dropped
        if isinstance(e, KeyboardInterrupt):
            _store_arrived(busy, sweep)
        raise
    finally:  # whatever happened above (a signal may come while they exit), no worker is left
        for worker in started:
            worker.kill()


def _store_arrived(busy: dict, sweep) -> None:
    """Store the runs whose payload is already in their pipe: their training finished before the signal."""
    for conn, (_, run, path) in busy.items():
        with contextlib.suppress(EOFError, OSError):
            while conn.poll(0):
                kind, *message = conn.recv()
                if kind == "done":
                    sweep.store(run, path, message[0])
                    break


PRELOAD = ["gradlab.preload"]  # what the fork server imports before it forks a worker


def context():
    """The multiprocessing context workers start from: the fork server on Linux, else spawn."""
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def start_server() -> None:
    """Start the fork server workers are forked from, if it is not running (Linux; elsewhere nothing).

    It returns at once: the server loads torch meanwhile, so a caller that starts it early
    (``gradlab run``, before it validates the config) has its first worker sooner. The server
    ignores SIGNALS (SIGINT, SIGTERM, SIGHUP), and so do the workers it forks; it ends with this process.
    """
    if context().get_start_method() == "forkserver":
        import multiprocessing.forkserver  # not at the top: the module is POSIX-only

        with _starting():
            multiprocessing.forkserver.ensure_running()


@contextlib.contextmanager
def _starting():
    """While a process starts from the driver: it begins with SIGNALS ignored.

    The child inherits SIG_IGN from its first instruction (a handler would be reset at exec),
    so a Ctrl-C while it imports cannot print a traceback. The main thread blocks both signals
    meanwhile, so one sent to the driver now waits for the handler instead of being ignored.
    """
    main = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS} if main else {}
    try:
        with warnings.catch_warnings():  # a killed resource tracker is relaunched with a warning
            warnings.simplefilter("ignore")
            yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Worker:
    """One worker process and the driver's end of its pipe."""

    def __init__(self, process, conn):
        self.process, self.conn = process, conn

    @classmethod
    def give(cls, run, worker: Worker | None, ctx, started: list) -> Worker:
        """Send ``run`` to ``worker`` (idle), or to a new worker if there is none or it died idle."""
        if worker is not None:
            try:
                worker.conn.send(run)
                return worker
            except OSError:  # killed while idle: its pipe is closed
                worker.close()
        worker = cls.start(ctx, started)
        worker.conn.send(run)
        return worker

    @classmethod
    def start(cls, ctx, started: list) -> Worker:
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=worker_main, args=(theirs, os.getpid()), daemon=True)
        if ctx.get_start_method() == "forkserver":
            # The start of the first worker waits until the server has loaded torch: signals are
            # not blocked meanwhile, so they stop the sweep.
            start_server()  # restarts it if it died
            process.start()
        else:
            with _starting():
                process.start()
        theirs.close()  # only the child holds its end: the child's death is EOF here
        worker = cls(process, ours)
        started.append(worker)
        return worker

    def close(self):
        self.conn.close()
        self.process.join(timeout=1)

    def kill(self):
        """Kill the process if it still runs (it ignores SIGTERM), reap it, close the pipe."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def worker_main(conn, driver: int) -> None:
    """A worker process: train each run the driver (pid ``driver``) sends on ``conn``; send progress, then the payload.

    It ignores SIGNALS (the driver kills it when the sweep stops) and exits when the driver is gone
    (a ``kill -9`` of the driver alone), so no worker outlives it. A pipe found closed means the same:
    the worker ends at once and prints nothing (a traceback of a send to a dead driver would land on
    the terminal or a caller's pipe after the sweep is over).
    """
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    _exit_with(driver)
    last = [0.0]  # when the last progress message went

    def progress(step, steps):
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL or step == steps:
            last[0] = now
            _send(conn, ("step", step, steps))

    while True:
        try:
            run = conn.recv()
        except (EOFError, OSError):  # the driver closed the pipe (the sweep is over) or is gone
            return
        if run is None:
            return
        payload = train_run(run, progress)
        try:
            conn.send(("done", payload))
        except OSError:
            _driver_gone()
        except Exception as e:  # e.g. a payload that does not pickle: the run fails, not the worker
            _send(conn, ("done", lost(e, "the run's results could not be sent back")))


def _send(conn, message) -> None:
    try:
        conn.send(message)
    except OSError:  # BrokenPipeError, ConnectionResetError: nobody is left to read it
        _driver_gone()


def _driver_gone() -> None:
    """End this worker without a word: its driver is gone (or ended the sweep), and would have killed it."""
    os._exit(1)


def quiet_when_orphaned(kind, value, tb) -> None:
    """``sys.excepthook`` of the fork server (``preload``), inherited by each process it forks.

    A forked child reads the process object the driver sends before any gradlab code runs; a driver
    killed meanwhile (``kill -9``) cuts that read short, and multiprocessing would print the child's
    EOFError through this hook. Then the child ends without a word, decided on what the kernel shows at
    once (``_driver_ending``), never on a wait: on a throttled machine the server may outlive the
    driver for seconds. Any other error, and this one while the driver lives, is printed at once.
    """
    preload = sys.modules.get("gradlab.preload")
    server = getattr(preload, "SERVER", None)
    if server is not None and issubclass(kind, (EOFError, OSError)) and os.getpid() != server:
        if _driver_ending(server):
            return
    sys.__excepthook__(kind, value, tb)


# This module's importer's parent when it imported it: in the fork server (``preload`` imports this module
# before it forks), the driver that started the server.
STARTED_BY = os.getppid()
PF_EXITING = 0x4  # a task's flag from the first step of its exit, before its files close (linux/sched.h)


def _driver_ending(server: int) -> bool:
    """In a child of the fork server ``server``: the driver that started it (``STARTED_BY``) has ended or is
    ending, by /proc. The kernel marks a process PF_EXITING before it closes its pipes, so a read cut
    short by the driver's end finds it exiting, a zombie or gone; the server (which dies with it,
    PR_SET_PDEATHSIG) then exiting, gone, or no longer the driver's child. Without /proc: the server gone.
    """
    if os.getppid() != server:
        return True
    if not os.path.exists("/proc/self/stat"):
        return False
    fields = _stat(server)
    return _exiting(fields) or int(fields[1]) != STARTED_BY or _exiting(_stat(STARTED_BY))


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state ppid pgrp session tty tpgid flags ...),
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _exiting(fields: list[str] | None) -> bool:
    """A process (``_stat``'s fields) gone, a zombie or dead, or in its exit (PF_EXITING)."""
    return fields is None or fields[0] in "ZXx" or bool(int(fields[6]) & PF_EXITING)


def _exit_with(driver: int) -> None:
    """End this process when the ``driver`` ends.

    Its parent is the driver (spawn) or the fork server, which the kernel kills with the
    driver (``preload``). On Linux the kernel kills this process with its parent
    (PR_SET_PDEATHSIG: at once, even while a C call holds the GIL); elsewhere a thread sees
    the parent change.
    """
    preload = sys.modules.get("gradlab.preload")  # imported (and forked) by the fork server only
    parent = getattr(preload, "SERVER", None) or driver
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # gone before the above took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def train_run(run: Run, progress=None) -> dict:
    """Train one run, catching everything: the payload the driver writes to disk."""
    from gradlab.training import environment, train  # imports torch: only in the process that trains

    rows: list[dict] = []
    try:
        return {**train(run.config, progress=progress, rows=rows), "error": None, "traceback": None}
    except Exception as e:  # a failing run is recorded; the sweep goes on
        try:
            env = environment(run.config)
        except Exception:
            env = {}
        error = one_line(f"{type(e).__name__}: {e}")
        return {"summary": {"status": "failed", "error": error}, "rows": rows, "env": env, "profile": None,
                "error": error, "traceback": traceback.format_exc()}


MAX_ERROR = 300  # characters of a failed run's error line


def one_line(error: str) -> str:
    """A failed run's error as one line: its first line with text, cut at MAX_ERROR characters.

    torch's C++ errors carry their backtrace in the message (``Exception raised from … frame #0: …``,
    25 lines and more); the first line says what went wrong. The whole message stays in the run's
    ``error.txt`` (the traceback), so nothing is lost.
    """
    first = next((line.strip() for line in error.splitlines() if line.strip()), error.strip())
    return first if len(first) <= MAX_ERROR else first[:MAX_ERROR - 1] + "…"


def lost(e: BaseException, why: str = "worker lost") -> dict:
    """The payload of a run whose worker died before it could report."""
    error = one_line(f"{why}: {type(e).__name__}: {e}")
    return {"summary": {"status": "failed", "error": error}, "rows": [], "env": {}, "profile": None,
            "error": error, "traceback": traceback.format_exc()}
