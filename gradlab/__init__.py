"""gradlab: see vanishing and exploding gradients in recurrent networks, and compare the remedies.

The Python API (README, "Use it on your own model"):

- ``gradlab.watch(module)``: inside ``with``, an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` runs on
  gradlab's engine and records the true ∂L/∂h_t of every layer and step (``watching``).
- ``gradlab.GradientMonitor(model)``: pre-clip gradient norms, spikes, a verdict and a
  suggested clip for any training loop (``monitor``).
- ``gradlab.load(directory)``, ``gradlab.compare(directory, by=...)``: the runs of a
  results directory, and their seed-aggregated comparison, as pandas DataFrames.

The names are imported on first use, so ``import gradlab`` (and the CLI's start-up)
loads neither torch nor pandas.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {"watch": "gradlab.watching", "Watch": "gradlab.watching", "GradientMonitor": "gradlab.monitor"}
__all__ = ["GradientMonitor", "Watch", "compare", "load", "watch", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def load(directory):
    """Every finished run under ``directory`` (searched recursively), one row each, as ``gradlab compare``
    reads them: a pandas DataFrame of config columns (task, length, cell, clip, tbptt, lr, seed, ...) and
    summary columns (status, final_loss, solved, verdict, horizon, suggested_clip, run_dir, ...).
    A damaged run directory raises ``gradlab.results.Damaged`` naming the file."""
    from pathlib import Path

    from gradlab.comparison import load_frame

    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    return load_frame([Path(directory)])


def compare(directory, by: list[str] | None = None):
    """The comparison table of ``gradlab compare DIRECTORY [--by ...]`` as a pandas DataFrame.

    One row per group of runs (default: task, length, cell, clip, tbptt and every
    other key the grid varies), aggregated over seeds. ValueError for no runs or an
    unknown ``by`` column.
    """
    from gradlab.comparison import compare as aggregate

    frame = load(directory)
    if frame.empty:
        raise ValueError(f"no finished runs under {directory}")
    return aggregate(frame, [by] if isinstance(by, str) else by)
