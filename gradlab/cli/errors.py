"""How the command line fails: exit codes, and every user error as one line, never a traceback.

Exit codes: 0 success, 1 some runs (or expectations) failed, 2 bad input (config,
arguments, paths); 128 + the signal when a signal stopped it (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
``fail`` prints one line per problem; ``user_errors`` turns the errors of the user's
environment (unwritable paths, a full disk, corrupt results, Ctrl-C, SIGTERM, SIGHUP) into such
lines; ``read_config`` does the same for a config's problems.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from pathlib import Path

import typer

from gradlab.cli.render import err_console

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def fail(problems: list[str] | str, code: int = EXIT_BAD_INPUT):
    """Print each problem on its own line to stderr and exit."""
    for p in [problems] if isinstance(problems, str) else problems:
        err_console.print(f"error: {p}", soft_wrap=True)
    raise typer.Exit(code)


def user_errors(command):
    """Errors of the user's environment (unwritable --out, full disk, Ctrl-C, SIGTERM, SIGHUP, a run's hash
    collision, a damaged experiment.json a check needs) as one line, not a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with terminate_as_interrupt():
                return command(*args, **kwargs)
        except OSError as e:
            fail(f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a results file cut short or corrupted
            dirs = [p for v in kwargs.values() for p in (v if isinstance(v, list) else [v])
                    if isinstance(p, Path) and p.is_dir()]
            fail(unreadable_results(dirs) or f"a results file is not readable JSON: {e}")
        except KeyboardInterrupt as e:  # Ctrl-C; SIGTERM, SIGHUP; sweeps.Interrupted (any of them, during a sweep)
            signum = getattr(e, "signum", signal.SIGINT)
            fail(interrupted_line(e, signum), code=128 + signum)
        except Exception as e:  # a run's hash collision (sweeps.RunCollision): its message says what to do
            from gradlab.results import Damaged

            if isinstance(e, Damaged):  # a results file a check cannot pass without (experiment.json)
                fail(f"{e.path}: {e.reason}; {repair(e.path)}")
            collision = getattr(sys.modules.get("gradlab.sweeps"), "RunCollision", ())  # no sweep, none
            if not isinstance(e, collision):
                raise
            fail(str(e))
    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside a sweep (which handles its own): stop as Ctrl-C does, exit 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOPPING = (signal.SIGTERM, signal.SIGHUP)  # besides SIGINT, which Python raises as KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """While a command runs (in the main thread), SIGTERM and SIGHUP raise ``Terminated`` instead of killing
    silently; a signal the process ignores (``nohup`` ignores SIGHUP) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated(signum)
    old = {s: signal.signal(s, terminated) for s in STOPPING if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def interrupted_line(e: KeyboardInterrupt, signum: int) -> str:
    """What an interruption kept: after a sweep's signal, the runs saved, in flight and not started."""
    def runs(n):
        return f"{n} run{'' if n == 1 else 's'}"
    kept = (f"{runs(e.saved)} saved, {runs(e.in_flight)} in flight not saved, {runs(e.not_started)} not started"
            if hasattr(e, "saved") else "finished runs are kept")
    return f"interrupted by {signal.Signals(signum).name}: {kept}; the same command finishes the rest"


def unreadable_results(dirs: list[Path]) -> list[str]:
    """One line per run or experiment file under ``dirs`` that is not valid UTF-8 JSON.

    A gate must not pass on a subset of its runs, so such a result set is bad input
    (exit 2), named file by file; nothing else of it is touched.
    """
    from gradlab.vocabulary import CONFIG_FILE, EXPERIMENT_FILE, SUMMARY_FILE

    problems = []
    for d in dirs:
        for path in sorted(p for name in (SUMMARY_FILE, CONFIG_FILE, EXPERIMENT_FILE) for p in d.rglob(name)):
            try:
                json.loads(path.read_bytes().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                problems.append(f"{path}: truncated or corrupt JSON ({why}); {repair(path)}")
    return problems


def repair(path: Path) -> str:
    """What to do about a damaged results file: ``gradlab run`` sets a damaged experiment.json aside and
    writes it again (``sweeps.read_experiment``); a run's file goes with its run."""
    from gradlab.results import DAMAGED
    from gradlab.vocabulary import EXPERIMENT_FILE

    if Path(path).name == EXPERIMENT_FILE:
        return f"gradlab run writes it again (keeping this one as {Path(path).name}{DAMAGED})"
    return "move the run's directory away, or delete it and gradlab run redoes the run"


def read_config(read, path: Path):
    """``read(path)`` (a config loader) with its errors as one located line each."""
    from gradlab.config import ConfigError

    try:
        return read(path)
    except ConfigError as e:
        fail(e.problems)


def load_config(path: Path, sets: list[str]):
    """The experiment at ``path`` with the ``--set`` overrides, or its problems as error lines."""
    from gradlab.config import load_experiment

    return read_config(lambda p: load_experiment(p, sets), path)
