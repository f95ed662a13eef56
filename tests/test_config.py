"""Config loading, validation (every problem, located) and grid expansion."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.config import ConfigError, load

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


# (YAML, the substrings one problem line must contain)
BAD = [
    ("trian: {steps: 3}\n", ["c.yaml:1", "unknown key 'trian'", "did you mean 'train'"]),
    ("train:\n  stesp: 3\n", ["c.yaml:2", "train.stesp", "did you mean 'steps'"]),
    ("task: {name: adder}\n", ["c.yaml:1", "task.name", "unknown task 'adder'", "adding", "copy"]),
    ("model: {cell: lstn}\n", ["model.cell", "did you mean 'lstm'", "vanilla"]),
    ("train: {clip: {kind: nrom}}\n", ["train.clip", "unknown clip kind 'nrom'", "did you mean 'norm'"]),
    ("train: {clip: {kind: norm, max_nrom: 1}}\n", ["train.clip", "no parameter 'max_nrom'", "max_norm"]),
    ("train: {clip: {kind: value, clip_value: -1}}\n", ["train.clip", "positive"]),
    ("train: {lr: -0.1}\n", ["train.lr", "must be positive"]),
    ("train: {lr: fast}\n", ["train.lr", "expected a number"]),
    ("train: {steps: 0}\n", ["train.steps", "at least 1"]),
    ("train: {steps: 2.5}\n", ["train.steps", "expected an integer"]),
    ("train: {tbptt: 0}\n", ["train.tbptt", "at least 1"]),
    ("task: {length: 1}\n", ["task.length", "at least 2"]),
    ("model: {hidden: true}\n", ["model.hidden", "expected an integer"]),
    ("train: {optimizer: adamw}\n", ["train.optimizer", "unknown optimizer", "adam"]),
    ("seeds: []\n", ["seeds", "non-empty list"]),
    ("seeds: [0, -1]\n", ["seeds", "non-negative"]),
    ("device: tpu\n", ["device", "cpu, cuda"]),
    ("name: a/b\n", ["name", "letters, digits"]),
    ("grid: {}\n", ["grid", "empty"]),
    ("grid: {model.cel: [lstm]}\n", ["grid.model.cel", "unknown key", "did you mean 'model.cell'"]),
    ("grid: {model.cell: []}\n", ["grid.model.cell", "non-empty list"]),
    ("grid: {model.cell: lstm}\n", ["grid.model.cell", "non-empty list"]),
    ("grid:\n  model.cell: [lstm, rnn]\n", ["c.yaml:2", "grid.model.cell[1]", "unknown cell 'rnn'"]),
    ("task: {name: temporal_order, length: 5}\n", ["task.length", "temporal_order needs length >= 10"]),
    ("model: {cell: lstm, nonlinearity: relu}\n", ["model.nonlinearity", "only the orthogonal cell"]),
    ("task: [adding]\n", ["task", "expected a mapping"]),
    ("train: {steps: 3\n", ["c.yaml:", "malformed YAML"]),
    ("- just\n- a list\n", ["must be a mapping"]),
]


@pytest.mark.parametrize("text, needles", BAD, ids=[b[0].strip()[:30] for b in BAD])
def test_bad_config_is_reported_located(tmp_path, text, needles):
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert any(all(n in p for n in needles) for p in problems), problems
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert any(all(n in line for n in needles) for line in result.output.splitlines()), result.output


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "trian: 1\ntrain: {lr: -1, steps: 0}\nmodel: {cell: nope}\n")
    problems = problems_of(path)
    assert len(problems) == 4
    assert [p.split(":")[1] for p in problems] == ["1", "2", "2", "3"] or len({p for p in problems}) == 4
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()  # validation happens before any training


def test_defaults_fill_what_the_config_omits(tmp_path):
    name, runs = load(write(tmp_path, "name: x\ntask: {length: 7}\n"))
    assert name == "x" and len(runs) == 1
    cfg = runs[0].config
    assert cfg["task"] == {"name": "adding", "length": 7, "eval_size": 1000, "variant": None}
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
