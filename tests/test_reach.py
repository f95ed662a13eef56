"""The data's own reach (issue 23 point 5): ``task.window`` hides the old inputs, ``gradlab.reach`` reads
a window grid into the data's dependency horizon, ``compare --reach`` shows it.

The hiding is checked against batches built by hand here (the expected positions counted from the
readout in plain loops); the horizon against frames built by hand, with the seeds' interval from
``scipy.stats.t.interval``; the end to end claim (a real grid recovers the known lags) is a study.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from typer.testing import CliRunner

from gradlab import comparison, reach, results
from gradlab.cli import app
from gradlab.comparison import load_frame
from gradlab.config import ConfigError, load_experiment
from gradlab.task import Batch, Windowed, hide
from gradlab.tasks import TASKS, VARIANTS, resolve
from gradlab.vocabulary import CASES, HARD_TASK, HEALTHY, SHORT_DATA, WINDOW_HIDES

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _kept(readout: int, window: int, s: int) -> bool:
    """The convention, written out: step s is kept iff it is at most ``window`` steps before the readout
    (or after it)."""
    return readout - s <= window


# ---------------------------------------------------------------------------
# Validation and the grid.

@pytest.mark.parametrize("value, message", [(0, "must be at least 1, got 0"), ("x", "expected an integer, got 'x'"),
                                            (-3, "must be at least 1, got -3"),
                                            (2.5, "expected an integer, got 2.5")])
def test_a_bad_window_is_refused_located(tmp_path, value, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\ntask:\n  name: adding\n  window: {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert e.value.problems == [f"{path}:4: task.window: {message}"]


def test_every_bad_window_of_a_grid_is_reported_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: c\ntask: {name: adding, length: 10}\ngrid:\n  task.window: [1, 0, x, null, -2]\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert all(p.startswith(f"{path}:4: grid.task.window[") for p in problems), problems
    assert {p.split("]")[0].rsplit("[", 1)[1] for p in problems} == {"1", "2", "4"}


def test_a_window_grid_expands_and_names_the_full_sequence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: c\ntask: {name: adding, length: 10}\nseeds: [0, 1]\ngrid:\n  task.window: [1, 5, null]\n")
    runs = load_experiment(path).runs
    assert [r.config["task"]["window"] for r in runs] == [1, 1, 5, 5, None, None]
    assert [r.id.split("_seed")[0] for r in runs[::2]] == ["window=1", "window=5", "window=full"]
    assert len({r.id for r in runs}) == 6


def test_a_config_without_a_window_keeps_its_run_id(tmp_path):
    """window null is the default, left out of the identity: the ids of runs before task.window stay."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("name: c\ntask: {name: adding, length: 10}\n")
    b.write_text("name: c\ntask: {name: adding, length: 10, window: null}\n")
    assert load_experiment(a).runs[0].id == load_experiment(b).runs[0].id


# ---------------------------------------------------------------------------
# The hiding.

def test_hide_blanks_exactly_the_steps_before_each_sequences_window():
    """A hand-made batch whose two sequences read at different steps (5 and 3): window 2 keeps steps
    3..5 of the first and 1..5 of the second, the rest become the blank."""
    S, B, inputs = 6, 2, 2
    x = torch.arange(1, S * B * inputs + 1, dtype=torch.float32).view(S, B, inputs)  # no entry equals the blank
    score = torch.zeros(S, B, dtype=torch.bool)
    score[5, 0] = score[3, 1] = score[4, 1] = True  # the second reads at 3 first, then at 4
    batch = Batch(x, torch.zeros(S, B), score.clone(), score)
    blank = torch.tensor([-7.0, -9.0])
    out = hide(batch, 2, blank)
    for b, readout in ((0, 5), (1, 3)):
        for s in range(S):
            want = x[s, b] if _kept(readout, 2, s) else blank
            assert torch.equal(out.x[s, b], want), (s, b)
    assert [s for s in range(S) if torch.equal(out.x[s, 0], blank)] == [0, 1, 2]
    assert [s for s in range(S) if torch.equal(out.x[s, 1], blank)] == [0]
    assert out.y is batch.y and out.loss_mask is batch.loss_mask and out.score_mask is batch.score_mask


def test_a_sequence_that_reads_nothing_is_left_whole():
    x = torch.ones(4, 2, 1)
    score = torch.zeros(4, 2, dtype=torch.bool)
    score[3, 0] = True
    out = hide(Batch(x, torch.zeros(4, 2), score, score), 1, torch.zeros(1))
    assert out.x[:, 1].eq(1).all() and out.x[:2, 0].eq(0).all() and out.x[2:, 0].eq(1).all()


def _pair(task_cfg: dict, window: int, batch: int = 8, length: int | None = None, eval_set: bool = False):
    """(the task's own batch, the windowed task's), drawn from the same generator state."""
    plain, windowed = resolve(task_cfg), resolve({**task_cfg, "window": window})
    assert isinstance(windowed, Windowed) and windowed.window == window and not isinstance(plain, Windowed)
    length = length or task_cfg["length"]
    def draw(task):
        make = task.evaluation_set if eval_set else task.generate
        return make(batch, length, torch.Generator().manual_seed(3))
    return draw(plain), draw(windowed)


def _check_hidden(plain: Batch, hidden: Batch, window: int, blank: torch.Tensor, readout: int):
    S, B, _ = plain.x.shape
    for b in range(B):
        for s in range(S):
            want = plain.x[s, b] if _kept(readout, window, s) else blank
            assert torch.equal(hidden.x[s, b], want), (s, b)
    assert torch.equal(plain.y, hidden.y) and torch.equal(plain.score_mask, hidden.score_mask)


def test_adding_hides_value_and_marker_to_zero():
    plain, hidden = _pair({"name": "adding", "length": 12}, 4)
    _check_hidden(plain, hidden, 4, torch.tensor([0.0, 0.0]), readout=11)
    assert hidden.x[:7].eq(0).all() and not plain.x[:7, :, 0].eq(0).all()


def test_copy_hides_to_its_blank_symbol_from_the_first_recall_step():
    """Copy (T = 5, S = 25) is judged from step T + 10 = 15 on (its loss counts every step): window 6 keeps
    steps 9.. and shows the blank symbol 0, one-hot, before."""
    plain, hidden = _pair({"name": "copy", "length": 5}, 6)
    _check_hidden(plain, hidden, 6, F.one_hot(torch.tensor(0), 10).float(), readout=15)
    assert hidden.x[:9].argmax(dim=-1).eq(0).all() and hidden.x[:9].sum(dim=-1).eq(1).all()


def test_memorization_hides_to_its_own_blank_symbol():
    plain, hidden = _pair({"name": "memorization", "length": 4}, 3)
    _check_hidden(plain, hidden, 3, F.one_hot(torch.tensor(5), 7).float(), readout=14)


def test_temporal_order_and_permutation_hide_to_a_zero_vector():
    plain, hidden = _pair({"name": "temporal_order", "length": 20}, 10)
    _check_hidden(plain, hidden, 10, torch.zeros(6), readout=19)
    plain, hidden = _pair({"name": "permutation", "length": 6}, 2)
    _check_hidden(plain, hidden, 2, torch.zeros(100), readout=5)


@pytest.mark.parametrize("variant, steps", [(None, 64), ("rows", 8)])
def test_digits_hide_to_zero_pixels_in_training_and_evaluation(variant, steps):
    cfg = {"name": "digits", "variant": variant, "length": steps}
    for eval_set in (False, True):
        plain, hidden = _pair(cfg, 3, eval_set=eval_set)
        _check_hidden(plain, hidden, 3, torch.zeros(resolve(cfg).input_size), readout=steps - 1)
        assert plain.x[:steps - 4].ne(0).any()  # there was ink to hide


def test_a_window_as_long_as_the_lag_hides_nothing_the_target_reads():
    """Window = lag keeps the earliest dependency input; one step less hides it where it sits earliest."""
    for cfg in ({"name": "adding", "length": 10}, {"name": "temporal_order", "length": 10},
                {"name": "adding", "variant": "near", "length": 10}):
        task, L = resolve(cfg), cfg["length"]
        plain, kept = _pair(cfg, task.lag(L), batch=256)
        assert task.memory_target(kept, L) is not None
        assert torch.equal(task.memory_target(kept, L)[0], task.memory_target(plain, L)[0])
        _, short = _pair(cfg, task.lag(L) - 1, batch=256)
        assert task.memory_target(short, L) is None  # some sequence lost its first dependency input


def test_the_memory_target_is_none_once_the_dependency_is_hidden():
    for cfg, window in (({"name": "adding", "length": 10}, 3), ({"name": "temporal_order", "length": 10}, 2),
                        ({"name": "copy", "length": 5}, 4), ({"name": "permutation", "length": 6}, 2),
                        ({"name": "memorization", "length": 4}, 3),
                        ({"name": "adding", "variant": "hochreiter", "length": 20}, 5)):
        task = resolve({**cfg, "window": window})
        batch = task.generate(16, cfg["length"], torch.Generator().manual_seed(0))
        assert task.memory_target(batch, cfg["length"]) is None, cfg


def test_the_windowed_task_is_the_task_in_every_other_fact():
    plain, windowed = resolve({"name": "adding", "length": 10}), resolve({"name": "adding", "window": 3})
    assert windowed.task is plain
    for fact in ("name", "label", "kind", "input_size", "output_size", "min_length", "variant"):
        assert getattr(windowed, fact) == getattr(plain, fact)
    assert windowed.lag(10) == plain.lag(10) and windowed.baseline(10) == plain.baseline(10)


def test_adding_near_keeps_its_marks_in_the_last_four_steps():
    task = VARIANTS["adding"]["near"]
    for T in (4, 10, 37):
        batch = task.generate(512, T, torch.Generator().manual_seed(T))
        marks = batch.x[..., 1].nonzero()  # (2B, 2): step, sequence
        steps = marks[:, 0].view(-1)
        assert steps.min() >= T - 4 and (batch.x[..., 1].sum(dim=0) == 2).all()
        first = batch.x[..., 1].int().argmax(dim=0)
        assert set(first.tolist()) == {T - 4, T - 3}  # uniform over the first half of the last four
        values = batch.x[first, torch.arange(512), 0]
        second = (T - 1) - batch.x[..., 1].flip(0).int().argmax(dim=0)
        assert set(second.tolist()) == {T - 2, T - 1}
        assert torch.allclose(batch.y[-1], values + batch.x[second, torch.arange(512), 0])
        assert task.lag(T) == 3 and T - 1 - first.min().item() == task.lag(T)
    assert task.baseline(10) == TASKS["adding"].baseline(10)


# ---------------------------------------------------------------------------
# The horizon, from hand-made frames.

BASELINE = 1 / 6


def _frame(losses: dict, task: str = "adding", baseline: float = BASELINE, **columns) -> pd.DataFrame:
    """{window (None = full): [final loss per seed]} -> a frame of runs as ``load_frame`` makes it."""
    rows = []
    for window, values in losses.items():
        for seed, loss in enumerate(values):
            rows.append({"task": task, "length": 10, "cell": "lstm", "clip": "none", "tbptt": None,
                         "window": window, "seed": seed, "status": "ok", "final_loss": loss,
                         "baseline_loss": baseline, **columns})
    return pd.DataFrame(rows)


def _scipy_top(values: list[float]) -> float:
    """The seeds' 95% interval's top, by scipy: the t interval of one more draw, scale s·√(1 + 1/n)."""
    n = len(values)
    mean, sd = sum(values) / n, pd.Series(values).std(ddof=1)
    return stats.t.interval(0.95, n - 1, loc=mean, scale=sd * math.sqrt(1 + 1 / n))[1]


def test_interval_is_the_t_prediction_interval():
    values = [0.011, 0.013, 0.010, 0.0125]
    low, high = reach.interval(values)
    n, mean, sd = 4, sum(values) / 4, pd.Series(values).std(ddof=1)
    assert (low, high) == pytest.approx(stats.t.interval(0.95, n - 1, loc=mean, scale=sd * math.sqrt(1 + 1 / n)))
    assert reach.interval([0.2]) is None


def test_the_horizon_is_the_smallest_window_whose_loss_is_within_the_full_interval():
    full = [0.010, 0.013, 0.011]
    top = _scipy_top(full)
    near_top = top - 1e-4  # within, but only just: the mean is read against the interval, not the mean
    assert near_top > max(full)
    frame = _frame({None: full, 1: [0.16, 0.17, 0.165], 4: [0.05, 0.06, 0.055],
                    8: [top + 2e-4, top + 3e-4, top + 4e-4], 9: [near_top] * 3, 12: [0.005, 0.004, 0.006]})
    [record] = reach.horizons(frame)
    assert record["task"] == "adding" and record["reference"] == "full" and record["full_seeds"] == 3
    assert record["full_loss"] == pytest.approx(sum(full) / 3)
    assert record["full_high"] == pytest.approx(top)
    assert [(r["window"], r["passes"]) for r in record["windows"]] == [(1, False), (4, False), (8, False),
                                                                       (9, True), (12, True)]
    assert record["data_horizon"] == 9
    assert "reaches 9 steps back" in record["note"] and "window 8 loses it" in record["note"]


def test_a_larger_window_failing_moves_the_horizon_above_it():
    """Not monotone: window 2 passes, window 5 does not; the horizon is where every larger window passes."""
    frame = _frame({None: [0.01, 0.012, 0.011], 2: [0.011] * 3, 5: [0.09] * 3, 7: [0.0105] * 3})
    [record] = reach.horizons(frame)
    assert record["data_horizon"] == 7 and "not monotone" in record["note"] and "2" in record["note"]


def test_no_window_passing_reports_no_horizon():
    [record] = reach.horizons(_frame({None: [0.01, 0.012, 0.011], 2: [0.1] * 3, 5: [0.05] * 3}))
    assert record["data_horizon"] is None and "further back than 5 steps" in record["note"]


def test_one_seed_has_no_interval():
    [record] = reach.horizons(_frame({None: [0.01], 2: [0.1], 5: [0.01]}))
    assert record["data_horizon"] is None and "needs >= 2 seeds" in record["note"]
    assert record["full_high"] is None and all(r["passes"] is None for r in record["windows"])


def test_a_model_that_does_not_beat_the_baseline_cannot_tell_the_reach():
    """Every window at the baseline too: without the guard the horizon would read 1, the model's, not the data's."""
    at_baseline = [BASELINE * 0.99, BASELINE * 1.01, BASELINE]
    [record] = reach.horizons(_frame({None: at_baseline, 1: at_baseline, 5: at_baseline}))
    assert all(r["passes"] for r in record["windows"])  # what the guard is for
    assert record["data_horizon"] is None and "does not beat the memoryless baseline" in record["note"]


def test_without_a_full_group_the_largest_window_stands_for_it():
    [record] = reach.horizons(_frame({2: [0.1, 0.11, 0.1], 5: [0.0101] * 3, 9: [0.01, 0.0102, 0.0099]}))
    assert record["reference"] == 9 and [r["window"] for r in record["windows"]] == [2, 5]
    assert record["data_horizon"] == 5 and "window 9 stands for it" in record["note"]


def _write_runs(root: Path, losses: dict) -> Path:
    """{window (None = full): [final loss per seed, None for a diverged one]} -> finished runs on disk, as
    gradlab writes them: a non-finite final loss is null in summary.json (JSON has no infinity)."""
    for window, values in losses.items():
        for seed, loss in enumerate(values):
            config = {"name": "rd", "task": {"name": "adding", "length": 10, "eval_size": 16, "variant": None,
                                             "window": window},
                      "model": {"cell": "lstm", "hidden": 4, "layers": 1},
                      "train": {"steps": 4, "batch_size": 4, "clip": {"kind": "none"}, "tbptt": None,
                                "eval_every": 4},
                      "device": "cpu", "dtype": "float32", "threads": 1, "seed": seed}
            summary = {"status": "ok", "final_loss": loss, "baseline_loss": BASELINE, "solved": False,
                       "diverged": loss is None, "steps_done": 4, "verdict": "healthy"}
            rows = [{"kind": "train", "step": s, "loss": 0.1} for s in (1, 4)] + \
                   [{"kind": "eval", "step": s} for s in (0, 4)]
            name = f"window={'full' if window is None else window}_seed={seed}_{seed:015d}{window or 0}"
            results.save_run(root / "rd" / name, config, {}, rows, summary)
    return root / "rd"


def test_a_diverged_full_seed_on_disk_gives_no_horizon(tmp_path):
    """Three seeds of the whole sequence, one diverged (null on disk): not two seeds and a horizon."""
    root = _write_runs(tmp_path, {None: [0.010, None, 0.011], 2: [0.1] * 3, 5: [0.0105] * 3})
    [record] = reach.horizons(load_frame([root]))
    assert record["full_seeds"] == 3 and record["full_high"] is None
    assert record["data_horizon"] is None and "not finite in 1 of its 3 seeds (diverged)" in record["note"]
    result = runner.invoke(app, ["compare", str(root), "--reach", "-f", "json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["data_horizon"] is None and row["full_loss"] is None and "diverged" in row["note"]


def test_a_window_with_a_diverged_seed_is_unknown_not_the_mean_of_the_rest(tmp_path):
    full = [0.010, 0.013, 0.011]
    root = _write_runs(tmp_path, {None: full, 2: [0.1] * 3, 3: [0.0105, None, 0.0106], 5: [0.0105] * 3})
    [record] = reach.horizons(load_frame([root]))
    three = next(r for r in record["windows"] if r["window"] == 3)
    assert three["seeds"] == 3 and three["diverged"] == 1 and three["passes"] is None
    assert math.isinf(three["loss"])  # not (0.0105 + 0.0106) / 2, which would pass
    # window 3 might have passed: 5 is the horizon at most, and the note says why
    assert record["data_horizon"] == 5
    assert "at most 5 steps back" in record["note"] and "window 3 unknown (1 of 3 seeds diverged)" in record["note"]


def test_each_set_of_window_groups_gets_its_own_horizon():
    """Two tasks in one frame: one record each, read apart; failed runs are left out of a window's mean."""
    a = _frame({None: [0.01, 0.012, 0.011], 3: [0.2] * 3, 9: [0.011] * 3}, task="adding")
    b = _frame({None: [0.3, 0.31, 0.29], 3: [0.3, 0.305, 0.3], 9: [0.3] * 3}, task="temporal_order", baseline=1.386)
    failed = _frame({3: [float("nan")]}, task="temporal_order", baseline=1.386).assign(status="failed")
    records = reach.horizons(pd.concat([a, b, failed], ignore_index=True))
    assert {r["task"]: r["data_horizon"] for r in records} == {"adding": 9, "temporal_order": 3}
    three = next(r for r in records if r["task"] == "temporal_order")["windows"][0]
    assert three["seeds"] == 3 and three["loss"] == pytest.approx((0.3 + 0.305 + 0.3) / 3)


@pytest.mark.parametrize("windows", [None, [None, None]])
def test_no_window_grid_is_an_error(windows):
    frame = _frame({None: [0.01, 0.02]})
    if windows is None:
        frame = frame.drop(columns="window")
    with pytest.raises(reach.NoWindowGrid, match="no task.window grid"):
        reach.horizons(frame)


def test_compare_by_window_without_a_window_grid_gives_no_reach():
    """``--by window`` over runs that all saw the whole sequence: the groups' data horizon is unknown (None),
    not a traceback."""
    result = runner.invoke(app, ["compare", str(ROOT / "results" / "tbptt_lag"), "--by", "window", "-f", "json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert groups and all(g["data_horizon"] is None and g["window"] is None for g in groups)
    table = runner.invoke(app, ["compare", str(ROOT / "results" / "tbptt_lag"), "--by", "window"])
    assert table.exit_code == 0 and "Traceback" not in table.output and "window=full:" in table.output


def test_old_results_read_as_the_full_sequence():
    """A committed study from before task.window: every run has window null, and it is no window grid."""
    frame = load_frame([ROOT / "results" / "tbptt_lag"])
    assert "window" in frame.columns and frame["window"].isna().all() and len(frame) > 0
    with pytest.raises(reach.NoWindowGrid):
        reach.horizons(frame)


def test_the_json_rows_carry_their_schema_and_no_infinity():
    records = reach.horizons(_frame({None: [0.01, 0.012, 0.011], 2: [math.inf, 0.1, 0.1], 5: [0.0101] * 3}))
    rows = json.loads(reach.render(records, "json"))
    assert rows[0]["schema"] == "gradlab.reach/1" and rows[0]["windows"][0]["loss"] is None
    assert rows[0]["data_horizon"] == 5
    csv_text = reach.render(records, "csv")
    assert csv_text.splitlines()[0].split(",")[-4:] == ["loss_w2", "loss_w5", "data_horizon", "note"]
    assert "| full |" in reach.render(records, "markdown")


# ---------------------------------------------------------------------------
# The command line.

TINY = """\
name: tiny-reach
task: {name: adding, variant: near, length: 6, eval_size: 16}
model: {cell: lstm, hidden: 4}
train: {steps: 3, batch_size: 4, eval_every: 3}
seeds: [0, 1]
grid:
  task.window: [1, null]
"""


@pytest.fixture(scope="module")
def tiny_reach(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reach")
    (tmp / "tiny.yaml").write_text(TINY)
    result = runner.invoke(app, ["run", str(tmp / "tiny.yaml"), "--out", str(tmp / "out"), "--quiet", "--jobs", "1",
                                 "-f", "csv"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


def test_compare_reach_prints_each_format(tiny_reach):
    table = runner.invoke(app, ["compare", str(tiny_reach), "--reach"])
    assert table.exit_code == 0, table.output
    assert "the data's reach" in table.output and "w=1" in table.output and "data_horizon:" in table.output
    rows = json.loads(runner.invoke(app, ["compare", str(tiny_reach), "--reach", "-f", "json"]).output)
    assert [r["schema"] for r in rows] == ["gradlab.reach/1"] and rows[0]["variant"] == "near"
    assert rows[0]["full_seeds"] == 2 and [w["window"] for w in rows[0]["windows"]] == [1]
    assert "data_horizon" in rows[0] and rows[0]["note"]
    csv_out = runner.invoke(app, ["compare", str(tiny_reach), "--reach", "-f", "csv"])
    assert csv_out.exit_code == 0 and "loss_w1" in csv_out.output.splitlines()[0]


def test_the_reach_view_says_every_note_whole_at_100_columns():
    """Several sets (three tasks): each note is a line under the table, whole, as the diagnoses are."""
    from rich.console import Console

    from gradlab.cli.render import PLAIN, reach_view

    frames = [_frame({None: [0.01, 0.012, 0.011], 2: [0.2] * 3, 3: [0.011] * 3, 7: [0.0105] * 3, 9: [0.011] * 3},
                     task="adding"),
              _frame({None: [0.3, 0.31, 0.29], 2: [1.3] * 3, 3: [1.3] * 3, 7: [0.9] * 3, 9: [0.3] * 3},
                     task="temporal_order", baseline=1.386),
              _frame({None: [0.01], 2: [0.1], 3: [0.01]}, task="permutation", baseline=0.69)]
    records = reach.horizons(pd.concat(frames, ignore_index=True))
    console = Console(width=100, record=True, **PLAIN)
    console.print(reach_view(records, title="the data's reach: x", width=100))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 100 for line in lines)
    joined = " ".join(line.strip() for line in lines)
    assert len(records) == 3 and all(len(r["note"]) > 60 for r in records)  # notes too long for a column
    for r in records:
        assert f"task={r['task']}: {r['note']}" in joined, r["note"]


def test_compare_shows_the_window_column(tiny_reach):
    rows = json.loads(runner.invoke(app, ["compare", str(tiny_reach), "-f", "json"]).output)
    assert sorted(r["window"] is None for r in rows) == [False, True]
    assert {r["window"] for r in rows} == {1, None}
    # each run records its task's own lag (Task.lag, from the readout): adding[near] reads its first mark 3 back
    assert [r["task_lag_median"] for r in rows] == [resolve({"name": "adding", "variant": "near"}).lag(6)] * 2 == [3, 3]


def test_compare_reach_without_a_window_grid_fails_in_one_line():
    result = runner.invoke(app, ["compare", str(ROOT / "results" / "tbptt_lag"), "--reach"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no task.window grid" in lines[0], result.output


# ---------------------------------------------------------------------------
# The end-to-end claim: a real window grid recovers the known lags (configs/reach.yaml).

@pytest.mark.study
def test_a_window_grid_recovers_the_known_lags(tmp_path):
    """adding (T = 10, lag 9), temporal order (L = 10, lag 8) and adding[near] (lag 3), LSTM, 3 seeds: the
    reported horizon is each task's own lag, the window one step shorter loses what the target needs."""
    result = runner.invoke(app, ["run", str(ROOT / "configs" / "reach.yaml"), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    records = reach.horizons(load_frame([tmp_path]))
    found = {(r["task"], r["variant"]): r for r in records}
    lags = {("adding", None): 9, ("temporal_order", None): 8, ("adding", "near"): 3}
    assert set(found) == set(lags)
    for key, lag in lags.items():
        assert lag == resolve({"name": key[0], "variant": key[1]}).lag(10)
        assert found[key]["data_horizon"] == lag, (key, found[key])
        below = [r for r in found[key]["windows"] if r["window"] < lag]
        assert below and not any(r["passes"] for r in below), (key, found[key])


# ---------------------------------------------------------------------------
# The reach feeds the diagnosis: compare gives each group of a window grid its set's data horizon.

def _diagnosed(losses: dict, task_lag: int | None, solved: bool = False, vanishing: bool = False, **figures) -> dict:
    """{window: (data_horizon, diagnosis)} of a hand-made window grid of adding (T = 10: its lag 9 from the
    readout, the last step) whose gradient reaches 9 steps."""
    frame = _frame(losses, solved=solved, steps_to_solve=None, diverged=False,
                   verdict="vanishing" if vanishing else "healthy", exploding=False, vanishing=vanishing,
                   horizon=9.0, dependency_lag=7, task_lag=task_lag, dependency_ratio=1e-5 if vanishing else 0.3,
                   grad_norm_max=1.0, suggested_clip=1.0, **figures)
    records = comparison.diagnosed(comparison.to_records(comparison.compare(frame)))
    return {r["window"]: (r["data_horizon"], r["diagnosis"]) for r in records}


HOLDS = {"memory": 0.9, "memory_chance": 0.0, "memory_ceiling": 1.0}  # the state holds its dependency input


def test_a_window_grid_tells_the_diagnosis_when_the_data_needs_less_than_the_dependency():
    full, bad = [0.010, 0.013, 0.011], [0.16, 0.17, 0.165]
    grid = {None: full, 2: bad, 3: full}  # the data needs 3 of the task's 9 steps
    learned = _diagnosed(grid, task_lag=9, solved=True)
    assert {w: h for w, (h, _) in learned.items()} == {None: 3, 2: 3, 3: 3}
    assert learned[None][1]["cases"] == [HEALTHY]
    assert "; the data has no dependency that long (it needs 3 steps of 9, the gradient reaches 9)" in \
        learned[None][1]["text"]
    # a gradient that fades before the task's lag yet covers what the data needs: the data explains the flag
    vanishing = _diagnosed(grid, task_lag=9, solved=True, vanishing=True)
    assert vanishing[None][1]["cases"] == [SHORT_DATA] and "it needs 3 steps of 9" in vanishing[None][1]["text"]
    # unsolved: the short reach explains no failure; the state and the task decide, the reach is a detail
    unsolved = _diagnosed(grid, task_lag=9, **HOLDS)
    assert unsolved[None][1]["cases"] == [HARD_TASK]
    assert any("it needs 3 steps of 9" in x for x in unsolved[None][1]["details"])
    # window 2 hides what the data needs: its own setting, not the data
    hidden = learned[2][1]
    assert hidden["cases"] == [WINDOW_HIDES] and hidden["remedies"] == []
    assert hidden["text"].startswith(f"{CASES[WINDOW_HIDES]}: it keeps 2 of the 3 steps the data needs")
    whole = _diagnosed({None: full, 8: bad, 9: full}, task_lag=9, solved=True)  # it needs all 9: not short
    assert whole[None][0] == 9 and SHORT_DATA not in whole[None][1]["cases"]
    assert CASES[SHORT_DATA] not in whole[None][1]["text"]
    unknown = _diagnosed(grid, task_lag=None, solved=True)  # runs from before task_lag: no claim
    assert unknown[None][0] == 3 and CASES[SHORT_DATA] not in unknown[None][1]["text"]
    plain = comparison.diagnosed(comparison.to_records(comparison.compare(
        _frame({None: full}, solved=True, steps_to_solve=5, diverged=False, verdict="healthy", exploding=False,
               vanishing=False, horizon=9.0, dependency_ratio=0.3, grad_norm_max=1.0, suggested_clip=1.0))))
    assert plain[0]["data_horizon"] is None  # no window grid: no reach, nothing claimed about it
