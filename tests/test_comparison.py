"""The comparison a reader draws conclusions from: tables that fit, no pooling of unlike runs,
intervals and tests checked against hand computations, a sweep's own runs, damaged runs named."""

import itertools
import json
import math
import re

import numpy as np
import pytest
from rich.console import Console
from scipy.stats import norm
from typer.testing import CliRunner

from gradlab import comparison, results, statistics, vocabulary
from gradlab.cli import app
from gradlab.cli.render import rich_table
from gradlab.tables import LETTERS

runner = CliRunner()

# The quickstart's six runs as `make demo` recorded them (cell, seed, final loss, solved, steps to solve,
# verdict, horizon, horizon at init, clip rate, suggested clip, largest norm): numbers of every magnitude.
QUICKSTART = [
    ("irnn", 0, 0.0037238137432868824, True, 1250, "exploding", 39, 39, 0.787, 2.3212655782699585, 3372556.25),
    ("irnn", 1, 0.16205317654404316, False, None, "exploding", 39, 39, 0.2975, 0.6193058490753174, 3930618.0),
    ("lstm", 0, 9.74014767154685e-05, True, 500, "healthy", 39, 5, 0.017, 0.09337161108851433, 5.958775520324707),
    ("lstm", 1, 0.00012723700065854794, True, 750, "healthy", 39, 5, 0.009, 0.08489546924829483, 10.28014373779),
    ("vanilla", 0, 0.1664265159238398, False, None, "vanishing", 6, 8, 0.3555, 0.6940284967422485, 39.98900985),
    ("vanilla", 1, 0.17973036080768134, False, None, "vanishing", 1, 7, 0.4075, 0.6993358731269836, 10.00031185),
]
ADDING, TEMPORAL = 1 / 6, math.log(4)  # the memoryless baselines of adding and temporal order


def write_run(root, name, *, task="adding", length=40, cell="lstm", seed=0, clip=None, steps=2000, final_loss=0.1,
              baseline=ADDING, solved=False, steps_to_solve=None, verdict="healthy", horizon=39, horizon_init=5,
              clip_rate=0.1, suggested_clip=1.0, grad_norm_max=10.0, forget_bias=None, lr=0.01):
    clip = clip or {"kind": "norm", "max_norm": 1.0}
    config = {"name": name, "task": {"name": task, "length": length, "eval_size": 500, "variant": None},
              "model": {"cell": cell, "hidden": 64, "layers": 1, "forget_bias": forget_bias},
              "train": {"steps": steps, "batch_size": 64, "optimizer": "adam", "lr": lr, "clip": clip, "tbptt": None,
                        "eval_every": 250},
              "device": "cpu", "dtype": "float32", "threads": 1, "seed": seed}
    digest = f"{abs(hash(json.dumps(config, sort_keys=True))) % 16**8:08x}"
    summary = {"status": "ok", "final_loss": final_loss, "baseline_loss": baseline, "solved": solved,
               "steps_to_solve": steps_to_solve, "diverged": False, "steps_done": steps, "verdict": verdict,
               "horizon": horizon, "horizon_init": horizon_init, "clip_rate": clip_rate,
               "suggested_clip": suggested_clip, "grad_norm_max": grad_norm_max}
    rows = [{"kind": "train", "step": s, "loss": 0.1} for s in (1, steps)]  # an evaluation every eval_every
    rows += [{"kind": "eval", "step": s} for s in sorted({*range(0, steps + 1, 250), steps})]
    path = root / name / f"cell={cell}_seed={seed}_{digest}"
    results.save_run(path, config, {"torch": "2.13.0"}, rows, summary)
    return path


@pytest.fixture
def quickstart(tmp_path):
    for cell, seed, loss, solved, steps, verdict, horizon, init, rate, clip, top in QUICKSTART:
        write_run(tmp_path, "quickstart", cell=cell, seed=seed, final_loss=loss, solved=solved, steps_to_solve=steps,
                  verdict=verdict, horizon=horizon, horizon_init=init, clip_rate=rate, suggested_clip=clip,
                  grad_norm_max=top)
    return tmp_path / "quickstart"


def wilson_by_hand(k, n, z=norm.ppf(0.975)):
    """(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), Wilson 1927."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def sig3(v: float) -> str:
    return f"{v:.3g}"


# ---------------------------------------------------------------------------
# Tables that fit


@pytest.mark.parametrize("width", [80, 100])
def test_quickstart_table_fits_and_every_number_is_whole(quickstart, width):
    doc = json.loads(runner.invoke(app, ["compare", str(quickstart), "-f", "json"]).stdout)
    console = Console(width=width, record=True, markup=False, emoji=False, highlight=False)
    console.print(rich_table(comparison.compare(comparison.load_frame([quickstart])), "quickstart"))
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines) and "…" not in text
    tokens = set(re.findall(r"[^\s()\[\],]+", text.replace("–", " ").replace("→", " ")))
    for group in doc:
        low, high = wilson_by_hand(group["solved"], group["runs"])
        expected = [f"{group['solved']}/{group['runs']}", f"{100 * high:.0f}%", sig3(group["loss_ratio_iqm"]),
                    sig3(group["loss_ratio_min"]), sig3(group["loss_ratio_max"]),
                    f"{group['horizon_init_median']:g}", f"{group['horizon_median']:g}"]
        assert f"({100 * low:.0f}" in text
        missing = [e for e in expected if e not in tokens]
        assert not missing, (group["cell"], missing, text)
        row = next(line for line in lines if line.startswith(group["cell"]) or f" {group['cell']} " in line)
        if width == 100:  # fully legible: one line per group, the verdict mix whole on it
            counts = dict(reversed(part.split(" ")) for part in group["verdicts"].split(", "))
            assert all(f"{n}{LETTERS[v]}" in row for v, n in counts.items()), row
    if width == 100:
        assert len([line for line in lines if re.match(r"\s*(irnn|lstm|vanilla)\s", line)]) == 3


def test_wide_table_has_every_figure_and_markdown_keeps_every_column(quickstart):
    wide = runner.invoke(app, ["compare", str(quickstart), "--wide"], terminal_width=200).stdout
    words = " ".join(wide.split())  # a header may wrap onto a second line: "steps to" / "solve"
    for label in ("runs", "eval loss", "baseline", "steps to", "solve", "clip≈", "flags", "2E", "verdicts"):
        assert label in words
    md = runner.invoke(app, ["compare", str(quickstart), "-f", "markdown"]).stdout
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert set(vocabulary.METRICS) <= set(header)


# ---------------------------------------------------------------------------
# Never pool unlike runs


def test_compare_by_cell_clip_never_pools_two_tasks(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "adding", task="adding", cell="vanilla", seed=seed, final_loss=0.17, baseline=ADDING)
        write_run(tmp_path, "order", task="temporal_order", length=20, cell="vanilla", seed=seed, final_loss=1.4,
                  baseline=TEMPORAL)
    result = runner.invoke(app, ["compare", str(tmp_path), "--by", "cell,clip", "-f", "json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert sorted(g["baseline_loss"] for g in groups) == pytest.approx([ADDING, TEMPORAL])
    assert all(g["runs"] == 2 for g in groups)
    assert {g["task"] for g in groups} == {"adding", "temporal_order"}
    assert groups[0]["loss_ratio_iqm"] == pytest.approx(0.17 / ADDING)
    assert "would pool runs with different baselines; grouping by task" in result.stderr


def test_explicit_by_says_what_it_pools(tmp_path):
    for seed, steps in itertools.product((0, 1), (500, 2000)):
        write_run(tmp_path, "q", seed=seed, steps=steps)
    result = runner.invoke(app, ["compare", str(tmp_path), "--by", "cell"])
    assert result.exit_code == 0 and "groups pool runs that differ in steps" in result.stderr
    default = json.loads(runner.invoke(app, ["compare", str(tmp_path), "-f", "json"]).stdout)
    assert sorted(g["steps"] for g in default) == [500, 2000]  # by default the differing key is a column


# ---------------------------------------------------------------------------
# Statistics, against hand computations


@pytest.mark.parametrize("k, n", [(0, 2), (1, 2), (2, 2), (3, 7), (10, 10)])
def test_wilson_matches_the_formula(k, n):
    assert statistics.wilson(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    assert statistics.wilson(1, 2) == pytest.approx((0.0945312, 0.9054688), abs=1e-7)  # a known pair of bounds


def test_iqm_and_its_bootstrap_interval_against_a_hand_bca():
    x = np.array([0.03, 0.2, 0.21, 0.25, 0.4, 0.9, 1.3, 0.05])
    middle = np.sort(x)[2:6]  # n = 8: the middle 50% is the 3rd to 6th value
    assert statistics.iqm(x) == pytest.approx(middle.mean())
    low, high = statistics.iqm_interval(x)
    # BCa by hand (Efron 1987), on an independent resampling of 200 000 draws
    rng = np.random.default_rng(12345)
    stat = lambda a: np.sort(a, axis=-1)[..., 2:6].mean(axis=-1)  # noqa: E731
    theta, boot = stat(x), stat(x[rng.integers(0, len(x), (200_000, len(x)))])
    z0 = norm.ppf((boot < theta).mean())
    jack = np.array([_iqm_by_hand(np.delete(x, i)) for i in range(len(x))])  # leave-one-out IQMs
    d = jack.mean() - jack
    a = (d ** 3).sum() / (6 * ((d ** 2).sum()) ** 1.5)
    bounds = []
    for q in (0.025, 0.975):
        z = norm.ppf(q)
        bounds.append(np.quantile(boot, norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))))
    assert (low, high) == pytest.approx(bounds, rel=0.05)  # Monte Carlo error of two resamplings
    assert statistics.iqm_interval(x[:4]) == (None, None)  # below 5 runs: no interval


def _iqm_by_hand(a: np.ndarray) -> float:
    """scipy's trim_mean(a, 0.25): cut int(0.25·n) values from each end."""
    cut = int(0.25 * len(a))
    return float(np.sort(a)[cut:len(a) - cut].mean())


def test_mann_whitney_by_enumerating_every_split():
    base, cand = [0.9, 1.1, 1.0], [0.2, 0.4, 0.95]
    pooled = base + cand
    u_obs = sum((c < b) + 0.5 * (c == b) for c in cand for b in base)
    centre = len(base) * len(cand) / 2
    splits = list(itertools.combinations(range(6), 3))
    extreme = 0
    for s in splits:  # every way to call 3 of the 6 values "candidate": the exact null distribution
        c = [pooled[i] for i in s]
        b = [pooled[i] for i in range(6) if i not in s]
        u = sum((x < y) + 0.5 * (x == y) for x in c for y in b)
        extreme += abs(u - centre) >= abs(u_obs - centre) - 1e-12
    assert statistics.mann_whitney(cand, base) == pytest.approx(extreme / len(splits))
    assert statistics.prob_improvement(cand, base) == pytest.approx(u_obs / 9)
    assert statistics.smallest_p(2, 2) == pytest.approx(1 / 3) and statistics.smallest_p(3, 3) == pytest.approx(0.1)
    assert statistics.prob_improvement_interval(cand, base) == (None, None)  # 3 a side: no interval


def test_probability_of_improvement_interval_against_a_hand_bootstrap():
    base, cand = np.array([1.0, 0.9, 1.2, 0.8, 1.1]), np.array([0.5, 1.0, 0.7, 0.6, 0.95])
    rng = np.random.default_rng(7)
    draws = []
    for _ in range(40_000):
        c, b = rng.choice(cand, 5), rng.choice(base, 5)
        draws.append(((c[:, None] < b[None, :]) + 0.5 * (c[:, None] == b[None, :])).mean())
    low, high = statistics.prob_improvement_interval(cand, base)
    # P is a multiple of 1/50 (25 pairs, ties count ½): the two resamplings may part by a step or two
    assert (low, high) == pytest.approx(np.quantile(draws, [0.025, 0.975]), abs=0.041)


def test_fisher_by_the_hypergeometric_distribution():
    k1, n1, k2, n2 = 4, 5, 0, 5
    total, solved = n1 + n2, k1 + k2
    prob = lambda a: math.comb(n1, a) * math.comb(n2, solved - a) / math.comb(total, solved)  # noqa: E731
    observed = prob(k1)
    p = sum(prob(a) for a in range(max(0, solved - n2), min(n1, solved) + 1) if prob(a) <= observed * (1 + 1e-9))
    assert statistics.fisher(k1, n1, k2, n2) == pytest.approx(p)


# ---------------------------------------------------------------------------
# Verdicts, diffs, sorting, clipping that never fired


def test_a_tie_is_mixed_and_the_mix_is_whole(tmp_path):
    write_run(tmp_path, "t", seed=0, verdict="vanishing")
    write_run(tmp_path, "t", seed=1, verdict="healthy")
    [group] = json.loads(runner.invoke(app, ["compare", str(tmp_path), "-f", "json"]).stdout)
    assert group["verdict"] == "mixed" and group["verdicts"] == "1 vanishing, 1 healthy"
    assert "1V 1H" in runner.invoke(app, ["compare", str(tmp_path)]).stdout


def test_a_regression_says_whether_it_is_statistically_supported(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "few", seed=seed, final_loss=0.01 + 0.001 * seed)
        write_run(tmp_path / "worse", "few", seed=seed, final_loss=0.15 + 0.001 * seed)
    for seed in range(6):
        write_run(tmp_path / "many", "many", seed=seed, final_loss=0.01 + 0.001 * seed)
        write_run(tmp_path / "many-worse", "many", seed=seed, final_loss=0.15 + 0.001 * seed)
    few = json.loads(runner.invoke(app, ["compare", str(tmp_path / "few"), str(tmp_path / "worse" / "few"),
                                         "-f", "json"]).stdout)["diff"][0]
    assert few["status"] == "regression" and few["supported"] is False
    assert "not supported at 2 vs 2 runs (Mann–Whitney p=0.33, cannot go below 0.33)" in few["reasons"]
    assert few["p_better"] == 0.0 and few["p_better_ci_low"] is None
    many = json.loads(runner.invoke(app, ["compare", str(tmp_path / "many"), str(tmp_path / "many-worse"),
                                          "-f", "json"]).stdout)["diff"][0]
    assert many["status"] == "regression" and many["supported"] is True and many["p_loss"] < 0.01
    assert many["p_better"] == 0.0 and many["p_better_ci_high"] == 0.0
    shown = runner.invoke(app, ["compare", str(tmp_path / "many"), str(tmp_path / "many-worse")], terminal_width=100)
    assert "P(better)" in shown.stdout and "0→0 [0, 0]" not in shown.stdout and "0 [0, 0]" in shown.stdout
    assert "REGRESSION: " in shown.stderr and "supported (Mann–Whitney p=" in shown.stderr


def test_numbers_sort_as_numbers(tmp_path):
    for bias in (1.0, -2.0, 0.5, -1.0, 3e-7, 1e-7):
        write_run(tmp_path, "fb", forget_bias=bias)
    groups = json.loads(runner.invoke(app, ["compare", str(tmp_path), "-f", "json"]).stdout)
    assert [g["forget_bias"] for g in groups] == [-2.0, -1.0, 1e-7, 3e-7, 0.5, 1.0]


def test_a_clip_that_never_fired_says_so(tmp_path):
    write_run(tmp_path, "c", clip={"kind": "value", "clip_value": 0.5}, clip_rate=0.0)
    write_run(tmp_path, "c", clip={"kind": "norm", "max_norm": 1.0}, clip_rate=0.25)
    write_run(tmp_path, "c", clip={"kind": "none"}, clip_rate=0.0)
    table = runner.invoke(app, ["compare", str(tmp_path)], terminal_width=100).stdout
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip().startswith(("value", "norm", "none"))}
    assert "never" in rows["value(0.5)"] and "25%" in rows["norm(1.0)"] and "never" not in rows["none"]
    groups = json.loads(runner.invoke(app, ["compare", str(tmp_path), "-f", "json"]).stdout)
    assert sorted(g["clip_rate_mean"] for g in groups) == [0.0, 0.0, 0.25]


# ---------------------------------------------------------------------------
# Damaged runs


def damage(run_dir, how: str):
    if how == "empty metrics":
        (run_dir / results.METRICS).write_text("")
        return run_dir / results.METRICS, "empty"
    if how == "truncated metrics":
        text = (run_dir / results.METRICS).read_text().splitlines()
        (run_dir / results.METRICS).write_text("\n".join(text[:2]) + "\n")
        return run_dir / results.METRICS, "1 of 2000 steps (cut short)"
    if how == "truncated profile":
        np.savez(run_dir / results.PROFILE, step=np.arange(3), grad_norm=np.ones((3, 40)))
        data = (run_dir / results.PROFILE).read_bytes()
        (run_dir / results.PROFILE).write_bytes(data[: len(data) // 2])
        return run_dir / results.PROFILE, "truncated or corrupt"
    (run_dir / results.CONFIG).unlink()
    return run_dir / results.CONFIG, "missing"


@pytest.mark.parametrize("how", ["empty metrics", "truncated metrics", "truncated profile", "missing config"])
def test_a_damaged_run_is_named_once_and_skipped(quickstart, how, tmp_path):
    path, why = damage(sorted(quickstart.iterdir())[0], how)
    for command, code in ((["compare", str(quickstart)], 0), (["report", str(quickstart), "-o",
                                                                str(tmp_path / "r.html")], 0)):
        result = runner.invoke(app, command)
        assert result.exit_code == code and "Traceback" not in result.output, (command, result.output)
        named = [line for line in result.stderr.splitlines() if str(path) in line]
        assert len(named) == 1 and named[0].startswith(f"skipped: {path}: {why}"), result.stderr
    groups = json.loads(runner.invoke(app, ["compare", str(quickstart), "-f", "json"]).stdout)
    assert sum(g["runs"] for g in groups) == 5
    result = runner.invoke(app, ["compare", str(quickstart), "--check", "--expect", str(EXPECT)])
    assert result.exit_code == 1 and "damaged run" in result.stderr  # a gate never passes on part of the runs


EXPECT = None


@pytest.fixture(autouse=True)
def _expect_file(tmp_path_factory):
    global EXPECT
    EXPECT = tmp_path_factory.mktemp("expect") / "expect.yaml"
    EXPECT.write_text("name: quickstart\nmodel: {cell: lstm}\n"
                      "expect:\n  - where: {cell: lstm}\n    solved_rate: '>= 0.5'\n")


def test_nothing_left_after_the_damaged_runs_is_bad_input(tmp_path):
    run = write_run(tmp_path, "one")
    (run / results.METRICS).write_text("")
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.stderr and "Traceback" not in result.output


# ---------------------------------------------------------------------------
# A sweep knows its runs

TINY = """\
# gradlab run tiny.yaml
name: tiny
task: {name: adding, length: 5, eval_size: 32}
model: {hidden: 8}
train: {steps: 20, batch_size: 8, eval_every: 10}
seeds: [0, 1]
grid:
  model.cell: [vanilla, lstm]
expect:
  - where: {cell: lstm}
    runs: 2
"""


def test_a_rerun_with_set_keeps_both_sweeps_apart(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "results"
    first = runner.invoke(app, ["run", str(config), "--out", str(out), "-q", "--jobs", "1", "-f", "json"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["run", str(config), "--out", str(out), "-q", "--jobs", "1", "-f", "json",
                                 "--set", "train.steps=30"])
    assert second.exit_code == 0, second.output
    own = json.loads(second.stdout)
    assert sum(g["runs"] for g in own) == 4 and "steps" not in own[0]  # only its own runs: steps is one value
    table = runner.invoke(app, ["run", str(config), "--out", str(out), "-q", "--jobs", "1", "--set",
                                "train.steps=30"], terminal_width=100).stdout
    assert "tiny: 4 runs" in table and "--set train.steps=30" in table
    both = json.loads(runner.invoke(app, ["compare", str(out), "-f", "json"]).stdout)
    assert sorted((g["cell"], g["steps"]) for g in both) == [("lstm", 20), ("lstm", 30), ("vanilla", 20),
                                                              ("vanilla", 30)]
    doc = json.loads((out / "tiny" / "experiment.json").read_text())
    assert [s["set"] for s in doc["sweeps"]] == [[], ["train.steps=30"]]  # the third added nothing to train
    assert all(len(s["runs"]) == 4 and s["expect"] and "seconds" in s for s in doc["sweeps"])
    assert not set(doc["sweeps"][0]["runs"]) & set(doc["sweeps"][1]["runs"])
    check = runner.invoke(app, ["compare", str(out), "--check"])
    assert check.exit_code == 0, check.output
    assert f"the expectations of gradlab run {config}, on its 4 runs" in check.stderr
    assert f"the expectations of gradlab run {config} --set train.steps=30, on its 4 runs" in check.stderr


# ---------------------------------------------------------------------------
# The HTML report


def test_html_report_fits_1200_px_with_contents_and_the_terminal_labels(quickstart, tmp_path, render_dom):
    for seed in (0, 1):  # a second experiment, of another task, under the same root
        write_run(quickstart.parent, "order", task="temporal_order", length=20, cell="gru", seed=seed,
                  final_loss=0.7, baseline=TEMPORAL, clip={"kind": "zclip", "alpha": 0.97, "z_thresh": 2.5,
                                                           "warmup": 25})
    page = tmp_path / "report.html"
    assert runner.invoke(app, ["report", str(quickstart.parent), "-o", str(page)]).exit_code == 0
    html = page.read_text()
    assert html.count("<section id=") == 2 and "<nav><h2>Contents</h2>" in html
    for label in ("solved", "loss ÷ baseline", "horizon", "clipped", "verdicts"):
        assert f"<th>{label}</th>" in html
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", """<script>
      window.addEventListener('load', () => {
        const tables = [...document.querySelectorAll('table.comparison')];
        document.body.dataset.right = Math.max(...tables.map(t => t.getBoundingClientRect().right));
        document.body.dataset.scroll = document.documentElement.scrollWidth;
        document.body.dataset.links = document.querySelectorAll('nav a').length;
      });</script></body>"""))
    dom = render_dom(probe, "--window-size=1200,900")
    right = float(re.search(r'data-right="([0-9.]+)"', dom).group(1))
    scroll = int(re.search(r'data-scroll="([0-9]+)"', dom).group(1))
    assert right <= 1200 and scroll <= 1200, (right, scroll)
    assert re.search(r'data-links="2"', dom)


# ---------------------------------------------------------------------------
# Found in review


@pytest.mark.parametrize("study", ["clipping", "arjovsky2016_copy", "pascanu2013_clipping"])
def test_committed_studies_fit_80_columns_whole(study):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results" / study
    table = comparison.compare(comparison.load_frame([root]))
    console = Console(width=80, record=True, markup=False, emoji=False, highlight=False)
    console.print(rich_table(table, study, width=80))
    text = console.export_text()
    assert all(len(line.rstrip()) <= 80 for line in text.splitlines()) and "verdicts" in text
    tokens = set(re.findall(r"[^\s()\[\],–→]+", text))
    for group in comparison.to_records(table):
        letters = [f"{n}{LETTERS[v]}" for n, v in (p.split(" ") for p in group["verdicts"].split(", "))]
        assert set(letters) <= tokens and f"{group['solved']}/{group['runs']}" in tokens, (group, text)
        assert sig3(group["loss_ratio_iqm"]) in tokens


def test_diff_tests_every_group_also_at_whole_float_values(tmp_path):
    for seed, lr in itertools.product(range(6), (0.1, 1.0)):
        write_run(tmp_path / "base", "lrs", seed=seed, lr=lr, final_loss=0.01 + 0.001 * seed)
        write_run(tmp_path / "cand", "lrs", seed=seed, lr=lr, final_loss=0.15 + 0.001 * seed)
    diff = json.loads(runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "cand"),
                                          "-f", "json"]).stdout)["diff"]
    assert sorted(r["lr"] for r in diff) == [0.1, 1.0]
    assert all(r["p_loss"] is not None and r["supported"] is True for r in diff), diff


def test_a_diff_by_cell_never_pools_two_tasks(tmp_path):
    for side, loss in (("base", 0.01), ("cand", 0.02)):
        for seed in range(2):
            write_run(tmp_path / side, "adding", cell="vanilla", seed=seed, final_loss=loss + 0.001 * seed)
            write_run(tmp_path / side, "order", task="temporal_order", length=20, cell="vanilla", seed=seed,
                      final_loss=1.3 + 0.001 * seed, baseline=TEMPORAL)
    result = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "cand"), "--by", "cell,clip",
                                 "-f", "json"])
    diff = json.loads(result.stdout)["diff"]
    assert sorted(r["task"] for r in diff) == ["adding", "temporal_order"]
    assert all(r["runs_base"] == 2 and r["runs_candidate"] == 2 for r in diff)
    assert "grouping by task" in result.stderr


def test_old_expectations_still_cover_the_runs_no_new_sweep_claims(tmp_path):
    old = [write_run(tmp_path, "q", cell=cell, seed=seed) for cell in ("lstm", "vanilla") for seed in (0, 1)]
    new = [write_run(tmp_path, "q", cell="lstm", seed=seed, steps=500) for seed in (0, 1)]
    expect = [{"where": {"cell": "lstm"}, "runs": 2}]
    doc = {"name": "q", "expect": expect, "sweeps": [{"seconds": 1.0}]}  # written before sweeps recorded runs
    results.write_json(tmp_path / "q" / "experiment.json", doc)
    doc["sweeps"].append({"id": "x", "source": "q.yaml", "set": ["train.steps=500"], "expect": expect,
                          "runs": [results.run_hash(p.name) for p in new]})
    results.write_json(tmp_path / "q" / "experiment.json", doc)
    from gradlab.expectations import check_results

    checks = check_results(tmp_path)
    assert sorted(c["runs"] for c in checks) == [2, 4] and all(c["passed"] for c in checks)
    assert len(old) == 4


def test_a_diverged_run_keeps_the_iqm_and_its_spread_together(tmp_path):
    for seed in range(7):
        write_run(tmp_path, "d", seed=seed, final_loss=float("nan") if seed < 2 else 0.1 + 0.01 * seed)
    assert statistics.iqm_interval([0.5, 0.6, 0.7, 0.8, 0.9, math.inf]) == (None, None)
    result = runner.invoke(app, ["compare", str(tmp_path), "-f", "json"])
    [group] = json.loads(result.stdout)  # strict JSON: no Infinity
    assert group["loss_ratio_max"] is None and group["loss_ratio_ci_low"] is None
    assert "Infinity" not in result.stdout
    assert "(0.72–inf)" in runner.invoke(app, ["compare", str(tmp_path)], terminal_width=100).stdout


def test_a_tie_with_a_bad_verdict_is_a_regression_from_healthy(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "base", "v", seed=seed, verdict="healthy")
        write_run(tmp_path / "cand", "v", seed=seed, verdict="exploding" if seed else "healthy")
    [row] = json.loads(runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "cand"),
                                           "-f", "json"]).stdout)["diff"]
    assert row["verdict_candidate"] == "mixed" and row["status"] == "regression" and "verdict healthy" in row["reasons"]


def test_the_floor_of_p_is_only_claimed_for_the_exact_test():
    assert statistics.exact_applies([0.1, 0.2], [0.3, 0.4])
    assert not statistics.exact_applies([math.inf] * 3, [0.1, 0.2, 0.3])  # ties: the normal approximation


def test_a_setting_every_run_of_a_group_shares_is_not_proposed_again(tmp_path):
    """``model.forget_bias: chrono`` in every run is no grouping column (it does not vary), yet the groups use
    it: the diagnosis must not propose it. The same runs without the setting are still told to try it."""
    for name, bias in (("fb", "chrono"), ("plain", None)):
        for cell in ("lstm", "gru"):
            for seed in (0, 1):
                write_run(tmp_path, name, cell=cell, seed=seed, forget_bias=bias, verdict="vanishing", horizon=3,
                          final_loss=0.17)
    frame = comparison.load_frame([tmp_path / "fb"])
    assert "forget_bias" not in comparison.group_columns(frame)[0]  # what the fix is for: not a group column
    groups = {}
    for name in ("fb", "plain"):
        result = runner.invoke(app, ["compare", str(tmp_path / name), "-f", "json"])
        assert result.exit_code == 0, result.output
        groups[name] = {g["cell"]: g for g in json.loads(result.stdout)}
    for cell in ("lstm", "gru"):
        used, plain = groups["fb"][cell]["diagnosis"], groups["plain"][cell]["diagnosis"]
        assert used["cases"] == plain["cases"] == [vocabulary.UNREACHED]
        assert "model.forget_bias: chrono" not in used["remedies"] and "model.forget_bias: chrono" in plain["remedies"]
        assert [r for r in plain["remedies"] if r != "model.forget_bias: chrono"] == used["remedies"]  # the rest stays
        assert "forget_bias" not in groups["fb"][cell]  # carried beside the table, not as a column
    table = runner.invoke(app, ["compare", str(tmp_path / "fb")])
    assert table.exit_code == 0 and table.stdout.count("try:") == 2 and "chrono" not in table.stdout
    from gradlab.reports import json_document

    for g in json_document(comparison.compare(frame))["groups"]:  # compare --check's JSON
        assert "model.forget_bias: chrono" not in g["diagnosis"]["remedies"]
