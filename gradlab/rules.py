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
from dataclasses import dataclass

from gradlab import expectations, grid
from gradlab.cells import CELLS, INITS, recurrence_problem, refusal
from gradlab.checks import (
    above_one,
    boolean,
    choice,
    fraction,
    int_at_least,
    is_int,
    is_number,
    non_negative_number,
    optional,
    positive_number,
    resolve_tbptt,
    string,
)
from gradlab.remedies import resolve_clip
from gradlab.tasks import TASKS, resolve
from gradlab.vocabulary import COLUMN_KEYS, DTYPES, ENGINES, MAX_ID_BYTES, OPTIMIZERS, TUNE_METRICS, config_columns
from gradlab.yamlfile import did_you_mean, get_path

# ---------------------------------------------------------------------------
# Each key's value.

def _name(v):
    """The experiment name is a directory name under --out."""
    if not isinstance(v, str) or not v or not all(c.isalnum() or c in "-_." for c in v) or v[0] == ".":
        return f"expected a name of letters, digits, '-', '_' or '.', got {v!r}"
    if len(v.encode()) > MAX_ID_BYTES:  # a directory name, like a run id
        return f"at most {MAX_ID_BYTES} bytes (a directory name), got {len(v.encode())}"


def _device(v):
    if not isinstance(v, str) or not (v == "cpu" or v == "cuda" or v.startswith("cuda:")):
        return f"expected cpu, cuda or cuda:N, got {v!r}"


def _seeds(v):
    if not isinstance(v, list) or not v:
        return f"expected a non-empty list of integers, got {v!r}"
    bad = [s for s in v if not is_int(s) or s < 0]
    if bad:
        return f"seeds must be non-negative integers, got {bad!r}"
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
    "name": _name,
    "task.name": choice(TASKS, "task"),
    "task.length": int_at_least(2),
    "task.eval_size": int_at_least(1),
    "task.variant": optional(string),
    "model.cell": _cell,
    "model.hidden": int_at_least(1),
    "model.nonlinearity": optional(choice({"tanh": 0, "relu": 0}, "nonlinearity")),
    "model.skip": int_at_least(1),
    "model.engine": choice(dict.fromkeys(ENGINES), "engine"),
    "model.layers": int_at_least(1),
    "model.init": optional(choice(INITS, "init")),
    "model.constrain": boolean,
    "model.forget_bias": optional(_forget_bias),
    "train.steps": int_at_least(1),
    "train.batch_size": int_at_least(1),
    "train.optimizer": choice(OPTIMIZERS, "optimizer"),
    "train.lr": positive_number,
    "train.clip": _clip,
    "train.tbptt": _tbptt,
    "train.eval_every": int_at_least(1),
    "train.log_every": int_at_least(1),
    "train.on_nonfinite": choice({"skip": 0, "stop": 0}, "on_nonfinite policy"),
    "train.omega": non_negative_number,
    "train.weight_decay": non_negative_number,
    "diagnostics.horizon_fraction": fraction,
    "diagnostics.vanishing_ratio": fraction,
    "diagnostics.spike_factor": above_one,
    "diagnostics.spike_window": int_at_least(1),
    "seeds": _seeds,
    "device": _device,
    "dtype": choice(dict.fromkeys(DTYPES), "dtype"),
    "threads": int_at_least(1),
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
    if seeds is None:
        problems.append(f"{where('tune')}: missing seeds: the selection seeds, e.g. seeds: [100, 101]")
    elif msg := checks["seeds"](seeds):
        problems.append(f"{where('tune.seeds')}: {msg}")
    elif shared := [s for s in seeds if s in reported]:
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
        kept = []
        for i, v in enumerate(values):
            if msg := checks[path](v):
                problems += [f"{where(f'tune.{path}[{i}]')}: {line}" for line in msg.splitlines()]
            elif any(json.dumps(v) == json.dumps(u) for _, u in kept):
                problems.append(f"{where(f'tune.{path}[{i}]')}: {v!r} is listed twice; keep one")
            else:
                kept.append((i, v))
        if len(kept) == len(values):
            tuned[path] = kept
    if not any(k not in ("seeds", "metric") for k in tune):
        problems.append(f"{where('tune')}: names no key to tune, e.g. train.lr: [1.0e-3, 1.0e-2]")
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
