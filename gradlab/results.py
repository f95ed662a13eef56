"""Results on disk: one directory per run, written atomically; the source of truth.

Layout: ``<out>/<experiment>/<run id>/`` holding

- ``config.json``  the resolved run config (what training read)
- ``env.json``     gradlab and torch versions, device, threads, seed, host
- ``metrics.csv``  one row per training step (``kind=train``) and per evaluation (``kind=eval``)
- ``profile.npz``  the gradient-through-time profile at every evaluation: ``step`` (E,),
  ``grad_norm`` (E, S) = Σ_b ‖∂L/∂h_t‖ over the diagnostic batch
- ``summary.json`` written last: its presence marks the run as finished
  (``status`` ``ok`` or ``failed``); a run without it is incomplete.
- ``error.txt``    the traceback of a failed run

Every file is written to a temporary name and renamed into place, so a crash
at any moment leaves either the old file, the new one, or no file — never a
half-written one. This module does not import torch: comparison reads results
without it.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import tempfile
from pathlib import Path

# results' short names of the files (gradlab.vocabulary holds the names)
from gradlab.vocabulary import CONFIG_FILE as CONFIG
from gradlab.vocabulary import ENV_FILE as ENV
from gradlab.vocabulary import ERROR_FILE as ERROR
from gradlab.vocabulary import EXPERIMENT_FILE, SELECTION_DIR, SELECTION_FILE, SELECTION_MARKER, run_hash
from gradlab.vocabulary import METRICS_FILE as METRICS
from gradlab.vocabulary import PROFILE_FILE as PROFILE
from gradlab.vocabulary import SUMMARY_FILE as SUMMARY


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    tmp = stage(path, text)
    try:
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise naming(e, path) from None


def naming(e: BaseException, path: Path) -> BaseException:
    """``e``, or for an OSError that names no file or a temporary one, the same error naming ``path``:
    the user knows the file gradlab writes, not its temporary name (``mkstemp`` and ``os.replace`` name
    that; a full disk's ENOSPC from ``write`` names nothing)."""
    if isinstance(e, OSError) and (e.filename is None or str(e.filename).endswith(".tmp")):
        return OSError(e.errno, e.strerror, str(path))
    return e


def stage(path: Path, text: str | bytes) -> Path:
    """``text`` written and fsynced to a temporary file beside ``path``, ready to be renamed onto it.

    The temporary name carries this process's id (``.<name>.<pid>.<random>.tmp``): another
    process's cleanup leaves it alone while this process lives. An error names ``path``
    (a full disk's ENOSPC comes from ``write`` with no file name).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the mode open() would have
        _write_synced(fd, text)
        return Path(tmp)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if naming(e, path) is not e:
            raise naming(e, path) from None
        raise


def _write_synced(fd: int, text: str | bytes) -> None:
    with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def stale_temporary(path: Path) -> bool:
    """A ``.tmp`` file no live process will rename: left by a killed write (``stage``'s name ends
    ``.<pid>.<random>.tmp``; a name without a pid is an older gradlab's)."""
    pid = path.name.split(".")[-3] if path.name.count(".") >= 4 else ""
    if not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, run by another user
        pass
    return False


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the ``.tmp`` files in ``folder`` that a killed writer left (``stale_temporary``): a run
    directory's are removed by its next ``save_run``, an experiment folder's (``experiment.json``,
    ``selection.json``) here, by the next sweep. A file a live process is writing stays; so does
    everything when the folder cannot be changed (a read-only archive)."""
    try:
        left = [p for p in Path(folder).glob(".*.tmp") if p.is_file() and stale_temporary(p)]
        for p in left:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` can only
    read it by setting it, which races with another thread creating a file meanwhile)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def finite(x):
    """NaN and infinities become null: strict JSON readers (jq, browsers) reject them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def json_text(data) -> str:
    """``data`` as gradlab writes it in a .json file (non-finite numbers as null)."""
    return json.dumps(finite(data), indent=2, default=str) + "\n"


def write_json(path: Path, data) -> None:
    write_atomic(path, json_text(data))


DAMAGED = ".damaged"  # the suffix of an experiment.json moved aside because it could not be read (sweeps)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


# A results folder's JSON file (a run's summary, config, env; experiment.json, selection.json) is a few
# kilobytes; a larger one is not gradlab's, and reading it would cost its size in memory several times
# over (json builds Python objects).
MAX_JSON_BYTES = 16 * 2**20


def json_object(path: Path) -> dict:
    """A results folder's JSON file as a dict, read as untrusted input; raises Damaged when it is missing, not
    a regular file, too large, cut short, not UTF-8, nested beyond what the parser can follow, or not an
    object (``gradlab.readers.read_json``; here for ``read_selection``, which must not load pandas)."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise Damaged(path, "missing" if not path.exists() else "not a regular file")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise Damaged(path, f"{path.stat().st_size:,} bytes, more than the {MAX_JSON_BYTES:,} a results "
                                "JSON file may have")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise Damaged(path, f"truncated or corrupt JSON: {e}") from None
    except UnicodeDecodeError:
        raise Damaged(path, "corrupt: not UTF-8 text") from None
    except RecursionError:
        raise Damaged(path, "corrupt: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise Damaged(path, f"corrupt JSON: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise Damaged(path, f"not readable ({e.strerror})") from None
    if not isinstance(data, dict):
        raise Damaged(path, "not a JSON object")
    return data


def experiment_problem(doc: dict) -> str | None:
    """What makes a JSON object no ``experiment.json`` as ``gradlab.sweeps`` writes it, in one line (the
    first problem), or None: ``name`` (a directory name: reports make anchors and folders of it), ``about``
    and ``source`` strings, ``expect`` a list, ``sweeps`` a list of objects, each with ``source`` a string,
    ``set`` and ``runs`` lists of strings (absent, not null), ``expect`` a list, ``seconds`` and ``jobs``
    numbers (any other key may be absent or null). ``gradlab.readers`` refuses such a file, and
    ``gradlab.sweeps`` sets it aside and writes it again: one definition, so the readers' advice
    (``cli.errors``) holds."""
    from gradlab.checks import directory_name  # no torch: the vocabulary's limits and a did-you-mean helper

    def kind(key, value, ok, what, nullable=True):
        fine = ok(value) or value is None and nullable
        return None if fine else f"{key}: expected {what}{' or null' if nullable else ''}, got {_short(value)}"

    text, listed = (lambda v: isinstance(v, str)), (lambda v: isinstance(v, list))
    strings = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    problems = [kind(key, doc.get(key), text, "a string") for key in ("name", "about", "source")]
    problems.append(kind("expect", doc.get("expect"), listed, "a list"))
    if isinstance(doc.get("name"), str) and (problem := directory_name(doc["name"])):
        problems.append(f"name: {problem}")
    sweeps = doc.get("sweeps", [])
    if not isinstance(sweeps, list) or not all(isinstance(s, dict) for s in sweeps):
        problems.append("sweeps: expected a list of objects")
        sweeps = []
    for i, s in enumerate(sweeps):
        problems += [kind(f"sweeps[{i}].source", s.get("source"), text, "a string"),
                     *(kind(f"sweeps[{i}].{k}", s[k], strings, "a list of strings", nullable=False)
                       for k in ("set", "runs") if k in s),  # absent: none set, or an older record
                     kind(f"sweeps[{i}].expect", s.get("expect"), listed, "a list"),
                     *(kind(f"sweeps[{i}].{k}", s.get(k), number, "a number") for k in ("seconds", "jobs"))]
    return next((p for p in problems if p), None)


def _short(v) -> str:
    """A value for a one-line message: its repr, cut at 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def metrics_csv(rows: list[dict]) -> str:
    """Rows of differing keys (train and eval) -> one CSV with the union of columns, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_profile(path: Path, profile: dict) -> None:
    """The gradient-through-time profiles as a compressed .npz (numpy arrays), atomically."""
    write_atomic(path, _npz_bytes(profile))


def _npz_bytes(profile: dict) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **profile)
    return buf.getvalue()


def read_profile(run_dir: Path) -> dict | None:
    """A run's profile as ``gradlab.readers.read_profile`` reads it (checked, its size capped), or None when
    the run has no profile."""
    from gradlab import readers  # numpy: only readers of results load it, never a worker

    path = Path(run_dir) / PROFILE
    return readers.read_profile(path) if path.is_file() else None


def save_run(run_dir: Path, config: dict, env: dict, rows: list[dict], summary: dict,
             error: str | None = None, profile: dict | None = None) -> None:
    """Write one run's files; ``summary.json`` last, so it marks a finished run.

    Every file is staged (written in full to a temporary name) before anything of an
    earlier attempt is touched, so a full disk leaves the earlier attempt whole. Then
    the files of that attempt (a ``--force`` re-run, a failed run run again) are
    removed and the new ones renamed into place: a run directory never mixes two
    attempts, and a failed re-run leaves no previous ``profile.npz`` beside its summary.
    The caller holds the run's lock (``RunLock``), so no other process writes here.
    """
    run_dir = Path(run_dir)
    texts = {CONFIG: json_text(config), ENV: json_text(env), METRICS: metrics_csv(rows)}
    if profile is not None:
        texts[PROFILE] = _npz_bytes(profile)
    if error is not None:
        texts[ERROR] = error
    staged = {}
    try:
        for name, text in [*texts.items(), (SUMMARY, json_text(summary))]:
            staged[name] = stage(run_dir / name, text)
        (run_dir / SUMMARY).unlink(missing_ok=True)  # a re-run must not look finished until it is
        for old in run_dir.iterdir():  # every file the run wrote before, and .tmp files of a killed write
            if not old.is_dir() and old.name not in staged and (old.suffix != ".tmp" or stale_temporary(old)):
                old.unlink(missing_ok=True)
        for name, tmp in staged.items():  # summary.json last: dicts keep insertion order
            try:
                os.replace(tmp, run_dir / name)
            except OSError as e:
                raise naming(e, run_dir / name) from None
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def missing_files(run_dir: Path) -> list[str]:
    """The files a finished run's summary promises and its directory lacks (none: the run is whole).

    ``save_run`` writes config, env and metrics for every run and ``error.txt`` for a
    failed one (``profile.npz`` is optional); a directory missing one was damaged or
    copied in part: it is not done for ``run``, and ``compare`` names it (and leaves it
    out when it has no config).
    """
    run_dir = Path(run_dir)
    try:
        failed = read_json(run_dir / SUMMARY).get("status") == "failed"
    except (OSError, ValueError, AttributeError):  # unreadable: the readers name the file themselves
        failed = False
    return [name for name in (CONFIG, ENV, METRICS, *([ERROR] if failed else [])) if not (run_dir / name).is_file()]


def find_runs(root: Path) -> list[Path]:
    """Every finished run directory under ``root`` with its config, recursively, in a stable order
    (a run without metrics is still read: its summary and profile; ``incomplete_runs`` names it)."""
    return [d for d in summarised(root) if (d / CONFIG).is_file()]


def incomplete_runs(root: Path) -> list[tuple[Path, list[str]]]:
    """(directory, missing files) of every run under ``root`` whose summary promises files it lacks."""
    return [(d, missing) for d in summarised(root) if (missing := missing_files(d))]


def summarised(root: Path) -> list[Path]:
    """Every run directory under ``root`` with a summary, in a stable order; not a tuned experiment's
    selection runs, nor its runs at values no longer chosen (``shown``)."""
    return shown(sorted(p.parent for p in files_named(root, SUMMARY)), Path(root))


def files_named(root: Path, name: str, regular: bool = True) -> list[Path]:
    """Every file called ``name`` at or under ``root``, sorted, symlinked folders followed: an experiment
    or a run linked into a results folder is read as if it were copied there (``Path.rglob`` does not
    follow links before Python 3.13).

    Each real folder is read once (two links to one folder give its files once), and a link to a folder
    that holds it, its own or one above it up to ``/``, is a cycle and not followed: a walk always ends.
    A folder that cannot be listed is passed over, as ``rglob`` does. ``regular=False``: anything not a
    folder counts (a FIFO, a device, a dangling link), for a reader that names such a file as damage.
    """
    root = Path(root)
    try:
        above = frozenset(_identity(p) for p in root.resolve().parents)
    except OSError:
        return []
    found, seen, stack = [], set(), [(root, above)]
    while stack:
        folder, ancestors = stack.pop()
        try:
            me = _identity(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)  # popped in name order
        except OSError:
            continue
        if me in ancestors or me in seen:  # a cycle, or a folder already read through another path
            continue
        seen.add(me)
        for entry in entries:
            try:
                if entry.name == name and (entry.is_file() if regular else not entry.is_dir()):
                    found.append(Path(entry.path))
                elif entry.is_dir():  # follows a symlink
                    stack.append((Path(entry.path), ancestors | {me}))
            except OSError:
                continue
    return sorted(found)


def _identity(path: Path) -> tuple[int, int]:
    """A folder's identity whatever path reaches it: (device, inode) of what a link points to."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


# A tuned experiment (gradlab.tuning): its choice per arm, and the runs a reader shows.

def read_selection(folder: Path) -> dict | None:
    """An experiment folder's ``SELECTION_FILE``, or None (not a tuned experiment, not selected yet, or
    the file damaged: ``selection_damage`` says how)."""
    return _selection(Path(folder) / SELECTION_FILE)[0]


def selection_damage(folder: Path) -> str | None:
    """Why an experiment folder's ``SELECTION_FILE`` cannot be read, or None (absent, or whole)."""
    return _selection(Path(folder) / SELECTION_FILE)[1]


def _selection(path: Path) -> tuple[dict | None, str | None]:
    """(the selection record, None) or (None, what is wrong with it); (None, None) when there is none.
    Read as every results JSON file is (``json_object``): a FIFO, a huge or deeply nested file is damage."""
    if not os.path.exists(path):  # a dangling link too: no selection
        return None, None
    try:
        doc = json_object(path)
    except Damaged as e:
        return None, e.reason
    problem = _selection_shape(doc)
    return (None, problem) if problem else (doc, None)


def _is(v, kind, each=None) -> bool:
    return isinstance(v, kind) and (each is None or all(isinstance(x, each) for x in v))


def _selection_shape(doc) -> str | None:
    """What makes valid JSON no selection record (``gradlab.tuning.record`` writes it): the first problem."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    for key, kind in (("tuned", dict), ("arms", list), ("selection_seeds", list), ("metric", str)):
        if not isinstance(doc.get(key), kind):
            return f"{key}: expected a JSON {'object' if kind is dict else 'array' if kind is list else 'string'}"
    if not all(_is(v, list) for v in doc["tuned"].values()):
        return "tuned: expected each key's list of values"
    for key in ("cost", "sweeps"):
        if key in doc and not (_is(doc[key], dict) if key == "cost" else _is(doc[key], list, dict)):
            return f"{key}: not as gradlab writes it"
    for i, arm in enumerate(doc["arms"]):
        if not isinstance(arm, dict) or not _is(arm.get("label"), str):
            return f"arms[{i}]: expected an object with a label"
        if not all(_is(arm.get(k, []), list, str) for k in ("candidates", "reported")) \
                or not _is(arm.get("edge", []), list, str) or not _is(arm.get("failed", []), list, dict):
            return f"arms[{i}]: candidates, reported, edge and failed must be lists as gradlab writes them"
        if arm.get("chosen") is not None and not isinstance(arm["chosen"], dict):
            return f"arms[{i}].chosen: expected an object or null"
        if not _is(arm.get("curve", []), list, dict) or not all(
                _is(c.get("values"), dict) and _is(c.get("runs", []), list, dict)
                and all(_is(r.get("value"), (int, float, type(None))) for r in c.get("runs", []))
                and _is(c.get("mean"), (int, float, type(None))) for c in arm.get("curve", [])):
            return f"arms[{i}].curve: expected points of values, runs and a mean"
    return None


def selection_folder(folder: Path, root: Path) -> bool:
    """Whether ``folder`` holds a tuned experiment's selection runs, which a reader of ``root`` leaves out
    (``root`` itself: asked for by name, they are shown). Its marker says so; a folder named SELECTION_DIR
    in an experiment folder (one with SELECTION_FILE or EXPERIMENT_FILE) is one too, marker lost or not."""
    folder = Path(folder)
    if folder == Path(root):
        return False
    return (folder / SELECTION_MARKER).is_file() or folder.name == SELECTION_DIR and any(
        (folder.parent / f).exists() for f in (SELECTION_FILE, EXPERIMENT_FILE))


def shown(run_dirs: list[Path], root: Path) -> list[Path]:
    """The run directories a reader of ``root`` shows: not the selection runs (a folder with
    SELECTION_MARKER, unless it is ``root`` itself), and of a tuned experiment's candidates only those at
    its arms' chosen values (an earlier choice's runs stay on disk, unshown; runs of another sweep into
    the folder are no candidates and stay shown)."""
    root, unchosen = Path(root), {}
    kept = []
    for d in run_dirs:
        folder = Path(d).parent
        if folder not in unchosen and selection_folder(folder, root):
            continue
        if folder not in unchosen:
            arms = (read_selection(folder) or {}).get("arms", [])
            unchosen[folder] = ({run_hash(r) for a in arms for r in a.get("candidates", [])}
                                - {run_hash(r) for a in arms for r in a.get("reported", [])})
        if run_hash(Path(d).name) not in unchosen[folder]:
            kept.append(d)
    return kept


class Damaged(Exception):
    """A results file that cannot be used: ``path`` names it, ``reason`` the problem. There is one
    definition of a damaged run (``gradlab.readers.check_run``) and every command (compare, plot, report,
    export) reads runs through ``scan_runs``, so each leaves out the same runs and names them the same
    way, one line each: ``skipped: <path>: <reason>``."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def scan_runs(root: Path, keep: bool = False) -> tuple[list[dict], list[Damaged]]:
    """Every finished run under ``root`` as a checked record (``gradlab.readers.check_run``; ``keep``: with
    its metrics and profile), and the damaged ones, each named by file (a tuned experiment's damaged
    ``SELECTION_FILE`` too: its choice cannot be shown)."""
    from gradlab import readers  # pandas and numpy: only readers of results load them, never a worker

    records, damaged = [], damaged_selections(root)
    for d in summarised(root):  # a run without its config too: it is damaged, and named
        try:
            records.append(readers.check_run(d, keep=keep))
        except Damaged as e:
            damaged.append(e)
    return records, damaged


def damaged_selections(root: Path) -> list[Damaged]:
    """The tuned experiments' ``SELECTION_FILE``s under ``root`` that cannot be read, each named."""
    found = []
    for path in files_named(root, SELECTION_FILE, regular=False):  # a FIFO is named, not passed over
        if path.parent.name != SELECTION_DIR and (problem := selection_damage(path.parent)):
            found.append(Damaged(path, f"{problem}; each arm's choice is unknown, so its runs at every tuned "
                                       "value are shown (gradlab run of its config writes the file again)"))
    return found


def lock(path: Path, wait: bool = False):
    """An exclusive advisory lock (``flock``) on ``path``, as an open file to ``close()``; None when
    another process holds it and ``wait`` is false.

    The kernel drops a lock when its holder exits, however it exits (``kill -9`` too), so
    a dead process's lock is free at once. Lock files stay: removing one would let two
    processes lock two different files under one name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        f.close()
        return None
    except BaseException:
        f.close()
        raise
    return f


def run_lock(experiment_dir: Path, run_id: str) -> Path:
    """The lock file of a run, ``<experiment>/.<run hash>.lock``: one per resolved config, whichever
    directory name the run has; a hidden file, so listings of the run directories do not change."""
    return Path(experiment_dir) / f".{run_hash(run_id)}.lock"
