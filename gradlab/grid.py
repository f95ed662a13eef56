"""The grid: ``grid:`` expanded into points, and the checks that need every point.

A config's ``grid`` maps dotted keys (or whole sections, as lists of variants) to lists of
values; every combination is one point, and every point times every seed one run. A constraint
between keys (CROSS_CHECKS) may hold at some points and not others, so it is checked on each
point's resolved config and reported once, at the key that causes it, naming the grid values
where it holds. Two grid values that resolve to one run are reported too: they would train twice.

The config's keys are ``config``'s: it passes in the value checks, how to resolve a point into a
config and how to label a grid value, so the import goes one way, config -> grid.
"""

from __future__ import annotations

import itertools
import json
import math

import yaml

from gradlab.cells import CELLS, FORGET_GATE
from gradlab.tasks import resolve
from gradlab.yamlfile import did_you_mean, get_path


def check_grid(grid, checks: dict, sections, where, problems: list[str], bad: set[str]) -> dict:
    """Each grid key and value, by ``checks`` (dotted path -> check of one value); a grid key in ``sections``
    lists partial sections. Returns the valid part, dotted path -> [(index, value)]; a path with no valid
    value goes to ``bad``."""
    if not isinstance(grid, dict):
        problems.append(f"{where('grid')}: expected a mapping of dotted.path: [values], got {grid!r}")
        bad.add("grid")
        return {}
    valid = {}
    for path, values in grid.items():
        loc = where(f"grid.{path}")
        kept = []
        if path in sections:  # a list of partial sections, e.g. model variants
            if not isinstance(values, list) or not values:
                problems.append(f"{loc}: expected a non-empty list of {path} mappings, got {values!r}")
                values = []
            for i, variant in enumerate(values):
                at = f"grid.{path}[{i}]"
                if not isinstance(variant, dict) or not variant:
                    problems.append(f"{where(at)}: expected a mapping of {path} keys, got {variant!r}")
                    continue
                found = len(problems)
                for k, v in variant.items():
                    key = f"{path}.{k}"
                    if key not in checks:
                        valid_keys = [c.split(".", 1)[1] for c in checks if c.startswith(path + ".")]
                        problems.append(f"{where(at)}: unknown {path} key {k!r}{did_you_mean(k, valid_keys)}")
                        continue
                    msg = checks[key](v)
                    if msg:
                        problems += [f"{where(at)}.{k}: {line}" for line in msg.splitlines()]
                if len(problems) == found:
                    kept.append((i, variant))
        elif path not in checks or path in ("seeds", "name"):
            settable = [k for k in checks if k not in ("seeds", "name")]
            problems.append(f"{loc}: grid over unknown key {path!r}{did_you_mean(path, settable)}")
            continue
        elif not isinstance(values, list) or not values:
            problems.append(f"{loc}: expected a non-empty list of values, got {values!r}")
        else:
            for i, v in enumerate(values):
                msg = checks[path](v)
                if msg:
                    problems += [f"{where(f'grid.{path}[{i}]')}: {line}" for line in msg.splitlines()]
                else:
                    kept.append((i, v))
        if kept:
            valid[path] = kept
        else:
            bad.add(path)
    return valid


# The most runs (grid points x seeds) a config may expand to: over 100 times the largest shipped sweep
# (configs/example.yaml, 72 runs). Validation builds and checks every run's config (~0.2 ms of CPU
# each), so 10^6 points took 180 s and 4.2 GB; a larger grid is refused before it is expanded.
MAX_RUNS = 10_000


def too_many_runs(grid: dict, seeds: int, where) -> str | None:
    """The problem when the grid's points times ``seeds`` pass MAX_RUNS, counted without expanding."""
    sizes = [len(values) for values in grid.values()]
    runs = math.prod(sizes) * seeds
    if runs > MAX_RUNS:
        shape = " x ".join(f"{n} {path}" for path, n in zip(grid, sizes))
        return (f"{where('grid')}: {runs:,} runs ({shape} x {seeds} seeds), more than the {MAX_RUNS:,} "
                f"a config may expand to; split the grid over several configs")
    return None


def grid_key_of(grid, path: str) -> str | None:
    """The grid key that sets ``path`` (or a key within it, or the section around it), or None.

    A grid value overrides the config's value at every point, so a ``--set`` of such a key would
    change nothing: the caller makes it an error, naming this key.
    """
    if not isinstance(grid, dict):
        return None
    for key, values in grid.items():
        keys = [key]
        if isinstance(values, list) and all(isinstance(v, dict) for v in values) and "." not in key:
            keys = [f"{key}.{k}" for v in values for k in v]  # a section's variants: each sets its keys
        for k in keys:
            if k == path or k.startswith(path + ".") or path.startswith(k + "."):
                return key
    return None


def set_in_grid(grid, sets: list[tuple[str, object]], where) -> list[str]:
    """A ``--set`` of a key the grid sets would change no run (the grid's values win): one problem each."""
    problems = []
    for key, value in sets:
        gridded = None if key.startswith("grid.") or key == "grid" else grid_key_of(grid, key)
        if gridded is None:
            continue
        values = yaml.safe_dump([value], default_flow_style=True, width=1 << 16).strip() if gridded == key else "[...]"
        problems.append(f"--set {key}: the grid sets {gridded} ({where(f'grid.{gridded}')}), and its values "
                        f"override this one; set them instead: --set grid.{gridded}={values}")
    return problems


def expand(grid: dict) -> list[dict]:
    """Every combination of the grid's values: [{dotted path: (index, value)}], in the grid's order."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


# ---------------------------------------------------------------------------
# Constraints between keys, checked on each grid point. Each returns None or (problem, detail): the
# detail names the other key's value, left out where it differs between the grid points that show the
# problem (they are listed instead).

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


def _nonlinearity_cell(cfg):
    if cfg["model"]["nonlinearity"] is not None and cfg["model"]["cell"] != "orthogonal":
        return "only the orthogonal cell takes a nonlinearity", f" ({cfg['model']['cell']} has its own)"


def _init_cell(cfg):
    if cfg["model"]["init"] is not None and cfg["model"]["cell"] != "orthogonal":
        return "only the orthogonal cell takes an init option", f", not {cfg['model']['cell']}"


def _constrain_cell(cfg):
    if cfg["model"]["constrain"] and cfg["model"]["cell"] != "orthogonal":
        return "only the orthogonal cell can be kept orthogonal", f", not {cfg['model']['cell']}"


def _forget_bias_cell(cfg):
    cell = cfg["model"]["cell"]
    if cfg["model"]["forget_bias"] is not None and CELLS[cell].recurrence not in FORGET_GATE:
        return f"only {' and '.join(FORGET_GATE)} have a forget gate", f", not {cell}"


def _omega_cell(cfg):
    cell, layers = cfg["model"]["cell"], cfg["model"]["layers"]
    if cfg["train"]["omega"] and (CELLS[cell].recurrence != "rnn" or layers != 1):
        omega_cells = ", ".join(k for k, c in CELLS.items() if c.recurrence == "rnn")
        got = cell if layers == 1 else f"{layers} layers"
        return (f"only for one layer of the {omega_cells} cells "
                f"(Pascanu's Ω is defined for h_t = act(W x_t + U h_(t-1) + b))", f", got {got}")


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
]


def _grid_origin(path: str, point: dict) -> str | None:
    """Where the grid sets ``path`` at this point (grid.PATH[i] or grid.SECTION[i].KEY); None if it does not."""
    section, _, key = path.partition(".")
    for gpath, (i, value) in reversed(point.items()):  # a later grid key overrides an earlier one
        if gpath == path:
            return f"grid.{path}[{i}]"
        if gpath == section and key in value:
            return f"grid.{section}[{i}].{key}"
    return None


def _origin(path: str, point: dict, data: dict) -> str | None:
    """Where the value of ``path`` at this point comes from: the grid, the config (or --set), or None: its default."""
    found = _grid_origin(path, point)
    if found:
        return found
    try:
        get_path(data, path)
    except (KeyError, TypeError):
        return None
    return path


def _which_points(points: list[dict], failing: list[int], location: str, label) -> str:
    """`` (for grid model.cell=lstm|gru)``: the grid values where a problem holds, when it is not all of them.

    The grid key the problem is located at is left out: its location already names the value.
    """
    keys = [k for k in (points[0] if points else {}) if not location.startswith(f"grid.{k}[")]
    labels = {k: {pt[k][0]: label(k, pt[k][1]) for pt in points} for k in keys}
    seen = sorted({tuple(points[n][k][0] for k in keys) for n in failing})
    if len(seen) == math.prod(len(v) for v in labels.values()):
        return ""  # whatever the other grid values
    per_key = {k: sorted({combo[j] for combo in seen}) for j, k in enumerate(keys)}
    if len(seen) == math.prod(len(v) for v in per_key.values()):  # every combination of some values per key
        return " (for grid " + ", ".join(f"{k}={'|'.join(labels[k][i] for i in per_key[k])}"
                                         for k in keys if len(per_key[k]) < len(labels[k])) + ")"
    shown = "; ".join(", ".join(f"{k}={labels[k][i]}" for k, i in zip(keys, combo)) for combo in seen[:3])
    more = f"; and {len(seen) - 3} more" if len(seen) > 3 else ""
    return f" (for grid points {shown}{more})"


def check_between_keys(data: dict, points: list[dict], configs: list[dict], bad: set[str], where,
                       label) -> list[str]:
    """CROSS_CHECKS on every grid point, each distinct problem reported once, at the key that causes it."""
    found: dict[tuple[str, str], dict] = {}  # (location, problem) -> its details and grid points
    for n, (point, cfg) in enumerate(zip(points, configs)):
        for keys, check in CROSS_CHECKS:
            if any((k in bad or k.split(".")[0] in bad) and not _grid_origin(k, point) for k in keys):
                continue  # a value that is itself wrong, reported as such
            problem = check(cfg)
            if problem:
                location = next((o for k in keys if (o := _origin(k, point, data))), keys[0])
                seen = found.setdefault((location, problem[0]), {"details": set(), "points": []})
                seen["details"].add(problem[1])
                seen["points"].append(n)
    out = []
    for (location, problem), seen in found.items():
        detail = next(iter(seen["details"])) if len(seen["details"]) == 1 else ""
        out.append(f"{where(location)}: {problem}{detail}{_which_points(points, seen['points'], location, label)}")
    return out


def check_same_runs(grid: dict, points: list[dict], configs: list[dict], resolve_point, where,
                    label) -> list[str]:
    """Grid values that resolve to one run (lstm twice; none and {kind: none}), which would train twice."""
    problems = []
    for path, values in grid.items():
        resolved = [resolve_point({path: iv}) for iv in values]
        for a, b in itertools.combinations(range(len(values)), 2):
            if resolved[a] == resolved[b] and all(resolved[c] != resolved[b] for c in range(a)):
                (i, u), (j, v) = values[a], values[b]
                problems.append(f"{where(f'grid.{path}')}: [{i}] {label(path, u)} and [{j}] "
                                f"{label(path, v)} are the same run; keep one")
    if problems:
        return problems
    first: dict[str, int] = {}  # values that differ yet combine into one run, e.g. across a section grid
    for n, cfg in enumerate(configs):
        m = first.setdefault(json.dumps(cfg, sort_keys=True), n)
        if m != n:
            shown = [", ".join(f"{k}={label(k, v)}" for k, (_, v) in points[x].items()) for x in (m, n)]
            problems.append(f"{where('grid')}: the grid points [{shown[0]}] and [{shown[1]}] are the same run")
    return problems
