"""Use from CI: expectations, diffs of result sets, Markdown/JSON/HTML reports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

BASE = """\
name: ci
task: {name: adding, length: 6, eval_size: 64}
model: {hidden: 16}
train: {steps: 150, batch_size: 32, eval_every: 50, lr: 0.02}
seeds: [0, 1]
grid:
  model.cell: [vanilla, lstm]
"""
PASSING = """\
expect:
  - where: {cell: lstm}
    final_loss_mean: "< 0.9 * baseline_loss"
    runs: 2
  - where: {task: adding}
    diverged: "== 0"
"""
FAILING = """\
expect:
  - where: {cell: vanilla}
    solved_rate: ">= 0.5"
"""


@pytest.fixture(scope="module")
def result_sets(tmp_path_factory):
    """A real tiny result set, and a candidate made worse on purpose (one training step)."""
    tmp = tmp_path_factory.mktemp("ci")
    config = tmp / "ci.yaml"
    config.write_text(BASE + PASSING)
    for name, extra in (("base", []), ("worse", ["--set", "train.steps=1"])):
        result = runner.invoke(app, ["run", str(config), "--out", str(tmp / name), "-q", "--jobs", "1", *extra])
        assert result.exit_code == 0, result.output
    return tmp, config


def test_passing_expectations_exit_0_and_print_pass(result_sets):
    tmp, config = result_sets
    result = runner.invoke(app, ["compare", str(tmp / "base"), "--check"])
    assert result.exit_code == 0, result.output
    assert "expectations: 2/2 passed" in result.output
    assert re.search(r"PASS .*final_loss_mean = [0-9.]+ \(want < 0\.9 \* baseline_loss = 0\.15\)", result.output)
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp / "base"), "-q", "--check", "--jobs", "1"])
    assert result.exit_code == 0 and "2/2 passed" in result.output


def test_failing_expectation_exits_1_with_the_observed_value(result_sets, tmp_path):
    tmp, _ = result_sets
    failing = tmp_path / "failing.yaml"
    failing.write_text(BASE + FAILING)
    result = runner.invoke(app, ["compare", str(tmp / "base"), "--check", "--expect", str(failing)])
    assert result.exit_code == 1
    assert re.search(r"FAIL .*cell=vanilla.*solved_rate = 0 \(want >= 0\.5\)", result.output)
    assert "expectations: 0/1 passed" in result.output


def test_a_run_below_the_claim_fails_its_own_check(result_sets):
    tmp, config = result_sets
    result = runner.invoke(app, ["compare", str(tmp / "worse"), "--check"])  # one step: loss at init
    assert result.exit_code == 1 and "FAIL" in result.output


def test_check_without_expectations_is_bad_input(result_sets, tmp_path):
    tmp, _ = result_sets
    plain = tmp_path / "plain.yaml"
    plain.write_text(BASE)
    assert runner.invoke(app, ["run", str(plain), "--check", "--out", str(tmp_path)]).exit_code == 2
    out = runner.invoke(app, ["compare", str(tmp / "base"), "--check", "--expect", str(plain)])
    assert out.exit_code == 2 and "no expect: list" in out.output


EXPECT_ERRORS = [
    ("expect: {cell: lstm}\n", "expect", "expected a list"),
    ("expect:\n  - 3\n", "expect[0]", "expected a mapping"),
    ("expect:\n  - where: {cell: lstm}\n", "expect[0]", "asserts nothing"),
    ("expect:\n  - solved_rat: '> 0'\n", "expect[0].solved_rat", "did you mean 'solved_rate'"),
    ("expect:\n  - solved_rate: 'about half'\n", "expect[0].solved_rate", "expected a comparison"),
    ("expect:\n  - solved_rate: '>> 0.5'\n", "expect[0].solved_rate", "cannot read"),
    ("expect:\n  - final_loss_mean: '< 0.5 * baseline'\n", "expect[0].final_loss_mean", "unknown column 'baseline'"),
    ("expect:\n  - final_loss_mean: '< __import__(1)'\n", "expect[0].final_loss_mean", "only + - * /"),
    ("expect:\n  - final_loss_mean: '< \"a\"'\n", "expect[0].final_loss_mean", "only numbers and columns"),
    ("expect:\n  - verdict: vanish\n", "expect[0].verdict", "healthy, exploding or vanishing"),
    ("expect:\n  - solved_rate: [1]\n", "expect[0].solved_rate", "expected a comparison"),
    ("expect:\n  - where: lstm\n    runs: 1\n", "expect[0].where", "expected a mapping"),
    ("expect:\n  - where: {cel: lstm}\n    runs: 1\n", "expect[0].where.cel", "did you mean 'cell'"),
    ("expect:\n  - where: {cell: gru}\n    runs: 1\n", "expect[0].where", "matches no run"),
]


@pytest.mark.parametrize("text, path, message", EXPECT_ERRORS, ids=[e[2] for e in EXPECT_ERRORS])
def test_every_expectation_syntax_error_is_located(tmp_path, text, path, message):
    config = tmp_path / "c.yaml"
    config.write_text(BASE + text)
    with pytest.raises(ConfigError) as e:
        load(config)
    assert any(f": {path}: " in p and message in p for p in e.value.problems), e.value.problems
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_diff_marks_the_worse_candidate_as_regression(result_sets):
    tmp, _ = result_sets
    same = runner.invoke(app, ["compare", str(tmp / "base"), str(tmp / "base"), "--check"])
    assert same.exit_code == 0 and "REGRESSION" not in same.output
    worse = runner.invoke(app, ["compare", str(tmp / "base"), str(tmp / "worse"), "--check", "-f", "json"])
    assert worse.exit_code == 1
    doc = json.loads(worse.stdout)
    assert doc["schema"] == "gradlab.compare/1" and doc["regressions"] >= 1
    lstm = next(r for r in doc["diff"] if r["cell"] == "lstm")
    assert lstm["status"] == "regression" and "final_loss_mean" in lstm["reasons"]
    assert lstm["final_loss_mean_delta"] == pytest.approx(lstm["final_loss_mean_candidate"]
                                                          - lstm["final_loss_mean_base"])
    improved = runner.invoke(app, ["compare", str(tmp / "worse"), str(tmp / "base"), "--check"])
    assert improved.exit_code == 0  # getting better is not a regression


def test_diff_reports_a_missing_group(result_sets, tmp_path):
    tmp, config = result_sets
    subset = tmp_path / "subset"
    shutil.copytree(tmp / "base", subset)
    for d in subset.glob("ci/cell=vanilla*"):
        shutil.rmtree(d)
    result = runner.invoke(app, ["compare", str(tmp / "base"), str(subset), "--check"])
    assert result.exit_code == 1 and "MISSING" in result.output


def test_markdown_report_parses_back(result_sets):
    tmp, _ = result_sets
    md = runner.invoke(app, ["compare", str(tmp / "base"), "--check", "-f", "markdown"]).stdout
    assert "**Expectations: 2/2 passed**" in md
    assert md.count("✅ PASS") >= 2
    table = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]
    assert {r["cell"] for r in rows} == {"vanilla", "lstm"} and all(r["runs"] == "2" for r in rows)
    diff_md = runner.invoke(app, ["compare", str(tmp / "base"), str(tmp / "worse"), "-f", "markdown"]).stdout
    assert "**REGRESSION**" in diff_md and "regression(s)" in diff_md


def test_json_check_document_parses_back(result_sets):
    tmp, _ = result_sets
    doc = json.loads(runner.invoke(app, ["compare", str(tmp / "base"), "--check", "-f", "json"]).stdout)
    assert doc["schema"] == "gradlab.compare/1" and doc["passed"] is True
    assert len(doc["groups"]) == 2 and len(doc["expectations"]) == 2
    check = doc["expectations"][0]["groups"][0]["checks"][0]
    assert check["column"] == "final_loss_mean" and check["passed"] is True
    assert check["expected"] == pytest.approx(0.9 / 6)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install "
                    "chromium; .ci/run installs it)")
def test_html_report_renders_in_headless_chromium(result_sets, tmp_path):
    tmp, _ = result_sets
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(tmp / "base"), "-o", str(page), "--check"])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: opens offline
    probe = tmp_path / "probe.html"  # the report plus a script that writes what rendered into the DOM
    probe.write_text(html.replace("</body>", """<script>
      window.addEventListener('load', () => {
        document.body.dataset.images = [...document.images].map(i => i.naturalWidth + 'x' + i.naturalHeight).join(',');
        document.body.dataset.rows = document.querySelectorAll('table.comparison tbody tr').length;
        document.body.dataset.height = document.querySelector('table.comparison').getBoundingClientRect().height;
      });</script></body>"""))
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    dom = out.stdout
    images = re.search(r'data-images="([^"]*)"', dom).group(1).split(",")
    assert len(images) >= 3  # learning curves, gradient norms, profile (+ heatmaps)
    assert all(int(w) > 100 and int(h) > 100 for w, h in (i.split("x") for i in images))
    assert re.search(r'data-rows="2"', dom)
    assert float(re.search(r'data-height="([0-9.]+)"', dom).group(1)) > 20
    assert "PASS" in dom


def test_github_actions_example_uses_real_commands():
    text = (ROOT / "examples" / "github-actions.yml").read_text()
    import yaml

    workflow = yaml.safe_load(text)
    assert {"sweep", "compare"} <= set(workflow["jobs"])
    commands = re.findall(r"^\s*(?:run: )?gradlab (\w+)", text, flags=re.M)
    assert {"run", "compare"} <= set(commands)
    known = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert set(commands) <= known
    assert "--shard" in text and "GITHUB_STEP_SUMMARY" in text and "--check" in text
    for config in re.findall(r"configs/[\w/.-]+\.yaml", text):
        assert (ROOT / config).exists(), config
