"""The paper studies of configs/papers/, reduced to CI size.

Each study's full result set is committed under results/<study>/ (made with
`gradlab run configs/papers/<study>.yaml --jobs 2`; see results/README.md). Here
each config runs again with tiny lengths, step counts or seed lists where its
claims still hold, and every claim that holds in the committed results must hold
in the reduced run too — so a change that breaks a remedy, a cell, a task or the
diagnostics fails the pipeline. Claims that the committed study itself refutes are
reported there, not asserted here.
"""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.expectations import check_results

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# study -> the --set overrides that make it CI-sized (a few to a few tens of seconds here)
REDUCED = {
    "le2015_adding": ["grid.task.length=[40]", "train.steps=2000", "seeds=[0]"],
    "arjovsky2016_copy": ["grid.task.length=[50]", "seeds=[0]", "train.steps=4500",
                          "grid.model=[{cell: vanilla}, {cell: lstm}, {cell: orthogonal, constrain: true, "
                          "init: henaff}]"],
    "pascanu2013_clipping": ["grid.task.length=[20]", "grid.train.lr=[0.1]", "train.steps=3000"],
    "tbptt_lag": ["train.steps=1000", "seeds=[0, 1]"],
    "horizon_by_cell": ["train.steps=200", "seeds=[0]"],
}


def held(checks: list[dict]) -> set[str]:
    return {c["expectation"] for c in checks if c["passed"]}


@pytest.mark.parametrize("study", sorted(REDUCED))
def test_reduced_study_keeps_the_claims_its_full_run_supports(study, tmp_path):
    committed = ROOT / "results" / study
    assert (committed / "experiment.json").exists(), f"the full result set of {study} is not committed"
    supported = held(check_results(committed))
    assert supported, f"no claim of {study} holds in its committed results; nothing to guard"
    sets = [arg for s in REDUCED[study] for arg in ("--set", s)]
    result = runner.invoke(app, ["run", str(ROOT / "configs" / "papers" / f"{study}.yaml"), "--out", str(tmp_path),
                                 "-q", "--jobs", "2", *sets])
    assert result.exit_code == 0, result.output
    reduced = {c["expectation"]: c for c in check_results(tmp_path / study)}
    lost = [f"{name}: " + "; ".join(f"{x['column']} = {x['observed']} (want {x['op']} {x['expected']})"
                                    for g in reduced[name]["groups"] for x in g["checks"] if not x["passed"])
            for name in supported if not reduced[name]["passed"]]
    assert not lost, "claims that hold in results/" + study + " fail at CI size:\n" + "\n".join(lost)


def test_every_paper_config_has_a_reduced_version_and_a_committed_book():
    configs = {p.stem for p in (ROOT / "configs" / "papers").glob("*.yaml")}
    assert configs == set(REDUCED)
    book = (ROOT / "results" / "README.md").read_text()
    for study in configs:
        assert f"## {study}" in book, f"results/README.md lacks {study}: re-run gradlab report"
