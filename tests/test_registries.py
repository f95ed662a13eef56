"""The registries carry everything the rest of gradlab needs: a new cell, clipping rule or task is one
entry plus one function, and validation, training, `compare` and `ls` take it with no other edit.

The toy entries are registered inside the test process (``monkeypatch`` removes them afterwards), so
the run goes through the CLI with ``--jobs 1``: ``gradlab.sweeps`` trains a single worker's runs in
its own process (``_run_serial``), which sees them; a spawned worker would re-import gradlab without
them. The README's task, cell and clip tables, and `gradlab ls`'s rows, are checked entry by entry.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradlab import checks
from gradlab.cells import CELLS, REFUSALS, Cell, init_uniform
from gradlab.cli import app
from gradlab.config import ConfigError, options, validate
from gradlab.recurrences import RECURRENCES
from gradlab.remedies import CLIPS, ClipRule, Param
from gradlab.tasks import TASKS, Adding, catalogue

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


# ---------------------------------------------------------------------------
# The toy entries: each one registry entry plus one function.

def init_small(layer: nn.Module, gen: torch.Generator) -> None:
    """torch's uniform init at a tenth of its bound."""
    init_uniform(layer, gen)
    with torch.no_grad():
        for p in layer.recurrent_parameters():
            p.mul_(0.1)


def clip_halve(params, norm, state, below: float) -> None:
    """Halve every gradient whose global norm is above ``below``."""
    if norm > below:
        for p in params:
            p.grad.mul_(0.5)


class Difference(Adding):
    """adding with the target U1 - U2: the same memoryless baseline, Var(U1 - U2) = 1/6."""

    def combine(self, a, b):
        return a - b


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(CELLS, "toy", Cell("rnn", "tanh", init_small, "tanh RNN at a tenth of torch's init (toy)"))
    # below: a fraction, where `recurrent`'s threshold is any positive number: no check is shared by name
    monkeypatch.setitem(CLIPS, "halve", ClipRule({"below": Param(0.5, checks.fraction)},
                                                 "halve the gradient above a norm (toy)", clip_halve))
    monkeypatch.setitem(TASKS, "difference", Difference(
        name="difference", kind="regression", input_size=2, output_size=1, min_length=2,
        description="difference of two marked values (toy)"))


TOY = """\
name: toy
task: {name: difference, length: 6, eval_size: 8}
model: {cell: toy, hidden: 4}
train: {steps: 3, batch_size: 4, eval_every: 3, clip: halve}
grid:
  train.clip: [halve, {kind: halve, below: 0.25}]
"""


def test_toy_entries_validate_train_compare_and_list(toys, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(TOY)
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(config), "--out", str(out), "--jobs", "1", "--quiet",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    runs = sorted((out / "toy").glob("*/summary.json"))
    assert len(runs) == 2
    for summary in runs:
        assert json.loads(summary.read_text())["status"] == "ok"
        cfg = json.loads((summary.parent / "config.json").read_text())
        assert (cfg["task"]["name"], cfg["model"]["cell"], cfg["train"]["clip"]["kind"]) == ("difference", "toy",
                                                                                           "halve")
    result = runner.invoke(app, ["compare", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {(r["task"], r["cell"], r["clip"]) for r in rows} == {("difference", "toy", "halve(0.5)"),
                                                                 ("difference", "toy", "halve(0.25)")}
    listed = ls_rows()
    assert ("toy", "rnn", CELLS["toy"].description) in listed["cells"]
    assert ("halve", "below=0.5", CLIPS["halve"].description) in listed["clips"]
    assert ("difference", "regression", TASKS["difference"].description) in listed["tasks"]


def test_a_toy_rule_checks_its_parameters_with_its_own_checks(toys):
    with pytest.raises(ConfigError) as e:
        validate({"train": {"clip": {"kind": "halve", "below": 5}}})
    assert e.value.problems == ["<config>: train.clip: clip halve.below: must be between 0 and 1 (exclusive), got 5"]
    validate({"train": {"clip": {"kind": "recurrent", "threshold": 5}}})  # recurrent's threshold: any positive


def test_cell_options_are_refused_from_the_entries(toys, monkeypatch):
    """The toy cell takes none of the options; the message names the cells whose entries do."""
    with pytest.raises(ConfigError) as e:
        validate({"model": {"cell": "toy", "init": "henaff", "forget_bias": 1.0}, "train": {"omega": 2.0}})
    assert e.value.problems == [
        "<config>: model.init: only the orthogonal cell takes an init option, not toy",
        "<config>: model.forget_bias: only lstm and gru have a forget gate, not toy",
        "<config>: train.omega: only for one layer of the vanilla, irnn, orthogonal cells "
        "(Pascanu's Ω is defined for h_t = act(W x_t + U h_(t-1) + b)), got toy"]
    monkeypatch.setitem(CELLS, "toy", Cell("rnn", "tanh", init_small, "toy", frozenset({"forget_bias"})))
    with pytest.raises(ConfigError) as e:
        validate({"model": {"cell": "vanilla", "forget_bias": 1.0}})
    assert e.value.problems == ["<config>: model.forget_bias: only lstm, gru and toy have a forget gate, "
                                "not vanilla"]


def test_an_unknown_recurrence_or_one_without_an_engine_fails_at_validation(toys, monkeypatch):
    monkeypatch.setitem(CELLS, "bogus", Cell("bogus", "tanh", init_small, "a cell on no recurrence"))
    with pytest.raises(ConfigError) as e:
        validate({"grid": {"model.cell": ["vanilla", "bogus"]}})
    assert e.value.problems == ["<config>: grid.model.cell[1]: cell 'bogus' has an unknown recurrence 'bogus'; "
                                "valid: rnn, skip, lstm, gru"]
    monkeypatch.setitem(RECURRENCES, "slow", RECURRENCES["rnn"].__class__(
        ("",), RECURRENCES["rnn"].step, None, RECURRENCES["rnn"].initial_state))
    monkeypatch.setitem(CELLS, "slow", Cell("slow", "tanh", init_small, "an rnn with no hand-written BPTT"))
    with pytest.raises(ConfigError) as e:
        validate({"model": {"cell": "slow"}})
    assert e.value.problems == ["<config>: model.cell: the slow recurrence of cell 'slow' has no hand-written "
                                "BPTT; use model.engine: autograd"]
    (run,) = validate({"model": {"cell": "slow", "engine": "autograd"}})  # the reference path runs it
    assert run.config["model"]["cell"] == "slow"


# ---------------------------------------------------------------------------
# `gradlab ls` and the README, entry by entry.

def ls_rows() -> dict[str, list[tuple[str, str, str]]]:
    """`gradlab ls`'s tables by title: each row's three cells, a wrapped row joined up again."""
    result = runner.invoke(app, ["ls"], terminal_width=200)
    assert result.exit_code == 0, result.output
    tables, title = {}, None
    for line in result.output.splitlines():
        if re.fullmatch(r"[a-z].*", line.strip()) and not line.startswith(("│", "┃")):
            title = line.strip().split(" (")[0]
            tables.setdefault(title, [])
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:
                tables[title].append(cells)
            else:  # the row's text wrapped onto this line
                tables[title][-1] = [f"{a} {b}".strip() for a, b in zip(tables[title][-1], cells)]
    return {t: [tuple(r) for r in rows] for t, rows in tables.items()}


def test_every_entry_is_whole():
    """Each cell's recurrence and options exist, and each recurrence's gates name its parameters' blocks."""
    for name, cell in CELLS.items():
        assert cell.recurrence in RECURRENCES and cell.options <= set(REFUSALS), name
        if "forget_bias" in cell.options:
            assert RECURRENCES[cell.recurrence].forget_gate in RECURRENCES[cell.recurrence].gates, name


def test_ls_lists_each_entry_in_its_own_row():
    listed = ls_rows()
    assert listed["tasks"] == [(label, task.kind, task.description) for label, task in catalogue().items()]
    assert listed["cells"] == [(name, cell.recurrence, cell.description) for name, cell in CELLS.items()]
    assert listed["clips"] == [(name, ", ".join(f"{k}={p.default}" for k, p in rule.params.items()),
                                rule.description) for name, rule in CLIPS.items()]
    assert listed["options"] == [(key, *entry) for key, entry in options().items()]


def _first_column(readme: str, header: str) -> list[str]:
    """The first column of the README table whose header row starts with ``| header |``."""
    lines = readme.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"| {header} |")))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split(" | ")[0].removeprefix("| "))
    return rows


def test_readme_tables_list_exactly_the_registries():
    readme = (ROOT / "README.md").read_text()
    tasks = [re.sub(r"`(\w+)`(?: `variant: (\w+)`)?", lambda m: m[1] + (f"[{m[2]}]" if m[2] else ""), row)
             for row in _first_column(readme, "task")]
    assert sorted(tasks) == sorted(catalogue())  # the README lists the variants after the tasks
    assert _first_column(readme, "cell") == [f"`{name}`" for name in CELLS]
    kinds = [m[1] for row in _first_column(readme, "remedy") if (m := re.match(r"`clip: \{kind: (\w+)", row))]
    assert kinds == [k for k in CLIPS if k != "none"]  # none: no row of its own
    keys = {row.split(" | ")[0]: row for row in readme.splitlines() if row.startswith("| `")}
    assert re.findall(r"`(\w+)`", keys["| `task.name`"].split(" | ")[2]) == list(TASKS)
    assert re.findall(r"`(\w+)`", keys["| `model.cell`"].split(" | ")[2]) == list(CELLS)
    assert re.findall(r"`(\w+)`", keys["| `train.clip`"].split(" | ")[2].split(" or ")[0]) == list(CLIPS)
