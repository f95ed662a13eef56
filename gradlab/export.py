"""A results directory as TensorBoard event files: ``gradlab export DIR --tensorboard LOGDIR``.

Every finished run under DIR becomes one TensorBoard run, ``LOGDIR/<experiment>/<run id>``
(TensorBoard shows it as ``<experiment>/<run id>``), holding

- a scalar per numeric column of its ``metrics.csv``: ``train/<column>`` for the
  training rows (``train/loss``, ``train/grad_norm`` before clipping,
  ``train/grad_norm_clipped`` after, the group norms, ...) and ``eval/<column>``,
  ``eval_`` dropped, for the evaluations (``eval/loss``, ``eval/accuracy``,
  ``eval/horizon``, ``eval/decay_rate``, ``eval/dependency_ratio``, the spectra, ...),
  at their training step; an empty cell (a figure that was not defined) is left out, and so is a NaN
  (pandas, which every reader parses metrics.csv with, reads both as NaN);
- the image ``gradient_through_time`` at each evaluation step: Σ_b ‖∂L/∂h‖ against
  the lag, one line per layer (``plots.profile_figure``); TensorBoard's step
  slider walks through training.

Results are read with ``results`` (the disk is the source of truth) as every command reads them: a
damaged run is left out and named (``gradlab.readers``), and a run whose folder in LOGDIR would resolve
outside LOGDIR (a link planted there) too. What is exported is what ``readers.check_run`` read and
checked (its metrics DataFrame and profile), one run in memory at a time. Each event file is written
atomically. Exporting again replaces a run's earlier export: the event files export wrote, and only
those. The event records are written with tensorboard's own record writer and protocol buffers, so this
module needs the ``tensorboard`` package (the optional extra ``gradlab[tensorboard]``) but not torch.
"""

from __future__ import annotations

import io
import math
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gradlab import readers, results
from gradlab.readers import Skipped, outside, skipped

PROFILE_TAG = "gradient_through_time"
SUFFIX = ".gradlab"  # ends the name of every event file export writes: the ones a new export replaces


class TensorBoardMissing(RuntimeError):
    """The ``tensorboard`` package is not installed."""


def export_tensorboard(root: Path, logdir: Path, left_out: list[Skipped] | None = None) -> list[Path]:
    """Write one TensorBoard run per finished run under ``root`` into ``logdir``; return their directories.

    A run found twice (the same experiment and run hash, e.g. in two shards) is written once. A damaged
    run, and a run whose folder would resolve outside ``logdir``, is left out and appended to ``left_out``.
    """
    proto = _protos()
    written, seen = [], set()
    left_out = [] if left_out is None else left_out
    records, damaged = results.scan_runs(root)  # checked as every command checks them; read again one by one
    left_out += [skipped(d) for d in damaged]
    for record in records:
        run_dir = Path(record["dir"])
        try:  # its metrics and profile, checked again as they are read (changed since the scan: left out)
            record = readers.check_run(run_dir, keep=True)
        except readers.Damaged as e:
            left_out.append(skipped(e))
            continue
        # the name passed readers.run_config's check: one directory name, never a path
        experiment = record["config"].get("name") or run_dir.parent.name
        key = (experiment, results.run_hash(record["id"]))
        if key in seen:
            continue
        seen.add(key)
        target = Path(logdir) / experiment / record["id"]
        if problem := outside(target, logdir):
            left_out.append(Skipped(target, f"{problem}; the run is not exported"))
            continue
        events = run_events(proto, record, run_dir)
        for old in target.glob(f"events.out.tfevents.*{SUFFIX}"):  # what an earlier export wrote here
            if old.is_file() and not old.is_symlink():
                old.unlink()
        results.write_atomic(target / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}{SUFFIX}",
                             _records(proto, events))
        written.append(target)
    return written


def scalars(metrics) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every number in a run's metrics as ``readers.read_metrics`` checked them (a
    DataFrame, NaN where a row has no value), in row order; text and true/false cells are no scalars."""
    out = []
    for row in metrics.to_dict("records"):
        kind, step = row.get("kind"), _number(row.get("step"))
        if kind not in ("train", "eval") or step is None or not 0 <= step < 2**63:  # an event's step is an int64
            continue
        for column, cell in row.items():
            if column not in ("kind", "step") and (value := _number(cell)) is not None:
                out.append((f"{kind}/{column.removeprefix('eval_') if kind == 'eval' else column}", int(step), value))
    return out


def _number(cell) -> float | None:
    """A metrics cell as a float; None for an empty (NaN) cell, text and true/false (pandas reads a column
    of ``True``/``False`` as bools)."""
    if isinstance(cell, (bool, np.bool_)):
        return None
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def run_events(proto, record: dict, run_dir: Path) -> list:
    """The run's Events: its scalars and a profile image per evaluation, wall times spread over its training.
    ``record``: ``readers.check_run(run_dir, keep=True)``."""
    summary, config = record["summary"], record["config"]
    steps = max(config.get("train", {}).get("steps") or 1, 1)  # an int: readers.run_config checks it
    wall = summary.get("wall_seconds") or 0.0
    wall = wall if math.isfinite(wall) else 0.0  # a number (readers.run_summary); from a hand edit, inf
    start = (run_dir / results.SUMMARY).stat().st_mtime - wall
    when = lambda step: start + wall * min(step, steps) / steps  # noqa: E731
    events = [proto.Event(wall_time=start, file_version="brain.Event:2")]
    for tag, step, value in scalars(_metrics(record, run_dir)):
        if record.get("floor") and tag == "eval/dependency_ratio" and value == 0:
            continue  # cut at a float floor (readers.float32_floor): below it, not a measured 0; a scalar has no "<"
        value_pb = proto.Summary.Value(tag=tag, simple_value=value)
        events.append(proto.Event(wall_time=when(step), step=step, summary=proto.Summary(value=[value_pb])))
    profile = record["profile"]  # as check_run read and checked it (a successful run's only): None or whole
    if profile is not None and profile["grad_norm"].size:
        fraction = config.get("diagnostics", {}).get("horizon_fraction")
        for i, step in enumerate(profile["step"].tolist()):
            layers = profile["grad_norm_layers"][i] if "grad_norm_layers" in profile else profile["grad_norm"][i:i + 1]
            image = _profile_image(proto, layers, summary.get("dependency_lag"), fraction,
                                   f"{record['id']}\nstep {step}")
            value_pb = proto.Summary.Value(tag=PROFILE_TAG, image=image)
            events.append(proto.Event(wall_time=when(step), step=step, summary=proto.Summary(value=[value_pb])))
    return events


def _metrics(record: dict, run_dir: Path):
    """The rows to export: a successful run's as ``check_run`` checked them; a failed run's as far as it got
    (``readers.metrics_rows``; none when it has no readable metrics.csv, which a failed run need not have)."""
    if record["metrics"] is not None:
        return record["metrics"]
    try:
        return readers.metrics_rows(run_dir / results.METRICS)
    except readers.Damaged:
        return pd.DataFrame(columns=["kind", "step"])


def _profile_image(proto, layers, dependency_lag, horizon_fraction, title):
    """An (L, S) profile as a Summary.Image (PNG)."""
    from gradlab import plots

    buf = io.BytesIO()
    options = {} if horizon_fraction is None else {"horizon_fraction": horizon_fraction}
    plots.profile_figure(layers, buf, dependency_lag=dependency_lag, title=title, **options)
    png = buf.getvalue()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    return proto.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)


def _records(proto, events) -> bytes:
    """Events as the bytes of a TFRecord event file (length, CRCs, payload per record)."""
    buf = io.BytesIO()
    writer = proto.RecordWriter(buf)
    for event in events:
        writer.write(event.SerializeToString())
    return buf.getvalue()


class _Protos:
    """tensorboard's Event and Summary protocol buffers and its record writer, imported on first use."""

    def __init__(self):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.Event, self.Summary, self.RecordWriter = Event, Summary, RecordWriter


def _protos() -> _Protos:
    try:
        return _Protos()
    except ImportError as e:
        raise TensorBoardMissing("the tensorboard package is not installed: pip install 'gradlab[tensorboard]'") \
            from e
