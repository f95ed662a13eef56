"""Fault injection on a tuned experiment (``tune:``, gradlab.tuning): signals to the driver in either
phase, killed workers and fork servers during the selection, selection runs that fail, a read-only
finished archive, damaged or missing selection records, and a ``tune:`` section too large to expand.

As in ``tests/test_faults.py`` (whose helpers these tests use), every fault is provoked for real and the
test waits for events, never for time: the runs of a phase are held at a gate (``tests/gate``) before
they train, so a signal lands in the phase it is meant for on a machine of any speed. After each, the
same command again ends with the results of an uninterrupted tuned sweep, byte for byte, and the same
choice per arm. GRADLAB_FAULT_TRIALS=n repeats each signal trial n times, and GRADLAB_FAULT_LOG=FILE
appends one JSON line per trial (signal, phase, exit code, seconds to exit, runs saved), as
``tests/test_faults.py`` does: the README's figures count both.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from test_faults import (
    TRIALS,
    Gate,
    assert_same,
    assert_whole,
    children,
    fork_servers,
    left_behind,
    read_only,
    snapshot,
    start,
    wait_for,
)
from test_tuning import CONFIG
from typer.testing import CliRunner

from gradlab import grid, results
from gradlab.cli import app
from gradlab.vocabulary import SELECTION_DIR, SELECTION_FILE, SELECTION_MARKER

runner = CliRunner()
# test_tuning's tuned sweep at 20 steps: two arms, two lrs, one selection seed (tune: at line 8)
TUNED = CONFIG.replace("STEPS", "20").replace("  metric: final_loss\n", "")
SELECTION_RUNS, REPORTED_RUNS = 4, 4
HOLD = {"selection": "_seed=100_", "reported": "_seed=0_,_seed=1_"}  # the run ids of each phase, for the gate


def config(tmp_path: Path, text: str = TUNED) -> Path:
    path = tmp_path / "tuned.yaml"
    path.write_text(text)
    return path


def state(out: Path) -> tuple[dict, dict, list]:
    """(reported runs, selection runs, each arm's choice) of the tuned experiment under ``out``."""
    folder = out / "tuned"
    doc = results.read_selection(folder) or {}
    return snapshot(folder), snapshot(folder / SELECTION_DIR), [a["chosen"] for a in doc.get("arms", [])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tuned sweep, trained in this process."""
    tmp = tmp_path_factory.mktemp("tuned_reference")
    result = runner.invoke(app, ["run", str(config(tmp)), "--out", str(tmp / "out"), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    return state(tmp / "out")


def held_in(gate: Gate, phase: str) -> list[str]:
    return [h for h in gate.held() if any(part in h for part in HOLD[phase].split(","))]


def assert_resumes_to(path: Path, out: Path, reference) -> None:
    """The same command again completes the study: every run and choice as in an uninterrupted sweep."""
    again = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"])
    assert again.exit_code == 0, again.output
    assert_whole(out)
    reported, selection, chosen = state(out)
    assert_same(reported, reference[0])
    assert_same(selection, reference[1])
    assert chosen == reference[2]


# ---------------------------------------------------------------------------
# Signals to the driver in either phase.

SIGNALS = [("SIGINT", 130), ("SIGTERM", 143), ("SIGKILL", -9)]


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("phase", ["selection", "reported"])
@pytest.mark.parametrize("sig,code", SIGNALS)
def test_a_signal_in_either_phase_keeps_what_was_saved_and_the_same_command_finishes(tmp_path, reference, sig, code,
                                                                                       phase, trial):
    path, out = config(tmp_path), tmp_path / "out"
    folder = out / "tuned"
    with Gate(tmp_path / "gate") as gate:  # only this phase's runs are held: the other goes through
        proc = start(path, out, "--jobs", "2", env={**gate.env, "GRADLAB_TEST_GATE_HOLD": HOLD[phase]})
        wait_for(lambda: len(held_in(gate, phase)) >= 2 or proc.poll() is not None)  # both workers in the phase
        assert proc.poll() is None, proc.communicate()[1].decode()
        signalled = time.monotonic()
        os.kill(proc.pid, getattr(signal, sig))
        _, stderr = proc.communicate(timeout=120)
        seconds = time.monotonic() - signalled  # logged for the README's figures, never asserted
        assert left_behind(proc.pid) == []  # the held workers were ended, not waited for
    stderr = stderr.decode()
    assert proc.returncode == code and "Traceback" not in stderr, stderr
    if sig != "SIGKILL":
        [line] = stderr.splitlines()
        assert line.startswith(f"error: interrupted by {sig}: 0 runs saved, 2 runs in flight not saved"), line
    assert_whole(out, killed=proc.pid if sig == "SIGKILL" else None)
    saved_selection, saved_reported = len(results.find_runs(folder / SELECTION_DIR)), len(results.find_runs(folder))
    if phase == "selection":  # nothing reported, and the selection runs never pooled into a reader
        assert saved_selection == 0 and saved_reported == 0 and (folder / SELECTION_DIR / SELECTION_MARKER).is_file()
        assert runner.invoke(app, ["compare", str(out)]).exit_code == 2
    else:  # the selection is whole and recorded; no reported run finished
        assert saved_selection == SELECTION_RUNS and saved_reported == 0
        assert [a["chosen"] for a in results.read_selection(folder)["arms"]] == reference[2]
    if os.environ.get("GRADLAB_FAULT_LOG"):
        with open(os.environ["GRADLAB_FAULT_LOG"], "a") as log:
            log.write(json.dumps({"signal": sig, "to": "driver", "jobs": 2, "phase": f"tune {phase}",
                                  "exit": proc.returncode, "seconds": round(seconds, 2),
                                  "saved": saved_selection + saved_reported}) + "\n")
    assert_resumes_to(path, out, reference)


# ---------------------------------------------------------------------------
# A selection run that fails: no choice from a crash, exit 1, and the same command finishes.

@pytest.mark.parametrize("target", ["worker", "fork server"])
def test_a_killed_selection_worker_leaves_its_arm_without_a_choice_and_exits_1(tmp_path, reference, target):
    path, out = config(tmp_path), tmp_path / "out"
    folder = out / "tuned"
    with Gate(tmp_path / "gate") as gate:
        proc = start(path, out, "--jobs", "2", env={**gate.env, "GRADLAB_TEST_GATE_HOLD": HOLD["selection"]})
        wait_for(lambda: len(held_in(gate, "selection")) >= 2 or proc.poll() is not None)
        held = {pid: run_id for run_id, pid in (h.rsplit(".", 1) for h in held_in(gate, "selection"))}
        servers = fork_servers(proc.pid)
        if not servers:
            gate.release()
            proc.communicate(timeout=300)
            pytest.skip("the workers are spawned here, not forked from a server")
        if target == "worker":  # one worker: its held run fails
            pid = next(p for p, _ in children(servers[0]) if str(p) in held)
            os.kill(pid, signal.SIGKILL)
            killed = {held[str(pid)]}
        else:  # the server: its workers end with it, both held runs fail
            os.kill(servers[0], signal.SIGKILL)
            killed = set(held.values())
    _, stderr = proc.communicate(timeout=300)
    stderr = stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    failed = [line for line in stderr.splitlines() if line.startswith("failed: selection run ")]
    assert {line.split()[3] for line in failed} == killed and all("a worker process died" in line for line in failed)
    labels = {f"cell={run_id.split('_')[0].split('=')[1]}" for run_id in killed}
    assert stderr.splitlines()[-1].startswith(f"{len(killed)} selection run{'s' * (len(killed) > 1)} failed: "
                                              f"{len(labels)} of 2 arms ("), stderr
    doc = results.read_selection(folder)
    for arm in doc["arms"]:  # the arms of the killed runs have no choice, and none of their runs was reported
        broken = arm["label"] in labels
        assert (arm["chosen"] is None) == broken and bool(arm["failed"]) == broken
        cells = [results.read_json(d / "config.json")["model"]["cell"] for d in results.find_runs(folder)]
        assert (arm["arm"]["model.cell"] in cells) == (not broken)
    assert left_behind(proc.pid) == []
    assert_resumes_to(path, out, reference)


def test_a_failing_selection_run_is_named_and_trains_no_reported_run_on_the_crash(tmp_path, reference, monkeypatch):
    """A run that raises (here: the gru's lr 1e-2 on selection seed 100, injected in-process) is no
    candidate that lost: its arm waits, the sweep exits 1 and says so, and compare notes it."""
    import gradlab.training

    train = gradlab.training.train

    def failing(cfg, **kw):
        if cfg["model"]["cell"] == "gru" and cfg["train"]["lr"] == 1.0e-2 and cfg["seed"] == 100:
            raise RuntimeError("injected")
        return train(cfg, **kw)

    monkeypatch.setattr(gradlab.training, "train", failing)
    path, out = config(tmp_path), tmp_path / "out"
    folder = out / "tuned"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q", "--format", "json"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    [failed] = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert failed.startswith("failed: selection run cell=gru_lr=0.01_seed=100_") and \
        "(cell=gru, lr=0.01): RuntimeError: injected (traceback in " in failed, failed
    assert result.stderr.splitlines()[-1] == (
        "1 selection run failed: 1 of 2 arms (cell=gru) have no choice and none of their reported runs was "
        "trained; the same command again retrains the failed runs")
    assert [row["cell"] for row in json.loads(result.stdout)] == ["vanilla"]
    assert {results.read_json(d / "config.json")["model"]["cell"] for d in results.find_runs(folder)} == {"vanilla"}
    notes = runner.invoke(app, ["compare", str(folder)]).output
    assert "no choice: 1 selection run failed (at lr=0.01); the same command again retrains it" in notes
    monkeypatch.setattr(gradlab.training, "train", train)
    assert_resumes_to(path, out, reference)


# ---------------------------------------------------------------------------
# Reading a tuned archive: read-only media, a lost marker, a damaged record.

def test_a_read_only_finished_tuned_archive_runs_nothing_and_exits_0(tmp_path, reference):
    path, out = config(tmp_path), tmp_path / "out"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q"]).exit_code == 0
    with read_only(out):
        with pytest.raises(OSError):
            (out / "probe").write_text("x")
        result = runner.invoke(app, ["run", str(path), "--out", str(out), "-j", "1", "-q", "--format", "json"])
        compare = runner.invoke(app, ["compare", str(out / "tuned"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"0 to run, {REPORTED_RUNS} already done"), result.stderr
    assert json.loads(result.stdout) == json.loads(compare.stdout)
    assert_same(state(out)[0], reference[0])


@pytest.fixture(scope="module")
def archive(tmp_path_factory, reference):
    """A finished tuned study, trained once; each test damages its own copy."""
    tmp = tmp_path_factory.mktemp("tuned_archive")
    assert runner.invoke(app, ["run", str(config(tmp)), "--out", str(tmp / "out"), "-j", "1", "-q"]).exit_code == 0
    return tmp / "out" / "tuned"


def copy_of(archive: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(archive, tmp_path / "tuned"))


def rows(folder: Path) -> tuple[list[dict], str]:
    result = runner.invoke(app, ["compare", str(folder), "--format", "json"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return json.loads(result.stdout), result.stderr


def test_selection_runs_stay_out_of_the_table_when_their_marker_is_lost(tmp_path, archive):
    folder = copy_of(archive, tmp_path)
    before, _ = rows(folder)
    (folder / SELECTION_DIR / SELECTION_MARKER).unlink()
    after, _ = rows(folder)
    assert after == before and sum(r["runs"] for r in after) == REPORTED_RUNS
    assert len(results.find_runs(folder / SELECTION_DIR)) == SELECTION_RUNS  # shown when asked for by name
    (folder / SELECTION_FILE).unlink()  # the experiment folder still says what the subfolder is
    def groups(table):  # without the record, no lr column names the choice: the same runs all the same
        return [(r["cell"], r["runs"], r["final_loss_mean"]) for r in table]
    assert groups(rows(folder)[0]) == groups(before)
    assert groups(rows(tmp_path)[0]) == groups(before)  # searched from above


@pytest.mark.parametrize("damage, reason", [
    (lambda text: text[: len(text) // 2], "truncated or corrupt JSON"),
    (lambda text: json.dumps([1, 2]), "not a JSON object"),
    (lambda text: json.dumps({**json.loads(text), "arms": {"a": 1}}), "arms: expected a JSON array"),
    (lambda text: json.dumps({**json.loads(text), "arms": [{"label": "x", "curve": [{"values": 3}]}]}),
     "arms[0].curve: expected points of values, runs and a mean"),
])
def test_a_damaged_selection_record_is_named_and_no_reader_crashes(tmp_path, archive, damage, reason):
    folder = copy_of(archive, tmp_path)
    path = folder / SELECTION_FILE
    path.write_text(damage(path.read_text()))
    table, stderr = rows(folder)
    assert sum(r["runs"] for r in table) == REPORTED_RUNS  # no selection run among them
    assert stderr.startswith(f"skipped: {path}: {reason}"), stderr
    assert "each arm's choice is unknown" in stderr
    for command in (["plot", str(folder), "-o", str(tmp_path / "plots")],
                    ["report", str(folder), "-o", str(tmp_path / "r.html")],
                    ["report", str(folder), "--format", "markdown", "-o", str(tmp_path / "r.md")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0 and "Traceback" not in result.output, (command, result.output)
    again = runner.invoke(app, ["run", str(config(tmp_path)), "--out", str(tmp_path), "-j", "1", "-q"])
    assert again.exit_code == 0, again.output  # the same command writes the record again
    assert results.selection_damage(folder) is None and rows(folder)[1].count("skipped") == 0


# ---------------------------------------------------------------------------
# A tune: section too large to expand.

def huge(lrs: int, hidden: int, seeds: int) -> str:
    """TUNED with ``lrs`` x ``hidden`` combinations tuned on ``seeds`` selection seeds (tune: at line 8)."""
    return TUNED.split("tune:")[0] + (
        f"tune:\n  train.lr: [{', '.join(f'{1e-4 * (i + 1):.4g}' for i in range(lrs))}]\n"
        f"  model.hidden: [{', '.join(str(i + 1) for i in range(hidden))}]\n"
        f"  seeds: [{', '.join(str(100 + i) for i in range(seeds))}]\n")


@pytest.mark.parametrize("size, problem", [
    # 100 lr x 100 hidden x 200 selection seeds: 4,000,000 selection runs; expanded, this hangs and exhausts memory
    ((100, 100, 200), ":8: tune: 4,000,004 runs (2 arms x 10,000 combinations (100 train.lr x 100 model.hidden) x "
                      "200 selection seeds = 4,000,000 selection runs, then 2 arms x 2 seeds = 4 reported runs), "
                      "more than the 10,000 a config may expand to"),
    # few runs to train, but validation would check each arm at each combination at each seed
    ((100, 30, 1), ":8: tune: 12,000 candidate runs (2 arms x 3,000 combinations (100 train.lr x 30 model.hidden) x "
                   "2 seeds, each of which an arm may choose), more than the 10,000 a config may expand to"),
])
def test_a_tune_section_past_the_run_bound_is_refused_before_it_is_expanded(tmp_path, size, problem):
    path = config(tmp_path, huge(*size))
    assert len(path.read_bytes()) < 4096
    for command in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {path}{problem}"), line
    assert not (tmp_path / "out").exists()


def test_the_selection_runs_count_against_the_bound(tmp_path, monkeypatch):
    """At a bound of 10 runs: 2 arms x 2 lr x 1 selection seed + 2 arms x 2 seeds = 8 pass; a second
    selection seed makes 12 (the grid and seeds alone, 2 x 2 x 2 = 8 candidates, stay under it)."""
    monkeypatch.setattr(grid, "MAX_RUNS", 10)
    assert runner.invoke(app, ["validate", str(config(tmp_path))]).exit_code == 0
    result = runner.invoke(app, ["validate", str(config(tmp_path)), "--set", "tune.seeds=[100, 101]"])
    assert result.exit_code == 2
    assert "tune: 12 runs (2 arms x 2 combinations (2 train.lr) x 2 selection seeds = 8 selection runs, then " \
           "2 arms x 2 seeds = 4 reported runs), more than the 10 a config may expand to" in result.stderr


def test_each_tune_value_meets_the_checks_of_its_grid_key(tmp_path):
    """tune: {model.hidden: [8, 99999999999999999999999]} validated and then failed a selection run."""
    text = TUNED.replace("train.lr: [1.0e-3, 1.0e-2]", "model.hidden: [8, 99999999999999999999999]")
    tuned = runner.invoke(app, ["validate", str(config(tmp_path, text))])
    as_grid = text.replace("tune:\n  model.hidden", "  model.hidden").replace("\n  seeds: [100]", "")
    gridded = runner.invoke(app, ["validate", str(config(tmp_path, as_grid))])
    assert tuned.exit_code == gridded.exit_code == 2
    [tune_line], [grid_line] = tuned.stderr.splitlines(), gridded.stderr.splitlines()
    assert ": tune.model.hidden[1]: " in tune_line and ": grid.model.hidden[1]: " in grid_line
    assert tune_line.split("hidden[1]: ")[1] == grid_line.split("hidden[1]: ")[1]
