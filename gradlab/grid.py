"""The grid: ``grid:`` expanded into points, and each point resolved into a run's config.

A config's ``grid`` maps dotted keys (or whole sections, as lists of variants) to lists of
values; every combination is one point, and every point times every seed one run. A point
is resolved over the config's valid values (``base``), which lie over the defaults: the
caller (``gradlab.config``) hands those in as a plain dict, so the import goes one way,
config -> rules -> grid. The checks on every point are ``gradlab.rules``'; the helpers here
name where a point's value comes from and which points a problem holds at.
"""

from __future__ import annotations

import copy
import itertools
import math

import yaml

from gradlab.checks import resolve_tbptt
from gradlab.remedies import resolve_clip
from gradlab.tasks import resolve
from gradlab.vocabulary import FULL_BPTT, FULL_WINDOW, clip_label, tbptt_label
from gradlab.yamlfile import get_path, set_path

VARIANT_SECTIONS = ("task", "model", "train")  # a grid may list variants of these: grid: {model: [{cell: lstm}, ...]}


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


def too_many_tuned_runs(arms: int, tuned: dict, seeds: int, selection_seeds: int, where) -> str | None:
    """The problem when a ``tune:`` section passes MAX_RUNS (``gradlab.tuning``), counted without expanding.

    Two counts are bounded: the runs trained (arms x combinations x selection seeds, then arms x seeds)
    and the candidates validation checks (arms x combinations x seeds: every combination at every seed,
    as any may be chosen). ``tuned``: dotted path -> its number of values.
    """
    def n(count: int, word: str) -> str:
        return f"{count:,} {word}{'' if count == 1 else 's'}"

    combinations = math.prod(tuned.values())
    shape = " x ".join(f"{k} {path}" for path, k in tuned.items())
    selection, reported, candidates = arms * combinations * selection_seeds, arms * seeds, arms * combinations * seeds
    if selection + reported > MAX_RUNS:
        return (f"{where('tune')}: {selection + reported:,} runs ({n(arms, 'arm')} x {n(combinations, 'combination')} "
                f"({shape}) x {n(selection_seeds, 'selection seed')} = {n(selection, 'selection run')}, then "
                f"{n(arms, 'arm')} x {n(seeds, 'seed')} = {n(reported, 'reported run')}), more than the "
                f"{MAX_RUNS:,} a config may expand to; tune fewer values, on fewer selection seeds, or split the "
                "grid over several configs")
    if candidates > MAX_RUNS:
        return (f"{where('tune')}: {n(candidates, 'candidate run')} ({n(arms, 'arm')} x "
                f"{n(combinations, 'combination')} ({shape}) x {n(seeds, 'seed')}, each of which an arm may "
                f"choose), more than the {MAX_RUNS:,} a config may expand to; tune fewer values, report fewer "
                "seeds, or split the grid over several configs")
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
# A point resolved into a run's config.

def value_label(path: str, value) -> str:
    """A grid value as problems and run ids name it: norm(1.0) for a clip spec, full for full BPTT or a window
    of null (the whole sequence), {cell: lstm} for a section (run ids write a section their own way)."""
    if path == "train.clip":
        return clip_label(resolve_clip(value))
    if path == "train.tbptt":
        return FULL_BPTT if value is None else str(tbptt_label(resolve_tbptt(value)))
    if path == "task.window":
        return FULL_WINDOW if value is None else str(value)
    if path in VARIANT_SECTIONS:
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def base(defaults: dict, data: dict, paths, bad: set[str]) -> dict:
    """The defaults with the config's valid values at ``paths`` over them (a wrong value's default stands in)."""
    out = copy.deepcopy(defaults)
    for path in paths:
        if path in bad or path.split(".")[0] in bad:
            continue
        try:
            value = get_path(data, path)
        except (KeyError, TypeError):
            continue  # absent: the default applies
        set_path(out, path, copy.deepcopy(value))
    return out


def length_given(data: dict) -> bool:
    """Whether the config (or --set) states task.length itself, so no task's own default applies."""
    return isinstance(data.get("task"), dict) and "length" in data["task"]


def _task_default_length(task_cfg: dict, default: int) -> int:
    """task.length for a point that states none: the task's own default (digits: 64), else ``default``."""
    try:
        own = resolve(task_cfg).default_length
    except ValueError:  # an unknown task or variant: reported by its own check
        own = None
    return default if own is None else own


def resolve_point(over: dict, point: dict, defaults: dict, length_given: bool = True) -> dict:
    """One grid point's resolved config over ``over`` (``base``), without its seed; ``point`` is
    {dotted path: (index, value)}.

    ``length_given``: the config states task.length; if not, and the point does not either, the
    point's task gets its own default length. ``defaults``: the config's defaults, which tell the
    default length and which thresholds are floats.
    """
    cfg = copy.deepcopy(over)
    for path, (_, value) in point.items():
        if path in VARIANT_SECTIONS:  # a section variant: its keys over the section
            cfg[path].update(copy.deepcopy(value))
        else:
            set_path(cfg, path, copy.deepcopy(value))
    if not (length_given or "task.length" in point or "length" in point.get("task", (None, {}))[1]):
        cfg["task"]["length"] = _task_default_length(cfg["task"], defaults["task"]["length"])
    cfg.pop("grid")
    cfg.pop("seeds")
    cfg["train"]["clip"] = resolve_clip(cfg["train"]["clip"])
    cfg["train"]["tbptt"] = resolve_tbptt(cfg["train"]["tbptt"])
    # 50 -> 50.0 where the threshold is a float, so equal settings hash alike
    cfg["diagnostics"] = {k: float(v) if isinstance(defaults["diagnostics"][k], float) else v
                          for k, v in cfg["diagnostics"].items()}
    return cfg


# ---------------------------------------------------------------------------
# Where a point's values come from, for the checks on every point (gradlab.rules).

def grid_origin(path: str, point: dict) -> str | None:
    """Where the grid sets ``path`` at this point (grid.PATH[i] or grid.SECTION[i].KEY); None if it does not."""
    section, _, key = path.partition(".")
    for gpath, (i, value) in reversed(point.items()):  # a later grid key overrides an earlier one
        if gpath == path:
            return f"grid.{path}[{i}]"
        if gpath == section and key in value:
            return f"grid.{section}[{i}].{key}"
    return None


def origin(path: str, point: dict, data: dict) -> str | None:
    """Where the value of ``path`` at this point comes from: the grid, the config (or --set), or None: its default."""
    found = grid_origin(path, point)
    if found:
        return found
    try:
        get_path(data, path)
    except (KeyError, TypeError):
        return None
    return path


def which_points(points: list[dict], failing: list[int], location: str) -> str:
    """`` (for grid model.cell=lstm|gru)``: the grid values where a problem holds, when it is not all of them.

    The grid key the problem is located at is left out: its location already names the value.
    """
    keys = [k for k in (points[0] if points else {}) if not location.startswith(f"grid.{k}[")]
    labels = {k: {pt[k][0]: value_label(k, pt[k][1]) for pt in points} for k in keys}
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
