"""Hostile input, part of the shipped fault suite: each is refused with one located line and exit 2.

An alias bomb, deep nesting, an oversized file, a grid of a million points and an overlong run id
(issue 13) each once hung, ran out of memory, raised a traceback or failed only at ``run``.
Each test here takes well under a second; the whole file a few seconds (one tiny training run).
"""

from __future__ import annotations

import json
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
    result = runner.invoke(app, command + [a for a in args if a != "--dry-run"])
    # no wall-clock bound (it fails on a slow machine, passes on a fast one whatever the code does): each test
    # asserts the refusal names the limit passed, which only a check made before the expansion can say
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
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


# ---------------------------------------------------------------------------
# Values that validate must run (issue 22): each key that sizes memory, time or a library call is bounded,
# and so is a run's whole memory.

def test_sizes_that_would_exhaust_memory_are_refused_each_on_its_line(tmp_path):
    text = ("name: big\ntask: {length: 100000000}\nmodel:\n  layers: 1000000\n  hidden: 99999999999999999999999\n"
            "threads: 1000000\ntrain: {steps: 100000000, batch_size: 1000000}\nseeds: [0, 18446744073709551616]\n")
    where = tmp_path / "hostile.yaml"
    assert refused(tmp_path, text) == [
        f"{where}:2: task.length: must be at most 100,000 (5x the longest sequence benchmark), got 100,000,000",
        f"{where}:4: model.layers: must be at most 100 (5x the deepest recurrent stacks in the literature), "
        "got 1,000,000",
        f"{where}:5: model.hidden: must be at most 16,384 (2x the widest recurrent layer in the literature), "
        "got 99,999,999,999,999,999,999,999",
        f"{where}:6: threads: must be at most 1,024 (more than any one machine's cores), got 1,000,000",
        f"{where}:7: train.steps: must be at most 1,000,000 (every step's metrics are held in memory until the run "
        "ends), got 100,000,000",
        f"{where}:7: train.batch_size: must be at most 65,536 (sequences per step), got 1,000,000",
        f"{where}:8: seeds: seeds must be at most 2^63 - 1 (torch's generator takes 64 bits), "
        "got [18446744073709551616]"]


def test_a_tuned_or_gridded_size_is_bounded_like_a_set_one(tmp_path):
    text = "name: t\ngrid:\n  model.layers: [1, 1000000]\ntune:\n  model.hidden: [8, 99999999999999999999999]\n" \
           "  seeds: [100]\n"
    where = tmp_path / "hostile.yaml"
    problems = refused(tmp_path, text)
    assert f"{where}:3: grid.model.layers[1]: must be at most 100 (5x the deepest recurrent stacks in the " \
           "literature), got 1,000,000" in problems
    assert f"{where}:5: tune.model.hidden[1]: must be at most 16,384 (2x the widest recurrent layer in the " \
           "literature), got 99,999,999,999,999,999,999,999" in problems


@pytest.mark.parametrize("key, text", [
    ("train.lr", "train: {lr: .inf}"), ("train.omega", "train: {omega: .nan}"),
    ("train.weight_decay", "train: {weight_decay: .inf}"),
    ("diagnostics.spike_factor", "diagnostics: {spike_factor: .inf}"),
    ("diagnostics.vanishing_ratio", "diagnostics: {vanishing_ratio: .nan}"),
    ("train.clip", "train: {clip: {kind: norm, max_norm: .inf}}"),
    ("train.clip", "train: {clip: {kind: zclip, z_thresh: .inf}}")])
def test_a_non_finite_number_is_refused(tmp_path, key, text):
    (line,) = refused(tmp_path, f"name: x\n{text}\n")
    assert line.startswith(f"{tmp_path / 'hostile.yaml'}:2: {key}: ") and ("finite number, got" in line
                                                                           or "got nan" in line), line


def test_an_infinite_lr_in_a_grid_or_a_forget_bias_is_refused(tmp_path):
    text = "name: x\nmodel: {cell: lstm, forget_bias: -.inf}\ngrid:\n  train.lr: [0.01, .inf]\n"
    assert refused(tmp_path, text) == [
        f"{tmp_path / 'hostile.yaml'}:2: model.forget_bias: expected a number or chrono, got -inf",
        f"{tmp_path / 'hostile.yaml'}:4: grid.train.lr[1]: expected a finite number, got inf"]


def test_a_run_too_large_for_memory_is_refused_at_the_key_that_makes_it(tmp_path):
    where = tmp_path / "hostile.yaml"
    assert refused(tmp_path, "name: x\ntask: {length: 100000}\n") == [
        f"{where}:2: task.length: a run would need more memory than the 64 GB gradlab allows one; shorten the "
        "sequences or shrink the batch, the evaluation set or the model (about 124.2 GB: 32 + 1,000 sequences of "
        "length 100,000 through 1 x 64 vanilla units)"]
    # only the grid's points that pass the limit are named: a 512-unit LSTM keeps 11 numbers a unit-step, a
    # tanh RNN 5 (42 GB)
    assert refused(tmp_path, "name: x\ntask: {length: 4000}\ngrid:\n  model.hidden: [64, 512]\n"
                             "  model.cell: [vanilla, lstm]\n") == [
        f"{where}:2: task.length: a run would need more memory than the 64 GB gradlab allows one; shorten the "
        "sequences or shrink the batch, the evaluation set or the model (about 86.7 GB: 32 + 1,000 sequences of "
        "length 4,000 through 1 x 512 lstm units) (for grid model.hidden=512, model.cell=lstm)"]


def test_the_memory_estimate_bounds_what_autograd_keeps_for_every_cell():
    """``footprint``'s share of a batch is at least the bytes autograd saves for the backward pass
    (counted by torch's saved-tensor hooks, the parameters left out) for every cell of the registry,
    and not more than 5x them (measured: 4.6x for the tanh RNNs, which keep one tensor a step; 1.5x an LSTM)."""
    import copy

    import torch

    from gradlab.rules import footprint
    from gradlab.tasks import resolve
    from gradlab.training import build_model
    from gradlab.vocabulary import CELL_NAMES

    for cell in CELL_NAMES:
        (run,) = load_experiment_text(f"name: m\ntask: {{length: 40, eval_size: 4}}\nmodel: {{cell: {cell}, "
                                      "hidden: 16, layers: 2}\ntrain: {batch_size: 8}\n").runs
        twice = copy.deepcopy(run.config)
        twice["train"]["batch_size"] *= 2
        estimate = footprint(twice) - footprint(run.config)  # one batch of 8 sequences
        task = resolve(run.config["task"])
        model = build_model(run.config, task, torch.device("cpu"), torch.float32)
        batch = task.generate(8, 40, torch.Generator().manual_seed(0))
        saved = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch.x, model.initial_state(8, device=batch.x.device, dtype=batch.x.dtype))
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        kept = sum(n for ptr, n in saved.items() if ptr not in weights)
        assert kept <= estimate <= 5 * kept, (cell, kept, estimate)


def load_experiment_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(text)
        return load_experiment(path)


# ---------------------------------------------------------------------------
# An expect: expression and the config file itself.

@pytest.mark.parametrize("spec, message", [
    (">= " + "-" * 3000 + "1", "(3,001 characters) is longer than the 500 characters an expression may be"),
    (">= " + "-" * 400 + "1", "nests operators deeper than 32 levels"),
    ("< " + "(" * 300 + "1" + ")" * 300, "is longer than the 500 characters an expression may be"),
    ("< " + "(" * 210 + "1" + ")" * 210, "as arithmetic (numbers, columns, + - * / and parentheses)")])
def test_a_deeply_nested_expectation_is_one_located_line(tmp_path, spec, message):
    (line,) = refused(tmp_path, f'name: x\nexpect:\n  - solved_rate: "{spec}"\n')
    assert line.startswith(f"{tmp_path / 'hostile.yaml'}:3: expect[0].solved_rate: ") and line.endswith(message), line
    assert len(line) < 300  # the value is quoted cut short, not whole


def invoke_bounded(*args: str):
    """``runner.invoke`` in a thread, so a hang fails the test instead of stopping the suite."""
    import threading

    outputs = []
    worker = threading.Thread(target=lambda: outputs.append(runner.invoke(app, list(args))), daemon=True)
    worker.start()
    worker.join(timeout=120)  # bounds a hang only: every read here returns at once
    assert not worker.is_alive(), f"{' '.join(args)} did not return"
    return outputs[0]


def test_a_fifo_with_no_writer_a_device_or_a_directory_is_one_line_never_a_hang(tmp_path):
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # no writer: a blocking open would wait for ever
    kinds = {fifo: "a pipe with nothing written to it", Path("/dev/zero"): "a device, not a file",
             tmp_path: "a directory, not a file"}
    for path, kind in kinds.items():
        result = invoke_bounded("validate", str(path))
        assert result.exit_code == 2
        assert result.output == f"error: {path}: cannot read the config: {kind}\n"


def test_the_kind_is_decided_on_what_was_opened_not_on_an_earlier_stat(tmp_path, monkeypatch):
    """A FIFO swapped in after the check (here: ``os.stat`` sees a regular file) must not be opened
    blocking: the open descriptor's ``fstat`` decides, so no writer is one line, never a hang."""
    import os

    fifo, regular, real_stat = tmp_path / "swapped.yaml", tmp_path / "regular.yaml", os.stat
    os.mkfifo(fifo)
    regular.write_text("name: x\n")
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(regular if str(p) == str(fifo) else p, *a, **k))
    result = invoke_bounded("validate", str(fifo))
    assert (result.exit_code, result.output) == (2, f"error: {fifo}: cannot read the config: "
                                                    "a pipe with nothing written to it\n")


def test_a_pipe_with_a_writer_is_read_to_its_end_and_bounded(tmp_path):
    """``gradlab run <(sed … cfg.yaml)`` and ``cat cfg.yaml | gradlab validate /dev/stdin`` pass the
    config as /dev/fd/N, a pipe: read whole, in as many pieces as the writer gives, up to MAX_BYTES."""
    import os
    import threading

    def piped(text: bytes, pieces: int = 2):
        read_end, write_end = os.pipe()

        def write():  # the reader opens its own /dev/fd/N; this end stays open until all is written
            try:
                for k in range(pieces):
                    os.write(write_end, text[k * len(text) // pieces:(k + 1) * len(text) // pieces])
            except BrokenPipeError:  # the reader stopped at MAX_BYTES and closed
                pass
            finally:
                os.close(write_end)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            return invoke_bounded("validate", f"/dev/fd/{read_end}")
        finally:
            writer.join(timeout=120)
            os.close(read_end)

    config = b"name: piped\ntask: {length: 6, eval_size: 4}\nmodel: {hidden: 4}\nseeds: [0, 1]\n"
    result = piped(config)
    assert result.exit_code == 0 and result.output.endswith(": piped, 2 runs\n"), result.output
    result = piped(b"# " + b"x" * (MAX_BYTES + 4096) + b"\nname: big\n", pieces=3)  # more than a pipe holds
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.endswith(f"the config is larger than {MAX_BYTES // 1024} KB; a config lists values, "
                                  "not data\n"), result.output


# ---------------------------------------------------------------------------
# One 64-bit run identity (issue 22: 32 bits let two configs share a directory; the second never trained).

# Two runs of one config whose SHA-1 digests share their first 8 hex digits (found by a search over seeds).
COLLIDING = """name: collide
task: {length: 6, eval_size: 4}
model: {hidden: 4}
train: {steps: 2, batch_size: 2, eval_every: 2}
seeds: [45624, 93946]
"""


def test_two_runs_that_shared_a_32_bit_hash_are_both_trained(tmp_path):
    path = tmp_path / "collide.yaml"
    path.write_text(COLLIDING)
    first, second = load_experiment(path).runs
    a, b = results.run_hash(first.id), results.run_hash(second.id)
    assert len(a) == len(b) == 16 and a[:8] == b[:8] and a != b  # the collision under the old 8 digits
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "-q", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "collide").iterdir() if p.is_dir()) == sorted([first.id, second.id])
    assert [json.loads((out / "collide" / r.id / results.CONFIG).read_text())["seed"] for r in (first, second)] \
        == [45624, 93946]


LEGACY = """name: legacy
task: {length: 6, eval_size: 4}
model: {hidden: 4}
train: {steps: 2, batch_size: 2, eval_every: 2}
grid: {model.cell: [vanilla, lstm]}
expect:
  - solved_rate: ">= 0"
"""


def _as_legacy(folder: Path) -> dict[str, str]:
    """Rename the run directories under ``folder`` as a gradlab of 8-digit hashes named them, and the hashes
    its experiment.json records; return new name -> old name."""
    renamed = {}
    for d in sorted(p for p in folder.iterdir() if (p / results.SUMMARY).exists()):
        old = d.name[:-8]  # the first 8 of the 16 digits: the same SHA-1
        d.rename(folder / old)
        renamed[d.name] = old
    doc = json.loads((folder / "experiment.json").read_text())
    for sweep in doc["sweeps"]:
        sweep["runs"] = [h[:8] for h in sweep["runs"]]
    (folder / "experiment.json").write_text(json.dumps(doc))
    return renamed


def test_a_sweep_resumed_over_a_folder_of_8_digit_names_trains_nothing_again(tmp_path):
    path = tmp_path / "legacy.yaml"
    path.write_text(LEGACY)
    out = tmp_path / "out"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "-q", "-f", "json"]).exit_code == 0
    folder = out / "legacy"
    renamed = _as_legacy(folder)
    summaries = {old: (folder / old / results.SUMMARY).read_bytes() for old in renamed.values()}
    dry = runner.invoke(app, ["run", str(path), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0 and dry.output.splitlines()[-1] == "0 to run, 2 already done"
    assert sorted(line.split()[-1] for line in dry.output.splitlines()[:-1]) == sorted(
        str(folder / old) for old in renamed.values())
    # a wider sweep into the folder trains only its new run, and records every run by its 16 digits
    wider = ["--set", "grid.model.cell=[vanilla, lstm, gru]"]
    again = runner.invoke(app, ["run", str(path), "--out", str(out), "-q", "-f", "json", "--check", *wider])
    assert again.exit_code == 0, again.output
    (new,) = {p.name for p in folder.iterdir() if p.is_dir()} - set(renamed.values())
    assert new.startswith("cell=gru_seed=0_") and len(results.run_hash(new)) == 16
    assert all((folder / old / results.SUMMARY).read_bytes() == s for old, s in summaries.items())
    # each sweep's expectation sees its runs, whichever length of hash names them in the folder and the record
    checked = runner.invoke(app, ["compare", str(folder), "--check", "-f", "json"])
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output[checked.output.index("{"):])
    assert sorted(e["runs"] for e in report["expectations"]) == [2, 3]


def test_an_8_digit_name_of_another_config_is_not_taken_for_the_run(tmp_path):
    from gradlab.config import legacy_dirs

    path = tmp_path / "collide.yaml"
    path.write_text(COLLIDING)
    first, second = load_experiment(path).runs  # their hashes share the first 8 digits
    folder = tmp_path / "out" / "collide"
    stored = folder / f"seed=45624_{results.run_hash(first.id)[:8]}"  # the first's run, as the old gradlab named it
    stored.mkdir(parents=True)
    (stored / results.CONFIG).write_text(json.dumps(first.config))
    assert legacy_dirs(folder, first) == [stored]
    assert legacy_dirs(folder, second) == []  # 32 bits equal, the config not: another run
    (stored / results.CONFIG).write_text("{damaged")
    assert legacy_dirs(folder, first) == []
