"""Use from CI: expectations, diffs of result sets, Markdown/JSON/HTML reports."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from gradlab import comparison
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
    ("expect:\n  - verdict: vanish\n", "expect[0].verdict",
     "vanishing+exploding, exploding, vanishing, healthy, not exploding or mixed"),
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
    assert doc["schema"] == comparison.SCHEMA and doc["regressions"] >= 1
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
    assert doc["schema"] == comparison.SCHEMA and doc["passed"] is True
    assert len(doc["groups"]) == 2 and len(doc["expectations"]) == 2
    check = doc["expectations"][0]["groups"][0]["checks"][0]
    assert check["column"] == "final_loss_mean" and check["passed"] is True
    assert check["expected"] == pytest.approx(0.9 / 6)


def test_html_report_renders_in_headless_chromium(result_sets, tmp_path, render_dom):
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
    dom = render_dom(probe)
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


def test_github_actions_example_reports_even_when_runs_or_checks_fail():
    import yaml

    jobs = yaml.safe_load((ROOT / "examples" / "github-actions.yml").read_text())["jobs"]
    runs_anyway = lambda item: any(c in str(item.get("if", "")) for c in ("always()", "!cancelled()"))  # noqa: E731
    uploads = [s for s in jobs["sweep"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads and all(runs_anyway(s) for s in uploads)  # a shard with failed runs still hands them on
    assert runs_anyway(jobs["compare"])  # the compare job runs after a failed shard
    steps = jobs["compare"]["steps"]
    check = next(i for i, s in enumerate(steps) if "--check" in s.get("run", ""))
    assert "exit ${status:-0}" in steps[check]["run"] and "|| true" not in steps[check]["run"]  # still fails
    after = steps[check + 1:]  # a failed check step must not skip the report
    assert any("gradlab report" in s.get("run", "") for s in after)
    assert all(runs_anyway(s) for s in after)
    assert any("upload-artifact" in s.get("uses", "") and "report.html" in str(s.get("with")) for s in after)


def test_run_check_prints_the_same_document_as_compare_check(result_sets):
    tmp, config = result_sets  # the runs exist: run skips them and prints the comparison
    for fmt in ("markdown", "json"):
        ran = runner.invoke(app, ["run", str(config), "--out", str(tmp / "base"), "-q", "--jobs", "1", "--check",
                                  "-f", fmt])
        compared = runner.invoke(app, ["compare", str(tmp / "base" / "ci"), "--check", "-f", fmt])
        assert ran.exit_code == compared.exit_code == 0, ran.output
        assert ran.stdout == compared.stdout
    md = runner.invoke(app, ["run", str(config), "--out", str(tmp / "base"), "-q", "--check", "-f", "markdown"])
    assert "✅ PASS" in md.stdout and "**Expectations: 2/2 passed**" in md.stdout


def test_report_shows_the_stored_expectations_without_check(result_sets, tmp_path):
    tmp, _ = result_sets
    page = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(tmp / "base"), "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert "Expectations: 2/2 passed" in page.read_text() and '<span class="pass">PASS</span>' in page.read_text()
    # a failing one is shown as FAIL; only --check turns it into exit 1
    assert runner.invoke(app, ["report", str(tmp / "worse"), "-o", str(page)]).exit_code == 0
    assert '<span class="fail">FAIL</span>' in page.read_text()
    assert runner.invoke(app, ["report", str(tmp / "worse"), "-o", str(page), "--check"]).exit_code == 1


def _with_clip(src: Path, dst: Path, clip: dict) -> Path:
    """A copy of a result set whose runs record another clipping rule (comparison reads only the disk)."""
    shutil.copytree(src, dst)
    for path in dst.rglob("config.json"):
        cfg = json.loads(path.read_text())
        cfg["train"]["clip"] = clip
        path.write_text(json.dumps(cfg))
    return dst


def test_diff_lines_up_groups_when_a_default_key_is_the_change_under_test(result_sets, tmp_path):
    tmp, _ = result_sets
    clipped = _with_clip(tmp / "base", tmp_path / "clipped", {"kind": "norm", "max_norm": 1.0})
    result = runner.invoke(app, ["compare", str(tmp / "base"), str(clipped), "--check", "-f", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["changes"] == {"clip": ["none", "norm(1.0)"]}
    assert sorted(r["cell"] for r in doc["diff"]) == ["lstm", "vanilla"]
    assert {r["status"] for r in doc["diff"]} == {"ok"} and doc["regressions"] == 0
    table = runner.invoke(app, ["compare", str(tmp / "base"), str(clipped)])
    assert "change under test: clip: none → norm(1.0)" in table.output and "MISSING" not in table.output
    md = runner.invoke(app, ["compare", str(tmp / "base"), str(clipped), "-f", "markdown"]).stdout
    assert "Change under test: `clip: none → norm(1.0)`" in md
    # the candidate also differs in train.steps: reported as well, never a join column
    worse = json.loads(runner.invoke(app, ["compare", str(tmp / "base"), str(tmp / "worse"), "-f", "json"]).stdout)
    assert worse["changes"] == {"steps": [150, 1]}


def _groups(**metrics) -> pd.DataFrame:
    row = {"cell": "lstm", "runs": 2, "failed": 0, "solved_rate": 1.0, "final_loss_mean": 0.01,
           "baseline_loss": 1 / 6, "steps_to_solve_median": 100.0, "diverged": 0, "verdict": "healthy"}
    return pd.DataFrame([{**row, **metrics}])


@pytest.mark.parametrize("count", ["diverged", "failed"])
def test_diff_compares_diverged_and_failed_as_rates(count):
    from gradlab.comparison import diff

    base = _groups(runs=2, **{count: 1})
    assert diff(base, _groups(runs=10, **{count: 2}), ["cell"])["status"].tolist() == ["ok"]  # 20 % < 50 %
    assert diff(base, _groups(runs=2, **{count: 1}), ["cell"])["status"].tolist() == ["ok"]
    worse = diff(base, _groups(runs=10, **{count: 6}), ["cell"])
    assert worse["status"].tolist() == ["regression"] and "1/2 -> 6/10" in worse["reasons"][0]


def _md_table(md: str, first_column: str) -> list[dict]:
    lines = [line for line in md.splitlines() if line.startswith(f"| {first_column} |")]
    start = md.splitlines().index(lines[0])
    table = []
    for line in md.splitlines()[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def test_diff_shows_deltas_and_diverged(result_sets):
    tmp, _ = result_sets
    args = ["compare", str(tmp / "base"), str(tmp / "worse")]
    doc = json.loads(runner.invoke(app, [*args, "-f", "json"]).stdout)
    lstm = next(r for r in doc["diff"] if r["cell"] == "lstm")
    rows = _md_table(runner.invoke(app, [*args, "-f", "markdown"]).stdout, "task")
    md = next(r for r in rows if r["cell"] == "lstm")
    assert float(md["final_loss_mean_delta"]) == pytest.approx(lstm["final_loss_mean_delta"], rel=1e-3)
    assert md["final_loss_mean_delta"].startswith("+") and md["solved_rate_delta"] != ""
    assert md["diverged_base"] == f"{lstm['diverged_base']}/2" and md["diverged_candidate"].endswith("/2")
    table = runner.invoke(app, args).output
    header = next(line for line in table.splitlines() if "loss ÷ baseline" in line)
    any_diverged = any(r["diverged_base"] or r["diverged_candidate"] for r in doc["diff"])
    assert "P(better)" in header and ("diverged" in header) == any_diverged  # a column only when a run diverged
    ratio = f"{lstm['loss_ratio_iqm_base']:.3g}→{lstm['loss_ratio_iqm_candidate']:.3g}"
    assert ratio in table  # base → candidate of the loss relative to the baseline


def test_diff_with_expect_checks_the_candidate(result_sets, tmp_path):
    tmp, _ = result_sets
    failing = tmp_path / "failing.yaml"
    failing.write_text(BASE + FAILING)
    args = ["compare", str(tmp / "base"), str(tmp / "base"), "--expect", str(failing)]
    result = runner.invoke(app, [*args, "--check"])
    assert result.exit_code == 1 and "FAIL" in result.output and "expectations: 0/1 passed" in result.output
    assert runner.invoke(app, args).exit_code == 0  # without --check the diff only reports
    passing = tmp_path / "passing.yaml"
    passing.write_text(BASE + PASSING)
    doc = json.loads(runner.invoke(app, ["compare", str(tmp / "base"), str(tmp / "base"), "--check", "-f", "json",
                                         "--expect", str(passing)]).stdout)
    assert doc["passed"] is True and len(doc["expectations"]) == 2 and doc["regressions"] == 0
    md = runner.invoke(app, ["compare", str(tmp / "base"), str(tmp / "worse"), "-f", "markdown", "--expect",
                             str(passing)]).stdout
    assert "**Expectations: 1/2 passed**" in md and "❌ FAIL" in md  # on the candidate: its lstm did not learn


def test_markdown_expressions_are_code_not_emphasis(result_sets, tmp_path):
    from markdown_it import MarkdownIt

    tmp, _ = result_sets
    starred = tmp_path / "starred.yaml"
    starred.write_text(BASE + 'expect:\n  - where: {cell: lstm}\n    final_loss_mean: "<2*baseline_loss*0.9"\n')
    md = runner.invoke(app, ["compare", str(tmp / "base"), "--check", "--expect", str(starred), "-f",
                             "markdown"]).stdout
    page = MarkdownIt("commonmark").enable("table").render(md)
    assert "<em>" not in page and "<code>&lt; 2*baseline_loss*0.9</code>" in page, page
    from gradlab.reports import code

    assert MarkdownIt().render(code("a`b")).strip() == "<p><code>a`b</code></p>"
    assert MarkdownIt().render(code("`x")).strip() == "<p><code>`x</code></p>"
