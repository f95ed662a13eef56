"""Every rule a config must follow, declared in one place, and the one function that checks them all.

Three kinds of rule: each key's value (``CHECKS``, dotted key -> a check of one value; a clipping
rule's parameters are checked by the checks its ``gradlab.remedies.CLIPS`` entry declares), the
constraints between keys (``CROSS_CHECKS``, checked on every grid point's resolved config: they may
hold at some points and not others), and the sections checked against the runs the config expands
to (``expect:``). ``check`` evaluates all of them and returns every problem, one line each,
``file:line: key.path: message``, in the order they are found (the caller sorts them in file order).
A cell's options are refused in the words of its registry (``gradlab.cells.refusal``), so a new
cell entry needs no edit here.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass

from gradlab import expectations, grid
from gradlab.cells import CELLS, INITS, recurrence_problem, refusal
from gradlab.checks import (
    above_one,
    boolean,
    choice,
    directory_name,
    fraction,
    int_between,
    is_int,
    is_number,
    non_negative_number,
    optional,
    positive_number,
    resolve_tbptt,
    string,
)
from gradlab.recurrences import RECURRENCES
from gradlab.remedies import resolve_clip
from gradlab.tasks import TASKS, resolve
from gradlab.vocabulary import COLUMN_KEYS, DTYPES, ENGINES, OPTIMIZERS, TUNE_METRICS, config_columns
from gradlab.yamlfile import did_you_mean, get_path

# ---------------------------------------------------------------------------
# Each key's value.

# Upper bounds, each on a key that sizes memory, time or a library call: a value that validates must run
# (issue 22: task.length 1e8, model.layers 1e6 or threads 1e6 passed validation, then exhausted memory or
# segfaulted a worker). Each is far above what the tasks' literature uses, so none limits a real study;
# the whole run's size is bounded apart (MAX_MEMORY, below), as keys within bounds may still multiply up.
# Sequence steps: 5x the longest sequence benchmark in the RNN literature (EigenWorms, 17,984 steps,
# Rusch & Mishra 2021; Path-X 16,384, Tay et al. 2021); Hochreiter & Schmidhuber 1997 went to 1000.
MAX_LENGTH = 100_000
MAX_EVAL_SIZE = 100_000    # held-out sequences, made at once: 10x MNIST's test set (the digits task's source)
MAX_HIDDEN = 16_384        # U alone is H² floats (1 GB here in float32); LSTMs of 8192 units are the largest
#                            in the literature (Jozefowicz et al. 2016)
MAX_LAYERS = 100           # stacked layers; deep RNNs go to ~20 (IndRNN, Li et al. 2018), 8 in GNMT
MAX_BATCH = 65_536         # sequences per step
MAX_STEPS = 1_000_000      # a run keeps every step's metric row in memory until it ends (~1 KB each)
MAX_EVERY = MAX_STEPS      # eval_every, log_every, spike_window: a longer cadence is the same as this one
MAX_THREADS = 1024         # torch threads; beyond the cores of any one machine, they only slow it down
# seed and seed + training.EVAL_SEED_OFFSET must fit torch.Generator.manual_seed (an unsigned 64-bit
# integer); 2^63 keeps that with room, and every seed a person writes
MAX_SEED = 2**63 - 1
# A grid point's memory by ``footprint``: more than any one machine gradlab's workers run on is likely to
# have; beyond it, a run would swap the machine until the kernel killed it.
MAX_MEMORY = 64 * 2**30

def _device(v):
    if not isinstance(v, str) or not (v == "cpu" or v == "cuda" or v.startswith("cuda:")):
        return f"expected cpu, cuda or cuda:N, got {v!r}"


def _seeds(v):
    if not isinstance(v, list) or not v:
        return f"expected a non-empty list of integers, got {v!r}"
    bad = [s for s in v if not is_int(s) or s < 0]
    if bad:
        return f"seeds must be non-negative integers, got {bad!r}"
    if huge := [s for s in v if s > MAX_SEED]:
        return f"seeds must be at most 2^63 - 1 (torch's generator takes 64 bits), got {huge!r}"
    if len(set(v)) != len(v):
        return f"seeds repeat: {v!r}"


def _cell(v):
    """A cell of the registry whose recurrence exists (a cell entry naming an unknown one is refused here)."""
    return choice(CELLS, "cell")(v) or recurrence_problem(v)


def _clip(v):
    try:
        resolve_clip(v)
    except ValueError as e:
        return str(e)


def _forget_bias(v):
    if not (is_number(v) or v == "chrono"):
        return f"expected a number or chrono, got {v!r}"


def _tbptt(v):
    try:
        resolve_tbptt(v)
    except ValueError as e:
        return str(e)


CHECKS = {
    "name": directory_name,  # the experiment name is a directory name under --out
    "task.name": choice(TASKS, "task"),
    "task.length": int_between(2, MAX_LENGTH, "5x the longest sequence benchmark"),
    "task.eval_size": int_between(1, MAX_EVAL_SIZE, "sequences held in memory at once"),
    "task.variant": optional(string),
    "task.window": optional(int_between(1, MAX_LENGTH, "the longest task.length")),
    "model.cell": _cell,
    "model.hidden": int_between(1, MAX_HIDDEN, "2x the widest recurrent layer in the literature"),
    "model.nonlinearity": optional(choice({"tanh": 0, "relu": 0}, "nonlinearity")),
    "model.skip": int_between(1, MAX_LENGTH, "the longest task.length"),
    "model.engine": choice(dict.fromkeys(ENGINES), "engine"),
    "model.layers": int_between(1, MAX_LAYERS, "5x the deepest recurrent stacks in the literature"),
    "model.init": optional(choice(INITS, "init")),
    "model.constrain": boolean,
    "model.forget_bias": optional(_forget_bias),
    "train.steps": int_between(1, MAX_STEPS, "every step's metrics are held in memory until the run ends"),
    "train.batch_size": int_between(1, MAX_BATCH, "sequences per step"),
    "train.optimizer": choice(OPTIMIZERS, "optimizer"),
    "train.lr": positive_number,
    "train.clip": _clip,
    "train.tbptt": _tbptt,
    "train.eval_every": int_between(1, MAX_EVERY, "the most steps a run has"),
    "train.log_every": int_between(1, MAX_EVERY, "the most steps a run has"),
    "train.on_nonfinite": choice({"skip": 0, "stop": 0}, "on_nonfinite policy"),
    "train.omega": non_negative_number,
    "train.weight_decay": non_negative_number,
    "diagnostics.horizon_fraction": fraction,
    "diagnostics.vanishing_ratio": fraction,
    "diagnostics.spike_factor": above_one,
    "diagnostics.spike_window": int_between(1, MAX_EVERY, "the most steps a run has"),
    "diagnostics.lyapunov": int_between(0, 64, "exponents; each adds a forward-mode product per step"),
    "seeds": _seeds,
    "device": _device,
    "dtype": choice(dict.fromkeys(DTYPES), "dtype"),
    "threads": int_between(1, MAX_THREADS, "more than any one machine's cores"),
}


# ---------------------------------------------------------------------------
# Constraints between keys, checked on each grid point. Each returns None or (problem, detail): the
# detail names the other key's value, left out where it differs between the grid points that show the
# problem (they are listed instead). A cell option's problem is its registry's refusal.

def _variant_exists(cfg):
    try:
        resolve(cfg["task"])
    except ValueError as e:
        return str(e), ""


def _long_enough(cfg):
    try:
        task = resolve(cfg["task"])
    except ValueError:
        return None  # the variant's own problem
    if cfg["task"]["length"] < task.min_length:
        return f"{task.label} needs length >= {task.min_length}", f", got {cfg['task']['length']}"


def _takes(option: str, cfg) -> bool:
    return option in CELLS[cfg["model"]["cell"]].options


def _nonlinearity_cell(cfg):
    if cfg["model"]["nonlinearity"] is not None and not _takes("nonlinearity", cfg):
        return refusal("nonlinearity"), f" ({cfg['model']['cell']} has its own)"


def _init_cell(cfg):
    if cfg["model"]["init"] is not None and not _takes("init", cfg):
        return refusal("init"), f", not {cfg['model']['cell']}"


def _constrain_cell(cfg):
    if cfg["model"]["constrain"] and not _takes("constrain", cfg):
        return refusal("constrain"), f", not {cfg['model']['cell']}"


def _forget_bias_cell(cfg):
    if cfg["model"]["forget_bias"] is not None and not _takes("forget_bias", cfg):
        return refusal("forget_bias"), f", not {cfg['model']['cell']}"


def _omega_cell(cfg):
    cell, layers = cfg["model"]["cell"], cfg["model"]["layers"]
    if cfg["train"]["omega"] and (not _takes("omega", cfg) or layers != 1):
        return refusal("omega"), f", got {cell if layers == 1 else f'{layers} layers'}"


def _engine_cell(cfg):
    problem = recurrence_problem(cfg["model"]["cell"], cfg["model"]["engine"])
    if problem:
        return problem, ""


ROW_BYTES = 1024  # one step's metric row as a Python dict (~20 numbers), held until the run ends


def footprint(cfg) -> int:
    """The bytes one run of the resolved config ``cfg`` holds at its peak, estimated from above.

    The training batch and the evaluation set each go through the net whole: per sequence, per step
    (S, the task's sequence length) and per unit of each layer autograd keeps every gate's
    pre-activation and activation and the state (h; c and tanh c for an LSTM): 2 G + 3 numbers for G
    gates. Measured (an LSTM, H = 64, S = 500, 1000 sequences; the peak resident memory less an empty
    run's): ~8.7 numbers a unit-step for the batch, ~6.8 for the evaluation set; a tanh RNN's batch ~3.
    Then the inputs and outputs, the weights with their gradient and Adam's two moments (4 copies of
    G H (I + H + 1) per layer), a float64 profile per evaluation (S per layer) and every step's metric row.
    """
    task, model, train = resolve(cfg["task"]), cfg["model"], cfg["train"]
    S, H, L = task.sequence_length(cfg["task"]["length"]), model["hidden"], model["layers"]
    G = len(RECURRENCES[CELLS[model["cell"]].recurrence].gates)
    width = int(cfg["dtype"].removeprefix("float")) // 8  # bytes per number: float32 4, float64 8
    sequences = (train["batch_size"] + cfg["task"]["eval_size"]) * S
    activations = sequences * (task.input_size + task.output_size + L * H * (2 * G + 3)) * width
    weights = 4 * L * G * H * (max(task.input_size, H) + H + 1) * width
    profiles = (train["steps"] // train["eval_every"] + 1) * S * L * 8
    return activations + weights + profiles + train["steps"] * ROW_BYTES


def _size(nbytes: float) -> str:
    """``2.3 TB``: a byte count in the largest unit that keeps it at least 1 (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1024 or unit == "PB":
            return f"{nbytes:,.1f}".removesuffix(".0") + f" {unit}"
        nbytes /= 1024


def _fits_memory(cfg):
    """A run within every key's bound may still multiply up past memory (length x batch x hidden x layers)."""
    try:
        need = footprint(cfg)
    except ValueError:
        return None  # an unknown task or variant: its own problem
    if need > MAX_MEMORY:
        task, model, train = cfg["task"], cfg["model"], cfg["train"]
        return (f"a run would need more memory than the {_size(MAX_MEMORY)} gradlab allows one; shorten the "
                "sequences or shrink the batch, the evaluation set or the model",
                f" (about {_size(need)}: {train['batch_size']:,} + {task['eval_size']:,} sequences of length "
                f"{task['length']:,} through {model['layers']} x {model['hidden']:,} {model['cell']} units)")


# (the key at fault, then the keys it is checked against; check). A check runs where all are valid;
# its error is located at the key at fault, or, where that is at its default, at the first one set.
CROSS_CHECKS = [
    (("task.variant", "task.name"), _variant_exists),
    (("task.length", "task.name", "task.variant"), _long_enough),
    (("model.nonlinearity", "model.cell"), _nonlinearity_cell),
    (("model.init", "model.cell"), _init_cell),
    (("model.constrain", "model.cell"), _constrain_cell),
    (("model.forget_bias", "model.cell"), _forget_bias_cell),
    (("train.omega", "model.cell", "model.layers"), _omega_cell),
    (("model.engine", "model.cell"), _engine_cell),
    (("task.length", "train.batch_size", "task.eval_size", "model.hidden", "model.layers", "model.cell",
      "task.name", "task.variant", "dtype", "train.steps", "train.eval_every"), _fits_memory),
]


# ---------------------------------------------------------------------------
# The evaluation. Each function below returns what it found; ``check`` collects it.

@dataclass(frozen=True)
class Checked:
    """What ``check`` found: every problem, and the runs the config's valid part expands to,
    as (resolved config with its seed, the grid values that make it: dotted path -> value)."""

    problems: list[str]
    runs: list[tuple[dict, dict]]


def check(data: dict, where, defaults: dict) -> Checked:
    """Every rule on the config ``data``; ``where(path)`` locates a key path, ``defaults`` are the
    config's defaults (a plain dict, as ``dataclasses.asdict`` makes it: its keys are the valid ones).

    Constraints between keys are checked wherever the keys involved are valid, on the runs the
    valid part of the config expands to.
    """
    key_problems, bad_sections = _check_keys(data, where, defaults)
    value_problems, bad_values = _check_values(data, where)
    problems, bad = key_problems + value_problems, bad_sections | bad_values
    valid, grid_problems, bad_grid = _check_grid(data["grid"], where) if "grid" in data else ({}, [], set())
    problems += grid_problems
    bad |= bad_grid
    if data.get("grid") == {}:
        problems.append(f"{where('grid')}: the grid is empty; remove it or give it keys")
    if "tune" in data:  # the tuned keys expand like grid keys: every arm's candidates (gradlab.tuning)
        tune_problems, tuned = _check_tune(data, where)
        problems += tune_problems
        valid = {**valid, **tuned}
    over, given = grid.base(defaults, data, CHECKS, bad), grid.length_given(data)
    huge = grid.too_many_runs(valid, len(over["seeds"]), where)
    if huge:  # nothing else can be checked without expanding it
        return Checked(problems + [huge], [])
    points = grid.expand(valid)
    configs = [grid.resolve_point(over, point, defaults, given) for point in points]
    problems += _check_between_keys(data, points, configs, bad, where)
    singles = [grid.resolve_point(over, {p: iv}, defaults, given) for p, values in valid.items() for iv in values]
    problems += _check_same_runs(valid, points, configs, singles, where)
    runs = [({**copy.deepcopy(cfg), "seed": seed}, {path: value for path, (_, value) in point.items()})
            for point, cfg in zip(points, configs) for seed in over["seeds"]]
    # Sections checked against the runs (a new section's checker, returning its problems, goes here too).
    if "expect" in data:
        given_grid = data["grid"] if isinstance(data.get("grid"), dict) else {}
        unsure = bad | {p for p, values in given_grid.items()
                        if p not in valid or (isinstance(values, list) and len(valid[p]) < len(values))}
        problems += _check_expect(data["expect"], [cfg for cfg, _ in runs], where, unsure)
    return Checked(problems, runs)


def _check_tune(data: dict, where) -> tuple[list[str], dict]:
    """The ``tune:`` section (``gradlab.tuning``): its problems, one located line each, and the valid tuned
    keys as grid entries (dotted path -> [(index, value)]) for the grid to expand with."""
    problems, checks, tune = [], CHECKS, data["tune"]
    if not isinstance(tune, dict):
        problems.append(f"{where('tune')}: expected a mapping of dotted.key: [values], seeds and metric, "
                        f"got {tune!r}")
        return problems, {}
    seeds = tune.get("seeds")
    reported = data.get("seeds", [0]) if isinstance(data.get("seeds", [0]), list) else []
    reported_ints = {r for r in reported if isinstance(r, int)}  # a set: long seed lists compared in linear time
    if seeds is None:
        problems.append(f"{where('tune')}: missing seeds: the selection seeds, e.g. seeds: [100, 101]")
    elif msg := checks["seeds"](seeds):
        problems.append(f"{where('tune.seeds')}: {msg}")
    elif shared := [s for s in seeds if s in reported_ints]:
        problems.append(f"{where('tune.seeds')}: {', '.join(map(str, shared))} also in seeds ({where('seeds')}); "
                        "the selection seeds must be others, or the comparison reports runs it was tuned on")
    metric = tune.get("metric", "final_loss")
    if metric not in TUNE_METRICS:
        problems.append(f"{where('tune.metric')}: unknown metric {metric!r}{did_you_mean(metric, TUNE_METRICS)}; "
                        f"valid: {', '.join(TUNE_METRICS)}")
    tuned = {}
    for path, values in tune.items():
        if path in ("seeds", "metric"):
            continue
        loc = where(f"tune.{path}")
        if path not in checks or path in ("seeds", "name"):
            settable = [k for k in checks if k not in ("seeds", "name")]
            problems.append(f"{loc}: cannot tune unknown key {path!r}{did_you_mean(path, settable)}")
            continue
        if (gridded := grid.grid_key_of(data.get("grid"), path)) is not None:
            problems.append(f"{loc}: the grid sets {gridded} too ({where(f'grid.{gridded}')}); "
                            "a key is either tuned per arm or an axis of the comparison, not both")
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"{loc}: expected a non-empty list of values, got {values!r}")
            continue
        kept, seen = [], set()  # seen: each kept value as JSON, so a long list is checked in linear time
        for i, v in enumerate(values):
            if msg := checks[path](v):
                problems += [f"{where(f'tune.{path}[{i}]')}: {line}" for line in msg.splitlines()]
            elif (text := json.dumps(v, sort_keys=True)) in seen:
                problems.append(f"{where(f'tune.{path}[{i}]')}: {v!r} is listed twice; keep one")
            else:
                kept.append((i, v))
                seen.add(text)
        if len(kept) == len(values):
            tuned[path] = kept
    if not any(k not in ("seeds", "metric") for k in tune):
        problems.append(f"{where('tune')}: names no key to tune, e.g. train.lr: [1.0e-3, 1.0e-2]")
    # Both phases against MAX_RUNS, from the lists as written (a wrong value still counts), before anything
    # expands: a tuned experiment's selection runs are arms x combinations x selection seeds.
    given = data.get("grid") if isinstance(data.get("grid"), dict) else {}
    arms = math.prod(len(v) for v in given.values() if isinstance(v, list) and v)
    sizes = {p: len(v) for p, v in tune.items() if p not in ("seeds", "metric") and isinstance(v, list) and v}
    if huge := grid.too_many_tuned_runs(arms, sizes, len(reported), len(seeds) if isinstance(seeds, list) else 0,
                                        where):
        return problems + [huge], {}  # the tuned keys are not expanded: the grid alone is checked further
    return problems, tuned


def _check_keys(data: dict, where, defaults: dict) -> tuple[list[str], set[str]]:
    """Unknown keys at the top level and in each section; and the sections that are not a mapping."""
    problems, bad = [], set()
    top = list(defaults) + ["expect", "tune"]
    for k in data:
        if k not in top:
            problems.append(f"{where(k)}: unknown key {k!r}{did_you_mean(k, top)}")
    for section in (k for k, v in defaults.items() if isinstance(v, dict) and k != "grid"):
        value = data.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{where(section)}: expected a mapping, got {value!r}")
            bad.add(section)
            continue
        names = list(defaults[section])
        for k in value:
            if k not in names:
                problems.append(f"{where(f'{section}.{k}')}: unknown key {section}.{k}"
                                f"{did_you_mean(k, names)}; valid: {', '.join(names)}")
    return problems, bad


def _check_values(data: dict, where) -> tuple[list[str], set[str]]:
    """Each key's own value; and the paths of wrong ones."""
    problems, bad = [], set()
    for path, check_value in CHECKS.items():
        try:
            value = get_path(data, path)
        except (KeyError, TypeError):
            continue  # absent: the default applies
        msg = check_value(value)
        if msg:  # one line per problem (a clip spec may have several)
            bad.add(path)
            problems += [f"{where(path)}: {line}" for line in msg.splitlines()]
    return problems, bad


def _check_grid(given, where) -> tuple[dict, list[str], set[str]]:
    """Each grid key and value, by CHECKS; a grid key in VARIANT_SECTIONS lists partial sections.

    Returns the valid part, dotted path -> [(index, value)]; the problems; and the paths with no valid value.
    """
    if not isinstance(given, dict):
        return {}, [f"{where('grid')}: expected a mapping of dotted.path: [values], got {given!r}"], {"grid"}
    valid, problems, bad = {}, [], set()
    for path, values in given.items():
        loc = where(f"grid.{path}")
        if path in grid.VARIANT_SECTIONS:  # a list of partial sections, e.g. model variants
            kept, found = _check_variants(path, values, where)
            problems += found
        elif path not in CHECKS or path in ("seeds", "name"):
            settable = [k for k in CHECKS if k not in ("seeds", "name")]
            problems.append(f"{loc}: grid over unknown key {path!r}{did_you_mean(path, settable)}")
            continue
        elif not isinstance(values, list) or not values:
            problems.append(f"{loc}: expected a non-empty list of values, got {values!r}")
            kept = []
        else:
            kept = []
            for i, v in enumerate(values):
                msg = CHECKS[path](v)
                if msg:
                    problems += [f"{where(f'grid.{path}[{i}]')}: {line}" for line in msg.splitlines()]
                else:
                    kept.append((i, v))
        if kept:
            valid[path] = kept
        else:
            bad.add(path)
    return valid, problems, bad


def _check_variants(section: str, values, where) -> tuple[list, list[str]]:
    """A grid's list of partial sections: the valid ones as [(index, variant)], and the problems."""
    problems, kept = [], []
    if not isinstance(values, list) or not values:
        problems.append(f"{where(f'grid.{section}')}: expected a non-empty list of {section} mappings, got {values!r}")
        values = []
    for i, variant in enumerate(values):
        at = f"grid.{section}[{i}]"
        if not isinstance(variant, dict) or not variant:
            problems.append(f"{where(at)}: expected a mapping of {section} keys, got {variant!r}")
            continue
        found = len(problems)
        for k, v in variant.items():
            key = f"{section}.{k}"
            if key not in CHECKS:
                valid_keys = [c.split(".", 1)[1] for c in CHECKS if c.startswith(section + ".")]
                problems.append(f"{where(at)}: unknown {section} key {k!r}{did_you_mean(k, valid_keys)}")
                continue
            msg = CHECKS[key](v)
            if msg:
                problems += [f"{where(at)}.{k}: {line}" for line in msg.splitlines()]
        if len(problems) == found:
            kept.append((i, variant))
    return kept, problems


def _check_between_keys(data: dict, points: list[dict], configs: list[dict], bad: set[str], where) -> list[str]:
    """CROSS_CHECKS on every grid point, each distinct problem reported once, at the key that causes it."""
    found: dict[tuple[str, str], dict] = {}  # (location, problem) -> its details and grid points
    for n, (point, cfg) in enumerate(zip(points, configs)):
        for keys, cross_check in CROSS_CHECKS:
            if any((k in bad or k.split(".")[0] in bad) and not grid.grid_origin(k, point) for k in keys):
                continue  # a value that is itself wrong, reported as such
            problem = cross_check(cfg)
            if problem:
                location = next((o for k in keys if (o := grid.origin(k, point, data))), keys[0])
                seen = found.setdefault((location, problem[0]), {"details": set(), "points": []})
                seen["details"].add(problem[1])
                seen["points"].append(n)
    out = []
    for (location, problem), seen in found.items():
        detail = next(iter(seen["details"])) if len(seen["details"]) == 1 else ""
        out.append(f"{where(location)}: {problem}{detail}{grid.which_points(points, seen['points'], location)}")
    return out


def _check_same_runs(valid: dict, points: list[dict], configs: list[dict], singles: list[dict], where) -> list[str]:
    """Grid values that resolve to one run (lstm twice; none and {kind: none}), which would train twice.

    ``singles``: the config each grid value alone resolves to, in the grid's order.
    """
    problems, at = [], 0
    for path, values in valid.items():
        resolved, at = singles[at:at + len(values)], at + len(values)
        for a, b in itertools.combinations(range(len(values)), 2):
            if resolved[a] == resolved[b] and all(resolved[c] != resolved[b] for c in range(a)):
                (i, u), (j, v) = values[a], values[b]
                problems.append(f"{where(f'grid.{path}')}: [{i}] {grid.value_label(path, u)} and [{j}] "
                                f"{grid.value_label(path, v)} are the same run; keep one")
    if problems:
        return problems
    first: dict[str, int] = {}  # values that differ yet combine into one run, e.g. across a section grid
    for n, cfg in enumerate(configs):
        m = first.setdefault(json.dumps(cfg, sort_keys=True), n)
        if m != n:
            shown = [", ".join(f"{k}={grid.value_label(k, v)}" for k, (_, v) in points[x].items()) for x in (m, n)]
            problems.append(f"{where('grid')}: the grid points [{shown[0]}] and [{shown[1]}] are the same run")
    return problems


def _column_key(column: str) -> str:
    """An ``expect:`` grouping column's config key (``gradlab.vocabulary.COLUMN_KEYS``)."""
    return COLUMN_KEYS.get(column) or next(
        (f"{s}.{column}" for s in grid.VARIANT_SECTIONS if f"{s}.{column}" in CHECKS), column)


def _check_expect(entries, configs: list[dict], where, unsure: set[str]) -> list[str]:
    """The ``expect:`` list: syntax, known columns, and every ``where`` matching some run (``configs``).

    A selector on a key in ``unsure`` (wrong, or some of its grid values wrong) is not matched: the
    runs it would match may be missing for that reason, which is reported already.
    """
    rows = [config_columns(cfg) for cfg in configs]
    columns = [c for c in rows[0] if c not in ("experiment", "device", "threads")]
    parsed, problems = expectations.parse(entries, columns)
    out = [f"{where(path)}: {msg}" for path, msg in problems]
    for exp in parsed:
        for key, selector in (("where", exp.where), ("versus", exp.versus or {})):
            keys = [_column_key(k) for k in selector]
            if any(k not in columns for k in selector) or any(k in unsure or k.split(".")[0] in unsure
                                                              for k in keys + ["grid"]):
                continue
            if selector and not any(expectations.matches(row, selector) for row in rows):
                out.append(f"{where(f'expect[{exp.index}].{key}')}: matches no run of this config: "
                           + ", ".join(f"{k}={v!r}" for k, v in selector.items()))
    return out
