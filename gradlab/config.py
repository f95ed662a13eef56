"""Experiment configs: defaults in code, YAML overrides, validation, and the runs a config expands to.

A config file states only what differs from the defaults below. ``load``
parses it, applies ``--set`` overrides, checks *every* key at once and
expands ``grid`` × ``seeds`` into runs. Every problem is reported as one line
``file:line: key.path: message`` in a single ``ConfigError``. Reading the file
(YAML with line numbers) is ``gradlab.yamlfile``'s; the grid's points and the checks
between keys on each of them are ``gradlab.grid``'s.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from gradlab import expectations, tuning
from gradlab.cells import CELLS, INITS
from gradlab.diagnostics import Thresholds
from gradlab.grid import (
    check_between_keys,
    check_grid,
    check_same_runs,
    expand,
    grid_key_of,
    set_in_grid,
    too_many_runs,
)
from gradlab.remedies import CLIPS
from gradlab.results import clip_label, tbptt_label
from gradlab.tasks import TASKS, resolve
from gradlab.yamlfile import (
    ConfigError,
    did_you_mean,
    get_path,
    header_comment,
    in_file_order,
    locator,
    not_a_mapping,
    parse_override,
    parse_yaml,
    read_text,
    set_path,
)

# ---------------------------------------------------------------------------
# Defaults: one dataclass per component; a config overrides only what differs.


@dataclass
class TaskConfig:
    name: str = "adding"        # a key of gradlab.tasks.TASKS
    length: int = 50            # T: the dependency length (copy: the delay); a task may have its own (digits: 64)
    eval_size: int = 1000       # sequences in the fixed held-out evaluation set
    variant: str | None = None  # a source variant, a key of gradlab.tasks.VARIANTS[name]; None = the task itself


@dataclass
class ModelConfig:
    cell: str = "vanilla"       # a key of gradlab.cells.CELLS
    hidden: int = 64
    nonlinearity: str | None = None  # orthogonal cell only: tanh | relu (default tanh)
    skip: int = 10              # skip cell: h_t also reads h[t-skip]
    engine: str = "scan"        # scan (hand-written BPTT) | autograd (unrolled reference)
    layers: int = 1             # recurrent layers of the cell, stacked: layer l's states are layer l+1's inputs
    init: str | None = None     # None = the cell's own; henaff (orthogonal cell): 2x2 rotation blocks
    constrain: bool = False     # orthogonal cell: keep U orthogonal through training (U = B·exp(A))
    forget_bias: float | str | None = None  # lstm, gru: None = torch's init; a number; chrono


@dataclass
class TrainConfig:
    steps: int = 1000           # training batches
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: str | dict = "none"   # a key of gradlab.remedies.CLIPS, or {kind: norm, max_norm: 1.0}
    tbptt: int | dict | None = None  # None = full BPTT; k = detach every k steps, update per chunk;
    #                                  {k1, k2}: update every k1 steps, back-propagating k2 >= k1 steps
    eval_every: int = 100
    log_every: int = 1          # metrics.csv keeps every k-th training step (and every evaluation)
    on_nonfinite: str = "skip"  # skip the update | stop the run, marked diverged
    omega: float = 0.0          # α of Pascanu's Ω regulariser (Pascanu et al. 2013 suggest 2-4); 0 = off
    weight_decay: float = 0.0   # λ of L2 on the input and recurrent weight matrices; 0 = off


@dataclass
class Config:
    name: str = "experiment"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: Thresholds = field(default_factory=Thresholds)
    seeds: list = field(default_factory=lambda: [0])
    grid: dict = field(default_factory=dict)
    device: str = "cpu"         # cpu | cuda | cuda:N
    dtype: str = "float32"      # float32 | float64
    threads: int = 1            # torch threads per run


SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "diagnostics": Thresholds}
VARIANT_SECTIONS = ("task", "model", "train")  # a grid may list variants of these: grid: {model: [{cell: lstm}, ...]}
OPTIMIZERS = ("sgd", "adam", "rmsprop")
# where a run ran does not change what it is
NOT_IN_RUN_ID = ("device", "threads")
# Thresholds change a run's verdicts, so they are hashed; a section left entirely at its defaults is not,
# which keeps the ids of runs recorded before it was hashed.
HASHED_WHEN_SET = ("diagnostics",)
# A run id names a directory (at most 255 bytes on Linux, macOS and Windows); 200 leaves room for the
# names made from it, e.g. plots' profile_heatmap_<id>.png.
MAX_ID_BYTES = 200


@dataclass
class Run:
    """One point of the grid for one seed: the resolved config and its stable id."""

    id: str
    config: dict          # fully resolved, JSON-able; training reads only this
    overrides: dict       # the grid values that make this run (dotted path -> value)


# ---------------------------------------------------------------------------
# Checks of single values; each returns an error message or None.

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _choice(registry, what):
    def check(v):
        if not isinstance(v, str):
            return f"expected a {what} name (string), got {v!r}"
        if v not in registry:
            return f"unknown {what} {v!r}{did_you_mean(v, registry)}; valid: {', '.join(registry)}"
    return check


def _int_at_least(lo):
    def check(v):
        if not _is_int(v):
            return f"expected an integer, got {v!r}"
        if v < lo:
            return f"must be at least {lo}, got {v}"
    return check


def _positive_number(v):
    if not _is_number(v):
        return f"expected a number, got {v!r}"
    if not v > 0:
        return f"must be positive, got {v}"


def _non_negative_number(v):
    if not _is_number(v):
        return f"expected a number, got {v!r}"
    if not v >= 0:
        return f"must be zero or positive, got {v}"


def _percentile(v):
    if not _is_number(v):
        return f"expected a number, got {v!r}"
    if not 0 < v <= 100:
        return f"must be in (0, 100], got {v}"


def _fraction(v):
    if not _is_number(v):
        return f"expected a number, got {v!r}"
    if not 0 < v < 1:
        return f"must be between 0 and 1 (exclusive), got {v}"


def _above_one(v):
    if not _is_number(v):
        return f"expected a number, got {v!r}"
    if not v > 1:
        return f"must be greater than 1, got {v}"


def _string(v):
    if not isinstance(v, str):
        return f"expected a string, got {v!r}"


def _optional(check):
    return lambda v: None if v is None else check(v)


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
    bad = [s for s in v if not _is_int(s) or s < 0]
    if bad:
        return f"seeds must be non-negative integers, got {bad!r}"
    if len(set(v)) != len(v):
        return f"seeds repeat: {v!r}"


def _clip(v):
    try:
        resolve_clip(v)
    except ValueError as e:
        return str(e)


def _bool(v):
    if not isinstance(v, bool):
        return f"expected true or false, got {v!r}"


def _forget_bias(v):
    if not (_is_number(v) or v == "chrono"):
        return f"expected a number or chrono, got {v!r}"


def _tbptt(v):
    try:
        resolve_tbptt(v)
    except ValueError as e:
        return str(e)


CHECKS = {
    "name": _name,
    "task.name": _choice(TASKS, "task"),
    "task.length": _int_at_least(2),
    "task.eval_size": _int_at_least(1),
    "task.variant": _optional(_string),
    "model.cell": _choice(CELLS, "cell"),
    "model.hidden": _int_at_least(1),
    "model.nonlinearity": _optional(_choice({"tanh": 0, "relu": 0}, "nonlinearity")),
    "model.skip": _int_at_least(1),
    "model.engine": _choice({"scan": 0, "autograd": 0}, "engine"),
    "model.layers": _int_at_least(1),
    "model.init": _optional(_choice(INITS, "init")),
    "model.constrain": _bool,
    "model.forget_bias": _optional(_forget_bias),
    "train.steps": _int_at_least(1),
    "train.batch_size": _int_at_least(1),
    "train.optimizer": _choice(dict.fromkeys(OPTIMIZERS), "optimizer"),
    "train.lr": _positive_number,
    "train.clip": _clip,
    "train.tbptt": _tbptt,
    "train.eval_every": _int_at_least(1),
    "train.log_every": _int_at_least(1),
    "train.on_nonfinite": _choice({"skip": 0, "stop": 0}, "on_nonfinite policy"),
    "train.omega": _non_negative_number,
    "train.weight_decay": _non_negative_number,
    "diagnostics.horizon_fraction": _fraction,
    "diagnostics.vanishing_ratio": _fraction,
    "diagnostics.spike_factor": _above_one,
    "diagnostics.spike_window": _int_at_least(1),
    "seeds": _seeds,
    "device": _device,
    "dtype": _choice({"float32": 0, "float64": 0}, "dtype"),
    "threads": _int_at_least(1),
}


def unchecked(config_cls, sections: dict, checks: dict) -> list[str]:
    """Dotted keys of the dataclasses without a check, and checks of no key (``grid`` is checked apart).

    A field without a check would be accepted as a key yet never reach a run (``_base`` copies the
    checked keys): a default silently standing in for what the file says.
    """
    keys = {f.name for f in dataclasses.fields(config_cls) if f.name not in sections and f.name != "grid"}
    keys |= {f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)}
    return sorted(keys ^ set(checks))


if unchecked(Config, SECTIONS, CHECKS):  # at import: a new field cannot ship without its check
    raise TypeError(f"config keys and CHECKS differ: {', '.join(unchecked(Config, SECTIONS, CHECKS))}")

# Remedies a config sets by key (the others are named in a registry), for `gradlab ls`:
# dotted key -> (its values, one line with the source).
OPTIONS = {
    "model.layers": ("N >= 1", "N layers of the cell stacked, layer l's states are layer l+1's inputs; "
                               "profiles per layer (Graves et al. 2013; Pascanu et al. 2014)"),
    "model.init": ("null | henaff", "orthogonal cell: U = exp(A), A block-diagonal skew-symmetric with 2x2 "
                                    "blocks, angles ~ U[-pi, pi] (Henaff, Szlam & LeCun 2016)"),
    "model.constrain": ("false | true", "orthogonal cell: U kept orthogonal through training, U = B·exp(A) "
                                        "(Lezcano-Casado & Martinez-Rubio 2019)"),
    "model.forget_bias": ("null | number | chrono", "lstm, gru: forget-gate bias, a constant (Gers et al. 2000) "
                                                     "or log U[1, T_max-1] (chrono: Tallec & Ollivier 2018)"),
    "train.tbptt": ("null | k | {k1, k2}", "truncated BPTT: update every k1 steps, back-propagating k2 >= k1 "
                                           "steps (Williams & Peng 1990)"),
    "train.omega": ("alpha >= 0", "Pascanu's regulariser: keeps ‖δ_t ∂h_t/∂h_(t-1)‖ near ‖δ_t‖, weight alpha "
                                  "(Pascanu, Mikolov & Bengio 2013, eq. 9); vanilla, irnn, orthogonal"),
    "train.weight_decay": ("lambda >= 0", "L2 on the input and recurrent weight matrices, not biases or the "
                                          "readout (Krogh & Hertz 1992)"),
}

# The parameters of the clipping rules in gradlab.remedies.CLIPS, by name.
CLIP_PARAM_CHECKS = {
    "max_norm": _positive_number,        # norm, param_norm
    "clip_value": _positive_number,      # value
    "percentile": _percentile,           # autoclip
    "clipping": _positive_number,        # agc: λ
    "alpha": _fraction,                  # zclip: the EMA's factor
    "z_thresh": _positive_number,        # zclip
    "warmup": _int_at_least(1),          # zclip: the statistics need one norm (the code treats 0 as 1)
    "threshold": _positive_number,       # recurrent
    "mode": _choice({"value": 0, "norm": 0}, "recurrent clip mode"),  # recurrent
}


def resolve_tbptt(v) -> int | dict | None:
    """``null`` | ``k`` | ``{k1: 5, k2: 10}`` -> None | k | {"k1": 5, "k2": 10}; {k1: k, k2: k} -> k.

    TBPTT(k1, k2) (Williams & Peng 1990): update every k1 steps, back-propagating
    k2 >= k1 steps; the plain window k is k1 = k2 = k, written as the integer.
    """
    if v is None or (_is_int(v) and v >= 1):
        return v
    if _is_int(v):
        raise ValueError(f"a window must be at least 1 step, got {v}")
    if not isinstance(v, dict):
        raise ValueError(f"expected null, a window length (integer) or {{k1: ..., k2: ...}}, got {v!r}")
    problems = [f"tbptt has no key {k!r}{did_you_mean(k, ('k1', 'k2'))}; valid: k1, k2"
                for k in v if k not in ("k1", "k2")]
    problems += [f"tbptt.{k}: missing" for k in ("k1", "k2") if k not in v]
    problems += [f"tbptt.{k}: {msg}" for k in ("k1", "k2") if k in v and (msg := _int_at_least(1)(v[k]))]
    if not problems and v["k2"] < v["k1"]:
        problems.append(f"tbptt: k2 (steps back-propagated) must be at least k1 (steps per update), "
                        f"got k1={v['k1']}, k2={v['k2']}")
    if problems:
        raise ValueError("\n".join(problems))
    return v["k1"] if v["k1"] == v["k2"] else {"k1": v["k1"], "k2": v["k2"]}


def resolve_clip(v) -> dict:
    """``none`` | ``norm`` | ``{kind: norm, max_norm: 2}`` -> ``{"kind": "norm", "max_norm": 2.0}``.

    Every parameter is checked; a ValueError lists each problem on its own line.
    """
    if isinstance(v, str):
        v = {"kind": v}
    if not isinstance(v, dict):
        raise ValueError(f"expected a clip kind or a mapping with 'kind', got {v!r}")
    kind = v.get("kind")
    if kind not in CLIPS:
        raise ValueError(f"unknown clip kind {kind!r}{did_you_mean(kind, CLIPS)}; valid: {', '.join(CLIPS)}")
    rule = CLIPS[kind]
    resolved, problems = {"kind": kind}, []
    for k in v:
        if k != "kind" and k not in rule.params:
            valid = ", ".join(rule.params) or "none"
            problems.append(f"clip {kind!r} has no parameter {k!r}{did_you_mean(k, rule.params)}; "
                            f"valid: {valid}")
    for k, default in rule.params.items():
        val = v.get(k, default)
        msg = CLIP_PARAM_CHECKS[k](val)
        if msg:
            problems.append(f"clip {kind}.{k}: {msg}")
        else:  # 1 -> 1.0 where the parameter is a float, so equal specs resolve (and hash) alike
            resolved[k] = float(val) if isinstance(default, float) else val
    if problems:
        raise ValueError("\n".join(problems))
    return resolved


# ---------------------------------------------------------------------------
# Validation and expansion.

def _defaults() -> dict:
    return dataclasses.asdict(Config())


def _check_keys(data: dict, where, problems: list[str], bad: set[str]) -> None:
    """Unknown keys at the top level and in each section; a section that is not a mapping goes to ``bad``."""
    top = [f.name for f in dataclasses.fields(Config)] + ["expect", "tune"]
    for k in data:
        if k not in top:
            problems.append(f"{where(k)}: unknown key {k!r}{did_you_mean(k, top)}")
    for section, cls in SECTIONS.items():
        value = data.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{where(section)}: expected a mapping, got {value!r}")
            bad.add(section)
            continue
        names = [f.name for f in dataclasses.fields(cls)]
        for k in value:
            if k not in names:
                problems.append(f"{where(f'{section}.{k}')}: unknown key {section}.{k}"
                                f"{did_you_mean(k, names)}; valid: {', '.join(names)}")


def _check_values(data: dict, where, problems: list[str], bad: set[str]) -> None:
    """Each key's own value; the paths of wrong ones go to ``bad``."""
    for path, check in CHECKS.items():
        try:
            value = get_path(data, path)
        except (KeyError, TypeError):
            continue  # absent: the default applies
        msg = check(value)
        if msg:  # one line per problem (a clip spec may have several)
            bad.add(path)
            problems += [f"{where(path)}: {line}" for line in msg.splitlines()]


def _value_label(path: str, value) -> str:
    """A grid value as problems and run ids name it: norm(1.0) for a clip spec, full for full BPTT, {cell: lstm}
    for a section (run ids write a section their own way)."""
    if path == "train.clip":
        return clip_label(resolve_clip(value))
    if path == "train.tbptt":
        return "full" if value is None else str(tbptt_label(resolve_tbptt(value)))
    if path in SECTIONS:
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


@functools.cache
def _resolved_defaults() -> dict:
    """The defaults as a run's config holds them (the clip resolved); built once, as every run id reads
    them (a third of validating a grid), and never changed."""
    defaults = _defaults()
    defaults["train"]["clip"] = resolve_clip(defaults["train"]["clip"])
    return defaults


def _identity(cfg: dict) -> dict:
    """What makes a run what it is: the resolved config minus NOT_IN_RUN_ID and minus every value
    equal to its default, so a key added to gradlab later (at its default) keeps existing ids."""
    defaults = _resolved_defaults()
    identity = {}
    for k, v in cfg.items():
        if k in NOT_IN_RUN_ID:
            continue
        if isinstance(v, dict) and isinstance(defaults.get(k), dict):
            v = {kk: vv for kk, vv in v.items() if defaults[k].get(kk, object()) != vv}
            if not v and k in HASHED_WHEN_SET:
                continue
        elif defaults.get(k, object()) == v:
            continue
        identity[k] = v
    return identity


def run_id(cfg: dict, overrides: dict) -> str:
    """Stable id: readable grid values and seed, then a hash of what differs from the defaults.

    An id is a directory name, so at most MAX_ID_BYTES: a longer one keeps the first grid values
    that fit, cut where ``~`` marks (a character the readable part never holds otherwise), then the
    seed and the hash, which alone identifies the run.
    """
    identity = _identity(cfg)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    parts = []
    for path, value in overrides.items():
        if path in SECTIONS:
            parts.append(",".join(f"{k}={v}" for k, v in value.items()))
        else:  # a tbptt of 5/10 becomes 5-10 below
            parts.append(f"{path.split('.')[-1]}={_value_label(path, value)}")
    seed = f"seed={cfg['seed']}"
    slug = _filename_safe("_".join(parts + [seed]))
    if len(f"{slug}_{digest}".encode()) <= MAX_ID_BYTES:
        return f"{slug}_{digest}"
    tail = f"~_{seed}_{digest}"
    head = _filename_safe("_".join(parts)).encode()[:MAX_ID_BYTES - len(tail)]
    return head.decode("utf-8", "ignore") + tail  # "ignore": a character cut in two is dropped


def _filename_safe(text: str) -> str:
    """Letters, digits and ``=._-()+`` kept, anything else ``-``: ``+`` is kept, so 1e+30 is not 1e-30."""
    return "".join(c if c.isalnum() or c in "=._-()+" else "-" for c in text)


def _base(data: dict, bad: set[str]) -> dict:
    """The defaults with the config's valid values over them (a wrong value's default stands in)."""
    base = _defaults()
    for path in CHECKS:
        if path in bad or path.split(".")[0] in bad:
            continue
        try:
            value = get_path(data, path)
        except (KeyError, TypeError):
            continue  # absent: the default applies
        set_path(base, path, copy.deepcopy(value))
    return base


def _length_given(data: dict) -> bool:
    """Whether the config (or --set) states task.length itself, so no task's own default applies."""
    return isinstance(data.get("task"), dict) and "length" in data["task"]


def _task_default_length(task_cfg: dict) -> int:
    """task.length for a point that states none: the task's own default (digits: 64), else TaskConfig's."""
    try:
        own = resolve(task_cfg).default_length
    except ValueError:  # an unknown task or variant: reported by its own check
        own = None
    return TaskConfig.length if own is None else own


def _resolve_point(base: dict, point: dict, length_given: bool = True) -> dict:
    """One grid point's resolved config, without its seed; ``point`` is {dotted path: (index, value)}.

    ``length_given``: the config states task.length; if not, and the point does not either, the
    point's task gets its own default length.
    """
    cfg = copy.deepcopy(base)
    for path, (_, value) in point.items():
        if path in SECTIONS:  # a section variant: its keys over the section
            cfg[path].update(copy.deepcopy(value))
        else:
            set_path(cfg, path, copy.deepcopy(value))
    if not (length_given or "task.length" in point or "length" in point.get("task", (None, {}))[1]):
        cfg["task"]["length"] = _task_default_length(cfg["task"])
    cfg.pop("grid")
    cfg.pop("seeds")
    cfg["train"]["clip"] = resolve_clip(cfg["train"]["clip"])
    cfg["train"]["tbptt"] = resolve_tbptt(cfg["train"]["tbptt"])
    # 50 -> 50.0 where the threshold is a float, so equal settings hash alike
    cfg["diagnostics"] = {k: float(v) if isinstance(getattr(Thresholds, k), float) else v
                          for k, v in cfg["diagnostics"].items()}
    return cfg


# expect: grouping columns -> the config key behind each, where the name differs (see comparison.config_columns)
_COLUMN_KEYS = {"task": "task.name", "length": "task.length", "clip": "train.clip", "tbptt": "train.tbptt",
                "seed": "seeds"}


def _column_key(column: str) -> str:
    return _COLUMN_KEYS.get(column) or next(
        (f"{s}.{column}" for s in ("task", "model", "train") if f"{s}.{column}" in CHECKS), column)


def _check_expect(entries, runs: list[Run], where, unsure: set[str]) -> list[str]:
    """The ``expect:`` list: syntax, known columns, and every ``where`` matching some run.

    A selector on a key in ``unsure`` (wrong, or some of its grid values wrong) is not matched: the
    runs it would match may be missing for that reason, which is reported already.
    """
    from gradlab.comparison import config_columns

    rows = [config_columns(r.config) for r in runs]
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


def validate(data: dict, source: str = "<config>", lines: dict | None = None,
             set_paths: tuple = (), problems: tuple | list = ()) -> list[Run]:
    """Check everything at once; return the expanded runs or raise ConfigError with every problem.

    ``problems`` are those found earlier (keys given twice, malformed --set), reported with the rest.
    Constraints between keys are checked wherever the keys involved are valid, on the runs the valid
    part of the config expands to.
    """
    where = locator(source, lines or {}, set_paths)
    problems, bad = list(problems), set()
    _check_keys(data, where, problems, bad)
    _check_values(data, where, problems, bad)
    grid = check_grid(data["grid"], CHECKS, VARIANT_SECTIONS, where, problems, bad) if "grid" in data else {}
    if data.get("grid") == {}:
        problems.append(f"{where('grid')}: the grid is empty; remove it or give it keys")
    if "tune" in data:  # the tuned keys expand like grid keys: every arm's candidates (gradlab.tuning)
        grid = {**grid, **tuning.check(data, CHECKS, grid_key_of, where, problems)}
    base, length_given = _base(data, bad), _length_given(data)
    huge = too_many_runs(grid, len(base["seeds"]), where)
    if huge:  # nothing else can be checked without expanding it
        raise ConfigError(in_file_order(problems + [huge], source))
    points = expand(grid)
    configs = [_resolve_point(base, point, length_given) for point in points]
    problems += check_between_keys(data, points, configs, bad, where, _value_label)
    problems += check_same_runs(grid, points, configs, functools.partial(_resolve_point, base,
                                                                         length_given=length_given),
                                where, _value_label)
    runs = []
    for point, cfg in zip(points, configs):
        overrides = {path: value for path, (_, value) in point.items()}
        for seed in base["seeds"]:
            run = {**copy.deepcopy(cfg), "seed": seed}
            runs.append(Run(run_id(run, overrides), run, overrides))
    if "expect" in data:
        given = data["grid"] if isinstance(data.get("grid"), dict) else {}
        unsure = bad | {p for p, values in given.items()
                        if p not in grid or (isinstance(values, list) and len(grid[p]) < len(values))}
        problems += _check_expect(data["expect"], runs, where, unsure)
    if problems:
        raise ConfigError(in_file_order(problems, source))
    return runs


@dataclass
class Experiment:
    name: str
    runs: list[Run]
    expect: list          # the validated ``expect:`` entries, as written
    about: str = ""       # the file's leading comment block: what it shows, which paper it follows
    source: str = ""      # the config file's path
    tune: dict | None = None  # the validated ``tune:`` section (gradlab.tuning), None without one


def load(path: str | Path, overrides: list[str] = ()) -> tuple[str, list[Run]]:
    """Read a config file, apply ``--set`` overrides, validate, expand. Returns (name, runs)."""
    experiment = load_experiment(path, overrides)
    return experiment.name, experiment.runs


def load_experiment(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """Read a config file, apply ``--set`` overrides, validate, expand."""
    path = Path(path)
    source = str(path)
    sets, set_problems = [], []
    for item in overrides:  # every malformed one is reported, with the file's problems
        try:
            sets.append(parse_override(item))
        except ConfigError as e:
            set_problems += e.problems
    try:
        text = read_text(path, source)
        data, lines, problems = parse_yaml(text, source)
    except ConfigError as e:
        raise ConfigError(e.problems + set_problems) from None
    where = locator(source, lines, ())
    for key, _ in sets:  # set_path would replace it by a mapping, hiding what the file holds
        if blocked := not_a_mapping(data, key):
            set_problems.append(f"--set {key}: cannot set a key in {blocked}, which is "
                                f"{get_path(data, blocked)!r} ({where(blocked)}), not a mapping")
    sets = [(key, value) for key, value in sets if not not_a_mapping(data, key)]
    for key, value in sets:
        set_path(data, key, value)
    set_problems += set_in_grid(data.get("grid"), sets, where)
    runs = validate(data, source, lines, tuple(key for key, _ in sets), problems + set_problems)
    return Experiment(data.get("name", Config.name), runs, data.get("expect", []), header_comment(text), source,
                      data.get("tune"))
