"""Experiment configs: defaults in code, YAML overrides, loading, and the runs (with their ids) a config expands to.

A config file states only what differs from the defaults below. ``load``
parses it, applies ``--set`` overrides, checks *every* key at once and
expands ``grid`` × ``seeds`` into runs. Every problem is reported as one line
``file:line: key.path: message`` in a single ``ConfigError``. Reading the file
(YAML with line numbers) is ``gradlab.yamlfile``'s; the rules a config must follow
and their evaluation are ``gradlab.rules``'; the grid's points and their resolution
``gradlab.grid``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from gradlab.cells import takers
from gradlab.defaults import Config, ModelConfig, TaskConfig, TrainConfig
from gradlab.diagnostics import Thresholds
from gradlab.grid import VARIANT_SECTIONS, set_in_grid, value_label
from gradlab.remedies import resolve_clip
from gradlab.rules import CHECKS, check
from gradlab.vocabulary import CONFIG_FILE, HASH_CHARS, LEGACY_HASH_CHARS, config_hash, format_run_id, run_hash
from gradlab.yamlfile import (
    ConfigError,
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

SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "diagnostics": Thresholds}
# where a run ran does not change what it is
NOT_IN_RUN_ID = ("device", "threads")
# Thresholds change a run's verdicts, so they are hashed; a section left entirely at its defaults is not,
# which keeps the ids of runs recorded before it was hashed.
HASHED_WHEN_SET = ("diagnostics",)


@dataclass
class Run:
    """One point of the grid for one seed: the resolved config and its stable id."""

    id: str
    config: dict          # fully resolved, JSON-able; training reads only this
    overrides: dict       # the grid values that make this run (dotted path -> value)


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

def options() -> dict[str, tuple[str, str]]:
    """Remedies a config sets by key (the others are named in a registry), for `gradlab ls`:
    dotted key -> (its values, one line with the source); the cells each applies to from their entries."""
    def cells(option):
        names = takers(option)
        return f"{names[0]} cell" if len(names) == 1 else f"{', '.join(names)} cells"
    return {
        "model.layers": ("N >= 1", "N layers of the cell stacked, layer l's states are layer l+1's inputs; "
                                   "profiles per layer (Graves et al. 2013; Pascanu et al. 2014)"),
        "model.init": ("null | henaff", f"{cells('init')}: U = exp(A), A block-diagonal skew-symmetric with 2x2 "
                                        "blocks, angles ~ U[-pi, pi] (Henaff, Szlam & LeCun 2016)"),
        "model.constrain": ("false | true", f"{cells('constrain')}: U kept orthogonal through training, "
                                            "U = B·exp(A) (Lezcano-Casado & Martinez-Rubio 2019)"),
        "model.forget_bias": ("null | number | chrono", f"{', '.join(takers('forget_bias'))}: forget-gate bias, a "
                                                         "constant (Gers et al. 2000) or log U[1, T_max-1] (chrono: "
                                                         "Tallec & Ollivier 2018)"),
        "train.tbptt": ("null | k | {k1, k2}", "truncated BPTT: update every k1 steps, back-propagating k2 >= k1 "
                                               "steps (Williams & Peng 1990)"),
        "train.omega": ("alpha >= 0", "Pascanu's regulariser: keeps ‖δ_t ∂h_t/∂h_(t-1)‖ near ‖δ_t‖, weight alpha "
                                      f"(Pascanu, Mikolov & Bengio 2013, eq. 9); {', '.join(takers('omega'))}"),
        "train.weight_decay": ("lambda >= 0", "L2 on the input and recurrent weight matrices, not biases or the "
                                              "readout (Krogh & Hertz 1992)"),
    }


# ---------------------------------------------------------------------------
# Validation and run ids.

def _defaults() -> dict:
    return dataclasses.asdict(Config())


def validate(data: dict, source: str = "<config>", lines: dict | None = None,
             set_paths: tuple = (), problems: tuple | list = ()) -> list[Run]:
    """Check everything at once (``gradlab.rules.check``); return the expanded runs or raise ConfigError
    with every problem, in file order.

    ``problems`` are those found earlier (keys given twice, malformed --set), reported with the rest.
    """
    checked = check(data, locator(source, lines or {}, set_paths), _defaults())
    if problems or checked.problems:
        raise ConfigError(in_file_order([*problems, *checked.problems], source))
    return [Run(run_id(cfg, overrides), cfg, overrides) for cfg, overrides in checked.runs]


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

    The id's format (and its limit of MAX_ID_BYTES) is ``gradlab.vocabulary.format_run_id``'s.
    """
    parts = []
    for path, value in overrides.items():
        if path in VARIANT_SECTIONS:
            parts.append(",".join(f"{k}={v}" for k, v in value.items()))
        else:  # a tbptt of 5/10 becomes 5-10 below
            parts.append(f"{path.split('.')[-1]}={value_label(path, value)}")
    return format_run_id(parts, cfg["seed"], identity_hash(cfg))


def identity_hash(cfg: dict) -> str:
    """The hash a run id ends in, of a resolved run config (a run's ``config``, or its ``config.json``)."""
    return config_hash(_identity(cfg))


def legacy_dirs(folder: Path, run: Run) -> list[Path]:
    """The directories under ``folder`` that a gradlab before HASH_CHARS grew named for ``run``.

    Such a name ends in the first LEGACY_HASH_CHARS digits of the same SHA-1 digest; it is the run's only
    when its ``config.json`` holds the run (``holds_run``: 32 bits alone told two configs apart too rarely:
    issue 22). So a sweep resumed over an old folder takes its finished runs as done, under their old
    names, and trains none twice.
    """
    digest = run_hash(run.id)
    if len(digest) != HASH_CHARS:
        return []
    return [path for path in sorted(Path(folder).glob(f"*_{digest[:LEGACY_HASH_CHARS]}")) if holds_run(path, run)]


# What reading a run directory's config.json raises when it is damaged: unreadable (OSError), not UTF-8 or
# not JSON (ValueError), nested deeper than the parser's recursion limit (RecursionError), or values of a
# shape no config has (TypeError, AttributeError, while its identity is taken or its rules checked).
DAMAGED_CONFIG = (OSError, ValueError, TypeError, AttributeError, RecursionError)


def holds_run(path: Path, run: Run) -> bool | None:
    """Whose run the run directory ``path`` holds, by its ``config.json``.

    True: ``run``'s (the same identity, the text its hash is of). False: another run's, a complete resolved
    config that passes every rule (under ``run``'s hash, a hash collision: comparing hashes could not see
    one). None: no config.json, or a damaged one (not JSON, missing keys, of the wrong shape), which no run
    can be told from: the run is redone there, as a damaged run always is.
    """
    try:
        stored = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            return None
        if _identity_text(stored) == _identity_text(run.config):
            return True
        return False if _resolved_config(stored) else None
    except DAMAGED_CONFIG:
        return None


def _identity_text(cfg: dict) -> str:
    """What ``identity_hash`` hashes (``vocabulary.config_hash``: the identity as sorted JSON)."""
    return json.dumps(_identity(cfg), sort_keys=True)


def _resolved_config(stored: dict) -> bool:
    """``stored`` is a whole resolved run config that passes every rule: the keys of a run's config
    (``seed`` for ``seeds``, no grid), each section a mapping with all its keys, and, read as a config
    file of one seed, no problem and one run (every resolved config of ``configs/`` reads back so)."""
    defaults = _defaults()
    if set(stored) != (set(defaults) - {"seeds", "grid"}) | {"seed"}:
        return False
    if any(not isinstance(stored[s], dict) or set(stored[s]) != set(defaults[s]) for s in SECTIONS):
        return False
    data = {**{k: v for k, v in stored.items() if k != "seed"}, "seeds": [stored["seed"]]}
    checked = check(data, lambda key: key, defaults)
    return not checked.problems and len(checked.runs) == 1


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
