"""Config loading, validation (every problem, located) and grid expansion."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab import expectations, results, tuning, vocabulary
from gradlab.cli import app
from gradlab.config import ConfigError, load, load_experiment

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems_of(path, sets=()):
    with pytest.raises(ConfigError) as e:
        load(path, list(sets))
    return e.value.problems


# (YAML, the substrings one problem line must contain); the first is its location, "file:line: key: "
BAD = [
    ("trian: {steps: 3}\n", ["c.yaml:1: trian: ", "unknown key 'trian'", "did you mean 'train'"]),
    ("train:\n  stesp: 3\n", ["c.yaml:2: train.stesp: ", "did you mean 'steps'"]),
    ("task: {name: adder}\n", ["c.yaml:1: task.name: ", "unknown task 'adder'", "adding", "copy"]),
    ("model: {cell: lstn}\n", ["c.yaml:1: model.cell: ", "did you mean 'lstm'", "vanilla"]),
    ("train: {clip: {kind: nrom}}\n", ["c.yaml:1: train.clip: ", "unknown clip kind 'nrom'", "did you mean 'norm'"]),
    ("train: {clip: {kind: norm, max_nrom: 1}}\n", ["c.yaml:1: train.clip: ", "no parameter 'max_nrom'", "max_norm"]),
    ("train: {clip: {kind: value, clip_value: -1}}\n", ["c.yaml:1: train.clip: ", "positive"]),
    ("train: {lr: -0.1}\n", ["c.yaml:1: train.lr: ", "must be positive"]),
    ("train: {lr: fast}\n", ["c.yaml:1: train.lr: ", "expected a number"]),
    ("train: {steps: 0}\n", ["c.yaml:1: train.steps: ", "at least 1"]),
    ("train: {steps: 2.5}\n", ["c.yaml:1: train.steps: ", "expected an integer"]),
    ("train: {tbptt: 0}\n", ["c.yaml:1: train.tbptt: ", "at least 1"]),
    ("task: {length: 1}\n", ["c.yaml:1: task.length: ", "at least 2"]),
    ("model: {hidden: true}\n", ["c.yaml:1: model.hidden: ", "expected an integer"]),
    ("train: {optimizer: adamw}\n", ["c.yaml:1: train.optimizer: ", "unknown optimizer", "adam"]),
    ("seeds: []\n", ["c.yaml:1: seeds: ", "non-empty list"]),
    ("seeds: [0, -1]\n", ["c.yaml:1: seeds: ", "non-negative"]),
    ("device: tpu\n", ["c.yaml:1: device: ", "cpu, cuda"]),
    ("name: a/b\n", ["c.yaml:1: name: ", "letters, digits"]),
    ("grid: {}\n", ["c.yaml:1: grid: ", "empty"]),
    ("grid: {model.cel: [lstm]}\n", ["c.yaml:1: grid.model.cel: ", "unknown key", "did you mean 'model.cell'"]),
    ("grid: {model.cell: []}\n", ["c.yaml:1: grid.model.cell: ", "non-empty list"]),
    ("grid: {model.cell: lstm}\n", ["c.yaml:1: grid.model.cell: ", "non-empty list"]),
    ("grid:\n  model.cell: [lstm, rnn]\n", ["c.yaml:2: grid.model.cell[1]: ", "unknown cell 'rnn'"]),
    ("task: {name: temporal_order, length: 5}\n",
     ["c.yaml:1: task.length: ", "temporal_order needs length >= 10, got 5"]),
    ("model: {cell: lstm, nonlinearity: relu}\n", ["c.yaml:1: model.nonlinearity: ", "only the orthogonal cell"]),
    ("model:\n  cell: lstm\n  init: henaff\n", ["c.yaml:3: model.init: ", "only the orthogonal cell", "not lstm"]),
    ("model: {cell: vanilla, layers: 2}\ntrain:\n  omega: 2\n", ["c.yaml:3: train.omega: ", "got 2 layers"]),
    ("task: [adding]\n", ["c.yaml:1: task: ", "expected a mapping"]),
    ("train:\n  lr: 0.1\ntrain:\n  steps: 3\n", ["c.yaml:3: train: ", "given twice, at lines 1 and 3"]),
    ("model: {cell: lstm, hidden: 8, cell: gru}\n", ["c.yaml:1: model.cell: ", "given twice"]),
    ("grid:\n  model.cell: [lstm, gru, lstm]\n", ["c.yaml:2: grid.model.cell: ", "[0] lstm and [2] lstm", "same run"]),
    ("train: {steps: 3\n", ["c.yaml:2: ", "malformed YAML"]),
    ("- just\n- a list\n", ["c.yaml: ", "must be a mapping"]),
]


@pytest.mark.parametrize("text, needles", BAD, ids=[b[0].strip()[:30] for b in BAD])
def test_bad_config_is_reported_located(tmp_path, text, needles):
    path = write(tmp_path, text)
    location, *rest = needles

    def reported(line):
        return line.startswith(f"{tmp_path}/{location}") and all(n in line for n in rest)

    problems = problems_of(path)
    assert any(reported(p) for p in problems), problems
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert any(reported(line.removeprefix("error: ")) for line in result.output.splitlines()), result.output


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "trian: 1\ntrain: {lr: -1, steps: 0}\nmodel: {cell: nope}\n")
    problems = problems_of(path)
    # in the file's order, each located by line and key
    assert [p.removeprefix(f"{path}:").split(": ")[:2] for p in problems] == [
        ["1", "trian"], ["2", "train.steps"], ["2", "train.lr"], ["3", "model.cell"]]
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()  # validation happens before any training


def test_defaults_fill_what_the_config_omits(tmp_path):
    name, runs = load(write(tmp_path, "name: x\ntask: {length: 7}\n"))
    assert name == "x" and len(runs) == 1
    cfg = runs[0].config
    assert cfg["task"] == {"name": "adding", "length": 7, "eval_size": 1000, "variant": None, "window": None}
    assert cfg["train"]["clip"] == {"kind": "none"}
    assert cfg["train"]["tbptt"] is None and cfg["seed"] == 0


def test_example_config_expands_to_the_full_grid():
    name, runs = load(ROOT / "configs" / "example.yaml")
    assert name == "adding-remedies"
    assert len(runs) == 6 * 3 * 2 * 2
    assert len({r.id for r in runs}) == len(runs)
    clips = {tuple(sorted(r.config["train"]["clip"].items())) for r in runs}
    assert clips == {(("kind", "none"),), (("kind", "norm"), ("max_norm", 1.0)),
                     (("clip_value", 0.5), ("kind", "value"))}


def test_every_shipped_config_validates():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    result = runner.invoke(app, ["validate", *map(str, configs)])
    assert result.exit_code == 0, result.output


def test_set_overrides_any_key_and_is_located(tmp_path):
    path = write(tmp_path, "grid: {model.cell: [lstm, gru]}\n")
    _, runs = load(path, ["train.lr=0.01", "train.clip={kind: norm, max_norm: 2}", "grid.model.cell=[irnn]",
                          "seeds=[3, 4]"])
    assert [r.config["model"]["cell"] for r in runs] == ["irnn", "irnn"]
    assert {r.config["seed"] for r in runs} == {3, 4}
    assert runs[0].config["train"]["lr"] == 0.01
    assert runs[0].config["train"]["clip"] == {"kind": "norm", "max_norm": 2.0}
    problems = problems_of(path, ["train.lr=-1", "model.hdiden=3"])
    assert any(p.startswith("--set train.lr") for p in problems)
    assert any("--set model.hdiden" in p and "did you mean 'hidden'" in p for p in problems)
    assert problems_of(path, ["train.lr"]) == ["--set train.lr: expected dotted.path=value"]


def test_run_id_is_stable_and_ignores_where_it_runs(tmp_path):
    path = write(tmp_path, "grid: {model.cell: [lstm, gru]}\nseeds: [0, 1]\n")
    ids = [r.id for r in load(path)[1]]
    assert ids == [r.id for r in load(path)[1]]
    assert ids == [r.id for r in load(path, ["threads=2"])[1]]
    assert ids != [r.id for r in load(path, ["train.lr=0.5"])[1]]
    assert ids[0].startswith("cell=lstm_seed=0_")


def test_missing_file_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "cannot read the config" in result.output


def test_run_id_ignores_keys_at_their_default(tmp_path):
    """A key gradlab adds later, at its default, must not change existing run ids (resume across versions)."""
    path = write(tmp_path, "model: {cell: lstm}\n")
    plain = load(path)[1][0]
    explicit = load(path, ["train.on_nonfinite=skip", "model.skip=10", "train.clip=none"])[1][0]
    assert plain.id == explicit.id
    assert plain.id != load(path, ["model.skip=3"])[1][0].id


# ---------------------------------------------------------------------------
# Every problem at once: constraints between keys, duplicates, --set, encodings


def test_constraints_between_keys_are_reported_with_the_single_key_problems(tmp_path):
    path = write(tmp_path, "task: {name: temporal_order, length: 5}\nmodel: {cell: vanilla, nonlinearity: relu}\n"
                           "train: {lr: -1}\n")
    assert [p.removeprefix(f"{path}:") for p in problems_of(path)] == [
        "1: task.length: temporal_order needs length >= 10, got 5",
        "2: model.nonlinearity: only the orthogonal cell takes a nonlinearity (vanilla has its own)",
        "3: train.lr: must be positive, got -1"]


def test_a_constraint_on_a_wrong_value_is_not_checked(tmp_path):
    """Only the wrong value is reported: its default must not stand in for it in the cross-key checks."""
    path = write(tmp_path, "task: {name: temporal_ordr, length: 5}\n")
    problems = problems_of(path)
    assert len(problems) == 1 and "unknown task 'temporal_ordr'" in problems[0], problems


def test_a_constraint_broken_at_every_grid_point_is_reported_once_where_set():
    problems = problems_of(ROOT / "configs" / "example.yaml", ["task.name=temporal_order", "task.length=5"])
    assert problems == ["--set task.length: temporal_order needs length >= 10, got 5"]


def test_a_constraint_broken_at_some_grid_points_names_them(tmp_path):
    path = write(tmp_path, "task: {length: 5}\nmodel:\n  init: henaff\ngrid:\n"
                           "  task.name: [adding, temporal_order]\n  model.cell: [orthogonal, lstm, gru]\n"
                           "  train.lr: [0.1, 0.01]\nseeds: [0, 1]\n")
    assert [p.removeprefix(f"{path}:") for p in problems_of(path)] == [
        "1: task.length: temporal_order needs length >= 10, got 5 (for grid task.name=temporal_order)",
        "3: model.init: only the orthogonal cell takes an init option (for grid model.cell=lstm|gru)"]
    path = write(tmp_path, "task: {name: temporal_order}\ngrid:\n  task.length: [5, 50, 7]\n"
                           "  model:\n    - {cell: lstm}\n    - {cell: gru, forget_bias: 1}\n")
    assert [p.removeprefix(f"{path}:") for p in problems_of(path)] == [
        "3: grid.task.length[0]: temporal_order needs length >= 10, got 5",
        "3: grid.task.length[2]: temporal_order needs length >= 10, got 7"]


@pytest.mark.parametrize("key, values, same", [
    ("model.cell", "[lstm, gru, lstm]", "grid.model.cell: [0] lstm and [2] lstm are the same run"),
    ("train.clip", "[none, {kind: none}]", "grid.train.clip: [0] none and [1] none are the same run"),
    ("train.clip", "[{kind: norm, max_norm: 1}, {kind: norm, max_norm: 1.0}]", "[0] norm(1.0) and [1] norm(1.0)"),
    ("train.tbptt", "[3, {k1: 3, k2: 3}]", "grid.train.tbptt: [0] 3 and [1] 3 are the same run"),
    ("model", "[{cell: lstm}, {cell: lstm, hidden: 64}]", "[0] {cell: lstm} and [1] {cell: lstm, hidden: 64}"),
])
def test_grid_values_that_make_the_same_run_are_an_error_at_the_grid_key(tmp_path, key, values, same):
    path = write(tmp_path, f"seeds: [0, 1]\ngrid:\n  {key}: {values}\n  train.lr: [0.1, 0.01]\n")
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:3: ") and same in problems[0], problems


def test_grid_values_that_only_look_alike_are_distinct_runs(tmp_path):
    path = write(tmp_path, "grid:\n  train.clip: [none, norm, {kind: norm, max_norm: 2}]\n  train.tbptt: [null, 3, "
                           "{k1: 3, k2: 6}]\n  threads: [1, 2]\n")
    assert len(load(path)[1]) == 3 * 3 * 2


def test_every_malformed_set_is_reported_with_the_other_problems(tmp_path):
    path = write(tmp_path, "train: {steps: 0}\n")
    problems = problems_of(path, ["foo", "train.lr=-1", "=3", "bar"])
    assert sorted(problems) == sorted([
        f"{path}:1: train.steps: must be at least 1, got 0", "--set train.lr: must be positive, got -1",
        "--set foo: expected dotted.path=value", "--set =3: expected dotted.path=value",
        "--set bar: expected dotted.path=value"])
    assert problems_of(tmp_path / "nope.yaml", ["foo"])[1:] == ["--set foo: expected dotted.path=value"]


def test_a_key_given_twice_in_a_set_value_is_an_error(tmp_path):
    assert problems_of(write(tmp_path, ""), ["train={lr: 0.1, lr: 0.2}"]) == ["--set train.lr: given twice; keep one"]


@pytest.mark.parametrize("text, lr", [("train: {lr: 1e-3}\n", 1e-3), ("train:\n  lr: 5E-4\n", 5e-4),
                                      ("train: {lr: 2.5e-2}\n", 0.025), ("train: {lr: +1.0E+1}\n", 10.0),
                                      ("train: {lr: .5}\n", 0.5)])
def test_numbers_in_exponent_notation_are_numbers(tmp_path, text, lr):
    """YAML 1.2 floats: PyYAML's 1.1 resolver read 1e-3 (no dot) as the string '1e-3'."""
    (run,) = load(write(tmp_path, text))[1]
    assert run.config["train"]["lr"] == lr and isinstance(run.config["train"]["lr"], float)


def test_numbers_in_exponent_notation_are_numbers_in_set_and_grid(tmp_path):
    path = write(tmp_path, "grid: {train.lr: [1e-2, 1e-3]}\n")
    _, runs = load(path, ["train.omega=2e0", "diagnostics.vanishing_ratio=1e-4",
                          "train.clip={kind: norm, max_norm: 1e1}"])
    assert [r.config["train"]["lr"] for r in runs] == [0.01, 0.001]
    assert runs[0].config["train"]["omega"] == 2.0 and runs[0].config["train"]["clip"]["max_norm"] == 10.0
    assert runs[0].config["diagnostics"]["vanishing_ratio"] == 1e-4
    assert load(path, ["name=1e3x"])[0] == "1e3x"  # not a number: still a string


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("name: x\ntask: {name: caf\xe9}\n".encode("latin-1"))
    assert problems_of(path) == [f"{path}: cannot read the config: not UTF-8 text (byte 24)"]


# ---------------------------------------------------------------------------
# expect: checked with everything else; tbptt full and quoted numbers


EXPECT_BASE = "train: {steps: 3}\ngrid: {model.cell: [lstm, gru], train.tbptt: [null, 5]}\nexpect:\n"


def test_expectation_problems_are_reported_with_the_config_problems(tmp_path):
    path = write(tmp_path, "model: {hidden: 0}\n" + EXPECT_BASE + "  - where: {cel: lstm}\n    runs: 1\n"
                 "  - where: {cell: irnn}\n    runs: 1\n  - where: {cell: lstm}\n    versus: {tbptt: 7}\n"
                 "    solved_rate: '>= versus.solved_rate'\n")
    assert [p.removeprefix(f"{path}:").split(": ")[:3] for p in problems_of(path)] == [
        ["1", "model.hidden", "must be at least 1, got 0"],
        ["5", "expect[0].where.cel", "unknown grouping column 'cel' (did you mean 'cell'?); valid"],
        ["7", "expect[1].where", "matches no run of this config"],
        ["10", "expect[2].versus", "matches no run of this config"]]


def test_an_expectation_on_a_wrong_grid_value_is_not_said_to_match_nothing(tmp_path):
    path = write(tmp_path, "grid: {model.cell: [lstm, rnn]}\nexpect:\n  - where: {cell: rnn}\n    runs: 1\n")
    problems = problems_of(path)
    assert len(problems) == 1 and "unknown cell 'rnn'" in problems[0], problems


def test_full_bptt_is_written_full_in_where_and_versus(tmp_path):
    path = write(tmp_path, EXPECT_BASE + "  - where: {tbptt: full}\n    runs: 2\n"
                 "  - where: {tbptt: 5}\n    versus: {tbptt: full}\n    solved_rate: '>= versus.solved_rate'\n")
    experiment = load_experiment(path)
    assert len(experiment.runs) == 4
    full, window = {"tbptt": None, "cell": "lstm"}, {"tbptt": 5, "cell": "lstm"}
    assert expectations.matches(full, {"tbptt": "full"}) and not expectations.matches(window, {"tbptt": "full"})
    assert expectations.partner_of(window, {"tbptt": "full"}, [full, window], ["cell", "tbptt"]) is full


@pytest.mark.parametrize("spec, observed, passed", [("0.5", 0.5, True), (" 0.5 ", 0.4, False), ("1e-3", 0.001, True),
                                                    ("-2", -2, True), (0.5, 0.5, True)])
def test_a_quoted_number_means_equal(spec, observed, passed):
    (exp,), problems = expectations.parse([{"solved_rate": spec}])
    assert problems == [] and exp.checks[0].op == "=="
    assert expectations.evaluate_check(exp.checks[0], {"solved_rate": observed})[0] is passed


def test_a_quoted_non_number_is_still_not_a_comparison():
    _, problems = expectations.parse([{"solved_rate": "half"}, {"solved_rate": "0.5 * baseline_loss"}])
    assert [p for p, _ in problems] == ["expect[0].solved_rate", "expect[1].solved_rate"]


# ---------------------------------------------------------------------------
# diagnostics thresholds are part of what a run is


def test_changed_thresholds_change_the_run_id(tmp_path):
    path = write(tmp_path, "model: {cell: lstm}\n")
    plain = load(path)[1][0].id
    assert load(path, ["diagnostics.spike_factor=50"])[1][0].id == plain  # the default: the same run
    changed = load(path, ["diagnostics.spike_factor=100"])[1][0].id
    assert changed != plain
    assert load(path, ["diagnostics.spike_factor=100.0"])[1][0].id == changed
    assert load(path, ["diagnostics.vanishing_ratio=0.01"])[1][0].id not in (plain, changed)


def test_the_committed_paper_studies_keep_their_run_ids():
    """Ids hash only what differs from the defaults: thresholds at theirs must not re-run recorded studies."""
    for config in sorted((ROOT / "configs" / "papers").glob("*.yaml")):
        experiment = load_experiment(config)
        folder = ROOT / "results" / experiment.name
        runs = [(folder, r) for r in experiment.runs]
        if experiment.tune is not None:  # the selection runs, and the candidates its choice reported
            plan = tuning.plan(experiment)
            chosen = {r for a in results.read_selection(folder)["arms"] for r in a["reported"]}
            runs = [(folder / vocabulary.SELECTION_DIR, r) for r in plan.selection_runs]
            runs += [(folder, r) for r in experiment.runs if r.id in chosen]
            assert len(runs) == sum(plan.cost), config.name
        missing = [r.id for where, r in runs if not (where / r.id / "summary.json").exists()]
        assert not missing, (config.name, missing)


def test_a_set_does_not_hide_a_section_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "name: x\ntrain: [1, 2]\ngrid: 3\nmodel: {cell: lstm, hidden: 16}\n")
    result = runner.invoke(app, ["validate", str(path), "--set", "train.lr=0.1", "--set", "grid.model.cell=[gru]",
                                 "--set", "model.hidden.x=1"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: {path}:2: train: expected a mapping, got [1, 2]",
        f"error: {path}:3: grid: expected a mapping of dotted.path: [values], got 3",
        f"error: --set train.lr: cannot set a key in train, which is [1, 2] ({path}:2: train), not a mapping",
        f"error: --set grid.model.cell: cannot set a key in grid, which is 3 ({path}:3: grid), not a mapping",
        f"error: --set model.hidden.x: cannot set a key in model.hidden, which is 16 ({path}:4: model.hidden), "
        "not a mapping"]


@pytest.mark.parametrize("args, line", [
    (["--set", "model.cell=gru"], "--set model.cell: the grid sets model.cell ({path}:4: grid.model.cell), and its "
                                  "values override this one; set them instead: --set grid.model.cell=[gru]"),
    (["--set", "model={cell: gru}"], "--set model: the grid sets model.cell ({path}:4: grid.model.cell), and its "
                                     "values override this one; set them instead: --set grid.model.cell=[...]"),
    (["--set", "train.clip={kind: norm, max_norm: 2}"],
     "--set train.clip: the grid sets train.clip ({path}:5: grid.train.clip), and its values override this one; "
     "set them instead: --set grid.train.clip=[{kind: norm, max_norm: 2}]"),
    (["--set", "task.length=30"], "--set task.length: the grid sets task ({path}:6: grid.task), and its values "
                                  "override this one; set them instead: --set grid.task=[...]"),
])
def test_a_set_of_a_key_the_grid_sets_is_an_error_naming_the_grid_key(tmp_path, args, line):
    path = write(tmp_path, "name: x\nseeds: [0]\ngrid:\n  model.cell: [lstm]\n  train.clip: [none, norm]\n"
                           "  task: [{length: 10}, {name: copy}]\n")
    for command in (["validate", str(path)], ["run", str(path), "--dry-run", "--out", str(tmp_path / "o")]):
        result = runner.invoke(app, command + args)
        assert result.exit_code == 2 and result.output.splitlines() == ["error: " + line.replace("{path}", str(path))]


def test_a_set_of_what_the_grid_leaves_alone_still_applies(tmp_path):
    path = write(tmp_path, "name: x\ngrid:\n  model: [{cell: lstm}, {cell: gru}]\n")
    runs = load(path, ["model.hidden=8", "grid.train.lr=[0.1]", "task.name=copy"])[1]
    assert [(r.config["model"]["cell"], r.config["model"]["hidden"], r.config["train"]["lr"], r.config["task"]["name"])
            for r in runs] == [("lstm", 8, 0.1, "copy"), ("gru", 8, 0.1, "copy")]


def test_every_config_field_has_a_check_and_every_check_a_field():
    import dataclasses

    from gradlab.config import CHECKS, SECTIONS, Config, unchecked

    assert unchecked(Config, SECTIONS, CHECKS) == []

    @dataclasses.dataclass
    class Toy:
        lr: float = 0.1
        momentum: float = 0.9  # no check below

    @dataclasses.dataclass
    class ToyConfig:
        toy: Toy = dataclasses.field(default_factory=Toy)
        seed: int = 0

    assert unchecked(ToyConfig, {"toy": Toy}, {"toy.lr": None, "seed": None, "toy.gone": None}) == [
        "toy.gone", "toy.momentum"]
