"""Two independent gradient flags, exploding and vanishing (issue 23): raised, recorded, read back, counted, asserted.

The hand computations: a norm series of ones with one norm of 200 at step 80 has exactly one spike, of ratio
200 (the median of the 50 ones before it is 1; 200 > spike_factor = 50); a profile p[t] = 0.5^(S-1-t) has
dependency ratio p[0] / p[S-1] = 0.5^(S-1), below vanishing_ratio = 1e-3 for S = 40 (1.8e-12) and above it
for S = 9 (0.5^8 = 3.9e-3).
"""

import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import gradlab
from gradlab import comparison, diagnostics, expectations, readers, results
from gradlab.cli import app
from gradlab.diagnostics import DEFAULTS, ExplosionWatch, Thresholds, detect_spikes, verdict
from gradlab.tables import flags_text
from gradlab.training import train
from gradlab.vocabulary import BOTH, verdict_label

runner = CliRunner()

SPIKY = [1.0] * 80 + [200.0] + [1.0] * 19  # (100,): one spike at index 80, ratio 200
STEADY = [1.0] * 100


def geometric(S: int, a: float = 0.5) -> np.ndarray:
    """p[t] = a^(S-1-t): the profile of h_t = a·h_{t-1} with the loss at the last step; (S,)."""
    return a ** ((S - 1) - np.arange(S, dtype=np.float64))


def test_a_run_that_spikes_and_vanishes_is_flagged_both():
    label, fig = verdict(SPIKY, 0, geometric(40), dependency=0)
    assert label == "vanishing+exploding" == BOTH
    assert fig["exploding"] is True and fig["vanishing"] is True
    # the figures behind each flag, against the hand computation in the module docstring
    assert fig["spikes"] == 1 and fig["spike_ratio_max"] == pytest.approx(200.0)
    assert fig["nonfinite_steps"] == 0
    assert fig["dependency_ratio"] == pytest.approx(0.5 ** 39, rel=1e-12)
    assert fig["dependency_lag"] == 39


def test_each_flag_holds_alone_and_the_label_names_only_what_holds():
    assert verdict(SPIKY, 0, geometric(9), dependency=0)[0] == "exploding"  # ratio 0.5^8 = 3.9e-3: reached
    assert verdict(STEADY, 2, geometric(9), dependency=0)[0] == "exploding"  # a non-finite step
    assert verdict(STEADY, 0, geometric(40), dependency=0)[0] == "vanishing"
    assert verdict(STEADY, 0, geometric(9), dependency=0)[0] == "healthy"
    # the threshold is strict and configurable: at 0.5^8 a vanishing_ratio just above it flags vanishing
    assert verdict(STEADY, 0, geometric(9), 0, Thresholds(vanishing_ratio=0.5 ** 8))[1]["vanishing"] is False
    assert verdict(STEADY, 0, geometric(9), 0, Thresholds(vanishing_ratio=0.0040))[1]["vanishing"] is True


def test_the_label_of_every_pair_of_flags():
    assert [verdict_label(e, v) for e in (True, False) for v in (True, False, None)] == \
        ["vanishing+exploding", "exploding", "exploding", "vanishing", "healthy", "not exploding"]
    assert verdict_label(None, True) is None


def test_the_exploding_flag_so_far_equals_the_rule_on_every_prefix():
    """ExplosionWatch checks only the new steps at each evaluation; on any prefix it must give what
    detect_spikes gives on the whole prefix (including the first window, whose reference still moves)."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 150))
        x = np.exp(rng.normal(0, 1, n))
        x[rng.integers(0, n, 2)] *= 10 ** rng.uniform(0, 3, 2)
        x[rng.random(n) < 0.05] = np.nan
        th = Thresholds(spike_factor=float(rng.choice([5, 20, 50])), spike_window=int(rng.choice([3, 10, 50])))
        watch, done = ExplosionWatch(th), 0
        for end in sorted({*rng.integers(1, n + 1, 5).tolist(), n}):
            for norm in x[done:end]:
                watch.add(float(norm))
            done = end
            assert watch.exploding() == (len(detect_spikes(x[:end], th.spike_factor, th.spike_window)) > 0)
    watch = ExplosionWatch()
    watch.add(1.0, nonfinite=True)
    assert watch.exploding()


def test_chaotic_forward_dynamics_raise_the_exploding_flag_without_a_spike():
    """λ₁ > 0 (Mikhaeil et al. 2022) is an explosion flag of its own: a tanh RNN with U = 3·(random orthogonal)
    is chaotic (every direction is stretched 3x where tanh is not saturated: λ₁ > 0), one with U = 0.5·Q
    contracts (λ₁ <= log 0.5). gradlab.lyapunov measures them; a steady norm series has no spike."""
    from gradlab import lyapunov
    from gradlab.cells import RecurrentNet

    x = torch.randn(200, 8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lmax = {}
    for gain in (0.5, 3.0):
        net = RecurrentNet("orthogonal", 2, 16, 1, seed=0, dtype=torch.float64)
        with torch.no_grad():
            net.weight_hh.mul_(gain)
        lmax[gain] = lyapunov.summary(lyapunov.model_spectrum(net, x, 2))["lyapunov_max"]
    assert lmax[0.5] <= math.log(0.5) + 1e-9 < 0 < diagnostics.LYAPUNOV_TOL < lmax[3.0], lmax
    assert diagnostics.is_chaotic(lmax[3.0]) is True and diagnostics.is_chaotic(lmax[0.5]) is False
    assert diagnostics.is_chaotic(None) is None and diagnostics.is_chaotic(float("nan")) is None
    assert diagnostics.is_chaotic(-math.inf) is False  # a saturated state contracts
    assert diagnostics.is_chaotic(diagnostics.LYAPUNOV_TOL / 2) is False  # within the estimate's resolution
    profile = geometric(9)  # not vanishing: 0.5^8 = 3.9e-3 > 1e-3
    label, figures = verdict(STEADY, 0, profile, 0, chaotic=diagnostics.is_chaotic(lmax[3.0]))
    assert (label, figures["exploding"], figures["chaotic"], figures["spikes"]) == ("exploding", True, True, 0)
    label, figures = verdict(STEADY, 0, profile, 0, chaotic=diagnostics.is_chaotic(lmax[0.5]))
    assert (label, figures["exploding"], figures["chaotic"]) == ("healthy", False, False)
    assert verdict(STEADY, 0, profile, 0)[1]["chaotic"] is None  # not measured: the spikes alone decide
    watch = ExplosionWatch()
    watch.add(1.0)
    watch.add_lyapunov(None)
    assert not watch.exploding() and watch.chaotic is None
    watch.add_lyapunov(lmax[3.0])
    watch.add_lyapunov(lmax[0.5])  # once chaotic at an evaluation, the run so far stays flagged
    assert watch.exploding() and watch.chaotic is True


def test_the_chaos_margin_is_the_estimates_error_over_the_steps_it_averaged():
    """The QR estimate of λ₁ after T steps is off by about c/T (diagnostics.LYAPUNOV_ERROR, c = 2.3): a fixed
    0.01 read a contracting network chaotic at a short length. A relu rnn with U = [[0.9, 3], [0, 0.9]] from a
    positive state (relu is the identity there: the linear map, λ₁ = log 0.9 exactly, its eigenvalues' modulus)
    reads λ₁ > 0.01 over 20 steps, not chaotic with the margin of the 18 it averaged over; a tanh rnn of
    U = 3·(random orthogonal) at T = 200 is still chaotic."""
    from gradlab import lyapunov
    from gradlab.cells import RecurrentNet

    U = torch.tensor([[0.9, 3.0], [0.0, 0.9]], dtype=torch.float64)
    assert torch.linalg.eigvals(U).abs().max().item() == pytest.approx(0.9)  # the limit: log 0.9 < 0
    h0 = torch.rand(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.0
    params = [torch.zeros(2, 1, dtype=torch.float64), U, torch.zeros(2, dtype=torch.float64),
              torch.zeros(2, dtype=torch.float64)]  # weight_ih, weight_hh, bias_ih, bias_hh
    short = lyapunov.spectrum("rnn", "relu", torch.zeros(20, 8, 1, dtype=torch.float64), h0, params, 2)
    lmax = short.exponents[0].item()
    assert short.steps == 18 and lmax > diagnostics.LYAPUNOV_TOL  # the fixed margin read it chaotic
    assert diagnostics.is_chaotic(lmax, short.steps) is False and diagnostics.is_chaotic(lmax) is True
    long = lyapunov.spectrum("rnn", "relu", torch.zeros(400, 8, 1, dtype=torch.float64), h0, params, 2)
    assert long.steps == 390 and long.exponents[0].item() < 0  # towards log 0.9

    x = torch.randn(200, 8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    net = RecurrentNet("orthogonal", 2, 16, 1, seed=0, dtype=torch.float64)
    with torch.no_grad():
        net.weight_hh.mul_(3.0)
    spectra = lyapunov.model_spectrum(net, x, 2)
    assert lyapunov.averaged_steps(spectra) == 190
    assert diagnostics.is_chaotic(lyapunov.summary(spectra)["lyapunov_max"], 190) is True

    assert diagnostics.chaos_margin(None) == diagnostics.LYAPUNOV_TOL
    assert diagnostics.chaos_margin(18) == pytest.approx(2.3 / 18)
    assert diagnostics.chaos_margin(1000) == diagnostics.LYAPUNOV_TOL  # beyond 230 steps: the resolution
    with pytest.raises(ValueError, match="steps must be >= 1"):
        diagnostics.chaos_margin(0)
    watch = ExplosionWatch()
    watch.add(1.0)
    watch.add_lyapunov(lmax, short.steps)
    assert watch.chaotic is False and not watch.exploding()


def test_a_run_whose_dynamics_are_chaotic_is_flagged_exploding_at_each_evaluation_and_in_its_summary(monkeypatch):
    """A registry entry whose recurrent matrix is 3·(random orthogonal) (chaotic: the test above), trained at lr 0
    so it stays so, with diagnostics.lyapunov on: its spikes are none (the weights never move), yet each
    evaluation and the summary say exploding, by λ₁ > 0; with diagnostics.lyapunov off the flag is the spikes'."""
    from gradlab import cells

    def loud(layer, gen):
        cells.init_orthogonal(layer, gen)
        with torch.no_grad():
            layer.weight_hh.mul_(3.0)

    monkeypatch.setitem(cells.CELLS, "loud", dataclasses.replace(cells.CELLS["vanilla"], init=loud))
    config = {**tiny_config(steps=20, eval_every=10, lr=0.0),
              "model": {"cell": "loud", "hidden": 16}, "diagnostics": {"lyapunov": 2}}
    out = train(config)
    evals = [r for r in out["rows"] if r["kind"] == "eval"]
    assert all(r["lyapunov_max"] > diagnostics.chaos_margin(r["lyapunov_steps"]) for r in evals), evals
    assert {r["lyapunov_steps"] for r in evals} == {10 - 1}  # T = 10 less its transient, min(10, T // 10)
    assert [r["exploding"] for r in evals] == [1] * len(evals)
    s = out["summary"]
    assert (s["spikes"], s["nonfinite_steps"], s["chaotic"], s["exploding"]) == (0, 0, True, True)
    off = train({**config, "diagnostics": {}})["summary"]
    assert (off["chaotic"], off["exploding"]) == (None, False)


def tiny_config(**train):
    """A tiny gradlab run whose norms spike (test_monitor's): an IRNN trained with SGD at lr 0.1."""
    return {"name": "t", "task": {"name": "adding", "length": 10, "eval_size": 16},
            "model": {"cell": "irnn", "hidden": 8, "nonlinearity": None, "skip": 2, "engine": "scan"},
            "train": {"steps": 150, "batch_size": 8, "optimizer": "sgd", "lr": 0.1, "clip": {"kind": "none"},
                      "tbptt": None, "eval_every": 50, "on_nonfinite": "skip", **train},
            "diagnostics": {}, "seed": 0, "device": "cpu", "dtype": "float32", "threads": 1}


def test_a_run_records_both_flags_in_its_summary_and_at_every_evaluation():
    out = train(tiny_config())
    summary, rows = out["summary"], out["rows"]
    assert isinstance(summary["exploding"], bool) and isinstance(summary["vanishing"], bool)
    assert summary["verdict"] == verdict_label(summary["exploding"], summary["vanishing"])
    assert summary["exploding"] == (summary["spikes"] > 0 or summary["nonfinite_steps"] > 0)
    assert summary["vanishing"] == (summary["dependency_ratio"] < DEFAULTS.vanishing_ratio)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 50, 100, 150]
    norms = [r["grad_norm"] if r["updates"] else math.nan for r in rows if r["kind"] == "train"]
    for r in evals:  # exploding on the steps so far, vanishing on this evaluation's own profile
        so_far = norms[:r["step"]]
        assert r["exploding"] == int(len(detect_spikes(so_far)) > 0)
        assert r["vanishing"] == int(r["dependency_ratio"] < DEFAULTS.vanishing_ratio)
    assert (evals[-1]["exploding"], evals[-1]["vanishing"]) == (summary["exploding"], summary["vanishing"])


# ---------------------------------------------------------------------------
# Result sets on disk: recorded flags, and old summaries that have only the label


def save(root, seed, label, *, ratio=0.5, flags=None, cell="vanilla", vanishing_ratio=1e-3, status="ok"):
    """One finished run by hand; ``flags``: {"exploding", "vanishing"} as a new summary records them, None:
    a summary from before the flags (its label only)."""
    config = {"name": "flags", "task": {"name": "adding", "length": 40, "eval_size": 500, "variant": None},
              "model": {"cell": cell, "hidden": 8},
              "train": {"steps": 10, "eval_every": 10, "clip": {"kind": "none"}, "tbptt": None},
              "diagnostics": {} if vanishing_ratio is None else {"vanishing_ratio": vanishing_ratio},
              "device": "cpu", "dtype": "float64", "threads": 1, "seed": seed}
    summary = {"status": status, "final_loss": 0.17, "baseline_loss": 1 / 6, "solved": False, "diverged": False,
               "steps_done": 10, "verdict": label, "dependency_ratio": ratio, "horizon": 3, **(flags or {})}
    rows = [{"kind": "train", "step": s, "loss": 0.1} for s in (1, 10)] + \
        [{"kind": "eval", "step": s} for s in (0, 10)]
    path = root / "flags" / f"cell={cell}_seed={seed}_{seed:016x}"
    results.save_run(path, config, {"torch": "2.13.0"}, rows, summary)
    return path


@pytest.mark.parametrize("label, ratio, vanishing_ratio, flags, read_as", [
    # the old rule named exploding first: the ratio on disk, against the config's threshold, tells vanishing
    ("exploding", 4e-8, 1e-3, (True, True), BOTH),
    ("exploding", 0.2, 1e-3, (True, False), "exploding"),
    ("exploding", 4e-8, 1e-9, (True, False), "exploding"),  # the run's own threshold, not the default
    ("exploding", 4e-8, None, (True, None), "exploding"),  # no threshold in the config: unknown
    ("exploding", None, 1e-3, (True, None), "exploding"),  # no ratio: unknown
    ("vanishing", 4e-8, 1e-3, (False, True), "vanishing"),
    ("healthy", 0.2, 1e-3, (False, False), "healthy"),
])
def test_a_summary_from_before_the_flags_reads_as_documented(tmp_path, label, ratio, vanishing_ratio, flags,
                                                             read_as):
    run = save(tmp_path, 0, label, ratio=ratio, vanishing_ratio=vanishing_ratio)
    summary = readers.check_run(run)["summary"]
    assert (summary["exploding"], summary["vanishing"]) == flags
    assert summary["verdict"] == read_as
    assert json.loads((run / "summary.json").read_text())["verdict"] == label  # the file is never rewritten


def test_recorded_flags_are_kept_and_must_be_true_false_or_null(tmp_path):
    run = save(tmp_path, 0, "exploding", ratio=4e-8, flags={"exploding": True, "vanishing": False})
    summary = readers.check_run(run)["summary"]
    assert (summary["exploding"], summary["vanishing"], summary["verdict"]) == (True, False, "exploding")
    bad = save(tmp_path, 1, "exploding", flags={"exploding": "yes", "vanishing": False})
    with pytest.raises(results.Damaged, match="exploding: expected true or false or null"):
        readers.check_run(bad)
    failed = save(tmp_path, 2, None, status="failed", ratio=None)
    summary = readers.with_flags(json.loads((failed / "summary.json").read_text()), {})
    assert (summary["exploding"], summary["vanishing"]) == (None, None)


def flagged_group(root):
    """Three seeds of one group: vanishing+exploding (new summary), exploding (old, re-derived as both) and
    vanishing (new); and one healthy lstm run."""
    save(root, 0, BOTH, ratio=1e-9, flags={"exploding": True, "vanishing": True})
    save(root, 1, "exploding", ratio=1e-9)  # old: exploding hid vanishing
    save(root, 2, "vanishing", ratio=1e-9, flags={"exploding": False, "vanishing": True})
    save(root, 3, "healthy", ratio=0.3, cell="lstm", flags={"exploding": False, "vanishing": False})
    return root / "flags"


def test_compare_counts_each_flag_over_seeds(tmp_path):
    folder = flagged_group(tmp_path)
    out = runner.invoke(app, ["compare", str(folder), "-f", "json"])
    assert out.exit_code == 0, out.output
    groups = {g["cell"]: g for g in json.loads(out.stdout)}
    vanilla, lstm = groups["vanilla"], groups["lstm"]
    assert vanilla["schema"] == comparison.SCHEMA == "gradlab.compare/4"  # 4: each group's diagnosis
    assert (vanilla["exploding_runs"], vanilla["vanishing_runs"]) == (2, 3)
    assert (lstm["exploding_runs"], lstm["vanishing_runs"]) == (0, 0)
    assert vanilla["verdict"] == BOTH and vanilla["verdicts"] == "2 vanishing+exploding, 1 vanishing"
    assert flags_text(vanilla) == "2E 3V" and flags_text(lstm) == "–"
    rows = csv.DictReader(io.StringIO(runner.invoke(app, ["compare", str(folder), "-f", "csv"]).stdout))
    row = next(r for r in rows if r["cell"] == "vanilla")
    assert (row["exploding_runs"], row["vanishing_runs"]) == ("2", "3")  # whole numbers, not 2.0
    wide = runner.invoke(app, ["compare", str(folder), "--wide"]).stdout
    assert "2E 3V" in wide and "2VE 1V" in wide


def test_a_diff_regresses_when_a_flag_appears_behind_another(tmp_path):
    """A healthy base against a candidate whose runs are all vanishing+exploding: the vanishing flag is not
    hidden behind exploding in the verdict regression."""
    for seed in range(2):
        save(tmp_path / "base", seed, "healthy", ratio=0.3, flags={"exploding": False, "vanishing": False})
        save(tmp_path / "cand", seed, BOTH, ratio=1e-9, flags={"exploding": True, "vanishing": True})
    out = runner.invoke(app, ["compare", str(tmp_path / "base" / "flags"), str(tmp_path / "cand" / "flags"),
                              "-f", "json"])
    (row,) = json.loads(out.stdout)["diff"]
    assert row["status"] == "regression" and "verdict healthy" in row["reasons"], row


def test_a_diff_from_a_flagged_base_regresses_only_beyond_the_seed_allowance(tmp_path):
    """From a base that is not healthy (3 of 4 runs vanishing), a flag's share must rise by more than the solved
    rate's allowance (0.25): exploding 0 -> 3/4 regresses, vanishing 3/4 -> 4/4 (one seed) does not."""
    no, v = {"exploding": False, "vanishing": False}, {"exploding": False, "vanishing": True}
    for seed in range(4):
        save(tmp_path / "base", seed, "vanishing" if seed else "healthy", ratio=1e-9 if seed else 0.3,
             flags=v if seed else no)
        save(tmp_path / "worse", seed, BOTH if seed else "vanishing", ratio=1e-9,
             flags={"exploding": True, "vanishing": True} if seed else v)
        save(tmp_path / "same", seed, "vanishing", ratio=1e-9, flags=v)

    def row(cand):
        out = runner.invoke(app, ["compare", str(tmp_path / "base" / "flags"), str(tmp_path / cand / "flags"),
                                  "-f", "json"])
        (r,) = json.loads(out.stdout)["diff"]
        return r

    worse, same = row("worse"), row("same")
    assert comparison.TOLERANCES["solved_rate"] == 0.25
    assert worse["status"] == "regression" and "verdict vanishing (3 vanishing, 1 healthy)" in worse["reasons"], worse
    assert "verdict" not in same["reasons"], same


def test_expect_asserts_either_flag_or_the_label(tmp_path):
    folder = flagged_group(tmp_path)
    entries = [{"where": {"cell": "vanilla"}, "vanishing_runs": "== runs"},
               {"where": {"cell": "vanilla"}, "exploding_runs": ">= runs / 2"},
               {"where": {"cell": "vanilla"}, "exploding_runs": "== runs"},
               {"where": {"cell": "vanilla"}, "verdict": "vanishing+exploding"},
               {"where": {"cell": "vanilla"}, "verdict": "exploding"},
               {"where": {"cell": "lstm"}, "exploding_runs": 0, "vanishing_runs": 0, "verdict": "healthy"}]
    report = expectations.check_results(folder, entries)
    assert [r["passed"] for r in report] == [True, True, False, True, False, True]
    failed = report[2]["groups"][0]["checks"][0]
    assert (failed["observed"], failed["expected"]) == (2, 3.0)


def test_an_unknown_label_is_refused_with_the_labels_and_the_flag_columns():
    _, problems = expectations.parse([{"verdict": "exploding+vanishing"}])
    ((path, message),) = problems
    assert path == "expect[0].verdict"
    assert "did you mean 'vanishing+exploding'" in message and "vanishing_runs" in message


# ---------------------------------------------------------------------------
# On a user's own model


def test_the_monitor_never_says_healthy_without_a_profile():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    monitor = gradlab.GradientMonitor(model)
    for _ in range(60):  # steady norms: no spike, no non-finite step
        model.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        monitor.step()
    summary = monitor.summary()
    assert monitor.verdict() == "not exploding" != "healthy"
    assert summary["exploding"] is False and summary["vanishing"] is None and "not measured" in summary["note"]


def test_watch_reports_both_flags():
    torch.manual_seed(0)
    rnn = nn.RNN(2, 8, nonlinearity="tanh")
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.1)  # a contracting recurrence: the gradient vanishes over 40 steps
    x = torch.randn(40, 4, 2)
    with gradlab.watch(rnn) as probe:
        rnn(x)[0][-1].sum().backward()
    s = probe.summary()
    assert s["exploding"] is False and s["vanishing"] is True and s["verdict"] == "vanishing"
    assert s["vanishing"] == (s["dependency_ratio"] < diagnostics.DEFAULTS.vanishing_ratio)
