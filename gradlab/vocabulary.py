"""The words both sides share: file names, run ids, labels, comparison columns, metric and verdict names.

Training writes results under these names and the reading side (comparison, expectations,
reports, plots) reads them back, so each is defined here once and imported by both. This
module imports only the standard library: never torch, never pandas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

# ---------------------------------------------------------------------------
# File names (``gradlab.results`` describes a run directory's files).

CONFIG_FILE = "config.json"        # the resolved run config
ENV_FILE = "env.json"              # versions, device, threads, seed, host
METRICS_FILE = "metrics.csv"       # one row per training step and per evaluation
SUMMARY_FILE = "summary.json"      # written last: marks a finished run
PROFILE_FILE = "profile.npz"       # the gradient-through-time profiles
ERROR_FILE = "error.txt"           # a failed run's traceback
EXPERIMENT_FILE = "experiment.json"  # written by `gradlab run` next to its runs: name, expect list, sweeps
EXPERIMENT_LOCK = f".{EXPERIMENT_FILE}.lock"  # held while experiment.json is read and rewritten
# The figures of ``gradlab plot``, in the order a report shows them; then one heatmap per group.
MAIN_PLOTS = ("learning_curves.png", "grad_norm.png", "grad_profile.png", "long_term_share.png", "memory_curve.png",
              "lyapunov_max.png")
HEATMAP_FILE = "profile_heatmap_{run_id}.png"
# a tuned experiment (gradlab.tuning)
SELECTION_DIR = "selection"        # <out>/<name>/selection/<run id>: the selection runs
SELECTION_MARKER = "tune.json"     # in SELECTION_DIR, written before its first run: readers leave the folder out
SELECTION_FILE = "selection.json"  # <out>/<name>/selection.json: each arm's curve and choice
CURVE_PLOT = "selection_curve.png"  # the selection curve, with the other plots
# tune.metric -> what is better (gradlab.tuning says how failed, diverged and unsolved runs count)
TUNE_METRICS = {"final_loss": "min", "solved_rate": "max", "steps_to_solve": "min"}

# ---------------------------------------------------------------------------
# Names of registry entries and options that config (validation), training and bench share.

# gradlab.cells.CELLS in registry order (a test keeps the two equal), held here because gradlab.cells
# imports torch: plots give each cell its colour by it; bench times these by default
CELL_NAMES = ("vanilla", "irnn", "orthogonal", "skip", "lstm", "gru")
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop"}  # train.optimizer -> its torch.optim class
DTYPES = ("float32", "float64")    # dtype: each is torch's name of it
ENGINES = ("scan", "autograd")     # model.engine: hand-written BPTT | the cell unrolled under autograd
EXECUTORS = ("local", "ray")       # gradlab run --executor: worker processes here | one Ray task per run

# ---------------------------------------------------------------------------
# Run ids: ``<grid values>_seed=<s>_<hash>``; the hash alone identifies a run.

# 16 hex digits, 64 bits: with 8 (32 bits, before issue 22) two configs sharing a hash were found in ~1 s of
# search, and a sweep skipped the second as done. A folder of 10,000 runs now shares one with odds of ~3e-12.
HASH_CHARS = 16
# Run directories named before then end in the first LEGACY_HASH_CHARS of the same SHA-1 digest: still a run
# identity for the readers, and a sweep takes one for its run once its config.json hashes to the run's digest.
LEGACY_HASH_CHARS = 8
# A run id names a directory (at most 255 bytes on Linux, macOS and Windows); 200 leaves room for the
# names made from it, e.g. plots' profile_heatmap_<id>.png.
MAX_ID_BYTES = 200
CUT = "~"  # marks where a long id's readable part was cut (a character the readable part never holds)


def config_hash(identity: dict) -> str:
    """The first HASH_CHARS hex digits of the SHA-1 of ``identity`` as sorted JSON."""
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def filename_safe(text: str) -> str:
    """Letters, digits and ``=._-()+`` kept, anything else ``-``: ``+`` is kept, so 1e+30 is not 1e-30."""
    return "".join(c if c.isalnum() or c in "=._-()+" else "-" for c in text)


def format_run_id(parts: list[str], seed: int, digest: str) -> str:
    """``parts`` (the readable grid values, ``key=value`` each), the seed and the hash as one id.

    At most MAX_ID_BYTES: a longer id keeps the first grid values that fit, cut where CUT
    marks, then the seed and the hash, which alone identifies the run.
    """
    seed_part = f"seed={seed}"
    slug = filename_safe("_".join(parts + [seed_part]))
    if len(f"{slug}_{digest}".encode()) <= MAX_ID_BYTES:
        return f"{slug}_{digest}"
    tail = f"{CUT}_{seed_part}_{digest}"
    head = filename_safe("_".join(parts)).encode()[:MAX_ID_BYTES - len(tail)]
    return head.decode("utf-8", "ignore") + tail  # "ignore": a character cut in two is dropped


def run_hash(run_id: str) -> str:
    """A run id's identity: the hash of its resolved config after the last ``_``.

    The readable part before it depends on the grid (key order, and whether a
    value came from the grid or the base config), so two ids of one resolved
    config differ there but share the hash. An id without a hash (a directory
    made by hand) is its own identity; so is a legacy id's 8-digit hash (LEGACY_HASH_CHARS).
    """
    head, _, digest = run_id.rpartition("_")
    is_hash = (head and len(digest) in (HASH_CHARS, LEGACY_HASH_CHARS)
               and all(c in "0123456789abcdef" for c in digest))
    return digest if is_hash else run_id


def is_legacy_hash(digest: str) -> bool:
    """A hash of a run id made before HASH_CHARS grew (``run_hash`` returned it from a legacy name)."""
    return len(digest) == LEGACY_HASH_CHARS and all(c in "0123456789abcdef" for c in digest)


def hash_matcher(hashes) -> Callable[[str], bool]:
    """``match(digest)``: whether a run hash is one of ``hashes`` (``run_hash``'s, e.g. a sweep's record).

    Exact, except across the change of HASH_CHARS: a legacy 8-digit hash and a 16-digit one are one run
    when the shorter begins the longer (the same SHA-1). Two 16-digit hashes never match on their prefix,
    so a folder of new ids keeps its 64-bit identity; only a folder holding legacy names has 32 bits.
    """
    exact = set(hashes)
    legacy = {h for h in exact if is_legacy_hash(h)}
    prefixes = {h[:LEGACY_HASH_CHARS] for h in exact if len(h) == HASH_CHARS}

    def match(digest: str) -> bool:
        if digest in exact:
            return True
        if is_legacy_hash(digest):
            return digest in prefixes
        return bool(legacy) and len(digest) == HASH_CHARS and digest[:LEGACY_HASH_CHARS] in legacy
    return match


# ---------------------------------------------------------------------------
# Labels, and a run config flattened into the columns a comparison groups on.

FULL_BPTT = "full"  # the label of train.tbptt: null
FULL_WINDOW = "full"  # the label of task.window: null (the whole sequence seen)


def clip_label(clip: dict) -> str:
    """A resolved clip spec as a readable label: ``none``, ``norm(1.0)``, ``value(0.5)``."""
    args = [str(v) for k, v in clip.items() if k != "kind"]
    return clip["kind"] + (f"({', '.join(args)})" if args else "")


def tbptt_label(tbptt):
    """``train.tbptt`` as the comparison shows it: None (full BPTT), the window k (an int, k1 = k2 = k),
    or ``"k1/k2"`` for TBPTT(k1, k2) with k2 > k1."""
    if isinstance(tbptt, dict):
        k1, k2 = tbptt["k1"], tbptt["k2"]
        return k1 if k1 == k2 else f"{k1}/{k2}"
    return tbptt


def config_columns(cfg: dict) -> dict:
    """A resolved run config as flat grouping columns: task, length, cell, clip (a label), tbptt, lr, ...

    The comparison's and the figures' columns. ``.get``: a config on disk may lack a section
    (written by hand, or by an older gradlab); its columns are then absent.
    """
    task, model, train = cfg["task"], cfg.get("model", {}), cfg.get("train", {})
    row = {"experiment": cfg.get("name"), "task": task["name"], "length": task["length"]}
    row.update({k: v for k, v in task.items() if k not in ("name", "length")})
    row.update(model)
    row.update(train)
    if isinstance(train.get("clip"), dict) and "kind" in train["clip"]:
        row["clip"] = clip_label(train["clip"])
    row["tbptt"] = tbptt_label(train.get("tbptt"))  # null, the window k, or "k1/k2"
    row.update({k: cfg[k] for k in ("seed", "device", "dtype", "threads") if k in cfg})
    return row


# The columns of ``config_columns`` named otherwise than their config key: column -> dotted key
# (the rest are a section's key of the same name).
COLUMN_KEYS = {"task": "task.name", "length": "task.length", "clip": "train.clip", "tbptt": "train.tbptt",
               "seed": "seeds"}

# ---------------------------------------------------------------------------
# Metric columns of the comparison table and the verdicts in them.

# In table order; ``runs`` counts every run of the group. ``exploding_runs`` and ``vanishing_runs``: how many
# of its finished runs carry each flag (a run whose flag is unknown, null, counts in neither).
METRICS = ["runs", "failed", "solved", "solved_rate", "solved_ci_low", "solved_ci_high",
           "final_loss_mean", "final_loss_std", "baseline_loss",
           "loss_ratio_iqm", "loss_ratio_min", "loss_ratio_max", "loss_ratio_ci_low", "loss_ratio_ci_high",
           "steps_to_solve_median", "diverged", "verdict", "verdicts", "exploding_runs", "vanishing_runs",
           "horizon_init_median", "horizon_median", "dependency_lag_median", "task_lag_median",
           "dependency_ratio_median", "dependency_ratio_bound",
           "long_term_share_median", "memory_median", "memory_chance_median", "memory_ceiling_median",
           "lyapunov_max_median", "clip_rate_mean", "grad_norm_max", "suggested_clip",
           "data_horizon"]  # the data's reach of a task.window grid's set (gradlab.reach), else None
TEXT_METRICS = ("verdict", "verdicts")  # the rest are numbers
# What a memory readout (gradlab.memory) decodes, as a task declares it (gradlab.task.Task.input_kind): real
# values (scored by R²) or class labels (by accuracy)
VALUES, SYMBOLS = "values", "symbols"
# A run summary's memory against lag (gradlab.memory.run_curve, at the last evaluation): {"lags": [k],
# "scores": [score or null], "chance": [chance or null], "kind": "values" | "symbols", "step": t, "task_lag": k}
MEMORY_CURVE = "memory_curve"

# A run carries two independent flags (gradlab.diagnostics.verdict): ``exploding`` and ``vanishing``, each a
# bool, or None where it was not measured. Its label names both when both hold (BOTH), else the one that holds,
# else HEALTHY; NOT_EXPLODING where exploding is False but vanishing was not measured (no gradient-through-time
# profile: ``GradientMonitor``), never HEALTHY. A group's label: the label of most of its runs, or MIXED on a tie.
EXPLODING, VANISHING, HEALTHY, MIXED = "exploding", "vanishing", "healthy", "mixed"
FLAGS = (VANISHING, EXPLODING)  # the flags, in the order BOTH names them
FLAG_JOIN = "+"
BOTH = FLAG_JOIN.join(FLAGS)  # "vanishing+exploding"
NOT_EXPLODING = "not exploding"
VERDICTS = (BOTH, EXPLODING, VANISHING, HEALTHY, NOT_EXPLODING)  # ties are never resolved by this order


def verdict_label(exploding: bool | None, vanishing: bool | None) -> str | None:
    """The label of a run's two flags: BOTH, EXPLODING, VANISHING, HEALTHY, or NOT_EXPLODING when
    vanishing is unknown (None) and exploding is False; None when exploding is unknown."""
    if exploding is None:
        return None
    held = [name for name, flag in ((VANISHING, vanishing), (EXPLODING, exploding)) if flag]
    if held:
        return FLAG_JOIN.join(held)
    return HEALTHY if vanishing is False else NOT_EXPLODING


# ---------------------------------------------------------------------------
# The cases a diagnosis names (gradlab.diagnosis, issue 23 point 6), and what a registry entry's ``addresses``
# says it treats (gradlab.cells.Cell, gradlab.remedies.ClipRule): case -> the words a diagnosis says.
UNREACHED, FORGETS, SHORT_DATA, HARD_TASK, UNTOLD = "unreached", "forgets", "short_data", "hard_task", "unknown"
WINDOW_HIDES = "window_hides"  # the group's own task.window is shorter than its data's reach: the setting, not the data
CASES = {EXPLODING: "explodes",
         UNREACHED: "gradient does not reach the dependency",
         FORGETS: "gradient reaches the dependency but the state does not hold it",
         SHORT_DATA: "the data has no dependency that long",
         WINDOW_HIDES: "its task.window hides the dependency",
         HARD_TASK: "hard task, not a vanishing gradient",
         HEALTHY: "healthy",
         UNTOLD: "cannot tell"}

# ---------------------------------------------------------------------------
# How a run's gradient norms were recorded (env.json), so a reader can tell a measured 0 from float32's floor.

# env.json's NORMS_KEY: NORMS_FLOAT64 when ‖∂L/∂h_t‖ was reduced without float32's squares
# (gradlab.engine.hidden_norms, issue 22: in float64, or scaled on a device without float64). A run without it
# was recorded in float32, where a per-sample norm below FLOAT32_FLOOR read exactly 0. With it, a float32 run's 0
# is still only below its gradient's floor: entries under float32's smallest normal, 1.2e-38, are flushed to 0
# before the reduction (readers.float32_floor); a float64 run's 0 is a measured 0 (to float64's 2.2e-308).
NORMS_KEY, NORMS_FLOAT64 = "norms", "float64"
FLOAT32_FLOOR = 1.0842021724855044e-19  # sqrt of float32's smallest normal 2**-126: squares below it were flushed to 0
