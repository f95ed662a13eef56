"""Experiment configs: defaults in code, YAML overrides, validation, and grid expansion.

A config file states only what differs from the defaults below. ``load``
parses it, applies ``--set`` overrides, checks *every* key at once and
expands ``grid`` × ``seeds`` into runs. Every problem is reported as one line
``file:line: key.path: message`` in a single ``ConfigError``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gradlab import expectations
from gradlab.cells import CELLS, FORGET_GATE, INITS
from gradlab.diagnostics import Thresholds
from gradlab.remedies import CLIPS
from gradlab.results import clip_label, tbptt_label
from gradlab.tasks import TASKS, resolve

# ---------------------------------------------------------------------------
# Defaults: one dataclass per component; a config overrides only what differs.


@dataclass
class TaskConfig:
    name: str = "adding"        # a key of gradlab.tasks.TASKS
    length: int = 50            # T: the dependency length (copy: the delay)
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
OPTIMIZERS = ("sgd", "adam", "rmsprop")
# where a run ran does not change what it is
NOT_IN_RUN_ID = ("device", "threads")
# Thresholds change a run's verdicts, so they are hashed; a section left entirely at its defaults is not,
# which keeps the ids of runs recorded before it was hashed.
HASHED_WHEN_SET = ("diagnostics",)


class ConfigError(Exception):
    """All problems found in a config; one ``location: message`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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
            return f"unknown {what} {v!r}{_did_you_mean(v, registry)}; valid: {', '.join(registry)}"
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
KEYS = list(CHECKS)  # every settable dotted path

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


def _did_you_mean(word, choices):
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    problems = [f"tbptt has no key {k!r}{_did_you_mean(k, ('k1', 'k2'))}; valid: k1, k2"
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
        raise ValueError(f"unknown clip kind {kind!r}{_did_you_mean(kind, CLIPS)}; valid: {', '.join(CLIPS)}")
    rule = CLIPS[kind]
    resolved, problems = {"kind": kind}, []
    for k in v:
        if k != "kind" and k not in rule.params:
            valid = ", ".join(rule.params) or "none"
            problems.append(f"clip {kind!r} has no parameter {k!r}{_did_you_mean(k, rule.params)}; "
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
# Reading YAML with line numbers.

class _Loader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 floats: PyYAML's YAML 1.1 resolver wants a dot, so 1e-3 was a string."""


_FLOAT = "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {first: [r for r in resolvers if r[0] != _FLOAT]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:
     [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def _read_yaml(text: str) -> tuple[object, dict[str, int], list[tuple[str, int, int]]]:
    """(data, dotted key path -> 1-based line, keys given twice as (path, first line, second line)).

    Grid keys are kept whole; a key given twice keeps its later value, as PyYAML does.
    """
    lines: dict[str, int] = {}
    twice: list[tuple[str, int, int]] = []

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            for k, v in node.value:
                key = f"{path}.{k.value}" if path else str(k.value)
                line = k.start_mark.line + 1
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in seen:
                        twice.append((key, seen[k.tag, k.value], line))
                    seen.setdefault((k.tag, k.value), line)
                lines[key] = line
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{path}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{path}[{i}]")

    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    if root is not None:
        walk(root, "")
    return data, lines, twice


def parse_yaml(text: str, source: str) -> tuple[dict, dict[str, int], list[str]]:
    """A config file's text -> (data, key path -> line, problems found while reading: keys given twice)."""
    try:
        data, lines, twice = _read_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{where}: malformed YAML: {problem}"]) from None
    if data is None:
        return {}, lines, []
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the config must be a mapping of keys, got {type(data).__name__}"])
    return data, lines, [f"{source}:{second}: {key}: given twice, "
                         + (f"at lines {first} and {second}" if first != second else "on this line") + "; keep one"
                         for key, first, second in twice]


def parse_override(item: str) -> tuple[str, object]:
    """``train.lr=0.01`` -> ("train.lr", 0.01); the value is read as YAML."""
    path, eq, raw = item.partition("=")
    path = path.strip()
    if not eq or not path:
        raise ConfigError([f"--set {item}: expected dotted.path=value"])
    try:
        value, _, twice = _read_yaml(raw) if raw.strip() else (None, {}, [])
    except yaml.YAMLError:
        raise ConfigError([f"--set {item}: the value is not valid YAML"]) from None
    if twice:
        raise ConfigError([f"--set {path}.{key}: given twice; keep one" for key, _, _ in twice])
    return path, value


def _read_text(path: Path, source: str) -> str:
    """The file as UTF-8 text; an unreadable or undecodable file is a ConfigError."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{source}: cannot read the config: {e.strerror}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:  # a binary or Latin-1 file: one located line, not a traceback
        raise ConfigError([f"{source}: cannot read the config: not UTF-8 text (byte {e.start})"]) from None


def _set_path(data: dict, path: str, value) -> None:
    if path.startswith("grid."):  # grid keys are themselves dotted paths
        data.setdefault("grid", {})
        if not isinstance(data["grid"], dict):
            data["grid"] = {}
        data["grid"][path[len("grid."):]] = value
        return
    parts = path.split(".")
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _get_path(data: dict, path: str):
    node = data
    for p in path.split("."):
        node = node[p]
    return node


# ---------------------------------------------------------------------------
# Validation and expansion.

def _defaults() -> dict:
    return dataclasses.asdict(Config())


def _check_keys(data: dict, where, problems: list[str], bad: set[str]) -> None:
    """Unknown keys at the top level and in each section; a section that is not a mapping goes to ``bad``."""
    top = [f.name for f in dataclasses.fields(Config)] + ["expect"]
    for k in data:
        if k not in top:
            problems.append(f"{where(k)}: unknown key {k!r}{_did_you_mean(k, top)}")
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
                                f"{_did_you_mean(k, names)}; valid: {', '.join(names)}")


def _check_values(data: dict, where, problems: list[str], bad: set[str]) -> None:
    """Each key's own value; the paths of wrong ones go to ``bad``."""
    for path, check in CHECKS.items():
        try:
            value = _get_path(data, path)
        except (KeyError, TypeError):
            continue  # absent: the default applies
        msg = check(value)
        if msg:  # one line per problem (a clip spec may have several)
            bad.add(path)
            problems += [f"{where(path)}: {line}" for line in msg.splitlines()]


def _check_grid(grid, where, problems: list[str], bad: set[str]) -> dict:
    """Each grid key and value. Returns the valid part, dotted path -> [(index, value)]; a path with no
    valid value goes to ``bad``."""
    if not isinstance(grid, dict):
        problems.append(f"{where('grid')}: expected a mapping of dotted.path: [values], got {grid!r}")
        bad.add("grid")
        return {}
    valid = {}
    for path, values in grid.items():
        loc = where(f"grid.{path}")
        kept = []
        if path in SECTIONS and path != "diagnostics":  # a list of partial sections, e.g. model variants
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
                    if key not in CHECKS:
                        valid_keys = [c.split(".", 1)[1] for c in CHECKS if c.startswith(path + ".")]
                        problems.append(f"{where(at)}: unknown {path} key {k!r}{_did_you_mean(k, valid_keys)}")
                        continue
                    msg = CHECKS[key](v)
                    if msg:
                        problems += [f"{where(at)}.{k}: {line}" for line in msg.splitlines()]
                if len(problems) == found:
                    kept.append((i, variant))
        elif path not in CHECKS or path in ("seeds", "name"):
            settable = [k for k in KEYS if k not in ("seeds", "name")]
            problems.append(f"{loc}: grid over unknown key {path!r}{_did_you_mean(path, settable)}")
            continue
        elif not isinstance(values, list) or not values:
            problems.append(f"{loc}: expected a non-empty list of values, got {values!r}")
        else:
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
    return valid


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
        _get_path(data, path)
    except (KeyError, TypeError):
        return None
    return path


def _value_label(path: str, value) -> str:
    if path == "train.clip":
        return clip_label(resolve_clip(value))
    if path == "train.tbptt":
        return "full" if value is None else str(tbptt_label(resolve_tbptt(value)))
    if path in SECTIONS:
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def _which_points(points: list[dict], failing: list[int], location: str) -> str:
    """`` (for grid model.cell=lstm|gru)``: the grid values where a problem holds, when it is not all of them.

    The grid key the problem is located at is left out: its location already names the value.
    """
    keys = [k for k in (points[0] if points else {}) if not location.startswith(f"grid.{k}[")]
    labels = {k: {pt[k][0]: _value_label(k, pt[k][1]) for pt in points} for k in keys}
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


def _check_between_keys(data: dict, points: list[dict], configs: list[dict], bad: set[str], where) -> list[str]:
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
        out.append(f"{where(location)}: {problem}{detail}{_which_points(points, seen['points'], location)}")
    return out


def _check_same_runs(grid: dict, points: list[dict], configs: list[dict], base: dict, where) -> list[str]:
    """Grid values that resolve to one run (lstm twice; none and {kind: none}), which would train twice."""
    problems = []
    for path, values in grid.items():
        resolved = [_resolve_point(base, {path: iv}) for iv in values]
        for a, b in itertools.combinations(range(len(values)), 2):
            if resolved[a] == resolved[b] and all(resolved[c] != resolved[b] for c in range(a)):
                (i, u), (j, v) = values[a], values[b]
                problems.append(f"{where(f'grid.{path}')}: [{i}] {_value_label(path, u)} and [{j}] "
                                f"{_value_label(path, v)} are the same run; keep one")
    if problems:
        return problems
    first: dict[str, int] = {}  # values that differ yet combine into one run, e.g. across a section grid
    for n, cfg in enumerate(configs):
        m = first.setdefault(json.dumps(cfg, sort_keys=True), n)
        if m != n:
            label = [", ".join(f"{k}={_value_label(k, v)}" for k, (_, v) in points[x].items()) for x in (m, n)]
            problems.append(f"{where('grid')}: the grid points [{label[0]}] and [{label[1]}] are the same run")
    return problems


def _identity(cfg: dict) -> dict:
    """What makes a run what it is: the resolved config minus NOT_IN_RUN_ID and minus every value
    equal to its default, so a key added to gradlab later (at its default) keeps existing ids."""
    defaults = _defaults()
    defaults["train"]["clip"] = resolve_clip(defaults["train"]["clip"])
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
    """Stable id: readable grid values and seed, then a hash of what differs from the defaults."""
    identity = _identity(cfg)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    parts = []
    for path, value in overrides.items():
        if path == "train.clip":
            value = clip_label(resolve_clip(value))
        elif path == "train.tbptt":
            value = "full" if value is None else tbptt_label(resolve_tbptt(value))  # 5/10 -> 5-10 below
        elif path in SECTIONS:
            parts.append(",".join(f"{k}={v}" for k, v in value.items()))
            continue
        parts.append(f"{path.split('.')[-1]}={value}")
    slug = "_".join(parts + [f"seed={cfg['seed']}"])
    slug = "".join(c if c.isalnum() or c in "=._-()" else "-" for c in slug)
    return f"{slug}_{digest}"


def _base(data: dict, bad: set[str]) -> dict:
    """The defaults with the config's valid values over them (a wrong value's default stands in)."""
    base = _defaults()
    for path in CHECKS:
        if path in bad or path.split(".")[0] in bad:
            continue
        try:
            value = _get_path(data, path)
        except (KeyError, TypeError):
            continue  # absent: the default applies
        _set_path(base, path, copy.deepcopy(value))
    return base


def _resolve_point(base: dict, point: dict) -> dict:
    """One grid point's resolved config, without its seed; ``point`` is {dotted path: (index, value)}."""
    cfg = copy.deepcopy(base)
    for path, (_, value) in point.items():
        if path in SECTIONS:  # a section variant: its keys over the section
            cfg[path].update(copy.deepcopy(value))
        else:
            _set_path(cfg, path, copy.deepcopy(value))
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


def _from_set(path: str, set_paths) -> bool:
    """Whether ``path``'s value comes from a --set: the same key, a section around it or a key within it."""
    bare = path.split("[")[0]
    for s in set_paths:
        if bare == s or (s == "grid" and bare.startswith("grid.")):
            return True
        if not bare.startswith("grid") and (bare.startswith(s + ".") or s.startswith(bare + ".")):
            return True  # grid keys are whole dotted paths: no prefixes there
    return False


def _in_file_order(problems: list[str], source: str) -> list[str]:
    """Problems located at a line of the file first, top to bottom; then the rest, as found."""
    def line(p):
        head = p[len(source) + 1:].split(":", 1)[0] if p.startswith(source + ":") else ""
        return (0, int(head)) if head.isdigit() else (1, 0)
    return sorted(problems, key=line)


def validate(data: dict, source: str = "<config>", lines: dict | None = None,
             set_paths: tuple = (), problems: tuple | list = ()) -> list[Run]:
    """Check everything at once; return the expanded runs or raise ConfigError with every problem.

    ``problems`` are those found earlier (keys given twice, malformed --set), reported with the rest.
    Constraints between keys are checked wherever the keys involved are valid, on the runs the valid
    part of the config expands to.
    """
    lines = lines or {}

    def where(path):
        if _from_set(path, set_paths):
            return f"--set {path}"
        line = lines.get(path)
        return f"{source}:{line}: {path}" if line else f"{source}: {path}"

    problems, bad = list(problems), set()
    _check_keys(data, where, problems, bad)
    _check_values(data, where, problems, bad)
    grid = _check_grid(data["grid"], where, problems, bad) if "grid" in data else {}
    if data.get("grid") == {}:
        problems.append(f"{where('grid')}: the grid is empty; remove it or give it keys")
    base = _base(data, bad)
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    configs = [_resolve_point(base, point) for point in points]
    problems += _check_between_keys(data, points, configs, bad, where)
    problems += _check_same_runs(grid, points, configs, base, where)
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
        raise ConfigError(_in_file_order(problems, source))
    return runs


@dataclass
class Experiment:
    name: str
    runs: list[Run]
    expect: list          # the validated ``expect:`` entries, as written
    about: str = ""       # the file's leading comment block: what it shows, which paper it follows
    source: str = ""      # the config file's path


def header_comment(text: str) -> str:
    """The comment lines at the top of a YAML file, without their ``#``; a blank line or a key ends it."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


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
        text = _read_text(path, source)
        data, lines, problems = parse_yaml(text, source)
    except ConfigError as e:
        raise ConfigError(e.problems + set_problems) from None
    for key, value in sets:
        _set_path(data, key, value)
    runs = validate(data, source, lines, tuple(key for key, _ in sets), problems + set_problems)
    return Experiment(data.get("name", Config.name), runs, data.get("expect", []), header_comment(text), source)
