"""Reading a run directory's files so that a damaged one is named, never a crash.

A sweep killed at the wrong moment, a full disk or a hand edit can leave a run
directory with an empty or cut-short ``metrics.csv``, a truncated
``profile.npz``, a missing or corrupt ``config.json``. Each reader here returns
the file's content or raises ``Damaged`` with the problem in a few words;
``attempt`` turns that into a ``Skipped`` (the path, the problem and what is
left out), which the CLI prints as one line. A ``metrics.csv`` with fewer steps
than its summary says is damaged too: it is never drawn as if complete. This
module does not import torch.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from gradlab.vocabulary import EXPERIMENT_FILE


class Skipped(NamedTuple):
    """A damaged file of a run and what was left out because of it."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class Damaged(Exception):
    """A run file that cannot be used, and why."""


def attempt(skipped: list[Skipped], path: Path, read, consequence: str):
    """``read(path)``, or None with a Skipped naming the file, the damage and what is left out."""
    try:
        return read(path)
    except Damaged as e:
        skipped.append(Skipped(path, f"{e}; {consequence}"))
        return None


def read_json(path: Path) -> dict:
    """A run's JSON file (summary, config) as a dict; raises Damaged when missing, cut short or not UTF-8."""
    if not path.is_file():
        raise Damaged("missing")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise Damaged(f"truncated or corrupt JSON: {e}") from None
    except UnicodeDecodeError:
        raise Damaged("corrupt: not UTF-8 text") from None
    except OSError as e:
        raise Damaged(f"not readable ({e.strerror})") from None
    if not isinstance(data, dict):
        raise Damaged("not a JSON object")
    return data


def run_config(path: Path) -> dict:
    """``config.json`` with the sections a reader needs; raises Damaged otherwise."""
    cfg = read_json(path)
    task = cfg.get("task")
    if not (isinstance(task, dict) and "name" in task and "length" in task):
        raise Damaged("no task.name and task.length: not a gradlab run config")
    if not all(isinstance(cfg.get(s, {}), dict) for s in ("model", "train", "diagnostics")):
        raise Damaged("model, train and diagnostics must be sections (JSON objects)")
    return cfg


def read_metrics(path: Path, summary: dict, config: dict) -> pd.DataFrame:
    """``metrics.csv``, checked complete against the summary: raises Damaged when it is missing, empty,
    not CSV, cut short (its last training step or evaluation before the run's last step) or short of
    evaluations (fewer rows than step 0, every ``eval_every`` steps and the last step make)."""
    if not path.is_file():
        raise Damaged("missing")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise Damaged(f"not readable ({e.strerror})") from None
    if not raw.strip():
        raise Damaged("empty file")
    if not raw.endswith(b"\n"):  # results.metrics_csv ends every row with a newline
        raise Damaged("cut short in the middle of a row")
    try:
        m = pd.read_csv(io.BytesIO(raw))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise Damaged(f"not readable CSV ({str(e).strip().splitlines()[0]})") from None
    if not {"kind", "step"} <= set(m.columns):
        raise Damaged("no kind and step columns: not a gradlab metrics file")
    step = pd.to_numeric(m["step"], errors="coerce")
    twice = m[step.notna() & m.duplicated(["kind", "step"])]
    if len(twice):  # two attempts' rows in one file (a bad copy): which is the run?
        raise Damaged(f"{twice['kind'].iloc[0]} step {int(step[twice.index[0]])} appears twice")
    train = config.get("train", {})
    steps = summary.get("steps_done", train.get("steps"))  # steps_done: a stopped run's last step
    log_every = train.get("log_every", 1) if isinstance(train.get("log_every", 1), int) else 1
    if isinstance(steps, int) and steps > 0:
        last_train = step[m["kind"] == "train"].max()
        last_eval = step[m["kind"] == "eval"].max()
        last_train = 0 if pd.isna(last_train) else int(last_train)
        # log_every = k keeps every k-th training step; the last evaluation is always at the last step
        if last_train <= steps - log_every:
            raise Damaged(f"{last_train} of {steps} steps (cut short)")
        if pd.isna(last_eval) or last_eval < steps:
            at = "none" if pd.isna(last_eval) else f"the last at step {int(last_eval)}"
            raise Damaged(f"evaluations end before step {steps} ({at}; cut short)")
        every = train.get("eval_every")
        if isinstance(every, int) and every > 0:  # training evaluates at step 0, every eval_every, and at the end
            expected = len(set(range(0, steps + 1, every)) | {steps})
            found = int((m["kind"] == "eval").sum())
            if found < expected:
                raise Damaged(f"{found} of {expected} evaluations (rows missing)")
    return m


def read_profile(path: Path) -> dict:
    """``profile.npz`` as {"step": (E,), "grad_norm": (E, S)}; raises Damaged when missing or not whole."""
    if not path.is_file():
        raise Damaged("missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            profile = {"step": npz["step"], "grad_norm": npz["grad_norm"]}
    except KeyError as e:
        raise Damaged(f"no {e.args[0]} array") from None
    except OSError as e:
        raise Damaged(f"not readable ({e.strerror or e})") from None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise Damaged(f"truncated or corrupt ({e})") from None
    step, grad = profile["step"], profile["grad_norm"]
    if not all(np.issubdtype(a.dtype, np.number) for a in (step, grad)):
        raise Damaged(f"step and grad_norm must be numbers, not {step.dtype} and {grad.dtype}")
    if step.ndim != 1 or grad.ndim != 2 or grad.shape[0] != len(step) or not grad.size:
        raise Damaged(f"grad_norm of shape {grad.shape} for step of shape {step.shape}: not (E, S) for (E,)")
    return profile


def experiment_folder(run_dir: Path, root: Path) -> Path:
    """The nearest folder at or under ``root`` holding ``experiment.json``; else the run's parent."""
    for folder in run_dir.parents:
        if (folder / EXPERIMENT_FILE).is_file():
            return folder
        if folder == root:
            break
    return run_dir.parent
