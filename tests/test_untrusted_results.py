"""A results folder read as untrusted input, part of the shipped fault suite (issue 22's campaign).

A results folder from a CI artifact or a colleague may hold anything: a run ``name`` that is a path,
links planted where figures and event files go, valid JSON of the wrong shape, a zip bomb for a
profile, symlinked (and cyclic) folders. Every reader (compare, plot, report, export) leaves out the
same damaged runs with the same ``skipped: <path>: <problem>`` line, writes nothing outside the folder
the user chose, never prints a traceback, and a diff of a result set against itself finds nothing.
Each test writes tiny runs by hand (no training) and takes about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradlab import readers, results
from gradlab.cli import app

runner = CliRunner()
STEPS, EVAL_EVERY, S = 20, 10, 12  # a run of 20 steps evaluated at 0, 10 and 20 on sequences of 12 steps


def write_run(root: Path, name: str = "demo", seed: int = 0, cell: str = "lstm", verdict: str = "healthy",
              profile: np.ndarray | None = None) -> Path:
    """A whole run directory as ``gradlab run`` writes it, ``<root>/<name>/<cell>-s<seed>``."""
    run_dir = root / name / f"{cell}-s{seed}"
    config = {"name": name, "task": {"name": "adding", "length": S, "eval_size": 16},
              "model": {"cell": cell, "hidden": 4}, "train": {"steps": STEPS, "eval_every": EVAL_EVERY, "lr": 0.01,
                                                               "clip": {"kind": "none"}, "tbptt": None},
              "diagnostics": {"horizon_fraction": 0.01}, "seed": seed}
    rows = [{"kind": "eval", "step": 0, "eval_loss": 0.2}]
    for step in range(1, STEPS + 1):
        rows.append({"kind": "train", "step": step, "loss": 0.2 / step, "grad_norm": 1.0 + step})
        if step % EVAL_EVERY == 0:
            rows.append({"kind": "eval", "step": step, "eval_loss": 0.2 / step})
    summary = {"status": "ok", "final_loss": 0.01, "baseline_loss": 1 / 6, "solved": False, "diverged": False,
               "steps_done": STEPS, "verdict": verdict, "horizon": 5, "dependency_lag": 5, "wall_seconds": 1.0}
    grad = np.stack([0.9 ** np.arange(S)[::-1] * (e + 1) for e in range(3)]) if profile is None else profile
    results.save_run(run_dir, config, {"torch": "2"}, rows, summary,
                     profile={"step": np.array([0, 10, 20]), "grad_norm": grad.astype(np.float32)})
    (root / name / "experiment.json").write_text(json.dumps({"name": name, "sweeps": []}))
    return run_dir


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def invoke(*args: str):
    """A command's result; asserts it printed no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, (AttributeError, TypeError,
                                                                                     KeyError, ValueError)), (
        args, result.output, result.exception)
    return result


def skipped_lines(result) -> list[str]:
    return sorted(line for line in result.stderr.splitlines() if line.startswith("skipped: "))


def every_command(root: Path, tmp_path: Path) -> dict[str, object]:
    """compare, plot, report (HTML and Markdown) and export of ``root``, each into its own folder."""
    book = tmp_path / "book.md"
    return {"compare": invoke("compare", root), "plot": invoke("plot", root, "-o", tmp_path / "plots"),
            "report": invoke("report", root, "-o", tmp_path / "report.html"),
            "book": invoke("report", root, "--format", "markdown", "-o", book),
            "export": invoke("export", root, "--tensorboard", tmp_path / "tb")}


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


# ---------------------------------------------------------------------------
# 1. A name that is a path: nothing written (or deleted) outside -o / --tensorboard


@pytest.mark.parametrize("bad_name", ["absolute", "../../victim", ".."])
def test_a_run_name_that_is_a_path_is_skipped_and_nothing_is_written_outside(tmp_path, bad_name):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root, victim = tmp_path / "results", tmp_path / "victim"
    write_run(root, "demo", seed=0)
    hostile = write_run(root, "demo", seed=1)
    name = str(victim) if bad_name == "absolute" else bad_name
    edit_json(hostile / "config.json", lambda c: c.update(name=name))
    # an event file of someone else's where the old export computed its folder: it must stay
    theirs = victim / hostile.name / "events.out.tfevents.1.host.gradlab"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"not gradlab's")
    before = files_under(victim) | files_under(tmp_path / "out")
    ran = every_command(root, tmp_path / "out")
    expected = [f"skipped: {hostile / 'config.json'}: name: expected a name of letters, digits, '-', '_' or '.', "
                f"got {name!r}"]
    for command, result in ran.items():
        assert result.exit_code == 0, (command, result.output)
        assert skipped_lines(result) == expected, (command, result.stderr)
    assert theirs.read_bytes() == b"not gradlab's" and files_under(victim) == {theirs.parent, theirs}
    written = files_under(tmp_path / "out") - before
    assert written and all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in written)
    assert sorted(p.name for p in (tmp_path / "out" / "tb" / "demo").iterdir()) == ["lstm-s0"]  # the other one


def test_links_planted_where_figures_and_event_files_go_are_not_followed(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root, victim = tmp_path / "results", tmp_path / "victim"
    victim.mkdir()
    run = write_run(root, "a")
    write_run(root, "b")
    # plot's folder of experiment a, export's of run a, the results book's plots folder of a: links to victim
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a").symlink_to(victim)
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "a").symlink_to(victim)
    (victim / run.name).mkdir()
    theirs = victim / run.name / "events.out.tfevents.1.host.gradlab"
    theirs.write_bytes(b"not gradlab's")
    (root / "a" / "plots").symlink_to(victim)

    plot = invoke("plot", root, "-o", tmp_path / "plots")
    assert plot.exit_code == 0 and skipped_lines(plot) == [
        f"skipped: {tmp_path / 'plots' / 'a'}: resolves to {victim.resolve()}, outside {tmp_path / 'plots'}; "
        "the experiment's figures are left out"]
    export = invoke("export", root, "--tensorboard", tmp_path / "tb")
    assert export.exit_code == 0 and skipped_lines(export) == [
        f"skipped: {tmp_path / 'tb' / 'a' / run.name}: resolves to {victim.resolve() / run.name}, outside "
        f"{tmp_path / 'tb'}; the run is not exported"]
    book = invoke("report", root, "--format", "markdown", "-o", tmp_path / "book.md")
    assert book.exit_code == 0 and skipped_lines(book) == [
        f"skipped: {root / 'a' / 'plots'}: resolves to {victim.resolve()}, outside {root / 'a'}; "
        "the experiment's plots are left out"]
    assert files_under(victim) == {victim / run.name, theirs} and theirs.read_bytes() == b"not gradlab's"
    assert (tmp_path / "plots" / "b" / "learning_curves.png").is_file()  # the other experiment is drawn


def test_export_replaces_only_its_own_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root, logdir = tmp_path / "results", tmp_path / "tb"
    run = write_run(root)
    target = logdir / "demo" / run.name
    target.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.gradlab"
    elsewhere.write_bytes(b"keep")
    (target / "events.out.tfevents.2.host.gradlab").symlink_to(elsewhere)  # a link named as export names its files
    (target / "events.out.tfevents.3.host.other").write_bytes(b"another writer's")
    assert invoke("export", root, "--tensorboard", logdir).exit_code == 0
    assert invoke("export", root, "--tensorboard", logdir).exit_code == 0  # again: the first export is replaced
    ours = sorted(p.name for p in target.iterdir() if p.is_file() and not p.is_symlink() and
                  p.name.endswith(".gradlab"))
    assert len(ours) == 1 and elsewhere.read_bytes() == b"keep"
    assert (target / "events.out.tfevents.3.host.other").read_bytes() == b"another writer's"


# ---------------------------------------------------------------------------
# 2, 3, 4, 5. Valid JSON of the wrong shape, and one definition of damage for every command


WRONG_SHAPES = [
    ("summary.json", lambda d: [1, 2], "not a JSON object"),
    ("summary.json", lambda d: d.update(final_loss="0.1"), "final_loss: expected a number or null, got '0.1'"),
    ("summary.json", lambda d: d.update(verdict=["healthy"]), "verdict: expected a string or null, got ['healthy']"),
    ("summary.json", lambda d: d.update(steps_done="20"), "steps_done: expected a number or null, got '20'"),
    ("summary.json", lambda d: d.update(wall_seconds={}), "wall_seconds: expected a number or null, got {}"),
    ("summary.json", lambda d: d.update(solved="no"), "solved: expected true or false or null, got 'no'"),
    ("summary.json", lambda d: d.update(decay_rate=[0.5]), "decay_rate: expected a number or null, got [0.5]"),
    ("summary.json", lambda d: d.update(dependency_ratio="abc"), "dependency_ratio: expected a number or null"),
    ("config.json", lambda d: d.update(model=[1]), "model, train and diagnostics must be sections"),
    ("config.json", lambda d: d["task"].update(length="12"), "task.length: expected an integer, got '12'"),
    ("config.json", lambda d: d["task"].update(name=None), "task.name: expected a string, got None"),
    ("config.json", lambda d: d["train"].update(steps=1e400), "train.steps: expected an integer or null, got inf"),
    ("config.json", lambda d: d["train"].update(tbptt={"k": 1}), "train.tbptt: expected null, a window or {k1, k2}"),
    ("config.json", lambda d: d["train"].update(clip={"kind": 5}), "train.clip.kind: expected a string, got 5"),
    ("config.json", lambda d: d.update(name=7), "name: expected a name of letters"),
    ("config.json", lambda d: d["diagnostics"].update(horizon_fraction="x"),
     "diagnostics.horizon_fraction: expected a number, got 'x'"),
    ("env.json", lambda d: "x", "not a JSON object"),
]


def test_valid_json_of_the_wrong_shape_is_one_named_problem_in_every_command(tmp_path):
    # one folder holds every wrong shape, each in a run of its own beside one intact run: each command
    # reads it once (its figures cost seconds) and must name each damaged run with its own problem
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root = tmp_path / "results"
    write_run(root, seed=0)
    expected = []
    for seed, (file, change, problem) in enumerate(WRONG_SHAPES, start=1):
        damaged = write_run(root, seed=seed) / file
        doc = json.loads(damaged.read_text())
        replaced = change(doc)
        damaged.write_text(json.dumps(doc if replaced is None else replaced))
        expected.append((f"skipped: {damaged}: ", problem))
    expected.sort()
    for command, result in every_command(root, tmp_path / "out").items():
        assert result.exit_code == 0, (command, result.output)
        lines = skipped_lines(result)
        assert len(lines) == len(expected), (command, lines)
        for line, (where, problem) in zip(lines, expected):
            assert line.startswith(where + problem), (command, line, problem)


def test_a_summary_ratio_that_is_not_a_number_beside_a_cut_profile_is_one_named_problem(tmp_path):
    # a float32-era run (env.json without norms) whose last profile is cut at float32's floor: its ratio's
    # upper bound is computed from the summary's dependency_ratio, which must be a number to compute with
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root = tmp_path / "results"
    write_run(root, seed=0)
    grad = np.stack([0.9 ** np.arange(S)[::-1] * (e + 1) for e in range(3)])
    grad[-1, :2] = [0.0, 1e-16]  # a 0 beside a value at the floor, in the last evaluation
    damaged = write_run(root, seed=1, profile=grad) / "summary.json"
    edit_json(damaged, lambda d: d.update(dependency_ratio="abc"))
    for command, result in every_command(root, tmp_path / "out").items():
        assert result.exit_code == 0, (command, result.output)
        assert skipped_lines(result) == [
            f"skipped: {damaged}: dependency_ratio: expected a number or null, got 'abc'"], (command, result.stderr)


def test_a_linked_experiment_is_read_but_its_plots_are_not_written_into_its_target(tmp_path):
    # reading through a link is wanted (an experiment linked into a results folder); writing is not
    root, victim = tmp_path / "results", tmp_path / "victim"
    write_run(victim, "exp")
    root.mkdir()
    (root / "link").symlink_to(victim)
    before = files_under(victim)
    result = invoke("report", root, "--format", "markdown", "-o", tmp_path / "book.md")
    assert result.exit_code == 0, result.output
    assert skipped_lines(result) == [f"skipped: {root / 'link' / 'exp' / 'plots'}: resolves to "
                                     f"{(victim / 'exp' / 'plots').resolve()}, outside {root}; the experiment's "
                                     "plots are left out"]
    assert files_under(victim) == before
    book = (tmp_path / "book.md").read_text()
    assert "## exp" in book and "| [exp](#exp) | no claims (0/0) | 1 |" in book  # its runs are read
    # an experiment folder inside the root still gets its plots
    write_run(root, "here")
    result = invoke("report", root, "--format", "markdown", "-o", tmp_path / "book.md")
    assert result.exit_code == 0 and len(skipped_lines(result)) == 1
    assert {p.name for p in (root / "here" / "plots").iterdir()} and files_under(victim) == before


EXPERIMENT_SHAPES = [
    ([1], "not a JSON object"),
    ({"sweeps": [{"runs": 5, "expect": [1]}]}, "sweeps[0].runs: expected a list of strings, got 5"),
    ({"sweeps": [{"runs": ["ab"], "expect": {"a": 1}}]}, "sweeps[0].expect: expected a list or null, got {'a': 1}"),
    ({"sweeps": [{"runs": ["ab"], "set": [3]}]}, "sweeps[0].set: expected a list of strings, got [3]"),
    ({"sweeps": [{"runs": ["ab"], "source": 3, "expect": [{"x": 1}]}]}, "sweeps[0].source: expected a string"),
    ({"sweeps": [], "expect": "solved_rate"}, "expect: expected a list or null, got 'solved_rate'"),
]


@pytest.mark.parametrize("doc, problem", EXPERIMENT_SHAPES)
def test_an_experiment_record_of_the_wrong_shape_is_named_with_what_to_do(tmp_path, doc, problem):
    from gradlab import sweeps

    root = tmp_path / "results"
    write_run(root, "demo")
    write_run(root, "other")
    record = root / "demo" / "experiment.json"
    record.write_text(json.dumps(doc))
    line = f"error: {record}: {problem}"
    advice = "; gradlab run writes it again (keeping this one as experiment.json.damaged)"
    for args in (["compare", root, "--check"], ["report", root, "-o", tmp_path / "r.html"],
                 ["report", root, "--format", "markdown", "-o", tmp_path / "book.md", "--check"]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        [error] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
        assert error.startswith(line) and error.endswith(advice), (args, error)
    book = invoke("report", root, "--format", "markdown", "-o", tmp_path / "book.md")  # no check: left out, named
    [skipped] = skipped_lines(book)
    assert book.exit_code == 0 and skipped.startswith(f"skipped: {record}: {problem}"), book.output
    assert skipped.endswith("; the experiment is left out") and "## other" in (tmp_path / "book.md").read_text()
    assert sweeps.experiment_damaged(root, "demo")  # so gradlab run does set it aside and write it again


def test_a_selection_record_nested_too_deeply_huge_or_a_fifo_is_named_not_a_crash_or_a_hang(tmp_path):
    root = tmp_path / "results"
    write_run(root, "demo")
    selection = root / "demo" / "selection.json"
    selection.write_text("[" * 100_000 + "]" * 100_000)
    assert results.selection_damage(root / "demo") == "corrupt: JSON nested too deeply"
    selection.unlink()
    with selection.open("wb") as f:
        f.truncate(results.MAX_JSON_BYTES + 1)  # sparse: no disk used
    assert results.selection_damage(root / "demo").startswith(f"{results.MAX_JSON_BYTES + 1:,} bytes, more than")
    selection.unlink()
    os.mkfifo(selection)  # reading it would block for ever
    assert results.selection_damage(root / "demo") == "not a regular file"
    # through the command, in a process of its own, so that a hang would end at the timeout, and fail
    proc = subprocess.run([sys.executable, "-m", "gradlab", "compare", str(root), "-f", "json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr  # named as damage; the runs are shown, as for any damaged record
    assert [line for line in proc.stderr.splitlines() if line.startswith("skipped: ")] == [
        f"skipped: {selection}: not a regular file; each arm's choice is unknown, so its runs at every tuned "
        "value are shown (gradlab run of its config writes the file again)"], proc.stderr
    assert sum(g["runs"] for g in json.loads(proc.stdout)) == 1


def test_a_metrics_file_larger_than_any_run_writes_is_refused_unread(tmp_path):
    root = tmp_path / "results"
    write_run(root, seed=0)
    run = write_run(root, seed=1)
    with (run / "metrics.csv").open("r+b") as f:
        f.truncate(readers.MAX_METRICS_BYTES + 1)  # sparse: its rows, then zeros, and no disk used
    summary, config = (json.loads((run / n).read_text()) for n in ("summary.json", "config.json"))
    peak, raised = peak_while(lambda: readers.read_metrics(run / "metrics.csv", summary, config))
    assert isinstance(raised, results.Damaged) and raised.reason == (
        f"{readers.MAX_METRICS_BYTES + 1:,} bytes, more than the {readers.MAX_METRICS_BYTES:,} a run's metrics "
        "may have"), raised
    assert peak < 10 * 2**20, peak
    result = invoke("compare", root)
    assert result.exit_code == 0 and skipped_lines(result) == [f"skipped: {run / 'metrics.csv'}: {raised.reason}"]


def damage_five_ways(root: Path) -> set[Path]:
    """Six runs of one experiment, five damaged as a killed sweep or a bad copy leaves them; their files."""
    write_run(root, seed=0)
    empty, short, no_eval, cut, bad_profile = (write_run(root, seed=s) for s in range(1, 6))
    (empty / "metrics.csv").write_text("")
    rows = (short / "metrics.csv").read_text().splitlines(keepends=True)
    (short / "metrics.csv").write_text("".join(rows[:8]))  # a sweep killed at step 6
    (no_eval / "metrics.csv").write_text("".join(r for r in rows if not r.startswith("eval,10,")))
    (cut / "summary.json").write_text('{"status": "ok", "fin')
    data = (bad_profile / "profile.npz").read_bytes()
    (bad_profile / "profile.npz").write_bytes(data[:len(data) // 2])
    return {empty / "metrics.csv", short / "metrics.csv", no_eval / "metrics.csv", cut / "summary.json",
            bad_profile / "profile.npz"}


def test_every_command_leaves_out_the_same_damaged_runs_with_the_same_lines(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root = tmp_path / "results"
    files = damage_five_ways(root)
    ran = every_command(root, tmp_path / "out")
    lines = {command: skipped_lines(result) for command, result in ran.items()}
    assert all(result.exit_code == 0 for result in ran.values()), {c: r.output for c, r in ran.items()}
    assert sorted(line.split(": ")[1] for line in lines["compare"]) == sorted(map(str, files))
    assert all(found == lines["compare"] for found in lines.values()), lines
    # what each shows is the one intact run
    assert sum(g["runs"] for g in json.loads(invoke("compare", root, "-f", "json").stdout)) == 1
    assert [p.name for p in (tmp_path / "out" / "tb" / "demo").iterdir()] == ["lstm-s0"]
    assert "| 1 |" in (tmp_path / "out" / "book.md").read_text()  # the book's summary row: 1 run
    # a gate never passes on part of its runs: --check fails on a damaged run, in Markdown too
    book = invoke("report", root, "--format", "markdown", "-o", tmp_path / "book.md", "--check")
    assert book.exit_code == 1 and "damaged run" in book.stderr


def test_a_damaged_experiment_record_leaves_its_experiment_out_of_the_book(tmp_path):
    root = tmp_path / "results"
    write_run(root, "a")
    write_run(root, "b")
    (root / "a" / "experiment.json").write_text('{"name": "a", "sweeps": [{"seconds": "ten"}]}')
    result = invoke("report", root, "--format", "markdown", "-o", tmp_path / "book.md")
    assert result.exit_code == 0 and skipped_lines(result) == [
        f"skipped: {root / 'a' / 'experiment.json'}: sweeps[0].seconds: expected a number or null, got 'ten'; "
        "the experiment is left out"]
    book = (tmp_path / "book.md").read_text()
    assert "## b" in book and "## a" not in book


def test_a_deeply_nested_or_huge_json_file_is_damage_not_a_crash(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(results.Damaged, match="nested too deeply"):
        readers.read_json(path)
    path.write_text('{"x": ' + "1" * 5000 + "}")  # more digits than Python turns into an int
    with pytest.raises(results.Damaged, match="corrupt JSON"):
        readers.read_json(path)
    os.mkfifo(tmp_path / "fifo.json")  # reading it would block for ever
    with pytest.raises(results.Damaged, match="not a regular file"):
        readers.read_json(tmp_path / "fifo.json")


def test_an_overlong_run_directory_name_is_skipped(tmp_path):
    root = tmp_path / "results"
    write_run(root, seed=0)
    long = write_run(root, seed=1)
    renamed = long.with_name("x" * 240)  # profile_heatmap_<240 bytes>.png would pass the file name limit
    long.rename(renamed)
    result = invoke("plot", root, "-o", tmp_path / "plots")
    assert result.exit_code == 0 and skipped_lines(result) == [
        f"skipped: {renamed}: a run directory name of 240 bytes, more than the 200 of a run id"]


# ---------------------------------------------------------------------------
# 2. A non-finite value from disk (lr: .inf trained to NaN): export and plot draw it


def test_a_run_whose_profile_is_nan_exports_and_plots(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    root = tmp_path / "results"
    nan = np.full((3, S), np.nan)
    nan[0] = 0.9 ** np.arange(S)  # the evaluation before training; then every gradient NaN, as at lr = inf
    run = write_run(root, profile=nan)
    edit_json(run / "summary.json", lambda s: s.update(final_loss=None, diverged=True, verdict="exploding"))
    export = invoke("export", root, "--tensorboard", tmp_path / "tb")
    assert export.exit_code == 0 and export.stderr == ""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "demo" / run.name), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("gradient_through_time")] == [0, 10, 20]  # the NaN ones drawn too
    assert invoke("plot", root, "-o", tmp_path / "plots").exit_code == 0


# ---------------------------------------------------------------------------
# 6. A zip bomb for a profile.npz: refused from its declared sizes, nothing of it allocated


def npy_header(shape: tuple, dtype: str = "<f8") -> bytes:
    """A .npy version 1.0 header declaring ``shape`` (numpy.lib.format)."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def peak_while(read) -> tuple[int, Exception | None]:
    """The peak of traced memory (numpy reports its arrays) while ``read()`` runs, and what it raised."""
    tracemalloc.start()
    try:
        read()
        raised = None
    except Exception as e:  # noqa: BLE001 - the test looks at what was raised
        raised = e
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, raised


def test_a_header_declaring_gigabytes_is_refused_before_numpy_allocates_them(tmp_path):
    path = tmp_path / "profile.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("step.npy", npy_header((3,), "<i8") + np.arange(3, dtype="<i8").tobytes())
        z.writestr("grad_norm.npy", npy_header((3, 50_000_000)) + b"\0" * 64)  # declares 1.2 GB, holds 64 bytes
    assert path.stat().st_size < 2000
    peak, raised = peak_while(lambda: readers.read_profile(path))
    assert isinstance(raised, results.Damaged) and "declare 1,200,000," in str(raised), raised
    assert peak < 10 * 2**20, peak


def test_a_deflate_bomb_is_refused_from_its_declared_size(tmp_path):
    path = tmp_path / "profile.npz"
    size = 80 * 2**20  # zeros deflate about 1000:1: an 80 KB file that would inflate to 80 MB
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("step.npy", npy_header((1,), "<i8") + bytes(8))
        with z.open("grad_norm.npy", "w", force_zip64=True) as member:
            member.write(npy_header((1, size // 8)))
            zeros = bytes(2**20)
            for _ in range(size // len(zeros)):
                member.write(zeros)
    assert path.stat().st_size < 2**20
    peak, raised = peak_while(lambda: readers.read_profile(path))
    assert isinstance(raised, results.Damaged) and "a zip bomb" in str(raised), raised
    assert peak < 10 * 2**20, peak
    # the same through a command: one line, the other runs drawn
    root = tmp_path / "results"
    write_run(root, seed=0)
    bomb = write_run(root, seed=1) / "profile.npz"
    bomb.write_bytes(path.read_bytes())
    result = invoke("plot", root, "-o", tmp_path / "plots")
    [line] = skipped_lines(result)
    declared = int(line.split(" declare ")[1].split()[0].replace(",", ""))
    assert result.exit_code == 0 and line == (
        f"skipped: {bomb}: its arrays declare {declared:,} bytes or more, more than the "
        f"{readers.MAX_PROFILE_BYTES:,} a profile may have (a zip bomb, or not gradlab's)") and declared > size


@pytest.mark.parametrize("declared", [(3, 4), (2**31,)])
def test_a_plain_npy_for_a_profile_is_refused_before_numpy_reads_it(tmp_path, declared):
    # np.load reads a .npy as one array (not an archive), allocating what its header declares: 16 GiB here
    path = tmp_path / "profile.npz"
    path.write_bytes(npy_header(declared) + bytes(8 * 12 if declared == (3, 4) else 64))
    peak, raised = peak_while(lambda: readers.read_profile(path))
    assert isinstance(raised, results.Damaged) and raised.reason == "not a .npz archive (a zip of .npy arrays)", raised
    assert peak < 10 * 2**20, peak


def test_an_encrypted_member_is_refused(tmp_path):
    path = tmp_path / "profile.npz"
    np.savez(path, step=np.arange(3), grad_norm=np.ones((3, 4)))
    data = bytearray(path.read_bytes())
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers' flag bits
        at = data.find(signature)
        while at >= 0:
            data[at + flags] |= 1  # bit 0: encrypted (zipfile would ask for a password: RuntimeError)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(results.Damaged, match=r"step.npy: encrypted$"):
        readers.read_profile(path)


def test_results_read_profile_reads_through_the_checked_reader(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert results.read_profile(run) is None
    with zipfile.ZipFile(run / "profile.npz", "w") as z:  # declares 1.2 GB: refused unread
        z.writestr("step.npy", npy_header((3,), "<i8") + np.arange(3, dtype="<i8").tobytes())
        z.writestr("grad_norm.npy", npy_header((3, 50_000_000)) + b"\0" * 64)
    peak, raised = peak_while(lambda: results.read_profile(run))
    assert isinstance(raised, results.Damaged) and "a zip bomb" in str(raised) and peak < 10 * 2**20


def test_a_profile_of_gradlab_size_is_read_whole(tmp_path):
    path = tmp_path / "profile.npz"
    grad = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    np.savez_compressed(path, step=np.arange(5), grad_norm=grad, grad_norm_layers=np.stack([grad, grad], axis=1))
    profile = readers.read_profile(path)
    assert np.array_equal(profile["grad_norm"], grad) and profile["grad_norm_layers"].shape == (5, 2, 7)


# ---------------------------------------------------------------------------
# 7. Symlinked experiment and run folders are read; a cycle does not hang


def test_symlinked_experiment_and_run_folders_are_read_and_cycles_end(tmp_path):
    root, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    write_run(root, "here")
    write_run(elsewhere, "linked", seed=0, cell="gru")
    run = write_run(elsewhere / "runs", "here", seed=1)
    (root / "linked").symlink_to(elsewhere / "linked")  # an experiment folder linked in
    (root / "here" / run.name).symlink_to(run)  # a run folder linked into an experiment
    (root / "here" / "loop").symlink_to(root)  # cycles: the root, and the folder above it
    (root / "linked-twice").symlink_to(elsewhere / "linked")  # the same folder twice: read once
    (root / "up").symlink_to(tmp_path)
    assert [p.relative_to(root) for p in results.files_named(root, "summary.json")] == [
        Path("here/lstm-s0/summary.json"), Path("here/lstm-s1/summary.json"), Path("linked/gru-s0/summary.json")]
    # through the command, in a process of its own, so that a hang would end at the timeout, and fail
    proc = subprocess.run([sys.executable, "-m", "gradlab", "compare", str(root), "-f", "json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted((g["cell"], g["runs"]) for g in json.loads(proc.stdout)) == [("gru", 1), ("lstm", 2)]


# ---------------------------------------------------------------------------
# 8. compare X X --check: identical data is no regression


def test_a_result_set_diffed_against_itself_passes_the_check(tmp_path):
    root = tmp_path / "results"
    for seed, verdict in enumerate(["healthy", "healthy", "exploding"]):  # healthy by majority, one seed not
        write_run(root, seed=seed, verdict=verdict)
    for seed, verdict in enumerate(["vanishing", "healthy"]):  # a tie: mixed
        write_run(root, seed=seed, cell="gru", verdict=verdict)
    same = invoke("compare", root, root, "--check", "-f", "json")
    assert same.exit_code == 0, same.output
    assert {r["status"] for r in json.loads(same.stdout)["diff"]} == {"ok"} and "REGRESSION" not in same.stderr
    # a larger share of exploding runs than the healthy base is still a regression
    worse = tmp_path / "worse"
    for seed, verdict in enumerate(["healthy", "exploding", "exploding"]):
        write_run(worse, seed=seed, verdict=verdict)
    diff = invoke("compare", root / "demo", worse / "demo", "--check", "-f", "json", "--by", "cell")
    assert diff.exit_code == 1
    [row] = [r for r in json.loads(diff.stdout)["diff"] if r["cell"] == "lstm"]
    assert row["status"] == "regression" and row["reasons"] == (
        "verdict healthy (2 healthy, 1 exploding) -> exploding (2 exploding, 1 healthy)")
