"""Reading a run directory's files as untrusted input: a damaged one is named, never a crash.

A sweep killed at the wrong moment, a full disk or a hand edit can leave a run
directory with an empty or cut-short ``metrics.csv``, a truncated
``profile.npz``, a missing or corrupt ``config.json``; and a results folder from
a CI artifact or a colleague may hold anything: valid JSON of the wrong shape
(a list for the summary, a string for a loss), a ``name`` that is a path
(``/etc``, ``../x``: plots and exports build their paths from it), a
``profile.npz`` whose few kilobytes declare gigabytes. ``check_run`` is the one
definition of a usable run that every command (compare, plot, report, export)
reads through ``results.scan_runs``: each reader here returns the file's
content or raises ``results.Damaged`` naming the file and the problem in a few
words, and the commands print it as one ``skipped:`` line (``Skipped``). A
``metrics.csv`` with fewer steps than its summary says is damaged too: it is
never drawn or counted as if complete. ``outside`` keeps every path a reader
writes inside the folder the user chose. This module does not import torch.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from gradlab.checks import directory_name, is_int
from gradlab.diagnostics import Thresholds, is_vanishing
from gradlab.results import MAX_JSON_BYTES, Damaged, experiment_problem, json_object
from gradlab.vocabulary import (
    CONFIG_FILE,
    ENV_FILE,
    EXPERIMENT_FILE,
    EXPLODING,
    FLOAT32_FLOOR,
    HEALTHY,
    MAX_ID_BYTES,
    METRICS_FILE,
    NORMS_FLOAT64,
    NORMS_KEY,
    PROFILE_FILE,
    SUMMARY_FILE,
    VANISHING,
    verdict_label,
)

__all__ = ["MAX_JSON_BYTES", "Damaged", "Skipped", "check_run", "float32_floor", "outside", "read_json",
           "read_metrics", "read_profile"]

# A run's JSON file (summary, config, env, experiment.json) has at most MAX_JSON_BYTES (results.json_object).
# What reading one metrics.csv may allocate (pandas needs a few times more). The largest a run writes:
# 1,000,000 training rows (rules.MAX_STEPS) and at most as many evaluation rows (eval_every >= 1), each of
# ~20 numbers (the committed results' rows have 26 columns, most of them empty) of at most 25 characters
# (repr of a float64, and its comma): 2,000,000 x 20 x 25 = 1.0e9 bytes; the committed results' largest is 96 KB.
MAX_METRICS_BYTES = 2**30
# What reading one profile.npz may allocate: numpy allocates the shape a member's header declares before
# it reads the data, and deflate packs 1.2 GB of zeros into 1.2 MB (a zip bomb). The largest profile a
# study writes is far below: 100,000 steps evaluated every 100 (1,001 evaluations) of 1,000-step sequences
# through 4 layers is 1,001 x 5 x 1,000 float64 = 40 MB (grad_norm and grad_norm_layers; float32 before
# issue 22, half that); the committed results' largest is 7 KB.
MAX_PROFILE_BYTES = 64 * 2**20
NUMBER, FLAG, TEXT = "a number", "true or false", "a string"
# The summary keys a reader computes with, and what each must be (or null): a string where a loss belongs
# would stop a comparison in the middle of its arithmetic.
SUMMARY_KEYS = {"status": TEXT, "verdict": TEXT, "solved": FLAG, "diverged": FLAG, "exploding": FLAG, "vanishing": FLAG,
                **dict.fromkeys(("final_loss", "baseline_loss", "steps_to_solve", "clip_rate", "horizon_init",
                                 "horizon", "grad_norm_max", "suggested_clip", "wall_seconds", "dependency_lag",
                                 "steps_done", "final_accuracy", "dependency_ratio", "decay_rate",
                                 "long_term_share", "memory", "lyapunov_max"), NUMBER)}
INTEGER_KEYS = ("train.steps", "train.log_every", "train.eval_every", "seed")  # config keys a reader counts with


class Skipped(NamedTuple):
    """A damaged file (or a folder a reader would not write to) and what was left out because of it."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def skipped(damaged: Damaged) -> Skipped:
    """The line a command prints for ``damaged`` (whose run it leaves out): its file and its problem."""
    return Skipped(damaged.path, damaged.reason)


def _short(v) -> str:
    """A value for a one-line message: its repr, cut at 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def read_json(path: Path) -> dict:
    """A run's JSON file (summary, config, env) as a dict; raises Damaged when it is missing, not a regular
    file, too large, cut short, not UTF-8, nested beyond what the parser can follow, or not an object
    (``results.json_object``: selection.json is read the same way without pandas)."""
    return json_object(path)


def _kind_problem(key: str, value, kind: str) -> str | None:
    """Why ``value`` is not of ``kind`` (or null), in one line; None when it is."""
    ok = {NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          FLAG: lambda v: isinstance(v, bool), TEXT: lambda v: isinstance(v, str)}[kind]
    return None if value is None or ok(value) else f"{key}: expected {kind} or null, got {_short(value)}"


def run_summary(path: Path) -> dict:
    """``summary.json`` with every key a reader computes with of its kind (SUMMARY_KEYS); raises Damaged."""
    summary = read_json(path)
    for key, kind in SUMMARY_KEYS.items():
        if problem := _kind_problem(key, summary.get(key), kind):
            raise Damaged(path, problem)
    return summary


def run_config(path: Path) -> dict:
    """``config.json`` with the sections and values a reader needs, its ``name`` a directory name as a
    config's must be (``checks.directory_name``: plots and exports make folders of it); raises Damaged."""
    cfg = read_json(path)
    task = cfg.get("task")
    if not (isinstance(task, dict) and "name" in task and "length" in task):
        raise Damaged(path, "no task.name and task.length: not a gradlab run config")
    if not all(isinstance(cfg.get(s, {}), dict) for s in ("model", "train", "diagnostics")):
        raise Damaged(path, "model, train and diagnostics must be sections (JSON objects)")
    if cfg.get("name") is not None and (problem := directory_name(cfg["name"])):
        raise Damaged(path, f"name: {problem}")
    problem = _config_problem(cfg)
    if problem:
        raise Damaged(path, problem)
    return cfg


def _config_problem(cfg: dict) -> str | None:
    """The first value of ``cfg`` that would stop a reader (a grouping label, a count, an axis), or None."""
    task, train = cfg["task"], cfg.get("train", {})
    if not isinstance(task["name"], str):
        return f"task.name: expected a string, got {_short(task['name'])}"
    if not is_int(task["length"]):
        return f"task.length: expected an integer, got {_short(task['length'])}"
    for key in INTEGER_KEYS:
        section, _, name = key.rpartition(".")
        value = (cfg.get(section, {}) if section else cfg).get(name)
        if value is not None and not is_int(value):
            return f"{key}: expected an integer or null, got {_short(value)}"
    clip = train.get("clip")
    if isinstance(clip, dict) and "kind" in clip and not isinstance(clip["kind"], str):
        return f"train.clip.kind: expected a string, got {_short(clip['kind'])}"
    tbptt = train.get("tbptt")
    if not (tbptt is None or is_int(tbptt) or isinstance(tbptt, dict) and is_int(tbptt.get("k1"))
            and is_int(tbptt.get("k2"))):
        return f"train.tbptt: expected null, a window or {{k1, k2}}, got {_short(tbptt)}"
    fraction = cfg.get("diagnostics", {}).get("horizon_fraction")
    if fraction is not None and not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                                     and math.isfinite(fraction)):
        return f"diagnostics.horizon_fraction: expected a number, got {_short(fraction)}"
    return None


def experiment_record(path: Path) -> dict:
    """``experiment.json`` (``gradlab.sweeps`` writes it) with every key a report or a check reads of its kind
    (``results.experiment_problem``: a name, strings, lists of run hashes and of expectations, numbers of
    seconds); raises Damaged."""
    doc = read_json(path)
    if problem := experiment_problem(doc):
        raise Damaged(path, problem)
    return doc


def read_metrics(path: Path, summary: dict, config: dict) -> pd.DataFrame:
    """``metrics.csv``, checked complete against the summary: raises Damaged when it is missing, empty,
    not CSV, cut short (its last training step or evaluation before the run's last step) or short of
    evaluations (fewer rows than step 0, every ``eval_every`` steps and the last step make)."""
    m = metrics_rows(path)
    step = pd.to_numeric(m["step"], errors="coerce").to_numpy(dtype=np.float64)  # (rows,), NaN: not a number
    kind = m["kind"].astype(str).to_numpy()
    train_steps, eval_steps = step[kind == "train"], step[kind == "eval"]
    if (again := _repeated_row(kind, step)) is not None:  # two attempts' rows in one file (a bad copy)
        raise Damaged(path, f"{kind[again]} step {int(step[again])} appears twice")
    train = config.get("train", {})
    steps = summary.get("steps_done", train.get("steps"))  # steps_done: a stopped run's last step
    log_every = train.get("log_every") if is_int(train.get("log_every")) and train["log_every"] > 0 else 1
    if is_int(steps) and steps > 0:
        last_train = _last(train_steps)
        last_eval = _last(eval_steps)
        # log_every = k keeps every k-th training step; the last evaluation is always at the last step
        if (last_train or 0) <= steps - log_every:
            raise Damaged(path, f"{last_train or 0} of {steps} steps (cut short)")
        if last_eval is None or last_eval < steps:
            at = "none" if last_eval is None else f"the last at step {last_eval}"
            raise Damaged(path, f"evaluations end before step {steps} ({at}; cut short)")
        every = train.get("eval_every")
        if is_int(every) and every > 0:  # training evaluates at step 0, every eval_every, and at the end
            expected = steps // every + 1 + (steps % every != 0)
            found = len(eval_steps)
            if found < expected:
                raise Damaged(path, f"{found} of {expected} evaluations (rows missing)")
    return m


def metrics_rows(path: Path) -> pd.DataFrame:
    """``metrics.csv`` as rows with ``kind`` and ``step`` columns, whole (ending with its newline) and at
    most MAX_METRICS_BYTES, not checked against a summary (``read_metrics`` does: a failed run's stop
    early); raises Damaged when it is missing, too large, empty, cut short in a row or not CSV."""
    if not path.is_file():
        raise Damaged(path, "missing" if not path.exists() else "not a regular file")
    try:
        if (size := path.stat().st_size) > MAX_METRICS_BYTES:
            raise Damaged(path, f"{size:,} bytes, more than the {MAX_METRICS_BYTES:,} a run's metrics may have")
        raw = path.read_bytes()
    except OSError as e:
        raise Damaged(path, f"not readable ({e.strerror})") from None
    if not raw.strip():
        raise Damaged(path, "empty file")
    if not raw.endswith(b"\n"):  # results.metrics_csv ends every row with a newline
        raise Damaged(path, "cut short in the middle of a row")
    try:
        m = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise Damaged(path, f"not readable CSV ({str(e).strip().splitlines()[0]})") from None
    if not {"kind", "step"} <= set(m.columns):
        raise Damaged(path, "no kind and step columns: not a gradlab metrics file")
    return m


def _repeated_row(kind: np.ndarray, step: np.ndarray) -> int | None:
    """The first row (in file order) whose kind and step an earlier row has, or None; ``kind`` and
    ``step`` (rows,), a step NaN where it is not a number (such rows are never repeats)."""
    first = None
    for name in ("train", "eval"):
        rows = np.flatnonzero((kind == name) & np.isfinite(step))  # (n,) row numbers
        order = np.argsort(step[rows], kind="stable")  # equal steps stay in file order
        ranked = step[rows][order]
        again = rows[order[1:][ranked[1:] == ranked[:-1]]]  # each later row of a step seen before
        if len(again):
            first = int(again.min()) if first is None else min(first, int(again.min()))
    return first


def _last(steps: np.ndarray) -> int | None:
    """The largest finite step, or None."""
    finite = steps[np.isfinite(steps)]
    return int(finite.max()) if len(finite) else None


def read_profile(path: Path) -> dict:
    """``profile.npz`` as {"step": (E,), "grad_norm": (E, S)}, and "grad_norm_layers": (E, L, S) for a
    stack; raises Damaged when it is missing or not whole, or declares more than MAX_PROFILE_BYTES."""
    if not path.is_file():
        raise Damaged(path, "missing" if not path.exists() else "not a regular file")
    try:
        # the file is opened here, not by np.load: given a path, np.load leaves it open when the zip is corrupt
        with path.open("rb") as f:  # np.load reads anything else as one .npy, allocating what it declares
            head = f.read(4)  # shorter: np.load finds it truncated, allocating nothing
            if len(head) == 4 and head not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's first entry, an empty zip
                raise Damaged(path, "not a .npz archive (a zip of .npy arrays)")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
                _check_sizes(path, npz.zip)  # before any member is read: numpy allocates what a header declares
                profile = {k: npz[k] for k in ("step", "grad_norm", "grad_norm_layers") if k in npz.files}
                if "step" not in profile or "grad_norm" not in profile:
                    raise KeyError("step" if "step" not in profile else "grad_norm")
    except KeyError as e:
        raise Damaged(path, f"no {e.args[0]} array") from None
    except OSError as e:
        raise Damaged(path, f"not readable ({e.strerror or e})") from None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise Damaged(path, f"truncated or corrupt ({e})") from None
    step, grad = profile["step"], profile["grad_norm"]
    if not all(a.dtype.kind in "iuf" for a in profile.values()):
        raise Damaged(path, f"step and grad_norm must be numbers, not {step.dtype} and {grad.dtype}")
    if step.ndim != 1 or grad.ndim != 2 or grad.shape[0] != len(step) or not grad.size:
        raise Damaged(path, f"grad_norm of shape {grad.shape} for step of shape {step.shape}: not (E, S) for (E,)")
    if not (np.isfinite(step).all() and (step == np.round(step)).all() and (step >= 0).all() and (step < 2**62).all()):
        raise Damaged(path, f"step must hold training steps (whole numbers from 0), got {_short(step.tolist())}")
    layers = profile.get("grad_norm_layers")
    if layers is not None and (layers.ndim != 3 or layers.shape[0] != len(step) or layers.shape[2] != grad.shape[1]):
        raise Damaged(path, f"grad_norm_layers of shape {layers.shape} for grad_norm of shape {grad.shape}: "
                            "not (E, L, S) for (E, S)")
    return profile


def _check_sizes(path: Path, archive: zipfile.ZipFile) -> None:
    """Raises Damaged when the members of ``archive`` declare more than MAX_PROFILE_BYTES in all: the
    sizes the zip directory gives (what inflating may produce) and the array shapes in the .npy headers
    (what numpy allocates), read from each member's first bytes only."""
    total = 0
    for info in archive.infolist():
        if info.flag_bits & 0x1:  # zipfile would ask for a password (RuntimeError); numpy never writes one
            raise Damaged(path, f"{info.filename}: encrypted")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise Damaged(path, f"{info.filename}: .npy format version {version}, not one gradlab writes")
        if dtype.hasobject:
            raise Damaged(path, f"{info.filename}: an array of Python objects, not numbers")
        total += max(info.file_size, math.prod(shape) * dtype.itemsize)
        if total > MAX_PROFILE_BYTES:
            raise Damaged(path, f"its arrays declare {total:,} bytes or more, more than the {MAX_PROFILE_BYTES:,} "
                                "a profile may have (a zip bomb, or not gradlab's)")


def check_run(run_dir: Path, keep: bool = False) -> dict:
    """A finished run as a record {"dir", "id", "config", "summary"} after checking every file its summary
    promises: raises Damaged naming the first that is missing or not whole. ``keep``: the record also
    holds its "metrics" (a DataFrame) and "profile" (``read_profile``), None for a failed run.

    Every run promises its summary and config; a successful run also its environment, its metrics
    (``read_metrics``: reaching the summary's ``steps_done``) and, when it has one, its profile
    (``read_profile``; training always writes one, a run made by hand may not). Whether or not the
    caller keeps them, the same files are read in full, so every command finds the same runs damaged.
    """
    run_dir = Path(run_dir)
    if len(run_dir.name.encode()) > MAX_ID_BYTES:  # plots name files after it: profile_heatmap_<id>.png
        raise Damaged(run_dir, f"a run directory name of {len(run_dir.name.encode())} bytes, more than the "
                               f"{MAX_ID_BYTES} of a run id")
    summary = run_summary(run_dir / SUMMARY_FILE)
    config = run_config(run_dir / CONFIG_FILE)
    summary = with_flags(summary, config)
    record = {"dir": str(run_dir), "id": run_dir.name, "config": config, "summary": summary}
    metrics = profile = floor = None
    if summary.get("status") == "ok":
        env = read_json(run_dir / ENV_FILE)
        metrics = read_metrics(run_dir / METRICS_FILE, summary, config)
        has_profile = (run_dir / PROFILE_FILE).exists() or (run_dir / PROFILE_FILE).is_symlink()
        profile = read_profile(run_dir / PROFILE_FILE) if has_profile else None
        floor = float32_floor(env, config, summary, profile)
    record["floor"] = floor  # every view reads the float32 floor from here (float32_floor)
    if keep:
        record.update(metrics=metrics, profile=profile)
    return record


def with_flags(summary: dict, config: dict) -> dict:
    """The summary with its ``exploding`` and ``vanishing`` flags: as recorded, or derived for a run recorded
    before the flags (issue 23), which has only its label (``verdict``) of the rule "exploding takes precedence".

    A recorded flag is kept. A missing one is derived from the old label, which is exact except where
    exploding hid vanishing:

    - ``exploding`` = whether the label is ``exploding`` (the old rule named exploding whenever it held);
    - ``vanishing``: True for ``vanishing``, False for ``healthy`` (a vanishing run was never healthy); for
      ``exploding`` it is re-derived as the run's own training derived it: the summary's ``dependency_ratio``
      below the config's ``diagnostics.vanishing_ratio`` (``diagnostics.is_vanishing``, the ratio as
      recorded, not a float32 floor's bound); None (unknown) when either is missing or not a number.

    The label is then made again from the flags (``vocabulary.verdict_label``), so an old exploding run whose
    ratio is below the threshold reads ``vanishing+exploding``, as a run recorded now would; one whose vanishing
    flag is unknown stays ``exploding``. A failed run, or a label gradlab never wrote, gets None for each
    missing flag and keeps its label. Returns a new dict.
    """
    if "exploding" in summary and "vanishing" in summary:
        return summary
    label = summary.get("verdict")
    derived = {"exploding": None, "vanishing": None}
    if summary.get("status") == "ok" and label in (EXPLODING, VANISHING, HEALTHY):
        derived["exploding"] = label == EXPLODING
        derived["vanishing"] = {VANISHING: True, HEALTHY: False}.get(label)
        ratio, threshold = summary.get("dependency_ratio"), config.get("diagnostics", {}).get("vanishing_ratio")
        if label == EXPLODING and _is_number(ratio) and _is_number(threshold):
            derived["vanishing"] = is_vanishing(ratio, Thresholds(vanishing_ratio=threshold))
    out = {**summary, **{k: v for k, v in derived.items() if k not in summary}}
    if out["exploding"] is not None:
        out["verdict"] = verdict_label(out["exploding"], out["vanishing"])
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# A zero of a float32-recorded profile is the floor's when a lag beside it holds a positive sum this small: the
# gradient fades by a finite factor per step, so it reached 0 by falling through the floor (the committed runs'
# floor zeros sit next to 1e-18..1e-14). A zero after a large value is a real one: beyond a truncation window
# (tbptt_lag: 0 right after ~1e-3) or a dead ReLU unit (le2015_digits' IRNN), none of which is below 1e-9.
FLOOR_NEIGHBOUR = 1e-14
PROFILED_SEQUENCES = 128  # the evaluation sequences a profile sums over (at most; training.PROFILE_BATCH)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 1.18e-38, float32's smallest normal: float32 arithmetic flushes below
STORED_FLOAT32 = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45: a profile stored in float32 reads 0 below


def float32_floor(env: dict, config: dict, summary: dict, profile: dict | None) -> dict | None:
    """Whether a run's profile may be cut at a float floor; None when it was not (or cannot be, or has no profile).

    Each p[t] = Σ_b ‖∂L/∂h_t‖ sums the norms of n = min(128, task.eval_size) samples, and under TBPTT(k1, k2 > k1)
    of up to w = ceil(k2 / k1) updates whose windows hold step t (``training.gradient_profiles``). A 0 in it is a
    0 only down to the recording's floor, the bound on what one sample's norm could have been and read 0:

    - a run recorded before issue 22 (``env.json`` without ``NORMS_KEY: NORMS_FLOAT64``) reduced each norm in
      float32 with subnormals flushed: a sample whose H entries were all below FLOAT32_FLOOR (1.08e-19) read 0,
      so it lost less than sqrt(H) · FLOAT32_FLOOR;
    - a float32 run (config ``dtype: float32``) recorded since reduces the norms in float64, but its backward
      computes ∂L/∂h_t in float32 with subnormals flushed (``training.torch_settings``): every entry below
      FLOAT32_TINY (1.18e-38) is 0 before any reduction, so a sample lost less than sqrt(H) · FLOAT32_TINY;
    - a float64 run recorded since issue 22 has float64's floor, sqrt(H) · 2.2e-308, and a profile stored in
      float64: its 0 is a measured 0 (None). One whose profile.npz holds float32 (written before the profile was
      stored in float64) read 0 for a sum below STORED_FLOAT32 (1.4e-45).

    A profile is cut when some evaluation's has a 0 beside a positive value up to FLOOR_NEIGHBOUR. Returns
    {"evaluations": how many profiles are cut, "final": whether the last one is, "cut_below": the floor above
    (a gradient entry below it read 0; for a float32-stored float64 run, a sum below it), and
    "dependency_ratio_bound": an upper bound on the summary's ``dependency_ratio`` when the last one is cut, else
    None}. The recorded ratio is a lower bound, the true one below it + w · n · sqrt(H) · floor / peak (the sum's
    floor for a float32-stored one), peak the last profile's largest finite value
    (``diagnostics.profile_summary``).
    """
    if profile is None:
        return None
    stored32 = np.asarray(profile["grad_norm"]).dtype == np.float32
    if env.get(NORMS_KEY) != NORMS_FLOAT64:
        entry = FLOAT32_FLOOR
    elif config.get("dtype") != "float64":  # vocabulary.DTYPES; a config without dtype is float32
        entry = FLOAT32_TINY
    elif stored32:
        entry = None  # float64's own floor is negligible beside the float32 storage's
    else:
        return None
    g = np.asarray(profile["grad_norm"], dtype=np.float64)  # (E, S), layer 0
    beside = np.zeros(g.shape, dtype=bool)  # (E, S): a neighbour in (0, FLOOR_NEIGHBOUR]
    tiny = (g > 0) & (g <= FLOOR_NEIGHBOUR)
    beside[:, :-1] |= tiny[:, 1:]
    beside[:, 1:] |= tiny[:, :-1]
    cut = ((g == 0) & beside).any(axis=1)  # (E,)
    if not cut.any():
        return None
    bound, ratio = None, summary.get("dependency_ratio")
    final = g[-1][np.isfinite(g[-1])]  # (<= S,)
    lost = _lost_per_sum(config, entry)  # what p[t] could hold and read 0, or None: not known
    if (cut[-1] and final.size and final.max() > 0 and lost is not None and isinstance(ratio, (int, float))
            and not isinstance(ratio, bool) and math.isfinite(ratio)):
        bound = ratio + lost / float(final.max())
    return {"evaluations": int(cut.sum()), "final": bool(cut[-1]),
            "cut_below": STORED_FLOAT32 if entry is None else entry, "dependency_ratio_bound": bound}


def _lost_per_sum(config: dict, entry: float | None) -> float | None:
    """The most one p[t] could lose to a per-entry floor ``entry`` (None: only the float32 storage's, STORED_FLOAT32):
    w · n · sqrt(H) · entry, w the overlapping TBPTT updates holding a step, n the profiled samples (float32_floor).
    None when the config does not give H."""
    if entry is None:
        return STORED_FLOAT32
    hidden = config.get("model", {}).get("hidden")
    eval_size = config["task"].get("eval_size")
    n = min(PROFILED_SEQUENCES, eval_size) if is_int(eval_size) and eval_size > 0 else PROFILED_SEQUENCES
    if not (is_int(hidden) and hidden > 0):
        return None
    tbptt = config.get("train", {}).get("tbptt")  # null, k or {k1, k2} (_config_problem)
    windows = 1
    if isinstance(tbptt, dict) and is_int(tbptt.get("k1")) and is_int(tbptt.get("k2")) and tbptt["k1"] > 0:
        # update j back-propagates [j·k1 - (k2 - k1), (j+1)·k1): step q·k1 + r is in the windows of
        # j = q .. q + floor((r + k2 - k1) / k1), so floor((r + k2) / k1) of them, ceil(k2 / k1) at r = k1 - 1
        windows = max(1, -(-tbptt["k2"] // tbptt["k1"]))
    return windows * n * math.sqrt(hidden) * entry


def outside(path: Path, folder: Path) -> str | None:
    """Why writing to ``path`` would leave ``folder`` (links followed), or None when it stays inside.

    A results folder may hold links (``plots -> /etc``) and names its readers make paths of, so every
    folder a reader writes to is checked, resolved, against the one the user chose."""
    try:
        real, base = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python before 3.13)
        return f"cannot be resolved ({e})"
    if real == base or real.is_relative_to(base):
        return None
    return f"resolves to {real}, outside {folder}"


def experiment_folder(run_dir: Path, root: Path) -> Path:
    """The nearest folder at or under ``root`` holding ``experiment.json``; else the run's parent."""
    for folder in run_dir.parents:
        if (folder / EXPERIMENT_FILE).is_file():
            return folder
        if folder == root:
            break
    return run_dir.parent
