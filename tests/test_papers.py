"""The paper studies of configs/papers/, reduced to CI size.

Each study's full result set is committed under results/<study>/ (made with
`gradlab run configs/papers/<study>.yaml --jobs 2`; see results/README.md). Here
each config runs again with tiny lengths, step counts or seed lists where its
claims still hold, and every claim must hold in the reduced run too — so a change
that breaks a remedy, a cell, a task or the diagnostics fails the pipeline. The
only exceptions (NOT_ASSERTED, each with its reason) are claims the committed study
itself refutes, and one that hinges on a near tie; the test checks that each fails
in the committed results, so the list cannot hide a claim that holds.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.expectations import check_results

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.study  # `make studies`; `make test` leaves them out

# study -> the --set overrides that make it CI-sized (a few to a few tens of seconds here)
REDUCED = {
    "le2015_adding": ["grid.task.length=[40]", "train.steps=2000", "seeds=[0]"],
    # 4000 steps: the constrained orthogonal RNN ends at 0.216 against the 0.267 it must beat (0.9 x baseline)
    "arjovsky2016_copy": ["grid.task.length=[50]", "seeds=[0]", "train.steps=4000",
                          "grid.model=[{cell: vanilla}, {cell: lstm}, {cell: orthogonal, constrain: true, "
                          "init: henaff}]"],
    # the full group, 4 seeds; 3000 of the 4000 steps: in the study the clipped seeds are solved at steps
    # 1500-2500, the unclipped ones never
    "pascanu2013_clipping": ["grid.task.length=[20]", "grid.train.lr=[0.1]", "train.steps=3000"],
    "tbptt_lag": ["train.steps=1000", "seeds=[0, 1]"],
    "horizon_by_cell": ["task.length=30", "train.steps=2000", "seeds=[0]"],
    # seed 1: the seed whose IRNN leaves the baseline on pixel digits (the permuting claim); no claim names the GRU
    "le2015_digits": ["grid.model.cell=[vanilla, irnn, lstm]", "train.steps=500", "seeds=[1]"],
}

# studies left out at CI size, with the reason (the test below checks the list against configs/papers/)
NOT_REDUCED = {
    "le2015_adding_tuned": "le2015_adding's cells and task with the lr tuned per arm: 7 times its runs at any "
                           "size; le2015_adding runs reduced above and the tune: protocol is tests/test_tuning.py's",
}

# study -> {claim: why it is not asserted at CI size}; each fails in the committed study
NOT_ASSERTED = {
    "pascanu2013_clipping": {
        "without clipping the diagnostics name the gradient exploding":
            "refuted at T = 50 (vanishing); at T = 20, lr 0.1 the 4 unclipped seeds split about evenly "
            "between exploding and vanishing/healthy, so the group's verdict flips with float32 rounding "
            "across CPUs (README, Paper studies)",
    },
    "tbptt_lag": {
        "a window shorter than the lag does not learn the task (window 10)":
            "window 10 learns the task in 3 of 3 seeds: the recurrent weights trained on the second "
            "symbol's 8-9 step lag carry the first symbol's (results/tbptt_lag/NOTES.md)",
    },
    "horizon_by_cell": {
        "the LSTM's gradient reaches the first marker's half at initialisation":
            "at initialisation the LSTM's horizon is 5 steps (forget gate at bias 0), yet it solves the task",
        "the GRU's gradient reaches the first marker's half at initialisation":
            "at initialisation the GRU's horizon is 9 steps, yet it solves the task",
        "after training the orthogonal RNN's gradient still reaches the first marker's half, and it solves "
        "the task in some seed": "orthogonal at init only: training pulls U off orthogonal, the horizon shrinks",
        "after training the skip RNN's gradient still reaches the first marker's half, and it solves "
        "the task in some seed": "the skip cell fails to learn and its horizon shrinks",
    },
    "le2015_digits": {
        claim: "the IRNN stays at or near the baseline in 1500 steps at the shared lr 1e-3 "
               "(results/le2015_digits/NOTES.md)"
        for claim in ("the IRNN learns pixel digits, test accuracy >= 0.9 in every seed (Le et al. 97%)",
                      "the IRNN beats the LSTM on pixel digits (97% against 65%)",
                      "the IRNN beats the tanh RNN on pixel digits (97% against 35%)",
                      "the IRNN beats the LSTM on permuted digits (82% against 36%)",
                      "the IRNN beats the tanh RNN on permuted digits (82% against 35%)")
    },
}


def _failures(check: dict) -> str:
    return "; ".join(f"{x['column']} = {x['observed']} (want {x['op']} {x['expected']})"
                     for g in check["groups"] for x in g["checks"] if not x["passed"])


@pytest.fixture(scope="module")
def reduced_runs(tmp_path_factory):
    """study -> the reduced run's result folder, each study run once for the module."""
    out = tmp_path_factory.mktemp("papers")
    done = {}

    def run(study):
        if study not in done:
            sets = [arg for s in REDUCED[study] for arg in ("--set", s)]
            result = runner.invoke(app, ["run", str(ROOT / "configs" / "papers" / f"{study}.yaml"), "--out",
                                         str(out), "-q", "--jobs", "2", *sets])
            assert result.exit_code == 0, result.output
            done[study] = out / study
        return done[study]
    return run


@pytest.mark.parametrize("study", sorted(REDUCED))
def test_reduced_study_keeps_its_claims(study, reduced_runs):
    committed = {c["claim"]: c for c in check_results(ROOT / "results" / study)}
    refuted = NOT_ASSERTED.get(study, {})
    assert set(refuted) <= set(committed), f"NOT_ASSERTED names claims {study} does not make"
    held_there = [claim for claim in refuted if committed[claim]["passed"]]
    assert not held_there, f"claims not asserted at CI size hold in results/{study}: {held_there}"
    reduced = {c["claim"]: c for c in check_results(reduced_runs(study))}
    assert set(reduced) == set(committed), "the reduced run states other claims than the committed one"
    lost = [f"{claim}: {_failures(check)}" for claim, check in reduced.items()
            if claim not in refuted and not check["passed"]]
    assert not lost, f"claims of {study} fail at CI size:\n" + "\n".join(lost)


def test_a_window_cuts_the_gradient_to_exactly_zero(reduced_runs):
    """tbptt_lag's claim in full: beyond the window the gradient is exactly zero, not just small.

    The chunks start at step 0, so the loss at step T-1 back-propagates through the
    last chunk only: steps T - (((T-1) mod k) + 1) .. T-1 (results/tbptt_lag header).
    """
    for run in sorted(reduced_runs("tbptt_lag").iterdir()):
        if not run.is_dir():
            continue
        window = json.loads((run / "config.json").read_text())["train"]["tbptt"]
        profile = np.load(run / "profile.npz")["grad_norm"]  # (evals, T): ‖∂L/∂h_t‖ per eval
        T = profile.shape[1]
        first = 0 if window is None else T - ((T - 1) % window + 1)  # the last chunk's first step
        assert (profile[:, :first] == 0).all(), f"{run.name}: gradient before step {first} is not exactly zero"
        assert (profile[:, first:] > 0).all(), f"{run.name}: gradient inside the last chunk vanished entirely"


def test_every_paper_config_has_a_reduced_version_and_a_committed_book():
    configs = {p.stem for p in (ROOT / "configs" / "papers").glob("*.yaml")}
    assert configs == set(REDUCED) | set(NOT_REDUCED) and not set(REDUCED) & set(NOT_REDUCED)
    book = (ROOT / "results" / "README.md").read_text()
    for study in configs:
        assert f"## {study}" in book, f"results/README.md lacks {study}: re-run gradlab report"
