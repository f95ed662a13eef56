"""The ``tune:`` protocol (gradlab.tuning): each arm at its own best values, chosen on selection seeds.

Selection on stub summaries (no training): the known best is picked for every metric, ties and failed
or diverged runs count as documented, choices at the edge of the range are flagged. Then one tiny
tuned sweep, trained once for the module: selection seeds never among the reported runs, each arm's
reported runs at its chosen values, compare/plot never pooling the selection runs, widening the range
re-using the selection runs done; and a ``kill -9`` in either phase, resumed to the bytes of an
uninterrupted sweep.
"""

import json
import math
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab import results, tuning, vocabulary
from gradlab.cli import app
from gradlab.comparison import load_frame
from gradlab.config import load_experiment

runner = CliRunner()
CONFIG = """\
name: tuned
task: {name: adding, length: 10, eval_size: 16}
model: {hidden: 8}
train: {steps: STEPS, batch_size: 8, eval_every: 10}
seeds: [0, 1]
grid:
  model.cell: [vanilla, gru]
tune:
  train.lr: [1.0e-3, 1.0e-2]
  seeds: [100]
  metric: final_loss
"""


def write_config(tmp_path: Path, steps: int = 20, text: str = CONFIG) -> Path:
    path = tmp_path / "tuned.yaml"
    path.write_text(text.replace("STEPS", str(steps)))
    return path


def stub_plan(tmp_path, metric="final_loss", lrs="[1.0e-3, 3.0e-3, 1.0e-2]", seeds="[100]"):
    text = (CONFIG.replace("[1.0e-3, 1.0e-2]", lrs).replace("metric: final_loss", f"metric: {metric}")
            .replace("seeds: [100]", f"seeds: {seeds}"))
    return tuning.plan(load_experiment(write_config(tmp_path, text=text)))


def stub_summaries(plan, summary_of):
    """run id -> summary_of(cell, lr, seed): a stub of what the selection runs would measure."""
    return {r.id: summary_of(r.config["model"]["cell"], r.config["train"]["lr"], r.config["seed"])
            for r in plan.selection_runs}


BEST = {"vanilla": 3.0e-3, "gru": 1.0e-2}  # the known best lr per arm


def ok(loss=0.5, solved=False, steps_to_solve=None, diverged=False):
    return {"status": "ok", "final_loss": loss, "baseline_loss": 1.0, "solved": solved,
            "steps_to_solve": steps_to_solve, "diverged": diverged}


STUBS = {  # metric -> a summary whose metric is best at BEST[cell] and worse the farther lr is from it
    "final_loss": lambda cell, lr, seed: ok(loss=0.01 + abs(math.log10(lr / BEST[cell]))),
    "solved_rate": lambda cell, lr, seed: ok(solved=lr == BEST[cell] or seed == 100 and lr < BEST[cell],
                                              loss=0.3),
    "steps_to_solve": lambda cell, lr, seed: ok(solved=True,
                                                steps_to_solve=100 + 900 * abs(math.log10(lr / BEST[cell]))),
}


@pytest.mark.parametrize("metric", sorted(vocabulary.TUNE_METRICS))
def test_the_selection_picks_the_known_best_value_of_each_arm(tmp_path, metric):
    plan = stub_plan(tmp_path, metric, seeds="[100, 101]")
    arms = tuning.choose(plan, stub_summaries(plan, STUBS[metric]))
    assert {a["label"]: a["chosen"]["train.lr"] for a in arms} == {f"cell={c}": lr for c, lr in BEST.items()}
    for arm, rec in zip(plan.arms, arms):  # the reported runs: the arm's candidates at the chosen lr
        assert [r.config["train"]["lr"] for r in arm.candidates[plan.combinations.index(rec["chosen"])]] == \
            [rec["chosen"]["train.lr"]] * 2
        assert rec["reported"] == [r.id for r in arm.candidates[plan.combinations.index(rec["chosen"])]]


def test_diverged_runs_count_as_the_worst_failed_ones_leave_no_choice_and_ties_go_to_the_first_listed(tmp_path):
    plan = stub_plan(tmp_path, lrs="[1.0e-3, 3.0e-3, 1.0e-2]")

    def summary(cell, lr, seed):
        if lr == 1.0e-2:  # the lowest loss, but diverged (vanilla) or failed (gru)
            return ok(loss=math.inf, diverged=True) if cell == "vanilla" else {"status": "failed", "error": "x"}
        return ok(loss=0.2)  # 1e-3 and 3e-3 tie exactly

    vanilla, gru = tuning.choose(plan, stub_summaries(plan, summary))
    assert vanilla["chosen"] == {"train.lr": 1.0e-3} and vanilla["tied"] and not vanilla["no_finite"]
    assert vanilla["tied_with"] == [{"train.lr": 3.0e-3}] and vanilla["tie_break"] == "order"
    assert [p["mean"] for p in vanilla["curve"]] == [0.2, 0.2, math.inf]
    # a crash measured nothing: no choice (it would be 1e-3 by the others), its reported runs wait
    failed_run = plan.arms[1].selection[2][0].id
    assert gru["chosen"] is None and gru["reported"] == [] and gru["complete"]
    assert gru["failed"] == [{"run": failed_run, "values": {"train.lr": 1.0e-2}, "error": "x"}]
    reported, waiting = tuning.reported_runs(plan, [vanilla, gru])
    assert {r.config["model"]["cell"] for r in reported} == {"vanilla"} and waiting == [gru]

    def unsolved(cell, lr, seed):  # steps_to_solve: unsolved counts as PAR x the budget (20 steps)
        return ok(solved=lr == 3.0e-3, steps_to_solve=15 if lr == 3.0e-3 else None)

    plan = stub_plan(tmp_path, "steps_to_solve", lrs="[1.0e-3, 3.0e-3]")
    arms = tuning.choose(plan, stub_summaries(plan, unsolved))
    assert [p["mean"] for p in arms[0]["curve"]] == [tuning.PAR * 20, 15]
    assert arms[0]["chosen"] == {"train.lr": 3.0e-3}

    plan = stub_plan(tmp_path, "solved_rate", lrs="[1.0e-3, 3.0e-3]")  # both solve: the lower loss wins
    arms = tuning.choose(plan, stub_summaries(plan, lambda c, lr, s: ok(solved=True, loss=lr)))
    assert arms[0]["chosen"] == {"train.lr": 1.0e-3} and arms[0]["tied"]
    arms = tuning.choose(plan, stub_summaries(plan, lambda c, lr, s: ok(solved=True, loss=1 / lr)))
    assert arms[0]["chosen"] == {"train.lr": 3.0e-3}


def test_a_run_marked_diverged_counts_as_the_worst_whatever_its_final_loss(tmp_path):
    """``on_nonfinite: skip`` can end a diverged run at a finite loss, here the lowest of all: by hand,
    1e-2 is the worst (inf) for final_loss and unsolved for the others, so 3e-3 (loss 0.1) is chosen."""
    def summary(cell, lr, seed):
        if lr == 1.0e-2:
            return ok(loss=0.001, diverged=True, solved=True, steps_to_solve=5)
        return ok(loss=0.1 if lr == 3.0e-3 else 0.5, solved=lr == 3.0e-3, steps_to_solve=10 if lr == 3.0e-3 else None)

    for metric, worst in (("final_loss", math.inf), ("solved_rate", 0.0), ("steps_to_solve", tuning.PAR * 20)):
        plan = stub_plan(tmp_path, metric)
        arms = tuning.choose(plan, stub_summaries(plan, summary))
        assert [a["chosen"] for a in arms] == [{"train.lr": 3.0e-3}] * 2, metric
        assert arms[0]["curve"][2]["mean"] == worst and arms[0]["curve"][2]["loss_ratio_mean"] == math.inf, metric


@pytest.mark.parametrize("metric, losses, note", [
    # solved_rate ties (every seed solved); the later value has the lower loss, so it is taken, and the note says why
    ("solved_rate", {1.0e-3: 0.4, 3.0e-3: 0.2}, "tied with lr=0.001: the lowest final loss was taken"),
    ("solved_rate", {1.0e-3: 0.2, 3.0e-3: 0.2},
     "tied with lr=0.003, and on final loss too: the first listed was taken"),
    ("steps_to_solve", {1.0e-3: 0.3, 3.0e-3: 0.1}, "tied with lr=0.001: the lowest final loss was taken"),
    ("final_loss", {1.0e-3: 0.2, 3.0e-3: 0.2}, "tied with lr=0.003: the first listed was taken"),
    # three values: the others named in the config's order, not by rank (1e-2 has the second lowest loss)
    ("solved_rate", {1.0e-3: 0.3, 3.0e-3: 0.1, 1.0e-2: 0.2},
     "tied with lr=0.001; lr=0.01: the lowest final loss was taken"),
    # 1e-3 lost on loss, 1e-2 tied on loss too and is listed after 3e-3: loss decided, then the order
    ("solved_rate", {1.0e-3: 0.3, 3.0e-3: 0.2, 1.0e-2: 0.2},
     "tied with lr=0.001; lr=0.01: the lowest final loss was taken, then the first listed among equal losses "
     "(tied on final loss too: lr=0.01)"),
    ("steps_to_solve", {1.0e-3: 0.2, 3.0e-3: 0.2, 1.0e-2: 0.2},
     "tied with lr=0.003; lr=0.01, and on final loss too: the first listed was taken"),
])
def test_the_note_on_a_tie_says_what_was_taken_and_why(tmp_path, metric, losses, note):
    lrs = sorted(losses)
    plan = stub_plan(tmp_path, metric, lrs="[" + ", ".join(map(str, lrs)) + "]")
    arms = tuning.choose(plan, stub_summaries(plan, lambda c, lr, s: ok(solved=True, steps_to_solve=7,
                                                                        loss=losses[lr])))
    expected = min(losses, key=lambda lr: (losses[lr], lr))  # the lowest loss, then the first listed
    assert [a["chosen"] for a in arms] == [{"train.lr": expected}] * 2
    others = [lr for lr in lrs if lr != expected]  # every value ties on the metric; in the config's order
    assert arms[0]["beaten_on_loss"] == [{"train.lr": lr} for lr in others if losses[lr] > losses[expected]]
    assert arms[0]["tied_on_loss"] == [{"train.lr": lr} for lr in others if losses[lr] == losses[expected]]
    doc = tuning.record(tmp_path, "tuned", plan, arms)
    # a choice at the smallest or largest value is also at the edge: that note comes first
    edge = "best lr at the edge: widen the range; " if expected in (lrs[0], lrs[-1]) else ""
    assert [row["notes"] for row in tuning.choice_rows(doc)] == [edge + note] * 2


def test_an_arm_with_an_unfinished_selection_run_has_no_choice_and_its_runs_wait(tmp_path):
    plan = stub_plan(tmp_path)
    summaries = stub_summaries(plan, STUBS["final_loss"])
    summaries.pop(plan.arms[1].selection[2][0].id)  # one gru selection run not done (another shard's)
    arms = tuning.choose(plan, summaries)
    assert arms[0]["chosen"] and arms[1]["chosen"] is None and not arms[1]["complete"]
    reported, waiting = tuning.reported_runs(plan, arms)
    assert [r.config["model"]["cell"] for r in reported] == ["vanilla", "vanilla"]
    assert [w["label"] for w in waiting] == ["cell=gru"]
    arms = tuning.choose(plan, stub_summaries(plan, STUBS["final_loss"]))
    shards = [tuning.reported_runs(plan, arms, (i, 3))[0] for i in (1, 2, 3)]
    assert sorted(r.id for s in shards for r in s) == sorted(r.id for r in tuning.reported_runs(plan, arms)[0])


def test_a_choice_at_the_edge_of_the_range_is_flagged():
    tuned = {"train.lr": [1e-3, 3e-3, 1e-2], "train.clip": ["none", "norm"]}
    assert tuning.at_edge(tuned, {"train.lr": 1e-3, "train.clip": "none"}) == ["train.lr"]
    assert tuning.at_edge(tuned, {"train.lr": 1e-2, "train.clip": "norm"}) == ["train.lr"]
    assert tuning.at_edge(tuned, {"train.lr": 3e-3, "train.clip": "none"}) == []  # clip rules have no order
    assert tuning.edge_note("train.lr") == "best lr at the edge: widen the range"


@pytest.mark.parametrize("tune, problem", [
    ("{train.lr: [0.01], seeds: [1, 100], metric: final_loss}",
     ":8: tune.seeds: 1 also in seeds (CFG:5: seeds); the selection seeds must be others"),
    ("{model.cell: [lstm], seeds: [100]}",
     ":8: tune.model.cell: the grid sets model.cell too (CFG:7: grid.model.cell)"),
    ("{train.lr: [0.01], seeds: [100], metric: loss}",
     ":8: tune.metric: unknown metric 'loss'; valid: final_loss, solved_rate, steps_to_solve"),
    ("{train.lrr: [0.01], seeds: [100]}", ":8: tune.train.lrr: cannot tune unknown key 'train.lrr' (did you mean"),
    ("{train.lr: [0.01, -1], seeds: [100]}", ":8: tune.train.lr[1]: must be positive, got -1"),
])
def test_validate_rejects_a_bad_tune_section_in_one_located_line(tmp_path, tune, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.split("tune:")[0].replace("STEPS", "20") + f"tune: {tune}\n")  # tune: at line 8
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}{problem.replace('CFG', str(path))}"), \
        result.output


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny tuned sweep, trained once (serially, in this process): 4 selection runs, 4 reported."""
    tmp = tmp_path_factory.mktemp("tuned")
    path = write_config(tmp)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp / "out"), "-q", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    return path, tmp / "out" / "tuned", result.output


def test_selection_seeds_never_appear_among_the_reported_runs(study):
    _, folder, _ = study
    reported = results.find_runs(folder)
    assert sorted(results.read_json(d / "config.json")["seed"] for d in reported) == [0, 0, 1, 1]
    frame = load_frame([folder])
    assert sorted(frame["seed"]) == [0, 0, 1, 1] and set(frame["run_dir"]) == {str(d) for d in reported}
    selection = results.find_runs(folder / vocabulary.SELECTION_DIR)  # shown when asked for by name
    assert len(selection) == 4 and {results.read_json(d / "config.json")["seed"] for d in selection} == {100}
    recorded = results.read_json(folder / "experiment.json")["sweeps"][-1]["runs"]
    assert sorted(recorded) == sorted(results.run_hash(d.name) for d in reported)


def test_an_arms_reported_runs_use_its_chosen_values(study):
    _, folder, _ = study
    doc = results.read_selection(folder)
    for arm in doc["arms"]:
        # the choice, recomputed from the selection runs on disk: the lowest final loss over baseline
        losses = {}
        for d in results.find_runs(folder / vocabulary.SELECTION_DIR):
            cfg, s = results.read_json(d / "config.json"), results.read_json(d / "summary.json")
            if cfg["model"]["cell"] == arm["arm"]["model.cell"]:
                losses[cfg["train"]["lr"]] = s["final_loss"] / s["baseline_loss"]
        assert arm["chosen"] == {"train.lr": min(losses, key=losses.get)}
        runs = [d for d in results.find_runs(folder)
                if results.read_json(d / "config.json")["model"]["cell"] == arm["arm"]["model.cell"]]
        assert len(runs) == 2
        assert {results.read_json(d / "config.json")["train"]["lr"] for d in runs} == {arm["chosen"]["train.lr"]}


def test_compare_shows_each_arms_choice_and_flags_the_edge(study):
    _, folder, run_output = study
    result = runner.invoke(app, ["compare", str(folder)])
    assert result.exit_code == 0
    assert "each arm at its own best values" in result.output and "cell=gru" in result.output
    assert "best lr at the edge: widen the range" in result.output  # two values: any choice is an edge
    assert "best lr at the edge" in run_output
    md = runner.invoke(app, ["compare", str(folder), "--format", "markdown"]).output
    assert "| arm | chosen | selection curve | notes |" in md
    result = runner.invoke(app, ["compare", str(folder), "--format", "json"])
    assert sorted(r["runs"] for r in json.loads(result.stdout)) == [2, 2]  # stdout stays the table
    assert "best lr at the edge: widen the range" in result.stderr


def test_every_format_of_compare_names_each_arms_chosen_values(study):
    """Both arms may choose the same lr, so the column does not vary: it is there all the same."""
    _, folder, _ = study
    chosen = {arm["arm"]["model.cell"]: arm["chosen"]["train.lr"] for arm in results.read_selection(folder)["arms"]}
    rows = json.loads(runner.invoke(app, ["compare", str(folder), "--format", "json"]).stdout)
    assert {row["cell"]: row["lr"] for row in rows} == chosen
    csv_lines = runner.invoke(app, ["compare", str(folder), "--format", "csv"]).stdout.splitlines()
    header = csv_lines[0].split(",")
    assert {line.split(",")[header.index("cell")]: float(line.split(",")[header.index("lr")])
            for line in csv_lines[1:]} == chosen
    header, _, *lines = runner.invoke(app, ["compare", str(folder), "--format", "markdown"]).stdout.splitlines()
    cells = [[c.strip() for c in line.split("|")] for line in [header, *lines[:2]]]
    assert {row[cells[0].index("cell")]: float(row[cells[0].index("lr")]) for row in cells[1:]} == chosen
    by = json.loads(runner.invoke(app, ["compare", str(folder), "--format", "json", "--by", "cell"]).stdout)
    assert all("lr" not in row for row in by)  # an explicit --by is the user's own grouping


def test_plot_draws_the_selection_curve_and_never_a_selection_run(study, tmp_path):
    _, folder, _ = study
    result = runner.invoke(app, ["plot", str(folder), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = result.stdout.split()
    assert str(tmp_path / vocabulary.CURVE_PLOT) in written
    assert not [w for w in written if "seed=100" in w]


def test_widening_the_range_reuses_the_selection_runs_done(study):
    path, folder, _ = study
    result = runner.invoke(app, ["run", str(path), "--out", str(folder.parent), "--dry-run",
                                 "--set", "tune.train.lr=[1.0e-3, 1.0e-2, 3.0e-2]"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    done = {line.split()[1] for line in lines if line.startswith("done")}
    assert {str(d) for d in results.find_runs(folder / vocabulary.SELECTION_DIR)} <= done
    assert sum(line.startswith("run ") and "/selection/" in line for line in lines) == 2  # lr 3e-2 only
    assert "2 arms x 3 combinations x 1 selection seeds = 6 selection runs, then 2 arms x 2 seeds = " \
           "4 reported runs; 10 runs" in result.output


def test_a_failed_selection_runs_stored_error_of_many_lines_prints_as_one(study, tmp_path):
    """A selection run written failed by another process or an older gradlab, its error torch's C++
    message with its backtrace (many lines): the shard that reads it prints one ``failed:`` line."""
    import shutil

    path, folder, _ = study
    copy = tmp_path / "out"
    shutil.copytree(folder.parent, copy)
    # --shard 1/2 trains every other selection run from the first: gru lr=0.01 (the 4th) is shard 2's
    [run] = (copy / "tuned" / vocabulary.SELECTION_DIR).glob("cell=gru_lr=0.01_seed=100_*")
    error = "RuntimeError: the first line\nException raised from f at x.cpp:1\nframe #0: c10::Error"
    results.write_json(run / "summary.json", {"status": "failed", "error": error})
    (run / "error.txt").write_text(error)
    result = runner.invoke(app, ["run", str(path), "--out", str(copy), "-q", "--jobs", "1", "--shard", "1/2"])
    assert result.exit_code == 1, result.output
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: selection run {run.name} (cell=gru, lr=0.01): RuntimeError: the first line "
                      f"(traceback in {run / 'error.txt'})"], result.stderr
    assert "frame #0" not in result.stderr and "Exception raised" not in result.stderr


# ---------------------------------------------------------------------------
# kill -9 in either phase, then the same command again: the results of an uninterrupted sweep.

def snapshot(root: Path) -> dict:
    found = {}
    for d in results.find_runs(root):
        summary = results.read_json(d / "summary.json")
        found[d.name] = ((d / "metrics.csv").read_bytes(),
                         {k: v for k, v in summary.items() if k not in ("wall_seconds", "steps_per_second")})
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned_reference")
    result = runner.invoke(app, ["run", str(write_config(tmp, steps=60)), "--out", str(tmp / "out"), "-q",
                                 "--jobs", "1"])
    assert result.exit_code == 0, result.output
    folder = tmp / "out" / "tuned"
    return snapshot(folder), snapshot(folder / vocabulary.SELECTION_DIR), results.read_selection(folder)


def finished(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/summary.json")) if folder.is_dir() else 0


# With --jobs 1 the runs go in the plan's order, the vanilla arm's before the gru arm's: holding the gru
# arm's runs of a phase at the gate (tests/gate) stops the sweep with the vanilla arm's two runs of that
# phase saved, whatever the machine's speed. The lr of the reported runs is each arm's choice: both held.
HOLD = {"selection": "cell=gru_lr=0.001_seed=100_,cell=gru_lr=0.01_seed=100_",
        "reported": "cell=gru_lr=0.001_seed=0_,cell=gru_lr=0.01_seed=0_"}


@pytest.mark.parametrize("phase", ["selection", "reported"])
def test_kill_9_in_either_phase_resumes_to_the_uninterrupted_results(tmp_path, reference, phase):
    from test_faults import Gate, start, wait_for

    path, out = write_config(tmp_path, steps=60), tmp_path / "out"
    folder = out / "tuned"
    with Gate(tmp_path / "gate") as gate:
        proc = start(path, out, "--jobs", "1", env={**gate.env, "GRADLAB_TEST_GATE_HOLD": HOLD[phase]})
        try:
            wait_for(lambda: gate.held() or proc.poll() is not None)
            assert proc.poll() is None, proc.communicate()[1].decode()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and any worker: the sweep's session
            proc.communicate()
    [held] = gate.held()
    assert any(part in held for part in HOLD[phase].split(","))
    if phase == "selection":  # the vanilla arm's selection runs saved, none pooled
        assert finished(folder / vocabulary.SELECTION_DIR) == 2 and not results.find_runs(folder)
        assert runner.invoke(app, ["compare", str(folder)]).exit_code == 2  # "no finished runs", not selection runs
    else:
        assert finished(folder / vocabulary.SELECTION_DIR) == 4 and finished(folder) == 2
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "-q", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    reported, selection, doc = reference
    assert snapshot(folder) == reported and snapshot(folder / vocabulary.SELECTION_DIR) == selection
    assert [a["chosen"] for a in results.read_selection(folder)["arms"]] == [a["chosen"] for a in doc["arms"]]


def test_readers_hide_selection_runs_and_unchosen_candidates_only(tmp_path):
    folder = tmp_path / "tuned"
    dirs = [folder / f"lr={lr}_seed=0_{h}" for lr, h in (("0.001", "aaaaaaaa"), ("0.01", "bbbbbbbb"))]
    other = folder / "lr=0.1_seed=0_cccccccc"  # another sweep into the folder: no candidate
    selection = folder / vocabulary.SELECTION_DIR / "lr=0.001_seed=100_dddddddd"
    for d in [*dirs, other, selection]:
        d.mkdir(parents=True)
    results.write_json(folder / vocabulary.SELECTION_DIR / vocabulary.SELECTION_MARKER, {})
    everything = [*dirs, other, selection]
    assert results.shown(everything, tmp_path) == [*dirs, other]  # before the choice: only selection hidden
    arm = {"label": "all runs", "candidates": [d.name for d in dirs], "reported": [dirs[1].name]}
    results.write_json(folder / vocabulary.SELECTION_FILE, {"tuned": {"train.lr": [0.001, 0.01]}, "arms": [arm],
                                                            "selection_seeds": [100], "metric": "final_loss"})
    assert results.shown(everything, tmp_path) == [dirs[1], other]
    assert results.shown([selection], folder / vocabulary.SELECTION_DIR) == [selection]  # asked for by name


def test_the_record_on_disk_keeps_a_diverged_combination_infinitely_bad_and_is_not_rewritten(tmp_path):
    plan = stub_plan(tmp_path)
    arms = tuning.choose(plan, stub_summaries(plan, lambda c, lr, s: ok(loss=math.inf if lr == 1e-2 else lr)))
    tuning.record(tmp_path, "tuned", plan, arms)
    path = tmp_path / "tuned" / vocabulary.SELECTION_FILE
    doc = results.read_selection(path.parent)
    assert [p["mean"] for p in doc["arms"][0]["curve"]] == [1e-3, 3e-3, None]  # JSON has no infinity
    assert tuning.choice_rows(doc)[0]["curve"] == "0.001: 0.001 · 0.003: 0.003 · 0.01: inf"
    assert tuning.choice_rows(doc)[0]["notes"] == "best lr at the edge: widen the range"
    assert tuning.curve_figure(doc).axes[0].get_title() == "2 failed or diverged selection runs not drawn"
    path.chmod(0o444)
    before = path.stat().st_mtime_ns
    tuning.record(tmp_path, "tuned", plan, arms)  # the same choice again: nothing written
    assert path.stat().st_mtime_ns == before
