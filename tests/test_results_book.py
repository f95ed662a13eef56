"""Claims across groups (versus:), grids over whole sections, lean metrics, the horizon at
initialisation, and the Markdown results book of `gradlab report --format markdown`."""

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab import expectations
from gradlab.cli import app
from gradlab.config import ConfigError, load, load_experiment
from gradlab.training import train

runner = CliRunner()

BASE = """\
# A tiny study for the tests.
# Second line of the header.
name: book
task: {name: adding, length: 6, eval_size: 64}
model: {hidden: 16}
train: {steps: 120, batch_size: 32, eval_every: 40, lr: 0.02}
seeds: [0, 1]
"""


# ---------------------------------------------------------------------------
# versus: a claim about one group against its partner group


ROWS = [  # two comparison rows per length: clipped and not
    {"length": 10, "clip": "none", "solved_rate": 0.25, "final_loss_mean": 1.0},
    {"length": 10, "clip": "norm(1.0)", "solved_rate": 0.75, "final_loss_mean": 0.5},
    {"length": 20, "clip": "none", "solved_rate": 0.5, "final_loss_mean": 0.9},
    {"length": 20, "clip": "norm(1.0)", "solved_rate": 0.25, "final_loss_mean": 1.2},
]


def _evaluate(entry):
    parsed, problems = expectations.parse([entry])
    assert not problems
    return expectations.evaluate(parsed, ROWS, ["length", "clip"])[0]


def test_versus_compares_each_group_with_its_partner_of_the_same_length():
    result = _evaluate({"where": {"clip": "norm(1.0)"}, "versus": {"clip": "none"},
                        "solved_rate": ">= versus.solved_rate", "claim": "clipping helps"})
    by_length = {g["group"]["length"]: g for g in result["groups"]}
    assert by_length[10]["passed"] and by_length[10]["checks"][0]["expected"] == 0.25
    assert not by_length[20]["passed"] and by_length[20]["checks"][0]["expected"] == 0.5
    assert not result["passed"] and result["claim"] == "clipping helps"
    assert "versus clip=none" in result["expectation"]


def test_versus_arithmetic_and_a_missing_partner_fails():
    result = _evaluate({"where": {"clip": "norm(1.0)", "length": 10}, "versus": {"clip": "none"},
                        "final_loss_mean": "<= 0.5 * versus.final_loss_mean"})
    assert result["passed"] and result["groups"][0]["checks"][0]["expected"] == 0.5
    result = _evaluate({"where": {"clip": "norm(1.0)"}, "versus": {"clip": "value(1.0)"},
                        "solved_rate": ">= versus.solved_rate"})
    assert not result["passed"]
    assert all("no versus group" in str(g["checks"][0]["expected"]) for g in result["groups"])



def test_an_expression_may_scale_with_the_task_length():
    result = _evaluate({"where": {"clip": "none"}, "final_loss_mean": "< length / 20"})
    by_length = {g["group"]["length"]: g for g in result["groups"]}
    assert by_length[10]["checks"][0]["expected"] == 0.5 and not by_length[10]["passed"]  # 1.0 < 0.5 fails
    assert by_length[20]["checks"][0]["expected"] == 1.0 and by_length[20]["passed"]      # 0.9 < 1.0 holds
    _, problems = expectations.parse([{"runs": "> lenght"}])
    assert any("unknown column 'lenght'" in m and "did you mean 'length'" in m for _, m in problems), problems

VERSUS_ERRORS = [
    ({"solved_rate": ">= versus.solved_rate"}, "expect[0].solved_rate", "has no versus: mapping"),
    ({"versus": "none", "runs": 1}, "expect[0].versus", "expected a mapping"),
    ({"versus": {"clip": "none"}, "solved_rate": ">= versus.solved_rat"}, "expect[0].solved_rate",
     "unknown column versus.solved_rat"),
    ({"versus": {"clip": "none"}, "solved_rate": ">= other.solved_rate"}, "expect[0].solved_rate",
     "only versus.COLUMN"),
    ({"claim": 3, "runs": 1}, "expect[0].claim", "expected a sentence"),
]


@pytest.mark.parametrize("entry, path, message", VERSUS_ERRORS, ids=[e[2] for e in VERSUS_ERRORS])
def test_versus_and_claim_errors_are_located(entry, path, message):
    _, problems = expectations.parse([entry])
    assert any(p == path and message in m for p, m in problems), problems


def test_a_versus_that_matches_no_run_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(BASE + "grid:\n  model.cell: [vanilla, lstm]\nexpect:\n  - where: {cell: lstm}\n"
                      "    versus: {cell: gru}\n    solved_rate: '>= versus.solved_rate'\n")
    with pytest.raises(ConfigError) as e:
        load(config)
    assert any("expect[0].versus: matches no run" in p for p in e.value.problems), e.value.problems


# ---------------------------------------------------------------------------
# grid over a whole section: variants that differ in several keys at once


def test_a_section_grid_merges_each_variant_into_the_section(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(BASE + "grid:\n  model:\n    - {cell: vanilla}\n"
                      "    - {cell: orthogonal, constrain: true, init: henaff}\n")
    _, runs = load(config)
    models = [r.config["model"] for r in runs]
    assert [m["cell"] for m in models] == ["vanilla", "vanilla", "orthogonal", "orthogonal"]
    assert models[2]["constrain"] is True and models[2]["init"] == "henaff" and models[2]["hidden"] == 16
    assert models[0]["constrain"] is False and models[0]["hidden"] == 16
    assert runs[2].id.startswith("cell=orthogonal-constrain=True-init=henaff_seed=0_")
    assert len({r.id for r in runs}) == 4


def test_section_grid_errors_are_located_and_all_reported(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(BASE + "grid:\n  model:\n    - {cel: lstm}\n    - {cell: lsm}\n    - 3\n  train: []\n")
    with pytest.raises(ConfigError) as e:
        load(config)
    text = "\n".join(e.value.problems)
    assert "c.yaml:10: grid.model[0]: unknown model key 'cel' (did you mean 'cell'?)" in text
    assert "grid.model[1].cell:" in text and "lstm" in text
    assert "grid.model[2]: expected a mapping of model keys" in text
    assert "grid.train: expected a non-empty list of train mappings" in text


# ---------------------------------------------------------------------------
# lean metrics (train.log_every) and the horizon at initialisation


def _cfg(tmp_path, sets=()):
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    return load(config, list(sets))[1][0].config


def test_log_every_thins_the_stored_rows_but_not_the_diagnostics(tmp_path):
    full = train(_cfg(tmp_path))
    lean = train(_cfg(tmp_path, ["train.log_every=7"]))
    kept = [r for r in full["rows"] if r["kind"] == "eval" or r["step"] % 7 == 0]
    assert [(r["kind"], r["step"]) for r in lean["rows"]] == [(r["kind"], r["step"]) for r in kept]
    same = ("final_loss", "grad_norm_max", "suggested_clip", "clip_rate", "spikes", "verdict", "horizon",
            "horizon_init")
    assert {k: lean["summary"][k] for k in same} == {k: full["summary"][k] for k in same}


def test_horizon_init_is_the_first_profiles_horizon(tmp_path):
    from gradlab import diagnostics

    out = train(_cfg(tmp_path))
    first = out["profile"]["grad_norm"][0]  # (S,) at step 0
    dependency = len(first) - 1 - out["summary"]["dependency_lag"]
    assert out["profile"]["step"][0] == 0
    assert out["summary"]["horizon_init"] == diagnostics.profile_summary(first, dependency)["horizon"]


# ---------------------------------------------------------------------------
# the results book


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("book")
    config = tmp / "book.yaml"
    config.write_text(BASE + "grid:\n  model.cell: [vanilla, lstm]\nexpect:\n"
                      "  - claim: the LSTM ran as many seeds as the tanh RNN\n    where: {cell: lstm}\n"
                      "    versus: {cell: vanilla}\n    runs: '== versus.runs'\n"
                      "  - claim: an impossible one\n    where: {cell: vanilla}\n    solved_rate: '> 1'\n")
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp / "results"), "-q", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    return tmp, config


def test_experiment_json_records_the_header_and_every_sweep(study):
    tmp, config = study
    doc = json.loads((tmp / "results" / "book" / "experiment.json").read_text())
    assert doc["about"] == "A tiny study for the tests.\nSecond line of the header."
    assert doc["source"] == str(config)
    assert len(doc["sweeps"]) == 1 and doc["sweeps"][0]["trained"] == 4 and doc["sweeps"][0]["jobs"] == 1
    assert load_experiment(config).about == doc["about"]
    # a resumed sweep with nothing to do adds no entry; the earlier timings survive re-recording
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp / "results"), "-q", "--jobs", "1"])
    assert result.exit_code == 0
    assert json.loads((tmp / "results" / "book" / "experiment.json").read_text())["sweeps"] == doc["sweeps"]


def test_markdown_book_lists_claims_table_plots_machine_and_time(study):
    tmp, _ = study
    root = tmp / "results"
    (root / "book" / "NOTES.md").write_text("What we found, by hand.\n")
    result = runner.invoke(app, ["report", str(root), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    text = (root / "README.md").read_text()
    assert "| [book](#book) | FAIL (1/2) | 4 |" in text
    assert "A tiny study for the tests.\nSecond line of the header." in text
    assert "✅ **PASS** the LSTM ran as many seeds as the tanh RNN" in text
    assert "❌ **FAIL** an impossible one" in text
    assert "What we found, by hand." in text
    assert "![grad profile](book/plots/grad_profile.png)" in text and (root / "book/plots/grad_profile.png").exists()
    assert "thread(s) per run" in text and "wall-clock in 1 sweep(s) with --jobs 1" in text
    # the table's rows are the two cells (the terminal's labels), with the horizon at init → after training
    header = next(line for line in text.splitlines() if line.startswith("| cell |"))
    assert "| solved |" in header and "| horizon |" in header and "| loss ÷ baseline |" in header
    assert "`task=adding, length=6, clip=none, tbptt=full`" in text
    rows = [line for line in text.splitlines() if line.startswith(("| lstm |", "| vanilla |"))]
    assert len(rows) == 2 and all(re.search(r"\| [0-9.]+→[0-9.]+ \|", r) for r in rows), rows
    # --check: exit 1, the book still written
    result = runner.invoke(app, ["report", str(root), "--format", "markdown", "--check", "-o",
                                 str(tmp / "b.md")])
    assert result.exit_code == 1 and (tmp / "b.md").exists()
    assert "](results/book/plots/grad_profile.png)" in (tmp / "b.md").read_text()


def test_markdown_book_of_a_folder_without_experiments_is_bad_input(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path), "--format", "markdown"])
    assert result.exit_code == 2 and "no experiments" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path), "--format", "pdf"])
    assert result.exit_code == 2 and "unknown format 'pdf'" in result.output


def test_metrics_csv_of_a_lean_run_has_only_the_kept_steps(study, tmp_path):
    tmp, config = study
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path), "-q", "--jobs", "1",
                                 "--set", "train.log_every=30", "--set", "seeds=[0]"])
    assert result.exit_code == 0, result.output
    path = next(Path(tmp_path).rglob("metrics.csv"))
    with open(path) as f:
        steps = [(r["kind"], int(r["step"])) for r in csv.DictReader(f)]
    assert {s for k, s in steps if k == "train"} == {30, 60, 90, 120}
    assert {s for k, s in steps if k == "eval"} == {0, 40, 80, 120}
