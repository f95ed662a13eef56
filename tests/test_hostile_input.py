"""Hostile input, part of the shipped fault suite: each is refused with one located line and exit 2.

An alias bomb, deep nesting, an oversized file, a grid of a million points and an overlong run id
(issue 13) each once hung, ran out of memory, raised a traceback or failed only at ``run``.
Each test here takes well under a second; the whole file a few seconds (one tiny training run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab import results
from gradlab.cli import app
from gradlab.config import load_experiment
from gradlab.grid import MAX_RUNS, too_many_runs
from gradlab.vocabulary import MAX_ID_BYTES
from gradlab.yamlfile import MAX_BYTES, MAX_DEPTH, MAX_TEXT, MAX_VALUES

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def refused(tmp_path, text: str, *args: str) -> list[str]:
    """``gradlab validate`` (or ``run --dry-run``) on ``text``: asserts exit 2 and no traceback; the error lines."""
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    command = ["run", str(path), "--dry-run", "--out", str(tmp_path / "out")] if "--dry-run" in args else \
        ["validate", str(path)]
    started = time.monotonic()
    result = runner.invoke(app, command + [a for a in args if a != "--dry-run"])
    took = time.monotonic() - started
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and took < 20  # today a bomb or a 10^6 grid takes minutes
    return [line.removeprefix("error: ") for line in result.output.splitlines()]


def bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each anchor a list of ``width`` aliases of the one before, 9^9 values expanded."""
    lines = ["name: bomb", 'a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_where_it_passes_the_limit(tmp_path):
    # a0 is 2 values (the list, "lol"), a_k = 1 + 9 a_(k-1): 19, 172, 1549, 13942, then a5 125,479 (line 7)
    assert refused(tmp_path, bomb()) == [f"{tmp_path / 'hostile.yaml'}:7: more than {MAX_VALUES:,} values "
                                         "with the aliases expanded"]


def test_aliases_of_a_long_string_are_counted_by_their_text(tmp_path):
    # 30 KB of text, 100 aliases of it in seeds: 3 MB for the error message's repr to print
    text = f"name: x\nlong: &s {'x' * 30_000}\nseeds: [{', '.join(['*s'] * 100)}]\n"
    assert refused(tmp_path, text) == [f"{tmp_path / 'hostile.yaml'}:3: more than {MAX_TEXT:,} characters "
                                       "with the aliases expanded"]


def test_aliases_within_the_limit_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("name: anchors\nmodel: &m {hidden: 8}\n"
                    "grid:\n  model: [{<<: *m, cell: lstm}, {<<: *m, cell: gru}]\n")
    assert [(r.config["model"]["cell"], r.config["model"]["hidden"]) for r in load_experiment(path).runs] == [
        ("lstm", 8), ("gru", 8)]


def test_a_recursive_alias_is_refused(tmp_path):
    assert refused(tmp_path, "name: x\nseeds: &s [0, *s]\n") == [
        f"{tmp_path / 'hostile.yaml'}:2: an alias refers to the collection that holds it (a recursive structure)"]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 5000])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, depth):
    text = "name: deep\nseeds: " + "[" * depth + "0" + "]" * depth + "\n"
    assert refused(tmp_path, text) == [f"{tmp_path / 'hostile.yaml'}:2: nested deeper than {MAX_DEPTH} levels"]


def test_nesting_through_aliases_counts_expanded(tmp_path):
    # b0 is 2 levels (the list, 0); each b_k nests b_(k-1) 5 levels deeper: b6 is 32, b7 (line 9) 37
    lines = ["name: deep", "b0: &b0 [0]"]
    lines += [f"b{i}: &b{i} [[[[[*b{i - 1}]]]]]" for i in range(1, 9)]
    problems = refused(tmp_path, "\n".join(lines) + "\n")
    assert problems == [f"{tmp_path / 'hostile.yaml'}:9: nested deeper than {MAX_DEPTH} levels with the "
                        "aliases expanded"]


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path):
    padding = "# " + "x" * 78 + "\n"
    text = "name: big\n" + padding * (MAX_BYTES // len(padding) + 1)  # valid YAML: comments only
    assert refused(tmp_path, text) == [f"{tmp_path / 'hostile.yaml'}: the config is larger than "
                                       f"{MAX_BYTES // 1024} KB; a config lists values, not data"]


def test_an_oversized_set_value_is_refused(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\n")
    result = runner.invoke(app, ["validate", str(path), "--set", "seeds=" + "[" * 100 + "]" * 100])
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"error: --set seeds: nested deeper than {MAX_DEPTH} levels"]


def million_points() -> str:
    keys = ["model.hidden", "task.eval_size", "train.batch_size", "train.steps", "train.eval_every",
            "train.log_every"]
    return "name: huge\nseeds: [0, 1]\ngrid:\n" + "".join(
        f"  {k}: [{', '.join(str(v) for v in range(1, 11))}]\n" for k in keys)


@pytest.mark.parametrize("args", [(), ("--dry-run",)])
def test_a_grid_of_a_million_points_is_refused_before_it_is_expanded(tmp_path, args):
    shape = " x ".join(f"10 {k}" for k in ["model.hidden", "task.eval_size", "train.batch_size", "train.steps",
                                            "train.eval_every", "train.log_every"])
    assert refused(tmp_path, million_points(), *args) == [
        f"{tmp_path / 'hostile.yaml'}:3: grid: 2,000,000 runs ({shape} x 2 seeds), more than the "
        f"{MAX_RUNS:,} a config may expand to; split the grid over several configs"]


def test_the_grid_limit_counts_points_times_seeds():
    grid = {"a": [1] * 100, "b": [1] * 50}  # 5000 points
    assert too_many_runs(grid, MAX_RUNS // 5000, str) is None
    assert too_many_runs(grid, MAX_RUNS // 5000 + 1, str).startswith(f"grid: {MAX_RUNS + 5000:,} runs")


# ---------------------------------------------------------------------------
# Run ids: directory names, so bounded; readable parts that tell values apart.

LONG = """name: longids
task: {length: 6, eval_size: 8}
model: {hidden: 4}
train: {steps: 2, batch_size: 2, eval_every: 2}
grid:
  model.cell: [vanilla]
  train.clip: [{kind: zclip, alpha: 0.97, z_thresh: 2.5, warmup: 25}]
  train.lr: [0.00123456789012]
  model.skip: [3]
  model.forget_bias: [null]
  train.log_every: [1]
  task.eval_size: [7]
  task.name: [adding]
  train.tbptt: [{k1: 2, k2: 3}]
  train.omega: [0.0]
  train.weight_decay: [0.0]
  train.optimizer: [adam]
  model.engine: [scan]
  model.layers: [1]
  diagnostics.spike_window: [50]
"""


def test_an_overlong_run_id_is_cut_to_a_directory_name_and_the_run_runs(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(LONG)
    (run,) = load_experiment(path).runs
    # in full, the readable part alone would be longer than a file name may be (255 bytes)
    assert sum(len(f"{k.split('.')[-1]}={v}_") for k, v in run.overrides.items()) > 255
    assert len(run.id.encode()) <= MAX_ID_BYTES and run.id.endswith("~_seed=0_" + results.run_hash(run.id))
    assert run.id.startswith("cell=vanilla_clip=zclip(0.97--2.5--25)_lr=0.00123456789012_skip=3_")
    assert "spike_window" not in run.id  # the last grid values are cut
    assert load_experiment(path).runs[0].id == run.id  # deterministic
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "longids" / run.id / results.SUMMARY).read_text())["status"] == "ok"


def test_tiny_and_huge_values_get_different_readable_ids(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("name: lr\ngrid:\n  train.lr: [1.0e30, 1.0e-30]\n")
    huge, tiny = (r.id.rpartition("_")[0] for r in load_experiment(path).runs)
    assert (huge, tiny) == ("lr=1e+30_seed=0", "lr=1e-30_seed=0")


def test_every_committed_run_keeps_its_id():
    """The ids the configs give now are the committed run directories' names, byte for byte."""
    checked = 0
    for doc_path in sorted((ROOT / "results").glob("*/experiment.json")):
        doc = json.loads(doc_path.read_text())
        ids = {results.run_hash(r.id): r.id for r in load_experiment(ROOT / doc["source"]).runs}
        for run_dir in sorted(p for p in doc_path.parent.iterdir() if (p / results.SUMMARY).exists()):
            assert ids.get(results.run_hash(run_dir.name)) == run_dir.name
            checked += 1
    assert checked >= 100  # every committed result set (111 runs when written)
