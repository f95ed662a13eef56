"""The diagnosis in words (issue 23 point 6): each case's rule from both sides, remedies drawn from the
registries' own declarations, and the diagnosis as the terminal, Markdown, JSON and HTML show it."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gradlab import cells, diagnosis, remedies
from gradlab.cli import app
from gradlab.cli.render import PLAIN, rich_table
from gradlab.comparison import SCHEMA, compare, load_frame
from gradlab.diagnosis import DECLARED, declared_remedies, diagnose
from gradlab.reports import _html_view
from gradlab.vocabulary import (
    CASES,
    EXPLODING,
    FORGETS,
    HARD_TASK,
    HEALTHY,
    SHORT_DATA,
    UNREACHED,
    UNTOLD,
    WINDOW_HIDES,
)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "horizon_by_cell"
runner = CliRunner()


def group(**figures) -> dict:
    """A compare record of a group of 2 runs whose gradient reaches (ratio 0.5) and that learned nothing."""
    return {"runs": 2, "failed": 0, "solved": 0, "loss_ratio_iqm": 1.0, "exploding_runs": 0, "vanishing_runs": 0,
            "dependency_ratio_median": 0.5, "dependency_ratio_bound": False, "horizon_init_median": 8.0,
            "horizon_median": 49.0, "memory_median": None, "memory_chance_median": None,
            "memory_ceiling_median": None, "lyapunov_max_median": None, **figures}


# ---------------------------------------------------------------------------
# Each case, with figures on both sides of its rule.


def test_a_majority_of_runs_flagged_exploding_is_an_explosion_and_lyapunov_is_cited_not_judged_again():
    """The exploding flag counts a run's non-finite steps, spikes and chaotic dynamics (λ₁ above the estimate's
    error over the steps it averaged, decided where they are known); a group's median λ₁ carries no length, so
    it is cited, never judged again. A group says how many runs were flagged, one run (gradlab.watch) why."""
    d = diagnose(group(exploding_runs=1))
    assert EXPLODING in d.cases and "1/2 runs flagged exploding" in d.text  # 1 of 2: >= runs / 2, as expect:
    assert "spike" not in d.text  # a run flagged by λ₁ or a non-finite step did not spike
    assert EXPLODING not in diagnose(group(runs=3, exploding_runs=1)).cases  # 1 of 3: a minority
    chaotic = diagnose(group(exploding_runs=2, lyapunov_max_median=0.05))
    assert EXPLODING in chaotic.cases and "2/2 runs flagged exploding, λ₁ 0.05" in chaotic.text
    # λ₁ 0.05 over runs not flagged (averaged over too few steps to tell it from 0): no explosion
    assert EXPLODING not in diagnose(group(lyapunov_max_median=0.05)).cases
    assert EXPLODING not in diagnose(group(lyapunov_max_median=-0.3)).cases

    one = {k: v for k, v in group().items() if k not in ("runs", "failed", "exploding_runs", "vanishing_runs")}
    by_chaos = diagnose({**one, "exploding": True, "vanishing": False, "chaotic": True, "nonfinite_steps": 0,
                         "lyapunov_max": 0.188})
    assert EXPLODING in by_chaos.cases and "explodes (λ₁ 0.188 > 0 (chaotic))" in by_chaos.text
    assert "runs" not in by_chaos.text and "spike" not in by_chaos.text
    by_overflow = diagnose({**one, "exploding": True, "vanishing": False, "chaotic": None, "nonfinite_steps": 3})
    assert "explodes (3 non-finite steps)" in by_overflow.text
    assert EXPLODING not in diagnose({**one, "exploding": False, "vanishing": False, "lyapunov_max": 0.05}).cases


def test_a_vanishing_majority_is_a_gradient_that_does_not_reach_cited_with_its_figures():
    d = diagnose(group(vanishing_runs=2, exploding_runs=2, dependency_ratio_median=4.6e-11,
                       horizon_init_median=7.5, horizon_median=1.0))
    assert d.cases == (UNREACHED, EXPLODING)  # both: a spike does not hide the vanishing gradient
    assert d.text.startswith(CASES[UNREACHED])
    assert "ratio 4.6e-11" in d.text and "horizon 7.5→1 step" in d.text and "2/2 runs flagged exploding" in d.text
    assert len(d.text) <= 200
    assert diagnose(group(vanishing_runs=0)).cases[0] != UNREACHED
    assert diagnose(group(runs=3, vanishing_runs=1)).cases[0] != UNREACHED
    bound = diagnose(group(vanishing_runs=2, dependency_ratio_median=1e-16, dependency_ratio_bound=True))
    assert "ratio <1e-16" in bound.text  # an upper bound says so


def test_a_state_below_half_way_from_chance_to_its_ceiling_does_not_hold_the_dependency():
    # chance 0.1, ceiling 0.9: the line is 0.1 + 0.5 * (0.9 - 0.1) = 0.5
    forgets = diagnose(group(memory_median=0.45, memory_chance_median=0.1, memory_ceiling_median=0.9))
    assert forgets.cases == (FORGETS,)
    assert "memory 0.45 of ceiling 0.9, chance 0.1" in forgets.text
    holds = diagnose(group(memory_median=0.55, memory_chance_median=0.1, memory_ceiling_median=0.9))
    assert holds.cases == (HARD_TASK,)  # reaches, holds, yet at the baseline
    # a vanishing gradient comes first: the state cannot be asked to hold what no gradient taught it
    assert diagnose(group(vanishing_runs=2, memory_median=0.0, memory_chance_median=0.0)).cases == (UNREACHED,)


def test_a_gradient_that_covers_the_datas_own_reach_is_no_long_dependency_in_the_data():
    """A task read at its last step (adding, T = 10: lag 9 from the readout, the dependency's typical step 7
    back): the data needs 5 steps of the 9. A group that learned with a gradient fading before lag 7 but
    covering those 5 has no vanishing-gradient problem: the data has no dependency that long."""
    adding = dict(solved=2, loss_ratio_iqm=0.01, task_lag_median=9.0, dependency_lag_median=7.0)
    short = diagnose(group(vanishing_runs=2, horizon_median=10.0, **adding), data_horizon=5)
    assert short.cases == (SHORT_DATA,) and short.remedies == ()
    assert "it needs 5 steps of 9, the gradient reaches 10" in short.text
    healthy = diagnose(group(horizon_median=10.0, **adding), data_horizon=5)  # no flag to explain: a note
    assert healthy.cases == (HEALTHY,) and f"; {CASES[SHORT_DATA]} (it needs 5 steps of 9" in healthy.text
    longer = diagnose(group(vanishing_runs=2, horizon_median=3.0, **adding), data_horizon=5)
    assert longer.cases == (UNREACHED,)  # the data needs more than the gradient carries
    assert diagnose(group(vanishing_runs=2, horizon_median=10.0, **adding)).cases == (UNREACHED,)  # no reach given
    # no task lag recorded (runs from before it was): nothing claimed beyond what the data needs
    old = diagnose(group(vanishing_runs=2, horizon_median=10.0, solved=2, loss_ratio_iqm=0.01), data_horizon=5)
    assert old.cases == (UNREACHED,) and CASES[SHORT_DATA] not in old.text
    assert any("needs inputs up to 5 steps before the readout" in x for x in old.details)


def test_an_unsolved_group_with_a_short_data_reach_gets_the_checks_that_explain_its_failure():
    """The short reach explains no failure: the gradient covers what the data needs, so what decides is the
    state and the task; the reach stays a detail."""
    unsolved = group(vanishing_runs=2, horizon_median=10.0, task_lag_median=9.0, dependency_lag_median=7.0,
                     memory_chance_median=0.0, memory_ceiling_median=1.0)
    hard = diagnose({**unsolved, "memory_median": 0.9}, data_horizon=5)
    assert hard.cases == (HARD_TASK,) and CASES[SHORT_DATA] not in hard.text
    assert any("it needs 5 steps of 9, the gradient reaches 10" in x for x in hard.details)
    assert diagnose({**unsolved, "memory_median": 0.1}, data_horizon=5).cases == (FORGETS,)
    # a gradient short of even the data's reach is still one that does not reach
    assert diagnose({**unsolved, "horizon_median": 3.0, "memory_median": 0.9}, data_horizon=5).cases == (UNREACHED,)


def test_the_datas_reach_is_read_against_the_tasks_lag_counted_from_the_readout():
    """Copy at T = 10: read from step 20 of 30, its lag from there is 20 (``Task.lag``, as task.window counts)
    while the dependency sits 29 steps before the last step (``dependency_lag``, as the gradient's horizon
    counts). A grid recovering 20 is the task's whole lag: no "no dependency that long"."""
    copy = dict(vanishing_runs=2, solved=2, loss_ratio_iqm=0.01, task_lag_median=20.0, dependency_lag_median=29.0)
    whole = diagnose(group(horizon_median=29.0, **copy), data_horizon=20)
    assert whole.cases == (UNREACHED,) and CASES[SHORT_DATA] not in whole.text
    # a reach of 15 from the readout is 15 + 9 = 24 steps before the last: a horizon of 22 falls short of it
    assert diagnose(group(horizon_median=22.0, **copy), data_horizon=15).cases == (UNREACHED,)
    covered = diagnose(group(horizon_median=25.0, **copy), data_horizon=15)
    assert covered.cases == (SHORT_DATA,) and "it needs 15 steps of 20, the gradient reaches 25" in covered.text


def test_a_groups_own_window_shorter_than_the_datas_reach_hides_the_dependency():
    """Its own setting hides what the data needs: not a fact about the data, and nothing a registry treats."""
    d = diagnose(group(window=2, vanishing_runs=2, task_lag_median=9.0), data_horizon=3, exclude={"cell": "vanilla"})
    assert d.cases == (WINDOW_HIDES,) and d.remedies == ()
    assert d.text.startswith(f"{CASES[WINDOW_HIDES]}: it keeps 2 of the 3 steps the data needs; 0/2 solved")
    assert CASES[SHORT_DATA] not in d.text
    assert diagnose(group(window=3, task_lag_median=9.0), data_horizon=3).cases != (WINDOW_HIDES,)  # keeps them all


def test_a_hard_task_is_one_the_gradient_reaches_and_the_state_holds_yet_unsolved():
    hard = diagnose(group(memory_median=0.9, memory_chance_median=0.0, memory_ceiling_median=1.0))
    assert hard.cases == (HARD_TASK,) and hard.remedies == ()  # no registry entry treats a hard task
    assert "0/2 solved" in hard.text and "loss 1 of baseline" in hard.text


def test_healthy_is_solved_by_most_runs_with_no_flag():
    healthy = diagnose(group(solved=2, loss_ratio_iqm=0.001))
    assert healthy.cases == (HEALTHY,) and healthy.remedies == ()
    assert diagnose(group(solved=1, loss_ratio_iqm=0.5)).cases == (HEALTHY,)  # 1 of 2 is half
    assert diagnose(group(runs=3, solved=1, loss_ratio_iqm=0.5)).cases != (HEALTHY,)
    spiking = diagnose(group(solved=2, loss_ratio_iqm=0.001, exploding_runs=2))
    assert spiking.cases == (EXPLODING,) and spiking.text.startswith(CASES[EXPLODING])


def test_what_is_unmeasured_is_said_not_concluded():
    no_lag = diagnose(group(dependency_ratio_median=None))
    assert no_lag.cases == (UNTOLD,) and "no dependency lag" in no_lag.text
    no_memory = diagnose(group())  # reaches, unsolved, memory not measured
    assert no_memory.cases == (UNTOLD,) and "no memory measured" in no_memory.text
    one_seed = diagnose(group(runs=1, solved=1, loss_ratio_iqm=0.01))
    assert one_seed.text.endswith("(1 seed)") and any("one run" in x for x in one_seed.details)
    failed = diagnose(group(failed=2))
    assert failed.cases == (UNTOLD,) and "no run finished" in failed.text


def test_one_runs_figures_read_as_a_group_of_one():
    """``gradlab.watch`` hands one run's figures: the flags as bools, the figures without ``_median``."""
    d = diagnose({"exploding": False, "vanishing": True, "dependency_ratio": 2e-9, "horizon": 5.0,
                  "dependency_lag": 199})
    assert d.cases == (UNREACHED,) and "dependency at lag 199" in d.text
    assert diagnose({"exploding": False, "vanishing": None, "horizon": 99.0}).cases == (UNTOLD,)
    # reaches and holds, but a user's loop records no outcome: neither hard nor healthy can be told
    held = {"exploding": False, "vanishing": False, "dependency_ratio": 0.3, "horizon": 40.0, "memory": 0.9,
            "memory_chance": 0.0}
    unknown = diagnose(held)
    assert unknown.cases == (UNTOLD,) and "whether it learns is not recorded" in unknown.text
    assert diagnose({**held, "solved": False}).cases == (HARD_TASK,)
    assert diagnose({**held, "solved": True}).cases == (HEALTHY,)


# ---------------------------------------------------------------------------
# Remedies: from the registries' declarations.


def test_the_reading_sides_copy_is_what_the_registries_declare():
    assert DECLARED == declared_remedies()


def test_a_new_cell_that_declares_what_it_addresses_is_proposed(monkeypatch):
    fake = dataclasses.replace(cells.CELLS["vanilla"], addresses=frozenset({FORGETS}))
    monkeypatch.setitem(cells.CELLS, "fake", fake)
    table = declared_remedies()
    assert "model.cell: fake" in {r.setting for r in table}
    figures = group(memory_median=0.0, memory_chance_median=0.0, memory_ceiling_median=1.0)
    assert "model.cell: fake" in diagnose(figures, exclude={"cell": "vanilla"}, remedies=table).remedies
    assert "model.cell: fake" not in diagnose(figures, exclude={"cell": "vanilla"}).remedies  # not in the copy


def test_an_entry_that_no_longer_declares_a_case_is_no_longer_proposed(monkeypatch):
    figures = group(vanishing_runs=2, dependency_ratio_median=1e-9)
    assert "model.cell: lstm" in diagnose(figures, exclude={"cell": "vanilla"}, remedies=declared_remedies()).remedies
    monkeypatch.setitem(cells.CELLS, "lstm", dataclasses.replace(cells.CELLS["lstm"], addresses=frozenset()))
    monkeypatch.setitem(remedies.CLIPS, "norm", dataclasses.replace(remedies.CLIPS["norm"], addresses=frozenset()))
    table = declared_remedies()
    assert "model.cell: lstm" not in diagnose(figures, exclude={"cell": "vanilla"}, remedies=table).remedies
    exploding = group(exploding_runs=2, solved=2, loss_ratio_iqm=0.01)
    assert "train.clip: norm" not in diagnose(exploding, exclude={"clip": "none"}, remedies=table).remedies
    assert "train.clip: norm" in diagnose(exploding, exclude={"clip": "none"}).remedies


def test_what_a_group_uses_is_not_proposed_again():
    unreached = group(vanishing_runs=2, dependency_ratio_median=1e-9)
    tried = diagnose(unreached, exclude={"cell": "lstm", "clip": "norm(1.0)"}).remedies
    assert "model.cell: lstm" not in tried and "model.cell: gru" in tried  # the cell in use fell short: others
    assert "model.forget_bias: chrono" in tried  # an option the lstm takes
    assert "train.omega: 2" not in tried  # Ω is for the RNN cells only (cells.REFUSALS)
    vanilla = diagnose(unreached, exclude={"cell": "vanilla"}).remedies
    assert "model.forget_bias: chrono" not in vanilla and "train.omega: 2" in vanilla
    assert diagnose(unreached, exclude={"cell": "vanilla", "omega": 2}).remedies.count("train.omega: 2") == 0
    # a column with gaps holds 2 as 2.0, a bool as True: still the setting in use
    assert "train.omega: 2" not in diagnose(unreached, exclude={"cell": "vanilla", "omega": 2.0}).remedies
    constrained = {"cell": "orthogonal", "constrain": True}
    assert "model.constrain: true" not in diagnose(unreached, exclude=constrained).remedies
    assert "model.constrain: true" in diagnose(unreached, exclude={**constrained, "constrain": False}).remedies
    # an explosion is counted on the norm before the clip: a group that clips already treats it
    exploding = group(exploding_runs=2, solved=2, loss_ratio_iqm=0.01)
    assert not any(r.startswith("train.clip") for r in diagnose(exploding, exclude={"clip": "norm(1.0)"}).remedies)
    unclipped = diagnose(exploding, exclude={"clip": "none"}).remedies
    assert "train.clip: norm" in unclipped and "train.clip: none" not in unclipped


def test_a_group_that_learns_is_not_told_to_change_what_works():
    learns = group(vanishing_runs=2, dependency_ratio_median=0.0, solved=2, loss_ratio_iqm=1e-4)
    d = diagnose(learns, exclude={"cell": "lstm"})
    assert d.cases == (UNREACHED,) and "learned without it" in d.text and d.remedies == ()


def test_a_split_group_says_so_and_keeps_its_remedies():
    """1 of 2 runs vanishing: the median ratio is of both runs (0.376 is no vanishing ratio), so the text says
    the other run reaches; with 1 of 2 solved the solver may be the run that reached, so neither "learned
    without it" nor silence about what to try."""
    split = diagnose(group(vanishing_runs=1, dependency_ratio_median=0.376), exclude={"cell": "orthogonal"})
    assert split.cases == (UNREACHED,)
    assert split.text.startswith(f"{CASES[UNREACHED]} in 1/2 runs, reaches it in the rest (median ratio 0.376, ")
    half = diagnose(group(vanishing_runs=1, solved=1, loss_ratio_iqm=0.5, dependency_ratio_median=0.3),
                    exclude={"cell": "vanilla"})
    assert half.cases == (UNREACHED,) and "learned without it" not in half.text and "model.cell: lstm" in half.remedies
    some = diagnose(group(vanishing_runs=2, solved=1, loss_ratio_iqm=0.5), exclude={"cell": "vanilla"})
    assert "learned without it" not in some.text and "model.cell: lstm" in some.remedies  # one run did not learn


def test_flags_are_shares_of_the_finished_runs():
    """4 runs, 2 failed, 1 of the 2 finished vanishing: a tie, as the comparison's own shares read it."""
    from gradlab.comparison import _flag_shares

    rec = group(runs=4, failed=2, vanishing_runs=1, exploding_runs=1, dependency_ratio_median=1e-5)
    assert _flag_shares(rec) == {"vanishing": 0.5, "exploding": 0.5}
    d = diagnose(rec)
    assert d.cases == (UNREACHED, EXPLODING) and "in 1/2 runs" in d.text


def test_the_diagnosis_imports_no_torch_and_no_pandas():
    code = "import sys, gradlab.diagnosis; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# The committed study, and how each output shows it.


@pytest.fixture(scope="module")
def table():
    return compare(load_frame([STUDY]))


def _by_cell(records) -> dict:
    return {r["cell"]: r["diagnosis"] for r in records}


def test_the_committed_tanh_rnn_does_not_reach_the_dependency_and_explodes(table):
    from gradlab.comparison import diagnosed, to_records

    found = _by_cell(diagnosed(to_records(table)))
    assert found["vanilla"]["cases"] == [UNREACHED, EXPLODING]
    assert "model.cell: lstm" in found["vanilla"]["remedies"]
    assert not any(r.startswith("train.clip") for r in found["vanilla"]["remedies"])  # it clips already
    assert found["gru"]["cases"] == [HEALTHY] and found["lstm"]["cases"] == [HEALTHY]


def test_the_terminal_says_each_groups_diagnosis_whole_at_100_columns(table):
    console = Console(width=100, record=True, **PLAIN)
    console.print(rich_table(table, width=100))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 100 for line in lines)
    joined = " ".join(line.strip() for line in lines)
    from gradlab.tables import diagnoses

    for name, d in diagnoses(table):
        assert f"{name}: {d['text']}" in joined  # wrapped at spaces, never cut
    # the figures it cites, from the runs' own summaries: the medians over the two tanh-RNN seeds, three
    # significant digits (diagnosis.num), the horizon at initialisation and at the end, the lag read at
    vanilla = [json.loads(f.read_text()) for f in sorted(STUDY.glob("cell=vanilla_*/summary.json"))]
    assert len(vanilla) == 2
    ratio = f"{statistics.median(s['dependency_ratio'] for s in vanilla):.3g}"
    start, end = (statistics.median(s[k] for s in vanilla) for k in ("horizon_init", "horizon"))
    [lag] = {s["dependency_lag"] for s in vanilla}
    assert (ratio, start, end, lag) == ("4.57e-11", 7.5, 1, 37)  # what the study recorded (NOTES.md: 7.5 -> 1)
    assert (f"cell=vanilla: gradient does not reach the dependency (ratio {ratio}, horizon {start:g}→{end:g} step, "
            f"dependency at lag {lag}); 0/2 solved") in joined
    assert "try: model.cell: irnn, orthogonal, skip, lstm, gru; train.omega: 2" in joined
    wide = Console(width=100, record=True, **PLAIN)
    wide.print(rich_table(table, wide=True, width=100))
    assert "· explosion: 2/2 runs flagged exploding" in wide.export_text()  # --wide: the evidence


def test_markdown_lists_the_diagnoses():
    result = runner.invoke(app, ["compare", str(STUDY), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    item = next(line for line in result.stdout.splitlines() if line.startswith("- **cell=vanilla**"))
    assert CASES[UNREACHED] in item and "`model.cell: lstm`" in item


def test_json_groups_carry_their_diagnosis_under_the_new_schema():
    result = runner.invoke(app, ["compare", str(STUDY), "--format", "json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert SCHEMA == "gradlab.compare/4" and all(g["schema"] == SCHEMA for g in groups)
    found = _by_cell(groups)
    assert set(found["vanilla"]) >= {"cases", "text", "remedies"}
    assert found["vanilla"]["cases"] == [UNREACHED, EXPLODING] and found["lstm"]["cases"] == [HEALTHY]


def test_the_html_report_shows_each_groups_diagnosis(table):
    page = _html_view(table)
    assert "<h3>Diagnosis</h3>" in page
    assert "<b>cell=vanilla</b>: gradient does not reach the dependency" in page
    assert "<code>model.cell: lstm</code>" in page
    assert diagnosis.CASES is CASES  # one vocabulary
