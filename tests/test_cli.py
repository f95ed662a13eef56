"""The CLI end to end on tiny configs, through typer's test runner."""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gradlab.training
from gradlab import comparison
from gradlab.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = """\
name: tiny
task: {name: adding, length: 6, eval_size: 16}
model: {hidden: 4}
train: {steps: 4, batch_size: 4, eval_every: 2}
seeds: [0, 1]
grid:
  model.cell: [vanilla, lstm]
  train.tbptt: [null, 3]
"""
JSON_KEYS = {"task", "length", "cell", "clip", "tbptt", "runs", "solved_rate", "final_loss_mean",
             "final_loss_std", "baseline_loss", "steps_to_solve_median", "diverged", "verdict", "horizon_median",
             "grad_norm_max"}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = tmp / "tiny.yaml"
    config.write_text(TINY)
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    return config, tmp / "out", result


def test_run_writes_a_directory_per_run(tiny_results):
    _, out, result = tiny_results
    runs = sorted(d for d in (out / "tiny").iterdir() if d.is_dir())
    assert len(runs) == 8
    for d in runs:
        assert {p.name for p in d.iterdir()} >= {"config.json", "env.json", "metrics.csv", "summary.json",
                                                 "profile.npz"}
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "ok"
        assert summary["baseline_loss"] == pytest.approx(1 / 6)
        config = json.loads((d / "config.json").read_text())
        assert config["model"]["cell"] in ("vanilla", "lstm") and config["seed"] in (0, 1)
        rows = list(csv.DictReader((d / "metrics.csv").open()))
        assert [r["step"] for r in rows if r["kind"] == "train"] == ["1", "2", "3", "4"]
        assert [r["step"] for r in rows if r["kind"] == "eval"] == ["0", "2", "4"]  # 0: at initialisation
        assert summary["verdict"] in ("healthy", "vanishing", "exploding")
        assert not list(d.glob(".*.tmp"))  # no leftovers of the atomic writes
    assert "vanilla" in result.output and "lstm" in result.output


def test_rerun_skips_finished_runs_and_force_redoes_them(tiny_results):
    config, out, _ = tiny_results
    summaries = sorted((out / "tiny").glob("*/summary.json"))
    before = {p: p.stat().st_mtime_ns for p in summaries}
    assert runner.invoke(app, ["run", str(config), "--out", str(out), "-q"]).exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in summaries} == before
    assert runner.invoke(app, ["run", str(config), "--out", str(out), "-q", "--force",
                               "--set", "grid.model.cell=[lstm]"]).exit_code == 0
    changed = {p for p in summaries if p.stat().st_mtime_ns != before[p]}
    assert changed and all("cell=lstm" in str(p) for p in changed)


def test_compare_json_has_the_documented_keys(tiny_results):
    _, out, _ = tiny_results
    result = runner.invoke(app, ["compare", str(out), "--format", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 4
    for row in rows:
        assert JSON_KEYS <= set(row)
        assert row["runs"] == 2 and row["clip"] == "none" and row["tbptt"] in (None, 3)
        assert row["schema"] == comparison.SCHEMA  # the plain list is versioned object by object
        assert 0 <= row["solved_rate"] <= 1 and row["baseline_loss"] == pytest.approx(1 / 6)
    # the aggregate equals the mean of the per-run summaries on disk
    lstm_full = next(r for r in rows if r["cell"] == "lstm" and r["tbptt"] is None)
    summaries = (out / "tiny").glob("cell=lstm_tbptt=full*/summary.json")
    losses = [json.loads(p.read_text())["final_loss"] for p in summaries]
    assert lstm_full["final_loss_mean"] == pytest.approx(sum(losses) / len(losses))


def test_compare_markdown_csv_and_by(tiny_results, tmp_path):
    _, out, _ = tiny_results
    md = runner.invoke(app, ["compare", str(out), "-f", "markdown", "--by", "cell"]).stdout
    lines = md.strip().splitlines()
    assert lines[0].startswith("| cell | runs |") and sum(line.startswith("|") for line in lines) == 4
    assert sum(line.startswith("- **cell=") for line in lines) == 2  # then each group's diagnosis
    target = tmp_path / "table.csv"
    assert runner.invoke(app, ["compare", str(out), "-f", "csv", "-o", str(target)]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 4 and JSON_KEYS <= set(rows[0])
    bad = runner.invoke(app, ["compare", str(out), "--by", "colour"])
    assert bad.exit_code == 2 and "unknown --by column" in bad.output


def test_compare_reports_missing_results(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such directory" in result.output


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = gradlab.training.train

    def flaky(cfg, progress=None, rows=None):
        if cfg["model"]["cell"] == "vanilla" and cfg["seed"] == 1:
            rows.append({"kind": "train", "step": 1, "loss": 0.5})
            raise RuntimeError("boom")
        return real(cfg, progress, rows)

    monkeypatch.setattr(gradlab.training, "train", flaky)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("train.tbptt: [null, 3]", "train.lr: [0.01]"))
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "out"), "-q", "--jobs", "1"])
    assert result.exit_code == 1
    assert "1 of 4 runs failed" in result.output and "RuntimeError: boom" in result.output
    failed = next((tmp_path / "out" / "tiny").glob("cell=vanilla*seed=1_*"))
    assert json.loads((failed / "summary.json").read_text())["status"] == "failed"
    assert "Traceback" in (failed / "error.txt").read_text()
    assert (failed / "metrics.csv").read_text().count("\n") == 2  # what was computed is kept
    assert len(list((tmp_path / "out" / "tiny").glob("*/summary.json"))) == 4
    monkeypatch.setattr(gradlab.training, "train", real)  # a re-run re-does only the failed run
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "out"), "-q", "--jobs", "1"])
    assert result.exit_code == 0
    assert json.loads((failed / "summary.json").read_text())["status"] == "ok"
    assert not (failed / "error.txt").exists()


def test_every_command_has_help_with_an_example_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"run", "compare", "validate", "ls"} <= set(commands)
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0
        assert f"Example: gradlab {name}" in result.output, name
        assert f"gradlab {name}" in readme, name


def test_readme_and_configs_agree():
    readme = (ROOT / "README.md").read_text()
    for config in (ROOT / "configs").glob("*.yaml"):
        assert f"configs/{config.name}" in readme, config.name
        assert config.read_text().startswith(f"# gradlab run configs/{config.name}"), config.name
    for config in (ROOT / "configs" / "papers").glob("*.yaml"):
        assert f"`{config.stem}`" in readme, config.name
        assert config.read_text().startswith(f"# gradlab run configs/papers/{config.name}"), config.name
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_bad_option_is_exit_code_2_without_traceback(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path), "--format", "xml"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2


def test_bench_reports_ratios_as_json():
    result = runner.invoke(app, ["bench", "--cells", "vanilla,skip", "--length", "6", "--batch", "2",
                                 "--hidden", "4", "--repeats", "3", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["cell"] for r in rows] == ["vanilla", "skip"]
    for r in rows:
        assert {"cell", "engine_ms", "fused_ms", "autograd_ms", "engine_vs_fused", "engine_vs_autograd"} <= set(r)
        assert r["engine_ms"] > 0 and r["engine_vs_autograd"] == pytest.approx(r["autograd_ms"] / r["engine_ms"])
    assert rows[1]["fused_ms"] is None  # torch has no skip cell
    bad = runner.invoke(app, ["bench", "--cells", "lstn"])
    assert bad.exit_code == 2 and "did you mean" not in bad.output and "unknown cell" in bad.output


def test_plot_on_a_real_results_tree_writes_the_pngs(tiny_results, tmp_path):
    _, out, _ = tiny_results
    result = runner.invoke(app, ["plot", str(out), "-o", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"learning_curves.png", "grad_norm.png", "grad_profile.png"} <= names
    assert any(n.startswith("profile_heatmap_") for n in names)
    for p in (tmp_path / "plots").iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    empty = runner.invoke(app, ["plot", str(tmp_path / "plots")])
    assert empty.exit_code == 2 and "no finished runs" in empty.output


def test_error_lines_print_as_written_without_emoji_or_markup(tmp_path):
    # rich would turn ":100:" into 💯 and ":x:" into ❌, and "[bold]" into a style
    config = tmp_path / "l100.yaml"
    config.write_text("name: t\n" + "# padding\n" * 98 + "train: {lr: '[bold]x'}\n")
    for command in (["validate", str(config)], ["run", str(config), "--out", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert f"{config}:100: train.lr" in result.output and "[bold]x" in result.output, result.output
        assert "💯" not in result.output
    result = runner.invoke(app, ["bench", "--device", "cuda:x"])
    assert result.exit_code == 2 and "--device cuda:x:" in result.output and "❌" not in result.output


def test_a_config_that_is_not_utf8_is_one_line_of_bad_input(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\xe9\n".encode("latin-1"))
    for command in (["validate", str(config)], ["run", str(config), "--out", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.strip() == f"error: {config}: cannot read the config: not UTF-8 text (byte 9)"


@pytest.mark.parametrize("option", [["--device", "tpu"], ["--memory", "abc"], ["--memory", "0"],
                                    ["--memory", "500,-1"], ["--cells", ","]])
def test_bench_bad_options_are_one_line_of_bad_input(option):
    result = runner.invoke(app, ["bench", "--repeats", "3", "--length", "2", *option])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option[0]} "), result.output


def test_bench_memory_table_puts_each_value_under_its_header(monkeypatch):
    import gradlab.bench
    import gradlab.cli

    def fake_bench(cells, **_):  # skip has no fused module: its row lacks the fused numbers
        return [{"cell": c, "engine_ms": 1.5, "fused_ms": None if c == "skip" else 2.5, "autograd_ms": 3.5,
                 "engine_vs_fused": None if c == "skip" else 2.5 / 1.5, "engine_vs_autograd": 3.5 / 1.5}
                for c in cells]

    mib = {"scan": 11.5, "fused": 22.5, "autograd": 33.5}
    monkeypatch.setattr(gradlab.bench, "bench", fake_bench)
    monkeypatch.setattr(gradlab.bench, "peak_memory", lambda *a, engine, **k: mib[engine] * 2**20)
    monkeypatch.setattr(gradlab.cli.out_console, "width", 400)
    result = runner.invoke(app, ["bench", "--cells", "skip,vanilla", "--memory", "300"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "peak_mib" in line)
    headers = [h.strip() for h in header.strip("┃ ").split("┃")]
    rows = {cells[0]: dict(zip(headers, cells)) for cells in
            ([c.strip() for c in line.strip("│ ").split("│")] for line in lines if line.startswith("│"))}
    assert rows["vanilla"]["peak_mib_scan_T300"] == "11.5" and rows["skip"]["peak_mib_scan_T300"] == "11.5"
    assert rows["vanilla"]["peak_mib_fused_T300"] == "22.5" and rows["skip"]["peak_mib_fused_T300"] == "–"
    assert rows["vanilla"]["peak_mib_autograd_T300"] == "33.5" and rows["skip"]["peak_mib_autograd_T300"] == "33.5"
    doc = json.loads(runner.invoke(app, ["bench", "--cells", "skip", "--memory", "300", "--json"]).stdout)
    assert doc[0]["schema"] == "gradlab.bench/1" and doc[0]["peak_mib_fused_T300"] is None


def test_help_puts_each_example_on_its_own_line():
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        lines = runner.invoke(app, [name, "--help"]).output.splitlines()
        examples = [line.strip() for line in lines if "Example:" in line]
        assert examples and all(e.startswith(f"Example: gradlab {name} ") or e == f"Example: gradlab {name}"
                                for e in examples), (name, examples)
        assert all(e.count("Example:") == 1 for e in examples), (name, examples)
    compare_help = runner.invoke(app, ["compare", "--help"]).output
    assert sum(line.strip().startswith("Example: gradlab compare") for line in compare_help.splitlines()) == 4


def test_csv_writes_a_tbptt_window_as_an_integer(tiny_results):
    _, out, _ = tiny_results
    text = runner.invoke(app, ["compare", str(out), "-f", "csv"]).stdout
    assert sorted({r["tbptt"] for r in csv.DictReader(io.StringIO(text))}) == ["", "3"]


def test_a_truncated_summary_is_named_and_skipped_not_a_traceback(tiny_results, tmp_path):
    """A damaged run is left out with one line naming its file (test_comparison: --check then fails)."""
    _, out, _ = tiny_results
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    summary = sorted(copy.rglob("summary.json"))[0]
    summary.write_text(summary.read_text()[:40])  # cut short, as by a full disk or an interrupted copy
    for command, code in ((["compare", str(copy)], 0), (["compare", str(out), str(copy)], 0),
                          (["report", str(copy), "-o", str(tmp_path / "r.html")], 0)):
        result = runner.invoke(app, command)
        assert result.exit_code == code and "Traceback" not in result.output, (command, result.output)
        named = [line for line in result.stderr.splitlines() if str(summary) in line]
        assert named == [f"skipped: {summary}: truncated or corrupt JSON (Expecting ',' delimiter at line 3)"] \
            or (len(named) == 1 and named[0].startswith(f"skipped: {summary}: truncated or corrupt JSON")), named
    # plot draws what is whole and names what it left out (issue 12): one line, exit 0
    result = runner.invoke(app, ["plot", str(copy), "-o", str(tmp_path / "plots")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped: {summary}: truncated or corrupt JSON: "), lines
    assert lines == named  # the line compare and report print: one definition of damage (issue 22)


def test_check_fails_naming_what_was_left_out_a_record_or_a_run(tiny_results, tmp_path):
    """--check cannot pass on part of the results; its FAIL line counts what the skipped lines named:
    a damaged selection.json is no "damaged run directory"."""
    _, out, _ = tiny_results
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "tiny" / "selection.json").write_text("{")  # a tuned experiment's record, cut short
    command = ["report", str(copy), "--format", "markdown", "--check", "-o", str(tmp_path / "book.md")]
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == (
        "FAIL: left out (listed above): 1 selection.json: the check cannot pass on part of the results"), \
        result.stderr
    summary = sorted((copy / "tiny").rglob("summary.json"))[0]
    summary.write_text("{")
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == (
        "FAIL: left out (listed above): 1 selection.json, 1 damaged run directory: the check cannot pass on part "
        "of the results"), result.stderr
    (copy / "tiny" / "selection.json").unlink()
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == (
        "FAIL: 1 damaged run directory (listed above): the check cannot pass on part of the runs"), result.stderr


def test_the_command_freezes_its_objects_as_it_exits_and_the_library_does_not():
    """The ``gradlab`` command's exit skips the interpreter's last collections (``gc.freeze`` in an exit
    handler, after the command ran); a process that only imports ``gradlab.cli`` keeps them."""
    command = ("import atexit, gc, sys; sys.argv = ['gradlab', 'ls']; import gradlab.cli\n"
               "try:\n    gradlab.cli.main()\nexcept SystemExit:\n    pass\n"
               "before = gc.get_freeze_count(); atexit._run_exitfuncs(); print(before, gc.get_freeze_count() > 0)")
    library = "import atexit, gc, gradlab.cli; atexit._run_exitfuncs(); print(gc.get_freeze_count())"
    for code, printed in ((command, ["0", "True"]), (library, ["0"])):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.split()[-len(printed):] == printed, out


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_outside_a_sweep_exit_128_plus_the_signal_with_one_line(sig):
    """A closed terminal or SSH session sends SIGHUP: stopped like SIGTERM, one line, never a traceback.
    The command signals itself, so the signal comes while it runs (no timing). The test sets the default
    disposition first: under ``nohup`` SIGHUP is ignored, and the command rightly leaves it ignored."""
    import os
    import signal
    import time

    import typer

    from gradlab.cli.errors import user_errors

    command = typer.Typer()
    signum = getattr(signal, sig)

    @command.command()
    @user_errors
    def stop():
        os.kill(os.getpid(), signum)
        deadline = time.monotonic() + 30  # the handler raises at once; this only bounds a hang
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError(f"{sig} did not stop the command")

    before = signal.signal(signum, signal.SIG_DFL)
    try:
        result = CliRunner().invoke(command, [])
    finally:
        signal.signal(signum, before)
    assert result.exit_code == 128 + signum, (result.output, result.exception)
    assert result.stderr == f"error: interrupted by {sig}: finished runs are kept; the same command finishes the rest\n"
