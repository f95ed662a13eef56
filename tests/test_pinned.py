"""Pinned numbers, as torchtune pins its recipes' losses: a tiny float64 run whose recorded figures are
written here.

A run compared only with itself cannot catch a change in the random stream (the order of draws in
a task's batches, the initialisation, the evaluation set) or in the loss; these numbers can. They
were recorded with torch 2.13.0 on x86-64 (CPU). In float64, four steps leave float round-off
(1e-16 per operation) far below RTOL, while another draw or loss moves them in the first digits. A
deliberate change of the stream re-records them (and changes every committed result).
"""

import pytest

from gradlab.config import load
from gradlab.training import train

CONFIG = """\
name: pinned
task: {name: adding, length: 8, eval_size: 16}
model: {hidden: 6}
train: {steps: 4, batch_size: 4, lr: 0.01, eval_every: 2}
grid: {model.cell: [vanilla, lstm]}
seeds: [1]
dtype: float64
"""
RTOL = 1e-10
PROFILE_RTOL = 1e-6  # profile.npz holds float32, written here to 7 digits

# run id -> the recorded figures: the training loss and pre-clip gradient norm of each step, and the
# evaluation loss at steps 0, 2 and 4; and Σ_b ‖∂L/∂h_t‖ over t at the last evaluation
PINNED = {
    "cell=vanilla_seed=1_80cf6199d0a1513c": {
        "loss": [2.6982414306970672, 2.397623396329355, 1.5322027084410867, 1.4117549751565095],
        "grad_norm": [6.347108025387327, 5.694721430361595, 4.649620071534692, 4.355552195592155],
        "eval_loss": [2.4775750799543506, 1.886434599995101, 1.4544263334076644],
        "profile": [0.001574255, 0.004041123, 0.008554608, 0.02180736, 0.07621138, 0.2678569, 0.7700334, 1.280102],
    },
    "cell=lstm_seed=1_a14bc79316623797": {
        "loss": [2.815969620634415, 2.818074071374184, 1.911546100687202, 1.9343958146025146],
        "grad_norm": [3.7522155376502124, 3.6327510101194163, 3.0502907679242437, 3.0627281140360108],
        "eval_loss": [2.6829020615190697, 2.466691180015718, 2.278367550216441],
        "profile": [0.0007769436, 0.001448009, 0.002645849, 0.005431707, 0.01237606, 0.02647481, 0.1425215,
                    1.065744],
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    path = tmp_path_factory.mktemp("pinned") / "pinned.yaml"
    path.write_text(CONFIG)
    _, runs = load(path)
    return {run.id: train(run.config) for run in runs}


def figures(out: dict) -> dict:
    rows = out["rows"]
    return {"loss": [r["loss"] for r in rows if r["kind"] == "train"],
            "grad_norm": [r["grad_norm"] for r in rows if r["kind"] == "train"],
            "eval_loss": [r["eval_loss"] for r in rows if r["kind"] == "eval"],
            "profile": out["profile"]["grad_norm"][-1].tolist()}


def test_the_run_ids_are_the_pinned_ones(runs):
    assert sorted(runs) == sorted(PINNED)


@pytest.mark.parametrize("run_id", list(PINNED))
def test_recorded_losses_and_gradient_norms_are_the_pinned_numbers(runs, run_id):
    got = figures(runs[run_id])
    for name, expected in PINNED[run_id].items():
        rtol = PROFILE_RTOL if name == "profile" else RTOL
        assert got[name] == pytest.approx(expected, rel=rtol, abs=0), name
